"""A helper module of the trio tests (``test_trio_*.py``, and
``test_descriptors.py``); it holds no tests.

Not named ``test_*``, so pytest does not collect it as a test module; the
tests import it as a sibling top-level module (``from trio_support import
...``), as they do ``conftest``.
Descriptor, live-object and cycle-thread leaks are checked for every test by
``tests/conftest.py``'s autouse ``_no_leaks``; nothing here repeats it.

Real peers only, and no timing decides a test: where the core works in its
own thread (descriptors it closes, data it sends), helpers wait on the real
condition with a bounded loop and fail only when it never holds.
"""

from __future__ import annotations

import hashlib
import os
import random
import socket
import time
from collections.abc import Callable

import trio
import trio.testing

import traffic
from traffic import TrafficStream

#: Socket buffer sizes for clogged streams: small, so clogging is quick and
#: draining is too (the kernel doubles these and keeps a floor).
CLOG_BUFFER = 4096


async def wait_for(condition: Callable[[], bool], attempts: int = 1000) -> bool:
    """Poll ``condition`` between short sleeps, at most ``attempts`` times.

    For state the cycle thread changes (it closes descriptors on request):
    trio cannot be told when, so poll; the bound (about 10 s) only turns a
    hang into a failure.
    """
    for _ in range(attempts):
        if condition():
            return True
        await trio.sleep(0.01)
    return condition()


def settled(condition: Callable[[], bool], attempts: int = 1000) -> bool:
    """:func:`wait_for` outside trio.

    A joined thread can still be listed in ``/proc/self/task`` for a moment:
    ``pthread_join`` returns when the kernel clears the thread's id, before
    the exiting task is removed.  So "no cycle thread left" is polled.
    """
    for _ in range(attempts):
        if condition():
            return True
        time.sleep(0.01)
    return condition()


async def tcp_pair() -> tuple[TrafficStream, TrafficStream]:
    """(client, server) TrafficStreams over TCP on 127.0.0.1.

    The listener is traffic's; the client connects with trio's
    ``open_stream_to_socket_listener`` (which needs the listener's
    ``.socket``), then is handed to traffic.
    """
    listeners = await traffic.open_tcp_listeners(0, host="127.0.0.1")
    try:
        client = await trio.testing.open_stream_to_socket_listener(listeners[0])
        client_stream = TrafficStream(client.socket)
        try:
            server = await listeners[0].accept()
        except BaseException:
            await client_stream.aclose()
            raise
    finally:
        for listener in listeners:
            await listener.aclose()
    return client_stream, server


async def unix_pair() -> tuple[TrafficStream, TrafficStream]:
    a, b = socket.socketpair()
    try:
        first = TrafficStream(a)
    except BaseException:
        a.close()
        b.close()
        raise
    try:
        second = TrafficStream(b)
    except BaseException:
        b.close()
        await first.aclose()
        raise
    await trio.lowlevel.checkpoint()
    return first, second


def clog(sender: TrafficStream, receiver: TrafficStream) -> int:
    """Fill the kernel buffers from ``sender`` to ``receiver``; return the bytes written.

    Writes straight to the (non-blocking) descriptor until the kernel says
    EAGAIN: no request is in the core meanwhile, so nothing races with it.
    """
    sender.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, CLOG_BUFFER)
    receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, CLOG_BUFFER)
    fd = sender.socket.fileno()
    chunk = b"c" * 65536
    written = 0
    while True:
        try:
            written += os.write(fd, chunk)
        except BlockingIOError:
            return written


async def clogged_tcp_pair() -> tuple[TrafficStream, TrafficStream]:
    """A TCP pair clogged both ways (trio's checker flips the pair too)."""
    s, r = await tcp_pair()
    clog(s, r)
    clog(r, s)
    return s, r


async def clogged_unix_pair() -> tuple[TrafficStream, TrafficStream]:
    """An AF_UNIX pair clogged both ways."""
    s, r = await unix_pair()
    clog(s, r)
    clog(r, s)
    return s, r


def pseudorandom(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def digest(data: bytes | bytearray | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


async def receive_exactly(stream: trio.abc.ReceiveStream, size: int) -> bytes:
    out = bytearray()
    while len(out) < size:
        chunk = await stream.receive_some(size - len(out))
        if not chunk:
            raise AssertionError(f"EOF after {len(out)} of {size} bytes")
        out += chunk
    return bytes(out)


async def receive_after_a_wait(stream: TrafficStream, peer: socket.socket) -> None:
    """One receive that has to wait (``peer`` sends a byte a moment later):
    afterwards the core has subscribed the stream's socket in the kernel."""

    async def late() -> None:
        await trio.sleep(0.05)
        peer.send(b"x")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(late)
        assert await stream.receive_some() == b"x"


async def receive_until_eof(stream: trio.abc.ReceiveStream) -> bytes:
    out = bytearray()
    while chunk := await stream.receive_some():
        out += chunk
    return bytes(out)
