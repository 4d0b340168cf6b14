/*
 * echo_client.c: the one load generator every server in the benchmark faces.
 *
 * N connections, each in ping-pong: send a message of S bytes, wait until
 * all S come back, record the round trip's latency, repeat.  One thread,
 * epoll, level-triggered (simple and exact for one outstanding message per
 * connection).  Prints "start" on its own line when the warm-up ends (the
 * driver reads the server's CPU time then), runs for D seconds, then prints
 * one line of JSON with the round trips, latency percentiles and its own CPU
 * use over the measured window, so the benchmark can tell a client-bound run.
 * Then it ends every connection cleanly (see finish()).
 *
 * usage: echo_client HOST PORT CONNECTIONS SECONDS SIZE [WARMUP]
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"

#define BUCKETS 200000  /* 1 us each: up to 200 ms */

struct conn {
	int fd;
	size_t sent, received;
	uint64_t started;
};

static double
percentile(const uint64_t *hist, uint64_t total, double p)
{
	uint64_t want = (uint64_t)(p * (double)total), seen = 0;
	int i;

	if (total == 0)
		return 0.0;

	for (i = 0; i < BUCKETS; ++i) {
		seen += hist[i];
		if (seen > want)
			return (double)i;
	}
	return (double)BUCKETS;
}

/*
 * End every connection the way a polite peer does: half-close, take the
 * echo still in flight, wait for the server's EOF, then close.  Closing with
 * an echo unread would send a reset instead, and a server whose handler lets
 * BrokenResourceError out (trio's serve_tcp does, by design) would die with
 * it, racing the driver's last look at its threads.
 */
static void
finish(int ep, struct conn *conns, int n, char *sink, size_t size)
{
	struct epoll_event events[1024];
	uint64_t deadline = now_ns() + 5000000000u;   /* a hung server: give up */
	int i, open = n;

	for (i = 0; i < n; ++i)
		shutdown(conns[i].fd, SHUT_WR);
	while (open > 0 && now_ns() < deadline) {
		int k, got = epoll_wait(ep, events, 1024, 100);

		for (k = 0; k < got; ++k) {
			struct conn *c = events[k].data.ptr;

			if (recv(c->fd, sink, size, 0) > 0)
				continue;
			close(c->fd);   /* also leaves the epoll set */
			c->fd = -1;
			open -= 1;
		}
	}
	for (i = 0; i < n; ++i)
		if (conns[i].fd >= 0)
			close(conns[i].fd);
}

int
main(int argc, char **argv)
{
	struct sockaddr_in addr = {.sin_family = AF_INET};
	struct epoll_event ev, events[1024];
	uint64_t *hist, total = 0, start, deadline, measure_from;
	struct conn *conns;
	char *message, *sink;
	int n, size, i, ep, one = 1;
	double seconds, warmup = 0.5, cpu_from = 0.0;
	int measuring = 0;

	if (argc < 6) {
		fprintf(stderr, "usage: %s HOST PORT CONNECTIONS SECONDS SIZE [WARMUP]\n", argv[0]);
		return 2;
	}
	inet_pton(AF_INET, argv[1], &addr.sin_addr);
	addr.sin_port = htons((uint16_t)atoi(argv[2]));
	n = atoi(argv[3]);
	seconds = atof(argv[4]);
	size = atoi(argv[5]);
	if (argc > 6)
		warmup = atof(argv[6]);

	conns = calloc((size_t)n, sizeof *conns);
	hist = calloc(BUCKETS, sizeof *hist);
	message = malloc((size_t)size);
	sink = malloc((size_t)size);
	memset(message, 'x', (size_t)size);
	ep = epoll_create1(0);

	for (i = 0; i < n; ++i) {
		int fd = socket(AF_INET, SOCK_STREAM, 0);

		if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
			perror("connect");
			return 1;
		}
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
		conns[i].fd = fd;
		ev.events = EPOLLIN;
		ev.data.ptr = &conns[i];
		epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
	}

	start = now_ns();
	measure_from = start + (uint64_t)(warmup * 1e9);
	deadline = measure_from + (uint64_t)(seconds * 1e9);
	for (i = 0; i < n; ++i) {
		conns[i].started = now_ns();
		if (send(conns[i].fd, message, (size_t)size, 0) != size) {
			perror("send");
			return 1;
		}
	}
	for (;;) {
		int k, got = epoll_wait(ep, events, 1024, 1000);
		uint64_t t = now_ns();

		if (t >= deadline)
			break;
		if (!measuring && t >= measure_from) {
			measuring = 1;
			cpu_from = cpu_seconds();
			printf("start\n");
			fflush(stdout);
		}
		for (k = 0; k < got; ++k) {
			struct conn *c = events[k].data.ptr;
			ssize_t r = recv(c->fd, sink, (size_t)size - c->received, 0);

			if (r <= 0) {
				fprintf(stderr, "connection lost: %s\n", r == 0 ? "EOF" : strerror(errno));
				return 1;
			}
			c->received += (size_t)r;
			if (c->received < (size_t)size)
				continue;
			if (c->started >= measure_from) {
				uint64_t us = (t - c->started) / 1000;

				hist[us < BUCKETS ? us : BUCKETS - 1] += 1;
				total += 1;
			}
			c->received = 0;
			c->started = t;
			if (send(c->fd, message, (size_t)size, 0) != size) {
				perror("send");
				return 1;
			}
		}
	}
	if (!measuring) {
		/* Never got past the warm-up with an event: still say "start". */
		cpu_from = cpu_seconds();
		printf("start\n");
	}
	printf("{\"round_trips\": %llu, \"seconds\": %.3f, \"p50_us\": %.0f, \"p99_us\": %.0f, "
	    "\"client_cpu\": %.3f}\n",
	    (unsigned long long)total, seconds, percentile(hist, total, 0.5),
	    percentile(hist, total, 0.99), cpu_seconds() - cpu_from);
	fflush(stdout);
	finish(ep, conns, n, sink, (size_t)size);
	return 0;
}
