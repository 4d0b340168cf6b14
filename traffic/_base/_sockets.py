"""What the trio and anyio socket layers share, below both of them.

The limits both layers apply, a socket-like view of a descriptor the core
owns, a socket's identity, the ``TCP_NODELAY`` policy of streams and
listeners, the busy guard, and a listener's queue of accepted connections.
It imports neither trio nor asyncio: each layer passes in the exception it
raises (trio's or anyio's ``BusyResourceError``).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket as _stdlib_socket
from array import array
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from ._requests import pin_descriptors

__all__ = [
    "ACCEPT_BACKOFF",
    "ACCEPT_BATCH",
    "ACCEPT_CAPACITY_ERRNOS",
    "DEFAULT_RECEIVE_SIZE",
    "MAX_RECEIVE_FDS",
    "AcceptQueue",
    "Guard",
    "SocketView",
    "accept_backoff",
    "claimed",
    "has_nodelay",
    "set_nodelay",
    "socket_identity",
    "wants_nodelay",
]

#: Bytes a receive without a size asks for (trio's ``SocketStream`` and
#: anyio's streams use the same), and the most any one receive asks for.
DEFAULT_RECEIVE_SIZE = 65536

#: Descriptors one accept request may collect; the rest wait in the kernel.
ACCEPT_BATCH = 64

#: The most descriptors one ``receive_fds`` makes room for; a larger
#: ``maxfds`` is clamped to it.  The core stops receiving once the room is
#: full, so what it does not take waits in the kernel for the next call.
MAX_RECEIVE_FDS = 4096

#: Accept errors that mean "out of resources for now": a serving loop
#: (trio's ``serve_listeners``, anyio's ``serve()``) backs off and retries,
#: as trio's own ``serve_listeners`` does.
ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})

#: Seconds a serving loop waits after such an error, as trio's.
ACCEPT_BACKOFF = 0.100

_SERVE_LOGGER = logging.getLogger("traffic.serve_listeners")

_INET = (_stdlib_socket.AF_INET, _stdlib_socket.AF_INET6)


def accept_backoff(exc: OSError) -> bool:
    """Whether a serving loop backs off from the accept error ``exc`` (out
    of descriptors or memory: logged at ERROR to the
    ``traffic.serve_listeners`` logger, as trio's ``serve_listeners`` logs
    it; the loop then sleeps :data:`ACCEPT_BACKOFF` and accepts again)
    rather than raise it."""
    if exc.errno not in ACCEPT_CAPACITY_ERRNOS:
        return False
    _SERVE_LOGGER.error(
        "accept returned %s (%s); retrying in %s seconds",
        errno.errorcode[exc.errno],
        os.strerror(exc.errno),
        ACCEPT_BACKOFF,
        exc_info=True,
    )
    return True


class SocketView:
    """A socket-like view of a descriptor the core owns.

    It answers ``getsockname``, ``getpeername``, ``getsockopt``,
    ``setsockopt``, ``family``, ``type``, ``proto`` and ``fileno``, never
    closes the descriptor, and raises ``OSError(EBADF)`` once the core has
    closed it.
    """

    __slots__ = ("_transit", "family", "proto", "type")

    def __init__(self, transit: Any, family: int, type: int, proto: int) -> None:
        self._transit = transit
        self.family = family
        self.type = type
        self.proto = proto

    def fileno(self) -> int:
        return int(self._transit.fileno())

    def _call(self, name: str, *args: Any) -> Any:
        fd = self._transit.fileno()
        if fd < 0:
            raise OSError(errno.EBADF, "the socket is closed")
        sock = _stdlib_socket.socket(self.family, self.type, self.proto, fileno=fd)
        try:
            return getattr(sock, name)(*args)
        finally:
            sock.detach()

    def getsockname(self) -> Any:
        return self._call("getsockname")

    def getpeername(self) -> Any:
        return self._call("getpeername")

    def getsockopt(self, level: int, option: int, buflen: int | None = None) -> Any:
        if buflen is None:
            return self._call("getsockopt", level, option)
        return self._call("getsockopt", level, option, buflen)

    def setsockopt(self, level: int, option: int, value: Any, optlen: int | None = None) -> None:
        if optlen is None:
            self._call("setsockopt", level, option, value)
        else:
            self._call("setsockopt", level, option, value, optlen)

    def __repr__(self) -> str:
        return f"<traffic.SocketView fd={self.fileno()} family={self.family!r}>"


def socket_identity(fd: int) -> tuple[_stdlib_socket.AddressFamily, _stdlib_socket.SocketKind, int]:
    """(family, type, proto) of the socket ``fd``, which stays open."""
    sock = _stdlib_socket.socket(fileno=fd)
    try:
        return sock.family, sock.type, sock.proto
    finally:
        sock.detach()


def has_nodelay(fd: int) -> bool:
    """Whether the TCP socket ``fd`` has TCP_NODELAY (False if it cannot tell)."""
    sock = _stdlib_socket.socket(fileno=fd)
    try:
        return bool(sock.getsockopt(_stdlib_socket.IPPROTO_TCP, _stdlib_socket.TCP_NODELAY))
    except OSError:
        return False
    finally:
        sock.detach()


def wants_nodelay(family: int) -> bool:
    """Whether a stream socket of ``family`` gets ``TCP_NODELAY``, as trio's
    and anyio's streams do: internet sockets."""
    return family in _INET


