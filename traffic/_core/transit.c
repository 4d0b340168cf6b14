/*
 * transit.c: kernel points and transits: making them, their ownership,
 * their resources, termination and release.
 *
 * Kernel points are closed only here, once every transit on them has
 * terminated and no system call on the descriptor is in flight: the
 * registration is removed first, then the descriptor closed, exactly once.
 * A closed point is not freed at once: an event batch fetched by the cycle
 * may still name it.  Points are freed by the thread that runs the cycle
 * between batches (tr_reap), or when the Traffic is destroyed.
 *
 * A transit's struct is freed when its owner (Python) has released it, it
 * has terminated, and no list or system call refers to it.  A socket's two
 * transits (siblings) share one kernel point, which belongs for life to the
 * Traffic one of them entered first.
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

void
tr_point_close(struct tr_traffic *tr, struct tr_point *p)
{
	if (p->closed)
		return;
	if (p->registered && tr != NULL)
		tr_kernel_unregister(tr->kernel, p->fd);
	/* Never retried on EINTR: on Linux the descriptor is gone either way. */
	close(p->fd);
	p->fd = -1;
	p->closed = 1;
	p->registered = 0;
	p->armed = 0;
}

/* Close the point if nothing is left to use it; called with the lock held. */
void
tr_point_settle(struct tr_traffic *tr, struct tr_point *p)
{
	if (p->open == 0 && p->busy == 0)
		tr_point_close(tr, p);
}

static void
point_unlink(struct tr_traffic *tr, struct tr_point *p)
{
	if (--p->links > 0)
		return;
	if (tr == NULL) {
		tr_point_close(NULL, p);
		free(p);
	} else if (!p->dead) {
		/* An event batch may still name it: the cycle frees it between batches. */
		p->dead = 1;
		p->next_dead = tr->dead;
		tr->dead = p;
	}
}

void
tr_reap(struct tr_traffic *tr)
{
	struct tr_point *p;

	while ((p = tr->dead) != NULL) {
		tr->dead = p->next_dead;
		tr_point_close(tr, p);
		if (p->prev_point)
			p->prev_point->next_point = p->next_point;
		else
			tr->points = p->next_point;
		if (p->next_point)
			p->next_point->prev_point = p->prev_point;
		free(p);
	}
}

void
tr_transit_free(struct tr_transit *t)
{
	struct tr_traffic *tr = t->traffic;
	struct tr_traffic *owner = tr != NULL ? tr : t->point->traffic;

	if (tr != NULL) {
		if (t->prev_all)
			t->prev_all->next_all = t->next_all;
		else
			tr->all = t->next_all;
		if (t->next_all)
			t->next_all->prev_all = t->prev_all;
	}
	if (t->point->io[t->polarity] == t)
		t->point->io[t->polarity] = NULL;
	if (tr != NULL) {
		struct tr_point *p = t->point;
		struct tr_transit *other = p->io[!t->polarity];

		if (other != NULL && other->traffic != tr) {
			/*
			 * The point leaves this Traffic with its last transit in it;
			 * the sibling outside keeps it.  Events of the current batch
			 * may still name it: apply_events ignores transits of other
			 * Traffics (or of none).
			 */
			if (p->registered && !p->closed)
				tr_kernel_unregister(tr->kernel, p->fd);
			p->registered = 0;
			p->armed = 0;
		}
	}
	if (t->fds_owned)
		tr_fds_release(t);   /* the core's duplicates; never the owner's array */
	tr_file_discard(t);
	point_unlink(owner, t->point);
	free(t);
	tr_live(-1);
}

/* Free a released transit once nothing refers to it; lock held. */
int
tr_transit_consider_free(struct tr_transit *t)
{
	const unsigned int held = TF_IN_SYSCALL | TF_ON_WORK | TF_ON_REPORTS;

	if ((t->flags & TF_RELEASED) && t->life == TR_LIFE_TERMINATED && !(t->flags & held)) {
		tr_transit_free(t);
		return 1;
	}
	return 0;
}

