"""httpx (and its fork httpx2) on traffic: the drop-in transport
(:mod:`traffic.integrations.httpx`, :mod:`traffic.integrations.httpx2`)
against real servers.

Every request here crosses a real socket to a real peer the tests start
(:mod:`http_support`, one child process for the module): uvicorn on TCP and
on a UNIX socket, hypercorn on TLS with HTTP/2, an HTTP(S) forward proxy, a
SOCKS5 proxy, and a server that fails on purpose.  Nothing is mocked.  Each
test runs on asyncio, asyncio on uvloop and trio (the ``anyio_backend``
fixture); the basic request, the download and every error-mapping test run on
httpx2 too (the ``flavor`` parameter).

What the tests show a user:

* the connection of every response is traffic's
  (``response.extensions["network_stream"]`` is ``TrafficNetworkStream``) on
  every branch of the transport: no proxy, an HTTP or an HTTPS proxy
  (forwarding and ``CONNECT``), SOCKS5, ``uds``; over TLS and HTTP/2 too;
* the pool reuses connections under concurrency, and drops one the server
  ended while it was idle; bodies stream both ways, byte for byte (SHA-256);
* timeouts, refusals, failing servers and bad input give exactly what
  httpx's default transport gives for the same input, side by side;
* a request cancelled mid-body leaves no descriptor behind and the client
  usable.

Leaks (descriptors, traffic's live objects, cycle threads) are checked after
every test by ``conftest._no_leaks``; the child's descriptors are not the test
process's, so its servers do not disturb the check.  The child's log (server
tracebacks) is ``peers.log`` in the module's temporary directory.

Budget: the module runs in about 15 s on two cores.  Each test costs the leak
check's garbage collections (tens of milliseconds), so inputs of one kind
share a test and each failure message lists every input that differs.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import hashlib
import importlib
import socket
import ssl
import sys
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio_support import BACKENDS
from http_support import Peers, digest, pseudorandom, running_peers

from conftest import open_fds

pytestmark = pytest.mark.anyio

MiB = 1024 * 1024

#: The download's and upload's size: large enough that the body crosses many
#: reads and writes (and the kernel's buffers) on every path.
BIG = 16 * MiB

#: The timeouts the timeout tests set: short, because each test waits for
#: one to expire; a timeout never decides whether the others pass.
SHORT = 0.25

#: Bound on every single test's requests, so a hang fails here with a
#: traceback rather than at pytest-timeout's kill.
BOUND = 30.0


@pytest.fixture(params=BACKENDS)
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    return request.param


@pytest.fixture(scope="module")
def peers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Peers]:
    """The servers and proxies, in a child process for the whole module.

    Module-scoped, so it exists before each test's leak baseline is taken
    and is stopped after the last test's check.
    """
    with running_peers(tmp_path_factory.mktemp("http")) as started:
        yield started


@functools.cache
def expected_digest(size: int, seed: int) -> str:
    return digest(pseudorandom(size, seed))


# ---------------------------------------------------------------------------
# httpx and httpx2: the same tests on both
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Flavor:
    """One client library (httpx or httpx2), and traffic's integration of it
    and of its httpcore."""

    #: The client library's module name, ``httpx`` or ``httpx2``.
    name: str
    #: Its httpcore's, ``httpcore`` or ``httpcore2``.
    core: str

    @property
    def httpx(self) -> Any:
        """The client library."""
        return importlib.import_module(self.name)

    @property
    def stream_class(self) -> type[Any]:
        """traffic's ``TrafficNetworkStream`` for this flavor's httpcore."""
        module = importlib.import_module(f"traffic.integrations.{self.core}")
        stream_class: type[Any] = module.TrafficNetworkStream
        return stream_class

    def transport(self, **kwargs: Any) -> Any:
        """traffic's drop-in ``AsyncHTTPTransport``."""
        module = importlib.import_module(f"traffic.integrations.{self.name}")
        return module.AsyncHTTPTransport(**kwargs)

    def default_transport(self, **kwargs: Any) -> Any:
        """The library's own ``AsyncHTTPTransport``, for side-by-side checks."""
        return self.httpx.AsyncHTTPTransport(**kwargs)

    def client(self, transport: Any, **kwargs: Any) -> Any:
        """A client on ``transport``.  ``trust_env=False``: a proxy set in the
        environment would otherwise be mounted in front of the transport."""
        return self.httpx.AsyncClient(transport=transport, trust_env=False, **kwargs)


