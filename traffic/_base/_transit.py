"""The transits: :class:`Transit` (what every transit does: its life in the
core, its resource, its events in a cycle), :class:`Octets` (bytes) and
:class:`Sockets` (accepted connections).

Imports the compiled core, :mod:`traffic.errors`, ``_checks`` and
``_file_region`` (a stream's transit takes a file region as its resource);
the Traffic only for its type.  Nothing of trio, anyio or asyncio.
"""

from __future__ import annotations

import errno
import os
import socket
from array import array
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from .._traffic import ffi, lib
from ..errors import TransitClosedError, TransitError, check
from ._checks import DEFAULT_BACKLOG, Polarity, _address, _descriptor, _polarity
from ._file_region import FileRegion

if TYPE_CHECKING:
    from ._the_traffic import Traffic

_T = TypeVar("_T", bound="Transit")
_P = TypeVar("_P")


def _transit(transit: object) -> None:
    """``TypeError`` unless ``transit`` is a :class:`Transit`."""
    if not isinstance(transit, Transit):
        raise TypeError(f"expected a Transit, not {type(transit).__name__}")


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
        # traffic._base._requests).
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