/*
 * Terminate the transit by event (a tr_life_event: see life.c), with the
 * errno of a kernel's end; lock held, not IN_SYSCALL.  Returns 0, or
 * TR_ETERMINATED for a step outside the life's table.
 *
 * The owner's termination shuts down its own direction of a connection
 * (half-close); disregard and kernel-reported ends do not.  The last
 * transit shuts down too, before the close: another process (a forked
 * child) or a dup() may hold the descriptor, and close() alone would leave
 * the connection open for them, which is what disregard is for.  A
 * listener is only closed: shutdown(2) would stop it listening for every
 * holder.  The point closes with its last transit.  An owner's end after
 * the kernel's changes only who ended it.
 */
int
tr_terminate(struct tr_traffic *tr, struct tr_transit *t, int event, int error)
{
	struct tr_point *p = t->point;
	int was = t->life, err;

	if ((err = tr_life_step(&t->life, &t->by, event)) < 0 || was == TR_LIFE_TERMINATED)
		return err;
	t->flags &= ~TF_READY;
	t->error = error;
	p->open -= 1;
	if (t->by == TR_BY_OWNER && !(t->flags & TF_DISREGARD) && p->is_socket && t->type != TR_SOCKETS
	    && t->type != TR_DATAGRAMS && !p->closed)
		shutdown(p->fd, t->polarity == TR_INPUT ? SHUT_RD : SHUT_WR);
	tr_point_settle(tr, p);
	return 0;
}

int
tr_set_nonblocking(int fd)
{
	int flags = fcntl(fd, F_GETFL);

	/* Add the flag: never overwrite O_APPEND and friends. */
	if (flags < 0)
		return -errno;
	if (!(flags & O_NONBLOCK) && fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0)
		return -errno;
	return 0;
}

int
tr_transit_create(tr_transit **out, int fd, int type, int polarity, tr_transit *sibling)
{
	struct tr_transit *t;
	struct tr_point *p;
	struct stat st;
	int err;

	if (type != TR_OCTETS && type != TR_SOCKETS && type != TR_DESCRIPTORS && type != TR_DATAGRAMS)
		return -EINVAL;
	if (polarity != TR_INPUT && polarity != TR_OUTPUT)
		return -EINVAL;
	if (type == TR_SOCKETS && polarity != TR_INPUT)
		return -EINVAL;

	if (sibling != NULL) {
		p = sibling->point;
		if (sibling->traffic != NULL || sibling->life == TR_LIFE_TERMINATED || p->io[polarity] != NULL)
			return -EINVAL;
		if (type != sibling->type || fd != p->fd)
			return -EINVAL;
	} else {
		if (fd < 0)
			return -EBADF;
		if (fstat(fd, &st) < 0)
			return -errno;
		if (type == TR_SOCKETS) {
			int listening = 0;
			socklen_t len = sizeof listening;

			if (!S_ISSOCK(st.st_mode))
				return -ENOTSOCK;
			if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) < 0)
				return -errno;
			if (!listening)
				return -EINVAL;
		}
		if (type == TR_DESCRIPTORS) {
			struct sockaddr_storage name;
			socklen_t len = sizeof name;
			int kind = 0;
			socklen_t klen = sizeof kind;

			/* SCM_RIGHTS needs an AF_UNIX socket; records would need other framing. */
			if (!S_ISSOCK(st.st_mode))
				return -ENOTSOCK;
			memset(&name, 0, sizeof name);
			if (getsockname(fd, (struct sockaddr *)&name, &len) < 0)
				return -errno;
			if (name.ss_family != AF_UNIX)
				return -EAFNOSUPPORT;
			if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &kind, &klen) < 0)
				return -errno;
			if (kind != SOCK_STREAM)
				return -EPROTOTYPE;
		}
		if (type == TR_DATAGRAMS) {
			int kind = 0;
			socklen_t klen = sizeof kind;

			if (!S_ISSOCK(st.st_mode))
				return -ENOTSOCK;
			if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &kind, &klen) < 0)
				return -errno;
			if (kind != SOCK_DGRAM)
				return -EPROTOTYPE;
		}
		if ((err = tr_set_nonblocking(fd)) < 0)
			return err;
		p = calloc(1, sizeof *p);
		if (p == NULL)
			return -ENOMEM;
		p->fd = fd;
		p->is_socket = S_ISSOCK(st.st_mode) ? 1 : 0;
		p->is_file = S_ISREG(st.st_mode) || S_ISDIR(st.st_mode) ? 1 : 0;
	}

	t = calloc(1, sizeof *t);
	if (t == NULL) {
		if (sibling == NULL)
			free(p);
		return -ENOMEM;
	}
	t->point = p;
	t->type = type;
	t->polarity = polarity;
	t->flags = TF_READY;   /* unknown readiness: try first, register at EAGAIN */
	t->file = t->pipe_rd = t->pipe_wr = -1;
	p->io[polarity] = t;
	p->links += 1;
	p->open += 1;
	tr_live(1);
	*out = t;
	return 0;
}

