"""serve_tcp / serve_unix: many real clients, cancellation closes everything.

Clients are trio's native streams (or traffic's, for AF_UNIX), in the same
process: the descriptor counts include both ends.
"""

from __future__ import annotations

import errno
import os
import resource
import socket
from collections.abc import Iterator
from functools import partial

import pytest
import trio
import trio.testing
from trio_support import receive_exactly, wait_for

import traffic
from conftest import MessagesOf, open_fds
from traffic import TrafficListener, TrafficStream

CLIENTS = 1000
#: Concurrent connects: keeps the listen backlog from overflowing (a full
#: backlog drops SYNs, and the retransmission takes a second).
CONNECT_BATCH = 100
MESSAGES = 3
#: Descriptors the 1,000-client test needs: both ends of every connection,
#: plus trio's, pytest's and the core's own.
NEEDED_FDS = 2600


@pytest.fixture
def many_fds() -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < NEEDED_FDS:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {NEEDED_FDS} descriptors needed")
    if soft != resource.RLIM_INFINITY and soft < NEEDED_FDS:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


class Echo:
    """An echo handler that counts its connections and keeps any error."""

    def __init__(self) -> None:
        self.started = 0
        self.active = 0
        self.errors: list[BaseException] = []
        self.streams: list[TrafficStream] = []

    async def __call__(self, stream: TrafficStream) -> None:
        self.started += 1
        self.active += 1
        self.streams.append(stream)
        try:
            while data := await stream.receive_some():
                await stream.send_all(data)
        except Exception as exc:
            self.errors.append(exc)
        finally:
            self.active -= 1


async def expect_closed_by_server(stream: trio.abc.Stream) -> None:
    """The server closed: EOF, or a reset if it closed with data unread."""
    try:
        data = await stream.receive_some()
    except trio.BrokenResourceError:
        return
    assert data == b""


@pytest.mark.trio
async def test_serve_tcp_thousand_clients(many_fds: None) -> None:
    traffic.current_traffic()  # started: its own descriptors are in the baseline
    baseline = len(open_fds())
    echo = Echo()
    clients: list[trio.SocketStream] = []
    limiter = trio.CapacityLimiter(CONNECT_BATCH)

    async def client(port: int, i: int) -> None:
        async with limiter:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
        clients.append(stream)
        for j in range(MESSAGES):
            message = f"client {i} message {j} ".encode() * (j + 1)
            await stream.send_all(message)
            assert await receive_exactly(stream, len(message)) == message

    try:
        async with trio.open_nursery() as server:
            listeners = await server.start(partial(traffic.serve_tcp, echo, 0, host="127.0.0.1"))
            assert all(isinstance(listener, TrafficListener) for listener in listeners)
            port = listeners[0].socket.getsockname()[1]
            async with trio.open_nursery() as nursery:
                for i in range(CLIENTS):
                    nursery.start_soon(client, port, i)
            # Every connection is open and has echoed.
            assert len(clients) == CLIENTS
            assert echo.started == echo.active == CLIENTS
            assert not echo.errors
            assert len(open_fds()) >= baseline + 2 * CLIENTS
            server.cancel_scope.cancel()
        # Cancelling the server closed every connection.
        assert echo.active == 0
        assert not echo.errors
        assert all(stream._closed for stream in echo.streams)
        for stream in clients:
            await expect_closed_by_server(stream)
    finally:
        for stream in clients:
            await stream.aclose()
    # The core closes descriptors in its own thread: wait for the count.
    assert await wait_for(lambda: len(open_fds()) == baseline), (len(open_fds()), baseline)


@pytest.mark.trio
async def test_serve_tcp_handler_nursery_and_listeners() -> None:
    echo = Echo()
    async with trio.open_nursery() as handlers:
        async with trio.open_nursery() as server:
            listeners = await server.start(
                partial(traffic.serve_tcp, echo, 0, host="127.0.0.1", handler_nursery=handlers)
            )
            client = await trio.testing.open_stream_to_socket_listener(listeners[0])
            await client.send_all(b"ping")
            assert await receive_exactly(client, 4) == b"ping"
            assert echo.active == 1
            server.cancel_scope.cancel()
        # The server stopped accepting and closed its listener; the handler
        # lives in the handler nursery, so the connection goes on.
        with pytest.raises(OSError):
            await trio.testing.open_stream_to_socket_listener(listeners[0])
        await client.send_all(b"pong")
        assert await receive_exactly(client, 4) == b"pong"
        await client.send_eof()
        await expect_closed_by_server(client)
        await client.aclose()
    assert echo.active == 0
    assert not echo.errors


