"""Soak: many concurrent connections, random sizes, every byte checksummed.

Each client sends a random number of messages of random sizes (1 byte to
1 MiB, log-uniform, so most are small and some are large), half-closes its
side, and reads the echo until EOF; the server echoes until EOF and closes.
Counts and digests decide, never timings.  The clients are the peer's own
sockets (trio's, anyio's), not traffic's.

``TRAFFIC_SOAK_CONNECTIONS`` raises the number of connections for a longer
run (default 1,000 on trio, 200 on each anyio backend).
"""

from __future__ import annotations

import hashlib
import os
import random
import resource
from collections.abc import Iterator
from functools import partial
from typing import Any

import anyio
import pytest
import trio
from anyio_support import BACKENDS

import traffic
from traffic import anyio_backend as traffic_anyio

CONNECTIONS = int(os.environ.get("TRAFFIC_SOAK_CONNECTIONS", "1000"))
#: Connections opened at once (the listen backlog is the limit, not traffic).
BATCH = 100
MAX_MESSAGE = 1 << 20


def plan(seed: int) -> list[bytes]:
    """The messages one client sends: 1 to 4 of them, 1 B to 1 MiB each."""
    rng = random.Random(seed)
    sizes = [int(2 ** rng.uniform(0, 20)) for _ in range(rng.randint(1, 4))]
    return [rng.randbytes(size) for size in sizes]


@pytest.fixture
def descriptors() -> Iterator[None]:
    """Room for both ends of every connection, in one process."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = 2 * CONNECTIONS + 200
    if hard < needed:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {needed}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, needed), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.trio
@pytest.mark.timeout(120)
async def test_trio_serve_tcp_soak(descriptors: None) -> None:

    async def echo(stream: traffic.TrafficStream) -> None:
        while data := await stream.receive_some():
            await stream.send_all(data)

    async def client(port: int, seed: int, results: list[bool]) -> None:
        messages = plan(seed)
        sent = hashlib.sha256()
        received = hashlib.sha256()
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:

            async def send() -> None:
                for message in messages:
                    sent.update(message)
                    await stream.send_all(message)
                await stream.send_eof()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(send)
                count = 0
                while data := await stream.receive_some():
                    received.update(data)
                    count += len(data)
        results.append(count == sum(map(len, messages)) and sent.digest() == received.digest())

    results: list[bool] = []
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(traffic.serve_tcp, echo, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as clients:
            for first in range(0, CONNECTIONS, BATCH):
                for seed in range(first, min(first + BATCH, CONNECTIONS)):
                    clients.start_soon(client, port, seed, results)
                await trio.sleep(0)  # let this batch connect before the next
        nursery.cancel_scope.cancel()

    assert len(results) == CONNECTIONS
    assert all(results), f"{results.count(False)} connections lost or corrupted bytes"
    # Descriptors, core objects and the cycle thread are checked after the
    # run by conftest's autouse fixture (the run's Traffic closes with it).


@pytest.mark.parametrize("anyio_backend", BACKENDS)
@pytest.mark.anyio
@pytest.mark.timeout(120)
async def test_anyio_listener_soak(anyio_backend: Any, descriptors: None) -> None:
    connections = min(CONNECTIONS, 200)

    async def echo(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            try:
                while True:
                    await stream.send(await stream.receive())
            except anyio.EndOfStream:
                pass

    async def client(port: int, seed: int, results: list[bool]) -> None:
        messages = plan(seed)
        received = hashlib.sha256()
        count = 0
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:

            async def send() -> None:
                for message in messages:
                    await stream.send(message)
                await stream.send_eof()

            async with anyio.create_task_group() as group:
                group.start_soon(send)
                try:
                    while True:
                        data = await stream.receive()
                        received.update(data)
                        count += len(data)
                except anyio.EndOfStream:
                    pass
        expected = hashlib.sha256(b"".join(messages)).digest()
        results.append(count == sum(map(len, messages)) and received.digest() == expected)

    results: list[bool] = []
    listener = await traffic_anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with anyio.create_task_group() as server:
        server.start_soon(listener.serve, echo)
        async with anyio.create_task_group() as clients:
            for seed in range(connections):
                clients.start_soon(client, port, seed, results)
                if seed % BATCH == BATCH - 1:
                    await anyio.sleep(0)
        server.cancel_scope.cancel()
    await listener.aclose()

    assert len(results) == connections
    assert all(results), f"{results.count(False)} connections lost or corrupted bytes"
    # Descriptors, core objects and the cycle thread are checked after the
    # run by conftest's autouse fixture (the run's Traffic closes with it).
