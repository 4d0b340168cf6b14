/*
 * traffic.h: the core's API, read by cffi's cdef and included by the C sources.
 *
 * Written in cdef's subset: no preprocessor lines, opaque structures, enums
 * for constants.  Every function that can fail returns 0 (or a count) on
 * success and a negative errno, or TR_ETERMINATED, on failure; nothing here
 * ever aborts the process on bad input.
 *
 * Vocabulary (see the seed): a Traffic owns a kernel queue and the transits
 * acquired into it; a transit transfers in one direction (its polarity) over
 * one kernel point (a descriptor); a transfer resource is the memory the
 * transit transfers into or out of.  Exhaustion is the resource fully used;
 * termination is the end of the transit's ability to transfer, by its owner
 * or by the kernel.  "Closed" means only what close() does: a descriptor
 * closed, a Traffic destroyed (Python's Traffic.close()); a transit is not
 * closed, it terminates.  The notification is the completion descriptor a
 * threaded Traffic raises; "signal" means a POSIX signal.
 *
 * Threads.  A Traffic is synchronous (tr_cycle_enter/take/exit, run by one
 * calling thread at a time) or threaded (tr_traffic_start: the core's own
 * cycle thread waits and transfers; the owner submits with tr_request and
 * collects with tr_collect).  Every function may be called from any thread:
 * all state is guarded by the Traffic's mutex, which no system call that can
 * block is made under.
 */

typedef struct tr_traffic tr_traffic;
typedef struct tr_transit tr_transit;

/* The core's own error for a terminated transit or a closed Traffic. */
enum tr_error { TR_ETERMINATED = -100000 };

enum tr_type { TR_OCTETS = 1, TR_SOCKETS = 2, TR_DESCRIPTORS = 3, TR_DATAGRAMS = 4 };

/*
 * Descriptors (SCM_RIGHTS over an AF_UNIX stream socket).  A Descriptors
 * transit's resource is a pair: bytes, and an int array of descriptors.
 * Output: the descriptors ride on the bytes, at most TR_FDS_PER_MESSAGE per
 * message and at least one byte per message, so a send of n descriptors
 * needs ceil(n / TR_FDS_PER_MESSAGE) bytes (else -EINVAL).  They are
 * duplicated (F_DUPFD_CLOEXEC) at submission, -EBADF if one is not open;
 * the caller's own descriptors are never closed; the duplicates are closed
 * as they are sent, or when the send is withdrawn or the transit ends.
 * Input: received descriptors (close-on-exec) fill the array up to its
 * capacity; more are closed; the resource is exhausted when either part is
 * full.  Received descriptors never handed over (a withdrawn or closed
 * request, a dropped transit, a destroyed Traffic) are closed.  Without
 * descriptors a Descriptors transit moves bytes as an Octets one does.
 */
enum tr_fds_limits { TR_FDS_PER_MESSAGE = 64 };

/*
 * Datagrams (UDP over IPv4 and IPv6, AF_UNIX datagrams).  A Datagrams
 * transit's resource is a sequence of records, each a tr_datagram header
 * followed by its payload space, padded to TR_DG_ALIGN: the next record
 * starts sizeof(tr_datagram) + capacity rounded up to TR_DG_ALIGN bytes
 * after this one, and the last one's padding must be there too.  A
 * resource that is not a whole number of well-formed records is refused
 * (-EINVAL), and every record is bounds-checked again as it transfers.
 * Transfers move whole records, batched (recvmmsg/sendmmsg where the
 * kernel has them): the transferred slice is a run of whole records.
 * Input: the owner sets capacity; the core sets length (the datagram's
 * real length: more than capacity means it was truncated, and
 * TR_DG_TRUNCATED is set), addrlen and address (the sender's).  A
 * zero-length datagram is a datagram, not an end.  Output: the owner sets
 * capacity, length (<= capacity), addrlen and address (addrlen 0: the
 * connected peer).  A datagram the kernel refuses (ECONNREFUSED from an
 * earlier one, EMSGSIZE, unreachable...) is a fault, as for accept: the
 * transit stays intact, the resource is released, and for output the
 * refused record is the first one after the transferred slice.  The
 * header's fields are native-endian; read and write them through memcpy.
 */
