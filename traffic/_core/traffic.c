/*
 * traffic.c: a Traffic's life: create, start (its cycle thread), the
 * operations on the Traffic as a whole (mode, wake, acquire a transit),
 * destroy, and abandon after fork().
 *
 * Transits and Traffics are reachable from Python through plain pointers;
 * the registry lock (tr_registry) orders a transit's release against its
 * Traffic's destruction, and is taken before a Traffic's own mutex.  After
 * fork() the child re-initialises it: a thread of the parent may have held
 * it, and the child has one thread.  The count of live core objects
 * (Traffics and transits) is what the tests' leak check reads.
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

static long live_objects;
pthread_mutex_t tr_registry = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t registry_once = PTHREAD_ONCE_INIT;

static void
registry_after_fork_child(void)
{
	/* A thread of the parent may have held it at fork(); the child has one thread. */
	pthread_mutex_init(&tr_registry, NULL);
}

static void
registry_init(void)
{
	pthread_atfork(NULL, NULL, registry_after_fork_child);
}

long
tr_live_objects(void)
{
	return __atomic_load_n(&live_objects, __ATOMIC_SEQ_CST);
}

void
tr_live(long delta)
{
	__atomic_add_fetch(&live_objects, delta, __ATOMIC_SEQ_CST);
}

#ifndef TR_BUILD_STAMP
/* A compile outside traffic/_ffi_build.py (.ci/run's -fsyntax-only pass). */
#define TR_BUILD_STAMP "unstamped"
#endif

const char *
tr_build_stamp(void)
{
	return TR_BUILD_STAMP;
}

void
tr_wake_cycle(struct tr_traffic *tr)
{
	if (tr->sleeping)
		tr_kernel_wake(tr->kernel);
	else
		tr->wake_pending = 1;
}

int
tr_traffic_create(tr_traffic **out)
{
	struct tr_traffic *tr;
	int err;

	pthread_once(&registry_once, registry_init);
	tr = calloc(1, sizeof *tr);
	if (tr == NULL)
		return -ENOMEM;
	if ((err = tr_kernel_open(&tr->kernel)) < 0) {
		free(tr);
		return err;
	}
	if ((err = tr_notify_open(&tr->notify_read_fd, &tr->notify_write_fd)) < 0) {
		tr_kernel_close(tr->kernel);
		free(tr);
		return err;
	}
	pthread_mutex_init(&tr->lock, NULL);
	pthread_mutex_init(&tr->notify_lock, NULL);
	tr_live(1);
	*out = tr;
	return 0;
}

int
tr_traffic_mode(tr_traffic *tr)
{
	/* Set once under the lock; a stale UNSET is what a racing caller would see anyway. */
	return __atomic_load_n(&tr->mode, __ATOMIC_ACQUIRE);
}

long
tr_traffic_transits(tr_traffic *tr)
{
	const struct tr_transit *t;
	long n = 0;

	pthread_mutex_lock(&tr->lock);
	for (t = tr->all; t != NULL; t = t->next_all)
		n += !(t->flags & TF_RELEASED);
	pthread_mutex_unlock(&tr->lock);
	return n;
}

int
tr_traffic_stats(tr_traffic *tr, tr_stats *stats)
{
	pthread_mutex_lock(&tr->lock);
	*stats = tr->stats;
	pthread_mutex_unlock(&tr->lock);
	return 0;
}

int
tr_traffic_wake(tr_traffic *tr)
{
	pthread_mutex_lock(&tr->lock);
	tr_wake_cycle(tr);
	pthread_mutex_unlock(&tr->lock);
	return 0;
}

int
tr_traffic_acquire(tr_traffic *tr, tr_transit *t, unsigned long long token)
{
	int err = 0;

	pthread_mutex_lock(&tr_registry);
	pthread_mutex_lock(&tr->lock);
	if (tr->stopping)
		err = TR_ETERMINATED;
	else if (t->traffic == tr)
		err = -EALREADY;
	else if (t->life == TR_LIFE_TERMINATED)
		err = TR_ETERMINATED;   /* before "in another Traffic": the end is what matters */
	else if (t->traffic != NULL)
		err = -EBUSY;
	else {
		struct tr_transit *sibling = t->point->io[!t->polarity];

		/* One kernel registration per point: siblings share one Traffic. */
		if (sibling != NULL && sibling->traffic != NULL && sibling->traffic != tr)
			err = -EXDEV;
		else if (t->point->traffic != NULL && t->point->traffic != tr)
			err = -EXDEV;   /* the point belongs to another Traffic for life */
	}
	if (err == 0) {
		t->traffic = tr;
		if (t->point->traffic == NULL) {
			struct tr_point *p = t->point;

			p->traffic = tr;
			p->prev_point = NULL;
			p->next_point = tr->points;
			if (tr->points)
				tr->points->prev_point = p;
			tr->points = p;
		}
		t->token = token;
		t->next_all = tr->all;
		t->prev_all = NULL;
		if (tr->all)
			tr->all->prev_all = t;
		tr->all = t;
	}
	pthread_mutex_unlock(&tr->lock);
	pthread_mutex_unlock(&tr_registry);
	return err;
}

