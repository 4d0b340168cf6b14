/*
 * http_responder.c: the fixed peer of the http-client workload, a small
 * HTTP/1.1 server on edge-triggered epoll, one thread.  Every row of that
 * workload (httpx on each backend, aiohttp) talks to this same program, which
 * costs far less per request than any Python client, so the client sets the
 * pace and is the process measured.
 *
 * Every request gets 200 with a fixed body: DOWNLOAD_BYTES for a request
 * whose path starts with /download, else 1,024 bytes.  Byte i of either body
 * is i % 251 (a prime, so no power-of-two chunk of a download repeats its
 * neighbour: a reordered or repeated chunk changes the body's checksum).
 * Connections are kept alive (HTTP/1.1's default) until the client closes.
 * A request is parsed just enough: up to the blank line after the headers,
 * the path's start, and a Content-Length body, which is read and dropped.
 * Each whole response is one static buffer (headers and body together), so
 * a connection's output is a pointer and a length; its next request is read
 * only once the response before it is all written.
 *
 * usage: http_responder DOWNLOAD_BYTES
 * Prints the port on its first line, like servers.py, and serves on
 * 127.0.0.1 until killed.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define SMALL_BYTES 1024
#define INPUT 16384      /* a request's headers must fit */
#define PERIOD 251       /* byte i of a body is i % PERIOD */

struct response {
	char *data;
	size_t size;
};

struct conn {
	int fd;
	const char *out;         /* the rest of the response being written */
	size_t out_size;
	size_t skip;             /* request body bytes still to drop */
	size_t in_size;          /* bytes held in in */
	char in[INPUT];
};

static struct response small, download;

/* Headers then `bytes` of the pattern, in one buffer. */
static struct response
make_response(size_t bytes)
{
	struct response r;
	char head[160];
	int n = snprintf(head, sizeof head,
	    "HTTP/1.1 200 OK\r\n"
	    "Content-Type: application/octet-stream\r\n"
	    "Content-Length: %zu\r\n"
	    "\r\n",
	    bytes);
	size_t i;

	r.size = (size_t)n + bytes;
	r.data = malloc(r.size);
	if (r.data == NULL) {
		perror("malloc");
		exit(1);
	}
	memcpy(r.data, head, (size_t)n);
	for (i = 0; i < bytes; ++i)
		r.data[(size_t)n + i] = (char)(i % PERIOD);
	return r;
}

static void
drop(struct conn *c)
{
	close(c->fd);
	free(c);
}

/* The value of the Content-Length header among the headers in [p, end), or 0. */
static size_t
content_length(const char *p, const char *end)
{
	static const char name[] = "\r\ncontent-length:";
	size_t k, length = sizeof name - 1;

	for (; p + length <= end; ++p) {
		for (k = 0; k < length && tolower((unsigned char)p[k]) == name[k]; ++k)
			;
		if (k == length)
			return (size_t)strtoull(p + length, NULL, 10);
	}
	return 0;
}

/* Take one request off the front of c->in if it holds the whole head: set
 * c->out to its response.  0 when the head is not all there yet. */
static int
take_request(struct conn *c)
{
	const char *end = memmem(c->in, c->in_size, "\r\n\r\n", 4);
	const char *path = memchr(c->in, ' ', c->in_size);
	size_t used;
	const struct response *r;

	if (end == NULL)
		return 0;
	end += 4;
	r = path != NULL && path < end && end - path > 9 && memcmp(path + 1, "/download", 9) == 0
	    ? &download
	    : &small;
	c->skip = content_length(c->in, end);
	used = (size_t)(end - c->in);
	memmove(c->in, end, c->in_size - used);
	c->in_size -= used;
	c->out = r->data;
	c->out_size = r->size;
	return 1;
}

/* Write, parse and read until the socket says EAGAIN either way (the next
 * edge brings us back) or the connection ends. */
static void
serve(struct conn *c)
{
	for (;;) {
		ssize_t n;

		if (c->out_size) {
			n = send(c->fd, c->out, c->out_size, MSG_NOSIGNAL);
			if (n < 0) {
				if (errno != EAGAIN)
					drop(c);
				return;
			}
			c->out += n;
			c->out_size -= (size_t)n;
			continue;
		}
		if (c->skip && c->in_size) {
			size_t k = c->skip < c->in_size ? c->skip : c->in_size;

			memmove(c->in, c->in + k, c->in_size - k);
			c->in_size -= k;
			c->skip -= k;
		}
		if (!c->skip && take_request(c))
			continue;
		if (c->in_size == sizeof c->in) {  /* headers too long: give up on it */
			drop(c);
			return;
		}
		n = recv(c->fd, c->in + c->in_size, sizeof c->in - c->in_size, 0);
		if (n == 0 || (n < 0 && errno != EAGAIN)) {
			drop(c);
			return;
		}
		if (n < 0)
			return;
		c->in_size += (size_t)n;
	}
}

int
main(int argc, char **argv)
{
	struct sockaddr_in addr = {.sin_family = AF_INET};
	struct epoll_event ev, events[256];
	socklen_t length = sizeof addr;
	int listener, ep, one = 1;
	char *rest;
	unsigned long long bytes;

	if (argc != 2 || (bytes = strtoull(argv[1], &rest, 10), *rest != '\0')) {
		fprintf(stderr, "usage: http_responder DOWNLOAD_BYTES\n");
		return 2;
	}
	small = make_response(SMALL_BYTES);
	download = make_response((size_t)bytes);
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
				setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
				c = malloc(sizeof *c);
				if (c == NULL) {
					close(fd);
					continue;
				}
				c->fd = fd;
				c->out = NULL;
				c->out_size = c->skip = c->in_size = 0;
				ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
				ev.data.ptr = c;
				epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
			}
		}
	}
}
