"""traffic's anyio backend beyond anyio's own cases: cancellation that loses
nothing, interop with anyio's own streams, the one-import swap, and the
asyncio Traffic's lifetime (one per loop, closed with the loop).

Each async test runs on asyncio and on trio (the ``anyio_backend``
fixture).  Data is pseudo-random and compared by SHA-256.  Leaks
(descriptors, core objects, cycle threads) are checked after every test by
``conftest._no_leaks``; the lifetime tests also check right after the run,
without waiting for garbage collection.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import os
import random
import socket
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
import sniffio
from anyio import CancelScope, EndOfStream, create_task_group, fail_after, move_on_after
from anyio.abc import ByteStream, SocketAttribute, SocketStream
from anyio_support import (
    ASYNCIO_BACKENDS,
    ASYNCIO_RUNS,
    BACKENDS,
    LOOP_FACTORIES,
    RUN_BACKENDS,
    AsyncioRun,
    LoopFactory,
    on_uvloop,
)

import traffic
import traffic.anyio_backend as tab
from conftest import cycle_threads, cycle_threads_gone, open_fds
from traffic.anyio_backend import TrafficSocketStream

pytestmark = pytest.mark.anyio


@pytest.fixture(params=BACKENDS)
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    return request.param


def pseudorandom(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def digest(data: bytes | bytearray) -> str:
    return hashlib.sha256(data).hexdigest()


async def receive_until_eof(stream: ByteStream) -> bytes:
    received = bytearray()
    while True:
        try:
            received += await stream.receive()
        except EndOfStream:
            return bytes(received)


Connector = Callable[[], Awaitable[SocketStream]]


@asynccontextmanager
async def anyio_server(
    handler: Callable[[SocketStream], Awaitable[None]], kind: str = "tcp"
) -> AsyncIterator[Connector]:
    """anyio's own listener serving ``handler``; yields a connector to it
    (traffic's connect function for the same kind)."""
    with tempfile.TemporaryDirectory() as directory:
        if kind == "tcp":
            listener: Any = await anyio.create_tcp_listener(local_host="127.0.0.1")
            port = listener.extra(SocketAttribute.local_port)

            async def connect() -> SocketStream:
                return await tab.connect_tcp("127.0.0.1", port)  # type: ignore[return-value]
        else:
            path = Path(directory) / "sock"
            listener = await anyio.create_unix_listener(path)

            async def connect() -> SocketStream:
                return await tab.connect_unix(path)

        async with listener, create_task_group() as tg:
            tg.start_soon(listener.serve, handler)
            yield connect
            tg.cancel_scope.cancel()


# Cancellation


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_cancelled_receives_lose_nothing(seed: int) -> None:
    """A peer (anyio's own stream) sends 2 MiB in random pieces with pauses;
    the receiver's receives are cancelled at random moments (deadlines of 0
    to 1 ms, some already expired).  Every byte arrives, once, in order."""
    rng = random.Random(seed)
    payload = pseudorandom(2 * 1024 * 1024, seed)

    async def send_pieces(stream: SocketStream) -> None:
        async with stream:
            view = memoryview(payload)
            while view:
                n = rng.choice([1, 7, 100, 1500, 65536, 200000])
                await stream.send(view[:n])
                view = view[n:]
                if rng.random() < 0.3:
                    await anyio.sleep(rng.choice([0, 0.0001, 0.001]))
            await stream.send_eof()

    received = bytearray()
    cancelled = 0
    async with anyio_server(send_pieces) as connect:
        stream = await connect()
        async with stream:
            with fail_after(50):
                while True:
                    with move_on_after(rng.choice([0, 0, 1e-5, 1e-4, 1e-3, 1])) as scope:
                        try:
                            received += await stream.receive(rng.choice([1, 100, 65536]))
                        except EndOfStream:
                            break
                    cancelled += scope.cancelled_caught
    assert len(received) == len(payload)
    assert digest(received) == digest(payload)
    assert cancelled > 0


@pytest.mark.parametrize("seed", [4, 5])
async def test_cancelled_receives_lose_nothing_thread_peer(seed: int) -> None:
    """As above, with the bytes sent from a thread, so they arrive while
    receives are parked and being cancelled (the paths where the transfer
    races the withdrawal).  Order is checked too: bytes of a cancelled
    receive come before anything received after them."""
    rng = random.Random(seed)
    payload = pseudorandom(4 * 1024 * 1024, seed)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()

    def serve() -> None:
        peer, _ = server.accept()
        with peer:
            view = memoryview(payload)
            pieces = random.Random(seed + 100)
            while view:
                n = pieces.choice([1, 100, 1500, 65536])
                peer.sendall(view[:n])
                view = view[n:]
                if pieces.random() < 0.05:
                    time.sleep(0.00005)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    received = bytearray()
    try:
        async with await tab.connect_tcp(*server.getsockname()) as stream:
            with fail_after(50):
                while True:
                    with move_on_after(rng.choice([0, 1e-6, 1e-5, 3e-5, 1e-4])):
                        try:
                            received += await stream.receive(rng.choice([100, 65536]))
                        except EndOfStream:
                            break
    finally:
        thread.join()
        server.close()
    assert len(received) == len(payload)
    assert digest(received) == digest(payload)


async def test_receive_in_cancelled_scope_takes_nothing() -> None:
    """A receive in an already cancelled scope transfers nothing: the bytes
    stay for the next receive."""

    async def send_once(stream: SocketStream) -> None:
        async with stream:
            await stream.send(b"kept")
            await anyio.sleep(30)

    async with anyio_server(send_once) as connect, await connect() as stream:
        await anyio.sleep(0.05)  # let the bytes arrive (not required)
        with CancelScope() as scope:
            scope.cancel()
            await stream.receive()
        assert scope.cancelled_caught
        with fail_after(10):
            assert await stream.receive() == b"kept"


@pytest.mark.parametrize("anyio_backend", ASYNCIO_BACKENDS)
async def test_asyncio_cancel_before_inline_receive_takes_nothing() -> None:
    """asyncio: a receive's checkpoint comes before its transfer, as anyio's
    own streams take theirs, so a cancellation queued just before lands
    there: the receive takes nothing, the bytes stay in the kernel, and the
    next receives return them in order.  (A receive cancelled after its
    bytes arrived keeps them: test_cancelled_receives_lose_nothing.)"""

    async def send_then_wait(stream: SocketStream) -> None:
        async with stream:
            await stream.send(b"first")
            await anyio.sleep(0.2)
            await stream.send(b"second")
            await anyio.sleep(30)

    async with anyio_server(send_then_wait) as connect, await connect() as stream:
        assert isinstance(stream, TrafficSocketStream)
        with fail_after(10):
            await _wait_readable_without_taking(stream)
        with CancelScope() as scope:
            asyncio.get_running_loop().call_soon(scope.cancel)
            await stream.receive()
            pytest.fail("the receive was not cancelled")
        assert scope.cancelled_caught
        assert bytes(stream._pending) == b""  # nothing taken: the kernel keeps them
        with fail_after(10):
            assert await stream.receive(3) == b"fir"
            assert await stream.receive() == b"st"
            assert await stream.receive() == b"second"


async def _wait_readable_without_taking(stream: TrafficSocketStream) -> None:
    """Until the kernel holds bytes for ``stream`` (MSG_PEEK on the view's
    descriptor; nothing is taken)."""
    fd = stream._view.fileno()
    while True:
        sock = socket.socket(fileno=fd)
        try:
            if sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT):
                return
        except BlockingIOError:
            pass
        finally:
            sock.detach()
        await anyio.sleep(0.001)