typedef struct {
	unsigned int capacity;            /* payload bytes after the header */
	unsigned int length;              /* the datagram's length */
	unsigned int flags;               /* tr_datagram_flags */
	unsigned int addrlen;             /* bytes of address in use; 0: none */
	unsigned char address[128];       /* a struct sockaddr of the socket's family */
} tr_datagram;
enum tr_datagram_limits { TR_DG_ADDRESS = 128, TR_DG_ALIGN = 8, TR_DG_BATCH = 64 };
enum tr_datagram_flags { TR_DG_TRUNCATED = 1 };

/* Records in a Datagrams resource, or -EINVAL if it is not well formed. */
long tr_datagrams_check(const void *resource, size_t size, int polarity);

/*
 * Files.  A request of a stream's Octets or Descriptors transit can name a
 * region of a regular file instead of memory (tr_request_file): output
 * sends count bytes of the file from offset, input writes what arrives to
 * the file from offset until count bytes are written or the stream ends.
 * The file descriptor is duplicated at submission (the caller may close
 * its own at once) and the duplicate closed when the request ends.  The
 * bytes never leave the kernel where it can: out of a file, sendfile(2)
 * (Linux's, FreeBSD's, macOS's: chosen by operating system, not by event
 * backend); into a file, splice(2) through a pipe the transit owns
 * (Linux).  Elsewhere, or where the kernel refuses (a file type, a file
 * opened O_APPEND), the core copies (pread + send, read + pwrite or write).
 * Each system call moves at most TR_FILE_CALL bytes and each pass of the
 * transfer loop at most TR_FILE_PASS, after which the transit yields to
 * the others (an inline request goes on in the cycle thread).  An inline
 * output request probes the file's pages first and hands the transfer to
 * the cycle thread when they are not in memory: a read from disk never
 * blocks the caller's thread there.
 *
 * Outcomes: TR_DONE once the region is transferred, or for input at the
 * stream's end with something written (the next request sees the end);
 * TR_TERMINATED for the stream's end otherwise; TR_FAULT for a failure of
 * the file (the stream is intact): its errno, or TR_FILE_ENDED when the
 * file ended before the region did.  transferred (the report's stop)
 * counts the bytes moved in every outcome, withdrawn requests included.
 * An input transfer whose file write fails keeps the bytes read from the
 * socket that the file did not take: the transit's next request, into
 * memory or a file, takes them first.  -EINVAL for a transit that is not
 * a stream's Octets or Descriptors transit, or a file that is not a
 * regular one; -EBADF for a descriptor that is not open or not open for
 * the direction.
 */
enum tr_file_limits { TR_FILE_CALL = 1048576, TR_FILE_PASS = 4194304, TR_FILE_HOLD = 262144 };
enum tr_file_errors { TR_FILE_ENDED = 100001 };

/* The seed's polarity: "on" is gain (input), "off" is loss (output). */
enum tr_polarity { TR_OUTPUT = 0, TR_INPUT = 1 };

/* Scheduling of a threaded Traffic's cycle thread. */
enum tr_cycle_policy { TR_CYCLE_NORMAL = 0, TR_CYCLE_IDLE = 1, TR_CYCLE_BATCH = 2 };

enum tr_mode { TR_MODE_UNSET = 0, TR_MODE_SYNCHRONOUS = 1, TR_MODE_THREADED = 2 };

/* Event bits of a transit in a synchronous cycle. */
enum tr_event {
	TR_EV_TRANSFER = 1,   /* part of the resource was transferred */
	TR_EV_EXHAUST = 2,    /* the resource is fully used and released */
	TR_EV_TERMINATE = 4,  /* no more transfers; error holds the errno, if any */
	TR_EV_FAULT = 8       /* accept failed transiently (EMFILE...); resource released */
};

