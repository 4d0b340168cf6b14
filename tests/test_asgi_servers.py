"""ASGI servers on traffic: hypercorn's trio worker and anycorn.

:mod:`traffic.integrations.hypercorn` and :mod:`traffic.integrations.anycorn`
serve a Starlette application (``asgi_support.make_app``) to real clients
that are not traffic's: httpx with its default transport (HTTP/1.1, HTTP/2
by prior knowledge and by ALPN over TLS), curl, and websockets' own
client.  Every case runs on each adapter and event loop: hypercorn's trio
worker, anycorn on asyncio, asyncio with uvloop and trio.  Each test
checks that the server's connections really are traffic's streams (under
TLS too), by recording the stream each connection's handler was given;
the leak check (conftest) sees every descriptor closed after shutdown.

Bad input is compared with the host's own ``serve``: the same exception,
with the same message.
"""

from __future__ import annotations

import gc
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio_support import UVLOOP_BACKEND, needs_uvloop
from examples_support import example, start_example

httpx = pytest.importorskip("httpx")
hypercorn_config = pytest.importorskip("hypercorn.config")
anycorn = pytest.importorskip("anycorn")
pytest.importorskip("starlette")
websockets_sync = pytest.importorskip("websockets.sync.client")
trustme = pytest.importorskip("trustme")

import hypercorn.trio  # noqa: E402
import hypercorn.trio.tcp_server  # noqa: E402
from asgi_support import (  # noqa: E402
    ZEROCOPY_POSITIONS,
    Connections,
    Lifespan,
    digest,
    make_app,
    pseudorandom,
    serving,
    stream_body,
    url,
)

import traffic.anyio_backend  # noqa: E402
import traffic.integrations.anycorn  # noqa: E402
import traffic.integrations.anycorn._tcp_server  # noqa: E402
import traffic.integrations.anycorn._worker  # noqa: E402
import traffic.integrations.hypercorn  # noqa: E402
import traffic.integrations.hypercorn._worker  # noqa: E402

MiB = 1024 * 1024

#: The whole-file response: large enough to cross the kernel's buffers many
#: times, as the issue's download.
FILE_SIZE = 64 * MiB

#: Bound on each test's client work, so that a hang fails with a traceback.
BOUND = 60.0

#: A file body goes by the core when the stream's send carried no more than
#: the response's head.
HEAD_BOUND = 1024

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


@dataclass(frozen=True)
class Adapter:
    """One adapter, its host's own ``serve`` and where its connection
    handler is looked up (to record it)."""

    name: str
    serve: Any
    host_serve: Any
    config: Any
    handler_module: Any
    handler: type
    pathsend: bool  # whether file bodies can go by send_file


HYPERCORN = Adapter(
    "hypercorn",
    traffic.integrations.hypercorn.serve,
    hypercorn.trio.serve,
    hypercorn_config.Config,
    traffic.integrations.hypercorn._worker,
    hypercorn.trio.tcp_server.TCPServer,
    pathsend=False,
)
ANYCORN = Adapter(
    "anycorn",
    traffic.integrations.anycorn.serve,
    anycorn.serve,
    anycorn.Config,
    traffic.integrations.anycorn._tcp_server,
    traffic.integrations.anycorn._tcp_server.TCPServer,
    pathsend=True,
)

CASES = [
    pytest.param((HYPERCORN, "trio"), id="hypercorn-trio"),
    pytest.param((ANYCORN, "asyncio"), id="anycorn-asyncio"),
    pytest.param((ANYCORN, UVLOOP_BACKEND), id="anycorn-uvloop", marks=needs_uvloop),
    pytest.param((ANYCORN, "trio"), id="anycorn-trio"),
]


#: The cases of anycorn alone (its zero-copy extension, its use_ktls).
ANYCORN_CASES = CASES[1:]


@pytest.fixture(params=CASES)
def case(request: pytest.FixtureRequest) -> tuple[Adapter, Any]:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def adapter(case: tuple[Adapter, Any]) -> Adapter:
    return case[0]


@pytest.fixture
def anyio_backend(case: tuple[Adapter, Any]) -> Any:
    return case[1]


