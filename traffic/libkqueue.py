"""The Traffic interface: a Traffic owns a cycle, transits transfer.

The seed's model, kept:

- A :class:`Transit` transfers in one direction (its :class:`Polarity`)
  over one kernel point (a descriptor).  :class:`Octets` moves bytes,
  :class:`Sockets` moves the descriptors of accepted connections,
  :class:`Descriptors` passes descriptors (with bytes) over AF_UNIX sockets.
- A transit is *acquired* into a :class:`Traffic`; then a *transfer
  resource* (a buffer; writable for input) is acquired into the transit.
  The core transfers into or out of it whenever the kernel allows.
- A stream's transit can take a region of a regular file instead
  (:class:`FileRegion`): the core moves the bytes between the socket and
  the file itself.
- ``with traffic:`` opens a *cycle*: a window in which :meth:`Traffic.transfers`
  yields the transits with events.  Each reports what it transferred
  (:meth:`Transit.transfer`, a memoryview slice of its resource, or for a
  file region the range of file offsets that moved), whether it
  is :attr:`~Transit.exhausted` (the resource is used up: flow control by
  starvation) and whether it is :attr:`~Transit.terminated`.  When the cycle
  closes, the event state is reset.  If the body raises before visiting
  every transit, the unvisited events carry over to the next cycle:
  Transfer-Loss is never silent.

Ownership.  Creating a transit from a descriptor or a socket hands the
descriptor to the core (sockets are ``detach()``-ed); only the core closes
it, when the last transit on it terminates.  A resource stays referenced by
the Traffic for as long as the core may touch it.  A transit dropped while
in traffic is terminated, never freed under the core.

Threads.  A Traffic is synchronous (its cycles run by the calling thread)
or threaded (:meth:`Traffic.start`: the core's ``traffic-cycle`` thread
runs the cycle, the owner submits requests and collects completions; this
is what the trio and anyio layers use).  Mixing the two raises
``RuntimeError``, as does running one Traffic's cycles from two threads at
once.  :meth:`Traffic.wake` is safe from any thread.

Fork.  After ``fork()`` the child cannot use the parent's Traffics: every
operation on them raises ``RuntimeError``; the child's copies of their
descriptors are closed without shutdown, so the parent's connections stay
intact.  Create a new Traffic in the child.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import itertools
import os
import socket
import threading
import weakref
from array import array
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any, ClassVar, TypeVar

from . import _files, _requests
from ._requests import Completion, Refusal, Requests
from ._traffic import ffi, lib
from .errors import OutOfRangeError, TransitClosedError, TransitError, check

__all__ = [
    "Completion",
    "Descriptors",
    "FileRegion",
    "Octets",
    "Polarity",
    "Sockets",
    "Traffic",
    "Transit",
    "backend",
    "live_objects",
]

#: Timeouts from this many seconds on wait without limit (the kernel takes
#: an int of milliseconds: 2**31 ms is almost 25 days).
MAX_TIMEOUT = 2**31 // 1000

#: Backlog of listening sockets made by :meth:`Sockets.listen` (trio's
#: default is also "as large as the kernel allows"; 128 is SOMAXCONN's floor).
DEFAULT_BACKLOG = 128

#: The most :meth:`Traffic.receive` asks the core to allocate for one
#: receive; a larger ``size`` is clamped to it (a receive returns "up to"
#: its size anyway).
MAX_RECEIVE = 1 << 24

#: The largest descriptor number a C ``int`` holds.
MAX_DESCRIPTOR = 2**31 - 1


def _descriptor(fd: object, kind: str) -> int:
    """``fd`` as a descriptor number for the core: ``TypeError`` for a
    non-int, :class:`~traffic.errors.TransitError` (``EBADF``) for a number
    no descriptor can have (beyond a C ``int``)."""
    if not isinstance(fd, int) or isinstance(fd, bool):
        raise TypeError(f"a descriptor is an int, not {type(fd).__name__}")
    if fd > MAX_DESCRIPTOR or fd < -MAX_DESCRIPTOR:
        article = "an" if kind[0] in "AEIOU" else "a"
        raise TransitError(
            errno.EBADF,
            f"cannot make {article} {kind} transit of descriptor {fd}: not an open descriptor",
        )
    return fd


def _polarity(polarity: object) -> int:
    """``polarity`` as the core's ``TR_INPUT`` / ``TR_OUTPUT``; ``ValueError`` otherwise."""
    if (
        isinstance(polarity, int)
        and not isinstance(polarity, bool)
        and polarity in (lib.TR_INPUT, lib.TR_OUTPUT)
    ):
        return int(polarity)
    raise ValueError(f"polarity must be Polarity.INPUT or Polarity.OUTPUT, not {polarity!r}")


def _timeout_ms(timeout: object) -> int:
    """A cycle timeout in seconds (None: no limit) as the kernel's milliseconds (-1: none).

    ``TypeError`` for a non-number, ``ValueError`` for NaN; negative is 0
    (poll), from :data:`MAX_TIMEOUT` on (infinity too) there is no limit.
    """
    if timeout is None:
        return -1
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool):
        raise TypeError(f"a timeout is a number of seconds or None, not {type(timeout).__name__}")
    if timeout != timeout:
        raise ValueError("a timeout cannot be NaN")
    if timeout >= MAX_TIMEOUT:
        return -1
    if timeout <= 0:
        return 0
    return int(timeout * 1000 + 0.999)


def _address(address: object) -> str | bytes | tuple[Any, ...]:
    """Check a ``(host, port)`` or AF_UNIX path argument.

    ``TypeError`` for anything else; ``ValueError`` for a port outside
    0-65535 (the resolver would silently wrap it).
    """
    if isinstance(address, (str, bytes)):
        return address
    if isinstance(address, os.PathLike):
        path: str | bytes = os.fspath(address)
        return path
    if not isinstance(address, tuple) or len(address) < 2:
        raise TypeError(f"an address is a (host, port) tuple or an AF_UNIX path, not {address!r}")
    check_port(address[1])
    return address


def check_port(port: object) -> int:
    """A port: ``TypeError`` for a non-int, :class:`~traffic.errors.OutOfRangeError`
    (a ``ValueError``) outside 0-65535."""
    if not isinstance(port, int) or isinstance(port, bool):
        raise TypeError(f"a port is an int, not {type(port).__name__}")
    if not 0 <= port <= 65535:
        raise OutOfRangeError(f"port must be 0-65535, not {port}")
    return port


class Polarity(enum.IntEnum):
    """The direction of a transit: the seed's "on" (gain) and "off" (loss)."""

    OUTPUT = lib.TR_OUTPUT
    INPUT = lib.TR_INPUT


#: The kernel event backend the core was compiled with: ``"epoll"`` or
#: ``"kqueue"`` (chosen at build time; see ``TRAFFIC_BACKEND``).
backend: str = ffi.string(lib.tr_backend()).decode("ascii")


def live_objects() -> int:
    """Core objects (Traffics and transits) alive in C; 0 when nothing leaked."""
    return int(lib.tr_live_objects())


_T = TypeVar("_T", bound="Transit")
_P = TypeVar("_P")


