/*
 * notify.c: telling the collector that completions wait, and handing them
 * over.
 *
 * The notification, the completion descriptor read by trio or asyncio, is
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

/* Mark the notification raised, without the system call: lock held. */
void
tr_notify_mark(struct tr_traffic *tr)
{
	tr->notified = 1;
	__atomic_store_n(&tr->raised, 1, __ATOMIC_RELAXED);
}

/*
 * Write the completion descriptor if completions wait, nothing was written
 * for them yet, and the collector may be blocked (always, unless lazy):
 * notify_lock held.  It reads raised, not notified: a collector that took
 * the completions since they were marked cleared it, and a write now would
 * leave the descriptor readable with nothing behind it (a pump waiting on
 * it would wake for nothing, forever).
 */
static void
notify_write_locked(struct tr_traffic *tr)
{
	if (!tr->written && __atomic_load_n(&tr->raised, __ATOMIC_RELAXED) &&
	    (tr->asleep || !tr->lazy)) {
		tr_notify_raise(tr->notify_write_fd);
		tr->written = 1;
	}
}

/*
 * The cycle thread calls it without the main lock at the end of a batch
 * that marked the notification (a system call made holding the lock would put the
 * collector it wakes to sleep on the mutex); others with it.
 */
void
tr_notify_write(struct tr_traffic *tr)
{
	pthread_mutex_lock(&tr->notify_lock);
	notify_write_locked(tr);
	pthread_mutex_unlock(&tr->notify_lock);
}

/* Tell the collector that completions wait: lock held. */
static void
notify_collector(struct tr_traffic *tr)
{
	tr_notify_mark(tr);
	tr_notify_write(tr);
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
	if (tr_threaded(tr) && !tr->notified) {
		/*
		 * One notification per batch: the collector clears it when it empties
		 * the list.  The cycle thread raises it after its whole batch, not
		 * at the first completion: a consumer woken mid-batch (it may
		 * preempt the cycle thread on a shared CPU) would collect one
		 * completion per wake.
		 */
		if (tr->batching) {
			tr->notify_due = 1;
		} else {
			notify_collector(tr);
		}
	}
}

int
tr_traffic_completion_fd(tr_traffic *tr)
{
	return tr->notify_read_fd;
}

const int *
tr_traffic_notify_flag(tr_traffic *tr)
{
	return &tr->raised;
}

int
tr_traffic_collector_asleep(tr_traffic *tr, int asleep)
{
	pthread_mutex_lock(&tr->notify_lock);
	tr->lazy = asleep >= 0;
	tr->asleep = asleep != 0;
	if (tr->asleep)
		notify_write_locked(tr);   /* marked while it was awake */
	pthread_mutex_unlock(&tr->notify_lock);
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
		if (tr->notified) {
			tr->notified = 0;
			__atomic_store_n(&tr->raised, 0, __ATOMIC_RELAXED);
		}
		pthread_mutex_lock(&tr->notify_lock);
		if (tr->written) {
			tr_notify_clear(tr->notify_read_fd);
			tr->written = 0;
		}
		pthread_mutex_unlock(&tr->notify_lock);
	}
	pthread_mutex_unlock(&tr->lock);
	return n;
}

void
tr_free(void *data)
{
	free(data);
}