HTTPX = Flavor("httpx", "httpcore")
HTTPX2 = Flavor("httpx2", "httpcore2")
FLAVORS = [pytest.param(HTTPX, id="httpx"), pytest.param(HTTPX2, id="httpx2")]


def traffic_stream(flavor: Flavor, response: Any) -> Any:
    """The response's connection, asserted to be traffic's."""
    stream = response.extensions["network_stream"]
    assert isinstance(stream, flavor.stream_class), (
        f"the connection is {type(stream).__module__}.{type(stream).__qualname__}, "
        "not traffic's TrafficNetworkStream"
    )
    return stream


def traffic_client(flavor: Flavor, peers: Peers, **kwargs: Any) -> Any:
    """A client on traffic's transport trusting the test CA (``verify`` is a
    context made here, never the system's: it loads no certificate store)."""
    timeout = kwargs.pop("timeout", 10.0)
    kwargs.setdefault("verify", peers.ssl_context())
    return flavor.client(flavor.transport(**kwargs), timeout=timeout)


async def descriptors_settle(expected: set[int]) -> set[int]:
    """The process's descriptors once they equal ``expected``, or after a
    bound of checkpoints (a descriptor the core closes on its own thread may
    take a moment to go)."""
    for _ in range(200):
        current = open_fds()
        if current == expected:
            return current
        await anyio.sleep(0.005)
    return open_fds()


# ---------------------------------------------------------------------------
# The basic request, the pool
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("flavor", FLAVORS)
async def test_get_through_traffic(peers: Peers, flavor: Flavor) -> None:
    """A GET through traffic's transport is answered on a connection that is
    traffic's, kept alive and reused by the next request; ``get_extra_info``
    names both ends as the server saw them, offers a socket that names them
    too, no ``ssl_object`` on plain HTTP, and reports the idle kept-alive
    connection as not readable (what the pool asks before reusing it)."""
    with anyio.fail_after(BOUND):
        async with traffic_client(flavor, peers) as client:
            response = await client.get(f"{peers.http}/info")
            assert response.status_code == 200
            assert response.http_version == "HTTP/1.1"
            info = response.json()
            assert info["http_version"] == "1.1"
            assert info["host"] == f"127.0.0.1:{peers.http_port}"
            stream = traffic_stream(flavor, response)
            client_addr = stream.get_extra_info("client_addr")
            server_addr = stream.get_extra_info("server_addr")
            assert tuple(client_addr) == tuple(info["client"])
            assert tuple(server_addr) == ("127.0.0.1", peers.http_port)
            assert stream.get_extra_info("ssl_object") is None
            sock = stream.get_extra_info("socket")
            assert sock.getpeername() == server_addr
            assert sock.getsockname() == client_addr
            assert stream.get_extra_info("is_readable") is False
            assert stream.get_extra_info("no such thing") is None
            again = await client.get(f"{peers.http}/info")
            assert again.json()["client"] == info["client"], "the connection was not reused"


async def test_concurrent_requests_share_pooled_connections(peers: Peers) -> None:
    """50 concurrent requests on a pool of at most 4 connections all succeed
    on at most 4 connections (counted by the client ports the server saw),
    and a second wave of 50 reuses those same connections: none is opened
    again.  Each connection's own idea of its client address matches the
    server's."""
    httpx = HTTPX.httpx
    limits = httpx.Limits(max_connections=4, max_keepalive_connections=4)
    waves: list[set[int]] = []
    with anyio.fail_after(BOUND):
        async with traffic_client(HTTPX, peers, limits=limits) as client:

            async def fetch(index: int, ports: list[int]) -> None:
                response = await client.get(f"{peers.http}/info", params={"i": index})
                assert response.status_code == 200
                port = response.json()["client"][1]
                stream = traffic_stream(HTTPX, response)
                assert stream.get_extra_info("client_addr")[1] == port
                ports.append(port)

            for _ in range(2):
                ports: list[int] = []
                async with anyio.create_task_group() as group:
                    for index in range(50):
                        group.start_soon(fetch, index, ports)
                assert len(ports) == 50
                waves.append(set(ports))
    first, second = waves
    assert 1 <= len(first) <= 4, f"{len(first)} connections for a pool of 4"
    assert second <= first, f"the second wave opened new connections: {second - first}"


