"""The anyio layer's listeners: :class:`TrafficSocketListener` and its ``AF_UNIX`` kind.

The core accepts in batches (``AcceptQueue``): ``accept()`` hands out one
connection, ``serve()`` starts a handler per connection of a batch for one
checkpoint, and backs off instead of ending when the process is out of
descriptors or memory.  The connections of an accept cancelled after it
happened are kept for the next.

Imports anyio, ``traffic._anyio._stream``, ``_unix_stream``, ``_adopt``,
``_errors`` and ``_parking``, ``traffic._base._requests``, ``traffic._base._sockets``
and ``traffic._base``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from collections.abc import Callable
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel

from .._base._requests import DONE, FAULT, TERMINATED, Result, protected
from .._base._sockets import ACCEPT_BACKOFF, AcceptQueue, Guard, accept_backoff, socket_identity
from .._base._transit import Sockets
from ._adopt import FromSocket, SocketChecks, _identity_family
from ._errors import _broken
from ._parking import _parking
from ._stream import RawSocketView, TrafficSocketStream
from ._unix_stream import TrafficUNIXSocketStream


class TrafficSocketListener(FromSocket, anyio.abc.SocketListener):
    """A listening stream socket whose accepts traffic's core performs.

    ``accept()`` returns :class:`TrafficSocketStream`\\ s (``TCP_NODELAY``
    set, as anyio does); ``serve()`` is anyio's, one checkpoint per batch.
    :meth:`from_socket` takes a bound, listening stream socket, and makes
    a :class:`TrafficUNIXSocketListener` of an ``AF_UNIX`` one.
    """

    _socket_checks = SocketChecks(bound=True)
    _stream_class: type[TrafficSocketStream] = TrafficSocketStream

    def __init__(self, fd: int) -> None:
        """Take ownership of the listening socket ``fd`` (also on failure)."""
        try:
            family, kind, proto = socket_identity(fd)
            if kind != socket.SOCK_STREAM:
                raise ValueError(f"socket type mismatch: expected SOCK_STREAM, got {kind.name}")
            parking = _parking()
            transit = Sockets.from_fd(fd)
        except BaseException:
            os.close(fd)
            raise
        parking.traffic.acquire(transit)
        self._parking = parking
        self._transit = transit
        self._view = RawSocketView(transit, family, kind, proto)
        self._identity = (family, kind, proto)
        self._closed = False
        self._accept_guard = Guard(lambda: anyio.BusyResourceError("accepting connections from"))
        self._accepted = AcceptQueue(self._view)

    @classmethod
    def _adopt(cls, fd: int) -> TrafficSocketListener:
        """``from_socket``'s listener: an ``AF_UNIX`` socket's accepts
        :class:`TrafficUNIXSocketStream`\\ s."""
        if _identity_family(fd) == socket.AF_UNIX:
            return TrafficUNIXSocketListener(fd)
        return cls(fd)

    @property
    def _raw_socket(self) -> socket.socket:
        return self._view  # type: ignore[return-value]  # a view; see RawSocketView

    def _stash(self, done: Result) -> None:
        """Keep the connections of an accept that was cancelled after it happened."""
        _, outcome, _, transferred, _, _ = done
        if outcome == DONE:
            if self._closed:
                self._accepted.discard(transferred)
            else:
                self._accepted.accepted(transferred)

    async def accept(self) -> TrafficSocketStream:
        """Accept a connection.

        Raises ``anyio.ClosedResourceError`` after :meth:`aclose` (also
        when it closes the listener during the accept),
        ``anyio.BusyResourceError`` if another task is accepting, ``OSError``
        (EMFILE, ENFILE, ENOBUFS, ENOMEM) when the process or system is out
        of resources (the listener stays intact: back off and retry),
        ``anyio.BrokenResourceError`` (from the ``OSError``) if the kernel
        ended the listening socket.
        """
        with self._accept_guard:
            await self._fill()
            return self._stream()

    async def serve(
        self,
        handler: Callable[[anyio.abc.SocketStream], Any],
        task_group: anyio.abc.TaskGroup | None = None,
    ) -> None:
        """anyio's ``serve()``: a task running ``handler(stream)`` per
        connection, in ``task_group`` or an internal one; never returns.

        Every batch of connections the core accepted costs one checkpoint,
        not one per connection.  The handler closes its stream, as with
        anyio's own listeners.  Out of descriptors or memory (EMFILE,
        ENFILE, ENOBUFS, ENOMEM) it logs to the ``traffic.serve_listeners``
        logger and accepts again after 100 ms, as the trio layer's
        :func:`~traffic.trio_integration.serve_listeners` (and trio's own)
        does, where anyio's ``serve()`` would end with the ``OSError``.
        """
        async with contextlib.AsyncExitStack() as stack:
            if task_group is None:
                task_group = await stack.enter_async_context(anyio.create_task_group())
            while True:
                try:
                    streams = await self._accept_all()
                except OSError as exc:
                    # Out of descriptors or memory: the listener is intact;
                    # back off and accept again, as the trio layer's
                    # serve_listeners (anyio's own serve() would end).
                    if not accept_backoff(exc):
                        raise
                    await anyio.sleep(ACCEPT_BACKOFF)
                    continue
                _start_handlers(task_group, handler, streams)

    async def _accept_all(self) -> list[TrafficSocketStream]:
        """Every connection accepted so far, at least one: :meth:`accept`
        for a whole batch with one checkpoint (:meth:`serve`)."""
        with self._accept_guard:
            await self._fill()
            streams = []
            while self._accepted:
                # One at a time: if making a stream fails, the descriptors
                # not taken yet stay queued.
                streams.append(self._stream())
            return streams

    @protected
    async def _fill(self) -> None:
        """Make sure a connection is queued in ``_accepted``.  A checkpoint."""
        if self._closed:
            raise anyio.ClosedResourceError
        queue = self._accepted
        if queue:
            await anyio.lowlevel.checkpoint()
            if self._closed:
                raise anyio.ClosedResourceError
            return
        done = await self._parking.transfer_pinned(
            self._transit, queue.pin, queue.size, queue, self._stash
        )
        _, outcome, error, _, _, _ = done
        if outcome == DONE:
            self._stash(done)
        if self._closed:
            raise anyio.ClosedResourceError
        if outcome == FAULT:
            raise OSError(error, f"accept: {os.strerror(error)}")
        if outcome == TERMINATED:
            _broken(error or errno.EINVAL)
        if outcome != DONE:
            raise anyio.ClosedResourceError

    def _stream(self) -> TrafficSocketStream:
        """The stream of the next accepted descriptor (closed if that fails)."""
        fd, nodelay = self._accepted.popleft()
        return self._stream_class(fd, self._identity, nodelay)

    async def aclose(self) -> None:
        """Stop listening; connections accepted but not handed out are closed.
        Idempotent; closes even when cancelled."""
        if not self._closed:
            self._closed = True
            self._transit.terminate()
            self._parking.wake(self._transit)
            self._accepted.close()
        await anyio.lowlevel.checkpoint()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"fd={self._transit.fileno()}"
        return f"<traffic.anyio_backend.{type(self).__name__} {state}>"


def _start_handlers(
    task_group: anyio.abc.TaskGroup,
    handler: Callable[[anyio.abc.SocketStream], Any],
    streams: list[TrafficSocketStream],
) -> None:
    """A handler task per stream; the list is emptied.  The serving loop
    holds no stream while it waits for the next batch: a stream it held
    would outlive its handler (its transits alive, if closed) for as long
    as no connection comes."""
    for stream in streams:
        task_group.start_soon(handler, stream)
    streams.clear()


class TrafficUNIXSocketListener(TrafficSocketListener):
    """:class:`TrafficSocketListener` over an ``AF_UNIX`` socket; accepts
    :class:`TrafficUNIXSocketStream`\\ s."""

    _stream_class = TrafficUNIXSocketStream
