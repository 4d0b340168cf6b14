"""The anyio layer's stream: :class:`TrafficSocketStream`, and its raw socket view.

The hot path is here: :meth:`TrafficSocketStream.receive` and
:meth:`~TrafficSocketStream.send` test their direction's flag inline and,
on trio, spell out the trio parking's park sequence (a coroutine level is
time on every transfer: docs/benchmark.rst); on asyncio they go through the
loop's parking, whose wait takes the deadline.  Bytes (and descriptors) of
a receive cancelled after they arrived are kept for the next receive.
Descriptor passing on ``AF_UNIX`` streams is
:mod:`traffic._anyio._unix_stream`.

Imports anyio, ``traffic._anyio._adopt``, ``_errors``, ``_parking`` and
``_asyncio_parking``, ``traffic._base._requests``, ``traffic._base._sockets``,
``traffic._base._files`` and ``traffic._base``; ``traffic._trio_parking``
only when the first stream is made on trio.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Coroutine
from typing import Any, cast

import anyio
import anyio.abc
import anyio.lowlevel

from .._base import _files
from .._base._descriptors import Descriptors
from .._base._requests import DONE, TERMINATED, Result, check_buffer, protected
from .._base._sockets import (
    DEFAULT_RECEIVE_SIZE,
    SocketView,
    claimed,
    set_nodelay,
    socket_identity,
    wants_nodelay,
)
from .._base._transit import Octets, Transit
from ._adopt import FromSocket, SocketChecks
from ._asyncio_parking import _AsyncioParking
from ._errors import _REFUSALS, _broken, _broken_error, _busy_receive, _busy_send
from ._parking import _Parking, _parking

# The trio parking's functions the hot path parks with, bound when the first
# stream is made on trio (this module never imports trio itself).  Module
# globals, made here so that binding them adds no key: a call through an
# attribute of the parking object would be looked up generically each time.
_checkpoint_if_cancelled: Any = None
_cancel_shielded_checkpoint: Any = None
_wait_task_rescheduled: Any = None
_Parked: Any = None


def _bind_trio() -> None:
    """Bind the hot path's trio parking functions (the first stream made on trio)."""
    global _checkpoint_if_cancelled, _cancel_shielded_checkpoint
    global _wait_task_rescheduled, _Parked
    from .. import _trio_parking as parking

    _checkpoint_if_cancelled = parking.checkpoint_if_cancelled
    _cancel_shielded_checkpoint = parking.cancel_shielded_checkpoint
    _wait_task_rescheduled = parking.wait_task_rescheduled
    _Parked = parking.Parked


async def _trio_wait_within(delivery: Any, transit: Transit, timeout: float) -> Result:
    """On trio, the completion of the transit's parked request, waited for
    at most ``timeout`` seconds (``TimeoutError``; the abort withdraws the
    request, or the completion that won the race is returned)."""
    with anyio.fail_after(timeout):
        result: Result = await _wait_task_rescheduled(_Parked(delivery, transit))
        return result


class RawSocketView(SocketView):
    """``SocketAttribute.raw_socket`` of traffic's streams and listeners.

    A view of a descriptor the core owns: it never closes it, and raises
    ``OSError(EBADF)`` once the core has.  Beside the trio layer's
    ``SocketView`` methods it answers ``gettimeout()`` (``0.0``: the
    socket is non-blocking, as anyio's are) and ``getblocking()``, and
    ``setsockopt`` takes its arguments as ``socket.socket``'s does (where
    anyio's raw socket is one): ``(level, option, value)`` or ``(level,
    option, None, length)``, anything else a ``TypeError``.
    """

    __slots__ = ()

    def setsockopt(self, *args: Any) -> None:
        self._call("setsockopt", *args)

    def gettimeout(self) -> float:
        return 0.0

    def getblocking(self) -> bool:
        return False


