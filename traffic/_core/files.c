/*
 * files.c: a file region as a stream transit's resource (tr_request_file
 * in traffic.h): submitting it, the transfer loops between a socket and a
 * file, and the bytes a transit holds when a file refused them.
 *
 * Which system calls: the operating system decides, not the event
 * backend.  Linux sends with sendfile(2) and receives with splice(2)
 * through a pipe the request owns; FreeBSD and macOS send with their
 * sendfile(2), which report partial progress even when they fail with
 * EAGAIN or EINTR, and receive by copying.  Where the kernel refuses (a
 * file sendfile cannot read, a file system without splice, a file opened
 * O_APPEND, which splice refuses and pwrite would write at the end of
 * anyway), the core copies through the request's bounce buffer: pread +
 * send, read + pwrite (or write, for O_APPEND).
 *
 * The disk.  O_NONBLOCK means nothing to a regular file, so a call on
 * pages that are not in memory blocks its thread until the disk answers.
 * Each call moves at most TR_FILE_CALL bytes and each pass of the loop at
 * most TR_FILE_PASS, and an inline send (in the owner's thread) probes the
 * pages of each call first: when they are not in memory it starts the read
 * ahead (POSIX_FADV_WILLNEED) and yields the transfer to the cycle thread.
 *
 * Nothing dropped.  Bytes taken from the socket are in the file, or in the
 * pipe on their way there (each splice into the pipe is followed by
 * splices out of it until it is empty), or held: a file that refuses
 * (ENOSPC, EIO...) leaves them in the transit's hold, and its next
 * request, into memory or a file, takes them first.  The hold is allocated
 * with the request, before anything is read, so that keeping them can
 * never fail for want of memory.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#if defined(__linux__)
#include <sys/sendfile.h>
#define TR_SPLICE 1
#endif

#include "internal.h"

/* The end of a connection, as a send reports it (not a failure of the file). */
static int
connection_error(int error)
{
	switch (error) {
	case EPIPE:
	case ECONNRESET:
	case ECONNABORTED:
	case ENOTCONN:
	case ETIMEDOUT:
	case ENETRESET:
	case ENETUNREACH:
	case EHOSTUNREACH:
	case ESHUTDOWN:
		return 1;
	default:
		return 0;
	}
}

/* The kernel cannot send this file to this descriptor: copy instead. */
static int
sendfile_refused(int error)
{
	return error == EINVAL || error == ENOSYS || error == EOPNOTSUPP || error == ENOTSUP ||
	    error == ESPIPE || error == ENOTSOCK;
}

/*
 * Whether the file's pages of [at, at + size) are in memory, probed at the
 * first and the last page (a read that must not wait for the disk).  Where
 * the probe is not available the answer is yes: the transfer goes on.
 */
static int
resident(int file, long long at, size_t size)
{
#if defined(__linux__) && defined(RWF_NOWAIT)
	char byte;
	struct iovec iov = {&byte, 1};
	long long probe[2] = {at, at + (long long)size - 1};
	int i;

	for (i = 0; i < 2; ++i) {
		if (preadv2(file, &iov, 1, (off_t)probe[i], RWF_NOWAIT) < 0 && errno == EAGAIN)
			return 0;
	}
#else
	(void)file;
	(void)at;
	(void)size;
#endif
	return 1;
}

/* Start reading [at, at + size) from the disk, without waiting for it. */
static void
read_ahead(int file, long long at, size_t size)
{
#ifdef POSIX_FADV_WILLNEED
	(void)posix_fadvise(file, (off_t)at, (off_t)size, POSIX_FADV_WILLNEED);
#else
	(void)file;
	(void)at;
	(void)size;
#endif
}

/*
 * One sendfile(2) of size bytes from the file at at into the socket:
 * returns 0 or -errno, with *sent the bytes that went (also on failure:
 * the BSDs report partial progress with EAGAIN and EINTR).
 */
