/*
 * file_client.c: the load generator of the file workload, and the maker and
 * checker of its files.
 *
 * Every byte it sends or expects follows one pattern: the 8-byte
 * little-endian word at offset 8*i is (i + 1) * 0x9E3779B97F4A7C15, so each
 * position in a file or a connection has a known value and a byte lost,
 * repeated, reordered or corrupted anywhere is caught, at the cost of one
 * multiply and compare per word (no table, no second copy in memory).
 *
 *   file_client make PATH BYTES
 *       write BYTES of the pattern to PATH (the download file).
 *   file_client verify PATH BYTES
 *       exit 0 if PATH holds exactly BYTES of the pattern (an uploaded file).
 *   file_client download ADDRESS CONNECTIONS BYTES
 *       open CONNECTIONS connections, print "ready", wait for a line on
 *       stdin (the driver reads the server's CPU time then), send one byte
 *       on each connection (the request), then read each until EOF, checking
 *       every byte against the pattern from offset 0; each must bring exactly
 *       BYTES.
 *   file_client upload ADDRESS CONNECTIONS BYTES
 *       the same start, then send BYTES of the pattern on each connection,
 *       half-close it, and wait for the server's EOF (it closes once the
 *       file is written).
 *
 * ADDRESS is HOST:PORT for TCP, or a path (starting with "/") for AF_UNIX.
 * One thread, epoll, non-blocking sockets.  After the transfer it prints one
 * line of JSON: the bytes moved, the seconds from the request to the last
 * EOF, and its own CPU use over the same window.  Any error, short or long
 * connection, or wrong byte is reported on stderr with exit status 1.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"

#define GOLDEN 0x9E3779B97F4A7C15ull
#define BUFFER (1024 * 1024)   /* bytes one receive asks for: fewer calls, still in L2 */
#define CHUNK (1024 * 1024)   /* bytes one write of make asks for */

struct conn {
	int fd;
	uint64_t done;   /* bytes received (download) or sent (upload) */
	int sending;     /* upload: still sending */
};

static uint64_t
word_at(uint64_t i)
{
	return (i + 1) * GOLDEN;
}

static unsigned char
byte_at(uint64_t offset)
{
	return (unsigned char)(word_at(offset >> 3) >> (8 * (offset & 7)));
}

/* Fill p with n bytes of the pattern starting at offset (a multiple of 8). */
static void
fill(unsigned char *p, size_t n, uint64_t offset)
{
	uint64_t i = offset >> 3;
	size_t k;

	for (; n >= 8; p += 8, n -= 8, ++i) {
		uint64_t w = htole64(word_at(i));

		memcpy(p, &w, 8);
	}
	for (k = 0; k < n; ++k)
		p[k] = byte_at((i << 3) + k);
}

/*
 * The offset of the first of n bytes at p that differs from the pattern at
 * offset, or UINT64_MAX if all match.
 */
static uint64_t
mismatch(const unsigned char *p, size_t n, uint64_t offset)
{
	uint64_t i, bad = 0;
	size_t k, words;

	for (; n > 0 && (offset & 7) != 0; ++p, --n, ++offset)
		if (*p != byte_at(offset))
			return offset;
	i = offset >> 3;
	words = n / 8;
	/* word_at(i + k) by addition, four words at a time: no multiply, no chain. */
	{
		uint64_t e0 = word_at(i), e1 = word_at(i + 1), e2 = word_at(i + 2),
		    e3 = word_at(i + 3), b0 = 0, b1 = 0, b2 = 0, b3 = 0, w[4];
		const uint64_t step = 4 * GOLDEN;

		for (k = 0; k + 4 <= words; k += 4) {
			memcpy(w, p + 8 * k, sizeof w);
			b0 |= le64toh(w[0]) ^ e0;
			b1 |= le64toh(w[1]) ^ e1;
			b2 |= le64toh(w[2]) ^ e2;
			b3 |= le64toh(w[3]) ^ e3;
			e0 += step;
			e1 += step;
			e2 += step;
			e3 += step;
		}
		bad = b0 | b1 | b2 | b3;
		for (; k < words; ++k) {
			memcpy(w, p + 8 * k, 8);
			bad |= le64toh(w[0]) ^ word_at(i + k);
		}
	}
	if (bad != 0) {
		for (k = 0; k < 8 * words; ++k)
			if (p[k] != byte_at(offset + k))
				return offset + k;
	}
	p += 8 * words;
	n -= 8 * words;
	offset += 8 * words;
	for (; n > 0; ++p, --n, ++offset)
		if (*p != byte_at(offset))
			return offset;
	return UINT64_MAX;
}

static uint64_t
parse_bytes(const char *text)
{
	char *end;
	unsigned long long value;

	errno = 0;
	value = strtoull(text, &end, 10);
	if (errno != 0 || *end != '\0' || end == text) {
		fprintf(stderr, "not a byte count: %s\n", text);
		exit(2);
	}
	return (uint64_t)value;
}