/*
 * Under the lock of the point's Traffic, as everything of the point: its
 * cycle thread closes the point when a transfer meets the end, and writes
 * the bit fields that share a word with closed (armed) on every event.
 * Without a Traffic, the point is the caller's alone.
 */
int
tr_transit_fd(tr_transit *t)
{
	struct tr_traffic *owner;
	int fd;

	pthread_mutex_lock(&tr_registry);
	owner = t->point->traffic;
	if (owner != NULL)
		pthread_mutex_lock(&owner->lock);
	fd = t->point->closed ? -1 : t->point->fd;
	if (owner != NULL)
		pthread_mutex_unlock(&owner->lock);
	pthread_mutex_unlock(&tr_registry);
	return fd;
}

/*
 * Lock the transit's Traffic.  Returns NULL, with nothing locked, when the
 * transit is not in traffic (never acquired, or its Traffic destroyed).
 */
struct tr_traffic *
tr_lock_traffic(struct tr_transit *t)
{
	struct tr_traffic *tr;

	pthread_mutex_lock(&tr_registry);
	tr = t->traffic;
	if (tr != NULL)
		pthread_mutex_lock(&tr->lock);
	pthread_mutex_unlock(&tr_registry);
	return tr;
}

int
tr_transit_status(tr_transit *t, int *error)
{
	struct tr_traffic *tr = tr_lock_traffic(t);
	int status = 0;

	if (tr != NULL)
		status |= TR_ST_ACQUIRED;
	if (t->buf != NULL || t->file >= 0)
		status |= TR_ST_RESOURCE;
	/* Exhausted once its exhaust event is delivered (the seed's definition). */
	if ((t->flags & TF_EXHAUSTED) && !(t->events & TR_EV_EXHAUST))
		status |= TR_ST_EXHAUSTED;
	if (tr_ending(t))
		status |= TR_ST_TERMINATED;
	if (t->flags & TF_REQUEST)
		status |= TR_ST_REQUEST;
	*error = t->error;
	if (tr != NULL)
		pthread_mutex_unlock(&tr->lock);
	return status;
}

int
tr_transit_inject(tr_transit *t, int error)
{
	struct tr_traffic *tr = tr_lock_traffic(t);

	if (tr == NULL)
		return TR_ETERMINATED;
	t->inject = error;
	/* Fire at once if a transfer is waiting, rather than at the next edge. */
	t->flags |= TF_READY;
	if (tr_wants_transfer(t)) {
		push_work(tr, t);
		tr_wake_cycle(tr);
	}
	pthread_mutex_unlock(&tr->lock);
	return 0;
}

void
tr_fds_close_all(int *fds, size_t n)
{
	size_t i;

	if (fds == NULL)
		return;
	for (i = 0; i < n; ++i)
		close(fds[i]);
	free(fds);
}

/*
 * Check a resource's descriptor part, and make the duplicates an output
 * Descriptors transit sends (*dups, the core's own; NULL for input, whose
 * array is the owner's).  No lock held: F_DUPFD_CLOEXEC never blocks.
 */
int
tr_fds_submit(struct tr_transit *t, size_t size, int *fds, size_t nfds, int **dups)
{
	size_t i;

	*dups = NULL;
	if (nfds == 0)
		return 0;
	if (t->type != TR_DESCRIPTORS || fds == NULL)
		return -EINVAL;
	if (t->polarity == TR_INPUT)
		return 0;
	/* At least one byte per message for the descriptors to ride on. */
	if (size < (nfds + TR_FDS_PER_MESSAGE - 1) / TR_FDS_PER_MESSAGE)
		return -EINVAL;
	*dups = malloc(nfds * sizeof(int));
	if (*dups == NULL)
		return -ENOMEM;
	for (i = 0; i < nfds; ++i) {
		int d = fds[i] < 0 ? -1 : fcntl(fds[i], F_DUPFD_CLOEXEC, 0);

		if (d < 0) {
			int err = fds[i] < 0 ? EBADF : errno;

			tr_fds_close_all(*dups, i);
			*dups = NULL;
			return -err;
		}
		(*dups)[i] = d;
	}
	return 0;
}

