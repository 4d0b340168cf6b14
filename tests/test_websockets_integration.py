"""WebSockets on traffic: websockets 17's trio implementation and
trio-websocket, served on traffic's TCP and UNIX listeners and spoken on
traffic's streams (docs/integrations-websockets.rst).

Neither library needs an adapter: both take trio listeners and trio streams,
and traffic's are ``trio.abc.Listener`` and ``trio.abc.HalfCloseableStream``.
Real peers only, nothing mocked:

* an echo server of each library on a traffic listener (TCP on 127.0.0.1,
  UNIX in ``tmp_path``), answering each message with the message and its
  SHA-256, talked to by three clients: the same library on a traffic stream,
  the same library on trio's own stream, and websockets' sync client in a
  thread (another process model and, for trio-websocket, another library);
  text and binary messages, 1 MiB ones included, checked by digest on both
  ends; the stream each server connection runs on is a ``TrafficStream``;
* a peer that disappears mid-message: a raw socket does the opening handshake
  by hand, sends the header of a 1 MiB frame and 64 KiB of its payload, waits
  until the server has read all of it, then closes (FIN) or resets
  (``SO_LINGER`` 0 on TCP; on both, a pong left unread makes the kernel
  reset); the handler gets the library's own connection-closed exception,
  nothing escapes the server's nursery or is logged, and the server serves
  the next client;
* what the libraries cannot see on a stream that is not trio's
  (``remote_address``/``local_address``, trio-websocket's endpoints and
  port, its server on trio's UNIX listeners and on TLS listeners), and the
  ways around it, over TLS too;
* every code block of docs/integrations-websockets.rst, run as one script;
* examples/websocket_echo.py, run once as a subprocess.

Each test also checks that ``/proc/self/fd`` holds as many descriptors after
it as before (``conftest._no_leaks`` checks them one by one, with traffic's
live objects and cycle threads).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import functools
import hashlib
import io
import logging
import os
import re
import signal
import socket
import struct
import sys
import termios
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio
from examples_support import launched, listening
from trio_support import wait_for

import traffic
from conftest import open_fds, settle

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

ws_client = pytest.importorskip("websockets.trio.client")
ws_server = pytest.importorskip("websockets.trio.server")
ws_exceptions = pytest.importorskip("websockets.exceptions")
ws_sync_client = pytest.importorskip("websockets.sync.client")
trio_websocket = pytest.importorskip("trio_websocket")

ROOT = Path(__file__).resolve().parent.parent
DOCS_PAGE = ROOT / "docs" / "integrations-websockets.rst"
EXAMPLE = ROOT / "examples" / "websocket_echo.py"
#: Bounds a hang of a subprocess, never a pass.
TIMEOUT = 30

MIB = 1 << 20
Message = str | bytes
#: (host, port) for TCP, a path for UNIX.
Address = tuple[str, int] | str


def text_of(size: int) -> str:
    """Text of exactly ``size`` bytes in UTF-8, with 1-, 2-, 3- and 4-byte
    characters (deterministic, and hardly compressible)."""
    encoded = ("€😀 " + hashlib.shake_256(b"text").digest(size).decode("latin-1")).encode()
    text = encoded[:size].decode(errors="ignore")  # a character cut in two is dropped
    return text + "x" * (size - len(text.encode()))


#: websockets' limit on a frame (default 1 MiB) applies to the compressed
#: payload, and deflate makes 1 MiB of random bytes 1051139: with the default,
#: the 1 MiB binary message is refused (1009), on trio's own sockets as on
#: traffic's.  So its servers and the client on traffic's stream allow 2 MiB.
#: That client negotiates compression (websockets' default); the others
#: refuse it, which spares the tests deflating megabytes (CPU, not transfers).
WS_MAX_SIZE = 2 * MIB

#: What every echo test sends: small and 1 MiB, text and binary.
MESSAGES: list[Message] = [
    "hello",
    b"\x00\x01binary\xff",
    hashlib.shake_256(b"binary").digest(MIB),
    text_of(MIB),
]


def payload(message: Message) -> bytes:
    return message.encode() if isinstance(message, str) else message


def digest(message: Message) -> str:
    return hashlib.sha256(payload(message)).hexdigest()


@pytest.fixture(autouse=True)
def _descriptors_counted() -> Iterator[None]:
    """As many entries in /proc/self/fd after the test (everything closed)
    as before; the core closes in its own thread, so the count is awaited."""
    before = len(open_fds())
    yield
    if len(open_fds()) != before:
        settle(lambda: len(open_fds()) == before)
    assert len(open_fds()) == before


@pytest.fixture
def no_errors_logged(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Nothing logged at WARNING or above (websockets logs a handler's
    exception, "connection handler failed", instead of raising it)."""
    yield
    bad = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not bad, [f"{r.name}: {r.getMessage()}" for r in bad]