# ---------------------------------------------------------------------------
# Bodies
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("flavor", FLAVORS)
async def test_streamed_download(peers: Peers, flavor: Flavor) -> None:
    """A 16 MiB body streamed with ``client.stream`` arrives complete, in
    order, byte for byte (SHA-256), in many pieces (it is streamed, not
    buffered whole)."""
    hasher = hashlib.sha256()
    size = pieces = 0
    with anyio.fail_after(BOUND):
        async with (
            traffic_client(flavor, peers) as client,
            client.stream(
                "GET", f"{peers.http}/download", params={"size": BIG, "seed": 1}
            ) as response,
        ):
            assert response.status_code == 200
            assert int(response.headers["content-length"]) == BIG
            traffic_stream(flavor, response)
            async for chunk in response.aiter_bytes():
                hasher.update(chunk)
                size += len(chunk)
                pieces += 1
    assert size == BIG
    assert hasher.hexdigest() == expected_digest(BIG, 1)
    assert pieces > 16


async def test_streamed_upload(peers: Peers) -> None:
    """A 16 MiB request body streamed from an async generator (chunked
    transfer encoding) reaches the server byte for byte: the server's size
    and SHA-256 of what it read match."""
    body = pseudorandom(BIG, 2)

    async def pieces() -> AsyncIterator[bytes]:
        view = memoryview(body)
        for start in range(0, len(view), 256 * 1024):
            yield bytes(view[start : start + 256 * 1024])

    with anyio.fail_after(BOUND):
        async with traffic_client(HTTPX, peers) as client:
            response = await client.post(f"{peers.http}/upload", content=pieces())
            traffic_stream(HTTPX, response)
    assert response.status_code == 200
    assert response.json() == {"size": BIG, "sha256": digest(body)}


# ---------------------------------------------------------------------------
# Timeouts and refusals
# ---------------------------------------------------------------------------


@contextlib.contextmanager
def full_listener() -> Iterator[int]:
    """A port on 127.0.0.1 whose listener's accept queue is full, so a new
    connection's SYN is dropped and ``connect`` waits: a connect timeout
    that is deterministic on loopback, with no network needed.

    Linux drops a SYN when the accept queue holds more than the backlog
    (``sk_acceptq_is_full``), before any SYN-cookie logic: with a backlog of
    0, one connection nobody accepts fills it.  Other kernels size the queue
    differently, so the test is Linux's (where CI runs both builds).
    """
    if not sys.platform.startswith("linux"):
        pytest.skip("the accept-queue overflow that makes connect wait is Linux's behaviour")
    with socket.socket() as listener, socket.socket() as filler:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        filler.settimeout(BOUND)
        filler.connect(listener.getsockname())
        yield listener.getsockname()[1]