@pytest.fixture
def connections(adapter: Adapter, monkeypatch: pytest.MonkeyPatch) -> Connections:
    """Every connection the adapter's worker hands its handler, recorded."""
    seen = Connections()
    monkeypatch.setattr(adapter.handler_module, "TCPServer", seen.recording(adapter.handler))
    stream_class = traffic.anyio_backend.TrafficSocketStream
    monkeypatch.setattr(stream_class, "send_file", seen.counting(stream_class.send_file))
    return seen


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    path = tmp_path_factory.mktemp("asgi") / "big.bin"
    data = os.urandom(FILE_SIZE)
    path.write_bytes(data)
    return path, digest(data)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Any]:
    """A certificate for 127.0.0.1 and localhost, its key, and the CA."""
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    for pem in leaf.cert_chain_pems[1:]:
        pem.write_to_path(str(cert), append=True)
    leaf.private_key_pem.write_to_path(str(key))
    return cert, key, ca


def config_for(adapter: Adapter, *binds: str, **settings: Any) -> Any:
    config = adapter.config()
    config.bind = list(binds)
    for name, value in settings.items():
        setattr(config, name, value)
    return config


async def curl(*args: str) -> bytes:
    """curl's output (a real client, in its own process)."""
    with anyio.fail_after(BOUND):
        done = await anyio.run_process(["curl", "--silent", "--show-error", "--fail", *args])
    return done.stdout


def websocket_echo(uri: str, messages: list[bytes | str], unix: str | None = None) -> list[Any]:
    """websockets' own (synchronous) client: each message echoed."""
    connect = websockets_sync.unix_connect if unix else websockets_sync.connect
    kwargs: dict[str, Any] = {"max_size": None, "open_timeout": BOUND, "close_timeout": BOUND}
    if unix:
        kwargs["path"] = unix
    with connect(uri=uri, **kwargs) as ws:
        answers = []
        for message in messages:
            ws.send(message)
            answers.append(ws.recv(timeout=BOUND))
        return answers


needs_curl = pytest.mark.skipif(
    subprocess.run(["which", "curl"], capture_output=True).returncode != 0,
    reason="curl is not installed (CI installs it)",
)


# ---------------------------------------------------------------------------
# The application's routes, over TCP
# ---------------------------------------------------------------------------


@needs_curl
@pytest.mark.anyio
async def test_routes(
    adapter: Adapter, connections: Connections, big_file: tuple[Path, str]
) -> None:
    path, expected = big_file
    lifespan = Lifespan()
    app = make_app(str(path), lifespan)
    config = config_for(adapter, "127.0.0.1:0")
    async with serving(adapter.serve, app, config) as binds:
        base = url(binds)
        assert lifespan.events == ["startup"]
        with anyio.fail_after(BOUND):
            async with httpx.AsyncClient(base_url=base) as client:
                assert (await client.get("/json")).json() == {"hello": "world", "path": "/json"}
                upload = pseudorandom(MiB + 7, 1)
                answer = (await client.post("/echo", content=upload)).json()
                assert answer == {"length": len(upload), "sha256": digest(upload)}
                streamed = await client.get("/stream")
                assert digest(streamed.content) == digest(stream_body())
                ranged = await client.get("/file", headers={"range": "bytes=1000-2000999"})
                assert ranged.status_code == 206
                with path.open("rb") as f:
                    f.seek(1000)
                    assert ranged.content == f.read(2_000_000)
            messages: list[bytes | str] = [b"\x00" * MiB, "text", pseudorandom(MiB, 2)]
            ws_uri = base.replace("http://", "ws://") + "/ws"
            assert await anyio.to_thread.run_sync(websocket_echo, ws_uri, messages) == messages

        # The whole file, to curl, on a connection of its own.
        before = len(connections.seen)
        assert digest(await curl(f"{base}/file")) == expected
    assert lifespan.events == ["startup", "shutdown"]
    assert connections.all_traffic(), connections.seen
    download = connections.seen[before]
    if adapter.pathsend:
        # Starlette's FileResponse asked for pathsend: the body went by the
        # stream's send_file, and only the head through send.
        assert download.file_bytes == download.by_send_file == FILE_SIZE
        assert download.sent <= HEAD_BOUND
    else:
        # hypercorn has no pathsend: the body went through Python.
        assert download.sent >= FILE_SIZE


@pytest.mark.anyio
async def test_http2_prior_knowledge(adapter: Adapter, connections: Connections) -> None:
    app = make_app()
    async with serving(adapter.serve, app, config_for(adapter, "127.0.0.1:0")) as binds:
        with anyio.fail_after(BOUND):
            async with httpx.AsyncClient(base_url=url(binds), http1=False, http2=True) as client:
                responses = [await client.get("/json") for _ in range(3)]
                streamed = await client.get("/stream")
    assert {r.http_version for r in [*responses, streamed]} == {"HTTP/2"}
    assert digest(streamed.content) == digest(stream_body())
    assert connections.all_traffic()


