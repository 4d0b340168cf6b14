/*
 * fds_parse_fuzz.c: a fuzz harness for tr_fds_parse() (traffic/_core/descriptors.c),
 * the parser of the control buffer recvmsg(2) fills.
 *
 * Input: two bytes of configuration, then the control buffer.
 *   byte 0: the caller's capacity for delivered descriptors (0..255)
 *   byte 1: the capacity of the rejected array: 255 stands for the core's
 *           own, TR_FDS_RECEIVE_MAX + 1; 0..254 are taken as they are
 *           (small ones reach the "lost" branch)
 * The control buffer is copied into a heap block of exactly its size, and
 * both output arrays are exactly their capacity, so AddressSanitizer
 * reports any read or write out of bounds.
 *
 * Invariants checked (abort() on violation):
 *   - delivered <= cap, rejected <= rejected_cap;
 *   - nothing is written beyond delivered / rejected (sentinels);
 *   - every returned descriptor is >= 0 and is an int that the input holds
 *     at a 4-byte step from some message's data (it came from the input:
 *     the parser invents nothing);
 *   - delivered + rejected + lost <= (controllen - header) / sizeof(int);
 *   - the result agrees with an independent reference parser written here
 *     (same rules: lengths bounded by the buffer, SOL_SOCKET/SCM_RIGHTS only,
 *     negative values skipped);
 *   - parsing twice gives the same result (no hidden state).
 *
 * tr_fds_parse() makes no system call: it never closes anything, so the
 * arbitrary integers found in the input are never touched as descriptors.
 * (The caller, tr_fds_receive(), closes the rejected ones; only ones the
 * kernel just installed reach it.)
 *
 * Two builds:
 *   clang -fsanitize=fuzzer,address,undefined: libFuzzer drives
 *     LLVMFuzzerTestOneInput (-DTR_FUZZ_LIBFUZZER);
 *   gcc/clang -fsanitize=address,undefined: the main() below drives it with
 *     a deterministic mutation loop (seeded xorshift) over valid control
 *     buffers built with the CMSG_* macros: SCM_RIGHTS, SCM_CREDENTIALS,
 *     several headers, truncated lengths, huge, zero and misaligned
 *     cmsg_len.  Usage: fds_parse_fuzz [iterations [seed [seconds]]]: stops
 *     after the iterations or the seconds, whichever comes first (0: no
 *     limit), and prints how many inputs it checked.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

#define SENTINEL (-77)
#define MAX_INPUT 8192   /* the largest input the harness indexes in full */

static void
fail(const char *what)
{
	fprintf(stderr, "fds_parse_fuzz: invariant broken: %s\n", what);
	abort();
}

/* An independent reading of the rules, for comparison. */
struct reference {
	int fds[4096];
	size_t n;
	int truncated;
	int malformed;
};

static void
reference_parse(const unsigned char *buf, size_t len, struct reference *r)
{
	size_t off = 0, hdr = CMSG_LEN(0);

	memset(r, 0, sizeof *r);
	while (len - off >= hdr) {
		struct cmsghdr h;
		size_t clen, body, i;

		memcpy(&h, buf + off, sizeof h);
		clen = (size_t)h.cmsg_len;
		if (clen < hdr) {
			r->malformed = 1;
			return;
		}
		body = clen;
		if (body > len - off) {
			r->truncated = 1;
			body = len - off;
		}
		if (h.cmsg_level == SOL_SOCKET && h.cmsg_type == SCM_RIGHTS) {
			for (i = 0; i + sizeof(int) <= body - hdr; i += sizeof(int)) {
				int fd;

				memcpy(&fd, buf + off + hdr + i, sizeof fd);
				if (fd >= 0 && r->n < sizeof r->fds / sizeof r->fds[0])
					r->fds[r->n++] = fd;
			}
		}
		if (body < clen)
			return;
		/* The next header starts at the aligned end of this message. */
		if (CMSG_ALIGN(clen) > len - off)
			return;
		off += CMSG_ALIGN(clen);
	}
}

/* The ints of the input at 4-byte steps (descriptors sit at such offsets:
 * headers are aligned and their data follows), sorted, for bsearch. */
static int words[MAX_INPUT / sizeof(int) + 1];
static size_t nwords;

static int
compare_ints(const void *a, const void *b)
{
	int x = *(const int *)a, y = *(const int *)b;

	return (x > y) - (x < y);
}

static void
index_input(const unsigned char *buf, size_t len)
{
	size_t i;

	nwords = 0;
	for (i = 0; i + sizeof(int) <= len && nwords < sizeof words / sizeof words[0]; i += sizeof(int))
		memcpy(&words[nwords++], buf + i, sizeof(int));
	qsort(words, nwords, sizeof words[0], compare_ints);
}

static int
in_input(int fd)
{
	return bsearch(&fd, words, nwords, sizeof words[0], compare_ints) != NULL;
}