# httpx iterates the request body in an async generator of its own
# (``AsyncIteratorByteStream.__aiter__``) that nobody closes when the send
# fails; on trio its finalizer warns.  httpx's own transport does the same.
@pytest.mark.filterwarnings("ignore:Async generator:ResourceWarning")
@pytest.mark.parametrize("flavor", FLAVORS)
async def test_timeouts_and_refusal(peers: Peers, flavor: Flavor) -> None:
    """Each failure is httpx's exception, as with httpx's own transport:

    * ``read``: a server that does not answer within the read timeout is
      ``ReadTimeout``;
    * ``write``: a server that stops reading the request body (the kernel's
      buffers fill, so a write blocks) is ``WriteTimeout``;
    * ``connect``: a connection that cannot be established within the connect
      timeout (:func:`full_listener`) is ``ConnectTimeout``;
    * ``tls-handshake``: a server that never answers the TLS hello within the
      connect timeout is ``ConnectTimeout`` (raised by ``start_tls``);
    * ``refused``: a port with no listener (bound, never listening, so nobody
      else can take it meanwhile) is ``ConnectError``.

    They run at once on one client (each request with its own timeout: the
    test waits for one expiry, not five), and the client then still answers
    a request.  Whatever each attempt opened is closed (the leak check).
    """
    httpx = flavor.httpx
    piece = bytes(MiB)

    async def endless_body() -> AsyncIterator[bytes]:
        for _ in range(256):  # far more than any kernel's socket buffers
            yield piece

    outcomes: dict[str, BaseException | int] = {}
    with full_listener() as waiting_port, socket.socket() as bound, anyio.fail_after(BOUND):
        bound.bind(("127.0.0.1", 0))
        attempts: dict[str, Callable[[Any], Awaitable[Any]]] = {
            "read": lambda client: client.get(
                f"{peers.http}/sleep", timeout=httpx.Timeout(10.0, read=SHORT)
            ),
            "write": lambda client: client.post(
                f"{peers.misbehaving}/stall",
                content=endless_body(),
                timeout=httpx.Timeout(10.0, write=SHORT),
            ),
            "connect": lambda client: client.get(
                f"http://127.0.0.1:{waiting_port}/", timeout=httpx.Timeout(10.0, connect=SHORT)
            ),
            "tls-handshake": lambda client: client.get(
                f"https://127.0.0.1:{peers.misbehaving_port}/",
                timeout=httpx.Timeout(10.0, connect=SHORT),
            ),
            "refused": lambda client: client.get(f"http://127.0.0.1:{bound.getsockname()[1]}/"),
        }

        async def attempt(name: str, client: Any) -> None:
            try:
                outcomes[name] = (await attempts[name](client)).status_code
            except Exception as exc:
                outcomes[name] = exc

        async with traffic_client(flavor, peers) as client:
            async with anyio.create_task_group() as group:
                for name in attempts:
                    group.start_soon(attempt, name, client)
            response = await client.get(f"{peers.http}/info")
            assert response.status_code == 200
            traffic_stream(flavor, response)
    kinds = {name: type(outcome) for name, outcome in outcomes.items()}
    assert kinds == {
        "read": httpx.ReadTimeout,
        "write": httpx.WriteTimeout,
        "connect": httpx.ConnectTimeout,
        "tls-handshake": httpx.ConnectTimeout,
        "refused": httpx.ConnectError,
    }, {name: repr(outcome) for name, outcome in outcomes.items()}


# ---------------------------------------------------------------------------
# TLS and HTTP/2
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("http2", [False, True], ids=["http1.1", "h2"])
async def test_https(peers: Peers, http2: bool) -> None:
    """HTTPS to hypercorn, verified against the test CA, on traffic's
    connection: with ``http2=True`` ALPN selects h2 and the response is
    HTTP/2 (and 20 concurrent requests share its one connection); without,
    HTTP/1.1.  A 1 MiB body arrives byte for byte through TLS."""
    expected_alpn, expected_version = ("h2", "HTTP/2") if http2 else ("http/1.1", "HTTP/1.1")
    with anyio.fail_after(BOUND):
        async with traffic_client(HTTPX, peers, http2=http2) as client:
            response = await client.get(f"{peers.https}/info")
            assert response.status_code == 200
            assert response.http_version == expected_version
            assert response.json()["scheme"] == "https"
            stream = traffic_stream(HTTPX, response)
            ssl_object = stream.get_extra_info("ssl_object")
            assert isinstance(ssl_object, ssl.SSLObject)
            assert ssl_object.selected_alpn_protocol() == expected_alpn
            assert tuple(stream.get_extra_info("server_addr")) == ("127.0.0.1", peers.https_port)

            download = await client.get(f"{peers.https}/download", params={"size": MiB, "seed": 3})
            assert digest(download.content) == expected_digest(MiB, 3)

            if http2:
                ports: set[int] = set()

                async def fetch() -> None:
                    answer = await client.get(f"{peers.https}/info")
                    assert answer.http_version == "HTTP/2"
                    ports.add(answer.json()["client"][1])

                async with anyio.create_task_group() as group:
                    for _ in range(20):
                        group.start_soon(fetch)
                assert len(ports) == 1, f"HTTP/2 used {len(ports)} connections, not one"


