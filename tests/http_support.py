"""Real HTTP peers for ``test_httpx_integration.py``; it holds no tests.

Everything the httpx integration's tests talk to runs in ONE child process,
started once per test module by :func:`running_peers`:

* uvicorn (h11) on a TCP port of 127.0.0.1 and on a UNIX socket,
* hypercorn on TLS (certificates from trustme) with ALPN ``h2`` and
  ``http/1.1``,
* an HTTP forward proxy (absolute-form requests and ``CONNECT``), plain and
  behind TLS,
* a SOCKS5 proxy (no authentication, ``CONNECT`` only),
* a server that misbehaves on purpose (:func:`misbehaving`: resets, early
  closes, a body it never reads),

the servers running the small ASGI app :func:`app` below (the proxies forward
to them).

Why a child process: the tests' autouse leak check compares the process's
descriptors and traffic's live objects before and after every test.  Servers
running in the test process would open and close descriptors whenever a client
connects, so their accepted sockets would be counted against whichever test
happened to be running.  In a child nothing the servers do shows in the test
process; the parent holds only the two pipes to the child, made before any
test's baseline (the fixture is module-scoped) and closed after the last.

The child is this file run as a script.  It binds and ``listen()``s every
listener itself before it reports their addresses (one JSON line on stdout),
so a client connecting right after the report is queued, never refused,
whether or not the server has started accepting.  It exits when its stdin
reaches EOF (the parent closes it; a parent that dies closes it too), so no
child outlives its tests.  The child's stderr (server logs, tracebacks) goes
to ``peers.log`` beside the certificates (:attr:`Peers.log_path`).

Only the standard library is imported at the top: the child imports uvicorn
and hypercorn, the parent imports trustme, each inside the function needing it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import hashlib
import itertools
import json
import os
import random
import select
import socket
import ssl
import struct
import subprocess
import sys
import termios
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

#: Size of each body chunk the app sends (the download, the endless stream).
CHUNK = 64 * 1024

#: The most ``/endless`` sends: far more than a test reads before it
#: cancels, a bound on a client that never goes away.
ENDLESS_BOUND = 256 * 1024 * 1024

#: How long the read-timeout route waits for its client to go away before it
#: answers anyway (a bound, never reached when the client times out first).
SLEEP_BOUND = 30.0

#: How long the child lets its servers shut down gracefully before it
#: exits anyway (its connections are the kernel's to close then).
SHUTDOWN_BOUND = 0.5

#: How long the parent waits for the child's report, and for its exit.
STARTUP_BOUND = 30.0
EXIT_BOUND = 10.0


def pseudorandom(size: int, seed: int) -> bytes:
    """The body of ``/download?size=...&seed=...``: the same bytes on both sides."""
    return random.Random(seed).randbytes(size)


def digest(data: bytes | bytearray) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------
# The ASGI app (runs in the child, under uvicorn and hypercorn)
# ---------------------------------------------------------------------------

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_bodies: dict[tuple[int, int], bytes] = {}


def _body(size: int, seed: int) -> bytes:
    key = (size, seed)
    if key not in _bodies:
        _bodies[key] = pseudorandom(size, seed)
    return _bodies[key]


async def _respond(send: Send, status: int, body: bytes, content_type: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _json(send: Send, value: object, status: int = 200) -> None:
    await _respond(send, status, json.dumps(value).encode(), b"application/json")


async def _drain_request(receive: Receive) -> None:
    """Receive the (empty) request body of a GET."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect" or not message.get("more_body", False):
            return


async def _wait_disconnect(receive: Receive, disconnected: asyncio.Event) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    disconnected.set()