static int
make(const char *path, uint64_t bytes)
{
	unsigned char *buffer = malloc(CHUNK);
	uint64_t offset;
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);

	if (fd < 0 || buffer == NULL) {
		perror(path);
		return 1;
	}
	for (offset = 0; offset < bytes; offset += CHUNK) {
		size_t n = bytes - offset < CHUNK ? (size_t)(bytes - offset) : CHUNK;
		size_t written = 0;

		fill(buffer, n, offset);
		while (written < n) {
			ssize_t w = write(fd, buffer + written, n - written);

			if (w < 0) {
				perror("write");
				return 1;
			}
			written += (size_t)w;
		}
	}
	if (close(fd) < 0) {
		perror("close");
		return 1;
	}
	free(buffer);
	return 0;
}

static int
verify(const char *path, uint64_t bytes)
{
	unsigned char *buffer = malloc(CHUNK);
	uint64_t offset = 0;
	int fd = open(path, O_RDONLY);

	if (fd < 0 || buffer == NULL) {
		perror(path);
		return 1;
	}
	for (;;) {
		ssize_t r = read(fd, buffer, CHUNK);
		uint64_t bad;

		if (r < 0) {
			perror("read");
			return 1;
		}
		if (r == 0)
			break;
		bad = mismatch(buffer, (size_t)r, offset);
		if (bad != UINT64_MAX) {
			fprintf(stderr, "%s: wrong byte at offset %llu\n", path,
			    (unsigned long long)bad);
			return 1;
		}
		offset += (uint64_t)r;
	}
	close(fd);
	free(buffer);
	if (offset != bytes) {
		fprintf(stderr, "%s: %llu bytes, expected %llu\n", path,
		    (unsigned long long)offset, (unsigned long long)bytes);
		return 1;
	}
	return 0;
}

/* A connected, non-blocking socket to address (HOST:PORT, or a path). */
static int
connect_to(const char *address)
{
	int fd;

	if (address[0] == '/') {
		struct sockaddr_un un = {.sun_family = AF_UNIX};

		if (strlen(address) >= sizeof un.sun_path) {
			fprintf(stderr, "path too long: %s\n", address);
			exit(2);
		}
		strcpy(un.sun_path, address);
		fd = socket(AF_UNIX, SOCK_STREAM, 0);
		if (fd < 0 || connect(fd, (struct sockaddr *)&un, sizeof un) < 0) {
			perror("connect");
			exit(1);
		}
	} else {
		struct sockaddr_in in = {.sin_family = AF_INET};
		char host[64];
		const char *colon = strrchr(address, ':');

		if (colon == NULL || (size_t)(colon - address) >= sizeof host) {
			fprintf(stderr, "expected HOST:PORT or a path: %s\n", address);
			exit(2);
		}
		memcpy(host, address, (size_t)(colon - address));
		host[colon - address] = '\0';
		if (inet_pton(AF_INET, host, &in.sin_addr) != 1) {
			fprintf(stderr, "not an IPv4 address: %s\n", host);
			exit(2);
		}
		in.sin_port = htons((uint16_t)atoi(colon + 1));
		fd = socket(AF_INET, SOCK_STREAM, 0);
		if (fd < 0 || connect(fd, (struct sockaddr *)&in, sizeof in) < 0) {
			perror("connect");
			exit(1);
		}
	}
	if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) < 0) {
		perror("fcntl");
		exit(1);
	}
	return fd;
}

static void
watch(int ep, struct conn *c, uint32_t events, int op)
{
	struct epoll_event ev = {.events = events, .data.ptr = c};

	if (epoll_ctl(ep, op, c->fd, &ev) < 0) {
		perror("epoll_ctl");
		exit(1);
	}
}

/* Download: read c until EOF, checking each byte. 1 at EOF, 0 for more. */
static int
take(struct conn *c, unsigned char *buffer, uint64_t bytes)
{
	for (;;) {
		ssize_t r = recv(c->fd, buffer, BUFFER, 0);
		uint64_t bad;

		if (r < 0) {
			if (errno == EAGAIN || errno == EINTR)
				return 0;
			perror("recv");
			exit(1);
		}
		if (r == 0) {
			if (c->done != bytes) {
				fprintf(stderr, "connection closed after %llu bytes, expected %llu\n",
				    (unsigned long long)c->done, (unsigned long long)bytes);
				exit(1);
			}
			return 1;
		}
		if (c->done + (uint64_t)r > bytes) {
			fprintf(stderr, "connection sent more than the %llu bytes expected\n",
			    (unsigned long long)bytes);
			exit(1);
		}
		bad = mismatch(buffer, (size_t)r, c->done);
		if (bad != UINT64_MAX) {
			fprintf(stderr, "wrong byte at offset %llu\n", (unsigned long long)bad);
			exit(1);
		}
		c->done += (uint64_t)r;
	}
}