static int
send_region(struct tr_transit *t, long long at, size_t size, int nodisk, size_t *sent)
{
	int sock = t->point->fd;
	sigset_t saved;
	int held, err = 0;

	*sent = 0;
	held = tr_sigpipe_hold(&saved);
#if defined(__linux__)
	{
		off_t offset = (off_t)at;
		ssize_t n;

		(void)nodisk;
		n = sendfile(sock, t->file, &offset, size);
		if (n >= 0)
			*sent = (size_t)n;
		else
			err = -errno;
	}
#elif defined(__FreeBSD__)
	{
		off_t sbytes = 0;

		/* SF_NODISKIO (inline): EBUSY instead of waiting for the disk. */
		if (sendfile(t->file, sock, (off_t)at, size, NULL, &sbytes, nodisk ? SF_NODISKIO : 0) < 0)
			err = -errno;
		*sent = (size_t)sbytes;
	}
#elif defined(__APPLE__)
	{
		off_t len = (off_t)size;

		(void)nodisk;
		if (!t->point->is_socket)
			err = -ENOTSOCK;   /* macOS sends only to sockets */
		else if (sendfile(t->file, sock, (off_t)at, &len, NULL, 0) < 0)
			err = -errno;
		*sent = err == -ENOTSOCK ? 0 : (size_t)len;
	}
#else
	(void)sock;
	(void)at;
	(void)size;
	(void)nodisk;
	err = -ENOSYS;
#endif
	tr_sigpipe_release(&saved, held, err == -EPIPE);
	return err;
}

/* The bounce buffer of a request that copies (TR_FILE_HOLD bytes), made on first need. */
static int
bounce(struct tr_transit *t)
{
	if (t->hold == NULL && (t->hold = malloc(TR_FILE_HOLD)) == NULL)
		return -ENOMEM;
	return 0;
}

/*
 * Out of the file into the socket, by copying: pread into the bounce
 * buffer and send what was read; a short send leaves the rest to be read
 * again (pread is positional: nothing is lost).  Returns a TX_ outcome for
 * a failure, or -1 to go on, with *sent the bytes that went.
 */
static int
copy_out(struct tr_transit *t, long long at, size_t size, size_t *sent, int *error)
{
	struct tr_point *p = t->point;
	ssize_t n, m;

	*sent = 0;
	if (bounce(t) < 0) {
		*error = ENOMEM;
		return TX_FAULT;
	}
	if (size > TR_FILE_HOLD)
		size = TR_FILE_HOLD;
	do
		n = pread(t->file, t->hold, size, (off_t)at);
	while (n < 0 && errno == EINTR);
	if (n < 0) {
		*error = errno;
		return TX_FAULT;
	}
	if (n == 0) {
		*error = TR_FILE_ENDED;
		return TX_FAULT;
	}
	do
		m = p->is_socket ? send(p->fd, t->hold, (size_t)n, MSG_NOSIGNAL)
		                 : tr_write_nosigpipe(p->fd, t->hold, (size_t)n);
	while (m < 0 && errno == EINTR);
	if (m < 0) {
		if (errno == EAGAIN || errno == EWOULDBLOCK)
			return TX_AGAIN;
		*error = errno;
		return TX_ERROR;
	}
	*sent = (size_t)m;
	return -1;
}

static int
file_send(struct tr_transit *t, int nodisk, int *error)
{
	size_t passed = 0;

	for (;;) {
		size_t want = t->size - t->pos, sent = 0;
		long long at = t->file_offset + (long long)t->pos;
		int err;

		if (want == 0)
			return TX_EXHAUSTED;
		if (passed >= TR_FILE_PASS) {
			t->pass_bounds += 1;
			return TX_YIELD;
		}
		if (want > TR_FILE_CALL)
			want = TR_FILE_CALL;
		if (nodisk && !t->file_copy && !resident(t->file, at, want)) {
			read_ahead(t->file, at, want);
			return TX_YIELD;
		}
		if (t->file_copy) {
			int rc = copy_out(t, at, want, &sent, error);

			t->pos += sent;
			passed += sent;
			if (rc >= 0)
				return rc;
			continue;
		}
		err = send_region(t, at, want, nodisk, &sent);
		t->pos += sent;
		passed += sent;
		if (err == 0 && sent == 0) {
			*error = TR_FILE_ENDED;
			return TX_FAULT;
		}
		if (err == 0 || err == -EINTR)
			continue;
		if (err == -EAGAIN || err == -EWOULDBLOCK)
			return TX_AGAIN;
		if (err == -EBUSY) {
			read_ahead(t->file, at, want);
			return TX_YIELD;   /* FreeBSD's SF_NODISKIO: not in memory */
		}
		if (sendfile_refused(-err)) {
			t->file_copy = 1;
			continue;
		}
		*error = -err;
		return connection_error(-err) ? TX_ERROR : TX_FAULT;
	}
}

/*
 * Write the held bytes to the file, as many as the request still takes.
 * Returns 0 when none are left to write for it, else TX_FAULT (the file
 * refused: what it did not take stays held).
 */