/*
 * Outcome of a request in a threaded Traffic, as returned by tr_request and
 * tr_withdraw and carried by completions.
 */
enum tr_outcome {
	TR_PENDING = 0,           /* queued in the core; a completion will follow */
	TR_DONE = 1,              /* transferred: input some, output all of it */
	TR_TERMINATED = 2,        /* the transit terminated: EOF (error 0) or errno */
	TR_FAULT = 3,             /* transient accept failure; the transit is intact */
	TR_OWNER_TERMINATED = 4,  /* terminated by its owner while the request waited */
	TR_WITHDRAWN = 5,         /* withdrawn before completion; transferred says how much */
	TR_COMPLETING = 6         /* withdraw lost the race: the completion follows promptly */
};

/* State bits of a transit, from tr_transit_status. */
enum tr_status {
	TR_ST_ACQUIRED = 1,    /* in traffic */
	TR_ST_RESOURCE = 2,    /* holds a transfer resource */
	TR_ST_EXHAUSTED = 4,   /* its last resource was used up; none since */
	TR_ST_TERMINATED = 8,  /* no more transfers */
	TR_ST_REQUEST = 16     /* a threaded request is outstanding */
};

/* One transit's report: a cycle event (synchronous) or a completion (threaded). */
typedef struct {
	unsigned long long token;  /* the owner's token given to tr_traffic_acquire */
	unsigned int events;       /* tr_event bits (synchronous) */
	int outcome;               /* tr_outcome (threaded) */
	int error;                 /* errno of a termination or fault, else 0 */
	size_t start;              /* the transferred slice of the resource, in bytes */
	size_t stop;
	size_t fd_start;           /* Descriptors: the transferred slice of the descriptor array */
	size_t fd_stop;
	void *data;                /* a core-allocated resource, now the caller's: tr_free it */
} tr_report;

/* Core objects alive (Traffics and transits), for leak checks in tests. */
long tr_live_objects(void);

/*
 * How often a Traffic took paths that tests must prove they reached (the
 * races and bounds no test can force from outside): plain counters, kept
 * under the Traffic's lock, never reset, read by tr_traffic_stats.  They
 * change nothing the core does.
 */
typedef struct {
	/* tr_withdraw found the request inside its system call (TR_COMPLETING) */
	unsigned long long withdraw_in_call;
	/* ... and that request was a file region's (sendfile, splice) */
	unsigned long long withdraw_in_file_call;
	/* a file transfer's pass stopped at TR_FILE_PASS with more to do */
	unsigned long long file_pass_bound;
	/* a datagram receive's batch filled every one of its TR_DG_BATCH slots */
	unsigned long long datagram_full_batch;
	/* an owner's termination met a system call in flight; its thread finished it */
	unsigned long long end_settled;
	/* accepted descriptors the core closed because nobody was told of them */
	unsigned long long accepted_closed;
	/* an arm left both directions of a socket armed at once (threaded) */
	unsigned long long armed_both;
} tr_stats;

/* Copy the Traffic's counters into *stats; 0. */
int tr_traffic_stats(tr_traffic *traffic, tr_stats *stats);

/* The kernel event backend compiled in: "epoll" or "kqueue". */
const char *tr_backend(void);

/*
 * The stamp of the switches the core was built with (backend, sources,
 * include directories, objects, flags): traffic/_ffi_build.py digests them
 * and defines TR_BUILD_STAMP; "unstamped" when compiled without it.
 */
const char *tr_build_stamp(void);