# ---------------------------------------------------------------------------
# TLS, UNIX and descriptor binds
# ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_tls(
    adapter: Adapter,
    connections: Connections,
    certificates: tuple[Path, Path, Any],
    tmp_path: Path,
) -> None:
    cert, key, ca = certificates
    data = pseudorandom(3 * MiB + 5, 3)
    file = tmp_path / "file.bin"
    file.write_bytes(data)
    app = make_app(str(file))
    config = config_for(
        adapter, "127.0.0.1:0", certfile=str(cert), keyfile=str(key), insecure_bind=["127.0.0.1:0"]
    )
    context = ssl.create_default_context()
    ca.configure_trust(context)
    async with serving(adapter.serve, app, config) as binds:
        with anyio.fail_after(BOUND):
            async with httpx.AsyncClient(verify=context, http2=True) as client:
                negotiated = await client.get(url(binds, "https") + "/json")
                assert negotiated.http_version == "HTTP/2"  # ALPN
            async with httpx.AsyncClient(verify=context) as client:
                downloaded = await client.get(url(binds, "https") + "/file")
                assert downloaded.http_version == "HTTP/1.1"
                assert downloaded.content == data
            async with httpx.AsyncClient() as client:
                plain = await client.get(url(binds, "http") + "/json")
                assert plain.json()["hello"] == "world"
    assert connections.all_traffic(), connections.seen
    layers = sorted(tuple(c.streams) for c in connections.seen)
    assert len(layers) == 3
    secure = [streams for streams in layers if len(streams) == 2]
    assert len(secure) == 2, layers  # TLS over traffic's stream
    assert all(streams[0] in ("SSLStream", "TLSStream") for streams in secure)
    # Over TLS a file cannot go by sendfile: it went through the TLS stream.
    assert all(c.by_send_file == 0 for c in connections.seen)
    if adapter.pathsend:
        assert sum(c.file_bytes for c in connections.seen) == len(data)
    else:
        assert max(c.sent for c in connections.seen) >= len(data)


@needs_curl
@pytest.mark.anyio
async def test_unix(adapter: Adapter, connections: Connections, tmp_path: Path) -> None:
    data = pseudorandom(5 * MiB + 3, 4)
    file = tmp_path / "file.bin"
    file.write_bytes(data)
    path = tmp_path / "server.sock"
    app = make_app(str(file))
    async with serving(adapter.serve, app, config_for(adapter, f"unix:{path}")) as binds:
        assert binds == [f"http://unix:{path}"]
        with anyio.fail_after(BOUND):
            transport = httpx.AsyncHTTPTransport(uds=str(path))
            async with httpx.AsyncClient(transport=transport) as client:
                assert (await client.get("http://server/json")).json()["hello"] == "world"
        before = len(connections.seen)
        assert await curl("--unix-socket", str(path), "http://server/file") == data
        messages: list[bytes | str] = [pseudorandom(MiB, 5), "unix"]
        answers = await anyio.to_thread.run_sync(
            websocket_echo, "ws://server/ws", messages, str(path)
        )
        assert answers == messages
    assert connections.all_traffic(), connections.seen
    assert {c.streams[-1] for c in connections.seen} <= {"TrafficStream", "TrafficUNIXSocketStream"}
    if adapter.pathsend:  # send_file over a UNIX socket too
        assert connections.seen[before].by_send_file == len(data)
        assert connections.seen[before].sent <= HEAD_BOUND


@pytest.mark.anyio
async def test_fd_bind(adapter: Adapter, connections: Connections) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    port = sock.getsockname()[1]
    fd = sock.detach()  # the server owns it now, and closes it
    async with serving(adapter.serve, make_app(), config_for(adapter, f"fd://{fd}")) as binds:
        assert binds == [f"http://127.0.0.1:{port}"]
        with anyio.fail_after(BOUND):
            async with httpx.AsyncClient() as client:
                answer = await client.get(f"http://127.0.0.1:{port}/json")
        assert answer.json()["hello"] == "world"
    assert connections.all_traffic(), connections.seen
    with pytest.raises(OSError):
        os.fstat(fd)  # closed with the server


