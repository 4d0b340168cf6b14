/*
 * http_load.c: the load generator of the http-server workload, an HTTP/1.1
 * client on level-triggered epoll, one thread, every connection kept alive.
 *
 *   http_load requests HOST:PORT CONNECTIONS SECONDS WARMUP BODY_BYTES
 *       CONNECTIONS connections, each sending `GET /small` and reading the
 *       whole response (its head, then Content-Length bytes of body) before
 *       it sends the next: one request in flight per connection.  Every
 *       response must be 200 with a body of BODY_BYTES, byte i of it
 *       i % 251 (traffic.bench.asgi_app's).  After WARMUP seconds it prints
 *       "start" (the driver reads the server's CPU time then), counts the
 *       responses completed in the next SECONDS, and prints one line of
 *       JSON; then it lets the requests in flight finish and closes.
 *   http_load file HOST:PORT CONNECTIONS SECONDS BYTES CRC32
 *       CONNECTIONS connections, each downloading `GET /file` over and
 *       over; each response must be 200 with a Content-Length of BYTES and
 *       a body whose CRC-32 (zlib's) is CRC32 (decimal), both checked.  One
 *       download on each connection warms up, then "start", then downloads
 *       until SECONDS have passed (each connection finishes the one it is
 *       in: at least one), and one line of JSON.
 *
 * A response whose head says "Connection: close" (a host's limit of
 * requests per connection) is read to its end, then the connection is
 * replaced by a new one, as any client does; the JSON counts them
 * ("reconnects", in the window).
 *
 * A download that ends early (the server closes or resets the connection,
 * or sends nothing for STALL_SECONDS) is not an error but a result: the
 * JSON then says "broken" with how many bytes of that body had arrived and
 * how it ended ("closed", "reset", "stalled"), and the run stops there
 * ("start" is still printed first if it broke in the warm-up).  Anything
 * else wrong (a status other than 200, no Content-Length, a chunked body, a
 * wrong byte in a small body, a wrong CRC-32 or length, a connection
 * lost without that header in the requests mode) is reported on stderr
 * with exit status 1.
 *
 * The JSON carries the responses (requests) or the bytes and downloads
 * (file) of the window, its wall seconds, and the client's own CPU over it,
 * so the driver can tell a client-bound run.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <ctype.h>
#include <endian.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "clock.h"

#define HEAD_MAX 16384            /* a response's head must fit */
#define BUFFER (1024 * 1024)      /* bytes one receive asks for */
#define PERIOD 251                /* byte i of the small body is i % PERIOD */
#define STALL_SECONDS 5
#define FINISH_NS 5000000000ull   /* the requests in flight after the window: give up then */

enum state { HEAD, BODY, DONE };

struct conn {
	int fd;
	enum state state;
	size_t head_size;
	uint64_t length;     /* the Content-Length of the response being read */
	uint64_t got;        /* its body bytes so far */
	uint32_t crc;
	int closing;         /* the response says "Connection: close" */
	uint64_t progress;   /* now_ns() when bytes last arrived */
	char head[HEAD_MAX];
};

/* The run: its mode, what it expects, and what it has counted. */
static int file_mode;
static const char *request;
static size_t request_size;
static uint64_t body_bytes;             /* the expected body's size */
static uint32_t body_crc;               /* file mode: its CRC-32 */
static unsigned char *small_body;       /* requests mode: the body itself */
static uint64_t counted, moved;         /* responses, body bytes in the window */
static int counting, stopping;
static uint64_t reconnects;             /* after a "Connection: close" */
static struct sockaddr_in server;
static int ep;

/* How a download broke, if one did. */
static const char *broken;
static uint64_t broken_at;

static uint32_t crc_table[8][256];

static void
fail(const char *format, ...)
{
	va_list args;

	va_start(args, format);
	vfprintf(stderr, format, args);
	va_end(args);
	fputc('\n', stderr);
	exit(1);
}

/* zlib's CRC-32, eight bytes a step (slicing-by-8). */
static void
crc_init(void)
{
	uint32_t i, k, c;

	for (i = 0; i < 256; ++i) {
		for (c = i, k = 0; k < 8; ++k)
			c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
		crc_table[0][i] = c;
	}
	for (i = 0; i < 256; ++i)
		for (k = 1; k < 8; ++k)
			crc_table[k][i] = (crc_table[k - 1][i] >> 8) ^ crc_table[0][crc_table[k - 1][i] & 0xff];
}