async def _stream(receive: Receive, send: Send, body: bytes | None) -> None:
    """Send ``body`` (or, for None, pseudo-random chunks up to
    :data:`ENDLESS_BOUND`) in :data:`CHUNK` pieces, stopping as soon as the
    client goes away.

    uvicorn's ``send`` returns at once, without yielding to the event loop,
    after a disconnect (and whenever its write buffer is not full), so the
    loop yields after every chunk: otherwise it would spin without ever
    letting the loop notice the disconnect, and stall every other server of
    the process.
    """
    await _drain_request(receive)
    disconnected = asyncio.Event()
    watcher = asyncio.create_task(_wait_disconnect(receive, disconnected))
    headers = [(b"content-type", b"application/octet-stream")]
    if body is not None:
        headers.append((b"content-length", str(len(body)).encode()))
        chunks: Iterable[bytes] = (body[at : at + CHUNK] for at in range(0, len(body), CHUNK))
    else:
        chunks = itertools.repeat(pseudorandom(CHUNK, 0), ENDLESS_BOUND // CHUNK)
    try:
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for chunk in chunks:
            if disconnected.is_set():
                return
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await asyncio.sleep(0)
        await send({"type": "http.response.body", "body": b""})
    finally:
        watcher.cancel()


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """The app every server runs.  Routes:

    ``GET /info``
        JSON: the client's address as the server saw it, the HTTP version,
        the scheme, and the request's ``host`` and ``via`` headers.
    ``GET /download?size=N&seed=S``
        :func:`pseudorandom` ``(N, S)``, streamed in :data:`CHUNK` pieces.
    ``GET /endless``
        Chunks until the client goes away (or :data:`ENDLESS_BOUND` bytes).
    ``POST /upload``
        JSON: the size and SHA-256 of the request body, read as it streams.
    ``GET /sleep``
        Answers only when the client has gone away (or after
        :data:`SLEEP_BOUND`): the read-timeout route.
    """
    if scope["type"] != "http":
        return  # lifespan is off; websockets are not served
    path: str = scope["path"]
    query = {key: values[0] for key, values in parse_qs(scope["query_string"].decode()).items()}
    headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}
    if path == "/info":
        await _drain_request(receive)
        client = scope.get("client")
        await _json(
            send,
            {
                "client": list(client) if client else None,
                "http_version": scope["http_version"],
                "scheme": scope["scheme"],
                "host": headers.get("host"),
                "via": headers.get("via"),
            },
        )
    elif path == "/download":
        await _stream(receive, send, _body(int(query["size"]), int(query.get("seed", "0"))))
    elif path == "/endless":
        await _stream(receive, send, None)
    elif path == "/upload":
        hasher = hashlib.sha256()
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            hasher.update(message.get("body", b""))
            size += len(message.get("body", b""))
            if not message.get("more_body", False):
                break
        await _json(send, {"size": size, "sha256": hasher.hexdigest()})
    elif path == "/sleep":
        await _drain_request(receive)
        disconnected = asyncio.Event()
        watcher = asyncio.create_task(_wait_disconnect(receive, disconnected))
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(disconnected.wait(), SLEEP_BOUND)
        finally:
            watcher.cancel()
        if not disconnected.is_set():
            await _respond(send, 200, b"late", b"text/plain")
    else:
        await _drain_request(receive)
        await _respond(send, 404, b"not found", b"text/plain")


# ---------------------------------------------------------------------------
# The proxies (run in the child)
# ---------------------------------------------------------------------------

