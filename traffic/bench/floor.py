"""The floor: the least any byte stream on trio has to do.

:class:`FloorStream` makes the system call and trio's checkpoint
(``checkpoint_if_cancelled`` before, ``cancel_shielded_checkpoint`` after,
``wait_readable``/``wait_writable`` when the kernel has nothing or no room)
on a raw non-blocking socket, with no stream layer: no busy guard, no
closed state, no error translation.  Nobody would ship it; the benchmark
runs it (``trio-floor``) to show how far trio's scheduler lets a stream
layer go on the same machine in the same run, and ``bench.instructions``
counts it.
"""

from __future__ import annotations

import contextlib
import socket
from types import TracebackType

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
