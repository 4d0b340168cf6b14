/*
 * epoll_server.c: the reference row, a C echo server on edge-triggered
 * epoll, one thread.  It bounds what any Python server here can reach on the
 * same client and machine (the "C epoll, edge-triggered" row of docs/benchmark.rst).
 *
 * Edge-triggered: after each event the socket is drained to EAGAIN (accept
 * loop, read loop), since no new edge comes while data is left.  Echo writes
 * go straight back from one shared buffer; only a short write copies the
 * rest into a buffer of the connection's own (so an idle connection costs a
 * few dozen bytes) and waits for EPOLLOUT.
 * Prints the port on its first line, like servers.py, and serves until
 * killed.  With --accept it closes every connection as soon as it accepts it.
 *
 * usage: epoll_server [--accept]
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUFFER 65536

struct conn {
	int fd;
	size_t pending, offset;  /* bytes of buf still to write back */
	char *buf;               /* NULL unless a write was short */
};

static char scratch[BUFFER];

static void
drop(struct conn *c)
{
	close(c->fd);
	free(c->buf);
	free(c);
}

/* Write from data; keep what the socket does not take.  0 when all is
 * written, 1 to wait for EPOLLOUT, -1 on error. */
static int
write_out(struct conn *c, const char *data, size_t size)
{
	while (size) {
		ssize_t w = send(c->fd, data, size, MSG_NOSIGNAL);

		if (w < 0 && errno != EAGAIN)
			return -1;
		if (w < 0) {
			if (c->buf == NULL)
				c->buf = malloc(BUFFER);
			memmove(c->buf, data, size);
			c->offset = 0;
			c->pending = size;
			return 1;
		}
		data += w;
		size -= (size_t)w;
	}
	c->pending = 0;
	free(c->buf);
	c->buf = NULL;
	return 0;
}

static int
flush(struct conn *c)
{
	return c->pending ? write_out(c, c->buf + c->offset, c->pending) : 0;
}

static void
serve(struct conn *c)
{
	int state = flush(c);

	if (state != 0) {
		if (state < 0)
			drop(c);
		return;
	}
	for (;;) {
		ssize_t r = recv(c->fd, scratch, sizeof scratch, 0);

		if (r == 0 || (r < 0 && errno != EAGAIN)) {
			drop(c);
			return;
		}
		if (r < 0)
			return;
		state = write_out(c, scratch, (size_t)r);
		if (state < 0)
			drop(c);
		if (state != 0)
			return;
	}
}

int
main(int argc, char **argv)
{
	struct sockaddr_in addr = {.sin_family = AF_INET};
	struct epoll_event ev, events[256];
	socklen_t length = sizeof addr;
	int listener, ep, one = 1, accept_only = argc > 1 && strcmp(argv[1], "--accept") == 0;

	inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
	listener = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
	setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	if (bind(listener, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(listener, 4096) < 0 ||
	    getsockname(listener, (struct sockaddr *)&addr, &length) < 0) {
		perror("listen");
		return 1;
	}
	printf("%d\n", ntohs(addr.sin_port));
	fflush(stdout);
	ep = epoll_create1(0);
	ev.events = EPOLLIN | EPOLLET;
	ev.data.ptr = NULL;  /* NULL: the listener */
	epoll_ctl(ep, EPOLL_CTL_ADD, listener, &ev);
	for (;;) {
		int k, got = epoll_wait(ep, events, 256, -1);

		for (k = 0; k < got; ++k) {
			struct conn *c = events[k].data.ptr;

			if (c != NULL) {
				serve(c);
				continue;
			}
			for (;;) {
				int fd = accept4(listener, NULL, NULL, SOCK_NONBLOCK);

				if (fd < 0)
					break;  /* EAGAIN, or EMFILE and friends: next edge */
				if (accept_only) {
					close(fd);
					continue;
				}
				setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
				c = calloc(1, sizeof *c);
				c->fd = fd;
				ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
				ev.data.ptr = c;
				epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
			}
		}
	}
}