# Servers


@dataclass
class Served:
    """What a server's handlers saw."""

    #: The stream each connection runs on, as the library holds it.
    streams: list[trio.abc.Stream] = field(default_factory=list)
    #: The digest of every message received, in order.
    digests: list[str] = field(default_factory=list)
    #: The connection-closed exceptions handlers caught.
    closed: list[BaseException] = field(default_factory=list)


def websockets_echo(served: Served) -> Callable[[Any], Awaitable[None]]:
    """websockets' handler: echo each message, then send its digest."""

    async def handler(websocket: Any) -> None:
        served.streams.append(websocket.stream)
        try:
            async for message in websocket:
                served.digests.append(digest(message))
                await websocket.send(message)
                await websocket.send(f"sha256:{digest(message)}")
        except ws_exceptions.ConnectionClosedError as exc:
            served.closed.append(exc)

    return handler


def trio_websocket_echo(served: Served) -> Callable[[Any], Awaitable[None]]:
    """trio-websocket's handler: the same protocol."""

    async def handler(request: Any) -> None:
        websocket = await request.accept()
        # trio-websocket keeps the stream private; .remote is its repr().
        served.streams.append(websocket._stream)
        assert websocket.remote == websocket.local == repr(websocket._stream)
        try:
            while True:
                message = await websocket.get_message()
                served.digests.append(digest(message))
                await websocket.send_message(message)
                await websocket.send_message(f"sha256:{digest(message)}")
        except trio_websocket.ConnectionClosed as exc:
            # As websockets' iteration: a normal closure ends it quietly.
            if exc.reason.code not in (1000, 1001):
                served.closed.append(exc)

    return handler


async def listen(transport: str, tmp_path: Path) -> tuple[list[traffic.TrafficListener], Address]:
    if transport == "tcp":
        listeners = await traffic.open_tcp_listeners(0, host="127.0.0.1")
        host, port = listeners[0].socket.getsockname()[:2]
        return listeners, (host, port)
    path = str(tmp_path / "ws.sock")
    return [await traffic.open_unix_listener(path)], path


@contextlib.asynccontextmanager
async def running(
    library: str, transport: str, tmp_path: Path, served: Served
) -> AsyncIterator[Address]:
    """An echo server of ``library`` on traffic's listeners; closed on exit.

    Anything a handler lets escape ends the server's nursery, and so the test.
    """
    listeners, address = await listen(transport, tmp_path)
    async with trio.open_nursery() as nursery:
        if library == "websockets":
            server = await nursery.start(
                functools.partial(
                    ws_server.serve,
                    websockets_echo(served),
                    listeners=listeners,
                    max_size=WS_MAX_SIZE,
                )
            )
            yield address
            await server.aclose()  # serve() returns: the nursery ends by itself
        else:
            ws_server_ = trio_websocket.WebSocketServer(trio_websocket_echo(served), listeners)
            await nursery.start(ws_server_.run)
            yield address
            nursery.cancel_scope.cancel()  # run() never returns


# Clients


def uri_of(address: Address) -> str:
    # On UNIX the host is only the Host header.
    return f"ws://{address[0]}:{address[1]}/" if isinstance(address, tuple) else "ws://localhost/"


