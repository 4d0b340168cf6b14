"""The trio layer's listener: :class:`TrafficListener`.

Imports trio, ``traffic._trio._primitives``, ``traffic._trio._stream``,
``traffic._trio_parking``, ``traffic._base._requests``, ``traffic._base._sockets``
and ``traffic._base``.
"""

from __future__ import annotations

import os
import socket as _stdlib_socket
from typing import Any

import trio

from .._base._requests import DONE, protected
from .._base._sockets import AcceptQueue, Guard, SocketView, socket_identity
from .._base._transit import Sockets
from .._trio_parking import transfer_pinned
from ._primitives import _REFUSALS, _accepted, _delivery
from ._stream import TrafficStream, _detach


class TrafficListener(trio.abc.Listener[TrafficStream]):
    """A listening stream socket whose accepts traffic's core performs.

    Mirrors ``trio.SocketListener``: ``.socket`` is a view of the listening
    socket (so ``trio.testing.open_stream_to_socket_listener`` works),
    :meth:`accept` returns :class:`TrafficStream`\\ s.
    """

    def __init__(self, socket: Any) -> None:
        fd = _detach(socket, "TrafficListener", listening=True)
        # Ownership moves once, to the transit (see TrafficStream._setup).
        try:
            family, kind, proto = socket_identity(fd)
            if kind != _stdlib_socket.SOCK_STREAM:
                raise TypeError("TrafficListener needs a SOCK_STREAM socket")
            transit = Sockets.from_fd(fd)
        except BaseException:
            os.close(fd)
            raise
        delivery = _delivery()
        delivery.traffic.acquire(transit)
        self._delivery = delivery
        self._transit = transit
        self._closed = False
        self._guard = Guard(
            lambda: trio.BusyResourceError("another task is already accepting on this listener")
        )
        self.socket = SocketView(transit, family, kind, proto)
        self._identity = (family, kind, proto)
        self._accepted = AcceptQueue(self.socket)

    @protected
    async def accept(self) -> TrafficStream:
        """Accept a connection.  A checkpoint.

        Raises ``OSError`` (EMFILE, ENFILE, ENOBUFS, ENOMEM) when out of
        resources, with the listener intact (``trio.serve_listeners`` backs
        off and retries); ``trio.ClosedResourceError`` after :meth:`aclose`;
        ``trio.BusyResourceError`` if another task is accepting.
        """
        with self._guard:
            await self._fill()
            return self._stream()

    @protected
    async def _accept_all(self) -> list[TrafficStream]:
        """Every connection accepted so far, at least one: :meth:`accept`
        for a whole batch with one checkpoint (``serve_listeners``)."""
        with self._guard:
            await self._fill()
            streams = []
            while self._accepted:
                # One at a time: if making a stream fails, the descriptors
                # not taken yet stay queued (closed by aclose), and the
                # streams made are closed when dropped.
                streams.append(self._stream())
            return streams

    @protected
    async def _fill(self) -> None:
        """Make sure a connection is queued.  A checkpoint."""
        if self._closed:
            raise trio.ClosedResourceError("the listener is closed")
        queue = self._accepted
        if queue:
            await trio.lowlevel.checkpoint()
            return
        done = await transfer_pinned(
            self._delivery, self._transit, queue.pin, queue.size, queue, _REFUSALS
        )
        if self._closed:
            if done[1] == DONE:  # the outcome
                queue.discard(done[3])  # transferred
            raise trio.ClosedResourceError("the listener was closed while accepting")
        queue.accepted(_accepted(done))

    def _stream(self) -> TrafficStream:
        """The stream of the next accepted descriptor (closed if that fails)."""
        fd, nodelay = self._accepted.popleft()
        return TrafficStream._from_fd(fd, self._identity, nodelay)

    async def aclose(self) -> None:
        """Stop listening; connections accepted but not handed out are closed."""
        if not self._closed:
            self._closed = True
            self._transit.terminate()
            self._accepted.close()
        await trio.lowlevel.checkpoint()

    def __repr__(self) -> str:
        return f"<traffic.TrafficListener {'closed' if self._closed else self.socket!r}>"