def _transit(transit: object) -> None:
    """``TypeError`` unless ``transit`` is a :class:`Transit`."""
    if not isinstance(transit, Transit):
        raise TypeError(f"expected a Transit, not {type(transit).__name__}")


#: The events that end a transit's resource: the core lets go of it.
_ENDS = lib.TR_EV_EXHAUST | lib.TR_EV_FAULT | lib.TR_EV_TERMINATE


class FileRegion:
    """A region of a regular file as a transfer resource: what a stream's
    transit (:class:`Octets`, :class:`Descriptors`, over a socket) in a
    synchronous Traffic sends from or receives into, as it would a buffer:
    ``transit.acquire(FileRegion(file, offset, count))``.  The core moves
    the bytes between the socket and the file itself (``sendfile(2)``,
    ``splice(2)`` where the system has them): they never enter Python.

    ``file`` is a binary file object (open for reading to send, for
    writing to receive) or a descriptor, of a regular file; the core works
    on a duplicate of its descriptor, so the caller's is never closed.

    - Sent by an output transit: ``count`` bytes from ``offset``; None
      for ``offset`` is the file's position (``tell()``) and for
      ``count`` the rest of the file, its size read once, when the region
      is acquired (as :func:`traffic.send_file` does).
    - Received by an input transit: what arrives is written from the
      file's position (a buffered writer is flushed first; a file opened
      for appending is written at its end) until ``count`` bytes, None:
      until the stream ends.  A receive takes no ``offset``.

    In the cycle, :meth:`Transit.transfer` is the ``range`` of the file's
    offsets that moved in this cycle (a region has no memory to slice:
    its length is the bytes moved, as a memoryview's is).  The region
    ends as memory does: exhausted once every byte of ``count`` moved; a
    fault is the file's failure (:attr:`fault` says which; the stream is
    intact); the transit's termination ends it too (the stream's end, an
    error, the owner).  When it ends, the file's position is settled just
    after the last byte that moved, as :func:`traffic.send_file` leaves
    it: ``start + moved`` (the end of a file opened for appending).

    Refused when acquired, before anything moves, with
    :func:`traffic.send_file`'s exceptions: ``TypeError`` for a text file
    or an object that is not a file, ``ValueError`` for a closed file, a
    file that is not a regular one (``IsADirectoryError`` for a
    directory), a negative ``offset``, a ``count`` below 1 or a region
    past the end of the file, ``io.UnsupportedOperation`` for a file not
    open for the direction, ``OSError`` (``EBADF``) for a descriptor that
    is not open.  A region is held by one transit at a time, until its end
    is reported; after that it may be acquired again (``offset`` None then
    starts at the position the last transfer left).
    """

    __slots__ = ("_fault", "_length", "_moved", "_region", "_start", "count", "file", "offset")

    def __init__(self, file: object, offset: int | None = None, count: int | None = None) -> None:
        if offset is not None and _files._number(offset, "offset") < 0:
            raise ValueError(f"offset must be >= 0, not {offset}")
        if count is not None and _files._number(count, "count") < 1:
            raise ValueError(f"count must be >= 1, not {count}")
        #: The file, the offset and the count, as given.
        self.file = file
        self.offset = offset
        self.count = count
        self._region: _files.Region | None = None
        self._start: int | None = None
        self._length: int | None = None
        self._moved = 0
        self._fault: BaseException | None = None

    @property
    def start(self) -> int | None:
        """The file offset of the region's first byte, once acquired."""
        return self._start

    @property
    def length(self) -> int | None:
        """The bytes the region moves once acquired: ``count``, or what a
        send's ``count`` None came to; None for a receive until the end."""
        return self._length

    @property
    def moved(self) -> int:
        """The bytes moved so far, as the cycles reported them: the file's
        offsets ``range(start, start + moved)``."""
        return self._moved

    @property
    def fault(self) -> BaseException | None:
        """Why the region ended by a fault (the file's failure): a
        :class:`~traffic.errors.FileEndedError` for a file that ended
        before the region (truncated while it was sent), else an
        ``OSError``; None otherwise.  Not raised: the cycle reports."""
        return self._fault

    @property
    def held(self) -> bool:
        """Whether a transit holds the region (acquired, its end not reported yet)."""
        return self._region is not None

    def _resolve(self, polarity: int) -> _files.Region:
        """The file's region for a transit of ``polarity``, checked."""
        if polarity == lib.TR_OUTPUT:
            return _files.send_region(self.file, self.offset, self.count, "FileRegion")
        if self.offset is not None:
            raise TypeError(
                "a receive into a file starts at its position: FileRegion(file, count=...) "
                "takes no offset for an input transit"
            )
        return _files.receive_region(self.file, self.count, "FileRegion")

    def _begin(self, region: _files.Region) -> None:
        """The core took ``region``: from now on the file's position is
        settled when it ends."""
        region.submitted = True
        self._region = region
        self._start = os.fstat(region.fd).st_size if region.append else region.offset
        self._length = None if region.count == _files.UNTIL_END else region.count
        self._moved = 0
        self._fault = None

    def _took(self, report: Any, events: int) -> range | None:
        """A cycle's report: the offsets moved, and the end if it came."""
        start = self._start
        if self._region is None or start is None:
            return None
        stop = int(report.stop)
        self._moved = stop
        span = range(start + report.start, start + stop) if events & lib.TR_EV_TRANSFER else None
        if events & _ENDS:
            self._end(report.error if events & lib.TR_EV_FAULT else 0)
        return span

    def _end(self, error: int, settle: bool = True) -> None:
        """The region ended (``error``: the file's, for a fault): settle
        the file's position after what moved."""
        region, self._region = self._region, None
        if region is None:
            return
        if error:
            self._fault = _files.fault(error, self._moved, region.count, "FileRegion")
        if settle:
            with contextlib.suppress(OSError, ValueError):  # the caller closed it
                region.settle(self._moved)

    def __repr__(self) -> str:
        if self._region is None:
            return f"<FileRegion file={self.file!r} offset={self.offset} count={self.count}>"
        return f"<FileRegion held start={self._start} length={self._length} moved={self._moved}>"