# ---------------------------------------------------------------------------
# Cancellation
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("http2", [False, True], ids=["http1.1", "h2"])
async def test_cancel_mid_body_leaves_client_usable(peers: Peers, http2: bool) -> None:
    """A cancel scope cancelled while a large body streams ends the request,
    and the same client's next request succeeds.

    * HTTP/1.1 (uvicorn): the connection is closed at once (the process
      holds exactly the descriptors it held before the request, while the
      client is still open); the next request has a new connection.
    * HTTP/2 over TLS (hypercorn): only the stream ends; the connection
      (httpcore reads it in whichever request's task needs data, so the
      cancelled task may have been inside a TLS read) carries the next
      requests (the same client port), and a 1 MiB body over it arrives
      byte for byte: the cancellation lost nothing of the TLS or HTTP/2
      state.

    In both, closing the client leaves no descriptor behind.
    """
    base = peers.https if http2 else peers.http
    with anyio.fail_after(BOUND):
        # Let the event loop's Traffic exist (it lives as long as the loop,
        # one per loop) before the descriptors are counted.
        async with traffic_client(HTTPX, peers) as warm:
            await warm.get(f"{peers.http}/info")
        before = await descriptors_settle(open_fds())

        async with traffic_client(HTTPX, peers, http2=http2) as client:
            received = 0
            async with client.stream("GET", f"{base}/endless") as response:
                assert response.http_version == ("HTTP/2" if http2 else "HTTP/1.1")
                cancelled_port = traffic_stream(HTTPX, response).get_extra_info("client_addr")[1]
                with anyio.CancelScope() as scope:
                    async for chunk in response.aiter_raw():
                        received += len(chunk)
                        if received >= MiB:
                            scope.cancel()
                assert scope.cancelled_caught
            assert received >= MiB
            if not http2:
                after = await descriptors_settle(before)
                assert after == before, f"descriptors left: {sorted(after - before)}"

            response = await client.get(f"{base}/info")
            assert response.status_code == 200
            traffic_stream(HTTPX, response)
            port = response.json()["client"][1]
            if http2:
                assert port == cancelled_port, "HTTP/2 opened a new connection"
                download = await client.get(f"{base}/download", params={"size": MiB, "seed": 6})
                assert digest(download.content) == expected_digest(MiB, 6)
            else:
                assert port != cancelled_port, "HTTP/1.1 reused the cancelled connection"
        after = await descriptors_settle(before)
        assert after == before, f"descriptors left: {sorted(after - before)}"


async def test_cancel_while_connecting_leaves_nothing_open(peers: Peers) -> None:
    """A request cancelled while its connection is being made, during the
    TCP connect (:func:`full_listener`, which never completes it) or during
    the TLS handshake (a server that never answers the hello), ends at the
    cancellation with nothing left open: the process holds the descriptors
    it held before, while the client is still open, and the client's next
    request succeeds.  (The deadline only decides when the cancellation
    comes: neither connection could complete before it.)"""
    cancelled: list[str] = []
    with full_listener() as waiting_port, anyio.fail_after(BOUND):
        async with traffic_client(HTTPX, peers) as warm:  # the loop's Traffic exists
            await warm.get(f"{peers.http}/info")
        before = await descriptors_settle(open_fds())
        async with traffic_client(HTTPX, peers) as client:

            async def connect(url: str) -> None:
                with anyio.move_on_after(SHORT) as scope:
                    await client.get(url)
                if scope.cancelled_caught:
                    cancelled.append(url)

            urls = [
                f"http://127.0.0.1:{waiting_port}/",
                f"https://127.0.0.1:{peers.misbehaving_port}/",
            ]
            async with anyio.create_task_group() as group:
                for url in urls:
                    group.start_soon(connect, url)
            assert sorted(cancelled) == sorted(urls)
            after = await descriptors_settle(before)
            assert after == before, f"descriptors left: {sorted(after - before)}"
            response = await client.get(f"{peers.http}/info")
            assert response.status_code == 200


@pytest.mark.parametrize("action", ["close", "reset"])
async def test_idle_connection_the_server_ended_is_not_reused(peers: Peers, action: str) -> None:
    """A kept-alive connection the server closes (FIN) or resets (RST) while
    it waits in the pool reads as readable (``get_extra_info("is_readable")``,
    what httpcore asks before reusing it), so the next request opens a new
    connection and succeeds instead of failing on the dead one."""
    url = f"{peers.misbehaving}/{action}-when-idle"
    with anyio.fail_after(BOUND):
        async with traffic_client(HTTPX, peers) as client:
            first = await client.get(url)
            assert first.text == "ok"
            stream = traffic_stream(HTTPX, first)
            for _ in range(2000):
                if stream.get_extra_info("is_readable"):
                    break
                await anyio.sleep(0.001)
            assert stream.get_extra_info("is_readable") is True, "the end never read as readable"
            second = await client.get(url)
            assert second.text == "ok"
            assert traffic_stream(HTTPX, second) is not stream