async def traffic_stream(address: Address) -> traffic.TrafficStream:
    if isinstance(address, tuple):
        return await traffic.open_tcp_stream(*address)
    return await traffic.open_unix_stream(address)


async def trio_stream(address: Address) -> trio.SocketStream:
    if isinstance(address, tuple):
        return await trio.open_tcp_stream(*address)
    return await trio.open_unix_socket(address)


async def exchange(
    send: Callable[[Message], Awaitable[None]],
    receive: Callable[[], Awaitable[Message]],
    messages: list[Message],
) -> None:
    """Send each message; the echo and the server's digest must match."""
    for message in messages:
        await send(message)
        echo = await receive()
        assert type(echo) is type(message)
        assert digest(echo) == digest(message), "the echo differs"
        assert await receive() == f"sha256:{digest(message)}", "the server received another"


def exchange_sync(websocket: Any, messages: list[Message]) -> None:
    for message in messages:
        websocket.send(message)
        echo = websocket.recv()
        assert type(echo) is type(message)
        assert digest(echo) == digest(message), "the echo differs"
        assert websocket.recv() == f"sha256:{digest(message)}", "the server received another"


async def websockets_on_traffic(address: Address, messages: list[Message]) -> None:
    stream = await traffic_stream(address)
    client = ws_client.connect(uri_of(address), stream=stream, max_size=WS_MAX_SIZE)
    async with client as websocket:
        assert websocket.stream is stream
        await exchange(websocket.send, websocket.recv, messages)


async def websockets_on_trio(address: Address, messages: list[Message]) -> None:
    if isinstance(address, tuple):
        client = ws_client.connect(uri_of(address), proxy=None, compression=None)
    else:
        client = ws_client.unix_connect(address, compression=None)
    async with client as websocket:
        assert isinstance(websocket.stream, trio.SocketStream)
        await exchange(websocket.send, websocket.recv, messages)


async def trio_websocket_on(stream: trio.abc.Stream, messages: list[Message]) -> None:
    async with stream, trio.open_nursery() as nursery:
        websocket = await trio_websocket.wrap_client_stream(nursery, stream, "localhost", "/")
        try:
            await exchange(websocket.send_message, websocket.get_message, messages)
        finally:
            await websocket.aclose()


async def trio_websocket_on_traffic(address: Address, messages: list[Message]) -> None:
    await trio_websocket_on(await traffic_stream(address), messages)


async def trio_websocket_on_trio(address: Address, messages: list[Message]) -> None:
    if isinstance(address, tuple):  # its own opener
        async with trio_websocket.open_websocket(*address, "/", use_ssl=False) as websocket:
            await exchange(websocket.send_message, websocket.get_message, messages)
    else:
        await trio_websocket_on(await trio_stream(address), messages)


def websockets_sync(address: Address, messages: list[Message]) -> None:
    """websockets' threaded client on stdlib sockets: nothing of trio's."""
    if isinstance(address, tuple):
        client = ws_sync_client.connect(uri_of(address), proxy=None, compression=None)
    else:
        client = ws_sync_client.unix_connect(address, compression=None)
    with client as websocket:
        exchange_sync(websocket, messages)


async def websockets_sync_in_thread(address: Address, messages: list[Message]) -> None:
    await trio.to_thread.run_sync(websockets_sync, address, messages)


Client = Callable[[Address, list[Message]], Awaitable[None]]

#: For each server library: its client on traffic's stream, its client on
#: trio's own, and websockets' sync client in a thread.
CLIENTS: dict[str, dict[str, Client]] = {
    "websockets": {
        "traffic": websockets_on_traffic,
        "trio": websockets_on_trio,
        "sync-thread": websockets_sync_in_thread,
    },
    "trio-websocket": {
        "traffic": trio_websocket_on_traffic,
        "trio": trio_websocket_on_trio,
        "sync-thread": websockets_sync_in_thread,
    },
}

LIBRARIES = ["websockets", "trio-websocket"]
TRANSPORTS = ["tcp", "unix"]


# Echo


