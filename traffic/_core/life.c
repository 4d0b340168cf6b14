/*
 * life.c: a transit's life, kept as data.
 *
 * A transit is open until it terminates, and it terminates once.  Either
 * side can end it: its owner (tr_transit_terminate, tr_transit_release) or
 * the kernel (a transfer that meets EOF or an error, a subscription the
 * kernel refuses).  The owner cannot end a transit whose system call is in
 * flight without the lock (see internal.h): it asks, the transit is
 * terminating, and the thread that made the call finishes the termination
 * when it settles.
 *
 * So the life is one of three states, with who ended it as data beside
 * the state, and every change of either is one of five events.  The table
 * below is the whole of the rules, as h11 keeps a connection's: a step
 * that is not in it is a bug in the core, never the caller's bad input (the
 * public functions check their callers first), so the sanitizer build
 * aborts on it, where the report points at the caller; other builds leave
 * the life unchanged and return TR_ETERMINATED, the error a terminated
 * transit's callers get.
 *
 * The effects of a termination (the owner's shutdown, the point's close
 * with its last transit, the reports) are the callers' (tr_terminate in
 * transit.c): this file decides only whether a step is legal and where it
 * leads, so that tests/fuzz/life_table.c can walk it without a kernel.
 */
#include <stdlib.h>

#include "internal.h"

/*
 * The sanitizer builds (gcc says so with __SANITIZE_ADDRESS__, clang with
 * __has_feature) abort on an illegal step; -DTR_LIFE_STRICT does anywhere.
 */
#if !defined(TR_LIFE_STRICT) && defined(__SANITIZE_ADDRESS__)
#define TR_LIFE_STRICT 1
#endif
#if !defined(TR_LIFE_STRICT) && defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TR_LIFE_STRICT 1
#endif
#endif

#define SAME 0xff   /* who ended it: unchanged by the step */

struct step {
	unsigned char legal;
	unsigned char next;   /* enum tr_life */
	unsigned char by;     /* enum tr_by, or SAME */
};

static const struct step table[TR_LIFE_STATES][TR_LIFE_EVENTS] = {
	[TR_LIFE_OPEN] = {
		[TR_LIFE_OWNER_END]   = {1, TR_LIFE_TERMINATED, TR_BY_OWNER},
		/* Not yet ended by anyone: a request meanwhile still sees a kernel end. */
		[TR_LIFE_OWNER_DEFER] = {1, TR_LIFE_TERMINATING, SAME},
		[TR_LIFE_KERNEL_END]  = {1, TR_LIFE_TERMINATED, TR_BY_KERNEL},
		[TR_LIFE_DISCARD]     = {1, TR_LIFE_TERMINATED, TR_BY_OWNER},
	},
	[TR_LIFE_TERMINATING] = {
		/* Asked again while the call is still in flight. */
		[TR_LIFE_OWNER_DEFER] = {1, TR_LIFE_TERMINATING, TR_BY_OWNER},
		[TR_LIFE_SETTLE]      = {1, TR_LIFE_TERMINATED, TR_BY_OWNER},
		[TR_LIFE_DISCARD]     = {1, TR_LIFE_TERMINATED, TR_BY_OWNER},
	},
	[TR_LIFE_TERMINATED] = {
		/* Ended by the kernel first: now the owner's too (its requests are refused). */
		[TR_LIFE_OWNER_END]   = {1, TR_LIFE_TERMINATED, TR_BY_OWNER},
		[TR_LIFE_DISCARD]     = {1, TR_LIFE_TERMINATED, SAME},
	},
};

int
tr_life_step(unsigned char *life, unsigned char *by, int event)
{
	const struct step *s;

	if (*life >= TR_LIFE_STATES || event < 0 || event >= TR_LIFE_EVENTS)
		s = NULL;
	else
		s = &table[*life][event];
	if (s == NULL || !s->legal) {
#ifdef TR_LIFE_STRICT
		abort();
#endif
		return TR_ETERMINATED;
	}
	*life = s->next;
	if (s->by != SAME)
		*by = s->by;
	return 0;
}
