"""The trio layer's stream: :class:`TrafficStream`.

Also the busy errors of a stream's two directions (``send_fds`` and
``receive_fds`` raise them too, under the stream's guards) and
``_detach``, which takes the descriptor out of a socket object (for the
listener and the datagram sockets too).

Imports trio, ``traffic._trio._primitives``, ``traffic._trio_parking``,
``traffic._base._requests``, ``traffic._base._sockets``, ``traffic._base._files`` and
``traffic._base``.
"""

from __future__ import annotations

import os
import socket as _stdlib_socket
from typing import Any

import trio

from .._base import _files
from .._base._descriptors import Descriptors
from .._base._requests import DONE, check_buffer, protected
from .._base._sockets import (
    DEFAULT_RECEIVE_SIZE,
    SocketView,
    claimed,
    set_nodelay,
    socket_identity,
    wants_nodelay,
)
from .._base._transit import Octets
from .._trio_parking import (
    Parked,
    cancel_shielded_checkpoint,
    checkpoint_if_cancelled,
    wait_task_rescheduled,
)
from ._primitives import _REFUSALS, _delivery, _received, _sent, _transfer_region


def _busy_send() -> trio.BusyResourceError:
    return trio.BusyResourceError("another task is using this stream for send")


def _busy_receive() -> trio.BusyResourceError:
    return trio.BusyResourceError("another task is using this stream for receive")


def _detach(
    sock: Any, what: str, listening: bool = False, kind: int = _stdlib_socket.SOCK_STREAM
) -> int:
    """Take the descriptor out of a stdlib or trio socket object.

    Checked before it is taken, so that a refused socket stays the
    caller's, open: ``TypeError`` for a non-socket or a socket that is not
    of type ``kind`` (``SOCK_STREAM`` unless told), ``ValueError`` for a
    listener's socket that is not listening, ``trio.ClosedResourceError``
    for a closed socket.
    """
    # Sockets only: a buffered file has detach() and fileno() too, and
    # detaching it would take its raw stream.
    if not isinstance(sock, (_stdlib_socket.socket, trio.socket.SocketType)):
        raise TypeError(f"expected a socket object, not {type(sock).__name__}")
    if sock.fileno() < 0:
        raise trio.ClosedResourceError("the socket is closed")
    if getattr(sock, "type", kind) != kind:
        raise TypeError(f"{what} needs a {_stdlib_socket.SocketKind(kind).name} socket")
    if listening and hasattr(sock, "getsockopt"):
        try:
            accepting = sock.getsockopt(_stdlib_socket.SOL_SOCKET, _stdlib_socket.SO_ACCEPTCONN)
        except OSError:
            accepting = 1  # cannot tell: the core's check decides
        if not accepting:
            raise ValueError(f"{what} needs a listening socket: call listen() first")
    return int(sock.detach())


