/*
 * kqueue.c: the kernel event backend for the BSDs and macOS, kqueue(2).
 *
 * Some facts about kqueue this relies on:
 *
 * - A knote is keyed by (descriptor, filter), so a descriptor is registered
 *   as up to two knotes, EVFILT_READ and EVFILT_WRITE, each added the first
 *   time the core asks for its direction (both in one kevent() change list
 *   when asked together).  They are reported separately, so one wait may
 *   yield two tr_kevents with the same udata; the core ORs them.
 * - EV_CLEAR makes a knote edge-triggered: its state is reset when it is
 *   retrieved, so the core loops every transfer until EAGAIN and keeps a
 *   "kernel ready" bit for transfers it could not finish.
 * - EV_ADD evaluates the filter at once, so registering reports the
 *   descriptor's current readiness and registering lazily misses nothing.
 * - A change list is applied in order and stops at the first failing change
 *   when there is no room for receipts: a registration that fails halfway
 *   deletes whatever part of it was added.
 * - EV_EOF on EVFILT_READ means the peer hung up while unread input may
 *   still be queued (TR_K_HUP | TR_K_READ: the core drains until read()
 *   returns 0); on EVFILT_WRITE it means nothing more can be written
 *   (TR_K_WRITE | TR_K_HUP: the write reports the error).  On a socket,
 *   fflags then holds its pending error, which the event hands over (see
 *   tr_kernel_wait).  An EV_ERROR entry in the event list is an error on
 *   the knote itself, reported as TR_K_ERROR | TR_K_READ | TR_K_WRITE so
 *   that both directions find it.
 * - Closing a descriptor removes its knotes, but the core unregisters
 *   before it closes all the same; unregistering deletes each filter and
 *   ignores ENOENT (a knote already gone).
 * - kevent() changes are safe while another thread waits in kevent() on
 *   the same kqueue.
 * - EV_DISPATCH (a threaded Traffic's arm) disables a knote after one
 *   event, its own direction only; EV_ENABLE re-enables it (EV_ADD of an
 *   existing knote does not), and without EV_CLEAR it is level-triggered,
 *   so readiness already there is reported.
 * - A kqueue is not inherited by fork(2): a child never closes its number.
 * - Built on Linux, this is libkqueue, kqueue(2) in user space over epoll;
 *   where it departs from the manual pages this file follows the manual
 *   pages and docs/platforms.rst says what differs.
 *
 * The wake is an EVFILT_USER knote (ident 0, EV_CLEAR) triggered with
 * NOTE_TRIGGER; where EVFILT_USER is missing it is a non-blocking pipe
 * whose read end is registered for EVFILT_READ with a NULL udata and
 * drained when it fires.  Either way a wait consumes it without reporting
 * it.  The completion notification is a non-blocking pipe: no eventfd here.
 */
#if defined(__linux__)
#define _GNU_SOURCE  /* pipe2() when built against libkqueue */
#endif
#include <sys/types.h>
#include <sys/event.h>
#include <sys/time.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

#define TR_KQUEUE_BATCH 256

const char *
tr_backend(void)
{
	return "kqueue";
}

/* pipe2(2): not on macOS; override with -DTR_HAVE_PIPE2=0 or 1. */
#if !defined(TR_HAVE_PIPE2)
#if defined(__FreeBSD__) || defined(__NetBSD__) || defined(__OpenBSD__) || \
    defined(__DragonFly__) || defined(__linux__)
#define TR_HAVE_PIPE2 1
#else
#define TR_HAVE_PIPE2 0
#endif
#endif

/*
 * libkqueue, kqueue(2) in user space over epoll (the Linux build), frees a
 * closed kqueue's own descriptors later, from its monitoring thread, unless
 * asked to do it now.  It exports this without declaring it.
 */
#if defined(__linux__)
#define TR_LIBKQUEUE 1
void libkqueue_drain_pending_close(void);
#endif

/* NetBSD before 10 declares kevent.udata as intptr_t, the others as void *. */
#define TR_UDATA(p) ((__typeof__(((struct kevent *)0)->udata))(p))

