/*
 * core.c: transits, transfers, and the cycle.
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
 * Kernel points are closed only here, once every transit on them has
 * terminated and no system call on the descriptor is in flight: the
 * registration is removed first, then the descriptor closed, exactly once.
 * A closed point is not freed at once: an event batch fetched by the cycle
 * may still name it.  Points are freed by the thread that runs the cycle
 * between batches (reap), or when the Traffic is destroyed.
 *
 * A transit's struct is freed when its owner (Python) has released it, it
 * has terminated, and no list or system call refers to it.  Transits and
 * Traffics are reachable from Python through plain pointers; the registry
 * lock orders a transit's release against its Traffic's destruction.
 *
 * Lists
 * -----
 * Transits are linked into the Traffic's lists through themselves (no
 * allocation per event): "work" holds transits with a resource and a kernel
 * that is ready for them; "reports" holds transits with cycle events
 * (synchronous) or completed requests (threaded).  "all" links every
 * transit in traffic, for destruction.
 *
 * Edges and readiness
 * -------------------
 * Registration is edge-triggered and lazy: a transit starts out assuming
 * its kernel point is ready, tries, and only at its first EAGAIN registers
 * the point (registration reports current readiness, so no edge is lost).
 * Each edge bumps the transit's edge count; a transfer that ends in EAGAIN
 * clears READY only if no edge arrived during its system call, which closes
 * the race between "drained" and "new data" without a wake of the cycle.
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

#define TR_BATCH 256

/* Transit flags */
#define TF_READY       (1u << 0)   /* the kernel may have more for us */
#define TF_TERMINATED  (1u << 1)   /* no more transfers */
#define TF_TERMINATING (1u << 2)   /* owner asked to terminate during a syscall */
#define TF_DISREGARD   (1u << 3)   /* ... without shutdown */
#define TF_CLOSED      (1u << 4)   /* terminated by its owner, not by the kernel */
#define TF_EXHAUSTED   (1u << 5)   /* last resource used up, none since */
#define TF_REQUEST     (1u << 6)   /* threaded: a request is outstanding */
#define TF_WITHDRAW    (1u << 7)   /* threaded: withdraw asked during a syscall */
#define TF_IN_SYSCALL  (1u << 8)   /* a thread is transferring without the lock */
#define TF_ON_WORK     (1u << 9)
#define TF_ON_REPORTS  (1u << 10)
#define TF_RELEASED    (1u << 11)  /* the owner dropped its reference */
#define TF_FAULT       (1u << 12)  /* threaded: a fault waits to be reported */
#define TF_ALLOC       (1u << 13)  /* threaded: the core allocates the resource on arrival */
#define TF_SCRATCH     (1u << 14)  /* TF_ALLOC, for now in the caller's scratch (tr_receive) */

/* Outcomes of one transfer loop. */
enum tx { TX_AGAIN, TX_EXHAUSTED, TX_EOF, TX_ERROR, TX_FAULT };

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
	unsigned closed:1, is_socket:1, dead:1;
	/*
	 * A regular file or a directory: always "ready", so no kernel event
	 * ever says it can transfer again.  epoll refuses to subscribe it
	 * (EPERM); kqueue accepts it and never reports a file's end.  The core
	 * refuses it the same way on both: a transfer that would wait on it
	 * terminates with EPERM.
	 */
	unsigned is_file:1;
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
	struct tr_transit *next_work, *next_report;
	struct tr_transit *next_all, *prev_all;
};

struct tr_traffic {
	pthread_mutex_t lock;
	struct tr_kernel *kernel;
	int mode;
	int signal_read, signal_write;
	unsigned sleeping:1, wake_pending:1, signalled:1, cycling:1, stopping:1,
	    threaded:1, failed:1, batching:1, signal_due:1;
	int fatal;                /* errno that stopped the cycle thread */
	int policy;               /* tr_cycle_policy of the cycle thread */
	int raised;               /* signalled, for readers without the lock (a hint) */
	/*
	 * The completion descriptor is written outside the lock (the collector
	 * it wakes wants the lock at once), so it has a lock of its own, taken
	 * after the main one when both are held: written says the descriptor
	 * holds a count; lazy that the collector reports when it may block in
	 * its I/O wait (tr_traffic_collector_asleep), asleep that it may now.
	 * A lazy signal is written only while the collector may be blocked: an
	 * awake one reads raised after each of its waits instead.
	 */
	pthread_mutex_t signal_lock;
	int written, lazy, asleep;
	pthread_t thread;
	struct tr_transit *work, *work_tail;
	struct tr_transit *reports, *reports_tail;
	struct tr_transit *all;
	struct tr_point *dead;
	struct tr_point *points;   /* every point that belongs to this Traffic */
	struct tr_kevent events[TR_BATCH];
};

static long live_objects;
static pthread_mutex_t registry = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t registry_once = PTHREAD_ONCE_INIT;