class TrafficStream(trio.abc.HalfCloseableStream):
    """A connected stream socket whose transfers traffic's core performs.

    Mirrors ``trio.SocketStream``: construct it from a connected stream
    socket (stdlib or trio; the descriptor is detached and owned by the
    core), or get one from :func:`open_tcp_stream`, :func:`open_unix_stream`
    or a :class:`TrafficListener`.  TCP streams get ``TCP_NODELAY``, as in
    trio.  Must be created inside a trio run.

    An AF_UNIX stream is made of a :class:`~traffic.libkqueue.Descriptors`
    pair (a kernel point carries one transit per direction), so
    :func:`send_fds` and :func:`receive_fds` take it; its bytes travel with
    no descriptors, and descriptors arriving during :meth:`receive_some`
    are closed, never leaked.
    """

    # Slots, and the socket view made on first use: ten thousand idle
    # connections are ten thousand of these.
    __slots__ = (
        "_closed",
        "_delivery",
        "_identity",
        "_receiver",
        "_receiving",
        "_sender",
        "_sending",
        "_view",
    )

    def __init__(self, socket: Any) -> None:
        self._setup(_detach(socket, "TrafficStream"))

    @classmethod
    def _from_fd(
        cls, fd: int, identity: tuple[int, int, int] | None = None, nodelay: bool = True
    ) -> TrafficStream:
        """A stream owning ``fd``; closed here if it cannot be made one.

        ``identity`` is (family, type, proto) when the caller knows it (an
        accepted connection has its listener's), sparing the probe;
        ``nodelay`` False when the descriptor already has TCP_NODELAY (a
        connection accepted from a listener that has it inherits it)."""
        self = cls.__new__(cls)
        self._setup(fd, identity, nodelay)
        return self

    def _setup(
        self, fd: int, identity: tuple[int, int, int] | None = None, nodelay: bool = True
    ) -> None:
        # Ownership moves once: until Octets._pair succeeds, fd is ours to
        # close on failure; from then on the transits own it, and closing it
        # here too could close a descriptor number reused meanwhile.
        try:
            identity = identity or socket_identity(fd)
            family = identity[0]
            if identity[1] != _stdlib_socket.SOCK_STREAM:
                raise TypeError("TrafficStream needs a SOCK_STREAM socket")
            # AF_UNIX: a Descriptors pair, for bytes and descriptors alike
            # (one transit per polarity on a kernel point; see send_fds).
            kinds = Descriptors if family == _stdlib_socket.AF_UNIX else Octets
            receiver, sender = kinds._pair(fd)
        except BaseException:
            os.close(fd)
            raise
        delivery = _delivery()
        delivery.traffic.acquire(receiver)
        delivery.traffic.acquire(sender)
        self._delivery = delivery
        self._receiver = receiver
        self._sender = sender
        self._closed = False
        # Busy flags, one task at a time per direction (trio's
        # ConflictDetector), kept as two booleans rather than guard objects:
        # send_all and receive_some test and set them inline (the hot path),
        # and an idle connection holds no guard.
        self._sending = False
        self._receiving = False
        self._identity = identity
        self._view: SocketView | None = None
        if nodelay and wants_nodelay(family):
            set_nodelay(self.socket)

    @property
    def socket(self) -> SocketView:
        """A view of the socket: ``getsockname()``, ``getsockopt()``,
        ``fileno()``... (it never closes the descriptor)."""
        view = self._view
        if view is None:
            view = self._view = SocketView(self._receiver, *self._identity)
        return view

    def setsockopt(self, level: int, option: int, value: Any, length: int | None = None) -> None:
        """Set an option on the underlying socket (see ``socket.setsockopt``)."""
        self.socket.setsockopt(level, option, value, length)

    def getsockopt(self, level: int, option: int, buffersize: int | None = None) -> Any:
        """Read an option of the underlying socket (see ``socket.getsockopt``)."""
        return self.socket.getsockopt(level, option, buffersize)

    @protected
    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Send all of ``data``; see :func:`traffic.send_all` for cancellation.

        A checkpoint.  Raises ``trio.BusyResourceError`` if another task is
        sending, ``trio.ClosedResourceError`` after :meth:`aclose` or
        :meth:`send_eof`, ``trio.BrokenResourceError`` if the peer is gone.
        """
        if self._sending:
            raise _busy_send()
        self._sending = True
        try:
            if self._closed:
                raise trio.ClosedResourceError("the stream is closed")
            check_buffer(data, False)  # not writable (positional: cheaper)
            # The park sequence of _trio_parking.transfer, spelled out: this
            # and receive_some are the hot path, where a coroutine level
            # costs time per call and memory while parked.  The memory is
            # exported in submit, after the checkpoint (see _requests).
            await checkpoint_if_cancelled()
            sender = self._sender
            delivery = self._delivery
            done = delivery.requests.submit(sender, data, False, _REFUSALS)
            if done is None:
                done = await wait_task_rescheduled(Parked(delivery, sender))
            else:
                await cancel_shielded_checkpoint()
            if done[1] != DONE:  # the outcome
                _sent(done)
        finally:
            self._sending = False

    @protected
    async def send_file(
        self, file: Any, *, offset: int | None = None, count: int | None = None
    ) -> int:
        """Send ``count`` bytes of ``file`` from ``offset`` (default: its
        position, to its end); return the bytes sent.  The file's position
        ends after them in every outcome.  See :func:`traffic.send_file`.

        A checkpoint.  Raises ``trio.BusyResourceError`` if another task is
        sending, ``trio.ClosedResourceError`` after :meth:`aclose` or
        :meth:`send_eof`.
        """
        with claimed(self, "_sending", _busy_send):
            if self._closed:
                raise trio.ClosedResourceError("the stream is closed")
            region = _files.send_region(file, offset, count)
            return await _transfer_region(self._delivery, self._sender, region, sending=True)

    @protected
    async def receive_file(self, file: Any, *, count: int | None = None) -> int:
        """Write what arrives to ``file`` from its position until ``count``
        bytes or the end of the stream; return the bytes written.  See
        :func:`traffic.receive_file`.

        A checkpoint.  Raises ``trio.BusyResourceError`` if another task is
        receiving, ``trio.ClosedResourceError`` after :meth:`aclose`.
        """
        with claimed(self, "_receiving", _busy_receive):
            if self._closed:
                raise trio.ClosedResourceError("the stream is closed")
            region = _files.receive_region(file, count)
            written = await _transfer_region(self._delivery, self._receiver, region, sending=False)
            if self._closed:
                raise trio.ClosedResourceError("the stream was closed while receiving")
            return written

    async def wait_send_all_might_not_block(self) -> None:
        """Wait until the socket can take more data.  A checkpoint."""
        with claimed(self, "_sending", _busy_send):
            if self._closed:
                raise trio.ClosedResourceError("the stream is closed")
            fd = self._sender.fileno()
            if fd < 0 or self._sender.terminated:
                await trio.lowlevel.checkpoint()
                return
            self.socket  # noqa: B018  (made, so that aclose notifies trio)
            await trio.lowlevel.wait_writable(fd)

    async def send_eof(self) -> None:
        """Shut down the sending direction; receiving goes on.  A checkpoint.

        Idempotent.  Raises ``trio.ClosedResourceError`` after :meth:`aclose`.
        """
        with claimed(self, "_sending", _busy_send):
            if self._closed:
                raise trio.ClosedResourceError("the stream is closed")
            await trio.lowlevel.checkpoint()
            self._sender.terminate()

    @protected
    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Receive at most ``max_bytes`` (default 64 KiB); ``b""`` at EOF.

        A checkpoint.  Raises ``ValueError`` for ``max_bytes < 1``,
        ``trio.BusyResourceError`` if another task is receiving,
        ``trio.ClosedResourceError`` after :meth:`aclose`,
        ``trio.BrokenResourceError`` if the connection broke.
        """
        if self._receiving:
            raise _busy_receive()
        self._receiving = True
        try:
            if max_bytes is None:
                size = DEFAULT_RECEIVE_SIZE
            elif not isinstance(max_bytes, int):
                raise TypeError("max_bytes must be an integer")
            elif max_bytes < 1:
                raise ValueError("max_bytes must be >= 1")
            else:
                size = min(max_bytes, DEFAULT_RECEIVE_SIZE)
            if self._closed:
                raise trio.ClosedResourceError("the stream is closed")
            # No buffer of the stream's own: tried at once into the run's
            # scratch, and if it waits the core allocates one when data
            # arrives, so a parked receive holds no memory (idle connections).
            # The park sequence spelled out, as in send_all.
            await checkpoint_if_cancelled()
            receiver = self._receiver
            delivery = self._delivery
            done = delivery.requests.receive(receiver, size, _REFUSALS)
            if done is None:
                done = await wait_task_rescheduled(Parked(delivery, receiver))
            else:
                await cancel_shielded_checkpoint()
            if self._closed:
                raise trio.ClosedResourceError("the stream was closed while receiving")
            _, outcome, _, _, data, _ = done
            if outcome == DONE:
                return data  # type: ignore[return-value]  # bytes: from the core
            _received(done)
            return b""
        finally:
            self._receiving = False

    async def aclose(self) -> None:
        """Close the stream: operations parked on it wake with
        ``trio.ClosedResourceError``.  Idempotent; a checkpoint, and it
        closes even when cancelled."""
        self._close()
        await trio.lowlevel.checkpoint()

    def _close(self) -> None:
        """Close now (it never blocks); :meth:`aclose` without its checkpoint."""
        if self._closed:
            return
        self._closed = True
        if self._view is not None:
            # Its descriptor number went out (fileno()): someone may wait
            # on it with trio (wait_send_all_might_not_block does).  Only
            # then: notify_closing costs an epoll_ctl per connection.
            fd = self._receiver.fileno()
            if fd >= 0:
                trio.lowlevel.notify_closing(fd)
        # Closed as trio's SocketStream closes: no shutdown(2) first (the
        # peer sees the end all the same; a copy of the descriptor in
        # another process keeps the connection, as it would with trio).
        self._receiver.disregard()
        self._sender.disregard()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"fd={self._receiver.fileno()}"
        return f"<traffic.TrafficStream {state}>"