class Transit:
    """An object that transfers, in one direction, over one kernel point.

    Not created directly: use the constructors of :class:`Octets` and
    :class:`Sockets`.
    """

    __slots__ = (
        "__weakref__",
        "_c",
        "_events",
        "_memory",
        "_resource",
        "_token",
        "_traffic",
        "_view",
    )

    _type: ClassVar[int]
    _itemsize: ClassVar[int] = 1

    _c: Any
    _traffic: Traffic | None
    _token: int
    _resource: object | None
    _memory: memoryview | None
    _events: int
    _view: memoryview | range | None

    def __init__(self) -> None:
        raise TypeError(f"use the constructors of {type(self).__name__}, such as from_fd()")

    @classmethod
    def _create(cls: type[_T], fd: int, polarity: int, sibling: Transit | None = None) -> _T:
        """Wrap ``fd``; on success the core owns it, on failure the caller still does."""
        fd = _descriptor(fd, cls.__name__)
        out = ffi.new("tr_transit **")
        check(
            lib.tr_transit_create(
                out, fd, cls._type, polarity, sibling._c if sibling else ffi.NULL
            ),
            f"cannot make a {cls.__name__} transit of descriptor {fd}",
        )
        self = object.__new__(cls)
        self._c = out[0]
        self._traffic = None
        self._token = 0
        self._resource = None
        self._memory = None
        self._events = 0
        self._view = None
        return self

    def __del__(self, _release: Any = lib.tr_transit_release, _null: Any = ffi.NULL) -> None:
        # Dropped by its owner: the core terminates it and frees it when
        # safe.  __del__ rather than weakref.finalize or ffi.gc: a connection
        # has two transits, and either costs each transit memory and time
        # per connection (docs/benchmark.rst: idle and accept).
        c = getattr(self, "_c", _null)  # absent if _create failed half-way
        if c != _null:
            self._c = _null
            _release(c)

    @classmethod
    def _pair(cls: type[_T], fd: int) -> tuple[_T, _T]:
        """(input, output) transits sharing one kernel point; the caller
        keeps ``fd`` if this fails."""
        receiver = cls._create(fd, lib.TR_INPUT)
        receiver._polarity = lib.TR_INPUT
        try:
            sender = cls._create(fd, lib.TR_OUTPUT, receiver)
        except BaseException:
            # The caller still owns fd: free the receiver without closing it.
            c, receiver._c = receiver._c, ffi.NULL
            lib.tr_transit_forget(c)
            raise
        sender._polarity = lib.TR_OUTPUT
        return receiver, sender

    # Identity and state

    @property
    def polarity(self) -> Polarity:
        """:attr:`Polarity.INPUT` for transits that receive, ``OUTPUT`` for those that send."""
        return Polarity(self._polarity)

    _polarity: int  # set by subclasses' constructors through _create

    @property
    def traffic(self) -> Traffic | None:
        """The Traffic this transit is in, if any."""
        return self._traffic

    def fileno(self) -> int:
        """The kernel point's descriptor, or -1 once it is closed (owned by the core)."""
        return int(lib.tr_transit_fd(self._c))

    def _status(self) -> tuple[int, int]:
        error = ffi.new("int *")
        status = lib.tr_transit_status(self._c, error)
        return status, error[0]

    @property
    def terminated(self) -> bool:
        """Whether the transit can no longer transfer."""
        return bool(self._status()[0] & lib.TR_ST_TERMINATED)

    @property
    def exhausted(self) -> bool:
        """Whether its last resource was used up and no new one acquired since."""
        return bool(self._status()[0] & lib.TR_ST_EXHAUSTED)

    @property
    def error(self) -> int | None:
        """The errno that terminated the transit (or of the last fault), else None.

        ``None`` for a transit still transferring, ended by EOF, or
        terminated by its owner.
        """
        return self._status()[1] or None

    @property
    def resource(self) -> object | None:
        """The transfer resource currently acquired, if any."""
        return self._resource

    # Events of the open cycle

    def transfer(self) -> memoryview | range | None:
        """What moved in this cycle: a memoryview slice of the resource (for
        a :class:`FileRegion`, the ``range`` of the file's offsets that
        moved), or None."""
        return self._view

    @property
    def events(self) -> int:
        """The ``TR_EV_*`` bits of this cycle (0 outside a cycle)."""
        return self._events

    # Operations

    def _buffer(self, resource: object) -> tuple[memoryview, int]:
        """Validate a resource; return its memory view and size in bytes."""
        try:
            memory = memoryview(resource)  # type: ignore[arg-type]
        except TypeError:
            kind = type(resource).__name__
            raise TypeError(
                f"a transfer resource must support the buffer protocol, not {kind}"
            ) from None
        if not memory.contiguous:
            raise BufferError("a transfer resource must be contiguous")
        if self._polarity == lib.TR_INPUT and memory.readonly:
            raise TypeError("an input transit needs a writable buffer (bytearray, array, ...)")
        return memory.cast("B"), memory.nbytes

    def _pinned(self, resource: object) -> object:
        """The object whose memory the core transfers with (a resource's own
        buffer, for resources that are not buffers themselves)."""
        return resource

    def _take_report(self, report: Any, events: int) -> None:
        """Record what a cycle's report says beyond the transferred slice."""

    def _forget_report(self) -> None:
        """Forget what :meth:`_take_report` recorded: the cycle closed."""

    def acquire(self, resource: object) -> None:
        """Give the transit a transfer resource.

        In a synchronous Traffic the core transfers with it from the next
        cycle on.  In a threaded one (trio, anyio) it is the buffer that
        requests without one use: ``await traffic.recv_into(transit)``.

        A stream's transit also takes a :class:`FileRegion` (a synchronous
        Traffic's only: a threaded one moves files by request).

        Raises ``TypeError`` for a read-only buffer on an input transit,
        ``BufferError`` for a busy one (a resource is held and not exhausted),
        :class:`~traffic.errors.TransitClosedError` after termination.
        """
        if isinstance(resource, FileRegion):
            self._acquire_region(resource)
            return
        traffic = self._traffic
        if traffic is None and not self.terminated:
            # Recorded for later: a synchronous Traffic takes it when it
            # acquires the transit; a threaded one (trio, anyio) uses it for
            # requests without a buffer of their own.
            self._buffer(resource)
            self._resource = resource
            return
        traffic = self._in_traffic()
        memory, _ = self._buffer(resource)
        if traffic.threaded:
            self._resource = resource
            return
        # Exported from the resource itself, not from a memoryview of it,
        # and only by the requests, which release the export (see
        # traffic._requests).
        rc = traffic.requests.acquire(self, self._pinned(resource), self._polarity == lib.TR_INPUT)
        if rc == -errno.EBUSY:
            raise BufferError(
                "the transit's resource is not exhausted yet; acquire after its exhaust event"
            )
        if rc == -errno.EINVAL:
            raise RuntimeError("a threaded Traffic takes requests (Traffic.request), not resources")
        check(rc, "acquire")
        self._resource = resource
        self._memory = memory if self._itemsize == 1 else memory.cast("i")

    def _acquire_region(self, region: FileRegion) -> None:
        """:meth:`acquire` of a :class:`FileRegion`: checked (as
        :func:`traffic.send_file` checks) before the core gets it."""
        if self._type not in (lib.TR_OCTETS, lib.TR_DESCRIPTORS):
            raise TypeError(
                "a FileRegion is a stream's resource (an Octets or Descriptors transit), "
                f"not a {type(self).__name__} transit's"
            )
        if region._region is not None:
            raise ValueError("the FileRegion is held by a transit until its end is reported")
        traffic = self._traffic
        if traffic is None and not self.terminated:
            # Checked now, taken when the transit enters a Traffic (as memory).
            region._resolve(self._polarity)
            self._resource = region
            return
        traffic = self._in_traffic()
        if traffic.threaded:
            raise RuntimeError(
                "a threaded Traffic moves files by request (Traffic.request_file, "
                "traffic.send_file), not as a resource"
            )
        resolved = region._resolve(self._polarity)
        rc = traffic.requests.acquire_file(self, resolved.fd, resolved.offset, resolved.count)
        if rc == -errno.EBUSY:
            raise BufferError(
                "the transit's resource is not exhausted yet; acquire after its exhaust event"
            )
        if rc == -errno.EINVAL:
            raise TransitError(
                errno.EINVAL, "a FileRegion moves over a stream socket: this transit's is not one"
            )
        check(rc, "acquire")
        region._begin(resolved)
        traffic._regions[self._token] = region
        self._resource = region
        self._memory = None

    def terminate(self) -> None:
        """End the transit.  A connection's direction is shut down
        (half-close; also for the last transit, so that copies of the
        descriptor elsewhere see the end too); the descriptor is closed with
        the last transit.  A termination event follows in the next cycle.
        Terminating twice does nothing."""
        self._check_fork()
        lib.tr_transit_terminate(self._c, 0)

    def disregard(self) -> None:
        """Terminate without shutdown: the connection survives in other
        processes holding the descriptor (a forked child's copy)."""
        self._check_fork()
        lib.tr_transit_terminate(self._c, 1)

    def _in_traffic(self) -> Traffic:
        traffic = self._traffic
        if traffic is None:
            if self.terminated:
                raise TransitClosedError()
            raise RuntimeError("the transit is not in traffic: Traffic.acquire() it first")
        traffic._check_usable()
        return traffic

    def _check_fork(self) -> None:
        if self._traffic is not None:
            self._traffic._check_fork()

    def __repr__(self) -> str:
        state = "terminated" if self.terminated else f"fd={self.fileno()}"
        return f"<{type(self).__name__} {self.polarity.name.lower()} {state}>"