static void
registry_after_fork_child(void)
{
	/* A thread of the parent may have held it at fork(); the child has one thread. */
	pthread_mutex_init(&registry, NULL);
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

static void
live(long delta)
{
	__atomic_add_fetch(&live_objects, delta, __ATOMIC_SEQ_CST);
}

/* Lists */

static void
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

static struct tr_transit *
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

/* Mark the signal raised, without the system call: lock held. */
static void
mark_signal(struct tr_traffic *tr)
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
static void
write_signal(struct tr_traffic *tr)
{
	pthread_mutex_lock(&tr->signal_lock);
	write_signal_locked(tr);
	pthread_mutex_unlock(&tr->signal_lock);
}

/* Tell the collector that completions wait: lock held. */
static void
raise_signal(struct tr_traffic *tr)
{
	mark_signal(tr);
	write_signal(tr);
}

static void
push_report(struct tr_traffic *tr, struct tr_transit *t)
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
	if (tr->threaded && !tr->signalled) {
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

static struct tr_transit *
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

static void
wake_cycle(struct tr_traffic *tr)
{
	if (tr->sleeping)
		tr_kernel_wake(tr->kernel);
	else
		tr->wake_pending = 1;
}

static int wants_transfer(const struct tr_transit *t);
static void fds_release(struct tr_transit *t);

/* Kernel points */

static void
point_close(struct tr_traffic *tr, struct tr_point *p)
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
static void
point_settle(struct tr_traffic *tr, struct tr_point *p)
{
	if (p->open == 0 && p->busy == 0)
		point_close(tr, p);
}

static void
point_unlink(struct tr_traffic *tr, struct tr_point *p)
{
	if (--p->links > 0)
		return;
	if (tr == NULL) {
		point_close(NULL, p);
		free(p);
	} else if (!p->dead) {
		/* An event batch may still name it: the cycle frees it between batches. */
		p->dead = 1;
		p->next_dead = tr->dead;
		tr->dead = p;
	}
}

static void
reap(struct tr_traffic *tr)
{
	struct tr_point *p;

	while ((p = tr->dead) != NULL) {
		tr->dead = p->next_dead;
		point_close(tr, p);
		if (p->prev_point)
			p->prev_point->next_point = p->next_point;
		else
			tr->points = p->next_point;
		if (p->next_point)
			p->next_point->prev_point = p->prev_point;
		free(p);
	}
}

/* Transits */

static void
transit_free(struct tr_transit *t)
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
		fds_release(t);   /* the core's duplicates; never the owner's array */
	point_unlink(owner, t->point);
	free(t);
	live(-1);
}

/* Free a released transit once nothing refers to it; lock held. */
static int
transit_consider_free(struct tr_transit *t)
{
	const unsigned int held = TF_IN_SYSCALL | TF_ON_WORK | TF_ON_REPORTS;

	if ((t->flags & TF_RELEASED) && (t->flags & TF_TERMINATED) && !(t->flags & held)) {
		transit_free(t);
		return 1;
	}
	return 0;
}

/*
 * End the transit's ability to transfer; lock held, not IN_SYSCALL.
 * The owner's terminate shuts down its own direction of a connection
 * (half-close); disregard and kernel-reported ends do not.  The last
 * transit shuts down too, before the close: another process (a forked
 * child) or a dup() may hold the descriptor, and close() alone would leave
 * the connection open for them, which is what disregard is for.  A
 * listener is only closed: shutdown(2) would stop it listening for every
 * holder.  The point closes with its last transit.
 */
static void
transit_end(struct tr_traffic *tr, struct tr_transit *t, int error, int by_owner)
{
	struct tr_point *p = t->point;

	if (t->flags & TF_TERMINATED)
		return;
	t->flags |= TF_TERMINATED;
	t->flags &= ~(TF_TERMINATING | TF_READY);
	t->error = error;
	if (by_owner)
		t->flags |= TF_CLOSED;
	p->open -= 1;
	if (by_owner && !(t->flags & TF_DISREGARD) && p->is_socket && t->type != TR_SOCKETS
	    && t->type != TR_DATAGRAMS && !p->closed)
		shutdown(p->fd, t->polarity == TR_INPUT ? SHUT_RD : SHUT_WR);
	point_settle(tr, p);
}

static int
set_nonblocking(int fd)
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
		if (sibling->traffic != NULL || (sibling->flags & TF_TERMINATED) || p->io[polarity] != NULL)
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
		if ((err = set_nonblocking(fd)) < 0)
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
	p->io[polarity] = t;
	p->links += 1;
	p->open += 1;
	live(1);
	*out = t;
	return 0;
}

int
tr_transit_fd(tr_transit *t)
{
	return t->point->closed ? -1 : t->point->fd;
}

/*
 * Lock the transit's Traffic.  Returns NULL, with nothing locked, when the
 * transit is not in traffic (never acquired, or its Traffic destroyed).
 */
static struct tr_traffic *
lock_traffic(struct tr_transit *t)
{
	struct tr_traffic *tr;

	pthread_mutex_lock(&registry);
	tr = t->traffic;
	if (tr != NULL)
		pthread_mutex_lock(&tr->lock);
	pthread_mutex_unlock(&registry);
	return tr;
}

int
tr_transit_status(tr_transit *t, int *error)
{
	struct tr_traffic *tr = lock_traffic(t);
	int status = 0;

	if (tr != NULL)
		status |= TR_ST_ACQUIRED;
	if (t->buf != NULL)
		status |= TR_ST_RESOURCE;
	/* Exhausted once its exhaust event is delivered (the seed's definition). */
	if ((t->flags & TF_EXHAUSTED) && !(t->events & TR_EV_EXHAUST))
		status |= TR_ST_EXHAUSTED;
	if (t->flags & (TF_TERMINATED | TF_TERMINATING))
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
	struct tr_traffic *tr = lock_traffic(t);

	if (tr == NULL)
		return TR_ECLOSED;
	t->inject = error;
	/* Fire at once if a transfer is waiting, rather than at the next edge. */
	t->flags |= TF_READY;
	if (wants_transfer(t)) {
		push_work(tr, t);
		wake_cycle(tr);
	}
	pthread_mutex_unlock(&tr->lock);
	return 0;
}

/* Transfers: called without the lock, with the transit IN_SYSCALL. */

static int
accept_is_transient(int error)
{
	switch (error) {
	case ECONNABORTED:
	case EINTR:
	/* Pending network errors Linux reports through accept(2): retry. */
	case EPROTO:
	case ENOPROTOOPT:
	case EHOSTDOWN:
#ifdef ENONET
	case ENONET:
#endif
	case EHOSTUNREACH:
	case EOPNOTSUPP:
	case ENETUNREACH:
	case ENETDOWN:
		return 1;
	default:
		return 0;
	}
}

static int
accept_is_fault(int error)
{
	/* Out of descriptors or memory: the listener is fine; report and let the caller back off. */
	return error == EMFILE || error == ENFILE || error == ENOBUFS || error == ENOMEM;
}