class TrafficSocketStream(FromSocket, anyio.abc.SocketStream):
    """A connected stream socket whose transfers traffic's core performs.

    Made by :func:`connect_tcp`, a listener's ``accept()`` or
    :meth:`from_socket`, which takes a connected ``SOCK_STREAM`` socket.
    Semantics are anyio's ``SocketStream``'s; see the module's text for
    cancellation and ``raw_socket``.
    """

    _socket_checks = SocketChecks(connected=True)

    _parking: _Parking
    _receiver: Octets
    _sender: Octets

    def __init__(
        self,
        fd: int,
        identity: tuple[socket.AddressFamily, socket.SocketKind, int] | None = None,
        nodelay: bool = True,
    ) -> None:
        """Take ownership of the connected stream socket ``fd`` (also on failure).

        ``identity`` is (family, type, proto) when the caller knows it (a
        listener's accepted connections have its own), sparing the probe;
        ``nodelay`` False when ``fd`` already has TCP_NODELAY (inherited
        from a listener that has it)."""
        try:
            family, kind, proto = identity or socket_identity(fd)
            if kind != socket.SOCK_STREAM:
                raise ValueError(f"socket type mismatch: expected SOCK_STREAM, got {kind.name}")
            parking = _parking()
            if parking.trio is not None and _Parked is None:
                _bind_trio()
        except BaseException:
            os.close(fd)
            raise
        # AF_UNIX: a Descriptors pair for bytes and descriptors alike (a
        # kernel point carries one transit per polarity; see send_fds).
        kinds = Descriptors if family == socket.AF_UNIX else Octets
        receiver, sender = kinds._pair(fd)  # owns fd, also if it fails
        parking.traffic.acquire(receiver)
        parking.traffic.acquire(sender)
        self._parking = parking
        self._receiver = receiver
        self._sender = sender
        self._view = RawSocketView(receiver, family, kind, proto)
        self._closed = False
        # One task per direction (anyio's ResourceGuard), kept as two bare
        # flags: send and receive test and set them inline (the hot path),
        # where a guard would be two Python calls per transfer.
        self._receiving = False
        self._sending = False
        # Bytes (and descriptors, AF_UNIX) whose receive was cancelled after they arrived.
        self._pending = bytearray()
        self._pending_fds: list[int] = []
        if nodelay and wants_nodelay(family):
            set_nodelay(self._view)

    @property
    def _raw_socket(self) -> socket.socket:
        return self._view  # type: ignore[return-value]  # a view; see RawSocketView

    def _known_readable(self) -> bool | None:
        """Whether a receive would return at once, where traffic knows it
        without asking the kernel: True for a closed stream, bytes kept
        from a cancelled receive (or on their way to it), or an input that
        already ended; None when only the kernel knows (nothing of the
        stream's own is waiting: poll its descriptor)."""
        if self._closed or self._pending:
            return True
        receiver = self._receiver
        if receiver._token in self._parking.late or receiver.terminated:
            return True
        return None

    def _stash(self, done: Result) -> None:
        """Keep the bytes of a receive that was cancelled after it happened."""
        _, outcome, _, _, data, _ = done
        if outcome == DONE and not self._closed and data:
            self._pending += data

    def receive(self, max_bytes: int = DEFAULT_RECEIVE_SIZE) -> Coroutine[Any, Any, bytes]:
        """Receive at most ``max_bytes`` bytes (at least one).  Awaited, as anyio's.

        Raises ``ValueError`` for ``max_bytes < 1``, ``anyio.EndOfStream``
        once the peer has sent EOF, ``anyio.ClosedResourceError`` after
        :meth:`aclose` (also when it closes the stream during the receive),
        ``anyio.BrokenResourceError`` (from the ``OSError``) if the
        connection broke, ``anyio.BusyResourceError`` if another task is
        receiving.  Cancelled after the bytes arrived, it keeps them for the
        next receive.  ``TypeError`` for a ``max_bytes`` that is not an int.
        """
        # A plain method returning the coroutine, as __anext__ does: the
        # receive is the hot path, and a coroutine level costs time on every
        # resumption (anyio's __anext__ awaits receive(), which would await
        # this).
        return self._receive(max_bytes, anyio.EndOfStream, None)

    def __anext__(self) -> Coroutine[Any, Any, bytes]:
        """The next chunk of ``async for``: :meth:`receive`, ending at EOF."""
        return self._receive(DEFAULT_RECEIVE_SIZE, StopAsyncIteration, None)

    # protected: on trio a KeyboardInterrupt waits for the next checkpoint
    # rather than strand a request in the core (see _requests.protected).
    @protected
    async def _receive(self, max_bytes: int, end: type[Exception], timeout: float | None) -> bytes:
        """:meth:`receive`, raising ``end`` at EOF.  With a ``timeout``, a
        receive that has to wait for data waits at most that long and
        raises ``TimeoutError`` (nothing is lost: as a cancellation); one
        that finds data at once costs no deadline (httpcore's reads: see
        traffic.integrations)."""
        if not isinstance(max_bytes, int):
            raise TypeError(f"max_bytes must be an integer, not {type(max_bytes).__name__}")
        if max_bytes < 1:
            raise ValueError("max_bytes must be a positive integer")
        if self._receiving:
            raise _busy_receive()
        self._receiving = True
        try:
            if self._closed:
                raise anyio.ClosedResourceError
            if self._parking.late:
                # A cancelled receive's bytes may still be on their way: they
                # come before anything received after them.
                await self._parking.settle(self._receiver)
                if self._closed:
                    raise anyio.ClosedResourceError
            pending = self._pending
            if pending:
                await anyio.lowlevel.checkpoint()
                if self._closed:
                    raise anyio.ClosedResourceError
                chunk = bytes(pending[:max_bytes])
                del pending[:max_bytes]
                return chunk
            # No buffer of the stream's own: tried at once into the run's
            # scratch, and if it waits the core allocates one when data
            # arrives, so a waiting receive holds no memory.
            size = min(max_bytes, DEFAULT_RECEIVE_SIZE)
            parking = self._parking
            on_trio = parking.trio
            if on_trio is not None:
                # The park sequence of the trio parking's transfer, spelled
                # out as in TrafficStream.receive_some: a coroutine level is
                # time on every receive (docs/benchmark.rst).
                await _checkpoint_if_cancelled()
                receiver = self._receiver
                done = on_trio.requests.receive(receiver, size, _REFUSALS)
                if done is None:
                    if timeout is None:
                        done = await _wait_task_rescheduled(_Parked(on_trio.delivery, receiver))
                    else:
                        done = await _trio_wait_within(on_trio.delivery, receiver, timeout)
                else:
                    await _cancel_shielded_checkpoint()
            else:
                # Not trio: the asyncio parking, whose wait takes the deadline.
                asyncio_parking = cast(_AsyncioParking, parking)
                done = await asyncio_parking.receive(self._receiver, size, self._stash, timeout)
            if self._closed:
                raise anyio.ClosedResourceError
            _, outcome, error, _, data, _ = done
            if outcome == DONE and data is not None:
                return data  # bytes, from the scratch or the core
            if outcome == TERMINATED:
                if error:
                    _broken(error)
                raise end
            raise anyio.ClosedResourceError
        finally:
            self._receiving = False

    def send(self, item: bytes) -> Coroutine[Any, Any, None]:
        """Send all of ``item`` (any bytes-like object; not copied).  Awaited,
        as anyio's.

        Raises ``anyio.ClosedResourceError`` after :meth:`aclose` or
        :meth:`send_eof`, ``anyio.BrokenResourceError`` (from the
        ``OSError``) if the peer is gone, ``anyio.BusyResourceError`` if
        another task is sending, ``TypeError`` for an object that is not
        bytes-like.  Cancelled, it may have sent part of ``item`` (as
        anyio's own streams may); the stream should then be closed.
        """
        # A plain method returning the coroutine, as receive.
        return self._send(item, None)

    @protected
    async def _send(self, item: bytes, timeout: float | None) -> None:
        """:meth:`send`; with a ``timeout``, a send that has to wait for room
        waits at most that long (``TimeoutError``), as :meth:`_receive`."""
        if self._sending:
            raise _busy_send()
        self._sending = True
        try:
            if self._closed:
                raise anyio.ClosedResourceError
            check_buffer(item, False)  # not writable (positional: cheaper)
            parking = self._parking
            on_trio = parking.trio
            if on_trio is not None:
                # Spelled out as in _receive (and TrafficStream.send_all);
                # the memory is exported in submit, after the checkpoint.
                await _checkpoint_if_cancelled()
                sender = self._sender
                done = on_trio.requests.submit(sender, item, False, _REFUSALS)
                if done is None:
                    if timeout is None:
                        done = await _wait_task_rescheduled(_Parked(on_trio.delivery, sender))
                    else:
                        done = await _trio_wait_within(on_trio.delivery, sender, timeout)
                else:
                    await _cancel_shielded_checkpoint()
            else:
                asyncio_parking = cast(_AsyncioParking, parking)  # not trio
                done = await asyncio_parking.transfer(
                    self._sender, item, False, _ignore, None, timeout
                )
            if done[1] != DONE:  # the outcome
                _sent(done, self._closed)
        finally:
            self._sending = False

    @protected
    async def send_file(
        self, file: Any, *, offset: int | None = None, count: int | None = None
    ) -> int:
        """Send ``count`` bytes of ``file`` from ``offset`` (default: its
        position, to its end); return the bytes sent.  The core sends them
        itself (``sendfile(2)`` where the system has it).  In every
        outcome, cancellation included, the file's position ends just after
        the last byte sent.  The trio layer's :func:`traffic.send_file`
        says what ``file`` may be and what is refused before anything is
        sent (``ValueError``, ``TypeError``, ``io.UnsupportedOperation``).

        Raises :class:`~traffic.errors.FileEndedError` if the file was
        truncated while being sent, ``OSError`` if reading it failed (the
        stream is intact), else as :meth:`send`.
        """
        with claimed(self, "_sending", _busy_send):
            if self._closed:
                raise anyio.ClosedResourceError
            region = _files.send_region(file, offset, count)
            return await self._transfer_region(self._sender, region, sending=True)

    @protected
    async def receive_file(self, file: Any, *, count: int | None = None) -> int:
        """Write what arrives to ``file``, from its position, until ``count``
        bytes (None: until the peer ends the stream); return the bytes
        written (0 if the stream had ended: no ``EndOfStream``).  Bytes the
        stream already holds from a cancelled receive are written first.
        The file's position ends just after the last byte written, in every
        outcome.  A failure to write the file (``OSError``: ``ENOSPC``...)
        keeps the bytes it did not take for the next receive.
        """
        with claimed(self, "_receiving", _busy_receive):
            if self._closed:
                raise anyio.ClosedResourceError
            region = _files.receive_region(file, count)
            if self._parking.late:
                await self._parking.settle(self._receiver)
                if self._closed:
                    raise anyio.ClosedResourceError
            held = self._write_pending(region)
            if held and region.count == 0:
                await anyio.lowlevel.checkpoint()
                return held
            written = held + await self._transfer_region(self._receiver, region, sending=False)
            if self._closed:
                raise anyio.ClosedResourceError
            return written

    def _write_pending(self, region: _files.Region) -> int:
        """Write the bytes kept from a cancelled receive at the region's
        start, and move the region past them; return how many."""
        pending = self._pending
        written = 0
        try:
            while pending and written < region.count:
                chunk = pending[: region.count - written]
                if region.append:
                    n = os.write(region.fd, chunk)
                else:
                    n = os.pwrite(region.fd, chunk, region.offset + written)
                del pending[:n]
                written += n
        finally:
            if written:
                region.submitted = True
                region.settle(written)
        region.offset += written
        region.moved = 0
        region.submitted = False
        if region.count != _files.UNTIL_END:
            region.count -= written
        return written

    async def _transfer_region(self, transit: Octets, region: _files.Region, sending: bool) -> int:
        """Move the region and say how much moved; the file's position is
        settled after what moved in every outcome."""
        try:
            if region.count == 0:
                await anyio.lowlevel.checkpoint()  # nothing left to send
                return 0
            done = await self._parking.transfer_file(transit, region)
            region.moved = done[3]  # the bytes moved
        finally:
            region.settle()
        if done[1] != DONE and self._closed:
            raise anyio.ClosedResourceError
        return _files.conclude(done, region, sending, _broken_error, anyio.ClosedResourceError)

    async def send_eof(self) -> None:
        """Shut down the sending direction (half-close); receiving goes on.

        Idempotent.  Raises ``anyio.ClosedResourceError`` after :meth:`aclose`.
        """
        if self._closed:
            raise anyio.ClosedResourceError
        self._sender.terminate()
        await anyio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        """Close the stream; operations waiting on it raise
        ``anyio.ClosedResourceError``.  Idempotent; closes even when cancelled."""
        if not self._closed:
            self._closed = True
            self._pending.clear()
            self._receiver.terminate()
            self._sender.terminate()
            self._parking.wake(self._receiver)
            self._parking.wake(self._sender)
        await anyio.lowlevel.checkpoint()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"fd={self._receiver.fileno()}"
        return f"<traffic.anyio_backend.{type(self).__name__} {state}>"


def _sent(done: Result, closed: bool) -> None:
    """Nothing for a send that went out whole; else the exception it ended in."""
    _, outcome, error, _, _, _ = done
    if outcome == DONE:
        return
    if closed or outcome != TERMINATED:
        raise anyio.ClosedResourceError
    _broken(error or errno.EPIPE)


def _ignore(done: Result) -> None:
    """A cancelled send's completion: what went out is out."""
