/*
 * descriptors.c: passing descriptors over AF_UNIX stream sockets (SCM_RIGHTS).
 *
 * Three functions, each doing one thing, for the Descriptors transit:
 *
 * - tr_fds_send(): one sendmsg(2) with MSG_NOSIGNAL carrying up to
 *   TR_FDS_PER_MESSAGE descriptors with at least one data byte (a stream
 *   socket needs one: the descriptors ride on it).  When more descriptors
 *   remain than fit in this message, the message carries exactly one byte,
 *   so that every later message still has a byte to ride on.
 * - tr_fds_receive(): one recvmsg(2), with MSG_CMSG_CLOEXEC where defined
 *   (else FD_CLOEXEC is set on each descriptor at once); 0 is EOF.  It
 *   says whether the message came bare (no control data at all): only
 *   then does a short read prove the socket drained (see the core's
 *   transfer_descriptors).  Its
 *   control buffer has room for TR_FDS_RECEIVE_MAX descriptors, more than
 *   any caller's capacity, so that what a peer sends beyond the capacity
 *   reaches us (and is closed here) rather than being cut by the kernel.
 * - tr_fds_parse(): the control-message parser, a pure function (no system
 *   call, no allocation, no global state) so that it can be fuzzed: it
 *   walks the control buffer with explicit bounds checks (never trusting a
 *   cmsg_len), takes the descriptors of SOL_SOCKET/SCM_RIGHTS messages
 *   whose length holds, ignores every other message (SCM_CREDENTIALS...),
 *   delivers up to the caller's capacity and lists every other descriptor
 *   as rejected, for the caller to close.
 *
 * Nothing here closes a descriptor the caller still owns; rejected
 * descriptors are new ones the kernel just installed in this process.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/types.h>

#include "internal.h"

#ifndef MSG_NOSIGNAL
#define MSG_NOSIGNAL 0   /* the BSDs: SO_NOSIGPIPE, or SIGPIPE blocked by the caller */
#endif

ssize_t
tr_fds_send(int sock, const char *data, size_t size, const int *fds, size_t nfds, size_t *attached)
{
	union {
		struct cmsghdr align;
		char space[CMSG_SPACE(sizeof(int) * TR_FDS_PER_MESSAGE)];
	} control;
	struct msghdr msg;
	struct iovec iov;
	size_t k = nfds < TR_FDS_PER_MESSAGE ? nfds : TR_FDS_PER_MESSAGE;
	ssize_t n;

	*attached = 0;
	if (size == 0)
		return -EINVAL;
	if (k > 0 && nfds > k)
		size = 1;   /* the rest of the descriptors need bytes of their own */
	memset(&msg, 0, sizeof msg);
	iov.iov_base = (void *)data;
	iov.iov_len = size;
	msg.msg_iov = &iov;
	msg.msg_iovlen = 1;
	if (k > 0) {
		struct cmsghdr *c;

		memset(&control, 0, sizeof control);
		msg.msg_control = control.space;
		msg.msg_controllen = CMSG_SPACE(sizeof(int) * k);
		c = CMSG_FIRSTHDR(&msg);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int) * k);
		memcpy(CMSG_DATA(c), fds, sizeof(int) * k);
	}
	n = sendmsg(sock, &msg, MSG_NOSIGNAL);
	if (n < 0)
		return -errno;
	if (n > 0)
		*attached = k;   /* the descriptors went with the first byte */
	return n;
}

int
tr_fds_parse(const void *control, size_t controllen, int *fds, size_t cap,
    int *rejected, size_t rejected_cap, struct tr_fds_parsed *out)
{
	const unsigned char *base = control;
	const size_t header = CMSG_LEN(0);
	size_t off = 0;

	memset(out, 0, sizeof *out);
	while (controllen - off >= sizeof(struct cmsghdr) && controllen - off >= header) {
		struct cmsghdr h;
		size_t len, avail = controllen - off, n, i, step;

		memcpy(&h, base + off, sizeof h);   /* the buffer need not be aligned */
		if ((size_t)h.cmsg_len < header) {
			out->malformed = 1;
			break;
		}
		len = (size_t)h.cmsg_len;
		if (len > avail) {
			/* Cut by the end of the buffer: only what is inside it counts. */
			out->truncated = 1;
			len = avail;
		}
		if (h.cmsg_level == SOL_SOCKET && h.cmsg_type == SCM_RIGHTS) {
			n = (len - header) / sizeof(int);
			for (i = 0; i < n; ++i) {
				int fd;

				memcpy(&fd, base + off + header + i * sizeof(int), sizeof fd);
				if (fd < 0)
					continue;
				if (out->delivered < cap)
					fds[out->delivered++] = fd;
				else if (out->rejected < rejected_cap)
					rejected[out->rejected++] = fd;
				else
					out->lost += 1;   /* no room even to close it: the caller's bug */
			}
		}
		if (len < (size_t)h.cmsg_len)
			break;
		step = CMSG_SPACE(len - header);
		if (step > avail)
			break;
		off += step;
	}
	return 0;
}

ssize_t
tr_fds_receive(int sock, char *data, size_t size, int *fds, size_t cap, size_t *got, int *truncated,
    int *bare)
{
	union {
		struct cmsghdr align;
		char space[CMSG_SPACE(sizeof(int) * TR_FDS_RECEIVE_MAX)];
	} control;
	int rejected[TR_FDS_RECEIVE_MAX + 1];
	struct tr_fds_parsed parsed;
	struct msghdr msg;
	struct iovec iov;
	size_t i;
	ssize_t n;
	int flags = 0;

	*got = 0;
	*truncated = 0;
	*bare = 0;
#ifdef MSG_CMSG_CLOEXEC
	flags |= MSG_CMSG_CLOEXEC;
#endif
	memset(&msg, 0, sizeof msg);
	iov.iov_base = data;
	iov.iov_len = size;
	msg.msg_iov = &iov;
	msg.msg_iovlen = 1;
	msg.msg_control = control.space;
	msg.msg_controllen = sizeof control.space;
	n = recvmsg(sock, &msg, flags);
	if (n < 0)
		return -errno;
	tr_fds_parse(control.space, msg.msg_controllen, fds, n > 0 ? cap : 0,
	    rejected, sizeof rejected / sizeof rejected[0], &parsed);
#ifndef MSG_CMSG_CLOEXEC
	for (i = 0; i < parsed.delivered; ++i)
		fcntl(fds[i], F_SETFD, FD_CLOEXEC);
#endif
	/* Beyond the capacity, or (impossible on a stream) riding on no byte. */
	for (i = 0; i < parsed.rejected; ++i)
		close(rejected[i]);
	*got = parsed.delivered;
	*truncated = (msg.msg_flags & MSG_CTRUNC) || parsed.truncated || parsed.malformed;
	*bare = msg.msg_controllen == 0 && !(msg.msg_flags & MSG_CTRUNC);
	return n;
}