static int
transfer_sockets(struct tr_transit *t, int *error)
{
	int fd = t->point->fd;

	for (;;) {
		int s;

		if (t->size - t->pos < sizeof(int))
			return TX_EXHAUSTED;
#ifdef SOCK_CLOEXEC
		s = accept4(fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
#else
		s = accept(fd, NULL, NULL);
		if (s >= 0) {
			fcntl(s, F_SETFD, FD_CLOEXEC);
			set_nonblocking(s);
		}
#endif
		if (s >= 0) {
			memcpy(t->buf + t->pos, &s, sizeof s);
			t->pos += sizeof s;
			continue;
		}
		if (errno == EAGAIN || errno == EWOULDBLOCK)
			return TX_AGAIN;
		if (accept_is_transient(errno))
			continue;
		*error = errno;
		return accept_is_fault(errno) ? TX_FAULT : TX_ERROR;
	}
}

/* Set in the cycle thread, which blocks every signal for its whole life. */
static __thread int signals_blocked;

/*
 * write(2) to a pipe whose reader is gone raises SIGPIPE, and pipes have
 * no MSG_NOSIGNAL: a program that restored SIGPIPE's default disposition
 * would die.  Block it around the write and consume the one the write
 * raised (thread-directed, so it is ours; one pending from before can only
 * exist if the thread had it blocked already, and then nothing is touched).
 */
static ssize_t
write_nosigpipe(int fd, const void *buf, size_t size)
{
	static const struct timespec zero = {0, 0};
	sigset_t pipe_set, saved;
	ssize_t n;
	int saved_errno;

	if (signals_blocked)
		return write(fd, buf, size);   /* stays pending, blocked, in the cycle thread */
	sigemptyset(&pipe_set);
	sigaddset(&pipe_set, SIGPIPE);
	pthread_sigmask(SIG_BLOCK, &pipe_set, &saved);
	n = write(fd, buf, size);
	if (sigismember(&saved, SIGPIPE))
		return n;
	saved_errno = errno;
	if (n < 0 && saved_errno == EPIPE)
		while (sigtimedwait(&pipe_set, NULL, &zero) < 0 && errno == EINTR)
			;
	pthread_sigmask(SIG_SETMASK, &saved, NULL);
	errno = saved_errno;
	return n;
}

static int
transfer_octets(struct tr_transit *t, int drain, int *error)
{
	struct tr_point *p = t->point;

	for (;;) {
		size_t want = t->size - t->pos;
		ssize_t n;

		if (want == 0)
			return TX_EXHAUSTED;
		if (t->polarity == TR_INPUT)
			n = read(p->fd, t->buf + t->pos, want);
		else if (p->is_socket)
			n = send(p->fd, t->buf + t->pos, want, MSG_NOSIGNAL);
		else
			n = write_nosigpipe(p->fd, t->buf + t->pos, want);

		if (n > 0) {
			t->pos += (size_t)n;
			/*
			 * A short transfer means the kernel's buffer was drained (or
			 * filled) at that moment; anything that changes it later raises
			 * a new edge, so the EAGAIN call would only cost a system call.
			 * Not after a hang-up (drain): the end raises no new edge.
			 */
			if ((size_t)n < want && !drain)
				return TX_AGAIN;
			continue;
		}
		if (n == 0 && t->polarity == TR_INPUT)
			return TX_EOF;
		if (n == 0)
			return TX_AGAIN;   /* a zero-length write: wait for space */
		if (errno == EINTR)
			continue;
		if (errno == EAGAIN || errno == EWOULDBLOCK)
			return TX_AGAIN;
		*error = errno;
		return TX_ERROR;
	}
}

/*
 * Descriptors: loop one message at a time to EAGAIN, the end of either part
 * of the resource, or the end of the connection.  The short-transfer
 * shortcut of transfer_octets holds only for a bare message: a stream
 * recvmsg stops after a message that carries descriptors, and (with
 * SO_PASSCRED) before one from another writer, whose credentials then come
 * as control data; a short read with no control data at all found the
 * queue empty.  A short send that attached no descriptors found the buffer
 * full (one that attached some may be short by design: see
 * tr_fds_send).
 */
static int
transfer_descriptors(struct tr_transit *t, int drain, int *error)
{
	struct tr_point *p = t->point;

	for (;;) {
		size_t want = t->size - t->pos;
		ssize_t n;

		if (want == 0)
			return TX_EXHAUSTED;
		if (t->polarity == TR_INPUT) {
			size_t got = 0;
			int truncated = 0, bare = 0;

			if (t->nfds > 0 && t->fdpos == t->nfds)
				return TX_EXHAUSTED;
			n = tr_fds_receive(p->fd, t->buf + t->pos, want,
			    t->fds != NULL ? t->fds + t->fdpos : NULL, t->nfds - t->fdpos, &got, &truncated,
			    &bare);
			if (n > 0) {
				t->pos += (size_t)n;
				t->fdpos += got;
				if ((size_t)n < want && bare && !drain)
					return TX_AGAIN;
				continue;
			}
			if (n == 0)
				return TX_EOF;
		} else {
			size_t attached = 0, i;

			n = tr_fds_send(p->fd, t->buf + t->pos, want,
			    t->fds != NULL ? t->fds + t->fdpos : NULL, t->nfds - t->fdpos, &attached);
			if (n > 0) {
				/* Sent: the receiver has its own; ours are done. */
				for (i = 0; i < attached; ++i)
					close(t->fds[t->fdpos + i]);
				t->fdpos += attached;
				t->pos += (size_t)n;
				if ((size_t)n < want && attached == 0 && !drain)
					return TX_AGAIN;
				continue;
			}
			if (n == 0)
				return TX_AGAIN;
		}
		if (n == -EINTR)
			continue;
		if (n == -EAGAIN || n == -EWOULDBLOCK)
			return TX_AGAIN;
		*error = (int)-n;
		return TX_ERROR;
	}
}

/*
 * Which errors of a datagram socket end it.  Almost none do: the others
 * belong to one datagram (EMSGSIZE, an unreachable address, a refusal
 * reported by ICMP for an earlier one...) and the socket goes on.
 */
static int
datagram_is_fault(int error)
{
	return error != EBADF && error != ENOTSOCK && error != EFAULT;
}

/*
 * Datagrams: whole batches of records to EAGAIN or the end of the
 * resource.  A receive batch cut short by the kernel proves the queue was
 * drained (each datagram that arrives later raises its own edge); a send
 * batch cut short is tried again, to learn whether the kernel is full
 * (EAGAIN) or refuses the next datagram (a fault).
 */
static int
transfer_datagrams(struct tr_transit *t, int *error)
{
	int fd = t->point->fd;

	for (;;) {
		long n;

		if (t->pos >= t->size)
			return TX_EXHAUSTED;
		if (t->polarity == TR_INPUT)
			n = tr_dg_receive(fd, t->buf, t->size, &t->pos);
		else
			n = tr_dg_send(fd, t->buf, t->size, &t->pos);
		if (n > 0) {
			if (t->polarity == TR_INPUT && n < TR_DG_BATCH && t->pos < t->size)
				return TX_AGAIN;
			continue;
		}
		if (n == 0)
			return TX_EXHAUSTED;
		if (n == -EINTR)
			continue;
		if (n == -EAGAIN || n == -EWOULDBLOCK)
			return TX_AGAIN;
		*error = (int)-n;
		return datagram_is_fault(*error) ? TX_FAULT : TX_ERROR;
	}
}

static int
transfer(struct tr_transit *t, int drain, int *error)
{
	if (t->inject != 0) {
		*error = t->inject;
		t->inject = 0;
		if (t->type == TR_DATAGRAMS)
			return datagram_is_fault(*error) ? TX_FAULT : TX_ERROR;
		return (t->type == TR_SOCKETS && accept_is_fault(*error)) ? TX_FAULT : TX_ERROR;
	}
	if (t->type == TR_SOCKETS)
		return transfer_sockets(t, error);
	if (t->type == TR_DESCRIPTORS)
		return transfer_descriptors(t, drain, error);
	if (t->type == TR_DATAGRAMS)
		return transfer_datagrams(t, error);
	return transfer_octets(t, drain, error);
}

/* Settling: lock held. */

/*
 * Close the accepted descriptors nobody was told about ([mark, pos) of a
 * Sockets resource): a dropped transit, a closed Traffic, a withdrawn or
 * closed request.  Lock held, not IN_SYSCALL.
 */
static void
discard_accepted(struct tr_transit *t)
{
	size_t at;

	if (t->type == TR_DESCRIPTORS && t->polarity == TR_INPUT && t->fds != NULL) {
		/* Received descriptors nobody was told about: the same rule. */
		for (at = t->fdmark; at < t->fdpos; ++at)
			close(t->fds[at]);
		t->fdpos = t->fdmark;
		return;
	}
	if (t->type != TR_SOCKETS || t->buf == NULL)
		return;
	for (at = t->mark; at + sizeof(int) <= t->pos; at += sizeof(int)) {
		int fd;

		memcpy(&fd, t->buf + at, sizeof fd);
		close(fd);
	}
	t->pos = t->mark;
}

/*
 * Let go of a Descriptors resource's array: the duplicates not sent are
 * closed and freed (they are the core's own); received descriptors not
 * reported are closed (discard_accepted); the owner's array is forgotten.
 */
static void
fds_release(struct tr_transit *t)
{
	size_t at;

	if (t->fds_owned) {
		for (at = t->fdpos; at < t->nfds; ++at)
			close(t->fds[at]);
		free(t->fds);
	} else {
		discard_accepted(t);
	}
	t->fds = NULL;
	t->fds_owned = 0;
	t->nfds = t->fdpos = t->fdmark = 0;
}

/* Let go of the resource: what was not reported is discarded.  Lock held. */
static void
release_resource(struct tr_transit *t)
{
	discard_accepted(t);
	fds_release(t);
	if ((t->flags & (TF_ALLOC | TF_SCRATCH)) == TF_ALLOC)
		free(t->buf);
	t->flags &= ~(TF_ALLOC | TF_SCRATCH);
	t->buf = NULL;
	t->size = t->pos = t->mark = 0;
}

/*
 * Report a finished request and release its resource.  What it transferred
 * is handed over (a core-allocated buffer becomes the report's to free),
 * except for a request closed by its owner, whose data nobody will read.
 */
static void
report_request(struct tr_transit *t, tr_report *r)
{
	r->token = t->token;
	r->events = 0;
	r->outcome = t->outcome;
	r->error = t->error;
	r->start = 0;
	r->stop = t->pos;
	r->fd_start = 0;
	r->fd_stop = t->fdpos;
	r->data = NULL;
	if (t->outcome != TR_CLOSED) {
		t->mark = t->pos;
		t->fdmark = t->fdpos;
		if ((t->flags & TF_ALLOC) && t->pos > 0) {
			r->data = t->buf;   /* or the caller's scratch: not to be freed */
			t->buf = NULL;
			t->flags &= ~(TF_ALLOC | TF_SCRATCH);
		}
	}
	release_resource(t);
}

/*
 * A threaded request ended: hand the outcome back directly (inline) or
 * through the completion list (cycle thread).  Returns the outcome.
 */
static int
finish_request(struct tr_traffic *tr, struct tr_transit *t, int outcome, tr_report *report)
{
	t->flags &= ~(TF_REQUEST | TF_WITHDRAW);
	t->outcome = outcome;
	if (report != NULL) {
		report_request(t, report);
	} else {
		push_report(tr, t);
	}
	return outcome;
}

static int
wants_transfer(const struct tr_transit *t)
{
	if (t->flags & (TF_TERMINATED | TF_TERMINATING | TF_IN_SYSCALL))
		return 0;
	if ((t->buf == NULL && !(t->flags & TF_ALLOC)) || (t->flags & TF_EXHAUSTED))
		return 0;
	if (t->traffic->threaded && !(t->flags & TF_REQUEST))
		return 0;
	return 1;
}

/* Subscribe the point for the transit's direction, if it is not yet. */
static int
ensure_registered(struct tr_traffic *tr, struct tr_point *p, const struct tr_transit *t)
{
	unsigned int want = t->polarity == TR_INPUT ? TR_K_READ : TR_K_WRITE;
	int err;

	if ((p->registered & want) || p->closed)
		return 0;
	if (p->is_file)
		return -EPERM;
	err = tr_kernel_register(tr->kernel, p->fd, p, p->registered, want);
	if (err == 0)
		p->registered |= want;
	return err;
}

/*
 * A threaded Traffic subscribes a descriptor only while a request waits on
 * it, and once: one-shot and level-triggered, armed for the directions
 * whose requests wait (the caller's included) at the EAGAIN that makes a
 * request wait.  The kernel disarms it when it reports.  Permanent
 * edge-triggered subscriptions woke the cycle thread for every edge,
 * including those of data the owner's thread had already taken inline: on
 * a shared CPU that was a context switch per message for nothing, and the
 * owner's thread found the data only after the cycle thread had run.  The
 * price is one epoll_ctl per wait, as trio pays, and an input request's
 * inline attempt always makes its system call (request_locked): with no
 * subscription while nobody waits, nothing says whether data came.
 */
static int
arm(struct tr_traffic *tr, struct tr_point *p)
{
	unsigned int want = 0;
	int i, err;

	for (i = 0; i < 2; ++i) {
		struct tr_transit *t = p->io[i];

		if (t != NULL && t->traffic == tr && (t->flags & TF_REQUEST) && !(t->flags & TF_READY))
			want |= t->polarity == TR_INPUT ? TR_K_READ : TR_K_WRITE;
	}
	if (p->closed || (p->armed & want) == want)
		return 0;
	if (p->is_file)
		return -EPERM;
	want |= p->armed;
	err = tr_kernel_arm(tr->kernel, p->fd, p, p->registered, p->armed, want);
	if (err == 0) {
		p->registered |= want;
		p->armed = want;
	}
	return err;
}

/*
 * Decide what a threaded request's transfer loop amounts to.  Returns the
 * outcome, or TR_PENDING if the request keeps waiting for an edge.
 */
static int
judge_request(struct tr_transit *t, int rc)
{
	switch (rc) {
	case TX_EOF:
	case TX_ERROR:
		/* Deliver what arrived first; the next request sees the end. */
		if (t->polarity == TR_INPUT && t->pos > 0)
			return TR_DONE;
		return TR_TERMINATED;
	case TX_FAULT:
		if (t->pos > 0) {
			t->flags |= TF_FAULT;   /* report it with the next request */
			return TR_DONE;
		}
		return TR_FAULT;
	case TX_EXHAUSTED:
		return TR_DONE;
	default:
		if (t->polarity == TR_INPUT && (t->pos > 0 || t->fdpos > 0))
			return TR_DONE;
		return TR_PENDING;
	}
}

/*
 * The error the kernel reported with an event on the transit's socket
 * (struct tr_kevent), where the system call after it no longer returns it:
 * the cause of the stream's end the call saw (EOF, EPIPE: the error is the
 * transit's termination), or a datagram socket's fault, reported once, by
 * the first transfer that finds nothing to do.  Lock held.
 */
static int
take_event_error(struct tr_point *p, const struct tr_transit *t, int rc, int *error)
{
	if (t->type == TR_DATAGRAMS) {
		if (rc != TX_AGAIN)
			return rc;
		*error = p->error;
		p->error = 0;
		return TX_FAULT;
	}
	if (rc == TX_EOF || (rc == TX_ERROR && *error == EPIPE)) {
		*error = p->error;
		return TX_ERROR;
	}
	return rc;
}

/*
 * Transfer for a transit until it has nothing to do, then settle: events
 * (synchronous) or the request's outcome (threaded).  Lock held on entry and
 * exit, dropped around the system calls.  report is non-NULL for an inline
 * request: its outcome is returned instead of being queued.
 */
static int
drive(struct tr_traffic *tr, struct tr_transit *t, tr_report *report)
{
	struct tr_point *p = t->point;
	int outcome = TR_PENDING;

	while (wants_transfer(t) && (t->flags & TF_READY)) {
		unsigned long edges = t->edges;
		size_t before = t->pos;
		int drain = p->hup;   /* read under the lock: the transfer runs without it */
		int error = 0, rc;

		if (t->buf == NULL) {
			/* TF_ALLOC: memory only while data is there, none while parked. */
			t->buf = malloc(t->size);
			if (t->buf == NULL) {
				t->error = ENOMEM;
				outcome = finish_request(tr, t, TR_FAULT, report);
				break;
			}
		}
		t->flags |= TF_IN_SYSCALL;
		p->busy += 1;
		pthread_mutex_unlock(&tr->lock);
		rc = transfer(t, drain, &error);
		pthread_mutex_lock(&tr->lock);
		t->flags &= ~TF_IN_SYSCALL;
		p->busy -= 1;
		if (p->error != 0)
			rc = take_event_error(p, t, rc, &error);
		/* Memory the core allocated (not the caller's, nor its scratch). */
		if ((t->flags & (TF_ALLOC | TF_SCRATCH)) == TF_ALLOC) {
			if (t->pos == 0) {
				free(t->buf);
				t->buf = NULL;
			} else if (t->pos < t->size) {
				/*
				 * Give back what the data did not fill (in place: no
				 * copy).  Otherwise every receive holds a whole fresh
				 * allocation until it is collected, and a batch of them
				 * walks the cache and the heap's top (page faults,
				 * trims) for a few bytes each.
				 */
				char *fitted = realloc(t->buf, t->pos);

				if (fitted != NULL)
					t->buf = fitted;
				t->size = t->pos;
			}
		}

		if (t->flags & TF_TERMINATING) {
			/* The owner terminated it while we were in the kernel. */
			if (t->flags & TF_RELEASED)
				discard_accepted(t);
			transit_end(tr, t, 0, 1);
			if (tr->threaded && (t->flags & TF_REQUEST))
				outcome = finish_request(tr, t, TR_CLOSED, report);
			else if (!tr->threaded) {
				t->events |= TR_EV_TERMINATE;
				push_report(tr, t);
			}
			break;
		}

		switch (rc) {
		case TX_AGAIN:
			if (t->edges == edges) {
				int err = 0;

				t->flags &= ~TF_READY;
				if (!tr->threaded)
					err = ensure_registered(tr, p, t);
				else if (judge_request(t, rc) == TR_PENDING && !(t->flags & TF_WITHDRAW))
					err = arm(tr, p);   /* it waits: only now */
				if (err < 0) {
					rc = TX_ERROR;
					error = -err;
				}
			}
			break;
		case TX_EXHAUSTED:
			t->flags |= TF_EXHAUSTED;
			break;
		case TX_FAULT:
			t->error = error;
			break;
		default:
			break;
		}
		if (rc == TX_EOF || rc == TX_ERROR)
			transit_end(tr, t, rc == TX_EOF ? 0 : error, 0);

		if (tr->threaded) {
			outcome = judge_request(t, rc);
			if (outcome == TR_PENDING && (t->flags & TF_WITHDRAW))
				outcome = TR_WITHDRAWN;
			if (outcome != TR_PENDING) {
				t->flags &= ~TF_EXHAUSTED;
				outcome = finish_request(tr, t, outcome, report);
				break;
			}
		} else {
			if (t->pos > before)
				t->events |= TR_EV_TRANSFER;
			if (rc == TX_EXHAUSTED)
				t->events |= TR_EV_EXHAUST;
			if (rc == TX_FAULT) {
				t->events |= TR_EV_FAULT;
				t->flags |= TF_EXHAUSTED;
			}
			if (t->flags & TF_TERMINATED)
				t->events |= TR_EV_TERMINATE;
			if (t->events)
				push_report(tr, t);
		}
	}
	point_settle(tr, p);
	return outcome;
}

/* Apply a batch of kernel events: lock held. */
static void
apply_events(struct tr_traffic *tr, int n)
{
	int i;

	for (i = 0; i < n; ++i) {
		struct tr_point *p = tr->events[i].udata;
		unsigned int f = tr->events[i].flags;
		struct tr_transit *in, *out;

		if (p->closed)
			continue;
		if (f & (TR_K_HUP | TR_K_ERROR))
			p->hup = 1;
		if (tr->events[i].error != 0 && p->is_socket && p->error == 0)
			p->error = tr->events[i].error;
		in = p->io[TR_INPUT];
		out = p->io[TR_OUTPUT];
		/* A sibling that never entered this Traffic is not its to drive. */
		if (in != NULL && in->traffic != tr)
			in = NULL;
		if (out != NULL && out->traffic != tr)
			out = NULL;
		if (tr->threaded) {
			/*
			 * The one-shot subscription fired, and the kernel disarmed
			 * what the event says.  A direction it disarmed that still
			 * waits but was not reported lost its subscription: it tries
			 * again (and re-arms at its EAGAIN).
			 */
			unsigned int fired = 0, lost;

			if (f & (TR_K_READ | TR_K_HUP | TR_K_ERROR))
				fired |= TR_K_READ;
			if (f & (TR_K_WRITE | TR_K_ERROR))
				fired |= TR_K_WRITE;
			lost = tr->events[i].disarmed & p->armed & ~fired;
			if (in != NULL && (lost & TR_K_READ))
				f |= TR_K_READ;
			if (out != NULL && (lost & TR_K_WRITE))
				f |= TR_K_WRITE;
			p->armed &= ~tr->events[i].disarmed;
		}
		if (in != NULL && (f & (TR_K_READ | TR_K_HUP | TR_K_ERROR))) {
			in->edges += 1;
			in->flags |= TF_READY;
			if (wants_transfer(in))
				push_work(tr, in);
		}
		if (out != NULL && (f & (TR_K_WRITE | TR_K_ERROR))) {
			out->edges += 1;
			out->flags |= TF_READY;
			if (wants_transfer(out))
				push_work(tr, out);
		}
	}
}

static void
run_work(struct tr_traffic *tr)
{
	struct tr_transit *t;

	while ((t = pop_work(tr)) != NULL) {
		if (!transit_consider_free(t)) {
			drive(tr, t, NULL);
			transit_consider_free(t);
		}
	}
}

/* Traffic */

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
	if ((err = tr_signal_open(&tr->signal_read, &tr->signal_write)) < 0) {
		tr_kernel_close(tr->kernel);
		free(tr);
		return err;
	}
	pthread_mutex_init(&tr->lock, NULL);
	pthread_mutex_init(&tr->signal_lock, NULL);
	live(1);
	*out = tr;
	return 0;
}