/* Traffic */
int tr_traffic_create(tr_traffic **out);
int tr_traffic_start(tr_traffic *traffic, int policy);
void tr_traffic_destroy(tr_traffic *traffic);
void tr_traffic_abandon(tr_traffic *traffic);
int tr_traffic_wake(tr_traffic *traffic);
int tr_traffic_mode(tr_traffic *traffic);
/* Transits in the Traffic that their owner still holds (not released). */
long tr_traffic_transits(tr_traffic *traffic);
int tr_traffic_completion_fd(tr_traffic *traffic);
/*
 * Nonzero while completions wait to be collected, readable without a call
 * or the lock: a hint for a collector that polls between its own waits (a
 * stale zero only means the descriptor's wake-up comes instead).  Valid
 * until tr_traffic_destroy.
 */
const int *tr_traffic_notify_flag(tr_traffic *traffic);
/*
 * A collector that reads the flag after each of its I/O waits can spare
 * the completion descriptor's system calls while it is awake: it calls
 * this with 1 just before a wait that may block and with 0 after it.  The
 * first call makes the notification lazy: from then on the descriptor is
 * written only between a 1 and the next 0 (at once on the 1 if completions
 * already wait).  Without a call, or after a call with -1 (the collector
 * stops reading the flag), it is written for every batch.
 */
int tr_traffic_collector_asleep(tr_traffic *traffic, int asleep);
int tr_traffic_acquire(tr_traffic *traffic, tr_transit *transit, unsigned long long token);

/* Transits */
int tr_transit_create(tr_transit **out, int fd, int type, int polarity, tr_transit *sibling);
int tr_transit_acquire(tr_transit *transit, void *resource, size_t size);
int tr_transit_acquire_fds(tr_transit *transit, void *resource, size_t size, int *fds, size_t nfds);
/*
 * A synchronous Traffic's transit takes a file region as its resource (see
 * Files above: the same checks, -EINVAL and -EBADF, and the same transfer
 * as tr_request_file's).  Its cycle reports the bytes moved as the slice
 * [start, stop) of the region; the duplicate closes when the region's end
 * (exhaustion, fault, termination) is taken from the cycle.  -EBUSY while
 * the transit holds a resource, memory or a region, not yet exhausted.
 */
int tr_transit_acquire_file(tr_transit *transit, int file, long long offset,
    unsigned long long count);
int tr_transit_terminate(tr_transit *transit, int disregard);
void tr_transit_release(tr_transit *transit);
int tr_transit_forget(tr_transit *transit);
int tr_transit_fd(tr_transit *transit);
int tr_transit_status(tr_transit *transit, int *error);

/* Synchronous cycles */
int tr_cycle_enter(tr_traffic *traffic, int timeout_ms);
int tr_cycle_take(tr_traffic *traffic, tr_report *report);
void tr_cycle_exit(tr_traffic *traffic);

/*
 * Threaded requests.  An input Octets request with a NULL resource has the
 * core allocate size bytes when data arrives (nothing is held while it
 * waits); its report's data then points at them, for the caller to tr_free.
 */
int tr_request(tr_transit *transit, void *resource, size_t size, int inline_first, tr_report *report);
int tr_request_fds(tr_transit *transit, void *resource, size_t size, int *fds, size_t nfds, int inline_first, tr_report *report);
/*
 * The receive of an input Octets or Descriptors transit, tried at once into
 * the caller's scratch (room for size bytes): done at once, the bytes are
 * there (the report's data points at scratch: copy them out, never free
 * it); left pending, the core keeps no hold on scratch and allocates when
 * data arrives, as tr_request with a NULL resource.  -EINVAL for another
 * transit or a NULL scratch.
 */
int tr_receive(tr_transit *transit, size_t size, void *scratch, tr_report *report);
int tr_request_file(tr_transit *transit, int file, long long offset, unsigned long long count,
    int inline_first, tr_report *report);
int tr_withdraw(tr_transit *transit, tr_report *report);
int tr_collect(tr_traffic *traffic, tr_report *reports, int max);
void tr_free(void *data);

/* Fault injection for tests: the next transfer on the transit fails with errno. */
int tr_transit_inject(tr_transit *transit, int error);