# ---------------------------------------------------------------------------
# UNIX sockets
# ---------------------------------------------------------------------------


async def test_unix_socket(peers: Peers) -> None:
    """``uds=`` connects to uvicorn's UNIX socket through traffic: requests
    (a GET, a 1 MiB download checked by SHA-256) are answered on traffic's
    connection, whose server address is the socket's path."""
    with anyio.fail_after(BOUND):
        async with traffic_client(HTTPX, peers, uds=peers.uds_path) as client:
            response = await client.get("http://localhost/info")
            assert response.status_code == 200
            assert response.json()["host"] == "localhost"
            stream = traffic_stream(HTTPX, response)
            assert stream.get_extra_info("server_addr") == peers.uds_path
            download = await client.get(
                "http://localhost/download", params={"size": MiB, "seed": 4}
            )
            assert digest(download.content) == expected_digest(MiB, 4)
            assert download.extensions["network_stream"] is stream, "the connection was not reused"


# ---------------------------------------------------------------------------
# Proxies
# ---------------------------------------------------------------------------

PROXIES = ["http_proxy", "https_proxy", "socks5"]

#: Per proxy: the targets, each (scheme, http2).
PROXY_TARGETS = [("http", False), ("https", False), ("https", True)]


@pytest.mark.parametrize("proxy", PROXIES, ids=["http-proxy", "https-proxy", "socks5"])
async def test_proxy(peers: Peers, proxy: str) -> None:
    """Every proxy branch of the transport uses traffic's connections, to an
    http target, an https one and an https one over HTTP/2.

    * Forwarding (an HTTP(S) proxy, an http target: ``GET http://...`` to
      the proxy): the answer comes from the server through the proxy (its
      ``Via`` header), on traffic's connection to the proxy (through the
      HTTPS proxy, a TLS session with the proxy: ``127.0.0.1``).  The proxy
      closes after each answer, so each request has a new connection.
    * Tunnels (``CONNECT`` for https targets, SOCKS5 for all): the
      connection is traffic's, its peer is the proxy (``server_addr``), and
      for an https target its ``ssl_object`` is the session with the
      *server*: its ``server_hostname`` is the target's name (``localhost``),
      not the proxy's (``127.0.0.1``), and ALPN chose the HTTP version.
      A second request reuses the tunnel.
    * Through the HTTPS proxy to an https target, TLS runs inside TLS.
      traffic's ``start_tls`` puts anyio's ``TLSStream`` over the stream it
      is called on and returns a ``TrafficNetworkStream`` over that, so the
      response's stream is still ``TrafficNetworkStream`` (over
      ``TLSStream`` over ``TLSStream`` over traffic's socket stream): what a
      user can check of it is what any tunnel offers, the inner session's
      ``ssl_object`` and the proxy as the peer.
    """
    httpx = HTTPX.httpx
    proxy_url = getattr(peers, proxy)
    proxy_port = getattr(peers, f"{proxy}_port")
    setting = (
        httpx.Proxy(proxy_url, ssl_context=peers.ssl_context())
        if proxy == "https_proxy"
        else proxy_url
    )
    for target, http2 in PROXY_TARGETS:
        url = (
            f"{peers.http}/info"
            if target == "http"
            else f"https://localhost:{peers.https_port}/info"
        )
        with anyio.fail_after(BOUND):
            async with traffic_client(HTTPX, peers, proxy=setting, http2=http2) as client:
                streams = []
                for _ in range(2):
                    response = await client.get(url)
                    assert response.status_code == 200
                    info = response.json()
                    stream = traffic_stream(HTTPX, response)
                    streams.append(stream)
                    if proxy != "socks5" and target == "http":  # forwarded
                        assert info["via"] == "1.1 traffic-tests"
                        ssl_object = stream.get_extra_info("ssl_object")
                        if proxy == "https_proxy":  # the session with the proxy
                            assert isinstance(ssl_object, ssl.SSLObject)
                            assert ssl_object.server_hostname == "127.0.0.1"
                        else:
                            assert ssl_object is None
                        continue
                    assert info["via"] is None
                    assert tuple(stream.get_extra_info("server_addr")) == ("127.0.0.1", proxy_port)
                    ssl_object = stream.get_extra_info("ssl_object")
                    if target == "http":
                        assert ssl_object is None
                        continue
                    assert info["scheme"] == "https"
                    assert isinstance(ssl_object, ssl.SSLObject)
                    assert ssl_object.server_hostname == "localhost"
                    assert ssl_object.selected_alpn_protocol() == ("h2" if http2 else "http/1.1")
                    assert response.http_version == ("HTTP/2" if http2 else "HTTP/1.1")
                if proxy == "socks5" or target == "https":
                    assert streams[0] is streams[1], "the tunnel was not reused"