/* Install a resource's descriptor part; lock held. */
void
tr_fds_install(struct tr_transit *t, int *fds, size_t nfds, int *dups)
{
	t->fds = dups != NULL ? dups : (nfds > 0 ? fds : NULL);
	t->nfds = t->fds != NULL ? nfds : 0;
	t->fds_owned = dups != NULL;
	t->fdpos = t->fdmark = 0;
}

int
tr_transit_acquire(tr_transit *t, void *resource, size_t size)
{
	return tr_transit_acquire_fds(t, resource, size, NULL, 0);
}

int
tr_transit_acquire_fds(tr_transit *t, void *resource, size_t size, int *fds, size_t nfds)
{
	struct tr_traffic *tr;
	int *dups;
	int err;

	if (t->type == TR_DATAGRAMS && tr_datagrams_check(resource, size, t->polarity) < 0)
		return -EINVAL;
	if ((err = tr_fds_submit(t, size, fds, nfds, &dups)) < 0)
		return err;
	tr = tr_lock_traffic(t);
	if (tr == NULL) {
		tr_fds_close_all(dups, nfds);
		return t->life == TR_LIFE_TERMINATED ? TR_ETERMINATED : -ENOTCONN;
	}
	if (tr_threaded(tr))
		err = -EINVAL;
	else if (tr_ending(t))
		err = TR_ETERMINATED;
	else if (t->buf != NULL || t->file >= 0 || (t->events & (TR_EV_EXHAUST | TR_EV_FAULT)))
		err = -EBUSY;   /* the current resource is not exhausted, or its end not yet seen */
	else {
		tr_set_mode(tr, TR_MODE_SYNCHRONOUS);
		t->buf = resource;
		t->size = size;
		t->pos = t->mark = 0;
		tr_fds_install(t, fds, nfds, dups);
		dups = NULL;
		t->flags &= ~TF_EXHAUSTED;
		if (t->flags & TF_READY) {
			push_work(tr, t);
			tr_wake_cycle(tr);
		}
	}
	pthread_mutex_unlock(&tr->lock);
	tr_fds_close_all(dups, nfds);   /* refused: the duplicates go */
	return err;
}

int
tr_transit_acquire_file(tr_transit *t, int file, long long offset, unsigned long long count)
{
	struct tr_file_region region;
	struct tr_traffic *tr;
	int err;

	/* Checked, duplicated and given its pipe outside the lock: system calls. */
	if ((err = tr_file_submit(t, file, offset, count, &region)) < 0)
		return err;
	tr = tr_lock_traffic(t);
	if (tr == NULL) {
		tr_file_region_close(&region);
		return t->life == TR_LIFE_TERMINATED ? TR_ETERMINATED : -ENOTCONN;
	}
	if (tr_threaded(tr))
		err = -EINVAL;
	else if (tr_ending(t))
		err = TR_ETERMINATED;
	else if (t->buf != NULL || t->file >= 0 || (t->events & (TR_EV_EXHAUST | TR_EV_FAULT)))
		err = -EBUSY;
	else {
		tr_set_mode(tr, TR_MODE_SYNCHRONOUS);
		t->size = (size_t)count;
		t->pos = t->mark = 0;
		tr_file_install(t, &region, offset);
		t->flags &= ~TF_EXHAUSTED;
		if (t->flags & TF_READY) {
			push_work(tr, t);
			tr_wake_cycle(tr);
		}
	}
	pthread_mutex_unlock(&tr->lock);
	tr_file_region_close(&region);   /* refused: the duplicate and the pipe go */
	return err;
}

/*
 * The owner ended a transit: report it so the owner can unpin the
 * resource (tr_report_owner_end), and have a synchronous cycle hand the
 * event over at once.  Lock held.
 */