async def test_cancelled_send_propagates_and_closes() -> None:
    """A send parked on a peer that does not read is cancelled promptly; the
    stream then closes cleanly."""
    unread = socket.socket()
    unread.bind(("127.0.0.1", 0))
    unread.listen()
    try:
        stream = await tab.connect_tcp(*unread.getsockname())
        peer, _ = unread.accept()
        try:
            with move_on_after(0.2) as scope:
                await stream.send(b"\0" * (64 * 1024 * 1024))
            assert scope.cancelled_caught
            await stream.aclose()
        finally:
            peer.close()
    finally:
        unread.close()


async def test_cancelled_accepts_lose_nothing() -> None:
    """Clients connect while accepts are cancelled at random moments: every
    connection is accepted once."""
    rng = random.Random(7)
    count = 40
    multi = await tab.create_tcp_listener(local_host="127.0.0.1")
    listener = multi.listeners[0]
    port = multi.extra(SocketAttribute.local_port)
    seen: list[bytes] = []

    async def clients() -> None:
        for i in range(count):
            async with await anyio.connect_tcp("127.0.0.1", port) as client:
                await client.send(b"%03d" % i)
            if rng.random() < 0.5:
                await anyio.sleep(0.001)

    async with multi, create_task_group() as tg:
        tg.start_soon(clients)
        with fail_after(50):
            while len(seen) < count:
                accepted = None
                with move_on_after(rng.choice([0, 1e-5, 1e-4, 1e-3, 1])):
                    accepted = await listener.accept()
                if accepted is not None:
                    async with accepted:
                        seen.append(await receive_until_eof(accepted))
    assert sorted(seen) == [b"%03d" % i for i in range(count)]


