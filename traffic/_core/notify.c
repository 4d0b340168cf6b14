/*
 * notify.c: telling the collector that completions wait, and handing them
 * over.
 *
 * The completion descriptor (the "signal", read by trio or asyncio) is
 * raised by the cycle thread and cleared by the collector; a flag of the
 * core mirrors it for collectors that look without a system call.  The
 * descriptor is written outside the main lock (the collector it wakes
 * wants the lock at once), under a lock of its own, and, when the
 * collector is lazy, only while it may be blocked in its I/O wait.
 * tr_collect takes every completed request in one call.
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

/* Mark the signal raised, without the system call: lock held. */
void
tr_mark_signal(struct tr_traffic *tr)
{
	tr->signalled = 1;
	__atomic_store_n(&tr->raised, 1, __ATOMIC_RELAXED);
}

/*
 * Write the completion descriptor if completions wait, nothing was written
 * for them yet, and the collector may be blocked (always, unless lazy):
 * signal_lock held.  It reads raised, not signalled: a collector that took
 * the completions since they were marked cleared it, and a write now would
 * leave the descriptor readable with nothing behind it (a pump waiting on
 * it would wake for nothing, forever).
 */
static void
write_signal_locked(struct tr_traffic *tr)
{
	if (!tr->written && __atomic_load_n(&tr->raised, __ATOMIC_RELAXED) &&
	    (tr->asleep || !tr->lazy)) {
		tr_signal_raise(tr->signal_write);
		tr->written = 1;
	}
}

/*
 * The cycle thread calls it without the main lock at the end of a batch
 * that marked the signal (a system call made holding the lock would put the
 * collector it wakes to sleep on the mutex); others with it.
 */
void
tr_write_signal(struct tr_traffic *tr)
{
	pthread_mutex_lock(&tr->signal_lock);
	write_signal_locked(tr);
	pthread_mutex_unlock(&tr->signal_lock);
}

/* Tell the collector that completions wait: lock held. */
static void
raise_signal(struct tr_traffic *tr)
{
	tr_mark_signal(tr);
	tr_write_signal(tr);
}

void
tr_push_report(struct tr_traffic *tr, struct tr_transit *t)
{
	if (t->flags & TF_ON_REPORTS)
		return;
	t->flags |= TF_ON_REPORTS;
	t->next_report = NULL;
	if (tr->reports_tail)
		tr->reports_tail->next_report = t;
	else
		tr->reports = t;
	tr->reports_tail = t;
	if (tr_threaded(tr) && !tr->signalled) {
		/*
		 * One signal per batch: the collector clears it when it empties
		 * the list.  The cycle thread raises it after its whole batch, not
		 * at the first completion: a consumer woken mid-batch (it may
		 * preempt the cycle thread on a shared CPU) would collect one
		 * completion per wake.
		 */
		if (tr->batching) {
			tr->signal_due = 1;
		} else {
			raise_signal(tr);
		}
	}
}

int
tr_traffic_completion_fd(tr_traffic *tr)
{
	return tr->signal_read;
}

const int *
tr_traffic_signal_flag(tr_traffic *tr)
{
	return &tr->raised;
}

int
tr_traffic_collector_asleep(tr_traffic *tr, int asleep)
{
	pthread_mutex_lock(&tr->signal_lock);
	tr->lazy = asleep >= 0;
	tr->asleep = asleep != 0;
	if (tr->asleep)
		write_signal_locked(tr);   /* marked while it was awake */
	pthread_mutex_unlock(&tr->signal_lock);
	return 0;
}

int
tr_collect(tr_traffic *tr, tr_report *reports, int max)
{
	struct tr_transit *t;
	int n = 0;

	pthread_mutex_lock(&tr->lock);
	while (n < max && (t = pop_report(tr)) != NULL) {
		tr_report_request(t, &reports[n]);
		tr_transit_consider_free(t);
		++n;
	}
	if (tr->reports == NULL) {
		if (tr->signalled) {
			tr->signalled = 0;
			__atomic_store_n(&tr->raised, 0, __ATOMIC_RELAXED);
		}
		pthread_mutex_lock(&tr->signal_lock);
		if (tr->written) {
			tr_signal_clear(tr->signal_read);
			tr->written = 0;
		}
		pthread_mutex_unlock(&tr->signal_lock);
	}
	pthread_mutex_unlock(&tr->lock);
	return n;
}

void
tr_free(void *data)
{
	free(data);
}
