"""Descriptor passing on the anyio layer's ``AF_UNIX`` streams: :class:`TrafficUNIXSocketStream`.

An ``AF_UNIX`` stream's transits are a ``Descriptors`` pair from the start
(see :class:`~traffic._anyio._stream.TrafficSocketStream`), used by
``send_fds`` and ``receive_fds`` under the stream's own send and receive
flags, with anyio's argument checks.

Imports anyio, ``traffic._anyio._stream``, ``_adopt`` and ``_errors``,
``traffic._base._requests``, ``traffic._base._sockets`` and ``traffic._base``.
"""

from __future__ import annotations

import os
import socket
from array import array
from collections.abc import Collection
from io import IOBase

import anyio
import anyio.abc
import anyio.lowlevel

from .._base._descriptors import check_descriptor_message, descriptor_array
from .._base._requests import DONE, TERMINATED, Result, check_buffer, protected
from .._base._sockets import DEFAULT_RECEIVE_SIZE, MAX_RECEIVE_FDS, claimed
from ._adopt import SocketChecks
from ._errors import _broken, _busy_receive, _busy_send
from ._stream import TrafficSocketStream, _ignore, _sent


class TrafficUNIXSocketStream(TrafficSocketStream, anyio.abc.UNIXSocketStream):
    """:class:`TrafficSocketStream` over an ``AF_UNIX`` socket, with
    descriptor passing (:meth:`send_fds`, :meth:`receive_fds`).

    Its transits are a :class:`~traffic.libkqueue.Descriptors` pair, used for
    bytes and descriptors alike (a kernel point carries one transit per
    direction): ``send()`` sends bytes with no descriptors, and descriptors
    arriving during a ``receive()`` are closed, never leaked.
    :meth:`from_socket` takes a connected ``AF_UNIX`` stream socket.
    """

    _socket_checks = SocketChecks(connected=True, family=socket.AF_UNIX)

    @protected
    async def send_fds(self, message: bytes, fds: Collection[int | IOBase]) -> None:
        """Send ``message`` with the descriptors ``fds`` (ints or objects with
        ``fileno()``), as anyio's.

        The descriptors are duplicated before anything is sent: the caller's
        stay open.  Raises ``ValueError`` for an empty message or no
        descriptors (as anyio), ``TypeError`` for an entry that is not a
        descriptor, ``OSError(EBADF)`` for one that is not open, and what
        :meth:`send` raises.  Cancelled, it sent nothing (the duplicates are
        closed) or sent all of it.
        """
        if not message:
            raise ValueError("message must not be empty")
        if not fds:
            raise ValueError("fds must not be empty")
        numbers = descriptor_array(fds)
        with claimed(self, "_sending", _busy_send):
            if self._closed:
                raise anyio.ClosedResourceError
            check_descriptor_message(check_buffer(message, writable=False), len(numbers))
            done = await self._parking.transfer(self._sender, message, False, _ignore, numbers)
            _sent(done, self._closed)

    @protected
    async def receive_fds(self, msglen: int, maxfds: int) -> tuple[bytes, list[int]]:
        """Receive up to ``msglen`` bytes and up to ``maxfds`` descriptors, as anyio's.

        The descriptors (close-on-exec) are the caller's; more than
        ``maxfds`` arriving are closed.  ``ValueError`` for bad arguments
        (anyio's checks; and ``msglen`` 0, which anyio allows: descriptors
        always travel with a byte), ``anyio.EndOfStream`` at EOF,
        ``anyio.ClosedResourceError`` after :meth:`aclose` (what arrived
        meanwhile is closed), ``anyio.BrokenResourceError`` if the
        connection broke.  Cancelled after the transfer happened (asyncio),
        the bytes and descriptors are kept for the next call.  ``msglen`` is
        clamped to 64 KiB and ``maxfds`` to ``MAX_RECEIVE_FDS`` (4096).
        """
        if not isinstance(msglen, int) or msglen < 0:
            raise ValueError("msglen must be a non-negative integer")
        if not isinstance(maxfds, int) or maxfds < 1:
            raise ValueError("maxfds must be a positive integer")
        if msglen == 0:
            raise ValueError("msglen must be at least 1: descriptors travel with a byte")
        # Clamped, as receive()'s max_bytes: what does not fit waits in the kernel.
        msglen = min(msglen, DEFAULT_RECEIVE_SIZE)
        maxfds = min(maxfds, MAX_RECEIVE_FDS)
        with claimed(self, "_receiving", _busy_receive):
            if self._closed:
                raise anyio.ClosedResourceError
            if self._parking.late:
                await self._parking.settle(self._receiver)
                if self._closed:
                    raise anyio.ClosedResourceError
            if self._pending or self._pending_fds:
                await anyio.lowlevel.checkpoint()
                if self._closed:
                    raise anyio.ClosedResourceError
                chunk = bytes(self._pending[:msglen])
                del self._pending[:msglen]
                taken = self._pending_fds[:maxfds]
                del self._pending_fds[:maxfds]
                return chunk, taken
            buffer = bytearray(msglen)
            numbers = array("i", bytes(4 * maxfds))

            def keep(done: Result) -> None:
                # A cancelled receive whose transfer happened: nothing is lost.
                _, outcome, _, transferred, _, descriptors = done
                if outcome != DONE:
                    return
                received = numbers[:descriptors].tolist()
                if self._closed:
                    for fd in received:
                        os.close(fd)
                    return
                self._pending += buffer[:transferred]
                self._pending_fds.extend(received)

            done = await self._parking.transfer(self._receiver, buffer, True, keep, numbers)
            _, outcome, error, transferred, _, descriptors = done
            if self._closed:
                if outcome == DONE:
                    for fd in numbers[:descriptors]:
                        os.close(fd)
                raise anyio.ClosedResourceError
            if outcome == DONE:
                return bytes(buffer[:transferred]), numbers[:descriptors].tolist()
            if outcome == TERMINATED:
                if error:
                    _broken(error)
                raise anyio.EndOfStream
            raise anyio.ClosedResourceError

    async def aclose(self) -> None:
        """Close the stream; descriptors kept from a cancelled
        :meth:`receive_fds` are closed too."""
        pending, self._pending_fds = self._pending_fds, []
        for fd in pending:
            os.close(fd)
        await super().aclose()