# ---------------------------------------------------------------------------
# anycorn's zero-copy extension
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("case", ANYCORN_CASES, indirect=True)
@pytest.mark.anyio
async def test_zerocopysend_keeps_position(
    adapter: Adapter, connections: Connections, tmp_path: Path
) -> None:
    data = pseudorandom(2 * MiB + 1, 6)
    file = tmp_path / "file.bin"
    file.write_bytes(data)
    ZEROCOPY_POSITIONS.clear()
    async with serving(adapter.serve, make_app(str(file)), config_for(adapter, "127.0.0.1:0")) as b:
        with anyio.fail_after(BOUND):
            async with httpx.AsyncClient() as client:
                answer = await client.get(url(b) + "/zerocopy")
    assert answer.headers["x-zerocopy"] == "1"
    assert answer.content == data[len(data) // 2 :]
    # The application's descriptor is where anycorn leaves it: unmoved.
    assert [len(data) // 2] == ZEROCOPY_POSITIONS
    assert connections.seen[0].by_send_file == len(data) - len(data) // 2
    assert connections.seen[0].sent <= HEAD_BOUND


@pytest.mark.parametrize("case", ANYCORN_CASES, indirect=True)
@pytest.mark.anyio
async def test_kernel_tls_warns_once(
    adapter: Adapter,
    certificates: tuple[Path, Path, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cert, key, ca = certificates
    monkeypatch.setattr(traffic.integrations.anycorn._worker, "_ktls_warned", False)
    context = ssl.create_default_context()
    ca.configure_trust(context)
    config = config_for(adapter, "127.0.0.1:0", certfile=str(cert), keyfile=str(key))
    config.use_ktls = True
    with pytest.warns(traffic.integrations.anycorn.KernelTLSWarning) as warned:
        for _ in range(2):
            async with serving(adapter.serve, make_app(), config) as binds:
                async with httpx.AsyncClient(verify=context) as client:
                    answer = await client.get(url(binds, "https") + "/json")
                assert answer.json()["hello"] == "world"
    assert len(warned) == 1


# ---------------------------------------------------------------------------
# Graceful shutdown and the lifespan
# ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_graceful_shutdown(adapter: Adapter, connections: Connections) -> None:
    """A request that finishes inside graceful_timeout is answered; one
    that would take longer is cut at the deadline; the lifespan ends."""
    lifespan = Lifespan()
    app = make_app(lifespan=lifespan)
    config = config_for(adapter, "127.0.0.1:0", graceful_timeout=1.5)
    stop = anyio.Event()
    outcomes: dict[str, Any] = {}

    async def request(client: Any, seconds: float) -> None:
        try:
            outcomes[f"{seconds}"] = (await client.get(f"/slow?seconds={seconds}")).status_code
        except httpx.TransportError as error:
            outcomes[f"{seconds}"] = type(error).__name__

    with anyio.fail_after(BOUND):
        async with anyio.create_task_group() as tg:
            binds = await tg.start(
                lambda task_status: adapter.serve(
                    app, config, shutdown_trigger=stop.wait, task_status=task_status
                )
            )
            async with (
                httpx.AsyncClient(base_url=url(binds)) as short_client,
                httpx.AsyncClient(base_url=url(binds)) as long_client,
                anyio.create_task_group() as clients,
            ):
                clients.start_soon(request, short_client, 0.3)
                clients.start_soon(request, long_client, 600.0)
                while sum(e.startswith("sleeping") for e in lifespan.events) < 2:
                    await anyio.sleep(0.01)  # until both requests are in the app
                started = time.monotonic()
                stop.set()
        elapsed = time.monotonic() - started
    assert outcomes["0.3"] == 200
    assert outcomes["600.0"] in ("RemoteProtocolError", "ReadError")
    assert elapsed < 30.0  # the graceful timeout, not the long request
    assert lifespan.events[0] == "startup" and lifespan.events[-1] == "shutdown"
    assert connections.all_traffic()


# ---------------------------------------------------------------------------
# Bad input: the host's own errors
# ---------------------------------------------------------------------------


def leaves(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in leaves(inner)]
    return [error]


async def outcome_of(serve: Any, app: Any, config: Any) -> list[tuple[str, str]]:
    with anyio.fail_after(BOUND):
        try:
            async with serving(serve, app, config):
                pass
        except BaseException as error:  # compared with the host's below
            # A message may quote a traceback (the lifespan's): its lines differ.
            return [
                (type(leaf).__name__, str(leaf).split("Traceback (most recent")[0])
                for leaf in leaves(error)
            ]
    return []


@pytest.mark.parametrize(
    ("settings", "adapter_closes"),
    [
        # The hosts' create_sockets leaves the socket of a bind that failed
        # to the garbage collector (the adapters call it as they are).
        pytest.param({"bind": ["127.0.0.1:notaport"]}, False, id="unparsable-bind"),
        pytest.param({"bind": ["256.1.1.1:80"]}, False, id="bad-address"),
        # The hosts leave their bound sockets to the collector; the adapters
        # close them.
        pytest.param(
            {"certfile": "/nonexistent/cert.pem", "keyfile": "/nonexistent/key.pem"},
            True,
            id="missing-certificate",
        ),
    ],
)
@pytest.mark.anyio
async def test_bad_config_fails_as_the_host(
    adapter: Adapter,
    settings: dict[str, Any],
    adapter_closes: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    configs = []
    for _ in range(2):
        config = config_for(adapter, "127.0.0.1:0")
        for name, value in settings.items():
            setattr(config, name, value)
        configs.append(config)
    unclosed: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", unclosed.append)
    ours = await outcome_of(adapter.serve, make_app(), configs[0])
    gc.collect()
    left_by_adapter = [str(u.exc_value) for u in unclosed]
    host = await outcome_of(adapter.host_serve, make_app(), configs[1])
    gc.collect()
    assert host, "the host accepted it"
    assert ours == host
    if adapter_closes:
        assert not left_by_adapter


def wsgi_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("content-type", "text/plain")])
    return [b"WSGI"]


async def wsgi_outcome(serve: Any, config: Any) -> list[tuple[str, str]]:
    """What serving a WSGI application (``mode="wsgi"``) comes to: the
    exceptions ``serve`` raises, or the answer to a request."""
    with anyio.fail_after(BOUND):
        try:
            async with serving(serve, wsgi_app, config, mode="wsgi") as binds:
                async with httpx.AsyncClient() as client:
                    answer = await client.get(url(binds) + "/")
                return [(str(answer.status_code), answer.text)]
        except BaseException as error:  # compared with the host's
            return [(type(leaf).__name__, str(leaf)) for leaf in leaves(error)]


@pytest.mark.anyio
async def test_wsgi_as_the_host(adapter: Adapter) -> None:
    """``mode="wsgi"`` is served as the host serves it: hypercorn's trio
    worker fails on it (the same error here), anycorn serves it (anycorn's
    own uvloop run then raises from its transport as it shuts down: the
    adapter has no such transport)."""
    ours = await wsgi_outcome(adapter.serve, config_for(adapter, "127.0.0.1:0"))
    if adapter is HYPERCORN:
        host = await wsgi_outcome(adapter.host_serve, config_for(adapter, "127.0.0.1:0"))
        assert ours == host == [("ClosedResourceError", "")]
    else:
        assert ours == [("200", "WSGI")]


# ---------------------------------------------------------------------------
# The commands
# ---------------------------------------------------------------------------


def command(adapter: str, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(ROOT)])}
    return subprocess.Popen(
        [sys.executable, "-m", f"traffic.integrations.{adapter}", *args, "asgi_support:app"],
        cwd=TESTS,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.fixture
def running() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.communicate()


def answers_from(path: Path, want: int) -> dict[int, bool]:
    """``/whoami`` on new connections until ``want`` processes answered."""
    seen: dict[int, bool] = {}
    deadline = time.monotonic() + BOUND
    while time.monotonic() < deadline:  # until a worker listens
        with socket.socket(socket.AF_UNIX) as probe:
            if probe.connect_ex(str(path)) == 0:
                break
        time.sleep(0.05)
    while len(seen) < want and time.monotonic() < deadline:
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(path))) as client:
            answer = client.get("http://server/whoami", headers={"connection": "close"})
        seen[answer.json()["pid"]] = answer.json()["traffic"]
    return seen