# Interop with anyio's own streams, both directions, TCP and UNIX


@pytest.mark.parametrize("kind", ["tcp", "unix"])
async def test_interop_traffic_client_anyio_server(kind: str) -> None:
    upstream = pseudorandom(3 * 1024 * 1024 + 17, 11)
    downstream = pseudorandom(1024 * 1024 + 5, 12)
    got: dict[str, str] = {}

    async def handler(stream: SocketStream) -> None:
        async with stream, create_task_group() as tg:

            async def send() -> None:
                await stream.send(downstream)
                await stream.send_eof()

            tg.start_soon(send)
            got["server"] = digest(await receive_until_eof(stream))

    async with anyio_server(handler, kind) as connect:
        stream = await connect()
        async with stream, create_task_group() as tg:

            async def send() -> None:
                await stream.send(upstream)
                await stream.send_eof()

            tg.start_soon(send)
            with fail_after(30):
                got["client"] = digest(await receive_until_eof(stream))
        with fail_after(30):
            while "server" not in got:
                await anyio.sleep(0.01)
    assert got == {"server": digest(upstream), "client": digest(downstream)}


@pytest.mark.parametrize("kind", ["tcp", "unix"])
async def test_interop_anyio_client_traffic_server(kind: str) -> None:
    upstream = pseudorandom(2 * 1024 * 1024 + 3, 21)
    got: dict[str, str] = {}

    async def echo(stream: SocketStream) -> None:
        assert isinstance(stream, TrafficSocketStream)
        async with stream:
            async for chunk in stream:
                await stream.send(chunk)
            await stream.send_eof()

    with tempfile.TemporaryDirectory() as directory:
        if kind == "tcp":
            listener: Any = await tab.create_tcp_listener(local_host="127.0.0.1")
            port = listener.extra(SocketAttribute.local_port)
            connect: Connector = lambda: anyio.connect_tcp("127.0.0.1", port)  # noqa: E731
        else:
            path = Path(directory) / "sock"
            listener = await tab.create_unix_listener(path)
            connect = lambda: anyio.connect_unix(path)  # noqa: E731
        async with listener, create_task_group() as tg:
            tg.start_soon(listener.serve, echo)
            async with await connect() as client, create_task_group() as inner:
                assert not isinstance(client, TrafficSocketStream)

                async def send() -> None:
                    await client.send(upstream)
                    await client.send_eof()

                inner.start_soon(send)
                with fail_after(30):
                    got["echo"] = digest(await receive_until_eof(client))
            tg.cancel_scope.cancel()
    assert got == {"echo": digest(upstream)}


# The swap: one import changed


async def _echo_round_trips(
    connect_tcp: Callable[..., Awaitable[Any]],
    create_tcp_listener: Callable[..., Awaitable[Any]],
) -> list[bytes]:
    """Code written against anyio's API, parametrized only by the two names."""

    async def handle(client: SocketStream) -> None:
        async with client:
            async for chunk in client:
                await client.send(chunk)

    replies = []
    listener = await create_tcp_listener(local_host="127.0.0.1")
    async with listener, create_task_group() as tg:
        tg.start_soon(listener.serve, handle)
        port = listener.extra(SocketAttribute.local_port)
        async with await connect_tcp("127.0.0.1", port) as stream:
            for i in range(50):
                await stream.send(b"ping %d" % i)
                replies.append(await stream.receive())
        tg.cancel_scope.cancel()
    return replies


async def test_swap_one_import() -> None:
    """anyio's functions, traffic's, and every mix of the two answer alike."""
    expected = [b"ping %d" % i for i in range(50)]
    for connect in (anyio.connect_tcp, tab.connect_tcp):
        for listen in (anyio.create_tcp_listener, tab.create_tcp_listener):
            with fail_after(30):
                assert await _echo_round_trips(connect, listen) == expected