static uint32_t
crc_update(uint32_t crc, const unsigned char *p, size_t n)
{
	crc = ~crc;
	for (; n >= 8; p += 8, n -= 8) {
		uint32_t one, two;

		memcpy(&one, p, 4);
		memcpy(&two, p + 4, 4);
		one = le32toh(one) ^ crc;
		two = le32toh(two);
		crc = crc_table[7][one & 0xff] ^ crc_table[6][(one >> 8) & 0xff] ^
		    crc_table[5][(one >> 16) & 0xff] ^ crc_table[4][one >> 24] ^
		    crc_table[3][two & 0xff] ^ crc_table[2][(two >> 8) & 0xff] ^
		    crc_table[1][(two >> 16) & 0xff] ^ crc_table[0][two >> 24];
	}
	for (; n; ++p, --n)
		crc = crc_table[0][(crc ^ *p) & 0xff] ^ (crc >> 8);
	return ~crc;
}

/* The value of header `name` (lower case, with its colon) in the head, or NULL. */
static const char *
header(const char *head, size_t size, const char *name)
{
	size_t length = strlen(name), k;
	const char *p, *end = head + size;

	for (p = head; p + 2 + length <= end; ++p) {
		if (p[0] != '\r' || p[1] != '\n')
			continue;
		for (k = 0; k < length && tolower((unsigned char)p[2 + k]) == name[k]; ++k)
			;
		if (k == length)
			return p + 2 + length;
	}
	return NULL;
}

static void
send_request(struct conn *c)
{
	ssize_t n = send(c->fd, request, request_size, MSG_NOSIGNAL);

	if (n != (ssize_t)request_size)
		fail("send: %s", n < 0 ? strerror(errno) : "short");
	c->state = HEAD;
	c->head_size = 0;
	c->progress = now_ns();
}

/* The head in c->head (its blank line ending at `end`) is whole: check it. */
static void
take_head(struct conn *c, size_t end)
{
	const char *value;
	char *rest;

	if (end < 12 || (memcmp(c->head, "HTTP/1.1 200", 12) != 0 &&
	    memcmp(c->head, "HTTP/1.0 200", 12) != 0)) {
		size_t line = strcspn(c->head, "\r");

		fail("status: %.*s", (int)(line < 80 ? line : 80), c->head);
	}
	if (header(c->head, end, "transfer-encoding:") != NULL)
		fail("a body without Content-Length (Transfer-Encoding)");
	value = header(c->head, end, "content-length:");
	if (value == NULL)
		fail("a response without Content-Length");
	c->length = strtoull(value, &rest, 10);
	if (c->length != body_bytes)
		fail("Content-Length %llu, expected %llu", (unsigned long long)c->length,
		    (unsigned long long)body_bytes);
	value = header(c->head, end, "connection:");
	c->closing = value != NULL && strncasecmp(value + strspn(value, " \t"), "close", 5) == 0;
	c->state = BODY;
	c->got = 0;
	c->crc = 0;
}

/* A new connection in c (the first, or after the server said it closes). */
static void
connect_one(struct conn *c)
{
	struct epoll_event ev;
	int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;

	if (fd < 0 || connect(fd, (struct sockaddr *)&server, sizeof server) < 0)
		fail("connect: %s", strerror(errno));
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	c->fd = fd;
	c->state = DONE;
	ev.events = EPOLLIN;
	ev.data.ptr = c;
	epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
}

/* A whole response has arrived on c: count it, and ask for the next one
 * unless the run is over. */
static void
response_done(struct conn *c, uint64_t t, uint64_t window_end)
{
	if (file_mode && c->crc != body_crc)
		fail("a body with CRC-32 %u, expected %u", c->crc, body_crc);
	if (counting) {
		counted += 1;
		moved += c->length;
	}
	if (c->closing) {
		/* The server ends the connection after this response (a host's
		 * limit of requests per connection): a new one, as any client. */
		close(c->fd);
		connect_one(c);
		reconnects += counting;
	}
	if (stopping || (file_mode && (!counting || t >= window_end))) {
		c->state = DONE;
		return;
	}
	send_request(c);
}