def set_nodelay(view: SocketView) -> bool:
    """Set ``TCP_NODELAY`` on an internet socket (see :func:`wants_nodelay`);
    whether it took (a socket that is not TCP after all, SCTP say, refuses
    it, and that is ignored as trio ignores it)."""
    try:
        view.setsockopt(_stdlib_socket.IPPROTO_TCP, _stdlib_socket.TCP_NODELAY, 1)
    except OSError:
        return False
    return True


class Guard:
    """One task at a time (trio's ``ConflictDetector``, anyio's
    ``ResourceGuard``): ``with guard:`` raises what ``busy()`` makes if
    another task is inside."""

    __slots__ = ("_busy", "_held")

    def __init__(self, busy: Callable[[], BaseException]) -> None:
        self._busy = busy
        self._held = False

    def __enter__(self) -> None:
        if self._held:
            raise self._busy()
        self._held = True

    def __exit__(self, *exc: object) -> None:
        self._held = False


@contextlib.contextmanager
def claimed(stream: Any, flag: str, busy: Callable[[], BaseException]) -> Iterator[None]:
    """A stream's direction for one task, by its bare busy flag (``flag``:
    the attribute's name), as its hot path (send, receive) takes it inline
    without a guard object: raises ``busy()`` if another task has it."""
    if getattr(stream, flag):
        raise busy()
    setattr(stream, flag, True)
    try:
        yield
    finally:
        setattr(stream, flag, False)


class AcceptQueue:
    """A listener's accepted connections, waiting to be handed out.

    The core accepts a batch at a time into :attr:`descriptors` (pinned in
    :attr:`pin`); :meth:`accepted` queues what a completed accept brought,
    and :meth:`popleft` hands out one descriptor with whether its stream
    needs its own ``TCP_NODELAY``.  Descriptors still queued when the
    listener closes are closed (:meth:`close`), never leaked.

    ``TCP_NODELAY`` is set on the listening socket (``view``): on Linux and
    the BSDs what it accepts inherits it, so the first accepted connection
    tells whether each stream still needs its own ``setsockopt``.
    """

    __slots__ = ("_nodelay", "_queue", "descriptors", "pin", "size")

    def __init__(self, view: SocketView) -> None:
        self.descriptors = array("i", bytes(4 * ACCEPT_BATCH))
        # Never released: an array, which the collector does not track.
        self.pin = pin_descriptors(self.descriptors, writable=True)
        self.size = len(self.descriptors) * self.descriptors.itemsize
        self._queue: deque[int] = deque()
        # None: the first accepted connection tells; True: every stream
        # sets its own (the listener refused it); False: nothing to set.
        self._nodelay: bool | None = False
        if wants_nodelay(view.family):
            self._nodelay = None if set_nodelay(view) else True

    def __bool__(self) -> bool:
        return bool(self._queue)

    def accepted(self, transferred: int) -> None:
        """Queue the descriptors a completed accept brought (``transferred``
        bytes of :attr:`descriptors`)."""
        self._queue.extend(self.descriptors[: transferred // 4])

    def discard(self, transferred: int) -> None:
        """Close the descriptors of an accept that completed after the
        listener closed."""
        for fd in self.descriptors[: transferred // 4]:
            os.close(fd)

    def popleft(self) -> tuple[int, bool]:
        """The next accepted descriptor, and whether its stream should set
        ``TCP_NODELAY`` itself."""
        fd = self._queue.popleft()
        nodelay = self._nodelay
        if nodelay is None:
            nodelay = self._nodelay = not has_nodelay(fd)
        return fd, nodelay

    def close(self) -> None:
        """Close every descriptor still queued."""
        queue = self._queue
        while queue:
            os.close(queue.popleft())