int
tr_traffic_mode(tr_traffic *tr)
{
	int mode;

	pthread_mutex_lock(&tr->lock);
	mode = tr->mode;
	pthread_mutex_unlock(&tr->lock);
	return mode;
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
tr_traffic_wake(tr_traffic *tr)
{
	pthread_mutex_lock(&tr->lock);
	wake_cycle(tr);
	pthread_mutex_unlock(&tr->lock);
	return 0;
}

int
tr_traffic_acquire(tr_traffic *tr, tr_transit *t, unsigned long long token)
{
	int err = 0;

	pthread_mutex_lock(&registry);
	pthread_mutex_lock(&tr->lock);
	if (tr->stopping)
		err = TR_ECLOSED;
	else if (t->traffic == tr)
		err = -EALREADY;
	else if (t->flags & TF_TERMINATED)
		err = TR_ECLOSED;   /* before "in another Traffic": the end is what matters */
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
	pthread_mutex_unlock(&registry);
	return err;
}

static void
block_signals(sigset_t *saved)
{
	sigset_t all;

	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, saved);
}

static void *
cycle_main(void *arg)
{
	struct tr_traffic *tr = arg;
	int due = 0;   /* a batch's signal to write once the lock is dropped */

	signals_blocked = 1;   /* tr_traffic_start created it with every signal blocked */
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
			write_signal(tr);
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
			apply_events(tr, n);
		run_work(tr);
		tr->batching = 0;
		if (tr->signal_due) {
			tr->signal_due = 0;
			if (!tr->signalled && tr->reports != NULL) {
				mark_signal(tr);
				due = 1;
			}
		}
		reap(tr);
	}
	if (tr->fatal) {
		/* The kernel queue failed: fail every request rather than hang it. */
		struct tr_transit *t;

		tr->failed = 1;
		for (t = tr->all; t != NULL; t = t->next_all) {
			if ((t->flags & TF_REQUEST) && !(t->flags & TF_IN_SYSCALL)) {
				t->error = tr->fatal;
				finish_request(tr, t, TR_TERMINATED, NULL);
			}
		}
	}
	pthread_mutex_unlock(&tr->lock);
	if (due)
		write_signal(tr);
	return NULL;
}

