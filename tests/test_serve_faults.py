"""The serving loops (the trio layer's ``serve_tcp``, traffic's anyio
listener's ``serve()``) under the faults the fault suite (``tests/faults``)
caught them in, kept in the plain test run:

- an idle server holds no stream: once a handler has returned, the
  connection's transits are gone without another connection arriving (the
  loops' locals kept the last batch alive);
- out of descriptors, the anyio listener's ``serve()`` logs, waits and
  accepts again, as ``serve_tcp`` does (it used to end with the ``OSError``).
"""

from __future__ import annotations

import gc
import os
import resource
import socket
from collections.abc import Callable
from functools import partial
from typing import Any

import anyio
import anyio.abc
import pytest
import trio
from anyio_support import BACKENDS

import traffic
from conftest import MessagesOf, open_fds
from traffic.anyio_backend import create_tcp_listener


@pytest.fixture(params=BACKENDS)
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    return request.param


async def eventually(condition: Callable[[], bool], attempts: int = 500) -> bool:
    """Whether ``condition`` holds within a bounded poll (collecting)."""
    for _ in range(attempts):
        gc.collect()
        if condition():
            return True
        await anyio.sleep(0.01)
    return condition()


def exchange(port: int) -> None:
    """One connection: a line out, its echo back, closed."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"ping\n")
        assert sock.recv(64) == b"ping\n"


async def echo_trio(stream: traffic.TrafficStream) -> None:
    while data := await stream.receive_some():
        await stream.send_all(data)


async def echo_anyio(stream: anyio.abc.SocketStream) -> None:
    async with stream:
        async for data in stream:
            await stream.send(data)


@pytest.mark.trio
async def test_serve_tcp_holds_no_stream_while_waiting() -> None:
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(traffic.serve_tcp, echo_trio, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        idle = traffic.live_objects()  # the run's Traffic and the listener's transit
        for _ in range(3):
            await trio.to_thread.run_sync(exchange, port)
            # No new connection comes: the last one's transits must go anyway.
            assert await eventually(lambda: traffic.live_objects() == idle), (
                f"{traffic.live_objects()} core objects alive, {idle} when idle"
            )
        nursery.cancel_scope.cancel()


@pytest.mark.anyio
async def test_anyio_serve_holds_no_stream_while_waiting() -> None:
    listener = await create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    idle = traffic.live_objects()  # the loop's Traffic and the listener's transit
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, echo_anyio)
        for _ in range(3):
            await anyio.to_thread.run_sync(exchange, port)
            assert await eventually(lambda: traffic.live_objects() == idle), (
                f"{traffic.live_objects()} core objects alive, {idle} when idle"
            )
        tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_anyio_serve_backs_off_on_emfile() -> None:
    """Out of descriptors, serve() logs, waits and accepts again; the
    listener survives and every waiting client is served once descriptors
    are back."""
    count = 6
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # The client sockets exist before the limit drops: connecting needs no
    # new descriptor, accepting does.
    clients = [socket.socket() for _ in range(count)]
    listener = await create_tcp_listener(local_host="127.0.0.1")
    address = ("127.0.0.1", listener.extra(anyio.abc.SocketAttribute.local_port))
    try:
        async with listener, anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, echo_anyio)
            await anyio.sleep(0)
            with MessagesOf("traffic.serve_listeners") as messages:
                # Room for two more descriptors: plug the holes below the
                # highest one, then cap the limit just above it.
                highest = max(open_fds())
                plugs = []
                while (fd := os.open(os.devnull, os.O_RDONLY)) < highest:
                    plugs.append(fd)
                os.close(fd)
                resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 3, hard))
                try:
                    for sock in clients:
                        sock.connect(address)
                    assert await eventually(
                        lambda: any("EMFILE" in message for message in messages)
                    ), "the server never ran out of descriptors"
                finally:
                    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
                    for fd in plugs:
                        os.close(fd)
            for i, sock in enumerate(clients):
                message = f"after {i}\n".encode()
                await anyio.to_thread.run_sync(_echoes, sock, message)
            tg.cancel_scope.cancel()
    finally:
        for sock in clients:
            sock.close()


def _echoes(sock: socket.socket, message: bytes) -> None:
    sock.settimeout(10)
    sock.sendall(message)
    got = b""
    while len(got) < len(message):
        chunk = sock.recv(64)
        assert chunk, "the end of the stream before the echo"
        got += chunk
    assert got == message
