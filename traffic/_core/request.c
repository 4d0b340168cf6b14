/*
 * request.c: a threaded Traffic's requests and its cycle thread.
 *
 * A request is tried inline, in the caller's thread, first (tr_request,
 * tr_request_fds, tr_receive into the caller's scratch); if it cannot
 * complete it stays with the transit and the cycle thread performs it when
 * the kernel allows, queueing the completion for tr_collect (notify.c).  A
 * withdraw succeeds unless the transfer is inside its system call
 * (TR_COMPLETING: the completion follows promptly).  The cycle thread
 * blocks every signal for its whole life, waits on the kernel, applies
 * the events and runs the work, batch by batch.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>

#include "internal.h"

/* Set in the cycle thread, which blocks every signal for its whole life. */
__thread int tr_signals_blocked;

/*
 * What a request asks the core to transfer with: memory (resource, size),
 * a Descriptors request's array and the core's duplicates of it, the
 * caller's scratch (tr_receive), or a file region (tr_request_file).
 * request_locked takes dups and the region's descriptors if it takes the
 * resource (they are then NULL and -1); the caller closes what is left.
 */
struct ask {
	void *resource;
	size_t size;
	int *fds;
	size_t nfds;
	int *dups;
	void *scratch;
	struct tr_file_region *region;
	long long offset;
};

static int request_locked(struct tr_traffic *tr, struct tr_transit *t, struct ask *ask,
    int inline_first, tr_report *report);

void *
tr_cycle_main(void *arg)
{
	struct tr_traffic *tr = arg;
	int due = 0;   /* a batch's notification to write once the lock is dropped */

	tr_signals_blocked = 1;   /* tr_traffic_start created it with every signal blocked */
#ifdef __linux__
	pthread_setname_np(pthread_self(), "traffic-cycle");
	if (tr->policy == TR_CYCLE_IDLE) {
		/*
		 * Run only when nothing else on this CPU wants to: the owner's
		 * thread is never preempted by an edge, and edges batch up while
		 * it works.  Under outside load an idle thread starves, which is
		 * why this is a choice and not the default.
		 */
		struct sched_param none = {0};

		pthread_setschedparam(pthread_self(), SCHED_IDLE, &none);
	} else if (tr->policy == TR_CYCLE_BATCH) {
		/*
		 * A fair share of the CPU, but a wake-up never preempts the
		 * thread running there: edges batch up while the owner's
		 * thread works, and under load nothing starves.
		 */
		struct sched_param none = {0};

		pthread_setschedparam(pthread_self(), SCHED_BATCH, &none);
	}
#endif
	pthread_mutex_lock(&tr->lock);
	while (!tr->stopping) {
		int timeout = (tr->work != NULL || tr->wake_pending) ? 0 : -1;
		int n;

		tr->wake_pending = 0;
		tr->sleeping = timeout != 0;
		pthread_mutex_unlock(&tr->lock);
		if (due) {
			tr_notify_write(tr);
			due = 0;
		}
		n = tr_kernel_wait(tr->kernel, tr->events, TR_BATCH, timeout);
		pthread_mutex_lock(&tr->lock);
		tr->sleeping = 0;
		if (n < 0 && n != -EINTR) {
			tr->fatal = -n;
			break;
		}
		tr->batching = 1;
		if (n > 0)
			tr_apply_events(tr, n);
		tr_run_work(tr);
		tr->batching = 0;
		if (tr->notify_due) {
			tr->notify_due = 0;
			if (!tr->notified && tr->reports != NULL) {
				tr_notify_mark(tr);
				due = 1;
			}
		}
		tr_reap(tr);
	}
	if (tr->fatal) {
		/* The kernel queue failed: fail every request rather than hang it. */
		struct tr_transit *t;

		tr->failed = 1;
		for (t = tr->all; t != NULL; t = t->next_all) {
			if ((t->flags & TF_REQUEST) && !(t->flags & TF_IN_SYSCALL)) {
				t->error = tr->fatal;
				tr_finish_request(tr, t, TR_TERMINATED, NULL);
			}
		}
	}
	pthread_mutex_unlock(&tr->lock);
	if (due)
		tr_notify_write(tr);
	return NULL;
}