struct tr_kernel {
	int kq;
#ifndef EVFILT_USER
	int wake_rfd;
	int wake_wfd;
#endif
	struct kevent events[TR_KQUEUE_BATCH];
};

#if !TR_HAVE_PIPE2
/* Add O_NONBLOCK and FD_CLOEXEC to what fd has. */
static int
tr_fd_flags(int fd)
{
	int fl;

	fl = fcntl(fd, F_GETFL);
	if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
		return -errno;
	fl = fcntl(fd, F_GETFD);
	if (fl < 0 || fcntl(fd, F_SETFD, fl | FD_CLOEXEC) < 0)
		return -errno;
	return 0;
}
#endif

/* A non-blocking, close-on-exec pipe. */
static int
tr_pipe_open(int fds[2])
{
#if TR_HAVE_PIPE2
	if (pipe2(fds, O_CLOEXEC | O_NONBLOCK) < 0)
		return -errno;
	return 0;
#else
	int err;

	if (pipe(fds) < 0)
		return -errno;
	if ((err = tr_fd_flags(fds[0])) < 0 || (err = tr_fd_flags(fds[1])) < 0) {
		close(fds[0]);
		close(fds[1]);
		return err;
	}
	return 0;
#endif
}

/* Read a non-blocking descriptor until it would block (or ends). */
static void
tr_drain(int fd)
{
	char buf[64];
	ssize_t n;

	for (;;) {
		n = read(fd, buf, sizeof buf);
		if (n > 0 || (n < 0 && errno == EINTR))
			continue;
		break;  /* EAGAIN: empty */
	}
}

/* Write one byte to a non-blocking descriptor; EAGAIN: a byte is pending. */
static int
tr_poke(int fd)
{
	char one = 1;

	while (write(fd, &one, 1) < 0) {
		if (errno == EAGAIN)
			return 0;
		if (errno != EINTR)
			return -errno;
	}
	return 0;
}

int
tr_kernel_open(struct tr_kernel **out)
{
	struct tr_kernel *k = calloc(1, sizeof *k);
	struct kevent change;
	int err;

	if (k == NULL)
		return -ENOMEM;
	k->kq = kqueue();
	if (k->kq < 0) {
		err = -errno;
		free(k);
		return err;
	}
	/* Not inherited by fork(2) anyway; this covers exec without fork. */
	if (fcntl(k->kq, F_SETFD, FD_CLOEXEC) < 0) {
		err = -errno;
		goto fail;
	}
#ifdef EVFILT_USER
	EV_SET(&change, 0, EVFILT_USER, EV_ADD | EV_CLEAR, 0, 0, TR_UDATA(NULL));
	if (kevent(k->kq, &change, 1, NULL, 0, NULL) < 0) {
		err = -errno;
		goto fail;
	}
#else
	{
		int fds[2];

		if ((err = tr_pipe_open(fds)) < 0)
			goto fail;
		k->wake_rfd = fds[0];
		k->wake_wfd = fds[1];
	}
	EV_SET(&change, k->wake_rfd, EVFILT_READ, EV_ADD | EV_CLEAR, 0, 0,
	    TR_UDATA(NULL));
	if (kevent(k->kq, &change, 1, NULL, 0, NULL) < 0) {
		err = -errno;
		close(k->wake_rfd);
		close(k->wake_wfd);
		goto fail;
	}
#endif
	*out = k;
	return 0;

fail:
	close(k->kq);
	free(k);
	return err;
}

/*
 * kqueue(2): "The queue is not inherited by a child created with fork(2)."
 * (libkqueue closes the child's copy itself.)  Its number is free in the
 * child, or already another descriptor's: never close it.  The wake pipe,
 * where there is one, was inherited.
 */
void
tr_kernel_abandon(struct tr_kernel *k)
{
#ifndef EVFILT_USER
	close(k->wake_rfd);
	close(k->wake_wfd);
#endif
	free(k);
}