class Octets(Transit):
    """A transit of bytes: reads into, or writes out of, a buffer."""

    __slots__ = ("_polarity",)
    _type = lib.TR_OCTETS

    @classmethod
    def from_fd(cls, fd: int, polarity: Polarity | int) -> Octets:
        """A transit over ``fd`` (a pipe end, a socket, a tty...).  Takes ownership.

        Raises ``TypeError`` for a non-int ``fd``, ``ValueError`` for a
        polarity that is not a :class:`Polarity`, and
        :class:`~traffic.errors.TransitError` (``EBADF``) for a descriptor
        that is not open (the caller keeps any descriptor a refusal leaves).
        """
        code = _polarity(polarity)
        transit = cls._create(fd, code)
        transit._polarity = code
        return transit

    @classmethod
    def wrap(cls, sock: socket.socket) -> tuple[Octets, Octets]:
        """(input, output) transits over a connected socket, which is detached.

        Both share one kernel point and one registration; terminating one
        shuts down its direction only.
        """
        if not isinstance(sock, socket.socket):
            raise TypeError(f"wrap() takes a socket.socket, not {type(sock).__name__}")
        if sock.fileno() < 0:
            raise TransitClosedError("the socket is closed")
        pair = cls._pair(sock.fileno())
        sock.detach()
        return pair

    @classmethod
    def pipe(cls) -> tuple[Octets, Octets]:
        """A new pipe: (input, output)."""
        read_fd, write_fd = os.pipe()
        try:
            receiver = cls.from_fd(read_fd, Polarity.INPUT)
        except BaseException:
            os.close(read_fd)
            os.close(write_fd)
            raise
        try:
            sender = cls.from_fd(write_fd, Polarity.OUTPUT)
        except BaseException:
            os.close(write_fd)
            raise
        return receiver, sender

    @classmethod
    def socketpair(
        cls, family: int = socket.AF_UNIX
    ) -> tuple[tuple[Octets, Octets], tuple[Octets, Octets]]:
        """A connected pair of sockets: ((input, output), (input, output))."""
        return wrap_socketpair(cls.wrap, *socket.socketpair(family))

    @classmethod
    def connect(cls, address: str | bytes | tuple[Any, ...]) -> tuple[Octets, Octets]:
        """(input, output) transits connecting to a TCP ``(host, port)`` or an AF_UNIX path.

        The connection is made without blocking: a refused or failed
        connection shows as the transits' termination with its errno.
        Name resolution (``getaddrinfo``) does block.  Raises ``TypeError``
        for an address of another shape, ``ValueError`` for a port outside
        0-65535.
        """
        address = _address(address)
        if isinstance(address, (str, bytes)):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            target: Any = address
        else:
            host, port = address[0], address[1]
            family, kind, proto, _, target = socket.getaddrinfo(
                host, port, type=socket.SOCK_STREAM
            )[0]
            sock = socket.socket(family, kind, proto)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock.setblocking(False)
            code = sock.connect_ex(target)
            if code not in (0, errno.EINPROGRESS, errno.EAGAIN):
                raise OSError(code, f"connect to {address!r}: {os.strerror(code)}")
            return cls.wrap(sock)
        except BaseException:
            sock.close()
            raise


def wrap_socketpair(
    wrap: Callable[[socket.socket], _P], a: socket.socket, b: socket.socket
) -> tuple[_P, _P]:
    """``(wrap(a), wrap(b))``; a socket not taken over is closed if either fails."""
    try:
        first = wrap(a)
    except BaseException:
        a.close()
        b.close()
        raise
    try:
        second = wrap(b)
    except BaseException:
        b.close()
        raise
    return first, second


class Sockets(Transit):
    """An input transit of accepted connections: fills an ``array('i')``
    with the descriptors of new connections (non-blocking, close-on-exec),
    which the receiver then owns."""

    __slots__ = ()
    _type = lib.TR_SOCKETS
    _itemsize = 4
    _polarity = lib.TR_INPUT

    @classmethod
    def from_fd(cls, fd: int) -> Sockets:
        """A transit over a listening socket's descriptor.  Takes ownership.

        Raises :class:`~traffic.errors.TransitError` with ``ENOTSOCK`` for a
        descriptor that is not a socket (a pipe, a file), ``EINVAL`` for a
        socket that is not listening, ``EBADF`` for one that is not open; the
        caller still owns the descriptor then.
        """
        try:
            return cls._create(fd, lib.TR_INPUT)
        except TransitError as exc:
            reasons = {
                errno.ENOTSOCK: "it is not a socket",
                errno.EINVAL: "it is not a listening stream socket (listen() first)",
            }
            if exc.errno in reasons:
                raise TransitError(
                    exc.errno,
                    f"a Sockets transit accepts on a listening socket: descriptor {fd} "
                    f"cannot, {reasons[exc.errno]}",
                ) from None
            raise

    @classmethod
    def wrap(cls, sock: socket.socket) -> Sockets:
        """A transit over a listening socket, which is detached."""
        if not isinstance(sock, socket.socket):
            raise TypeError(f"wrap() takes a socket.socket, not {type(sock).__name__}")
        if sock.fileno() < 0:
            raise TransitClosedError("the socket is closed")
        transit = cls.from_fd(sock.fileno())
        sock.detach()
        return transit

    @classmethod
    def listen(
        cls, address: str | bytes | tuple[Any, ...], backlog: int = DEFAULT_BACKLOG
    ) -> tuple[Sockets, Any]:
        """Listen on a TCP ``(host, port)`` or an AF_UNIX path.

        Returns the transit and the bound address (with the port chosen,
        for port 0).  Raises ``TypeError`` for an address of another shape,
        ``ValueError`` for a port outside 0-65535.
        """
        address = _address(address)
        if isinstance(address, (str, bytes)):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        else:
            family = socket.AF_INET6 if ":" in str(address[0]) else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
            sock.listen(backlog)
            bound = sock.getsockname()
            return cls.wrap(sock), bound
        except BaseException:
            sock.close()
            raise

    def _buffer(self, resource: object) -> tuple[memoryview, int]:
        memory, size = super()._buffer(resource)
        if not (isinstance(resource, array) and resource.typecode == "i"):
            raise TypeError(
                "a Sockets transit's resource is an array('i') to fill with descriptors"
            )
        return memory, size