@pytest.mark.parametrize(
    ("host", "options", "stop"),
    [
        pytest.param("hypercorn", [], signal.SIGTERM, id="hypercorn-SIGTERM"),
        pytest.param("hypercorn", ["-k", "trio"], signal.SIGINT, id="hypercorn-SIGINT"),
        pytest.param("anycorn", ["-k", "asyncio"], signal.SIGTERM, id="anycorn-asyncio"),
        pytest.param("anycorn", ["-k", "trio"], signal.SIGINT, id="anycorn-trio"),
    ],
)
def test_command_workers(
    host: str,
    options: list[str],
    stop: signal.Signals,
    tmp_path: Path,
    running: list[subprocess.Popen[str]],
) -> None:
    path = tmp_path / "server.sock"
    process = command(
        host, *options, "--workers", "2", "--graceful-timeout", "5", "-b", f"unix:{path}"
    )
    running.append(process)
    seen = answers_from(path, 2)
    assert len(seen) == 2, (seen, process.poll())
    assert all(seen.values()), f"a worker without traffic's core: {seen}"
    assert process.pid not in seen  # the workers are processes of their own
    process.send_signal(stop)
    output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output


def test_command_refuses_other_workers(running: list[subprocess.Popen[str]]) -> None:
    process = command("hypercorn", "-k", "asyncio", "-b", "127.0.0.1:0")
    running.append(process)
    output, _ = process.communicate(timeout=30)
    assert process.returncode != 0
    assert "trio worker" in output