# One Traffic per run or loop, no call_soon_threadsafe


@pytest.mark.parametrize("anyio_backend", ASYNCIO_BACKENDS)
async def test_asyncio_case_runs_on_the_loop_it_names(
    anyio_backend_name: str, anyio_backend_options: dict[str, Any]
) -> None:
    """The asyncio+uvloop cases run on a uvloop loop, the asyncio cases on
    asyncio's own (so neither set silently tests the other)."""
    assert anyio_backend_name == "asyncio"
    assert on_uvloop() == bool(anyio_backend_options.get("use_uvloop"))


@pytest.mark.parametrize("anyio_backend", ASYNCIO_BACKENDS)
async def test_a_traffic_closed_by_hand_is_replaced() -> None:
    """``current_traffic().close()`` on asyncio: the next stream gets a new
    Traffic, on a loop that no longer watches the old one's completion
    descriptor (whose number the new one often reuses)."""
    first = tab.current_traffic()
    first.close()
    second = tab.current_traffic()
    assert second is not first and not second.closed
    for _ in range(2):
        a, b = socket.socketpair()
        with b:
            async with await TrafficSocketStream.from_socket(a) as stream:
                b.sendall(b"after")
                with fail_after(10):
                    assert await stream.receive() == b"after"
                await stream.send(b"back")
                assert b.recv(4) == b"back"
    assert tab.current_traffic() is second


async def test_one_traffic_per_run() -> None:
    multi = await tab.create_tcp_listener(local_host="127.0.0.1")
    port = multi.extra(SocketAttribute.local_port)
    async with multi:
        first = await tab.connect_tcp("127.0.0.1", port)
        second = await tab.connect_tcp("127.0.0.1", port)
        async with first, second:
            assert isinstance(first, TrafficSocketStream)
            assert isinstance(second, TrafficSocketStream)
            assert first._parking.traffic is second._parking.traffic is tab.current_traffic()
            if sniffio.current_async_library() == "trio":
                assert tab.current_traffic() is traffic.current_traffic()


@pytest.mark.parametrize("anyio_backend", ASYNCIO_BACKENDS)
async def test_asyncio_no_call_soon_threadsafe(monkeypatch: pytest.MonkeyPatch) -> None:
    """Completions reach the loop through its reader, never through
    ``call_soon_threadsafe`` (counted over 200 round trips of two traffic
    streams, after the setup: anyio's getaddrinfo uses a thread)."""
    loop = asyncio.get_running_loop()
    calls = []
    real = loop.call_soon_threadsafe

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        return real(*args, **kwargs)

    multi = await tab.create_tcp_listener(local_host="127.0.0.1")
    port = multi.extra(SocketAttribute.local_port)
    async with multi:
        client = await tab.connect_tcp("127.0.0.1", port)
        server = await multi.listeners[0].accept()
        async with client, server:
            monkeypatch.setattr(loop, "call_soon_threadsafe", counting)
            with fail_after(30):
                for i in range(200):
                    await client.send(b"ping %d" % i)
                    assert await server.receive() == b"ping %d" % i
                    await server.send(b"pong %d" % i)
                    assert await client.receive() == b"pong %d" % i
            monkeypatch.undo()
    assert calls == []


# The asyncio Traffic's lifetime


async def _use_a_stream() -> None:
    multi = await tab.create_tcp_listener(local_host="127.0.0.1")
    async with multi:
        port = multi.extra(SocketAttribute.local_port)
        async with await tab.connect_tcp("127.0.0.1", port) as stream:
            await stream.send(b"x")
        assert tab.current_traffic().threaded  # the run's Traffic is running


@pytest.mark.parametrize("backend", RUN_BACKENDS)
def test_run_closes_traffic(backend: tuple[str, dict[str, Any]]) -> None:
    """``anyio.run`` ends: the cycle thread is joined and the Traffic's
    descriptors closed at once (no garbage collection needed)."""
    name, options = backend
    before = open_fds()
    gc.disable()
    try:
        anyio.run(_use_a_stream, backend=name, backend_options=options)
        assert cycle_threads_gone()
        assert open_fds() == before
    finally:
        gc.enable()


@pytest.mark.parametrize("asyncio_run", ASYNCIO_RUNS)
def test_asyncio_run_closes_traffic(asyncio_run: AsyncioRun) -> None:
    """``asyncio.run`` (or ``uvloop.run``) ends: closed at once."""
    before = open_fds()
    gc.disable()
    try:
        asyncio_run(_use_a_stream())
        assert cycle_threads_gone()
        assert open_fds() == before
    finally:
        gc.enable()


