/*
 * readiness.c: when a transit waits and what wakes it: whether it wants a
 * transfer, the kernel subscriptions of each mode, and the application of
 * a batch of kernel events, which makes transits ready.
 *
 * Edges and readiness
 * -------------------
 * Registration is edge-triggered and lazy: a transit starts out assuming
 * its kernel point is ready, tries, and only at its first EAGAIN registers
 * the point (registration reports current readiness, so no edge is lost).
 * Each edge bumps the transit's edge count; a transfer that ends in EAGAIN
 * clears READY only if no edge arrived during its system call, which closes
 * the race between "drained" and "new data" without a wake of the cycle.
 * A threaded Traffic subscribes one-shot instead, only while a request
 * waits (tr_arm).
 */
#include <errno.h>

#include "internal.h"

/* Whether the transit has a transfer to make, ready or not: lock held. */
int
tr_wants_transfer(const struct tr_transit *t)
{
	if (tr_ending(t) || (t->flags & TF_IN_SYSCALL))
		return 0;
	if ((t->buf == NULL && t->file < 0 && !(t->flags & TF_ALLOC)) || (t->flags & TF_EXHAUSTED))
		return 0;
	if (tr_threaded(t->traffic) && !(t->flags & TF_REQUEST))
		return 0;
	return 1;
}

/*
 * A synchronous Traffic's subscription: the point for the transit's
 * direction, for good, if it is not subscribed yet.
 */
int
tr_subscribe(struct tr_traffic *tr, struct tr_point *p, const struct tr_transit *t)
{
	unsigned int want = t->polarity == TR_INPUT ? TR_K_READ : TR_K_WRITE;
	int err;

	if ((p->registered & want) || p->closed)
		return 0;
	if (p->is_file)
		return -EPERM;
	err = tr_kernel_register(tr->kernel, p->fd, p, p->registered, want);
	if (err == 0)
		p->registered |= want;
	return err;
}

/*
 * A threaded Traffic subscribes a descriptor only while a request waits on
 * it, and once: one-shot and level-triggered, armed for the directions
 * whose requests wait (the caller's included) at the EAGAIN that makes a
 * request wait.  The kernel disarms it when it reports.  Permanent
 * edge-triggered subscriptions woke the cycle thread for every edge,
 * including those of data the owner's thread had already taken inline: on
 * a shared CPU that was a context switch per message for nothing, and the
 * owner's thread found the data only after the cycle thread had run.  The
 * price is one epoll_ctl per wait, as trio pays, and an input request's
 * inline attempt always makes its system call (request_locked): with no
 * subscription while nobody waits, nothing says whether data came.
 */
int
tr_arm(struct tr_traffic *tr, struct tr_point *p)
{
	unsigned int want = 0;
	int i, err;

	for (i = 0; i < 2; ++i) {
		struct tr_transit *t = p->io[i];

		if (t != NULL && t->traffic == tr && (t->flags & TF_REQUEST) && !(t->flags & TF_READY))
			want |= t->polarity == TR_INPUT ? TR_K_READ : TR_K_WRITE;
	}
	if (p->closed || (p->armed & want) == want)
		return 0;
	if (p->is_file)
		return -EPERM;
	want |= p->armed;
	err = tr_kernel_arm(tr->kernel, p->fd, p, p->registered, p->armed, want);
	if (err == 0) {
		p->registered |= want;
		p->armed = want;
		if (want == (TR_K_READ | TR_K_WRITE))
			tr->stats.armed_both += 1;
	}
	return err;
}

/* Apply a batch of kernel events: lock held. */
void
tr_apply_events(struct tr_traffic *tr, int n)
{
	int i;

	for (i = 0; i < n; ++i) {
		struct tr_point *p = tr->events[i].udata;
		unsigned int f = tr->events[i].flags;
		struct tr_transit *in, *out;

		if (p->closed)
			continue;
		if (f & (TR_K_HUP | TR_K_ERROR))
			p->hup = 1;
		if (tr->events[i].error != 0 && p->is_socket && p->error == 0)
			p->error = tr->events[i].error;
		in = p->io[TR_INPUT];
		out = p->io[TR_OUTPUT];
		/* A sibling that never entered this Traffic is not its to drive. */
		if (in != NULL && in->traffic != tr)
			in = NULL;
		if (out != NULL && out->traffic != tr)
			out = NULL;
		if (tr_threaded(tr)) {
			/*
			 * The one-shot subscription fired, and the kernel disarmed
			 * what the event says.  A direction it disarmed that still
			 * waits but was not reported lost its subscription: it tries
			 * again (and re-arms at its EAGAIN).
			 */
			unsigned int fired = 0, lost;

			if (f & (TR_K_READ | TR_K_HUP | TR_K_ERROR))
				fired |= TR_K_READ;
			if (f & (TR_K_WRITE | TR_K_ERROR))
				fired |= TR_K_WRITE;
			lost = tr->events[i].disarmed & p->armed & ~fired;
			if (in != NULL && (lost & TR_K_READ))
				f |= TR_K_READ;
			if (out != NULL && (lost & TR_K_WRITE))
				f |= TR_K_WRITE;
			p->armed &= ~tr->events[i].disarmed;
		}
		if (in != NULL && (f & (TR_K_READ | TR_K_HUP | TR_K_ERROR))) {
			in->edges += 1;
			in->flags |= TF_READY;
			if (tr_wants_transfer(in))
				push_work(tr, in);
		}
		if (out != NULL && (f & (TR_K_WRITE | TR_K_ERROR))) {
			out->edges += 1;
			out->flags |= TF_READY;
			if (tr_wants_transfer(out))
				push_work(tr, out);
		}
	}
}
