"""The floor: the least any byte stream on trio has to do.

:class:`FloorStream` makes the system call and trio's checkpoint
(``checkpoint_if_cancelled`` before, ``cancel_shielded_checkpoint`` after,
``wait_readable``/``wait_writable`` when the kernel has nothing or no room)
on a raw non-blocking socket, with no stream layer: no busy guard, no
closed state, no error translation.  Nobody would ship it; the benchmark
runs it (``trio-floor``) to show how far trio's scheduler lets a stream
layer go on the same machine in the same run, and ``bench.instructions``
counts it.  :class:`AnyioFloorStream` is the same floor behind anyio's
stream interface, for an anyio server on trio (``anycorn-floor``).
"""

from __future__ import annotations

import contextlib
import socket
from types import TracebackType

import anyio
import anyio.abc
import trio

#: Bytes one receive asks for by default: trio's DEFAULT_RECEIVE_SIZE.
RECEIVE_SIZE = 65536


class FloorStream:
    """``send_all``/``receive_some``/``aclose`` on ``sock`` (made non-blocking; owned)."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self._sock = sock

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            sent = self._sock.send(data)
        except BlockingIOError:
            sent = 0
        if sent < len(data):  # the kernel's buffer is full: the rest waits for room
            view = memoryview(data)[sent:]
            while view:
                await trio.lowlevel.wait_writable(self._sock)
                with contextlib.suppress(BlockingIOError):  # woken, and still full
                    view = view[self._sock.send(view) :]
        await trio.lowlevel.cancel_shielded_checkpoint()

    async def receive_some(self, max_bytes: int = RECEIVE_SIZE) -> bytes:
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            try:
                data = self._sock.recv(max_bytes)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(self._sock)
            else:
                await trio.lowlevel.cancel_shielded_checkpoint()
                return data

    async def aclose(self) -> None:
        trio.lowlevel.notify_closing(self._sock)
        self._sock.close()
        await trio.lowlevel.checkpoint()

    async def __aenter__(self) -> FloorStream:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()


class AnyioFloorStream(anyio.abc.SocketStream):
    """The floor as an anyio socket stream, on anyio's trio backend only:
    ``receive``/``send``/``send_eof``/``aclose`` make the same system calls
    and trio checkpoints as :class:`FloorStream` (``receive`` raises
    ``EndOfStream`` at the end, as anyio's streams do), and the socket
    attributes come from anyio's own ``SocketStream``.  What an anyio
    server such as anycorn's ``TCPServer`` runs over in the benchmark's
    ``anycorn-floor`` row."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self._sock = sock

    @property
    def _raw_socket(self) -> socket.socket:
        return self._sock

    async def receive(self, max_bytes: int = RECEIVE_SIZE) -> bytes:
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            try:
                data = self._sock.recv(max_bytes)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(self._sock)
            else:
                await trio.lowlevel.cancel_shielded_checkpoint()
                if not data:
                    raise anyio.EndOfStream
                return data

    async def send(self, item: bytes) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            sent = self._sock.send(item)
        except BlockingIOError:
            sent = 0
        if sent < len(item):
            view = memoryview(item)[sent:]
            while view:
                await trio.lowlevel.wait_writable(self._sock)
                with contextlib.suppress(BlockingIOError):
                    view = view[self._sock.send(view) :]
        await trio.lowlevel.cancel_shielded_checkpoint()

    async def send_eof(self) -> None:
        self._sock.shutdown(socket.SHUT_WR)
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        trio.lowlevel.notify_closing(self._sock)
        self._sock.close()
        await trio.lowlevel.checkpoint()