void
tr_kernel_close(struct tr_kernel *k)
{
	close(k->kq);
#ifdef TR_LIBKQUEUE
	/* The kqueue's own descriptors go with it, not later. */
	libkqueue_drain_pending_close();
#endif
	tr_kernel_abandon(k);   /* and what a forked child lets go of too */
}

/* Delete one filter of fd; ENOENT (never added, or already gone) is fine. */
static int
tr_kernel_delete(struct tr_kernel *k, int fd, int filter)
{
	struct kevent change;

	EV_SET(&change, fd, filter, EV_DELETE, 0, 0, TR_UDATA(NULL));
	if (kevent(k->kq, &change, 1, NULL, 0, NULL) < 0 && errno != ENOENT)
		return -errno;
	return 0;
}

/*
 * One kevent() change list for fd: the knotes of the directions in add
 * (TR_K_READ, TR_K_WRITE) are added with EV_ADD | mode, those in enable are
 * re-enabled (EV_ENABLE: they exist already, and keep the mode they were
 * added with).  On failure the list stopped at the failing change: the
 * knotes it added are deleted again.
 */
static int
subscribe(struct tr_kernel *k, int fd, void *udata, unsigned short mode, unsigned int add,
    unsigned int enable)
{
	static const struct { unsigned int direction; short filter; } filters[2] = {
		{TR_K_READ, EVFILT_READ},
		{TR_K_WRITE, EVFILT_WRITE},
	};
	struct kevent changes[2];
	int i, n = 0, err;

	for (i = 0; i < 2; ++i) {
		unsigned short flags;

		if (add & filters[i].direction)
			flags = EV_ADD | mode;
		else if (enable & filters[i].direction)
			flags = EV_ENABLE;
		else
			continue;
		/* No n++ inside EV_SET: some systems' macro evaluates it more than once. */
		EV_SET(&changes[n], fd, filters[i].filter, flags, 0, 0, TR_UDATA(udata));
		++n;
	}
	if (n > 0 && kevent(k->kq, changes, n, NULL, 0, NULL) < 0) {
		err = -errno;
		for (i = 0; i < 2; ++i) {
			if (add & filters[i].direction)
				(void)tr_kernel_delete(k, fd, filters[i].filter);
		}
		return err;
	}
	return 0;
}

int
tr_kernel_register(struct tr_kernel *k, int fd, void *udata, unsigned int had, unsigned int want)
{
	return subscribe(k, fd, udata, EV_CLEAR, want & ~had, 0);
}

/*
 * Where EV_DISPATCH is missing, EV_ONESHOT does the same for an arm: it
 * deletes the knote after one event, and the next EV_ADD makes it anew.
 */
#ifdef EV_DISPATCH
#define TR_ARM_DELETES 0
#else
#define EV_DISPATCH EV_ONESHOT
#define TR_ARM_DELETES 1
#endif

/*
 * Level-triggered (no EV_CLEAR), disabled after one event (EV_DISPATCH).
 * A direction's first arm adds its knote; later arms re-enable it with
 * EV_ENABLE, the only flag that clears a dispatched knote's disabled
 * state (EV_ADD on an existing knote updates it and leaves it disabled).
 * Directions still armed are left alone.  With EV_ONESHOT for EV_DISPATCH
 * the knote was deleted when it fired, so every arm adds.
 */
int
tr_kernel_arm(struct tr_kernel *k, int fd, void *udata, unsigned int had, unsigned int armed,
    unsigned int want)
{
	unsigned int rearm = want & ~armed;

#if TR_ARM_DELETES
	had = 0;
#endif
	return subscribe(k, fd, udata, EV_DISPATCH, rearm & ~had, rearm & had);
}

int
tr_kernel_unregister(struct tr_kernel *k, int fd)
{
	/* One change each: a change list would stop at the first ENOENT. */
	int err = tr_kernel_delete(k, fd, EVFILT_READ);
	int err2 = tr_kernel_delete(k, fd, EVFILT_WRITE);

	return err < 0 ? err : err2;
}