/* Bytes that arrived on c, in order. */
static void
feed(struct conn *c, const unsigned char *data, size_t n, uint64_t t, uint64_t window_end)
{
	c->progress = t;
	while (n) {
		if (c->state == DONE)
			fail("bytes after the response");
		if (c->state == HEAD) {
			size_t from = c->head_size > 3 ? c->head_size - 3 : 0;
			size_t take = n < HEAD_MAX - 1 - c->head_size ? n : HEAD_MAX - 1 - c->head_size;
			char *blank;

			memcpy(c->head + c->head_size, data, take);
			c->head_size += take;
			c->head[c->head_size] = '\0';
			blank = memmem(c->head + from, c->head_size - from, "\r\n\r\n", 4);
			if (blank == NULL) {
				if (c->head_size == HEAD_MAX - 1)
					fail("a response head over %d bytes", HEAD_MAX);
				return;
			}
			/* What followed the blank line is body. */
			{
				size_t end = (size_t)(blank - c->head) + 4;
				size_t used = take - (c->head_size - end);

				take_head(c, end);
				data += used;
				n -= used;
			}
			if (c->length == 0)
				response_done(c, t, window_end);
			continue;
		}
		{
			uint64_t left = c->length - c->got;
			size_t take = n < left ? n : (size_t)left;

			if (file_mode)
				c->crc = crc_update(c->crc, data, take);
			else if (memcmp(data, small_body + c->got, take) != 0)
				fail("a wrong byte in a body");
			c->got += take;
			data += take;
			n -= take;
			if (c->got == c->length)
				response_done(c, t, window_end);
		}
	}
}

static void
open_connections(struct conn *conns, int n, const char *address)
{
	char host[64];
	const char *colon = strrchr(address, ':');
	int i;

	if (colon == NULL || (size_t)(colon - address) >= sizeof host)
		fail("address %s: expected HOST:PORT", address);
	memcpy(host, address, (size_t)(colon - address));
	host[colon - address] = '\0';
	server.sin_family = AF_INET;
	if (inet_pton(AF_INET, host, &server.sin_addr) != 1)
		fail("address %s: not an IPv4 address", address);
	server.sin_port = htons((uint16_t)atoi(colon + 1));
	for (i = 0; i < n; ++i)
		connect_one(&conns[i]);
}

static int
busy(const struct conn *conns, int n)
{
	int i, count = 0;

	for (i = 0; i < n; ++i)
		count += conns[i].state != DONE;
	return count;
}

/* Receive on every connection with a response due until none is (file
 * mode), the window is over (requests mode: `window_end`, then the ones in
 * flight), or a download breaks. */
static void
serve_events(struct conn *conns, int n, unsigned char *buffer, uint64_t window_end)
{
	struct epoll_event events[1024];

	while (busy(conns, n) && broken == NULL) {
		int k, got = epoll_wait(ep, events, 1024, 10);
		uint64_t t = now_ns();

		if (!file_mode && !stopping && t >= window_end)
			return;   /* the requests window is over */
		if (stopping && t >= window_end + FINISH_NS)
			return;   /* the requests in flight did not finish: leave them */
		for (k = 0; k < got; ++k) {
			struct conn *c = events[k].data.ptr;
			ssize_t r = recv(c->fd, buffer, BUFFER, 0);

			if (r > 0) {
				feed(c, buffer, (size_t)r, t, window_end);
				continue;
			}
			if (r < 0 && (errno == EAGAIN || errno == EINTR))
				continue;
			if (!file_mode)
				fail("a connection lost: %s", r == 0 ? "closed by the server" : strerror(errno));
			broken = r == 0 ? "closed" : errno == ECONNRESET ? "reset" : strerror(errno);
			broken_at = c->state == BODY ? c->got : 0;
			return;
		}
		if (file_mode) {
			int i;

			for (i = 0; i < n; ++i) {
				struct conn *c = &conns[i];

				if (c->state != DONE && t > c->progress &&
				    t - c->progress > STALL_SECONDS * 1000000000ull) {
					broken = "stalled";
					broken_at = c->state == BODY ? c->got : 0;
					return;
				}
			}
		}
	}
}