# ---------------------------------------------------------------------------
# Bad input: the same outcome as httpx's own transport
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class BadInput:
    """An input and what is done with it; :func:`outcome` runs it on a transport."""

    #: The transport's keywords (a function of the peers: contexts are made fresh).
    kwargs: Callable[[Peers], dict[str, Any]] = lambda peers: {}
    #: The URL requested.
    url: Callable[[Peers], str] = lambda peers: f"{peers.http}/info"
    #: "get", or close the client/transport first.
    action: str = "get"


SOL, RCVBUF = socket.SOL_SOCKET, socket.SO_RCVBUF

BAD_INPUTS: dict[str, BadInput] = {
    "closed-client": BadInput(action="closed-client"),
    "closed-transport": BadInput(action="closed-transport"),
    "sockopt-value-str": BadInput(lambda p: {"socket_options": [(SOL, RCVBUF, "big")]}),
    "sockopt-value-short-bytes": BadInput(lambda p: {"socket_options": [(SOL, RCVBUF, b"1")]}),
    "sockopt-unknown-option": BadInput(lambda p: {"socket_options": [(SOL, 0x7FFF, 1)]}),
    "sockopt-null-buffer": BadInput(lambda p: {"socket_options": [(SOL, RCVBUF, None, 4)]}),
    "sockopt-one-element": BadInput(lambda p: {"socket_options": [(SOL,)]}),
    "sockopt-five-elements": BadInput(lambda p: {"socket_options": [(SOL, RCVBUF, 1, 4, 5)]}),
    "sockopt-not-a-tuple": BadInput(lambda p: {"socket_options": [42]}),
    "sockopt-float-level": BadInput(lambda p: {"socket_options": [(1.5, RCVBUF, 1)]}),
    "local-address-invalid": BadInput(lambda p: {"local_address": "not-an-address"}),
    "uds-missing": BadInput(lambda p: {"uds": str(Path(p.uds_path).with_name("nobody.sock"))}),
    "ftp-scheme": BadInput(url=lambda p: f"ftp://127.0.0.1:{p.http_port}/"),
    "tls-untrusted": BadInput(
        lambda p: {"verify": ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)},
        url=lambda p: f"{p.https}/info",
    ),
}


Outcome = tuple[Any, ...]


async def outcome(
    flavor: Flavor, make: Callable[..., Any], case: BadInput, peers: Peers
) -> Outcome:
    """What ``case`` gives on the transport ``make`` builds: ``("answered",
    status)``, or ``("raised", exception type, its cause's type)``."""
    try:
        with anyio.fail_after(BOUND):
            transport = make(**{"verify": False, **case.kwargs(peers)})
            client = flavor.client(transport, timeout=10.0)
            async with client:
                if case.action == "closed-client":
                    await client.aclose()
                elif case.action == "closed-transport":
                    await transport.aclose()
                response = await client.get(case.url(peers))
                return ("answered", response.status_code)
    except Exception as exc:
        return ("raised", type(exc), type(exc.__cause__))


