/*
 * cycle.c: the synchronous cycle: tr_cycle_enter waits for kernel events
 * in the calling thread and performs the transfers they allow,
 * tr_cycle_take hands out each transit's events, tr_cycle_exit closes the
 * cycle.  One thread at a time runs a Traffic's cycle.
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

int
tr_cycle_enter(tr_traffic *tr, int timeout_ms)
{
	int n, err = 0;

	pthread_mutex_lock(&tr->lock);
	if (tr->stopping)
		err = TR_ETERMINATED;
	else if (tr_threaded(tr))
		err = -EINVAL;
	else if (tr->cycling)
		err = -EBUSY;
	if (err != 0) {
		pthread_mutex_unlock(&tr->lock);
		return err;
	}
	tr_set_mode(tr, TR_MODE_SYNCHRONOUS);
	tr->cycling = 1;
	/* Carried-over events, ready work or a wake: look, but do not wait. */
	if (tr->reports != NULL || tr->work != NULL || tr->wake_pending)
		timeout_ms = 0;
	tr->wake_pending = 0;
	tr->sleeping = timeout_ms != 0;
	pthread_mutex_unlock(&tr->lock);

	n = tr_kernel_wait(tr->kernel, tr->events, TR_BATCH, timeout_ms);

	pthread_mutex_lock(&tr->lock);
	tr->sleeping = 0;
	if (n < 0) {
		tr->cycling = 0;
		pthread_mutex_unlock(&tr->lock);
		return n;
	}
	tr_apply_events(tr, n);
	tr_run_work(tr);
	tr_reap(tr);
	n = tr->reports != NULL;
	pthread_mutex_unlock(&tr->lock);
	return n;
}

int
tr_cycle_take(tr_traffic *tr, tr_report *report)
{
	struct tr_transit *t;
	int taken = 0;

	pthread_mutex_lock(&tr->lock);
	while (!taken && (t = pop_report(tr)) != NULL) {
		if (t->events == 0) {
			tr_transit_consider_free(t);
			continue;
		}
		report->token = t->token;
		report->events = t->events;
		report->outcome = 0;
		report->error = t->error;
		report->start = t->mark;
		report->stop = t->pos;
		report->fd_start = t->fdmark;
		report->fd_stop = t->fdpos;
		report->data = NULL;
		t->mark = t->pos;
		t->fdmark = t->fdpos;
		if (t->events & (TR_EV_EXHAUST | TR_EV_FAULT | TR_EV_TERMINATE)) {
			t->buf = NULL;   /* released: the owner keeps it for this cycle's view */
			tr_fds_release(t);  /* the reported descriptors are the owner's now */
			tr_file_release(t);  /* a region's duplicate (held bytes stay) */
		}
		t->events = 0;
		taken = 1;
		tr_transit_consider_free(t);
	}
	pthread_mutex_unlock(&tr->lock);
	return taken;
}

void
tr_cycle_exit(tr_traffic *tr)
{
	pthread_mutex_lock(&tr->lock);
	tr->cycling = 0;
	pthread_mutex_unlock(&tr->lock);
}