int
tr_traffic_start(tr_traffic *tr, int policy)
{
	sigset_t saved;
	int err = 0;

	pthread_mutex_lock(&tr->lock);
	if (tr->stopping)
		err = TR_ECLOSED;
	else if (tr->mode == TR_MODE_SYNCHRONOUS)
		err = -EINVAL;
	else if (policy != TR_CYCLE_NORMAL && policy != TR_CYCLE_IDLE && policy != TR_CYCLE_BATCH)
		err = -EINVAL;
	else if (tr->mode == TR_MODE_UNSET) {
		tr->policy = policy;
		/* The thread inherits the mask: blocked signals reach Python's main thread. */
		block_signals(&saved);
		err = -pthread_create(&tr->thread, NULL, cycle_main, tr);
		pthread_sigmask(SIG_SETMASK, &saved, NULL);
#ifdef __linux__
		/* Named before start() returns (the thread names itself too, later). */
		if (err == 0)
			pthread_setname_np(tr->thread, "traffic-cycle");
#endif
		if (err == 0) {
			tr->mode = TR_MODE_THREADED;
			tr->threaded = 1;
		}
	}
	pthread_mutex_unlock(&tr->lock);
	return err;
}

void
tr_traffic_destroy(tr_traffic *tr)
{
	struct tr_transit *t, *next;
	struct tr_point *p;

	pthread_mutex_lock(&registry);
	pthread_mutex_lock(&tr->lock);
	tr->stopping = 1;
	if (tr->threaded) {
		tr_kernel_wake(tr->kernel);
		pthread_mutex_unlock(&tr->lock);
		pthread_join(tr->thread, NULL);
		pthread_mutex_lock(&tr->lock);
	}
	for (t = tr->all; t != NULL; t = next) {
		next = t->next_all;
		t->flags &= ~(TF_ON_WORK | TF_ON_REPORTS);
		if (!(t->flags & TF_TERMINATED)) {
			t->flags |= TF_TERMINATED | TF_CLOSED;
			t->point->open -= 1;
		}
		t->flags &= ~(TF_REQUEST | TF_TERMINATING);
		release_resource(t);
		point_close(tr, t->point);
		if (t->flags & TF_RELEASED) {
			transit_free(t);
		} else {
			t->traffic = NULL;
			t->next_all = t->prev_all = NULL;
		}
	}
	tr->all = NULL;
	reap(tr);
	/* What is left belongs to siblings that never entered traffic: closed, now theirs. */
	for (p = tr->points; p != NULL; p = p->next_point) {
		point_close(tr, p);
		p->traffic = NULL;
	}
	tr->points = NULL;
	pthread_mutex_unlock(&tr->lock);
	pthread_mutex_unlock(&registry);

	pthread_mutex_destroy(&tr->lock);
	pthread_mutex_destroy(&tr->signal_lock);
	tr_signal_close(tr->signal_read, tr->signal_write);
	tr_kernel_close(tr->kernel);
	free(tr);
	live(-1);
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
		t->flags |= TF_TERMINATED | TF_CLOSED;
		t->flags &= ~(TF_REQUEST | TF_ON_WORK | TF_ON_REPORTS);
		release_resource(t);
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
	tr_signal_close(tr->signal_read, tr->signal_write);
	tr_kernel_abandon(tr->kernel);
}

