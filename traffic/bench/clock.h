/*
 * clock.h: the load generators' two clocks, shared by every client
 * (echo_client.c, accept_client.c, file_client.c): wall time for rates
 * and latencies, and the client's own CPU, to say when the client rather
 * than the server was the bottleneck.
 */
#ifndef TRAFFIC_BENCH_CLOCK_H
#define TRAFFIC_BENCH_CLOCK_H

#include <stdint.h>
#include <sys/resource.h>
#include <time.h>

/* Monotonic wall time in nanoseconds. */
static inline uint64_t
now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* CPU seconds this process has used, user and system. */
static inline double
cpu_seconds(void)
{
	struct rusage ru;

	getrusage(RUSAGE_SELF, &ru);
	return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
	    (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

#endif