#: Descriptors one message carries; a send of n descriptors needs
#: ``ceil(n / FDS_PER_MESSAGE)`` data bytes, one per message.
FDS_PER_MESSAGE = int(lib.TR_FDS_PER_MESSAGE)


def check_descriptor_message(size: int, count: int) -> None:
    """``ValueError`` unless ``size`` bytes can carry ``count`` descriptors:
    at most :data:`FDS_PER_MESSAGE` travel per message, with a byte each."""
    needed = -(-count // FDS_PER_MESSAGE)
    if size < needed:
        raise ValueError(
            f"{count} descriptors need at least {needed} data byte(s) to travel with "
            f"(one per message of at most {FDS_PER_MESSAGE}); got {size}"
        )


def descriptor_array(fds: object) -> array[int]:
    """An ``array('i')`` of the descriptors to send: ints (not bools) or
    objects with ``fileno()`` (files, sockets), as anyio's ``send_fds`` takes.

    Raises ``TypeError`` for anything else, and
    :class:`~traffic.errors.TransitError` (``EBADF``) for a negative number.
    """
    if isinstance(fds, array) and fds.typecode == "i":
        numbers = list(fds)
    else:
        try:
            items = list(fds)  # type: ignore[call-overload]
        except TypeError:
            raise TypeError(
                f"descriptors come as a sequence of ints, not {type(fds).__name__}"
            ) from None
        numbers = []
        for item in items:
            if isinstance(item, int) and not isinstance(item, bool):
                numbers.append(item)
            elif not isinstance(item, (bool, int)) and hasattr(item, "fileno"):
                numbers.append(int(item.fileno()))
            else:
                raise TypeError(
                    f"a descriptor to send is an int or has fileno(), not {type(item).__name__}"
                )
    for fd in numbers:
        if fd < 0:
            raise TransitError(errno.EBADF, f"cannot send descriptor {fd}: not an open descriptor")
        if fd > 0x7FFFFFFF:
            raise TransitError(errno.EBADF, f"cannot send descriptor {fd}: not an open descriptor")
    return array("i", numbers)


def _fds_error(rc: int) -> None:
    """Raise the clear exception for a descriptor the core could not duplicate."""
    if rc == -errno.EBADF:
        raise TransitError(errno.EBADF, _requests.BAD_DESCRIPTOR_MESSAGE)


class Descriptors(Octets):
    """A transit of descriptors, with bytes, over an AF_UNIX stream socket (SCM_RIGHTS).

    Its resource is a pair:

    - input: ``(bytearray(n), array('i', bytes(4 * k)))``: up to ``n`` bytes
      and up to ``k`` descriptors are received into them; descriptors beyond
      ``k`` are closed (never leaked).  Received descriptors are
      close-on-exec and belong to the receiver;
    - output: ``(data, fds)``: ``data`` bytes-like, ``fds`` a sequence of
      ints or objects with ``fileno()``.  The descriptors ride on the bytes,
      at most :data:`FDS_PER_MESSAGE` per message and at least one byte per
      message.  The sender's descriptors are never closed: the core sends
      duplicates, made when the resource is given.

    Without descriptors it moves bytes exactly as :class:`Octets` does
    (descriptors arriving then are closed), so a stream over AF_UNIX can use
    a Descriptors pair for everything.  In a synchronous cycle,
    :meth:`descriptors` lists what moved; in a threaded Traffic use
    :meth:`Traffic.request_fds`.
    """

    __slots__ = ("_fdarray", "_fdview")

    _type = lib.TR_DESCRIPTORS
    _fdarray: array[int] | None
    _fdview: list[int]

    @classmethod
    def _create(cls, fd: int, polarity: int, sibling: Transit | None = None) -> Descriptors:
        try:
            transit = super()._create(fd, polarity, sibling)
        except TransitError as exc:
            reasons = {
                errno.ENOTSOCK: "it is not a socket",
                errno.EAFNOSUPPORT: "it is not an AF_UNIX socket",
                errno.EPROTOTYPE: "it is not a SOCK_STREAM socket",
            }
            if exc.errno in reasons:
                raise TransitError(
                    exc.errno,
                    "a Descriptors transit passes descriptors over an AF_UNIX stream "
                    f"socket (SCM_RIGHTS): descriptor {fd} cannot carry one, "
                    f"{reasons[exc.errno]}",
                ) from None
            raise
        transit._fdarray = None
        transit._fdview = []
        return transit

    @classmethod
    def pipe(cls) -> tuple[Octets, Octets]:
        """Not for descriptors: pipes cannot carry them (use :meth:`socketpair`)."""
        raise TypeError("descriptors travel over AF_UNIX sockets, not pipes: use socketpair()")

    @classmethod
    def socketpair(
        cls, family: int = socket.AF_UNIX
    ) -> tuple[tuple[Descriptors, Descriptors], tuple[Descriptors, Descriptors]]:
        """A connected AF_UNIX pair: ((input, output), (input, output))."""
        return super().socketpair(family)  # type: ignore[return-value]

    def descriptors(self) -> list[int]:
        """The descriptors that moved in this cycle: received ones (now the
        caller's to close) or the caller's own that were sent."""
        return list(self._fdview)

    def _split(self, resource: object) -> tuple[object, array[int], int]:
        """Validate a (bytes, descriptors) resource: (data, fd array, size)."""
        if not (isinstance(resource, tuple) and len(resource) == 2):
            raise TypeError(
                "a Descriptors transit's resource is a pair: (bytearray, array('i')) "
                "to receive, (bytes, [descriptors]) to send"
            )
        data, fds = resource
        _, size = Transit._buffer(self, data)
        if self._polarity == lib.TR_INPUT:
            if not (isinstance(fds, array) and fds.typecode == "i"):
                raise TypeError("an input Descriptors resource receives into an array('i')")
            return data, fds, size
        numbers = descriptor_array(fds)
        check_descriptor_message(size, len(numbers))
        return data, numbers, size

    def acquire(self, resource: object) -> None:
        """Give the transit a (bytes, descriptors) pair; see the class text.

        Raises ``TypeError`` for a resource of the wrong shape or a
        descriptor that is not an int, ``ValueError`` for descriptors
        without data to carry them, :class:`~traffic.errors.TransitError`
        (``EBADF``) for a descriptor that is not open, and what
        :meth:`Transit.acquire` raises.  A :class:`FileRegion` is taken as
        by :meth:`Transit.acquire` (its bytes carry no descriptors).
        """
        if isinstance(resource, FileRegion):
            self._acquire_region(resource)
            return
        data, fds, _ = self._split(resource)
        traffic = self._traffic
        if traffic is None and not self.terminated:
            self._resource = resource
            return
        traffic = self._in_traffic()
        if traffic.threaded:
            self._resource = resource
            return
        rc = traffic.requests.acquire(self, data, self._polarity == lib.TR_INPUT, fds)
        if rc == -errno.EBUSY:
            raise BufferError(
                "the transit's resource is not exhausted yet; acquire after its exhaust event"
            )
        if rc == -errno.EINVAL:
            raise RuntimeError("a threaded Traffic takes requests (Traffic.request), not resources")
        _fds_error(rc)
        check(rc, "acquire")
        self._resource = resource
        self._memory = memoryview(data).cast("B")  # type: ignore[arg-type]
        self._fdarray = fds

    def _take_report(self, report: Any, events: int) -> None:
        fds = self._fdarray
        if events & lib.TR_EV_TRANSFER and fds is not None:
            self._fdview = fds[report.fd_start : report.fd_stop].tolist()
        else:
            self._fdview = []
        if events & (lib.TR_EV_EXHAUST | lib.TR_EV_FAULT | lib.TR_EV_TERMINATE):
            self._fdarray = None

    def _forget_report(self) -> None:
        self._fdview = []


_live_traffics: weakref.WeakSet[Traffic] = weakref.WeakSet()

#: The cycle thread's scheduling unless told otherwise (see Traffic.start):
#: measured best on echo and accept (docs/benchmark.rst), and it cannot starve.
DEFAULT_CYCLE_POLICY = "batch"


def cycle_policy() -> str:
    """The policy a threaded Traffic starts with: ``$TRAFFIC_CYCLE_POLICY``,
    else :data:`DEFAULT_CYCLE_POLICY`."""
    return os.environ.get("TRAFFIC_CYCLE_POLICY") or DEFAULT_CYCLE_POLICY


#: How many fork()s this process is from the first one: a Traffic made at an
#: older generation belongs to a parent.  Cheaper than os.getpid() (a system
#: call) on every check.
_generation = 0


def _refused_os_error(error: int) -> BaseException:
    if error == errno.EINVAL:
        return RuntimeError("requests need a threaded Traffic: call start() first")
    return TransitError(error, f"request: {os.strerror(error)}")


# The request methods' exceptions for the core's refusals (see _requests).
_REFUSALS: _requests.Refusals = {
    Refusal.TERMINATED: lambda _: TransitClosedError("request: transit is terminated"),
    Refusal.BUSY: lambda _: RuntimeError("another request of this transit is outstanding"),
    Refusal.BAD_DESCRIPTOR: lambda error: TransitError(error, _requests.BAD_DESCRIPTOR_MESSAGE),
    Refusal.OS_ERROR: _refused_os_error,
}


class Traffic:
    """The cycle owner: a kernel queue and the transits acquired into it.

    ``timeout`` (seconds, None: wait until an event or :meth:`wake`) is
    what ``with traffic:`` waits for events; :meth:`cycle` takes its own.
    A timeout that is not a number raises ``TypeError``, NaN ``ValueError``;
    a negative one polls.
    """

    def __init__(self, timeout: float | None = None) -> None:
        _timeout_ms(timeout)  # TypeError, ValueError before anything is made
        out = ffi.new("tr_traffic **")
        check(lib.tr_traffic_create(out), "cannot create a Traffic")
        self._c: Any = out[0]
        self.timeout = timeout
        self._pid = os.getpid()
        self._generation = _generation
        self._closed = False
        self._tokens = itertools.count(1)
        #: The threaded Traffic's requests (the trio and anyio layers' way
        #: into the core; see :mod:`traffic._requests`).
        self.requests = Requests(self._c)
        # Resources handed to the core, by transit token (also a synchronous
        # cycle's): the requests' exports, one dictionary.
        self._exports = self.requests.exports
        # The transits a synchronous cycle reports on, by token.  A threaded
        # Traffic's completions go to their requester instead, and its
        # transits are not kept here (a weak entry per transit costs memory
        # and time per connection).
        self._transits: weakref.WeakValueDictionary[int, Transit] = weakref.WeakValueDictionary()
        # The file regions the core holds, by transit token: settled when
        # the cycle reports their end, also of a transit its owner dropped.
        self._regions: dict[int, FileRegion] = {}
        self._seen: list[Transit] = []
        self._cycling: threading.Thread | None = None
        # Orders wake() (any thread) against close() destroying the C side.
        self._lifecycle = threading.Lock()
        self._report = ffi.new("tr_report *")
        # Closes a Traffic its owner dropped, and every live one at exit
        # (before the interpreter finalizes: the cycle thread must never
        # touch a buffer after Python has freed it).
        #
        # The finalizer also releases the requests' exports once the core is
        # gone.  It holds their dictionary, not the requests (whose on_close
        # leads back here, so the Traffic would never be collected): a
        # Traffic collected in a reference cycle with a caller's memoryview
        # and its export must not leave the export to the collector (see
        # traffic._requests).  Weak reference callbacks run before the
        # collector clears anything.
        self._finalizer = weakref.finalize(
            self, _destroy, self._c, self._pid, self.requests.exports
        )
        _live_traffics.add(self)

    # State

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def threaded(self) -> bool:
        """Whether the core's own cycle thread runs this Traffic's cycle."""
        return not self._closed and lib.tr_traffic_mode(self._c) == lib.TR_MODE_THREADED

    def _check_fork(self) -> None:
        if self._generation != _generation:
            raise RuntimeError(
                "this Traffic belongs to the parent process: after fork(), create a new Traffic"
            )

    def _check_usable(self) -> None:
        self._check_fork()
        if self._closed:
            raise TransitClosedError("the Traffic is closed")

    def acquire(self, transit: Transit) -> None:
        """Put ``transit`` in traffic.  A socket's two transits share one Traffic."""
        self._check_usable()
        if not isinstance(transit, Transit):
            raise TypeError(f"acquire() takes a Transit, not {type(transit).__name__}")
        token = next(self._tokens)
        rc = lib.tr_traffic_acquire(self._c, transit._c, token)
        if rc == -errno.EALREADY:
            return
        if rc == -errno.EBUSY:
            raise RuntimeError("the transit is already in another Traffic")
        if rc == -errno.EXDEV:
            raise RuntimeError("the transit's sibling (the other direction) is in another Traffic")
        check(rc, "acquire")
        transit._traffic = self
        transit._token = token
        if lib.tr_traffic_mode(self._c) == lib.TR_MODE_THREADED:
            return
        self._transits[token] = transit
        recorded = transit._resource
        if recorded is not None:
            transit._resource = None
            transit.acquire(recorded)

    # Synchronous cycles

    def __enter__(self) -> Traffic:
        self._enter(self.timeout)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._exit()

    def cycle(self, timeout: float | None = None) -> _Cycle:
        """``with traffic.cycle(timeout):`` is ``with traffic:`` with its own timeout."""
        return _Cycle(self, timeout)

    def _enter(self, timeout: float | None) -> None:
        self._check_usable()
        milliseconds = _timeout_ms(timeout)
        rc = lib.tr_cycle_enter(self._c, milliseconds)
        try:
            if rc == -errno.EINVAL:
                raise RuntimeError("a threaded Traffic's cycle runs in its own thread")
            if rc == -errno.EBUSY:
                raise RuntimeError(
                    "a cycle of this Traffic is already open (in this or another thread)"
                )
            if rc != -errno.EINTR:
                # EINTR: the wait ended for a signal; the cycle is empty
                # and Python's signal handlers run as it returns.
                check(rc, "cycle")
            self._cycling = threading.current_thread()
        except BaseException:
            if rc >= 0:
                lib.tr_cycle_exit(self._c)
            raise

    def _exit(self) -> None:
        if self._cycling is None:
            return
        # Reset the event state of the transits visited in this cycle.
        # Unvisited events stay in the core and open the next cycle.
        for transit in self._seen:
            transit._events = 0
            transit._view = None
            transit._forget_report()
            token = transit._token
            held = token in self._exports or token in self._regions
            if transit._traffic is self and not held:
                transit._resource = None
                transit._memory = None
        self._seen.clear()
        self._cycling = None
        if not self._closed:
            lib.tr_cycle_exit(self._c)

    def transfers(self) -> Iterator[Transit]:
        """The transits with events in the open cycle, each visited once."""
        if self._cycling is None:
            raise RuntimeError("transfers() is for the inside of a cycle: with traffic: ...")
        report = self._report
        regions = self._regions
        while not self._closed and lib.tr_cycle_take(self._c, report):
            token = report.token
            events = report.events
            region = regions.get(token) if regions else None
            if events & _ENDS:
                self.requests.end(token)  # the core is done with the resource
                if region is not None:
                    del regions[token]
            if region is not None:
                # Settled at its end, also for a transit dropped by its owner.
                span = region._took(report, events)
            transit = self._transits.get(token)
            if transit is None:
                continue  # dropped by its owner: nobody to tell
            transit._events = events
            memory = transit._memory
            if region is not None:
                transit._view = span
            elif events & lib.TR_EV_TRANSFER and memory is not None:
                size = transit._itemsize
                transit._view = memory[report.start // size : report.stop // size]
            else:
                transit._view = None
            transit._take_report(report, events)
            self._seen.append(transit)
            yield transit

    def wake(self) -> None:
        """End a wait of the current or next cycle early.  Safe from any thread."""
        with self._lifecycle:
            if not self._closed and self._pid == os.getpid():
                lib.tr_traffic_wake(self._c)

    # Threaded use (the trio and anyio layers)

    def start(self, policy: str | None = None) -> None:
        """Run the cycle in the core's own thread, ``traffic-cycle``, from now on.

        ``policy`` is the thread's scheduling (None: :func:`cycle_policy`):

        - ``"batch"`` (Linux ``SCHED_BATCH``, the default): a fair share of
          the CPU, but a wake-up never preempts the thread running there, so
          edges batch up while the owner's thread works, and under outside
          load it does not starve;
        - ``"normal"``: every edge may preempt the owner's thread;
        - ``"idle"`` (Linux ``SCHED_IDLE``): it runs only when its CPU has
          nothing else to do; under outside load it starves.

        Elsewhere than Linux every policy is the normal one.  Starting
        twice does nothing.
        """
        if policy is None:
            policy = cycle_policy()
        self._check_usable()
        policies = {
            "normal": lib.TR_CYCLE_NORMAL,
            "idle": lib.TR_CYCLE_IDLE,
            "batch": lib.TR_CYCLE_BATCH,
        }
        if policy not in policies:
            raise ValueError(f"policy must be one of {sorted(policies)}, not {policy!r}")
        if lib.tr_traffic_mode(self._c) == lib.TR_MODE_SYNCHRONOUS:
            raise RuntimeError("a synchronous Traffic cannot become threaded")
        rc = lib.tr_traffic_start(self._c, policies[policy])
        check(rc, "start")

    def completion_fileno(self) -> int:
        """The descriptor that is readable while completions wait to be collected."""
        self._check_usable()
        return int(lib.tr_traffic_completion_fd(self._c))

    def request(
        self, transit: Transit, resource: object, *, inline: bool = True
    ) -> tuple[int, int, int]:
        """Ask the core to transfer with ``resource``; returns (outcome, error, transferred).

        An input request completes when anything arrives, an output request
        when all of it is sent.  With ``inline``, the transfer is first tried
        in the calling thread.  ``TR_PENDING`` means a completion follows
        (through :meth:`collect`) and the resource stays pinned until then.
        """
        self._check_usable()
        self._check_mine(transit)
        transit._buffer(resource)
        done = self.requests.submit(
            transit,
            transit._pinned(resource),
            transit._polarity == lib.TR_INPUT,
            _REFUSALS,
            inline=int(inline),
        )
        if done is None:
            report = self.requests.report  # a partly done send's count
            return _requests.PENDING, report.error, report.stop
        _, outcome, error, transferred, _, _ = done
        return outcome, error, transferred

    def request_fds(
        self, transit: Descriptors, data: object, fds: object, *, inline: bool = True
    ) -> tuple[int, int, int, int]:
        """:meth:`request` for a :class:`Descriptors` transit: (outcome, error,
        bytes transferred, descriptors transferred).

        Output: ``data`` (at least one byte) and ``fds`` (ints or objects
        with ``fileno()``), duplicated now: the caller's descriptors stay
        open and may be closed at once.  Input: ``data`` a writable buffer,
        ``fds`` an ``array('i')`` whose length is how many descriptors may
        arrive (more are closed); on ``TR_DONE`` (or a completion's
        ``descriptors``) its first entries are the received descriptors,
        now the caller's.  Both stay pinned while the request is pending.
        """
        self._check_usable()
        self._check_mine(transit)
        if not isinstance(transit, Descriptors):
            raise TypeError("request_fds() needs a Descriptors transit")
        payload, numbers, _ = transit._split((data, fds))
        writable = transit._polarity == lib.TR_INPUT
        done = self.requests.submit(
            transit, payload, writable, _REFUSALS, numbers, inline=int(inline)
        )
        if done is None:
            report = self.requests.report  # a partly done send's counts
            return _requests.PENDING, report.error, report.stop, report.fd_stop
        _, outcome, error, transferred, _, descriptors = done
        return outcome, error, transferred, descriptors

    def request_file(
        self,
        transit: Octets,
        file: object,
        *,
        offset: int | None = None,
        count: int | None = None,
        inline: bool = True,
    ) -> tuple[int, int, int]:
        """Ask the core to transfer between a stream transit and a regular
        file: (outcome, error, transferred).

        An output transit sends ``count`` bytes of ``file`` from ``offset``
        (defaults: the file's position, to its end); an input one writes
        what arrives to ``file`` from its position until ``count`` bytes
        (None: until the stream ends).  ``file`` is a binary file object or
        a descriptor; the core works on a duplicate of it and never moves
        its position: the caller settles it from ``transferred``, which
        counts the bytes moved in every outcome, a completion's too.
        ``TR_FAULT`` is the file's failure: its errno, or
        ``TR_FILE_ENDED`` for a file that ended before the region.  The
        checks on ``file``, ``offset`` and ``count`` are those of
        :func:`traffic.send_file` and :func:`traffic.receive_file`.
        Nothing needs pinning while the request is pending.
        """
        self._check_usable()
        self._check_mine(transit)
        if transit._type not in (lib.TR_OCTETS, lib.TR_DESCRIPTORS):
            raise TypeError("request_file() needs an Octets (or Descriptors) transit")
        if transit._polarity == lib.TR_OUTPUT:
            region = _files.send_region(file, offset, count)
        else:
            if offset is not None:
                raise TypeError("a receive into a file starts at its position: no offset")
            region = _files.receive_region(file, count)
        done = self.requests.submit_file(
            transit, region.fd, region.offset, region.count, _REFUSALS, inline=int(inline)
        )
        if done is None:
            return _requests.PENDING, 0, self.requests.report.stop
        _, outcome, error, transferred, _, _ = done
        return outcome, error, transferred

    def _check_mine(self, transit: Transit) -> None:
        """Refuse a transit of another Traffic (or of none).

        The core would serve it, but the resource would be pinned here under
        a token of the other Traffic: a collision with one of ours would
        unpin a buffer the core still writes into.
        """
        _transit(transit)
        if transit._traffic is not self:
            if transit._traffic is None and transit.terminated:
                raise TransitClosedError()
            raise RuntimeError("the transit is not in this Traffic: Traffic.acquire() it first")

    def receive(
        self, transit: Transit, size: int, *, inline: bool = True
    ) -> tuple[int, int, bytes | None]:
        """Ask the core to receive up to ``size`` bytes into memory it
        allocates only when data arrives: (outcome, error, data).

        Nothing is held while the request waits, so thousands of idle
        receivers cost no buffers.  ``data`` is the received bytes for
        ``TR_DONE``; for ``TR_PENDING`` the completion's ``data`` carries them.
        ``size`` is clamped to :data:`MAX_RECEIVE`; ``TypeError`` for a
        non-int, ``ValueError`` below 1.
        """
        self._check_usable()
        self._check_mine(transit)
        if transit._polarity != lib.TR_INPUT or transit._type not in (
            lib.TR_OCTETS,
            lib.TR_DESCRIPTORS,
        ):
            raise ValueError("receive() needs an input Octets (or Descriptors) transit")
        if not isinstance(size, int) or isinstance(size, bool):
            raise TypeError(f"size is an int, not {type(size).__name__}")
        if size < 1:
            raise ValueError("size must be >= 1")
        size = min(size, MAX_RECEIVE)
        done = self.requests.allocate(transit, size, _REFUSALS, inline=int(inline))
        if done is None:
            return _requests.PENDING, 0, None
        _, outcome, error, _, data, _ = done
        return outcome, error, data

    def pin(self, transit: Transit, pin: object) -> None:
        """Keep ``pin`` (a cffi buffer) alive until the transit's pending
        request completes, is withdrawn, or the Traffic closes: the core may
        write into it from its thread after the requester's frame is gone."""
        _transit(transit)
        self.requests.pin(transit._token, pin)

    def unpin(self, transit: Transit) -> None:
        """Forget the transit's pin: the core let go of the memory."""
        _transit(transit)
        self.requests.unpin(transit._token)

    def withdraw(self, transit: Transit) -> tuple[int, int]:
        """Withdraw the transit's request: (TR_WITHDRAWN, transferred), or
        (TR_COMPLETING, 0) when the core is inside the system call for it or
        already done (the completion then follows through :meth:`collect`).

        Raises :class:`~traffic.errors.TransitError` (``ENOENT``) when no
        request of the transit is outstanding, ``RuntimeError`` for a
        synchronous Traffic (it takes no requests),
        :class:`~traffic.errors.TransitClosedError` once the Traffic is closed.
        """
        self._check_fork()
        self._check_mine(transit)
        outcome, transferred = self.requests.withdraw(transit)
        if outcome == -errno.ENOENT:
            if not self._closed and lib.tr_traffic_mode(self._c) != lib.TR_MODE_THREADED:
                raise RuntimeError("requests need a threaded Traffic: call start() first")
            raise TransitError(errno.ENOENT, "withdraw: no request of this transit is outstanding")
        check(outcome, "withdraw")
        return outcome, transferred

    def collect(self) -> list[Completion]:
        """Every completion waiting, in one call per batch."""
        return self.requests.collect()

    # Lifecycle

    def close(self) -> None:
        """Stop and join the cycle thread, terminate every transit, close
        every kernel point the Traffic owns.  Idempotent."""
        if self._closed:
            return
        if self._pid != os.getpid():
            self._abandon()
            return
        cycling = self._cycling
        if cycling is not None and cycling is not threading.current_thread():
            raise RuntimeError(
                "close() while another thread runs a cycle: wake() it and close there"
            )
        on_close, self.requests.on_close = self.requests.on_close, None
        if on_close is not None:
            on_close()  # the layer lets go of the descriptor (it may close us itself)
            if self._closed:
                return
        with self._lifecycle:
            self._closed = True
            self.requests.closed = True  # before the core's memory goes
            self._finalizer()
        self.requests.close()  # the cycle thread is joined: unpin
        for transit in list(self._transits.values()):
            transit._resource = None
            transit._memory = None
        # Regions whose end no cycle reported: settled after what was reported.
        while self._regions:
            self._regions.popitem()[1]._end(0)
        _live_traffics.discard(self)

    def _abandon(self) -> None:
        """In a forked child: close the child's copies, touch nothing shared."""
        if not self._closed:
            self._closed = True
            self.requests.closed = True
            self._finalizer()  # abandons: it sees the pid changed
            self.requests.close()
            # The file's position is shared with the parent: left alone.
            while self._regions:
                self._regions.popitem()[1]._end(0, settle=False)
            _live_traffics.discard(self)

    def __len__(self) -> int:
        """The transits in this Traffic that their owners still hold."""
        if self._closed:
            return 0
        return int(lib.tr_traffic_transits(self._c))

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("threaded" if self.threaded else "synchronous")
        return f"<Traffic {state} transits={len(self)}>"


class _Cycle:
    """``with traffic.cycle(timeout):``; see :meth:`Traffic.cycle`."""

    __slots__ = ("_timeout", "_traffic")

    def __init__(self, traffic: Traffic, timeout: float | None) -> None:
        self._traffic = traffic
        self._timeout = timeout

    def __enter__(self) -> Traffic:
        self._traffic._enter(self._timeout)
        return self._traffic

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._traffic._exit()


def _after_fork_in_child() -> None:
    global _generation
    _generation += 1
    for traffic in list(_live_traffics):
        traffic._abandon()


def _destroy(c: Any, pid: int, exports: dict[int, Any]) -> None:
    if os.getpid() == pid:
        lib.tr_traffic_destroy(c)
    else:
        lib.tr_traffic_abandon(c)
    _requests.release_all(exports)  # the cycle thread is joined (or never ran here)


os.register_at_fork(after_in_child=_after_fork_in_child)