/* Transit operations */

static void
fds_close_all(int *fds, size_t n)
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
static int
fds_submit(struct tr_transit *t, size_t size, int *fds, size_t nfds, int **dups)
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

			fds_close_all(*dups, i);
			*dups = NULL;
			return -err;
		}
		(*dups)[i] = d;
	}
	return 0;
}

/* Install a resource's descriptor part; lock held. */
static void
fds_install(struct tr_transit *t, int *fds, size_t nfds, int *dups)
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
	if ((err = fds_submit(t, size, fds, nfds, &dups)) < 0)
		return err;
	tr = lock_traffic(t);
	if (tr == NULL) {
		fds_close_all(dups, nfds);
		return (t->flags & TF_TERMINATED) ? TR_ECLOSED : -ENOTCONN;
	}
	if (tr->mode == TR_MODE_THREADED)
		err = -EINVAL;
	else if (t->flags & (TF_TERMINATED | TF_TERMINATING))
		err = TR_ECLOSED;
	else if (t->buf != NULL || (t->events & (TR_EV_EXHAUST | TR_EV_FAULT)))
		err = -EBUSY;   /* the current resource is not exhausted, or its end not yet seen */
	else {
		tr->mode = TR_MODE_SYNCHRONOUS;
		t->buf = resource;
		t->size = size;
		t->pos = t->mark = 0;
		fds_install(t, fds, nfds, dups);
		dups = NULL;
		t->flags &= ~TF_EXHAUSTED;
		if (t->flags & TF_READY) {
			push_work(tr, t);
			wake_cycle(tr);
		}
	}
	pthread_mutex_unlock(&tr->lock);
	fds_close_all(dups, nfds);   /* refused: the duplicates go */
	return err;
}