/* Upload: send more of the pattern on c; at the end half-close it. */
static void
give(int ep, struct conn *c, const unsigned char *pattern, uint64_t bytes)
{
	while (c->done < bytes) {
		ssize_t w = send(c->fd, pattern + c->done, (size_t)(bytes - c->done), MSG_NOSIGNAL);

		if (w < 0) {
			if (errno == EAGAIN || errno == EINTR)
				return;
			perror("send");
			exit(1);
		}
		c->done += (uint64_t)w;
	}
	shutdown(c->fd, SHUT_WR);
	c->sending = 0;
	watch(ep, c, EPOLLIN, EPOLL_CTL_MOD);
}

/* Upload: after the half-close, the server must only close. 1 at its EOF. */
static int
closed(struct conn *c, unsigned char *buffer)
{
	ssize_t r = recv(c->fd, buffer, BUFFER, 0);

	if (r < 0 && (errno == EAGAIN || errno == EINTR))
		return 0;
	if (r < 0) {
		perror("recv");
		exit(1);
	}
	if (r > 0) {
		fprintf(stderr, "the server sent data on an upload\n");
		exit(1);
	}
	return 1;
}

static int
transfer(int upload, const char *address, int n, uint64_t bytes)
{
	struct epoll_event events[64];
	struct conn *conns = calloc((size_t)n, sizeof *conns);
	unsigned char *buffer = malloc(BUFFER), *pattern = NULL;
	char line[64];
	uint64_t started, elapsed;
	double cpu_from;
	int i, ep = epoll_create1(0), remaining = n;

	if (conns == NULL || buffer == NULL || ep < 0) {
		perror("setup");
		return 1;
	}
	if (upload) {
		pattern = malloc(bytes > 0 ? (size_t)bytes : 1);
		if (pattern == NULL) {
			perror("malloc");
			return 1;
		}
		fill(pattern, (size_t)bytes, 0);
	}
	for (i = 0; i < n; ++i) {
		conns[i].fd = connect_to(address);
		conns[i].sending = upload;
	}
	printf("ready\n");
	fflush(stdout);
	if (fgets(line, sizeof line, stdin) == NULL) {
		fprintf(stderr, "no go from the driver\n");
		return 1;
	}

	cpu_from = cpu_seconds();
	started = now_ns();
	for (i = 0; i < n; ++i) {
		if (upload) {
			watch(ep, &conns[i], EPOLLOUT, EPOLL_CTL_ADD);
		} else {
			if (send(conns[i].fd, "g", 1, MSG_NOSIGNAL) != 1) {
				perror("send");
				return 1;
			}
			watch(ep, &conns[i], EPOLLIN, EPOLL_CTL_ADD);
		}
	}
	while (remaining > 0) {
		int k, got = epoll_wait(ep, events, 64, 10000);

		if (got < 0 && errno == EINTR)
			continue;
		if (got <= 0) {
			fprintf(stderr, "no progress for 10 s (%d connections open)\n", remaining);
			return 1;
		}
		for (k = 0; k < got; ++k) {
			struct conn *c = events[k].data.ptr;
			int done;

			if (c->sending) {
				give(ep, c, pattern, bytes);
				continue;
			}
			done = upload ? closed(c, buffer) : take(c, buffer, bytes);
			if (done) {
				close(c->fd);   /* also leaves the epoll set */
				remaining -= 1;
			}
		}
	}
	elapsed = now_ns() - started;
	printf("{\"bytes\": %llu, \"seconds\": %.6f, \"connections\": %d, \"client_cpu\": %.3f}\n",
	    (unsigned long long)bytes * (unsigned long long)n, (double)elapsed / 1e9, n,
	    cpu_seconds() - cpu_from);
	fflush(stdout);
	free(pattern);
	free(buffer);
	free(conns);
	return 0;
}

int
main(int argc, char **argv)
{
	if (argc == 4 && strcmp(argv[1], "make") == 0)
		return make(argv[2], parse_bytes(argv[3]));
	if (argc == 4 && strcmp(argv[1], "verify") == 0)
		return verify(argv[2], parse_bytes(argv[3]));
	if (argc == 5 && (strcmp(argv[1], "download") == 0 || strcmp(argv[1], "upload") == 0)) {
		int n = atoi(argv[3]);

		if (n < 1) {
			fprintf(stderr, "CONNECTIONS must be >= 1\n");
			return 2;
		}
		return transfer(argv[1][0] == 'u', argv[2], n, parse_bytes(argv[4]));
	}
	fprintf(stderr,
	    "usage: %s make|verify PATH BYTES\n"
	    "       %s download|upload HOST:PORT|/PATH CONNECTIONS BYTES\n",
	    argv[0], argv[0]);
	return 2;
}