@pytest.mark.parametrize("asyncio_run", ASYNCIO_RUNS)
def test_asyncio_runs_in_turn_get_fresh_traffics(asyncio_run: AsyncioRun) -> None:
    async def traffic_of_run() -> int:
        await _use_a_stream()
        return id(tab.current_traffic())

    for _ in range(3):
        asyncio_run(traffic_of_run())
        assert cycle_threads_gone()


@pytest.mark.parametrize("loop_factory", LOOP_FACTORIES)
def test_manual_loop_close_traffic(loop_factory: LoopFactory) -> None:
    """A loop run by hand: ``close_traffic`` closes its Traffic at once."""
    loop = loop_factory()
    try:
        loop.run_until_complete(_use_a_stream())
        tab.close_traffic(loop)
        assert cycle_threads_gone()
    finally:
        loop.close()


@pytest.mark.parametrize("loop_factory", LOOP_FACTORIES)
def test_manual_loop_closed_without_cancelling(loop_factory: LoopFactory) -> None:
    """A loop closed by hand with the keeper still pending: its Traffic is
    closed when the loop's objects are collected, silently."""
    loop = loop_factory()
    loop.run_until_complete(_use_a_stream())
    loop.close()
    del loop
    for _ in range(100):
        gc.collect()
        if not cycle_threads():
            break
    assert cycle_threads_gone()


@pytest.mark.parametrize("anyio_backend", ASYNCIO_BACKENDS)
async def test_close_traffic_while_running_then_a_fresh_traffic() -> None:
    """``close_traffic()`` on the running loop: a receive parked on the loop's
    Traffic wakes with ``ClosedResourceError``, the loop stops reading the
    completion descriptor before it is closed, and the next stream gets a
    fresh Traffic whose descriptor (often the same number, reused) the loop
    reads: its transfers complete."""
    loop = asyncio.get_running_loop()
    first = tab.current_traffic()
    fd = first.completion_fileno()
    a, b = socket.socketpair()
    with b:
        stream = await tab.TrafficUNIXSocketStream.from_socket(a)
        outcome: list[BaseException] = []

        async def receive() -> None:
            try:
                await stream.receive()
            except anyio.ClosedResourceError as exc:
                outcome.append(exc)

        with fail_after(10):
            async with create_task_group() as tg:
                tg.start_soon(receive)
                await anyio.wait_all_tasks_blocked()
                tab.close_traffic()
        assert first.closed
        assert [type(exc) for exc in outcome] == [anyio.ClosedResourceError]
        assert not loop.remove_reader(fd)  # removed already, by close_traffic
        await stream.aclose()
    second = tab.current_traffic()
    assert second is not first
    with fail_after(10):
        await _use_a_stream()
    assert tab.current_traffic() is second


@pytest.mark.parametrize("loop_factory", LOOP_FACTORIES)
def test_manual_loop_closed_and_kept(loop_factory: LoopFactory) -> None:
    """A loop closed by hand, keeper pending, the loop object still held:
    closing it drops its reader (asyncio's selector, uvloop's poll handles),
    the only strong path to its Traffic, which is then closed at collection
    although the loop object lives on."""
    loop = loop_factory()
    try:
        loop.run_until_complete(_use_a_stream())
        loop.close()
        for _ in range(100):
            gc.collect()
            if not cycle_threads():
                break
        assert cycle_threads_gone()
    finally:
        loop.close()


def test_outside_a_loop() -> None:
    with pytest.raises(sniffio.AsyncLibraryNotFoundError):
        tab.current_traffic()


@pytest.mark.parametrize("backend", RUN_BACKENDS)
def test_unix_listener_removes_stale_socket(backend: tuple[str, dict[str, Any]]) -> None:
    async def main() -> None:
        with tempfile.TemporaryDirectory() as directory:
            path = os.path.join(directory, "sock")
            stale = socket.socket(socket.AF_UNIX)
            stale.bind(path)
            stale.close()
            listener = await tab.create_unix_listener(path)
            async with (
                listener,
                await anyio.connect_unix(path) as client,
                await listener.accept() as accepted,
            ):
                await client.send(b"hi")
                assert await accepted.receive() == b"hi"

    name, options = backend
    anyio.run(main, backend=name, backend_options=options)