static void
report_end(struct tr_traffic *tr, struct tr_transit *t)
{
	tr_report_owner_end(tr, t, NULL);
	if (!tr_threaded(tr))
		tr_wake_cycle(tr);
}

int
tr_transit_terminate(tr_transit *t, int disregard)
{
	struct tr_traffic *tr = tr_lock_traffic(t);
	int event;

	if (tr == NULL) {
		/* Not in traffic itself; its sibling's Traffic, if any, guards the point. */
		struct tr_traffic *owner;

		pthread_mutex_lock(&tr_registry);
		owner = t->point->traffic;
		if (owner != NULL)
			pthread_mutex_lock(&owner->lock);
		if (t->life != TR_LIFE_TERMINATED) {
			if (disregard)
				t->flags |= TF_DISREGARD;
			tr_terminate(owner, t, TR_LIFE_OWNER_END, 0);
		}
		if (owner != NULL)
			pthread_mutex_unlock(&owner->lock);
		pthread_mutex_unlock(&tr_registry);
		return 0;
	}
	event = (t->flags & TF_IN_SYSCALL) ? TR_LIFE_OWNER_DEFER : TR_LIFE_OWNER_END;
	if (t->life == TR_LIFE_OPEN && disregard)
		t->flags |= TF_DISREGARD;
	if (t->life != TR_LIFE_OPEN || event == TR_LIFE_OWNER_DEFER) {
		/*
		 * Ended by the kernel (EOF, an error) before, and now by its
		 * owner too; or a system call is in flight, and the thread that
		 * makes it finishes the termination.
		 */
		tr_life_step(&t->life, &t->by, event);
	} else {
		tr_terminate(tr, t, event, 0);
		report_end(tr, t);
	}
	pthread_mutex_unlock(&tr->lock);
	return 0;
}

void
tr_transit_release(tr_transit *t)
{
	struct tr_traffic *tr;

	pthread_mutex_lock(&tr_registry);
	tr = t->traffic;
	if (tr == NULL) {
		/* Its sibling may be in traffic: then that Traffic guards the point. */
		struct tr_traffic *owner = t->point->traffic;

		if (owner != NULL)
			pthread_mutex_lock(&owner->lock);
		if (t->life != TR_LIFE_TERMINATED)
			tr_terminate(owner, t, TR_LIFE_OWNER_END, 0);
		tr_transit_free(t);
		if (owner != NULL)
			pthread_mutex_unlock(&owner->lock);
		pthread_mutex_unlock(&tr_registry);
		return;
	}
	pthread_mutex_lock(&tr->lock);
	pthread_mutex_unlock(&tr_registry);
	/*
	 * Dropped while in traffic: terminate it, never free it under the core.
	 * Its last report still reaches the owner's collector, which unpins the
	 * resource; the struct goes when nothing refers to it.
	 */
	t->flags |= TF_RELEASED;
	if (t->life == TR_LIFE_OPEN) {
		if (t->flags & TF_IN_SYSCALL) {
			tr_life_step(&t->life, &t->by, TR_LIFE_OWNER_DEFER);
		} else {
			tr_close_unreported(t);
			tr_terminate(tr, t, TR_LIFE_OWNER_END, 0);
			report_end(tr, t);
		}
	} else if (!(t->flags & (TF_IN_SYSCALL | TF_REQUEST))) {
		tr_close_unreported(t);
	}
	tr_transit_consider_free(t);
	pthread_mutex_unlock(&tr->lock);
}

int
tr_transit_forget(tr_transit *t)
{
	int err = 0;

	/*
	 * Give the descriptor back instead of closing it: for a constructor
	 * that failed half-way, whose caller still owns the descriptor.
	 */
	pthread_mutex_lock(&tr_registry);
	if (t->traffic != NULL || t->point->traffic != NULL || t->point->links != 1) {
		err = -EBUSY;
	} else {
		t->point->closed = 1;
		t->point->fd = -1;
		if (t->life != TR_LIFE_TERMINATED)
			t->point->open -= 1;
		tr_life_step(&t->life, &t->by, TR_LIFE_DISCARD);
		tr_transit_free(t);
	}
	pthread_mutex_unlock(&tr_registry);
	return err;
}