@pytest.mark.anyio
async def test_application_error(
    adapter: Adapter, connections: Connections, caplog: pytest.LogCaptureFixture
) -> None:
    """An application that raises: the host's 500 and its error log, and
    the connection and server go on."""
    async with serving(adapter.serve, make_app(), config_for(adapter, "127.0.0.1:0")) as binds:
        with anyio.fail_after(BOUND):
            async with httpx.AsyncClient(base_url=url(binds)) as client:
                failed = await client.get("/fails")
                after = await client.get("/json")
    assert failed.status_code == 500
    assert after.json()["hello"] == "world"
    assert any("the application failed" in str(r.exc_info) for r in caplog.records)
    assert connections.all_traffic()
    # The records hold the exception's traceback, and its frames the
    # streams: let them go before the leak check.
    caplog.clear()


@needs_curl
@pytest.mark.parametrize("options", [[], ["--trio"]], ids=["asyncio", "trio"])
def test_example_asgi_files(
    options: list[str], tmp_path: Path, running: list[subprocess.Popen[str]]
) -> None:
    """examples/asgi_files.py as a user runs it: curl downloads a file and
    a range of it; Ctrl-C ends it with status 0."""
    root = tmp_path / "root"
    root.mkdir()
    data = pseudorandom(3 * MiB + 11, 7)
    (root / "data.bin").write_bytes(data)
    path = tmp_path / "server.sock"
    process = start_example(
        example("asgi_files.py"),
        str(root),
        "--bind",
        f"unix:{path}",
        *options,
        stderr=subprocess.STDOUT,
    )
    running.append(process)
    assert process.stdout is not None
    line = process.stdout.readline()
    assert f"Running on http://unix:{path}" in line, line

    def fetch(*args: str) -> bytes:
        done = subprocess.run(
            ["curl", "--silent", "--show-error", "--fail", "--unix-socket", str(path), *args],
            capture_output=True,
            timeout=BOUND,
            check=True,
        )
        return done.stdout

    assert fetch("http://server/") == b'{"data.bin":%d}' % len(data)
    assert fetch("http://server/files/data.bin") == data
    assert fetch("-r", "100-199", "http://server/files/data.bin") == data[100:200]
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output


@pytest.mark.parametrize("host", ["hypercorn", "anycorn"])
def test_command_application_not_found(
    host: str, tmp_path: Path, running: list[subprocess.Popen[str]]
) -> None:
    """A worker that cannot load the application fails the command with the
    host's own error (hypercorn's own command then exits 0: a non-zero code
    is anycorn's fix, kept for both)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            f"traffic.integrations.{host}",
            "--workers",
            "1",
            "-b",
            f"unix:{tmp_path / 's'}",
            "nosuchmodule:app",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    running.append(process)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 1, output
    assert f"{host}.utils.NoAppError: Cannot load application from 'nosuchmodule:app'" in output


@pytest.mark.parametrize("host", ["hypercorn", "anycorn"])
def test_command_without_workers_stops_on_sigterm(
    host: str, tmp_path: Path, running: list[subprocess.Popen[str]]
) -> None:
    """``--workers 0``: the command serves in its own process, and SIGTERM
    shuts it down gracefully, exit status 0 (hypercorn's trio worker
    would die of it)."""
    path = tmp_path / "server.sock"
    process = command(host, "--workers", "0", "-b", f"unix:{path}")
    running.append(process)
    assert list(answers_from(path, 1).items()) == [(process.pid, True)]
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output


@pytest.mark.anyio
async def test_serve_warns_about_process_options(adapter: Adapter) -> None:
    config = config_for(adapter, "127.0.0.1:0", workers=2)
    with pytest.warns(Warning, match="`workers` has no affect"):
        async with serving(adapter.serve, make_app(), config):
            pass