/*
 * The owner ended a transit: report it so the owner
 * can unpin the resource (a pending request completes TR_CLOSED; a
 * synchronous transit gets its termination event).  Lock held.
 */
static void
report_end(struct tr_traffic *tr, struct tr_transit *t)
{
	if (tr->threaded) {
		if (t->flags & TF_REQUEST)
			finish_request(tr, t, TR_CLOSED, NULL);
	} else {
		t->events |= TR_EV_TERMINATE;
		push_report(tr, t);
		wake_cycle(tr);
	}
}

int
tr_transit_terminate(tr_transit *t, int disregard)
{
	struct tr_traffic *tr = lock_traffic(t);

	if (tr == NULL) {
		/* Not in traffic itself; its sibling's Traffic, if any, guards the point. */
		struct tr_traffic *owner;

		pthread_mutex_lock(&registry);
		owner = t->point->traffic;
		if (owner != NULL)
			pthread_mutex_lock(&owner->lock);
		if (!(t->flags & TF_TERMINATED)) {
			if (disregard)
				t->flags |= TF_DISREGARD;
			transit_end(owner, t, 0, 1);
		}
		if (owner != NULL)
			pthread_mutex_unlock(&owner->lock);
		pthread_mutex_unlock(&registry);
		return 0;
	}
	if (t->flags & (TF_TERMINATED | TF_TERMINATING)) {
		/* Ended by the kernel (EOF, an error) before: now closed by its owner too. */
		t->flags |= TF_CLOSED;
		pthread_mutex_unlock(&tr->lock);
		return 0;
	}
	if (disregard)
		t->flags |= TF_DISREGARD;
	if (t->flags & TF_IN_SYSCALL) {
		t->flags |= TF_TERMINATING;   /* the transferring thread finishes it */
	} else {
		transit_end(tr, t, 0, 1);
		report_end(tr, t);
	}
	pthread_mutex_unlock(&tr->lock);
	return 0;
}

void
tr_transit_release(tr_transit *t)
{
	struct tr_traffic *tr;

	pthread_mutex_lock(&registry);
	tr = t->traffic;
	if (tr == NULL) {
		/* Its sibling may be in traffic: then that Traffic guards the point. */
		struct tr_traffic *owner = t->point->traffic;

		if (owner != NULL)
			pthread_mutex_lock(&owner->lock);
		if (!(t->flags & TF_TERMINATED))
			transit_end(owner, t, 0, 1);
		transit_free(t);
		if (owner != NULL)
			pthread_mutex_unlock(&owner->lock);
		pthread_mutex_unlock(&registry);
		return;
	}
	pthread_mutex_lock(&tr->lock);
	pthread_mutex_unlock(&registry);
	/*
	 * Dropped while in traffic: terminate it, never free it under the core.
	 * Its last report still reaches the owner's collector, which unpins the
	 * resource; the struct goes when nothing refers to it.
	 */
	t->flags |= TF_RELEASED;
	if (!(t->flags & (TF_TERMINATED | TF_TERMINATING))) {
		if (t->flags & TF_IN_SYSCALL) {
			t->flags |= TF_TERMINATING;
		} else {
			discard_accepted(t);
			transit_end(tr, t, 0, 1);
			report_end(tr, t);
		}
	} else if (!(t->flags & (TF_IN_SYSCALL | TF_REQUEST))) {
		discard_accepted(t);
	}
	transit_consider_free(t);
	pthread_mutex_unlock(&tr->lock);
}

/* Synchronous cycles */

int
tr_cycle_enter(tr_traffic *tr, int timeout_ms)
{
	int n, err = 0;

	pthread_mutex_lock(&tr->lock);
	if (tr->stopping)
		err = TR_ECLOSED;
	else if (tr->mode == TR_MODE_THREADED)
		err = -EINVAL;
	else if (tr->cycling)
		err = -EBUSY;
	if (err != 0) {
		pthread_mutex_unlock(&tr->lock);
		return err;
	}
	tr->mode = TR_MODE_SYNCHRONOUS;
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
	apply_events(tr, n);
	run_work(tr);
	reap(tr);
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
			transit_consider_free(t);
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
			fds_release(t);  /* the reported descriptors are the owner's now */
		}
		t->events = 0;
		taken = 1;
		transit_consider_free(t);
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