@pytest.mark.trio
@pytest.mark.usefixtures("no_errors_logged")
@pytest.mark.parametrize("client", ["traffic", "trio", "sync-thread"])
@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("library", LIBRARIES)
async def test_echo(library: str, transport: str, client: str, tmp_path: Path) -> None:
    served = Served()
    async with running(library, transport, tmp_path, served) as address:
        await CLIENTS[library][client](address, MESSAGES)
        # Two connections at once: the handlers run side by side.
        async with trio.open_nursery() as nursery:
            for _ in range(2):
                nursery.start_soon(CLIENTS[library][client], address, MESSAGES[:2])
    # The two concurrent connections' messages interleave.
    assert sorted(served.digests) == sorted(digest(m) for m in MESSAGES + MESSAGES[:2] * 2)
    assert served.digests[: len(MESSAGES)] == [digest(m) for m in MESSAGES]
    assert len(served.streams) == 3
    assert all(type(stream) is traffic.TrafficStream for stream in served.streams)
    assert served.closed == []  # every client closed with 1000


# A peer that disappears mid-message


def unread(fd: int) -> int:
    """Bytes waiting in the receive queue of socket ``fd`` (FIONREAD)."""
    return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0" * 4))[0]


def unsent(fd: int) -> int:
    """Bytes ``fd`` sent that its peer has not acknowledged (TCP) or read
    (UNIX): SIOCOUTQ, which is TIOCOUTQ."""
    return struct.unpack("i", fcntl.ioctl(fd, termios.TIOCOUTQ, b"\0" * 4))[0]


WEBSOCKET_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


