/*
 * life_table.c: walks every pair of a transit's life state and life event
 * through tr_life_step() (traffic/_core/life.c), for every "who ended it"
 * it can start from, against the transitions written out below.
 *
 * The list below is the specification, written independently of life.c's
 * table: the core's termination paths as they are (see tr_terminate,
 * tr_transit_terminate, tr_transit_release, tr_drive, tr_traffic_destroy).
 * A legal step must lead where the list says and change "who ended it"
 * only as it says; every other pair must be refused: with TR_ETERMINATED and
 * nothing changed ("lenient": a release build), or by aborting the
 * process ("strict": the sanitizer builds, checked in a child per pair).
 *
 *     cc -Itraffic/_core tests/fuzz/life_table.c traffic/_core/life.c
 *     ./a.out lenient       (or strict, for a build with -fsanitize=address)
 *
 * Prints "life table: ok" and exits 0, or names the first wrong pair.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/wait.h>

#include "internal.h"

#define SAME 0xff

struct legal {
	int from, event, to, by;   /* by: the new "who ended it", or SAME */
};

static const struct legal legal[] = {
	/* The owner terminates an open transit: half-close, its own end. */
	{TR_LIFE_OPEN, TR_LIFE_OWNER_END, TR_LIFE_TERMINATED, TR_BY_OWNER},
	/* ... during a system call: terminating, not yet anyone's end. */
	{TR_LIFE_OPEN, TR_LIFE_OWNER_DEFER, TR_LIFE_TERMINATING, SAME},
	{TR_LIFE_OPEN, TR_LIFE_KERNEL_END, TR_LIFE_TERMINATED, TR_BY_KERNEL},
	{TR_LIFE_OPEN, TR_LIFE_DISCARD, TR_LIFE_TERMINATED, TR_BY_OWNER},
	/* Asked again before the call returns. */
	{TR_LIFE_TERMINATING, TR_LIFE_OWNER_DEFER, TR_LIFE_TERMINATING, TR_BY_OWNER},
	{TR_LIFE_TERMINATING, TR_LIFE_SETTLE, TR_LIFE_TERMINATED, TR_BY_OWNER},
	{TR_LIFE_TERMINATING, TR_LIFE_DISCARD, TR_LIFE_TERMINATED, TR_BY_OWNER},
	/* The owner terminates what the kernel ended: its requests are refused now. */
	{TR_LIFE_TERMINATED, TR_LIFE_OWNER_END, TR_LIFE_TERMINATED, TR_BY_OWNER},
	{TR_LIFE_TERMINATED, TR_LIFE_DISCARD, TR_LIFE_TERMINATED, SAME},
};

static const char *const state_names[] = {"open", "terminating", "terminated"};
static const char *const event_names[] = {
	"owner-end", "owner-defer", "settle", "kernel-end", "discard",
};

static const struct legal *
find(int from, int event)
{
	size_t i;

	for (i = 0; i < sizeof legal / sizeof legal[0]; ++i)
		if (legal[i].from == from && legal[i].event == event)
			return &legal[i];
	return NULL;
}

static int
fail(int from, int by, int event, const char *what)
{
	printf("life table: %s + %s (ended by %d): %s\n", state_names[from], event_names[event], by, what);
	return 1;
}

/* An illegal step in a strict build: the child must die of SIGABRT. */
static int
aborts(int from, int by, int event)
{
	pid_t pid = fork();
	int status = 0;

	if (pid < 0) {
		perror("fork");
		exit(2);
	}
	if (pid == 0) {
		unsigned char life = (unsigned char)from, who = (unsigned char)by;

		/* The sanitizer's report of the abort is expected: keep it quiet. */
		if (freopen("/dev/null", "w", stderr) == NULL)
			_exit(3);
		tr_life_step(&life, &who, event);
		_exit(0);
	}
	if (waitpid(pid, &status, 0) < 0) {
		perror("waitpid");
		exit(2);
	}
	return WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT;
}

int
main(int argc, char **argv)
{
	int strict, from, by, event, checked = 0, refused = 0;

	if (argc != 2 || (strcmp(argv[1], "strict") != 0 && strcmp(argv[1], "lenient") != 0)) {
		fprintf(stderr, "usage: %s strict|lenient\n", argv[0]);
		return 2;
	}
	strict = strcmp(argv[1], "strict") == 0;
	/* Every entry of the list is a real pair, and none is listed twice. */
	for (from = 0; from < TR_LIFE_STATES; ++from)
		for (event = 0; event < TR_LIFE_EVENTS; ++event) {
			size_t i, n = 0;

			for (i = 0; i < sizeof legal / sizeof legal[0]; ++i)
				n += legal[i].from == from && legal[i].event == event;
			if (n > 1)
				return fail(from, 0, event, "listed twice");
		}
	for (from = 0; from < TR_LIFE_STATES; ++from) {
		for (by = TR_BY_NOBODY; by <= TR_BY_OWNER; ++by) {
			for (event = 0; event < TR_LIFE_EVENTS; ++event) {
				const struct legal *l = find(from, event);
				unsigned char life = (unsigned char)from, who = (unsigned char)by;
				int rc;

				checked += 1;
				if (l == NULL) {
					refused += 1;
					if (strict) {
						if (!aborts(from, by, event))
							return fail(from, by, event, "illegal, and the strict build did not abort");
						continue;
					}
					rc = tr_life_step(&life, &who, event);
					if (rc != TR_ETERMINATED)
						return fail(from, by, event, "illegal, and not refused with TR_ETERMINATED");
					if (life != from || who != by)
						return fail(from, by, event, "refused, but the life changed");
					continue;
				}
				rc = tr_life_step(&life, &who, event);
				if (rc != 0)
					return fail(from, by, event, "legal, and refused");
				if (life != l->to)
					return fail(from, by, event, "led to the wrong state");
				if (who != (l->by == SAME ? by : l->by))
					return fail(from, by, event, "changed who ended it wrongly");
			}
		}
	}
	/* Out of range: refused too, never read past the table. */
	if (!strict) {
		unsigned char life = TR_LIFE_STATES, who = 0;

		if (tr_life_step(&life, &who, 0) != TR_ETERMINATED || life != TR_LIFE_STATES)
			return fail(0, 0, 0, "a state out of range was not refused");
		life = TR_LIFE_OPEN;
		if (tr_life_step(&life, &who, TR_LIFE_EVENTS) != TR_ETERMINATED
		    || tr_life_step(&life, &who, -1) != TR_ETERMINATED || life != TR_LIFE_OPEN)
			return fail(0, 0, 0, "an event out of range was not refused");
	}
	printf("life table: %d pairs checked, %d refused (%s): ok\n", checked, refused, argv[1]);
	return 0;
}