static void
check_one(const unsigned char *control, size_t controllen, size_t cap, size_t rejected_cap)
{
	unsigned char *buf = malloc(controllen ? controllen : 1);
	int *fds = malloc((cap + 1) * sizeof(int));
	int *rejected = malloc((rejected_cap + 1) * sizeof(int));
	struct tr_fds_parsed out, again;
	static struct reference ref;
	size_t i, total;

	if (buf == NULL || fds == NULL || rejected == NULL)
		abort();
	if (controllen)
		memcpy(buf, control, controllen);
	/* One slot more than the capacity, holding a sentinel: a write there is a bug. */
	for (i = 0; i <= cap; ++i)
		fds[i] = SENTINEL;
	for (i = 0; i <= rejected_cap; ++i)
		rejected[i] = SENTINEL;

	index_input(buf, controllen);
	if (tr_fds_parse(buf, controllen, fds, cap, rejected, rejected_cap, &out) != 0)
		fail("tr_fds_parse returned non-zero");
	if (out.delivered > cap)
		fail("delivered > cap");
	if (out.rejected > rejected_cap)
		fail("rejected > rejected_cap");
	if (fds[cap] != SENTINEL || rejected[rejected_cap] != SENTINEL)
		fail("wrote past an array's capacity");
	for (i = out.delivered; i < cap; ++i)
		if (fds[i] != SENTINEL)
			fail("wrote beyond delivered");
	for (i = out.rejected; i < rejected_cap; ++i)
		if (rejected[i] != SENTINEL)
			fail("wrote beyond rejected");
	for (i = 0; i < out.delivered; ++i)
		if (fds[i] < 0 || !in_input(fds[i]))
			fail("a delivered descriptor that the input does not hold");
	for (i = 0; i < out.rejected; ++i)
		if (rejected[i] < 0 || !in_input(rejected[i]))
			fail("a rejected descriptor that the input does not hold");
	total = out.delivered + out.rejected + out.lost;
	if (controllen < CMSG_LEN(0) ? total != 0
	    : total > (controllen - CMSG_LEN(0)) / sizeof(int))
		fail("more descriptors than the buffer can hold");
	if (cap >= out.delivered + out.rejected + out.lost && (out.rejected || out.lost))
		fail("rejected while there was room");
	if (out.lost && out.rejected != rejected_cap)
		fail("lost while the rejected array had room");

	reference_parse(buf, controllen, &ref);
	if (ref.n < sizeof ref.fds / sizeof ref.fds[0]) {
		if (ref.n != total)
			fail("count differs from the reference parser");
		for (i = 0; i < out.delivered; ++i)
			if (fds[i] != ref.fds[i])
				fail("delivered order differs from the reference parser");
		for (i = 0; i < out.rejected; ++i)
			if (rejected[i] != ref.fds[out.delivered + i])
				fail("rejected order differs from the reference parser");
		if (ref.malformed != out.malformed)
			fail("malformed differs from the reference parser");
		if (ref.truncated != out.truncated)
			fail("truncated differs from the reference parser");
	}

	/* Pure: the same input gives the same answer. */
	for (i = 0; i <= cap; ++i)
		fds[i] = SENTINEL;
	for (i = 0; i <= rejected_cap; ++i)
		rejected[i] = SENTINEL;
	tr_fds_parse(buf, controllen, fds, cap, rejected, rejected_cap, &again);
	if (memcmp(&out, &again, sizeof out) != 0)
		fail("a second parse of the same input differs");

	free(buf);
	free(fds);
	free(rejected);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 2 || size - 2 > MAX_INPUT)
		return 0;
	check_one(data + 2, size - 2, data[0], data[1] == 255 ? TR_FDS_RECEIVE_MAX + 1 : data[1]);
	return 0;
}

#ifndef TR_FUZZ_LIBFUZZER

static uint64_t state;

static uint64_t
xorshift(void)
{
	state ^= state << 13;
	state ^= state >> 7;
	state ^= state << 17;
	return state;
}

static size_t
below(size_t n)
{
	return n ? (size_t)(xorshift() % n) : 0;
}

/* Append one control message at *len; returns 0 if it did not fit. */
static int
append(unsigned char *buf, size_t *len, int level, int type, const void *body, size_t bodylen)
{
	struct cmsghdr h;

	if (*len + CMSG_SPACE(bodylen) > MAX_INPUT - 2)
		return 0;
	memset(buf + 2 + *len, 0, CMSG_SPACE(bodylen));
	memset(&h, 0, sizeof h);
	h.cmsg_len = CMSG_LEN(bodylen);
	h.cmsg_level = level;
	h.cmsg_type = type;
	memcpy(buf + 2 + *len, &h, sizeof h);
	memcpy(buf + 2 + *len + CMSG_LEN(0), body, bodylen);
	*len += CMSG_SPACE(bodylen);
	return 1;
}

