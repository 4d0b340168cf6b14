/*
 * epoll.c: the kernel event backend for Linux, epoll(7) with eventfd(2).
 *
 * Some facts about epoll this relies on:
 *
 * - Registration is per open file description, not per descriptor number:
 *   the core removes a registration (EPOLL_CTL_DEL) before it closes, so a
 *   recycled number never inherits a stale registration.
 * - With EPOLLET an event is reported once per edge (new data, new space,
 *   a hang-up), so the core loops every transfer until EAGAIN and keeps a
 *   "kernel ready" bit for transfers it could not finish.
 * - EPOLL_CTL_ADD and EPOLL_CTL_MOD report the descriptor's current
 *   readiness as an edge, so registering lazily, a direction at its first
 *   EAGAIN (ADD, then MOD for the other), misses nothing.
 * - EPOLLRDHUP arrives while unread input may still be queued: it is only a
 *   hint that reading will reach EOF; the core drains until read() returns 0.
 * - epoll_ctl is safe while another thread sits in epoll_wait on the same
 *   epoll descriptor.
 * - EPOLLONESHOT (a threaded Traffic's arm) disables the whole descriptor
 *   after one event, both directions and hang-ups included, until the next
 *   EPOLL_CTL_MOD; level-triggered, that MOD reports readiness that is
 *   already there.
 *
 * The wake is an eventfd registered edge-triggered with a NULL udata; the
 * completion notification is a second eventfd that trio or asyncio poll.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>

#include "internal.h"

#define TR_EPOLL_BATCH 256

const char *
tr_backend(void)
{
	return "epoll";
}

struct tr_kernel {
	int epfd;
	int wakefd;
	struct epoll_event events[TR_EPOLL_BATCH];
};

int
tr_kernel_open(struct tr_kernel **out)
{
	struct tr_kernel *k = calloc(1, sizeof *k);
	struct epoll_event ev = {.events = EPOLLIN | EPOLLET, .data.ptr = NULL};
	int err;

	if (k == NULL)
		return -ENOMEM;
	k->epfd = epoll_create1(EPOLL_CLOEXEC);
	if (k->epfd < 0) {
		err = -errno;
		free(k);
		return err;
	}
	k->wakefd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (k->wakefd < 0 || epoll_ctl(k->epfd, EPOLL_CTL_ADD, k->wakefd, &ev) < 0) {
		err = -errno;
		if (k->wakefd >= 0)
			close(k->wakefd);
		close(k->epfd);
		free(k);
		return err;
	}
	*out = k;
	return 0;
}

void
tr_kernel_close(struct tr_kernel *k)
{
	close(k->wakefd);
	close(k->epfd);
	free(k);
}

/* An epoll set and an eventfd are inherited: the child closes its copies. */
void
tr_kernel_abandon(struct tr_kernel *k)
{
	tr_kernel_close(k);
}

/*
 * One epoll_ctl for directions (TR_K_READ, TR_K_WRITE) in mode (EPOLLET or
 * EPOLLONESHOT): ADD, or MOD once the descriptor is in the set.  EPOLLHUP
 * and EPOLLERR come whatever the mask; EPOLLRDHUP is input's.
 */
static int
subscribe(struct tr_kernel *k, int fd, void *udata, uint32_t mode, int added,
    unsigned int directions)
{
	struct epoll_event ev = {.events = mode, .data.ptr = udata};

	if (directions & TR_K_READ)
		ev.events |= EPOLLIN | EPOLLRDHUP;
	if (directions & TR_K_WRITE)
		ev.events |= EPOLLOUT;
	if (epoll_ctl(k->epfd, added ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, fd, &ev) < 0)
		return -errno;
	return 0;
}

int
tr_kernel_register(struct tr_kernel *k, int fd, void *udata, unsigned int had, unsigned int want)
{
	return subscribe(k, fd, udata, EPOLLET, had != 0, had | want);
}

int
tr_kernel_arm(struct tr_kernel *k, int fd, void *udata, unsigned int had, unsigned int armed,
    unsigned int want)
{
	(void)armed;   /* one MOD sets the whole mask */
	return subscribe(k, fd, udata, EPOLLONESHOT, had != 0, want);
}

int
tr_kernel_unregister(struct tr_kernel *k, int fd)
{
	/* A pre-2.6.9 kernel wants a non-NULL event even for EPOLL_CTL_DEL. */
	struct epoll_event ev = {0};

	if (epoll_ctl(k->epfd, EPOLL_CTL_DEL, fd, &ev) < 0)
		return -errno;
	return 0;
}

int
tr_kernel_wait(struct tr_kernel *k, struct tr_kevent *events, int max, int timeout_ms)
{
	int n, i, stored = 0;

	if (max > TR_EPOLL_BATCH)
		max = TR_EPOLL_BATCH;
	n = epoll_wait(k->epfd, k->events, max, timeout_ms);
	if (n < 0)
		return -errno;

	for (i = 0; i < n; ++i) {
		uint32_t e = k->events[i].events;
		unsigned int flags = 0;

		if (k->events[i].data.ptr == NULL) {
			uint64_t count;
			/* Consume the wake; EAGAIN means another wait already did. */
			while (read(k->wakefd, &count, sizeof count) < 0 && errno == EINTR)
				;
			continue;
		}
		if (e & EPOLLIN)
			flags |= TR_K_READ;
		if (e & EPOLLOUT)
			flags |= TR_K_WRITE;
		if (e & (EPOLLRDHUP | EPOLLHUP))
			flags |= TR_K_HUP | TR_K_READ;
		if (e & EPOLLHUP)
			flags |= TR_K_WRITE;
		if (e & EPOLLERR)
			flags |= TR_K_ERROR | TR_K_READ | TR_K_WRITE;
		events[stored].udata = k->events[i].data.ptr;
		events[stored].flags = flags;
		events[stored].error = 0;   /* pending on the socket: the next call returns it */
		/* EPOLLONESHOT is per descriptor: both directions are disarmed. */
		events[stored].disarmed = TR_K_READ | TR_K_WRITE;
		++stored;
	}
	return stored;
}

int
tr_kernel_wake(struct tr_kernel *k)
{
	uint64_t one = 1;

	/* EAGAIN: the counter is saturated, so a wake is already pending. */
	while (write(k->wakefd, &one, sizeof one) < 0) {
		if (errno == EAGAIN)
			return 0;
		if (errno != EINTR)
			return -errno;
	}
	return 0;
}

int
tr_notify_open(int *read_fd, int *write_fd)
{
	int fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);

	if (fd < 0)
		return -errno;
	*read_fd = *write_fd = fd;
	return 0;
}

void
tr_notify_close(int read_fd, int write_fd)
{
	(void)write_fd;  /* one eventfd serves both ends */
	close(read_fd);
}

void
tr_notify_raise(int write_fd)
{
	uint64_t one = 1;

	while (write(write_fd, &one, sizeof one) < 0 && errno == EINTR)
		;
}

void
tr_notify_clear(int read_fd)
{
	uint64_t count;

	while (read(read_fd, &count, sizeof count) < 0 && errno == EINTR)
		;
}
