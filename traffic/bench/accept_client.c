/*
 * accept_client.c: the load generator of the accept workload.
 *
 * Keeps K connection attempts in flight (non-blocking connect), and counts a
 * connection once the server has accepted and closed it: the client sees EOF.
 * Then it closes its end and opens a new one.  Waiting for the server's close
 * (rather than connecting and closing blindly) counts what the server did,
 * and keeps the listen queue from overflowing, which would drop SYNs and
 * stall the run on one-second retransmissions.  The server closes first, so
 * the TIME_WAIT states are the server side's; Linux reuses them for new
 * loopback connections (net.ipv4.tcp_tw_reuse defaults to 2: loopback only).
 *
 * Prints "start" when the warm-up ends, then after D seconds one line of JSON
 * with the connections counted in the window and its own CPU use there.
 *
 * usage: accept_client HOST PORT IN_FLIGHT SECONDS [WARMUP]
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"

static struct sockaddr_in addr = {.sin_family = AF_INET};
static int ep;
static uint64_t failures;

/* Start one connection attempt; watched for EOF (or error) from the server. */
static void
open_one(void)
{
	struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP};
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);

	if (fd < 0) {
		perror("socket");
		exit(1);
	}
	if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0 && errno != EINPROGRESS) {
		perror("connect");
		exit(1);
	}
	ev.data.fd = fd;
	if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
		perror("epoll_ctl");
		exit(1);
	}
}

int
main(int argc, char **argv)
{
	struct epoll_event events[1024];
	uint64_t total = 0, start, deadline, measure_from;
	double seconds, warmup = 0.5, cpu_from = 0.0;
	int in_flight, i, measuring = 0;
	char sink[64];

	if (argc < 5) {
		fprintf(stderr, "usage: %s HOST PORT IN_FLIGHT SECONDS [WARMUP]\n", argv[0]);
		return 2;
	}
	inet_pton(AF_INET, argv[1], &addr.sin_addr);
	addr.sin_port = htons((uint16_t)atoi(argv[2]));
	in_flight = atoi(argv[3]);
	seconds = atof(argv[4]);
	if (argc > 5)
		warmup = atof(argv[5]);
	ep = epoll_create1(0);

	start = now_ns();
	measure_from = start + (uint64_t)(warmup * 1e9);
	deadline = measure_from + (uint64_t)(seconds * 1e9);
	for (i = 0; i < in_flight; ++i)
		open_one();
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
			int fd = events[k].data.fd;
			ssize_t r = recv(fd, sink, sizeof sink, 0);

			if (r > 0)
				continue;  /* the server is not supposed to send; ignore */
			if (r < 0 && errno == EAGAIN)
				continue;
			if (r == 0 || errno == ECONNRESET) {
				if (measuring)
					total += 1;
			} else {
				failures += 1;  /* refused, timed out: not an accepted connection */
			}
			close(fd);  /* also removes it from the epoll set */
			open_one();
		}
	}
	if (!measuring) {
		cpu_from = cpu_seconds();
		printf("start\n");
	}
	printf("{\"connections\": %llu, \"seconds\": %.3f, \"failures\": %llu, \"client_cpu\": %.3f}\n",
	    (unsigned long long)total, seconds, (unsigned long long)failures,
	    cpu_seconds() - cpu_from);
	fflush(stdout);
	return 0;
}