async def raw_handshake(stream: trio.SocketStream) -> None:
    """The client's opening handshake, by hand (RFC 6455 section 4.1)."""
    key = base64.b64encode(os.urandom(16)).decode()
    await stream.send_all(
        (
            "GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    response = b""
    while b"\r\n\r\n" not in response:
        chunk = await stream.receive_some()
        assert chunk, f"the server closed during the handshake: {response!r}"
        response += chunk
    head, _, rest = response.partition(b"\r\n\r\n")
    status, *lines = head.decode().split("\r\n")
    assert status.startswith("HTTP/1.1 101 "), status
    headers = {name.lower(): value for name, _, value in (x.partition(": ") for x in lines)}
    expected = base64.b64encode(hashlib.sha1((key + WEBSOCKET_GUID).encode()).digest())
    assert headers["sec-websocket-accept"] == expected.decode()
    assert rest == b""  # nothing but the response yet


def client_frame(opcode: int, length: int, data: bytes) -> bytes:
    """A client's frame (FIN, masked) announcing ``length`` bytes of
    payload, followed by ``data``: all of the payload, or its beginning."""
    mask = os.urandom(4)
    if length < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
    elif length < 1 << 16:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
    key = (mask * (len(data) // 4 + 1))[: len(data)]
    masked = (int.from_bytes(data, "big") ^ int.from_bytes(key, "big")).to_bytes(len(data), "big")
    return header + mask + masked


PING, BINARY = 0x9, 0x2


async def vanish_mid_message(address: Address, served: Served, how: str) -> None:
    """Handshake, send 64 KiB of a 1 MiB binary frame, wait until the server
    has read every byte, then close (``close``) or reset (``reset``)."""
    stream = await trio_stream(address)
    async with stream:
        await raw_handshake(stream)
        assert await wait_for(lambda: len(served.streams) == 1), "no handler started"
        server_fd = served.streams[0].socket.fileno()  # type: ignore[attr-defined]
        client_fd = stream.socket.fileno()
        data = b""
        if how == "reset":
            # The pong it answers stays unread: closing then resets (TCP and
            # UNIX alike), and on TCP SO_LINGER 0 makes sure of it.
            data += client_frame(PING, 4, b"ping")
            if isinstance(address, tuple):
                stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        data += client_frame(BINARY, MIB, os.urandom(64 * 1024))
        await stream.send_all(data)
        # Everything sent is in the server's hands (nothing unacknowledged
        # or unread by the kernel's account), and for a reset the pong is
        # here, unread.
        assert await wait_for(
            lambda: (
                unsent(client_fd) == 0
                and unread(server_fd) == 0
                and (how == "close" or unread(client_fd) > 0)
            )
        ), "the server did not read the partial frame"
    # Closed: the handler sees it.
    assert await wait_for(lambda: len(served.closed) == 1), "the handler saw no closing"


@pytest.mark.trio
@pytest.mark.usefixtures("no_errors_logged")
@pytest.mark.parametrize("how", ["close", "reset"])
@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("library", LIBRARIES)
async def test_peer_vanishes_mid_message(
    library: str, transport: str, how: str, tmp_path: Path
) -> None:
    served = Served()
    async with running(library, transport, tmp_path, served) as address:
        await vanish_mid_message(address, served, how)
        (exc,) = served.closed
        if library == "websockets":
            assert type(exc) is ws_exceptions.ConnectionClosedError
            assert exc.rcvd is None and exc.sent is None  # no close frame either way
            if how == "reset":  # the stream's error, chained
                assert isinstance(exc.__cause__, trio.BrokenResourceError)
            else:  # the end of the stream, inside the frame
                assert isinstance(exc.__cause__, EOFError)
                assert str(exc.__cause__) == (
                    f"stream ends after {64 * 1024} bytes, expected {MIB} bytes"
                )
        else:
            assert type(exc) is trio_websocket.ConnectionClosed
            assert exc.reason.code == 1006  # abnormal closure: no close frame
        assert served.digests == []  # the partial message never surfaced
        # The server goes on serving.
        await CLIENTS[library]["traffic"](address, MESSAGES[:2])
    assert served.digests == [digest(m) for m in MESSAGES[:2]]
    assert all(type(stream) is traffic.TrafficStream for stream in served.streams)
    assert len(served.closed) == 1


# What the libraries cannot see on a stream that is not trio's


@pytest.mark.trio
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_websockets_addresses(transport: str, tmp_path: Path) -> None:
    """websockets' trio ``Connection.local_address``/``remote_address``
    answer for ``trio.SocketStream`` (or an ``SSLStream`` over one) and raise
    ``NotImplementedError`` for any other stream, on both sides; the stream
    is ``.stream``, and its ``.socket`` answers."""
    seen: dict[str, Any] = {}

    async def handler(websocket: Any) -> None:
        for name in ("remote_address", "local_address"):
            with pytest.raises(NotImplementedError, match="unsupported stream type: <traffic"):
                getattr(websocket, name)
        seen["peer"] = websocket.stream.socket.getpeername()
        seen["local"] = websocket.stream.socket.getsockname()
        await websocket.send("done")

    listeners, address = await listen(transport, tmp_path)
    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            functools.partial(ws_server.serve, handler, listeners=listeners)
        )
        stream = await traffic_stream(address)
        async with ws_client.connect(uri_of(address), stream=stream) as websocket:
            for name in ("remote_address", "local_address"):
                with pytest.raises(NotImplementedError):
                    getattr(websocket, name)
            assert await websocket.recv() == "done"
            assert seen["peer"] == stream.socket.getsockname()
            assert seen["local"] == stream.socket.getpeername()
        await server.aclose()
    if transport == "unix":
        assert seen == {"peer": "", "local": address}  # the client is unnamed


@pytest.mark.trio
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_trio_websocket_endpoints(transport: str, tmp_path: Path) -> None:
    """trio-websocket makes an ``Endpoint`` of a ``trio.SocketStream`` (or
    ``SSLStream``) only; of another stream it gives ``repr()``, and of
    another listener too, so ``WebSocketServer.port`` raises."""
    seen: dict[str, Any] = {}

    async def handler(request: Any) -> None:
        seen["request"] = (request.remote, request.local)
        websocket = await request.accept()
        seen["stream"] = repr(websocket._stream)
        seen["websocket"] = (websocket.remote, websocket.local)
        await websocket.send_message("done")

    listeners, address = await listen(transport, tmp_path)
    async with trio.open_nursery() as nursery:
        server = await nursery.start(trio_websocket.WebSocketServer(handler, listeners).run)
        assert server.listeners == [repr(listeners[0])]
        assert server.listeners[0].startswith("<traffic.TrafficListener ")
        with pytest.raises(RuntimeError, match="does not have a port"):
            server.port  # noqa: B018
        async with await traffic_stream(address) as stream:
            websocket = await trio_websocket.wrap_client_stream(nursery, stream, "localhost", "/")
            assert websocket.remote == websocket.local == repr(stream)
            assert await websocket.get_message() == "done"
            await websocket.aclose()
        nursery.cancel_scope.cancel()
    assert re.fullmatch(r"<traffic\.TrafficStream fd=\d+>", seen["stream"])
    assert seen["request"] == seen["websocket"] == (seen["stream"], seen["stream"])


@pytest.mark.trio
async def test_trio_websocket_on_trio_unix_fails(tmp_path: Path) -> None:
    """Why traffic's UNIX listener matters to trio-websocket: on trio's own
    (a ``trio.SocketListener`` over a UNIX socket made by hand, trio having
    no opener) ``WebSocketServer.run`` fails as it starts, taking the path
    for an IP address."""
    sock = trio.socket.socket(socket.AF_UNIX)
    await sock.bind(str(tmp_path / "trio.sock"))
    sock.listen()
    listener = trio.SocketListener(sock)
    server = trio_websocket.WebSocketServer(trio_websocket_echo(Served()), [listener])
    with pytest.raises(BaseExceptionGroup) as caught:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
    await listener.aclose()
    (error,) = leaves(caught.value)
    assert isinstance(error, ValueError)
    assert "does not appear to be an IPv4 or IPv6 address" in str(error)


def leaves(group: BaseException) -> list[BaseException]:
    """The exceptions in ``group`` and its subgroups."""
    if isinstance(group, BaseExceptionGroup):
        return [leaf for child in group.exceptions for leaf in leaves(child)]
    return [group]


# The documentation and the example


def python_blocks(text: str) -> list[str]:
    """The ``.. code-block:: python`` blocks of a reST text, dedented."""
    blocks = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.strip() != ".. code-block:: python":
            continue
        body = []
        for following in lines[i + 1 :]:
            if following and not following.startswith(" "):
                break
            body.append(following)
        code = "\n".join(body)
        indent = min(len(x) - len(x.lstrip()) for x in body if x.strip())
        blocks.append("\n".join(x[indent:] for x in code.splitlines()).strip() + "\n")
    return blocks


def expected_output(blocks: list[str]) -> list[str]:
    """What the page says its prints print: ``print(...)  # text``."""
    return [
        line.split("  # ", 1)[1]
        for block in blocks
        for line in block.splitlines()
        if line.lstrip().startswith("print(")
    ]


def test_docs_page_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every code block of docs/integrations-websockets.rst, in order, in one
    namespace (a block may use what an earlier one defined), in an empty
    directory (the UNIX recipes make their socket there); each ``print``
    prints what its comment says."""
    blocks = python_blocks(DOCS_PAGE.read_text())
    assert len(blocks) >= 6
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {"__name__": "integrations_websockets"}
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        for i, block in enumerate(blocks):
            exec(compile(block, f"{DOCS_PAGE}[block {i}]", "exec"), namespace)
    assert output.getvalue().splitlines() == expected_output(blocks)


def docs_block(defining: str) -> str:
    """The page's block that defines ``defining``."""
    (block,) = [b for b in python_blocks(DOCS_PAGE.read_text()) if f"class {defining}(" in b]
    return block


@pytest.fixture
def tls() -> tuple[Any, Any]:
    """(server's, client's) SSL contexts: a certificate for localhost from a
    throwaway authority."""
    trustme = pytest.importorskip("trustme")
    ssl = pytest.importorskip("ssl")
    authority = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("localhost").configure_cert(server_context)
    client_context = ssl.create_default_context()
    authority.configure_trust(client_context)
    return server_context, client_context


@pytest.mark.trio
async def test_docs_connection_subclass_under_tls(tls: tuple[Any, Any]) -> None:
    """The page's ``TrafficServerConnection`` reads the addresses from the
    stream under TLS too (``serve(ssl=...)`` wraps traffic's stream in a
    ``trio.SSLStream``, which websockets' own properties do not look into
    unless it wraps a ``trio.SocketStream``)."""
    server_context, client_context = tls
    namespace: dict[str, Any] = {}
    exec(docs_block("TrafficServerConnection"), namespace)
    seen: dict[str, Any] = {}

    async def handler(websocket: Any) -> None:
        assert type(websocket.stream) is trio.SSLStream
        assert type(websocket.stream.transport_stream) is traffic.TrafficStream
        seen["addresses"] = (websocket.remote_address, websocket.local_address)
        await websocket.send("done")

    listeners = await traffic.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            functools.partial(
                ws_server.serve,
                handler,
                listeners=listeners,
                ssl=server_context,
                create_connection=namespace["TrafficServerConnection"],
            )
        )
        stream = await traffic.open_tcp_stream("127.0.0.1", port)
        client = ws_client.connect(f"wss://localhost:{port}/", stream=stream, ssl=client_context)
        async with client as websocket:
            assert await websocket.recv() == "done"
            expected = (stream.socket.getsockname(), stream.socket.getpeername())
        await server.aclose()
    assert seen["addresses"] == expected


@pytest.mark.trio
async def test_trio_websocket_tls(tls: tuple[Any, Any]) -> None:
    """trio-websocket over TLS on traffic's listeners: ``WebSocketServer``
    refuses SSLListeners around them as it starts (an assert
    wants a ``trio.SocketListener`` inside); ``trio.serve_listeners`` with
    ``wrap_server_stream`` serves them, and there the endpoints are
    Endpoints, read through the TLS stream."""
    server_context, client_context = tls
    listeners = await traffic.open_tcp_listeners(0, host="127.0.0.1")
    secure = [trio.SSLListener(listener, server_context) for listener in listeners]
    server = trio_websocket.WebSocketServer(trio_websocket_echo(Served()), secure)
    with pytest.raises(BaseExceptionGroup) as caught:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
    (error,) = leaves(caught.value)
    assert type(error) is AssertionError

    seen: dict[str, Any] = {}

    async def handler(stream: trio.SSLStream[traffic.TrafficStream]) -> None:
        assert type(stream.transport_stream) is traffic.TrafficStream
        async with trio.open_nursery() as nursery:
            request = await trio_websocket.wrap_server_stream(nursery, stream)
            websocket = await request.accept()
            seen["remote"] = websocket.remote
            await websocket.send_message("done")
            await websocket.aclose()

    listeners = await traffic.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    secure = [trio.SSLListener(listener, server_context) for listener in listeners]
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, handler, secure)
        stream = trio.SSLStream(
            await traffic.open_tcp_stream("127.0.0.1", port),
            client_context,
            server_hostname="localhost",
        )
        async with stream:
            websocket = await trio_websocket.wrap_client_stream(nursery, stream, "localhost", "/")
            assert await websocket.get_message() == "done"
            local = stream.transport_stream.socket.getsockname()
            assert (
                str(websocket.remote) == f'Endpoint(address="127.0.0.1", port={port}, is_ssl=True)'
            )
            await websocket.aclose()
        nursery.cancel_scope.cancel()
    assert str(seen["remote"]) == (f'Endpoint(address="127.0.0.1", port={local[1]}, is_ssl=True)')


def test_example_serves(tmp_path: Path) -> None:
    """examples/websocket_echo.py as a user runs it: echoes text and binary
    for websockets' sync client, and Ctrl-C stops it with status 0."""
    with launched(EXAMPLE, "--port", "0", timeout=TIMEOUT, cwd=tmp_path) as process:
        _, port = listening(process, TIMEOUT, host="127.0.0.1")
        with ws_sync_client.connect(f"ws://127.0.0.1:{port}/", proxy=None) as websocket:
            for message in [*MESSAGES[:2], os.urandom(100_000)]:
                websocket.send(message)
                assert websocket.recv() == message
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=TIMEOUT)
        assert process.returncode == 0, err
        assert err.strip() == "stopped", err