#: The connections the proxies and the misbehaving server hold, closed when
#: the child stops; and the event that says it stops.
_connections: set[asyncio.StreamWriter] = set()
_stopping = asyncio.Event()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until EOF, then half-close (write_eof) where the transport can."""
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (OSError, RuntimeError):
        writer.close()  # a reset on either side ends both directions


async def _relay(
    client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    first: bytes = b"",
) -> None:
    """Relay both ways between a client and an upstream until both are done."""
    if first:
        upstream[1].write(first)
    _connections.add(upstream[1])
    try:
        await asyncio.gather(_pipe(client[0], upstream[1]), _pipe(upstream[0], client[1]))
    finally:
        _connections.discard(upstream[1])
        upstream[1].close()


async def http_proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """One client of the HTTP forward proxy.

    ``CONNECT host:port`` opens a tunnel.  An absolute-form request
    (``GET http://host:port/path``) is rewritten to origin form, with
    ``Connection: close`` (so the origin closes after its answer, and says so
    in the response: the client then never reuses a connection this simple
    proxy would not parse a second request on) and ``Via: traffic-tests``
    (so a test can see the request came through the proxy), then relayed.
    """
    _connections.add(writer)
    try:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            return
        request_line, *header_lines = head[:-4].split(b"\r\n")
        method, target, version = request_line.split(b" ", 2)
        if method == b"CONNECT":
            host, _, port = target.decode().rpartition(":")
            try:
                upstream = await asyncio.open_connection(host.strip("[]"), int(port))
            except OSError:
                writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
                return
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await _relay((reader, writer), upstream)
            return
        scheme, _, rest = target.partition(b"://")
        authority, slash, path = rest.partition(b"/")
        if scheme != b"http":
            writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            return
        host, _, port = authority.decode().rpartition(":")
        kept = [
            line
            for line in header_lines
            if line.split(b":", 1)[0].strip().lower() not in (b"connection", b"proxy-connection")
        ]
        rewritten = b"\r\n".join(
            [
                b" ".join([method, slash + path, version]),
                *kept,
                b"Connection: close",
                b"Via: 1.1 traffic-tests",
            ]
        )
        try:
            upstream = await asyncio.open_connection(host.strip("[]"), int(port or 80))
        except OSError:
            writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            return
        await _relay((reader, writer), upstream, rewritten + b"\r\n\r\n")
    finally:
        _connections.discard(writer)
        writer.close()


async def socks5_proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """One client of the SOCKS5 proxy (RFC 1928: no authentication, CONNECT,
    IPv4, IPv6 or domain-name addresses)."""
    _connections.add(writer)
    try:
        try:
            version, count = await reader.readexactly(2)
            methods = await reader.readexactly(count)
            if version != 5 or 0 not in methods:
                writer.write(b"\x05\xff")
                return
            writer.write(b"\x05\x00")
            version, command, _, atype = await reader.readexactly(4)
            if atype == 1:
                host = socket.inet_ntop(socket.AF_INET, await reader.readexactly(4))
            elif atype == 4:
                host = socket.inet_ntop(socket.AF_INET6, await reader.readexactly(16))
            elif atype == 3:
                host = (await reader.readexactly((await reader.readexactly(1))[0])).decode()
            else:
                writer.write(b"\x05\x08\x00\x01" + bytes(6))  # address type not supported
                return
            (port,) = struct.unpack("!H", await reader.readexactly(2))
        except (asyncio.IncompleteReadError, OSError):
            return
        if command != 1:
            writer.write(b"\x05\x07\x00\x01" + bytes(6))  # command not supported
            return
        try:
            upstream = await asyncio.open_connection(host, port)
        except OSError:
            writer.write(b"\x05\x05\x00\x01" + bytes(6))  # connection refused
            return
        bound_host, bound_port = upstream[1].get_extra_info("sockname")[:2]
        writer.write(
            b"\x05\x00\x00\x01"
            + socket.inet_pton(socket.AF_INET, bound_host)
            + struct.pack("!H", bound_port)
        )
        await _relay((reader, writer), upstream)
    finally:
        _connections.discard(writer)
        writer.close()


# ---------------------------------------------------------------------------
# A misbehaving server (runs in the child)
# ---------------------------------------------------------------------------


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset (RST): ``SO_LINGER`` of zero, then abort."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def _sent(writer: asyncio.StreamWriter) -> None:
    """Wait (bounded) until the peer has acknowledged everything written: a
    reset discards what is still queued, and the routes that reset after
    sending mean the client to have received it.  Linux's ``SIOCOUTQ``
    (``TIOCOUTQ`` on a socket) counts the bytes not yet acknowledged;
    elsewhere this only waits for asyncio's buffer to empty."""
    sock = writer.get_extra_info("socket")
    for _ in range(1000):
        if writer.transport.get_write_buffer_size() == 0:
            try:
                queued = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, bytes(4)))
            except OSError:
                return
            if queued[0] == 0:
                return
        await asyncio.sleep(0.001)


#: The head the mid-body routes send: a body far longer than what follows it.
_PARTIAL_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
_PARTIAL_HEAD += b"Content-Length: 1048576\r\n\r\n"
_SHORT_ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"


