/*
 * datagrams.c: the Datagrams transit's records and their system calls.
 *
 * A resource is a run of records (traffic.h: a tr_datagram header, then
 * capacity bytes of payload, padded to TR_DG_ALIGN).  The owner may write
 * into the resource while the core transfers with it (that is its own
 * race, but it must never make the core read or write out of bounds), so
 * every header is copied out with memcpy, checked against the resource's
 * size, and only then used; the kernel writes the payload and the address
 * into the bounds that check gave.  memcpy also keeps us clear of
 * alignment: nothing says the owner's buffer is aligned.
 *
 * One call moves one batch of up to TR_DG_BATCH records: recvmmsg(2) and
 * sendmmsg(2) where the kernel has them (Linux, FreeBSD, NetBSD: they come
 * with MSG_WAITFORONE), else one recvmsg(2)/sendmsg(2) per call.  Errors
 * are returned as they are; transfer.c decides which end the transit and
 * which are a fault of one datagram.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stddef.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/uio.h>

#include "internal.h"

#ifndef MSG_NOSIGNAL
#define MSG_NOSIGNAL 0   /* the BSDs: datagram sockets raise no SIGPIPE */
#endif

#if defined(MSG_WAITFORONE)
#define HAVE_MMSG 1
#endif

#define HEADER sizeof(tr_datagram)

/* A record's whole length: its header, its payload and the padding. */
static size_t
record_length(unsigned int capacity)
{
	return HEADER + (((size_t)capacity + TR_DG_ALIGN - 1) & ~(size_t)(TR_DG_ALIGN - 1));
}

/*
 * Copy the header of the record at off into *h if the whole record lies
 * within size and its fields hold (for output: length <= capacity).
 */
static int
record_at(const char *buf, size_t size, size_t off, int polarity, tr_datagram *h)
{
	if (off > size || size - off < HEADER)
		return 0;
	memcpy(h, buf + off, HEADER);
	if (record_length(h->capacity) > size - off)
		return 0;
	if (polarity == TR_OUTPUT && (h->length > h->capacity || h->addrlen > TR_DG_ADDRESS))
		return 0;
	return 1;
}

long
tr_datagrams_check(const void *resource, size_t size, int polarity)
{
	const char *buf = resource;
	size_t off = 0;
	long count = 0;
	tr_datagram h;

	if (polarity != TR_INPUT && polarity != TR_OUTPUT)
		return -EINVAL;
	if (size > 0 && buf == NULL)
		return -EINVAL;
	while (off < size) {
		if (!record_at(buf, size, off, polarity, &h))
			return -EINVAL;
		off += record_length(h.capacity);
		++count;
	}
	return count;
}

/*
 * Gather up to TR_DG_BATCH records from off into msgs/iov; offs gets each
 * record's offset.  Returns how many.
 */
static int
gather(char *buf, size_t size, size_t off, int polarity, struct msghdr *msgs,
    struct iovec *iov, size_t *offs, tr_datagram *heads)
{
	int k;

	for (k = 0; k < TR_DG_BATCH; ++k) {
		tr_datagram *h = &heads[k];
		char *record = buf + off;

		if (!record_at(buf, size, off, polarity, h))
			break;
		offs[k] = off;
		iov[k].iov_base = record + HEADER;
		iov[k].iov_len = polarity == TR_INPUT ? h->capacity : h->length;
		memset(&msgs[k], 0, sizeof msgs[k]);
		msgs[k].msg_iov = &iov[k];
		msgs[k].msg_iovlen = 1;
		if (polarity == TR_INPUT) {
			msgs[k].msg_name = record + offsetof(tr_datagram, address);
			msgs[k].msg_namelen = TR_DG_ADDRESS;
		} else if (h->addrlen > 0) {
			msgs[k].msg_name = record + offsetof(tr_datagram, address);
			msgs[k].msg_namelen = h->addrlen;
		}
		off += record_length(h->capacity);
	}
	return k;
}

/* Write back what the kernel said of a received datagram. */
static void
settle_received(char *record, const tr_datagram *h, size_t length, const struct msghdr *msg)
{
	tr_datagram out = *h;

	out.length = length > 0xffffffffu ? 0xffffffffu : (unsigned int)length;
	out.flags = ((msg->msg_flags & MSG_TRUNC) || length > h->capacity) ? TR_DG_TRUNCATED : 0;
	out.addrlen = msg->msg_namelen > TR_DG_ADDRESS ? TR_DG_ADDRESS : msg->msg_namelen;
	memcpy(record, &out, offsetof(tr_datagram, address));
}

long
tr_dg_receive(int sock, char *buf, size_t size, size_t *pos)
{
	struct msghdr msgs[TR_DG_BATCH];
	struct iovec iov[TR_DG_BATCH];
	size_t offs[TR_DG_BATCH];
	tr_datagram heads[TR_DG_BATCH];
	int k, n, i;

	k = gather(buf, size, *pos, TR_INPUT, msgs, iov, offs, heads);
	if (k == 0)
		return *pos < size ? -EINVAL : 0;
#ifdef HAVE_MMSG
	{
		struct mmsghdr vec[TR_DG_BATCH];
		int flags = 0;

#ifdef __linux__
		flags |= MSG_TRUNC;   /* Linux: msg_len is the datagram's real length */
#endif
		for (i = 0; i < k; ++i) {
			vec[i].msg_hdr = msgs[i];
			vec[i].msg_len = 0;
		}
		n = recvmmsg(sock, vec, (unsigned int)k, flags, NULL);
		if (n < 0)
			return -errno;
		for (i = 0; i < n; ++i)
			settle_received(buf + offs[i], &heads[i], vec[i].msg_len, &vec[i].msg_hdr);
	}
#else
	{
		ssize_t got = recvmsg(sock, &msgs[0], 0);

		if (got < 0)
			return -errno;
		settle_received(buf + offs[0], &heads[0], (size_t)got, &msgs[0]);
		n = 1;
	}
#endif
	*pos = offs[n - 1] + record_length(heads[n - 1].capacity);
	return n;
}

long
tr_dg_send(int sock, const char *buf, size_t size, size_t *pos)
{
	struct msghdr msgs[TR_DG_BATCH];
	struct iovec iov[TR_DG_BATCH];
	size_t offs[TR_DG_BATCH];
	tr_datagram heads[TR_DG_BATCH];
	int k, n;

	/* The kernel only reads through these pointers; gather() is shared with receive. */
	k = gather((char *)buf, size, *pos, TR_OUTPUT, msgs, iov, offs, heads);
	if (k == 0)
		return *pos < size ? -EINVAL : 0;
#ifdef HAVE_MMSG
	{
		struct mmsghdr vec[TR_DG_BATCH];
		int i;

		for (i = 0; i < k; ++i) {
			vec[i].msg_hdr = msgs[i];
			vec[i].msg_len = 0;
		}
		n = sendmmsg(sock, vec, (unsigned int)k, MSG_NOSIGNAL);
		if (n < 0)
			return -errno;
	}
#else
	if (sendmsg(sock, &msgs[0], MSG_NOSIGNAL) < 0)
		return -errno;
	n = 1;
#endif
	if (n == 0)
		return -EAGAIN;
	*pos = offs[n - 1] + record_length(heads[n - 1].capacity);
	return n;
}