int
tr_kernel_wait(struct tr_kernel *k, struct tr_kevent *events, int max, int timeout_ms)
{
	struct timespec ts, *tsp = NULL;
	int n, i, stored = 0;

	if (max <= 0)
		return -EINVAL;  /* as epoll_wait; kevent would not wait at all */
	if (max > TR_KQUEUE_BATCH)
		max = TR_KQUEUE_BATCH;
	if (timeout_ms >= 0) {
		ts.tv_sec = timeout_ms / 1000;
		ts.tv_nsec = (long)(timeout_ms % 1000) * 1000000L;
		tsp = &ts;
	}
	n = kevent(k->kq, NULL, 0, k->events, max, tsp);
	if (n < 0)
		return -errno;

	for (i = 0; i < n; ++i) {
		const struct kevent *e = &k->events[i];
		unsigned int flags = 0, disarmed;
		int error = 0;

#ifdef EVFILT_USER
		if (e->filter == EVFILT_USER)
			continue;  /* the wake; EV_CLEAR has consumed it */
#else
		if (e->filter == EVFILT_READ && e->ident == (uintptr_t)k->wake_rfd) {
			tr_drain(k->wake_rfd);  /* the wake */
			continue;
		}
#endif
		/* EV_DISPATCH is per knote: only the reported filter is disarmed. */
		disarmed = e->filter == EVFILT_WRITE ? TR_K_WRITE : TR_K_READ;
		if (e->flags & EV_ERROR) {
			flags |= TR_K_ERROR | TR_K_READ | TR_K_WRITE;
			error = (int)e->data;
		} else if (e->filter == EVFILT_READ) {
			flags |= TR_K_READ;
			if (e->flags & EV_EOF)
				flags |= TR_K_HUP;
		} else if (e->filter == EVFILT_WRITE) {
			flags |= TR_K_WRITE;
			if (e->flags & EV_EOF)
				flags |= TR_K_HUP;
		} else {
			continue;  /* no other filter is registered */
		}
		/*
		 * With EV_EOF, a socket's fflags carry its pending error
		 * (so_error): what epoll reports as EPOLLERR.  The error is the
		 * event's: FreeBSD leaves it on the socket for the next system
		 * call too, but libkqueue reads it with SO_ERROR, which clears
		 * it, so the next read() sees a plain end.  The core keeps it
		 * (for sockets: the man page gives fflags no meaning elsewhere).
		 */
		if ((e->flags & EV_EOF) && e->fflags != 0) {
			flags |= TR_K_ERROR | TR_K_READ | TR_K_WRITE;
			error = (int)e->fflags;
		}
		events[stored].udata = (void *)e->udata;
		events[stored].flags = flags;
		events[stored].error = error;
		events[stored].disarmed = disarmed;
		++stored;
	}
	return stored;
}

int
tr_kernel_wake(struct tr_kernel *k)
{
#ifdef EVFILT_USER
	struct kevent change;

	EV_SET(&change, 0, EVFILT_USER, 0, NOTE_TRIGGER, 0, TR_UDATA(NULL));
	while (kevent(k->kq, &change, 1, NULL, 0, NULL) < 0) {
		if (errno != EINTR)
			return -errno;
	}
	return 0;
#else
	/* EAGAIN: the pipe is full, so a wake is already pending. */
	return tr_poke(k->wake_wfd);
#endif
}

int
tr_notify_open(int *read_fd, int *write_fd)
{
	int fds[2];
	int err;

	if ((err = tr_pipe_open(fds)) < 0)
		return err;
	*read_fd = fds[0];
	*write_fd = fds[1];
	return 0;
}

void
tr_notify_close(int read_fd, int write_fd)
{
	close(read_fd);
	close(write_fd);
}

void
tr_notify_raise(int write_fd)
{
	/* EAGAIN: already raised, the pipe still holds a byte. */
	(void)tr_poke(write_fd);
}

void
tr_notify_clear(int read_fd)
{
	tr_drain(read_fd);
}