async def misbehaving(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, mode: str
) -> None:
    """A server that fails its clients, the ways real peers fail.

    ``mode`` ``"reset"`` and ``"eof"``: reset (RST) or close (FIN) the
    connection on its first bytes (a TLS client's hello: a failed
    handshake).  ``mode`` ``"http"``: read one request head, then by its
    path:

    ``/reset-before-response``, ``/close-before-response``
        Reset or close without answering.
    ``/reset-mid-body``, ``/close-mid-body``
        Send a head announcing 1 MiB and 64 KiB of it, then reset or close.
    ``/reset-when-idle``, ``/close-when-idle``
        Answer completely (``ok``, the connection kept alive by HTTP/1.1's
        default), then reset or close the idle connection.
    ``/stall``
        Read nothing more (the request body stays in the kernel's buffers
        until they fill and the client's writes block: the write-timeout
        route) until the child stops, or :data:`SLEEP_BOUND`.
    """
    _connections.add(writer)
    try:
        try:
            if mode != "http":
                await reader.read(1)
                if mode == "reset":
                    _reset(writer)
                return
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            return
        path = head.split(b" ", 2)[1].decode()
        if path == "/stall":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(_stopping.wait(), SLEEP_BOUND)
            return
        action, _, when = path.lstrip("/").partition("-")
        if when == "mid-body":
            writer.write(_PARTIAL_HEAD + pseudorandom(CHUNK, 5))
        elif when == "when-idle":
            writer.write(_SHORT_ANSWER)
        with contextlib.suppress(OSError):
            await writer.drain()
        if action == "reset":
            await _sent(writer)
            _reset(writer)
    finally:
        _connections.discard(writer)
        writer.close()


# ---------------------------------------------------------------------------
# The child's main
# ---------------------------------------------------------------------------


