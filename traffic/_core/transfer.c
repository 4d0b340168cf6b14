/*
 * transfer.c: the transfer loops (the system calls: octets, accepted
 * sockets, descriptors, datagrams), settling their outcome, and tr_drive(),
 * which runs them for a transit in either mode: the synchronous cycle's
 * events, or a threaded request's outcome.  When a transit waits and what
 * wakes it (the subscriptions, the kernel's events) is readiness.c's.
 *
 * The loops run without the Traffic's mutex, with the transit IN_SYSCALL
 * (see internal.h): only the transferring thread touches the resource.  A
 * transfer that ends in EAGAIN makes the transit wait only if no edge
 * arrived during its system call (readiness.c).
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
			tr_set_nonblocking(s);
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

/*
 * write(2) to a pipe whose reader is gone raises SIGPIPE, and pipes have
 * no MSG_NOSIGNAL (nor has sendfile(2)): a program that restored SIGPIPE's
 * default disposition would die.  Block it around the call and consume the
 * one the call raised (thread-directed, so it is ours; one pending from
 * before can only exist if the thread had it blocked already, and then
 * nothing is touched).  The cycle thread has every signal blocked for
 * life: there it stays pending, blocked.  tr_sigpipe_hold returns whether
 * it blocked it, for tr_sigpipe_release.
 */
int
tr_sigpipe_hold(sigset_t *saved)
{
	sigset_t pipe_set;

	if (tr_signals_blocked)
		return 0;
	sigemptyset(&pipe_set);
	sigaddset(&pipe_set, SIGPIPE);
	pthread_sigmask(SIG_BLOCK, &pipe_set, saved);
	return !sigismember(saved, SIGPIPE);
}

void
tr_sigpipe_release(const sigset_t *saved, int held, int epipe)
{
	static const struct timespec zero = {0, 0};
	sigset_t pipe_set;
	int saved_errno = errno;

	if (!held)
		return;
	sigemptyset(&pipe_set);
	sigaddset(&pipe_set, SIGPIPE);
	if (epipe)
		while (sigtimedwait(&pipe_set, NULL, &zero) < 0 && errno == EINTR)
			;
	pthread_sigmask(SIG_SETMASK, saved, NULL);
	errno = saved_errno;
}

ssize_t
tr_write_nosigpipe(int fd, const void *buf, size_t size)
{
	sigset_t saved;
	int held = tr_sigpipe_hold(&saved);
	ssize_t n = write(fd, buf, size);

	tr_sigpipe_release(&saved, held, n < 0 && errno == EPIPE);
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
			n = tr_write_nosigpipe(p->fd, t->buf + t->pos, want);

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
			if (t->polarity == TR_INPUT && n == TR_DG_BATCH)
				t->full_batches += 1;
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

/*
 * nodisk: the call is inline, in the owner's thread, which a read from the
 * disk must not block (files.c).
 */
static int
transfer(struct tr_transit *t, int drain, int nodisk, int *error)
{
	if (t->inject != 0) {
		*error = t->inject;
		t->inject = 0;
		if (t->type == TR_DATAGRAMS)
			return datagram_is_fault(*error) ? TX_FAULT : TX_ERROR;
		return (t->type == TR_SOCKETS && accept_is_fault(*error)) ? TX_FAULT : TX_ERROR;
	}
	if (t->file >= 0)
		return tr_file_transfer(t, drain, nodisk, error);
	if (t->held_len > 0 && t->polarity == TR_INPUT && tr_file_take_held(t))
		return TX_EXHAUSTED;   /* bytes a file refused come first */
	if (t->type == TR_SOCKETS)
		return transfer_sockets(t, error);
	if (t->type == TR_DESCRIPTORS)
		return transfer_descriptors(t, drain, error);
	if (t->type == TR_DATAGRAMS)
		return transfer_datagrams(t, error);
	return transfer_octets(t, drain, error);
}

/*
 * Close the accepted descriptors nobody was told about ([mark, pos) of a
 * Sockets resource): a dropped transit, a closed Traffic, a withdrawn or
 * closed request.  Lock held, not IN_SYSCALL.
 */
void
tr_close_unreported(struct tr_transit *t)
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
		if (t->traffic != NULL)
			t->traffic->stats.accepted_closed += 1;
	}
	t->pos = t->mark;
}

/*
 * Let go of a Descriptors resource's array: the duplicates not sent are
 * closed and freed (they are the core's own); received descriptors not
 * reported are closed (tr_close_unreported); the owner's array is forgotten.
 */
void
tr_fds_release(struct tr_transit *t)
{
	size_t at;

	if (t->fds_owned) {
		for (at = t->fdpos; at < t->nfds; ++at)
			close(t->fds[at]);
		free(t->fds);
	} else {
		tr_close_unreported(t);
	}
	t->fds = NULL;
	t->fds_owned = 0;
	t->nfds = t->fdpos = t->fdmark = 0;
}

