/*
 * idle_client.c: holds idle connections for the idle workload.
 *
 * Opens WARM connections, sends one byte on each and waits for its echo, so
 * the server has a handler parked in a receive per connection; prints "warm"
 * and waits for a line on stdin (the driver reads the server's RSS then).
 * Then does the same for N more connections in batches (so the listen queue
 * never overflows), prints one line of JSON, and waits for a line or EOF on
 * stdin before closing everything.  The difference between the two RSS
 * readings over N is the cost of one idle connection, without the one-time
 * costs (lazy imports, first threads, first pools) that the warm set paid.
 *
 * usage: idle_client HOST PORT N [WARM] [BATCH]
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static struct sockaddr_in addr = {.sin_family = AF_INET};

static int
open_one(void)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);

	if (fd < 0) {
		perror("socket");
		exit(1);
	}
	if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
		perror("connect");
		exit(1);
	}
	return fd;
}

/* Open fds[from..to), send a byte on each, wait for every echo. */
static void
open_batch(int *fds, int from, int to)
{
	int i;
	char byte = 'x';

	for (i = from; i < to; ++i) {
		fds[i] = open_one();
		if (send(fds[i], &byte, 1, 0) != 1) {
			perror("send");
			exit(1);
		}
	}
	for (i = from; i < to; ++i) {
		if (recv(fds[i], &byte, 1, 0) != 1) {
			fprintf(stderr, "echo %d: %s\n", i, strerror(errno));
			exit(1);
		}
	}
}

static void
wait_line(void)
{
	char line[64];

	if (fgets(line, sizeof line, stdin) == NULL)
		return;
}

int
main(int argc, char **argv)
{
	int n, warm = 100, batch = 100, i, *fds;
	struct timespec t0, t1;

	if (argc < 4) {
		fprintf(stderr, "usage: %s HOST PORT N [WARM] [BATCH]\n", argv[0]);
		return 2;
	}
	inet_pton(AF_INET, argv[1], &addr.sin_addr);
	addr.sin_port = htons((uint16_t)atoi(argv[2]));
	n = atoi(argv[3]);
	if (argc > 4)
		warm = atoi(argv[4]);
	if (argc > 5)
		batch = atoi(argv[5]);
	fds = calloc((size_t)(n + warm), sizeof *fds);

	open_batch(fds, 0, warm);
	printf("warm\n");
	fflush(stdout);
	wait_line();
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (i = warm; i < warm + n; i += batch)
		open_batch(fds, i, i + batch < warm + n ? i + batch : warm + n);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	printf("{\"connections\": %d, \"open_seconds\": %.3f}\n", n,
	    (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9);
	fflush(stdout);
	wait_line();
	for (i = 0; i < n + warm; ++i)
		close(fds[i]);
	return 0;
}