/* Threaded requests */

int
tr_request(tr_transit *t, void *resource, size_t size, int inline_first, tr_report *report)
{
	return tr_request_fds(t, resource, size, NULL, 0, inline_first, report);
}

static int request_locked(struct tr_traffic *tr, struct tr_transit *t, void *resource,
    size_t size, int *fds, size_t nfds, int **dups, int inline_first, void *scratch,
    tr_report *report);

int
tr_request_fds(tr_transit *t, void *resource, size_t size, int *fds, size_t nfds,
    int inline_first, tr_report *report)
{
	struct tr_traffic *tr;
	int *dups;
	int outcome;

	memset(report, 0, sizeof *report);
	report->token = t->token;
	/* A Datagrams request brings its records: the core cannot lay them out. */
	if (t->type == TR_DATAGRAMS && (resource == NULL || tr_datagrams_check(resource, size, t->polarity) < 0))
		return -EINVAL;
	if ((outcome = fds_submit(t, size, fds, nfds, &dups)) < 0)
		return outcome;
	tr = lock_traffic(t);
	if (tr == NULL) {
		fds_close_all(dups, nfds);
		return TR_ECLOSED;
	}
	outcome = request_locked(tr, t, resource, size, fds, nfds, &dups, inline_first, NULL, report);
	pthread_mutex_unlock(&tr->lock);
	fds_close_all(dups, nfds);   /* not taken: the duplicates go */
	return outcome;
}

int
tr_receive(tr_transit *t, size_t size, void *scratch, tr_report *report)
{
	struct tr_traffic *tr;
	int *dups = NULL;
	int outcome;

	memset(report, 0, sizeof *report);
	report->token = t->token;
	if (t->polarity != TR_INPUT || (t->type != TR_OCTETS && t->type != TR_DESCRIPTORS) ||
	    scratch == NULL)
		return -EINVAL;
	tr = lock_traffic(t);
	if (tr == NULL)
		return TR_ECLOSED;
	outcome = request_locked(tr, t, NULL, size, NULL, 0, &dups, 1, scratch, report);
	pthread_mutex_unlock(&tr->lock);
	return outcome;
}

/* The request proper; lock held, and left held.  Takes *dups if it takes the resource. */
static int
request_locked(struct tr_traffic *tr, struct tr_transit *t, void *resource, size_t size,
    int *fds, size_t nfds, int **dups, int inline_first, void *scratch, tr_report *report)
{
	int outcome = TR_PENDING;

	if (!tr->threaded || tr->stopping)
		return tr->stopping ? TR_ECLOSED : -EINVAL;
	if (tr->failed) {
		report->error = tr->fatal;
		outcome = TR_TERMINATED;
	} else if (t->flags & (TF_TERMINATED | TF_TERMINATING)) {
		if (t->flags & TF_CLOSED)
			return TR_ECLOSED;
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
		t->buf = resource;
		t->size = size;
		t->pos = t->mark = 0;
		fds_install(t, fds, nfds, *dups);
		*dups = NULL;
		t->error = 0;
		t->flags |= TF_REQUEST;
		if (resource == NULL && t->type != TR_SOCKETS && t->polarity == TR_INPUT && size > 0)
			t->flags |= TF_ALLOC;
		if ((t->flags & TF_ALLOC) && scratch != NULL && inline_first) {
			/* Tried at once into the caller's memory: no allocation. */
			t->buf = scratch;
			t->flags |= TF_SCRATCH;
		}
		t->flags &= ~TF_EXHAUSTED;
		if (size == 0 || (t->type == TR_SOCKETS && size < sizeof(int)))
			outcome = finish_request(tr, t, TR_DONE, report);
		else {
			/*
			 * Nothing is subscribed while nobody waits (see arm): an input
			 * request tries its system call whatever the last one said,
			 * as trio's sockets do, and so does the cycle thread for a
			 * request handed to it (it arms at EAGAIN).
			 */
			if (t->polarity == TR_INPUT || !inline_first)
				t->flags |= TF_READY;
			if (inline_first) {
				outcome = drive(tr, t, report);
				/*
				 * Waiting without having tried (an output whose last
				 * transfer met EAGAIN) needs a subscription that this
				 * EAGAIN may not have made: a withdrawal during that
				 * system call skips it.  arm() is a no-op if one stands.
				 */
				if (outcome == TR_PENDING && !(t->flags & TF_READY)) {
					int err = arm(tr, t->point);

					if (err < 0) {
						transit_end(tr, t, -err, 0);
						outcome = finish_request(tr, t, TR_TERMINATED, report);
					}
				}
			} else {
				push_work(tr, t);
				wake_cycle(tr);
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
	struct tr_traffic *tr = lock_traffic(t);
	int outcome;

	memset(report, 0, sizeof *report);
	report->token = t->token;
	if (tr == NULL)
		return TR_ECLOSED;
	if (t->flags & TF_ON_REPORTS) {
		outcome = TR_COMPLETING;    /* completed, not yet collected */
	} else if (!(t->flags & TF_REQUEST)) {
		outcome = -ENOENT;
	} else if (t->flags & TF_IN_SYSCALL) {
		t->flags |= TF_WITHDRAW;    /* the transferring thread completes it */
		outcome = TR_COMPLETING;
	} else {
		t->flags &= ~TF_REQUEST;
		report->outcome = TR_WITHDRAWN;
		report->stop = t->pos;
		report->fd_stop = t->fdpos;   /* a send's descriptors that went out */
		release_resource(t);
		outcome = TR_WITHDRAWN;
	}
	pthread_mutex_unlock(&tr->lock);
	return outcome;
}

int
tr_collect(tr_traffic *tr, tr_report *reports, int max)
{
	struct tr_transit *t;
	int n = 0;

	pthread_mutex_lock(&tr->lock);
	while (n < max && (t = pop_report(tr)) != NULL) {
		report_request(t, &reports[n]);
		transit_consider_free(t);
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

int
tr_transit_forget(tr_transit *t)
{
	int err = 0;

	/*
	 * Give the descriptor back instead of closing it: for a constructor
	 * that failed half-way, whose caller still owns the descriptor.
	 */
	pthread_mutex_lock(&registry);
	if (t->traffic != NULL || t->point->traffic != NULL || t->point->links != 1) {
		err = -EBUSY;
	} else {
		t->point->closed = 1;
		t->point->fd = -1;
		t->flags |= TF_TERMINATED;
		t->point->open -= 1;
		transit_free(t);
	}
	pthread_mutex_unlock(&registry);
	return err;
}