/* A valid control buffer: a few messages, as the kernel would write them. */
static size_t
build(unsigned char *buf)
{
	size_t len = 0, k, i, n = 1 + below(4);
	int fds[300];

	for (k = 0; k < n; ++k) {
		switch (below(4)) {
		case 0:
		case 1: {
			size_t count = below(2) ? below(8) : below(300);

			for (i = 0; i < count; ++i)
				fds[i] = below(8) ? (int)(3 + below(1 << 20)) : (int)xorshift();
			append(buf, &len, SOL_SOCKET, SCM_RIGHTS, fds, count * sizeof(int));
			break;
		}
		case 2: {
#ifdef SCM_CREDENTIALS
			struct ucred cred = { .pid = (pid_t)below(1 << 16), .uid = 1000, .gid = 1000 };

			append(buf, &len, SOL_SOCKET, SCM_CREDENTIALS, &cred, sizeof cred);
#endif
			break;
		}
		default: {
			/* Another level or type carrying what looks like descriptors. */
			for (i = 0; i < 4; ++i)
				fds[i] = (int)(3 + i);
			append(buf, &len, below(2) ? SOL_SOCKET : (int)below(300),
			    below(2) ? SCM_RIGHTS + 7 : SCM_RIGHTS, fds, 4 * sizeof(int));
			break;
		}
		}
	}
	return len;
}

/* Break the buffer in the ways the brief lists, a few at a time. */
static size_t
mutate(unsigned char *buf, size_t len)
{
	size_t m, rounds = 1 + below(4);
	unsigned char *control = buf + 2;

	for (m = 0; m < rounds; ++m) {
		size_t at = len >= sizeof(struct cmsghdr) ? below(len - sizeof(struct cmsghdr) + 1) : 0;
		/* Often aim at a header: a multiple of the alignment. */
		if (below(2))
			at &= ~(size_t)(sizeof(size_t) - 1);
		switch (below(10)) {
		case 0: /* truncate the buffer */
			len = below(len + 1);
			break;
		case 1: /* huge cmsg_len */
		case 2: /* zero cmsg_len */
		case 3: /* misaligned or off-by-a-few cmsg_len */
		case 4: { /* cmsg_len just under the header */
			struct cmsghdr h;
			int which = (int)below(4);

			if (len < at + sizeof h)
				break;
			memcpy(&h, control + at, sizeof h);
			if (which == 0)
				h.cmsg_len = below(2) ? (size_t)-1 - below(64) : (size_t)1 << (32 + below(31));
			else if (which == 1)
				h.cmsg_len = 0;
			else if (which == 2)
				h.cmsg_len = h.cmsg_len + below(9) - 4;
			else
				h.cmsg_len = below(CMSG_LEN(0) + 1);
			memcpy(control + at, &h, sizeof h);
			break;
		}
		case 5: /* flip bits */
			if (len)
				control[below(len)] ^= (unsigned char)(1u << below(8));
			break;
		case 6: /* random bytes */
			if (len)
				control[below(len)] = (unsigned char)xorshift();
			break;
		case 7: /* grow by garbage */
			while (len < MAX_INPUT - 2 && below(8))
				control[len++] = (unsigned char)xorshift();
			break;
		case 8: { /* the level/type of a header becomes SCM_RIGHTS */
			struct cmsghdr h;

			if (len < at + sizeof h)
				break;
			memcpy(&h, control + at, sizeof h);
			h.cmsg_level = SOL_SOCKET;
			h.cmsg_type = SCM_RIGHTS;
			memcpy(control + at, &h, sizeof h);
			break;
		}
		default: /* cut a few bytes off the end (a misaligned total) */
			len -= below(len < 8 ? len + 1 : 8);
			break;
		}
	}
	return len;
}

int
main(int argc, char **argv)
{
	static unsigned char buf[MAX_INPUT];
	unsigned long long iterations = argc > 1 ? strtoull(argv[1], NULL, 10) : 100000;
	unsigned long long seed = argc > 2 ? strtoull(argv[2], NULL, 10) : 1;
	double seconds = argc > 3 ? strtod(argv[3], NULL) : 0;
	struct timespec t0, now;
	unsigned long long i;

	clock_gettime(CLOCK_MONOTONIC, &t0);
	state = seed * 0x9E3779B97F4A7C15ull + 1;
	for (i = 0; i < iterations; ++i) {
		size_t len = build(buf);

		if (below(8))
			len = mutate(buf, len);
		buf[0] = (unsigned char)(below(2) ? below(8) : below(256));
		buf[1] = (unsigned char)(below(4) ? 255 : below(255));
		LLVMFuzzerTestOneInput(buf, len + 2);
		if (seconds > 0 && (i & 255) == 255) {
			clock_gettime(CLOCK_MONOTONIC, &now);
			if ((double)(now.tv_sec - t0.tv_sec) + (double)(now.tv_nsec - t0.tv_nsec) / 1e9 >= seconds) {
				++i;
				break;
			}
		}
	}
	iterations = i < iterations ? i : iterations;
	printf("fds_parse_fuzz: %llu inputs, seed %llu: ok\n", iterations, seed);
	return 0;
}
#endif