int
tr_request(tr_transit *t, void *resource, size_t size, int inline_first, tr_report *report)
{
	return tr_request_fds(t, resource, size, NULL, 0, inline_first, report);
}

int
tr_request_fds(tr_transit *t, void *resource, size_t size, int *fds, size_t nfds,
    int inline_first, tr_report *report)
{
	struct ask ask = {resource, size, fds, nfds, NULL, NULL, NULL, 0};
	struct tr_traffic *tr;
	int outcome;

	memset(report, 0, sizeof *report);
	report->token = t->token;
	/* A Datagrams request brings its records: the core cannot lay them out. */
	if (t->type == TR_DATAGRAMS && (resource == NULL || tr_datagrams_check(resource, size, t->polarity) < 0))
		return -EINVAL;
	if ((outcome = tr_fds_submit(t, size, fds, nfds, &ask.dups)) < 0)
		return outcome;
	tr = tr_lock_traffic(t);
	if (tr == NULL) {
		tr_fds_close_all(ask.dups, nfds);
		return TR_ETERMINATED;
	}
	outcome = request_locked(tr, t, &ask, inline_first, report);
	pthread_mutex_unlock(&tr->lock);
	tr_fds_close_all(ask.dups, nfds);   /* not taken: the duplicates go */
	return outcome;
}

int
tr_receive(tr_transit *t, size_t size, void *scratch, tr_report *report)
{
	struct ask ask = {NULL, size, NULL, 0, NULL, scratch, NULL, 0};
	struct tr_traffic *tr;
	int outcome;

	memset(report, 0, sizeof *report);
	report->token = t->token;
	if (t->polarity != TR_INPUT || (t->type != TR_OCTETS && t->type != TR_DESCRIPTORS) ||
	    scratch == NULL)
		return -EINVAL;
	tr = tr_lock_traffic(t);
	if (tr == NULL)
		return TR_ETERMINATED;
	outcome = request_locked(tr, t, &ask, 1, report);
	pthread_mutex_unlock(&tr->lock);
	return outcome;
}

int
tr_request_file(tr_transit *t, int file, long long offset, unsigned long long count,
    int inline_first, tr_report *report)
{
	struct tr_file_region region;
	struct ask ask = {NULL, 0, NULL, 0, NULL, NULL, &region, offset};
	struct tr_traffic *tr;
	int outcome;

	memset(report, 0, sizeof *report);
	report->token = t->token;
	/* Checked, duplicated and given its pipe outside the lock: system calls. */
	if ((outcome = tr_file_submit(t, file, offset, count, &region)) < 0)
		return outcome;
	ask.size = (size_t)count;
	tr = tr_lock_traffic(t);
	if (tr == NULL) {
		tr_file_region_close(&region);
		return TR_ETERMINATED;
	}
	outcome = request_locked(tr, t, &ask, inline_first, report);
	pthread_mutex_unlock(&tr->lock);
	tr_file_region_close(&region);   /* not taken: the duplicate and the pipe go */
	return outcome;
}