static void
say_start(double *cpu_from, uint64_t *from)
{
	printf("start\n");
	fflush(stdout);
	*cpu_from = cpu_seconds();
	*from = now_ns();
}

int
main(int argc, char **argv)
{
	static const char small_request[] = "GET /small HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
	static const char file_request[] = "GET /file HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
	struct conn *conns;
	unsigned char *buffer;
	double seconds, warmup = 0.0, cpu_from = 0.0, cpu;
	uint64_t from = 0, until, elapsed, at;
	int n, i;
	unsigned long long crc = 0;

	if (argc != 7 || (strcmp(argv[1], "requests") != 0 && strcmp(argv[1], "file") != 0)) {
		fprintf(stderr,
		    "usage: http_load requests HOST:PORT CONNECTIONS SECONDS WARMUP BODY_BYTES\n"
		    "       http_load file HOST:PORT CONNECTIONS SECONDS BYTES CRC32\n");
		return 2;
	}
	file_mode = strcmp(argv[1], "file") == 0;
	n = atoi(argv[3]);
	seconds = atof(argv[4]);
	if (file_mode) {
		body_bytes = strtoull(argv[5], NULL, 10);
		crc = strtoull(argv[6], NULL, 10);
		body_crc = (uint32_t)crc;
		request = file_request;
		request_size = sizeof file_request - 1;
	} else {
		warmup = atof(argv[5]);
		body_bytes = strtoull(argv[6], NULL, 10);
		small_body = malloc(body_bytes ? body_bytes : 1);
		if (small_body == NULL)
			fail("malloc");
		for (at = 0; at < body_bytes; ++at)
			small_body[at] = (unsigned char)(at % PERIOD);
		request = small_request;
		request_size = sizeof small_request - 1;
	}
	if (n < 1 || seconds <= 0 || crc > 0xffffffffull)
		fail("bad arguments");
	crc_init();
	conns = calloc((size_t)n, sizeof *conns);
	buffer = malloc(BUFFER);
	if (conns == NULL || buffer == NULL)
		fail("malloc");
	ep = epoll_create1(0);
	open_connections(conns, n, argv[2]);
	for (i = 0; i < n; ++i)
		send_request(&conns[i]);

	if (file_mode) {
		serve_events(conns, n, buffer, 0);   /* the warm-up: one download each */
		say_start(&cpu_from, &from);
		if (broken == NULL) {
			counting = 1;
			until = from + (uint64_t)(seconds * 1e9);
			for (i = 0; i < n; ++i)
				send_request(&conns[i]);
			serve_events(conns, n, buffer, until);
		}
	} else {
		serve_events(conns, n, buffer, now_ns() + (uint64_t)(warmup * 1e9));
		say_start(&cpu_from, &from);
		counting = 1;
		serve_events(conns, n, buffer, from + (uint64_t)(seconds * 1e9));
	}
	cpu = cpu_seconds() - cpu_from;
	elapsed = now_ns() - from;
	counting = 0;
	if (file_mode) {
		printf("{\"bytes\": %llu, \"downloads\": %llu, \"seconds\": %.6f, \"client_cpu\": %.3f, "
		    "\"connections\": %d, \"reconnects\": %llu, \"broken\": %s%s%s, \"broken_at\": %llu}\n",
		    (unsigned long long)moved, (unsigned long long)counted, (double)elapsed / 1e9, cpu, n,
		    (unsigned long long)reconnects,
		    broken ? "\"" : "", broken ? broken : "null", broken ? "\"" : "",
		    (unsigned long long)broken_at);
	} else {
		printf("{\"requests\": %llu, \"seconds\": %.6f, \"client_cpu\": %.3f, "
		    "\"connections\": %d, \"reconnects\": %llu}\n",
		    (unsigned long long)counted, (double)elapsed / 1e9, cpu, n,
		    (unsigned long long)reconnects);
	}
	fflush(stdout);
	if (!file_mode) {
		/* Let the requests in flight finish, so no connection closes with a
		 * response unread (a reset the server would have to survive). */
		stopping = 1;
		serve_events(conns, n, buffer, now_ns());
	}
	for (i = 0; i < n; ++i)
		close(conns[i].fd);
	return 0;
}