static int
hold_to_file(struct tr_transit *t, int *error)
{
	while (t->held_pos < t->held_len && t->pos < t->size) {
		size_t want = t->held_len - t->held_pos;
		ssize_t n;

		if (want > t->size - t->pos)
			want = t->size - t->pos;
		if (t->file_append)
			n = write(t->file, t->hold + t->held_pos, want);
		else
			n = pwrite(t->file, t->hold + t->held_pos, want, (off_t)(t->file_offset + (long long)t->pos));
		if (n > 0) {
			t->held_pos += (size_t)n;
			t->pos += (size_t)n;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		*error = n < 0 ? errno : EIO;
		return TX_FAULT;
	}
	if (t->held_pos == t->held_len)
		t->held_pos = t->held_len = 0;
	return 0;
}

#ifdef TR_SPLICE
/*
 * Empty the pipe into the file.  Returns 0, or TX_FAULT when the file
 * refuses: then the pipe's bytes move to the hold (a file system without
 * splice, EINVAL, is copied to from there instead).
 */
static int
pipe_to_file(struct tr_transit *t, int *error)
{
	while (t->piped > 0) {
		loff_t at = (loff_t)(t->file_offset + (long long)t->pos);
		ssize_t n = splice(t->pipe_rd, NULL, t->file, &at, t->piped, SPLICE_F_MOVE);

		if (n > 0) {
			t->piped -= (size_t)n;
			t->pos += (size_t)n;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		*error = n < 0 ? errno : EIO;
		/* The hold has room for a whole pipe: nothing is left behind. */
		while (t->piped > 0) {
			ssize_t m = read(t->pipe_rd, t->hold + t->held_len, t->piped);

			if (m <= 0 && !(m < 0 && errno == EINTR))
				break;   /* cannot happen: the bytes are in the pipe */
			if (m > 0) {
				t->held_len += (size_t)m;
				t->piped -= (size_t)m;
			}
		}
		if (*error == EINVAL) {
			t->file_copy = 1;
			return hold_to_file(t, error);
		}
		return TX_FAULT;
	}
	return 0;
}
#endif

/* What arrives on the socket, into the file, until the region is full or the stream ends. */
static int
file_receive(struct tr_transit *t, int drain, int *error)
{
	int sock = t->point->fd;
	size_t passed = 0;

	if (t->held_len > 0 && hold_to_file(t, error) != 0)
		return TX_FAULT;
	for (;;) {
		size_t want = t->size - t->pos;
		ssize_t n;

		if (want == 0)
			return TX_EXHAUSTED;
		if (passed >= TR_FILE_PASS) {
			t->pass_bounds += 1;
			return TX_YIELD;
		}
		if (want > TR_FILE_HOLD)
			want = TR_FILE_HOLD;
#ifdef TR_SPLICE
		if (!t->file_copy) {
			if (want > t->pipe_room)
				want = t->pipe_room;
			n = splice(sock, NULL, t->pipe_wr, NULL, want, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
			if (n > 0) {
				t->piped = (size_t)n;
				passed += (size_t)n;
				if (pipe_to_file(t, error) != 0)
					return TX_FAULT;
				continue;
			}
			if (n < 0 && errno == EINVAL) {
				t->file_copy = 1;   /* a socket splice cannot read */
				continue;
			}
		} else
#endif
		{
			n = read(sock, t->hold, want);
			if (n > 0) {
				t->held_pos = 0;
				t->held_len = (size_t)n;
				passed += (size_t)n;
				if (hold_to_file(t, error) != 0)
					return TX_FAULT;
				if ((size_t)n < want && !drain)
					return TX_AGAIN;
				continue;
			}
		}
		if (n == 0)
			return TX_EOF;
		if (errno == EINTR)
			continue;
		if (errno == EAGAIN || errno == EWOULDBLOCK)
			return TX_AGAIN;
		*error = errno;
		return TX_ERROR;
	}
}

int
tr_file_transfer(struct tr_transit *t, int drain, int nodisk, int *error)
{
	if (t->polarity == TR_OUTPUT)
		return file_send(t, nodisk, error);
	return file_receive(t, drain, error);
}

/*
 * A memory request of an input transit takes the held bytes first, as many
 * as fit; returns 1 when the resource is full.
 */
int
tr_file_take_held(struct tr_transit *t)
{
	size_t n = t->held_len - t->held_pos;

	if (n > t->size - t->pos)
		n = t->size - t->pos;
	memcpy(t->buf + t->pos, t->hold + t->held_pos, n);
	t->pos += n;
	t->held_pos += n;
	if (t->held_pos == t->held_len) {
		t->held_pos = t->held_len = 0;
		free(t->hold);
		t->hold = NULL;
	}
	return t->pos == t->size;
}

/*
 * Check and take a file request's region (lock not held: it makes system
 * calls).  On success the transit's file fields are set for request_locked
 * to keep: *file the duplicate, and for input the pipe and the hold.
 */
int
tr_file_submit(struct tr_transit *t, int file, long long offset, unsigned long long count,
    struct tr_file_region *region)
{
	struct stat st;
	int flags, access;

	memset(region, 0, sizeof *region);
	region->file = region->pipe_rd = region->pipe_wr = -1;
	if ((t->type != TR_OCTETS && t->type != TR_DESCRIPTORS) || !t->point->is_socket)
		return -EINVAL;
	if (offset < 0 || count > (unsigned long long)SSIZE_MAX ||
	    (unsigned long long)offset > (unsigned long long)LLONG_MAX - count)
		return -EINVAL;
	if (file < 0 || fstat(file, &st) < 0 || (flags = fcntl(file, F_GETFL)) < 0)
		return -EBADF;
	if (!S_ISREG(st.st_mode))
		return -EINVAL;
	access = flags & O_ACCMODE;
	if (t->polarity == TR_OUTPUT ? access == O_WRONLY : access == O_RDONLY)
		return -EBADF;
	region->file = fcntl(file, F_DUPFD_CLOEXEC, 0);
	if (region->file < 0)
		return -errno;
	region->append = (flags & O_APPEND) != 0;
	if (t->polarity == TR_INPUT) {
#ifdef TR_SPLICE
		int fds[2];

		if (!region->append && pipe2(fds, O_CLOEXEC | O_NONBLOCK) == 0) {
			int room;

			/* The pipe never holds more than the hold has room for. */
			(void)fcntl(fds[1], F_SETPIPE_SZ, TR_FILE_HOLD);
			room = fcntl(fds[1], F_GETPIPE_SZ);
			region->pipe_rd = fds[0];
			region->pipe_wr = fds[1];
			region->pipe_room = room > 0 && room < TR_FILE_HOLD ? (size_t)room : TR_FILE_HOLD;
		}
#endif
		region->hold = malloc(TR_FILE_HOLD);
		if (region->hold == NULL) {
			tr_file_region_close(region);
			return -ENOMEM;
		}
	}
	return 0;
}

void
tr_file_region_close(struct tr_file_region *region)
{
	if (region->file >= 0)
		close(region->file);
	if (region->pipe_rd >= 0)
		close(region->pipe_rd);
	if (region->pipe_wr >= 0)
		close(region->pipe_wr);
	free(region->hold);
	region->file = region->pipe_rd = region->pipe_wr = -1;
	region->hold = NULL;
}

/* The region becomes the transit's resource; lock held. */
void
tr_file_install(struct tr_transit *t, struct tr_file_region *region, long long offset)
{
	t->file = region->file;
	t->file_offset = offset;
	t->file_append = region->append;
	t->file_copy = t->polarity == TR_INPUT && (region->append || region->pipe_rd < 0);
	t->pipe_rd = region->pipe_rd;
	t->pipe_wr = region->pipe_wr;
	t->pipe_room = region->pipe_room;
	t->piped = 0;
	if (t->hold == NULL) {
		t->hold = region->hold;
	} else if (t->held_len == 0) {
		free(t->hold);
		t->hold = region->hold;
	} else {
		/* Bytes held from before fill part of the old hold: keep it, and copy through it. */
		free(region->hold);
		t->file_copy = 1;
		if (t->pipe_rd >= 0) {
			close(t->pipe_rd);
			close(t->pipe_wr);
			t->pipe_rd = t->pipe_wr = -1;
		}
	}
	region->file = region->pipe_rd = region->pipe_wr = -1;
	region->hold = NULL;
}

/*
 * The request ends: the duplicate and the pipe close (it is empty: every
 * pass empties it), and the hold goes unless it holds bytes.  Lock held,
 * not IN_SYSCALL.
 */
void
tr_file_release(struct tr_transit *t)
{
	if (t->file >= 0) {
		close(t->file);
		t->file = -1;
	}
	if (t->pipe_rd >= 0) {
		close(t->pipe_rd);
		close(t->pipe_wr);
		t->pipe_rd = t->pipe_wr = -1;
	}
	if (t->hold != NULL && t->held_len == 0) {
		free(t->hold);
		t->hold = NULL;
	}
}

/* The transit goes: its held bytes with it. */
void
tr_file_discard(struct tr_transit *t)
{
	tr_file_release(t);
	free(t->hold);
	t->hold = NULL;
	t->held_len = t->held_pos = 0;
}