@contextlib.asynccontextmanager
async def reaping_httpcores_leaks() -> AsyncIterator[None]:
    """Around httpx's own transport: its backends leave the connection
    unclosed when a socket option fails (httpcore 1.0.9's ``connect_tcp``
    sets the options after connecting, without closing on failure), and the
    garbage collector closes it with a ``ResourceWarning``.  That is
    httpcore's, not what is tested here: collect it now, warnings ignored,
    and give the event loop a turn to finish closing it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            yield
        finally:
            gc.collect()
            for _ in range(3):
                await anyio.sleep(0)
            gc.collect()


@pytest.mark.parametrize("flavor", FLAVORS)
async def test_bad_input_as_httpx_default(peers: Peers, flavor: Flavor) -> None:
    """For each input of :data:`BAD_INPUTS` (a closed client or transport,
    socket options with a bad value or a malformed tuple, a bad local
    address, a missing UNIX socket, an unsupported scheme, an untrusted
    certificate), traffic's transport raises the same exception type,
    chained to the same cause type, as httpx's default transport, or
    answers the same way: never a crash, a hang or another error.  traffic's
    transport closes whatever it opened (the leak check).

    Every input runs in this one test (a test costs two garbage collections
    of the leak check; fifteen would cost more than the inputs themselves);
    a failure lists every input that differs.
    """
    async with reaping_httpcores_leaks():
        expected = {
            name: await outcome(flavor, flavor.default_transport, case, peers)
            for name, case in BAD_INPUTS.items()
        }
    got = {
        name: await outcome(flavor, flavor.transport, case, peers)
        for name, case in BAD_INPUTS.items()
    }
    differing = {
        name: {"traffic": got[name], "httpx": expected[name]}
        for name in BAD_INPUTS
        if got[name] != expected[name]
    }
    assert not differing, differing


async def test_socket_option_with_length_none_as_httpx_default(peers: Peers) -> None:
    """A four-element socket option whose value is an int and whose length
    is None, ``(SOL_SOCKET, SO_RCVBUF, 65536, None)``, has the outcome it has
    with httpx's default transport.  On asyncio that transport calls
    ``socket.setsockopt(*option)``, which takes a length only beside a None
    value: ``TypeError``.  On trio it calls trio's ``setsockopt(level,
    option, value, length=None)``, which drops a None length: answered."""
    case = BadInput(lambda p: {"socket_options": [(SOL, RCVBUF, 65536, None)]})
    async with reaping_httpcores_leaks():
        expected = await outcome(HTTPX, HTTPX.default_transport, case, peers)
    got = await outcome(HTTPX, HTTPX.transport, case, peers)
    assert got == expected, f"traffic's transport: {got}; httpx's default: {expected}"


@pytest.mark.parametrize("flavor", FLAVORS)
async def test_peer_failures_as_httpx_default(peers: Peers, flavor: Flavor) -> None:
    """A server that fails (:func:`http_support.misbehaving`: a reset or a
    close before the response or in the middle of its body, a reset or a
    close during the TLS handshake) and a refused connection retried
    (``retries=1``: the retry goes through the backend's ``sleep``) give the
    same outcome with traffic's transport as with httpx's default transport
    (``ReadError``, ``RemoteProtocolError``, ``ConnectError``, chained to the
    same causes), and traffic's leaves nothing open (the leak check)."""
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))
        refused = f"http://127.0.0.1:{bound.getsockname()[1]}/"
        cases = {
            path: BadInput(url=lambda p, path=path: f"{p.misbehaving}/{path}")
            for path in (
                "reset-before-response",
                "close-before-response",
                "reset-mid-body",
                "close-mid-body",
            )
        }
        cases["tls-handshake-reset"] = BadInput(url=lambda p: f"https://127.0.0.1:{p.reset_port}/")
        cases["tls-handshake-eof"] = BadInput(url=lambda p: f"https://127.0.0.1:{p.eof_port}/")
        cases["refused-retried"] = BadInput(lambda p: {"retries": 1}, url=lambda p: refused)
        expected = {
            name: await outcome(flavor, flavor.default_transport, case, peers)
            for name, case in cases.items()
        }
        got = {
            name: await outcome(flavor, flavor.transport, case, peers)
            for name, case in cases.items()
        }
    assert all(result[0] == "raised" for result in expected.values()), expected
    differing = {
        name: {"traffic": got[name], "httpx": expected[name]}
        for name in cases
        if got[name] != expected[name]
    }
    assert not differing, differing