/* The request proper; lock held, and left held.  Takes *dups if it takes the resource. */
static int
request_locked(struct tr_traffic *tr, struct tr_transit *t, struct ask *ask, int inline_first,
    tr_report *report)
{
	size_t size = ask->size;
	int outcome = TR_PENDING;

	if (!tr_threaded(tr) || tr->stopping)
		return tr->stopping ? TR_ETERMINATED : -EINVAL;
	if (tr->failed) {
		report->error = tr->fatal;
		outcome = TR_TERMINATED;
	} else if (tr_ending(t)) {
		if (t->by == TR_BY_OWNER)
			return TR_ETERMINATED;
		report->error = t->error;
		outcome = TR_TERMINATED;
	} else if (t->flags & (TF_REQUEST | TF_ON_REPORTS)) {
		return -EBUSY;
	} else if (t->flags & TF_FAULT) {
		/* A fault met after delivering earlier accepts: report it now. */
		t->flags &= ~TF_FAULT;
		report->error = t->error;
		outcome = TR_FAULT;
	} else {
		t->buf = ask->resource;
		t->size = size;
		t->pos = t->mark = 0;
		tr_fds_install(t, ask->fds, ask->nfds, ask->dups);
		ask->dups = NULL;
		if (ask->region != NULL)
			tr_file_install(t, ask->region, ask->offset);
		t->error = 0;
		t->flags |= TF_REQUEST;
		if (ask->resource == NULL && ask->region == NULL && t->type != TR_SOCKETS &&
		    t->polarity == TR_INPUT && size > 0)
			t->flags |= TF_ALLOC;
		if ((t->flags & TF_ALLOC) && ask->scratch != NULL && inline_first) {
			/* Tried at once into the caller's memory: no allocation. */
			t->buf = ask->scratch;
			t->flags |= TF_SCRATCH;
		}
		t->flags &= ~TF_EXHAUSTED;
		if (size == 0 || (t->type == TR_SOCKETS && size < sizeof(int)))
			outcome = tr_finish_request(tr, t, TR_DONE, report);
		else {
			/*
			 * Nothing is subscribed while nobody waits (see tr_arm): an input
			 * request tries its system call whatever the last one said,
			 * as trio's sockets do, and so does the cycle thread for a
			 * request handed to it (it arms at EAGAIN).
			 */
			if (t->polarity == TR_INPUT || !inline_first)
				t->flags |= TF_READY;
			if (inline_first) {
				outcome = tr_drive(tr, t, report);
				/*
				 * Waiting without having tried (an output whose last
				 * transfer met EAGAIN) needs a subscription that this
				 * EAGAIN may not have made: a withdrawal during that
				 * system call skips it.  tr_arm() is a no-op if one stands.
				 */
				if (outcome == TR_PENDING && !(t->flags & TF_READY)) {
					int err = tr_arm(tr, t->point);

					if (err < 0) {
						tr_terminate(tr, t, TR_LIFE_KERNEL_END, -err);
						outcome = tr_finish_request(tr, t, TR_TERMINATED, report);
					}
				}
			} else {
				push_work(tr, t);
				tr_wake_cycle(tr);
			}
		}
		if (outcome == TR_PENDING) {
			report->stop = t->pos;   /* a partly done send reports its count */
			report->fd_stop = t->fdpos;
			if (t->flags & TF_SCRATCH) {
				/* Waiting: the scratch is the caller's again. */
				t->buf = NULL;
				t->flags &= ~TF_SCRATCH;
			}
		}
	}
	report->outcome = outcome;
	return outcome;
}

int
tr_withdraw(tr_transit *t, tr_report *report)
{
	struct tr_traffic *tr = tr_lock_traffic(t);
	int outcome;

	memset(report, 0, sizeof *report);
	report->token = t->token;
	if (tr == NULL)
		return TR_ETERMINATED;
	if (t->flags & TF_ON_REPORTS) {
		outcome = TR_COMPLETING;    /* completed, not yet collected */
	} else if (!(t->flags & TF_REQUEST)) {
		outcome = -ENOENT;
	} else if (t->flags & TF_IN_SYSCALL) {
		t->flags |= TF_WITHDRAW;    /* the transferring thread completes it */
		outcome = TR_COMPLETING;
		tr->stats.withdraw_in_call += 1;
		if (t->file >= 0)
			tr->stats.withdraw_in_file_call += 1;
	} else {
		t->flags &= ~TF_REQUEST;
		report->outcome = TR_WITHDRAWN;
		report->stop = t->pos;
		report->fd_stop = t->fdpos;   /* a send's descriptors that went out */
		tr_release_resource(t);
		outcome = TR_WITHDRAWN;
	}
	pthread_mutex_unlock(&tr->lock);
	return outcome;
}