/* Let go of the resource: what was not reported is discarded.  Lock held. */
void
tr_release_resource(struct tr_transit *t)
{
	tr_close_unreported(t);
	tr_file_release(t);
	tr_fds_release(t);
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
void
tr_report_request(struct tr_transit *t, tr_report *r)
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
	if (t->outcome != TR_OWNER_TERMINATED) {
		t->mark = t->pos;
		t->fdmark = t->fdpos;
		if ((t->flags & TF_ALLOC) && t->pos > 0) {
			r->data = t->buf;   /* or the caller's scratch: not to be freed */
			t->buf = NULL;
			t->flags &= ~(TF_ALLOC | TF_SCRATCH);
		}
	}
	tr_release_resource(t);
}

/*
 * A threaded request ended: hand the outcome back directly (inline) or
 * through the completion list (cycle thread).  Returns the outcome.
 */
int
tr_finish_request(struct tr_traffic *tr, struct tr_transit *t, int outcome, tr_report *report)
{
	t->flags &= ~(TF_REQUEST | TF_WITHDRAW);
	t->outcome = outcome;
	if (report != NULL) {
		tr_report_request(t, report);
	} else {
		tr_push_report(tr, t);
	}
	return outcome;
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
		if (t->pos > 0 && t->file < 0) {
			t->flags |= TF_FAULT;   /* report it with the next request */
			return TR_DONE;
		}
		return TR_FAULT;
	case TX_EXHAUSTED:
		return TR_DONE;
	case TX_YIELD:
		return TR_PENDING;
	default:
		/* Input completes with what came; into a file, with the region full. */
		if (t->polarity == TR_INPUT && t->file < 0 && (t->pos > 0 || t->fdpos > 0))
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
 * One transfer loop for the transit, the lock dropped around its system
 * calls: memory first for a request that has the core allocate it, then
 * the loop, the error an event carried, and the allocation fitted to what
 * came.  Lock held on entry and exit.  Returns the loop's outcome (TX_*),
 * with *error its errno.
 */
static int
transfer_unlocked(struct tr_traffic *tr, struct tr_transit *t, int nodisk, int *error)
{
	struct tr_point *p = t->point;
	int drain = p->hup;   /* read under the lock: the transfer runs without it */
	int rc;

	if (t->buf == NULL && (t->flags & TF_ALLOC)) {
		/* Memory only while data is there, none while parked. */
		t->buf = malloc(t->size);
		if (t->buf == NULL) {
			*error = ENOMEM;
			return TX_FAULT;
		}
	}
	t->flags |= TF_IN_SYSCALL;
	p->busy += 1;
	pthread_mutex_unlock(&tr->lock);
	rc = transfer(t, drain, nodisk, error);
	pthread_mutex_lock(&tr->lock);
	t->flags &= ~TF_IN_SYSCALL;
	p->busy -= 1;
	tr->stats.file_pass_bound += t->pass_bounds;
	tr->stats.datagram_full_batch += t->full_batches;
	t->pass_bounds = t->full_batches = 0;
	if (p->error != 0)
		rc = take_event_error(p, t, rc, error);
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
	return rc;
}

/*
 * What a transfer loop's outcome does to the transit whatever the mode:
 * the exhaustion, the fault's errno, the kernel's end.  Lock held.
 */
static void
record(struct tr_traffic *tr, struct tr_transit *t, int rc, int error)
{
	if (rc == TX_EXHAUSTED)
		t->flags |= TF_EXHAUSTED;
	else if (rc == TX_FAULT)
		t->error = error;
	else if (rc == TX_EOF || rc == TX_ERROR)
		tr_terminate(tr, t, TR_LIFE_KERNEL_END, rc == TX_EOF ? 0 : error);
}

/*
 * The synchronous cycle's settle step: a transit that waits subscribes
 * for good (tr_subscribe), and what the loop did becomes the
 * transit's events for the cycle to report.  Lock held.
 */
static void
settle_cycle(struct tr_traffic *tr, struct tr_transit *t, int rc, int error, int waits,
    size_t before)
{
	if (waits) {
		int err = tr_subscribe(tr, t->point, t);

		if (err < 0) {
			rc = TX_ERROR;
			error = -err;
		}
	}
	record(tr, t, rc, error);
	if (t->pos > before)
		t->events |= TR_EV_TRANSFER;
	if (rc == TX_EXHAUSTED)
		t->events |= TR_EV_EXHAUST;
	if (rc == TX_FAULT) {
		t->events |= TR_EV_FAULT;
		t->flags |= TF_EXHAUSTED;
	}
	if (t->life == TR_LIFE_TERMINATED)
		t->events |= TR_EV_TERMINATE;
	if (t->events)
		tr_push_report(tr, t);
}

/*
 * A threaded Traffic's settle step: a request that goes on waiting arms
 * the point (only now: see tr_arm), and one that is done (or withdrawn
 * during its system call) completes.  Lock held.  Returns the request's
 * outcome, TR_PENDING while it waits.
 */
static int
settle_request(struct tr_traffic *tr, struct tr_transit *t, int rc, int error, int waits,
    tr_report *report)
{
	int outcome;

	if (waits && judge_request(t, rc) == TR_PENDING && !(t->flags & TF_WITHDRAW)) {
		int err = tr_arm(tr, t->point);

		if (err < 0) {
			rc = TX_ERROR;
			error = -err;
		}
	}
	record(tr, t, rc, error);
	outcome = judge_request(t, rc);
	if (outcome == TR_PENDING && (t->flags & TF_WITHDRAW))
		outcome = TR_WITHDRAWN;
	if (outcome == TR_PENDING)
		return TR_PENDING;
	t->flags &= ~TF_EXHAUSTED;
	return tr_finish_request(tr, t, outcome, report);
}

/*
 * The owner's termination of the transit, reported in its Traffic's mode:
 * the termination event (synchronous), or a waiting request's TR_OWNER_TERMINATED
 * completion (threaded; returned instead of queued for an inline
 * request's report).  Lock held.  Returns the request's outcome, or
 * TR_PENDING when none completed.
 */
int
tr_report_owner_end(struct tr_traffic *tr, struct tr_transit *t, tr_report *report)
{
	if (!tr_threaded(tr)) {
		t->events |= TR_EV_TERMINATE;
		tr_push_report(tr, t);
		return TR_PENDING;
	}
	if (t->flags & TF_REQUEST)
		return tr_finish_request(tr, t, TR_OWNER_TERMINATED, report);
	return TR_PENDING;
}

/*
 * Transfer for a transit until it has nothing to do: the transfer loop,
 * then its Traffic's settle step after each pass (the synchronous cycle's
 * events, or a threaded request's outcome).  Lock held on entry and exit,
 * dropped around the system calls.  report is non-NULL for an inline
 * request: its outcome is returned instead of being queued.
 */
int
tr_drive(struct tr_traffic *tr, struct tr_transit *t, tr_report *report)
{
	int outcome = TR_PENDING;

	while (outcome == TR_PENDING && tr_wants_transfer(t) && (t->flags & TF_READY)) {
		unsigned long edges = t->edges;
		size_t before = t->pos;
		int error = 0;
		int rc = transfer_unlocked(tr, t, report != NULL, &error);
		/* Drained, with no edge during the call: it waits for the next. */
		int waits = rc == TX_AGAIN && t->edges == edges;

		if (waits)
			t->flags &= ~TF_READY;
		if (t->life == TR_LIFE_TERMINATING) {
			/* The owner terminated it while we were in the kernel. */
			tr->stats.end_settled += 1;
			if (t->flags & TF_RELEASED)
				tr_close_unreported(t);
			tr_terminate(tr, t, TR_LIFE_SETTLE, 0);
			outcome = tr_report_owner_end(tr, t, report);
			break;
		}
		if (tr_threaded(tr))
			outcome = settle_request(tr, t, rc, error, waits, report);
		else
			settle_cycle(tr, t, rc, error, waits, before);
		if (rc == TX_YIELD && outcome == TR_PENDING && tr_wants_transfer(t)) {
			/*
			 * Still ready, with more to do: the others go first.  An
			 * inline request goes on in the cycle thread; the cycle
			 * takes the transit up again after this batch's work.
			 */
			if (report != NULL) {
				push_work(tr, t);
				tr_wake_cycle(tr);
			} else {
				t->flags |= TF_YIELD;
			}
			break;
		}
	}
	tr_point_settle(tr, t->point);
	return outcome;
}

/*
 * Run the ready transits once each.  One that yields (TF_YIELD) joins the
 * work again after this batch, behind the kernel's next events.
 */
void
tr_run_work(struct tr_traffic *tr)
{
	struct tr_transit *t, *later = NULL, *later_tail = NULL;

	while ((t = pop_work(tr)) != NULL) {
		if (tr_transit_consider_free(t))
			continue;
		tr_drive(tr, t, NULL);
		if (t->flags & TF_YIELD) {
			t->flags &= ~TF_YIELD;
			t->flags |= TF_ON_WORK;   /* pushes meanwhile find it queued */
			t->next_work = NULL;
			if (later_tail != NULL)
				later_tail->next_work = t;
			else
				later = t;
			later_tail = t;
			continue;
		}
		tr_transit_consider_free(t);
	}
	if (later != NULL) {
		tr->work = later;
		tr->work_tail = later_tail;
	}
}