@pytest.mark.trio
async def test_serve_unix(tmp_path: os.PathLike[str]) -> None:
    path = os.path.join(os.fspath(tmp_path), "echo.sock")
    echo = Echo()
    async with trio.open_nursery() as server:
        listeners = await server.start(partial(traffic.serve_unix, echo, path))
        assert listeners[0].socket.family == socket.AF_UNIX
        assert listeners[0].socket.getsockname() == path
        ours = [await traffic.open_unix_stream(path) for _ in range(5)]
        theirs = [await trio.open_unix_socket(path) for _ in range(5)]
        clients: list[trio.abc.Stream] = [*ours, *theirs]
        for i, stream in enumerate(clients):
            message = f"unix {i}".encode()
            await stream.send_all(message)
            assert await receive_exactly(stream, len(message)) == message
        assert echo.active == len(clients)
        server.cancel_scope.cancel()
    assert echo.active == 0
    assert not echo.errors
    for stream in clients:
        await expect_closed_by_server(stream)
        await stream.aclose()


@pytest.mark.trio
async def test_open_unix_listener_refuses_existing_path(tmp_path: os.PathLike[str]) -> None:
    path = os.path.join(os.fspath(tmp_path), "taken.sock")
    listener = await traffic.open_unix_listener(path)
    with pytest.raises(OSError) as caught:
        await traffic.open_unix_listener(path)
    assert caught.value.errno == errno.EADDRINUSE
    await listener.aclose()


@pytest.mark.trio
async def test_open_tcp_stream_and_listeners() -> None:
    listeners = await traffic.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    client = await traffic.open_tcp_stream("127.0.0.1", port)
    server = await listeners[0].accept()
    await client.send_all(b"hi")
    assert await receive_exactly(server, 2) == b"hi"
    assert client.socket.getpeername() == ("127.0.0.1", port)
    for resource_ in (client, server, *listeners):
        await resource_.aclose()
    with pytest.raises(OSError):
        await traffic.open_tcp_stream("127.0.0.1", port)  # nobody listens any more


@pytest.mark.trio
async def test_serve_tcp_backs_off_on_emfile() -> None:
    """Out of descriptors, the server logs, waits and retries; the listener
    survives and every waiting client is served once descriptors are back."""
    echo = Echo()
    count = 6
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # The client sockets exist before the limit drops: connecting needs no
    # new descriptor, accepting does.
    clients = [trio.socket.socket() for _ in range(count)]
    streams: list[trio.SocketStream] = []
    try:
        async with trio.open_nursery() as server:
            listeners = await server.start(partial(traffic.serve_tcp, echo, 0, host="127.0.0.1"))
            address = listeners[0].socket.getsockname()
            with MessagesOf("traffic.serve_listeners") as messages:
                # Room for exactly two more descriptors: plug the holes below
                # the highest one (the kernel hands out the lowest free
                # number), then cap the limit just above it.
                highest = max(open_fds())
                plugs = []
                while (fd := os.open(os.devnull, os.O_RDONLY)) < highest:
                    plugs.append(fd)
                os.close(fd)
                resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 3, hard))
                try:
                    for sock in clients:
                        await sock.connect(address)
                    streams = [trio.SocketStream(sock) for sock in clients]
                    # Wait for the server to meet the limit (a bounded poll:
                    # the kernel's accept queue is not observable from here).
                    assert await wait_for(
                        lambda: any("EMFILE" in message for message in messages)
                    ), "the server never ran out of descriptors"
                finally:
                    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
                    for fd in plugs:
                        os.close(fd)
            for i, stream in enumerate(streams):
                message = f"after {i}".encode()
                await stream.send_all(message)
                assert await receive_exactly(stream, len(message)) == message
            assert echo.started == count
            server.cancel_scope.cancel()
    finally:
        for stream in streams:
            await stream.aclose()
        for sock in clients:
            sock.close()
    assert not echo.errors


@pytest.mark.trio
async def test_serve_listeners_closes_what_the_handler_leaves_open() -> None:
    """A handler that returns without closing: the client sees the end, and
    a burst of connections (accepted in batches) is served one task each."""
    seen: list[TrafficStream] = []

    async def greet(stream: TrafficStream) -> None:
        seen.append(stream)
        await stream.send_all(b"hello")

    listeners = await traffic.open_tcp_listeners(0, host="127.0.0.1")
    async with trio.open_nursery() as server:
        await server.start(partial(traffic.serve_listeners, greet, listeners))
        clients = [
            await trio.testing.open_stream_to_socket_listener(listeners[0]) for _ in range(50)
        ]
        for client in clients:
            assert await receive_exactly(client, 5) == b"hello"
            await expect_closed_by_server(client)
            await client.aclose()
        server.cancel_scope.cancel()
    assert len(seen) == 50
    assert all(stream._closed for stream in seen)
    # The listeners are closed with the server.
    with pytest.raises(trio.ClosedResourceError):
        await listeners[0].accept()


@pytest.mark.trio
async def test_serve_listeners_refuses_other_listeners() -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    try:
        with pytest.raises(TypeError, match="TrafficListener"):
            await traffic.serve_listeners(Echo(), listeners)  # type: ignore[arg-type]
    finally:
        for listener in listeners:
            await listener.aclose()