static void
block_signals(sigset_t *saved)
{
	sigset_t all;

	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, saved);
}

int
tr_traffic_start(tr_traffic *tr, int policy)
{
	sigset_t saved;
	int err = 0;

	pthread_mutex_lock(&tr->lock);
	if (tr->stopping)
		err = TR_ETERMINATED;
	else if (tr->mode == TR_MODE_SYNCHRONOUS)
		err = -EINVAL;
	else if (policy != TR_CYCLE_NORMAL && policy != TR_CYCLE_IDLE && policy != TR_CYCLE_BATCH)
		err = -EINVAL;
	else if (tr->mode == TR_MODE_UNSET) {
		tr->policy = policy;
		/* The thread inherits the mask: blocked signals reach Python's main thread. */
		block_signals(&saved);
		err = -pthread_create(&tr->thread, NULL, tr_cycle_main, tr);
		pthread_sigmask(SIG_SETMASK, &saved, NULL);
#ifdef __linux__
		/* Named before start() returns (the thread names itself too, later). */
		if (err == 0)
			pthread_setname_np(tr->thread, "traffic-cycle");
#endif
		if (err == 0)
			tr_set_mode(tr, TR_MODE_THREADED);
	}
	pthread_mutex_unlock(&tr->lock);
	return err;
}

void
tr_traffic_destroy(tr_traffic *tr)
{
	struct tr_transit *t, *next;
	struct tr_point *p;

	pthread_mutex_lock(&tr_registry);
	pthread_mutex_lock(&tr->lock);
	tr->stopping = 1;
	if (tr_threaded(tr)) {
		tr_kernel_wake(tr->kernel);
		pthread_mutex_unlock(&tr->lock);
		pthread_join(tr->thread, NULL);
		pthread_mutex_lock(&tr->lock);
	}
	for (t = tr->all; t != NULL; t = next) {
		next = t->next_all;
		t->flags &= ~(TF_ON_WORK | TF_ON_REPORTS);
		if (t->life != TR_LIFE_TERMINATED)
			t->point->open -= 1;
		tr_life_step(&t->life, &t->by, TR_LIFE_DISCARD);
		t->flags &= ~TF_REQUEST;
		tr_release_resource(t);
		tr_point_close(tr, t->point);
		if (t->flags & TF_RELEASED) {
			tr_transit_free(t);
		} else {
			t->traffic = NULL;
			t->next_all = t->prev_all = NULL;
		}
	}
	tr->all = NULL;
	tr_reap(tr);
	/* What is left belongs to siblings that never entered traffic: closed, now theirs. */
	for (p = tr->points; p != NULL; p = p->next_point) {
		tr_point_close(tr, p);
		p->traffic = NULL;
	}
	tr->points = NULL;
	pthread_mutex_unlock(&tr->lock);
	pthread_mutex_unlock(&tr_registry);

	pthread_mutex_destroy(&tr->lock);
	pthread_mutex_destroy(&tr->notify_lock);
	tr_notify_close(tr->notify_read_fd, tr->notify_write_fd);
	tr_kernel_close(tr->kernel);
	free(tr);
	tr_live(-1);
}

void
tr_traffic_abandon(tr_traffic *tr)
{
	struct tr_transit *t;
	struct tr_point *p;

	/*
	 * After fork(), in the child: the parent's cycle thread does not exist
	 * here and the mutex may be held by a thread that does not exist either.
	 * Close the child's copies of every descriptor without shutdown (the
	 * parent's connections stay intact), detach the transits, and leak the
	 * rest rather than touch the lock.
	 */
	for (t = tr->all; t != NULL; t = t->next_all) {
		tr_life_step(&t->life, &t->by, TR_LIFE_DISCARD);
		t->flags &= ~(TF_REQUEST | TF_ON_WORK | TF_ON_REPORTS);
		tr_release_resource(t);
		if (!t->point->closed) {
			close(t->point->fd);
			t->point->fd = -1;
			t->point->closed = 1;
		}
		t->traffic = NULL;
	}
	tr->all = NULL;
	for (p = tr->points; p != NULL; p = p->next_point) {
		if (!p->closed) {
			close(p->fd);
			p->fd = -1;
			p->closed = 1;
		}
		p->traffic = NULL;
	}
	tr->points = NULL;
	tr_notify_close(tr->notify_read_fd, tr->notify_write_fd);
	tr_kernel_abandon(tr->kernel);
}