def _tcp_listener() -> socket.socket:
    """A listening socket on an ephemeral port of 127.0.0.1.

    ``IPPROTO_TCP`` spelled out: asyncio sets ``TCP_NODELAY`` only on sockets
    whose ``proto`` says TCP, and an accepted socket takes its listener's.
    Without it the servers' responses (head and body written separately)
    wait on Nagle and the client's delayed ACK: 40 ms a request.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    sock.setblocking(False)
    return sock


async def _until_stdin_eof() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while await reader.read(4096):
        pass


async def _serve(config: dict[str, str]) -> None:
    import hypercorn.asyncio
    import hypercorn.config
    import uvicorn

    def uvicorn_server() -> uvicorn.Server:
        return uvicorn.Server(
            uvicorn.Config(
                app,
                lifespan="off",
                loop="asyncio",
                http="h11",
                log_level="warning",
                access_log=False,
                timeout_graceful_shutdown=SHUTDOWN_BOUND,
            )
        )

    http_sock = _tcp_listener()
    uds_sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    uds_sock.bind(config["uds"])
    uds_sock.listen(128)
    uds_sock.setblocking(False)
    https_sock = _tcp_listener()
    https_port = https_sock.getsockname()[1]

    tcp_server, uds_server = uvicorn_server(), uvicorn_server()
    hyper = hypercorn.config.Config()
    hyper.certfile = config["certfile"]
    hyper.keyfile = config["keyfile"]
    hyper.bind = [f"fd://{https_sock.detach()}"]  # hypercorn owns the descriptor now
    hyper.accesslog = None
    hyper.graceful_timeout = SHUTDOWN_BOUND

    proxy_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    proxy_tls.load_cert_chain(config["certfile"], config["keyfile"])
    proxies = [
        await asyncio.start_server(http_proxy, sock=_tcp_listener()),
        await asyncio.start_server(http_proxy, sock=_tcp_listener(), ssl=proxy_tls),
        await asyncio.start_server(socks5_proxy, sock=_tcp_listener()),
    ]
    for mode in ("http", "reset", "eof"):
        proxies.append(
            await asyncio.start_server(
                functools.partial(misbehaving, mode=mode), sock=_tcp_listener()
            )
        )
    ports = [server.sockets[0].getsockname()[1] for server in proxies]
    http_proxy_port, https_proxy_port, socks5_port, raw_port, reset_port, eof_port = ports

    servers = [
        asyncio.create_task(tcp_server.serve(sockets=[http_sock])),
        asyncio.create_task(uds_server.serve(sockets=[uds_sock])),
        asyncio.create_task(hypercorn.asyncio.serve(app, hyper, shutdown_trigger=_stopping.wait)),  # type: ignore[arg-type]
    ]
    report = {
        "http": http_sock.getsockname()[1],
        "https": https_port,
        "http_proxy": http_proxy_port,
        "https_proxy": https_proxy_port,
        "socks5": socks5_port,
        "misbehaving": raw_port,
        "reset": reset_port,
        "eof": eof_port,
    }
    sys.stdout.write(json.dumps(report) + "\n")
    sys.stdout.flush()

    await _until_stdin_eof()
    tcp_server.should_exit = uds_server.should_exit = True
    _stopping.set()
    for proxy in proxies:
        proxy.close()
    for writer in list(_connections):
        writer.close()
    await asyncio.wait(servers, timeout=SHUTDOWN_BOUND)
    # Exit here, not through asyncio.run's cancelling of what is left (a
    # server still closing its connections would log its cancellation):
    # nothing outside this process waits on it, and the kernel closes the rest.
    sys.stderr.flush()
    os._exit(0)


def main() -> None:
    """The child: serve until stdin closes, then exit."""
    asyncio.run(_serve(json.loads(sys.argv[1])))


# ---------------------------------------------------------------------------
# The parent's side
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Peers:
    """Where the child's servers listen, and how to trust their certificate."""

    http_port: int
    https_port: int
    http_proxy_port: int
    https_proxy_port: int
    socks5_port: int
    misbehaving_port: int
    reset_port: int
    eof_port: int
    uds_path: str
    ca_pem: bytes
    log_path: Path

    @property
    def http(self) -> str:
        """uvicorn, plain HTTP/1.1."""
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def https(self) -> str:
        """hypercorn, TLS with ALPN h2 and http/1.1 (the certificate names
        127.0.0.1 and localhost)."""
        return f"https://127.0.0.1:{self.https_port}"

    @property
    def http_proxy(self) -> str:
        return f"http://127.0.0.1:{self.http_proxy_port}"

    @property
    def https_proxy(self) -> str:
        """The HTTP proxy behind TLS (the same certificate as :attr:`https`)."""
        return f"https://127.0.0.1:{self.https_proxy_port}"

    @property
    def socks5(self) -> str:
        return f"socks5://127.0.0.1:{self.socks5_port}"

    @property
    def misbehaving(self) -> str:
        """:func:`misbehaving` in its ``"http"`` mode."""
        return f"http://127.0.0.1:{self.misbehaving_port}"

    def ssl_context(self) -> ssl.SSLContext:
        """A fresh client context trusting only the test CA (fresh: httpcore
        sets the ALPN protocols on the context it is given)."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(cadata=self.ca_pem.decode())
        return context


@contextlib.contextmanager
def running_peers(directory: Path) -> Iterator[Peers]:
    """Start the child serving everything, yield where, stop it after.

    ``directory`` holds the certificates, the UNIX socket and the child's log.
    """
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    certfile, keyfile = directory / "server.pem", directory / "server.key"
    cert.cert_chain_pems[0].write_to_path(str(certfile))
    for extra in cert.cert_chain_pems[1:]:
        extra.write_to_path(str(certfile), append=True)
    cert.private_key_pem.write_to_path(str(keyfile))
    uds_path = str(directory / "uvicorn.sock")
    log_path = directory / "peers.log"
    config = {"uds": uds_path, "certfile": str(certfile), "keyfile": str(keyfile)}

    with open(log_path, "wb") as log:
        child = subprocess.Popen(
            [sys.executable, __file__, json.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
        )
    assert child.stdin is not None and child.stdout is not None
    try:
        ready, _, _ = select.select([child.stdout], [], [], STARTUP_BOUND)
        line = child.stdout.readline() if ready else b""
        if not line:
            raise RuntimeError(f"the HTTP peers did not start:\n{log_path.read_text()}")
        report = json.loads(line)
        yield Peers(
            http_port=report["http"],
            https_port=report["https"],
            http_proxy_port=report["http_proxy"],
            https_proxy_port=report["https_proxy"],
            socks5_port=report["socks5"],
            misbehaving_port=report["misbehaving"],
            reset_port=report["reset"],
            eof_port=report["eof"],
            uds_path=uds_path,
            ca_pem=ca.cert_pem.bytes(),
            log_path=log_path,
        )
    finally:
        child.stdin.close()
        try:
            child.wait(EXIT_BOUND)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        child.stdout.close()


if __name__ == "__main__":
    main()
