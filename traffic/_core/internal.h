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
 *   below and tr_arm() in readiness.c.
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
 * - The notification is the completion descriptor: raised by the cycle
 *   thread, cleared by the collector, readable (poll/epoll/trio) while
 *   raised.
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
 * A threaded Traffic subscribes differently (see tr_arm() in readiness.c):
 * one-shot and level-triggered, for the directions whose requests wait
 * (TR_K_READ, TR_K_WRITE in want).  had: the directions armed on the descriptor before
 * (0 the first time); armed: those of them still armed, not reported since.
 * The kernel reports a direction once and disarms it, and maybe others
 * with it: each event says which (struct tr_kevent's disarmed).
 */
int tr_kernel_arm(struct tr_kernel *kernel, int fd, void *udata, unsigned int had,
    unsigned int armed, unsigned int want);
int tr_kernel_wait(struct tr_kernel *kernel, struct tr_kevent *events, int max, int timeout_ms);
int tr_kernel_wake(struct tr_kernel *kernel);

/* The completion notification: read_fd is what consumers wait on. */
int tr_notify_open(int *read_fd, int *write_fd);
void tr_notify_close(int read_fd, int write_fd);
void tr_notify_raise(int write_fd);
void tr_notify_clear(int read_fd);

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

/*
 * The core's own state, shared by its files: traffic.c (a Traffic's life),
 * transit.c (kernel points and transits), life.c (a transit's life as a
 * table), transfer.c (the transfer loops and tr_drive), readiness.c (the
 * subscriptions and the kernel's events), cycle.c (the synchronous cycle),
 * request.c (threaded requests and the cycle thread), notify.c (the
 * completion notification), files.c (a file region as a resource).
 *
 * Who owns what, across threads
 * -----------------------------
 * Every mutable field of a Traffic and of its transits and kernel points is
 * guarded by the Traffic's mutex.  The mutex is never held across a system
 * call that can block: a transfer marks its transit IN_SYSCALL (and its
 * kernel point busy), drops the mutex, loops read/write/accept to EAGAIN,
 * and takes the mutex back to settle the outcome.  While IN_SYSCALL, only
 * the thread performing the transfer touches the transit's resource and
 * position; everyone else sees the flag and leaves them alone: a withdraw
 * then answers TR_COMPLETING, and a termination is finished by the
 * transferring thread when it settles.
 *
 * Lists
 * -----
 * Transits are linked into the Traffic's lists through themselves (no
 * allocation per event): "work" holds transits with a resource and a kernel
 * that is ready for them; "reports" holds transits with cycle events
 * (synchronous) or completed requests (threaded).  "all" links every
 * transit in traffic, for destruction.
 */
#include <pthread.h>

#define TR_BATCH 256

/*
 * A transit's life (life.c): open, then terminating (the owner asked while
 * a system call was in flight), then terminated; who ended it is data
 * beside the state.  Changed only through tr_life_step(), by its table.
 */
enum tr_life { TR_LIFE_OPEN, TR_LIFE_TERMINATING, TR_LIFE_TERMINATED, TR_LIFE_STATES };
enum tr_by { TR_BY_NOBODY, TR_BY_KERNEL, TR_BY_OWNER };
enum tr_life_event {
	TR_LIFE_OWNER_END,    /* the owner terminates it, no system call in flight */
	TR_LIFE_OWNER_DEFER,  /* the owner terminates it during a system call */
	TR_LIFE_SETTLE,       /* the thread of that call finishes the owner's termination */
	TR_LIFE_KERNEL_END,   /* a transfer met the end: EOF, an error, a refused subscription */
	TR_LIFE_DISCARD,      /* its Traffic goes (destroy, abandon), or its owner forgets it */
	TR_LIFE_EVENTS
};

/* 0, or TR_ETERMINATED (and the life unchanged) for a step outside the table. */
int tr_life_step(unsigned char *life, unsigned char *by, int event);

/* Transit flags: the facts independent of its life. */
#define TF_READY       (1u << 0)   /* the kernel may have more for us */
#define TF_DISREGARD   (1u << 1)   /* the owner's termination skips shutdown(2) */
#define TF_EXHAUSTED   (1u << 2)   /* last resource used up, none since */
#define TF_REQUEST     (1u << 3)   /* threaded: a request is outstanding */
#define TF_WITHDRAW    (1u << 4)   /* threaded: withdraw asked during a syscall */
#define TF_IN_SYSCALL  (1u << 5)   /* a thread is transferring without the lock */
#define TF_ON_WORK     (1u << 6)
#define TF_ON_REPORTS  (1u << 7)
#define TF_RELEASED    (1u << 8)   /* the owner dropped its reference */
#define TF_FAULT       (1u << 9)   /* threaded: a fault waits to be reported */
#define TF_ALLOC       (1u << 10)  /* threaded: the core allocates the resource on arrival */
#define TF_SCRATCH     (1u << 11)  /* TF_ALLOC, for now in the caller's scratch (tr_receive) */
#define TF_YIELD       (1u << 12)  /* a pass ended with more to do: others go first */

/* Outcomes of one transfer loop. */
/*
 * Outcomes of one transfer loop.  TX_YIELD: the loop stopped with more to
 * do and the kernel still ready (a file transfer's pass is bounded, and an
 * inline one stops at pages not in memory): the transit waits for no
 * event, it goes to the back of the work.
 */
enum tx { TX_AGAIN, TX_EXHAUSTED, TX_EOF, TX_ERROR, TX_FAULT, TX_YIELD };

struct tr_point {
	int fd;
	int links;          /* transit structs pointing here */
	int open;           /* transits not yet terminated */
	int busy;           /* system calls in flight on fd */
	/*
	 * The directions (TR_K_READ, TR_K_WRITE) subscribed in the kernel:
	 * for good (synchronous), or in its set at all (threaded: nonzero);
	 * armed: the directions a threaded Traffic's one-shot subscription
	 * waits on now (cleared as the kernel reports them).
	 */
	unsigned registered:2, armed:2;
	unsigned closed:1, dead:1;
	/*
	 * What the descriptor is, set when the point is made and never
	 * changed.  Not bit fields: a transfer in flight reads is_socket
	 * without the lock, and adjacent bit fields are one memory location,
	 * which the cycle thread writes under the lock (armed, on every event
	 * of a threaded Traffic): ThreadSanitizer reported that race.
	 *
	 * is_file: a regular file or a directory, always "ready", so no kernel
	 * event ever says it can transfer again.  epoll refuses to subscribe
	 * it (EPERM); kqueue accepts it and never reports a file's end.  The
	 * core refuses it the same way on both: a transfer that would wait on
	 * it terminates with EPERM.
	 */
	unsigned char is_socket, is_file;
	/*
	 * The kernel reported a hang-up or an error.  From then on a short
	 * transfer no longer proves the kernel was drained: the end (EOF, the
	 * error) is already queued behind the data and raises no further edge,
	 * so transfers go on to the system call that reports it.
	 */
	unsigned hup:1;
	/*
	 * The error the kernel reported with an event on this socket (see
	 * struct tr_kevent): where the kernel hands it over only there, the
	 * system call after it reports a plain end (EOF, EPIPE) instead.
	 */
	int error;
	struct tr_transit *io[2];   /* by polarity */
	/*
	 * The Traffic one of its transits entered first; the point belongs to
	 * it for life (siblings share it, and a point never moves to another
	 * Traffic).  Its lock guards the point, also for a sibling that never
	 * entered traffic, and only its cycle frees the point, between event
	 * batches that may name it.  NULL once that Traffic is destroyed: then
	 * no batch is in flight and the last transit frees the point at once.
	 */
	struct tr_traffic *traffic;
	struct tr_point *next_point, *prev_point;   /* the Traffic's points */
	struct tr_point *next_dead;
};

struct tr_transit {
	struct tr_traffic *traffic;
	struct tr_point *point;
	unsigned long long token;
	int type;
	int polarity;
	unsigned char life;       /* enum tr_life */
	unsigned char by;         /* enum tr_by: who ended it */
	unsigned int flags;
	unsigned int events;      /* synchronous: TR_EV_* not yet taken */
	int outcome;              /* threaded: outcome of the completed request */
	int error;                /* errno of termination or fault */
	int inject;               /* fault injection: errno for the next transfer */
	unsigned long edges;
	char *buf;
	size_t size, pos, mark;   /* resource, transferred so far, reported so far */
	/*
	 * Descriptors: the resource's descriptor array.  Input: the owner's
	 * (pinned by it), filled up to nfds; output: the core's own duplicates
	 * (fds_owned), each closed once sent.  [fdmark, fdpos) is transferred
	 * and not yet reported.
	 */
	int *fds;
	size_t nfds, fdpos, fdmark;
	int fds_owned;
	/*
	 * A file request's region (files.c): the core's duplicate of the
	 * file's descriptor (-1: the resource is memory) and the file offset
	 * of the resource's start; append: the file is O_APPEND; copy: the
	 * kernel cannot move these bytes itself.  Input: the pipe splice(2)
	 * goes through (-1: none), with piped bytes in it during a pass.
	 * hold: the bounce buffer of a copy, and the bytes held: [held_pos,
	 * held_len) came from the socket and no file took them yet.
	 */
	int file;
	long long file_offset;
	unsigned file_append:1, file_copy:1;
	int pipe_rd, pipe_wr;
	size_t pipe_room, piped;
	char *hold;
	size_t held_pos, held_len;
	/*
	 * Counts kept by the thread of a transfer while it runs without the
	 * lock (IN_SYSCALL: only it touches them), added to the Traffic's
	 * stats when it takes the lock back (transfer_unlocked).
	 */
	unsigned int pass_bounds, full_batches;
	struct tr_transit *next_work, *next_report;
	struct tr_transit *next_all, *prev_all;
};

struct tr_traffic {
	pthread_mutex_t lock;
	struct tr_kernel *kernel;
	/*
	 * enum tr_mode: set once, from UNSET, under the lock (tr_set_mode) and
	 * read from here alone; tr_traffic_mode reads it without the lock.
	 */
	int mode;
	int notify_read_fd, notify_write_fd;
	unsigned sleeping:1, wake_pending:1, notified:1, cycling:1, stopping:1,
	    failed:1, batching:1, notify_due:1;
	int fatal;                /* errno that stopped the cycle thread */
	int policy;               /* tr_cycle_policy of the cycle thread */
	int raised;               /* notified, for readers without the lock (a hint) */
	/*
	 * The completion descriptor is written outside the lock (the collector
	 * it wakes wants the lock at once), so it has a lock of its own, taken
	 * after the main one when both are held: written says the descriptor
	 * holds a count; lazy that the collector reports when it may block in
	 * its I/O wait (tr_traffic_collector_asleep), asleep that it may now.
	 * A lazy notification is written only while the collector may be blocked: an
	 * awake one reads raised after each of its waits instead.
	 */
	pthread_mutex_t notify_lock;
	int written, lazy, asleep;
	pthread_t thread;
	struct tr_transit *work, *work_tail;
	struct tr_transit *reports, *reports_tail;
	struct tr_transit *all;
	struct tr_point *dead;
	struct tr_point *points;   /* every point that belongs to this Traffic */
	struct tr_kevent events[TR_BATCH];
	tr_stats stats;           /* see traffic.h */
};

/* Orders a transit's release against its Traffic's destruction (traffic.c). */
extern pthread_mutex_t tr_registry;
/* Set in the cycle thread, which blocks every signal for its whole life. */
extern __thread int tr_signals_blocked;

static inline int
tr_threaded(const struct tr_traffic *tr)
{
	return tr->mode == TR_MODE_THREADED;
}

/* The Traffic's mode is decided: lock held, mode still TR_MODE_UNSET or the same. */
static inline void
tr_set_mode(struct tr_traffic *tr, int mode)
{
	__atomic_store_n(&tr->mode, mode, __ATOMIC_RELEASE);
}

/* Terminated, or terminating: no more transfers will start. */
static inline int
tr_ending(const struct tr_transit *t)
{
	return t->life != TR_LIFE_OPEN;
}

/* The lists (lock held). */

static inline void
push_work(struct tr_traffic *tr, struct tr_transit *t)
{
	if (t->flags & TF_ON_WORK)
		return;
	t->flags |= TF_ON_WORK;
	t->next_work = NULL;
	if (tr->work_tail)
		tr->work_tail->next_work = t;
	else
		tr->work = t;
	tr->work_tail = t;
}

static inline struct tr_transit *
pop_work(struct tr_traffic *tr)
{
	struct tr_transit *t = tr->work;

	if (t == NULL)
		return NULL;
	tr->work = t->next_work;
	if (tr->work == NULL)
		tr->work_tail = NULL;
	t->flags &= ~TF_ON_WORK;
	return t;
}

static inline struct tr_transit *
pop_report(struct tr_traffic *tr)
{
	struct tr_transit *t = tr->reports;

	if (t == NULL)
		return NULL;
	tr->reports = t->next_report;
	if (tr->reports == NULL)
		tr->reports_tail = NULL;
	t->flags &= ~TF_ON_REPORTS;
	return t;
}

/* traffic.c */
void tr_live(long delta);
void tr_wake_cycle(struct tr_traffic *tr);

/* notify.c */
void tr_notify_mark(struct tr_traffic *tr);
void tr_notify_write(struct tr_traffic *tr);
void tr_push_report(struct tr_traffic *tr, struct tr_transit *t);

/* transit.c */
void tr_point_close(struct tr_traffic *tr, struct tr_point *p);
void tr_point_settle(struct tr_traffic *tr, struct tr_point *p);
void tr_reap(struct tr_traffic *tr);
void tr_transit_free(struct tr_transit *t);
int tr_transit_consider_free(struct tr_transit *t);
int tr_terminate(struct tr_traffic *tr, struct tr_transit *t, int event, int error);
int tr_set_nonblocking(int fd);
struct tr_traffic *tr_lock_traffic(struct tr_transit *t);
void tr_fds_close_all(int *fds, size_t n);
int tr_fds_submit(struct tr_transit *t, size_t size, int *fds, size_t nfds, int **dups);
void tr_fds_install(struct tr_transit *t, int *fds, size_t nfds, int *dups);

/* transfer.c */
#include <signal.h>
int tr_sigpipe_hold(sigset_t *saved);
void tr_sigpipe_release(const sigset_t *saved, int held, int epipe);
ssize_t tr_write_nosigpipe(int fd, const void *buf, size_t size);
void tr_close_unreported(struct tr_transit *t);
void tr_fds_release(struct tr_transit *t);
void tr_release_resource(struct tr_transit *t);
void tr_report_request(struct tr_transit *t, tr_report *r);
int tr_finish_request(struct tr_traffic *tr, struct tr_transit *t, int outcome, tr_report *report);
int tr_report_owner_end(struct tr_traffic *tr, struct tr_transit *t, tr_report *report);
int tr_drive(struct tr_traffic *tr, struct tr_transit *t, tr_report *report);
void tr_run_work(struct tr_traffic *tr);

/* readiness.c */
int tr_wants_transfer(const struct tr_transit *t);
int tr_subscribe(struct tr_traffic *tr, struct tr_point *p, const struct tr_transit *t);
int tr_arm(struct tr_traffic *tr, struct tr_point *p);
void tr_apply_events(struct tr_traffic *tr, int n);

/* files.c: a file region, checked and taken outside the lock, then installed. */
struct tr_file_region {
	int file;            /* the duplicate */
	int append;
	int pipe_rd, pipe_wr;
	size_t pipe_room;
	char *hold;
};
int tr_file_submit(struct tr_transit *t, int file, long long offset, unsigned long long count,
    struct tr_file_region *region);
void tr_file_region_close(struct tr_file_region *region);
void tr_file_install(struct tr_transit *t, struct tr_file_region *region, long long offset);
int tr_file_transfer(struct tr_transit *t, int drain, int nodisk, int *error);
int tr_file_take_held(struct tr_transit *t);
void tr_file_release(struct tr_transit *t);
void tr_file_discard(struct tr_transit *t);

/* request.c */
void *tr_cycle_main(void *arg);

#endif
