/*
 * internal.h: what the core's C files share, and the one narrow interface
 * every kernel event backend implements (epoll.c on Linux, kqueue.c where
 * <sys/event.h> exists; the build compiles exactly one of them).
 *
 * The backend's contract, in the kqueue(2) model:
 *
 * - tr_kernel_register() (a synchronous Traffic) subscribes a descriptor,
 *   edge-triggered (EPOLLET / EV_CLEAR), for readability and/or
 *   writability (TR_K_READ, TR_K_WRITE in want) on top of what it already
 *   has (had: 0 the first time), with an opaque pointer returned in its
 *   events.  The core adds a direction the first time a transfer in it
 *   meets EAGAIN, and never takes one away: a direction nobody waits on
 *   would wake the cycle for nothing (an AF_UNIX socket raises a writable
 *   edge every time its peer reads), and there is no per-transfer
 *   modification: the core loops each transfer to EAGAIN and waits for the
 *   next edge.  Registering reports the descriptor's current readiness in
 *   the directions added.
 * - tr_kernel_arm() (a threaded Traffic) subscribes one-shot instead: see
 *   below and arm() in core.c.
 * - An event carries the error the kernel reported with it (error: an
 *   errno, 0 for none), where the kernel hands it over in the event
 *   itself: kqueue's EV_EOF carries the socket's pending error in fflags,
 *   and libkqueue takes it off the socket (SO_ERROR) to put it there, so
 *   no later system call reports it.  epoll reports only that an error
 *   is pending (error 0, TR_K_ERROR): the next system call returns it.
 * - tr_kernel_wait() waits at most timeout_ms (-1: forever) and returns the
 *   number of events stored, or -errno (-EINTR included: a wait entered
 *   from Python must return so that Python's signal handlers run).  A wake
 *   is consumed inside the backend and is not reported as an event.
 * - tr_kernel_wake() makes a concurrent or the next tr_kernel_wait() return;
 *   safe from any thread.
 * - The signal is the completion descriptor: raised by the cycle thread,
 *   cleared by the collector, readable (poll/epoll/trio) while raised.
 */
#ifndef TRAFFIC_INTERNAL_H
#define TRAFFIC_INTERNAL_H

#include <stddef.h>
#include "traffic.h"

/* Readiness bits carried by a tr_kevent. */
#define TR_K_READ  1u  /* readable, or accept can proceed */
#define TR_K_WRITE 2u  /* writable */
#define TR_K_HUP   4u  /* the peer hung up (input still to be drained) */
#define TR_K_ERROR 8u  /* an error is pending on the descriptor */

struct tr_kevent {
	void *udata;
	unsigned int flags;
	int error;
	/*
	 * Of a descriptor armed with tr_kernel_arm(), the directions this event
	 * disarmed: what the kernel's one-shot takes away when it reports
	 * (epoll: the whole descriptor; kqueue: the reported filter's own).
	 */
	unsigned int disarmed;
};

struct tr_kernel;

int tr_kernel_open(struct tr_kernel **out);
void tr_kernel_close(struct tr_kernel *kernel);
/*
 * After fork(), in the child: release the parent's kernel queue, closing
 * only the descriptors the child inherited (a kqueue is not inherited, and
 * its number may belong to another descriptor by now).
 */
void tr_kernel_abandon(struct tr_kernel *kernel);
int tr_kernel_register(struct tr_kernel *kernel, int fd, void *udata, unsigned int had,
    unsigned int want);
int tr_kernel_unregister(struct tr_kernel *kernel, int fd);
/*
 * A threaded Traffic subscribes differently (see arm() in core.c): one-shot
 * and level-triggered, for the directions whose requests wait (TR_K_READ,
 * TR_K_WRITE in want).  had: the directions armed on the descriptor before
 * (0 the first time); armed: those of them still armed, not reported since.
 * The kernel reports a direction once and disarms it, and maybe others
 * with it: each event says which (struct tr_kevent's disarmed).
 */
int tr_kernel_arm(struct tr_kernel *kernel, int fd, void *udata, unsigned int had,
    unsigned int armed, unsigned int want);
int tr_kernel_wait(struct tr_kernel *kernel, struct tr_kevent *events, int max, int timeout_ms);
int tr_kernel_wake(struct tr_kernel *kernel);

/* The completion signal: read_fd is what consumers wait on. */
int tr_signal_open(int *read_fd, int *write_fd);
void tr_signal_close(int read_fd, int write_fd);
void tr_signal_raise(int write_fd);
void tr_signal_clear(int read_fd);

/*
 * Descriptor passing (descriptors.c).  TR_FDS_PER_MESSAGE is in traffic.h;
 * a receive has room for TR_FDS_RECEIVE_MAX (Linux's SCM_MAX_FD is 253), so
 * descriptors beyond a caller's capacity reach us and are closed.
 */
#include <sys/types.h>

#define TR_FDS_RECEIVE_MAX 256

struct tr_fds_parsed {
	size_t delivered;   /* stored in fds, up to cap */
	size_t rejected;    /* stored in rejected: the caller closes them */
	size_t lost;        /* beyond rejected_cap too (cannot happen with a right-sized array) */
	int truncated;      /* a control message was cut by the end of the buffer */
	int malformed;      /* a control message's length was impossible: parsing stopped */
};

ssize_t tr_fds_send(int sock, const char *data, size_t size, const int *fds, size_t nfds, size_t *attached);
ssize_t tr_fds_receive(int sock, char *data, size_t size, int *fds, size_t cap, size_t *got, int *truncated,
    int *bare);
int tr_fds_parse(const void *control, size_t controllen, int *fds, size_t cap,
    int *rejected, size_t rejected_cap, struct tr_fds_parsed *out);

/*
 * Datagrams (datagrams.c): one batch of whole records from *pos, which is
 * advanced past those transferred.  Returns the number of records moved
 * (0: none fit, the rest is exhausted or malformed) or a negative errno.
 */
long tr_dg_receive(int sock, char *buf, size_t size, size_t *pos);
long tr_dg_send(int sock, const char *buf, size_t size, size_t *pos);

#endif
