"""The bad-input catalogue of ``send_file`` and ``receive_file``: what a caller
can get wrong, on the trio layer and on the anyio layer (asyncio, uvloop,
trio), and what happens then.

A refusal (``traffic/_files.py`` validates; the stream checks it is open and
not busy) raises its documented exception, of that exact type, and changes
nothing: no byte reaches the peer (a marker sent afterwards is the first
thing the stdlib peer reads), no byte is taken from the stream (what the peer
sent is still there for the next receive), the file's position and contents
are as they were, and the stream still works (a real ``send_file`` /
``receive_file`` and a plain send, checked byte for byte).  A pipe, socket or
descriptor passed as the bad "file" keeps what it held too.

Every test runs its body on every layer (``on_every_layer``: one test for
them all, as a test's leak check costs more than a run), and names the
layers that failed: ``TrafficStream``'s methods, ``traffic.send_file`` /
``receive_file`` given the stream, the same given Octets transits
(``Octets.wrap``), and the anyio streams (an ``AF_UNIX`` pair by
``TrafficUNIXSocketStream.from_socket``, TCP by ``connect_tcp``) on asyncio,
asyncio+uvloop and trio.  Sections:

- the catalogue, one test per bad input (the ``pytest.mark.parametrize`` ids
  name them), for ``send_file`` and for ``receive_file``;
- the edge that is not a refusal: an empty region sends 0 bytes;
- the trio functions' own checks (a wrong target, a transit of the wrong
  polarity);
- a closed stream (``aclose()``, ``send_eof()``), a busy one (another task
  sending or receiving, with bytes or with a file);
- every other way to make a stream (the anyio factories, ``from_socket``,
  trio's openers), with a refusal of each kind both ways;
- a batch of every refusal on one stream: no descriptor and no core object
  left behind;
- a file truncated while it is sent: ``FileEndedError``, whose ``sent`` is
  what the peer got and the position ``offset + sent``; the stream goes on;
- numbers beyond what the kernel takes: a descriptor past a C ``int`` is
  ``traffic.OutOfRangeError``, a receive count past any stream receives
  until the end.

A refusal (bad input, a busy or closed stream, a busy transit) leaves the
file's position where it was.

The autouse leak check of ``conftest.py`` runs after every test too.
Nothing may hang: every run is under ``anyio.fail_after`` and the file under
``pytest.mark.timeout``.
"""

from __future__ import annotations

import errno
import gc
import io
import os
import resource
import select
import shutil
import socket
import tempfile
import threading
import time
import traceback
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest
import trio
from anyio.abc import SocketAttribute
from anyio_support import HAVE_UVLOOP, RUN_BACKENDS
from trio_support import pseudorandom

import traffic
import traffic.anyio_backend as ab
from traffic import FileEndedError, Octets, OutOfRangeError

pytestmark = pytest.mark.timeout(60)

#: Bounds a hang, never decides a pass.
LIMIT = 20

MiB = 1 << 20


#: The regular file of the catalogue's rows (its position is set to START).
DATA = pseudorandom(1000, 1)
START = 7
#: What the stream sends after a refusal: the first thing the peer must read.
MARKER = b"<marker after the refusal>"
#: What the peer sends before a refused receive: still there after it.
PAYLOAD = b"<the peer's bytes, not to be consumed by a refusal>"
#: The file of the transfers that show the stream still works.
GOOD = pseudorandom(3000, 2)


# Peers


def peer_read(sock: socket.socket, n: int) -> bytes:
    """Exactly ``n`` bytes from the stdlib peer (fewer only at EOF)."""
    sock.settimeout(LIMIT)
    chunks = []
    while n:
        chunk = sock.recv(min(n, MiB))
        if not chunk:
            break
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def readable(sock: Any) -> bool:
    r, _, _ = select.select([sock], [], [], 0)
    return bool(r)


def idle(sock: socket.socket) -> bool:
    """Nothing more for the peer to read (and no EOF) right now."""
    return not readable(sock)


def ended(sock: socket.socket) -> bool:
    """The peer sees the end with no byte before it: EOF, or the reset of a
    socket closed with the peer's bytes unread."""
    try:
        return peer_read(sock, 1) == b""
    except ConnectionResetError:
        return True


def drainer(sock: socket.socket, into: bytearray, limit: int | None = None) -> threading.Thread:
    """A stdlib peer reading in a thread until EOF, or ``limit`` bytes."""

    def run() -> None:
        sock.settimeout(LIMIT)
        while limit is None or len(into) < limit:
            chunk = sock.recv(MiB if limit is None else min(MiB, limit - len(into)))
            if not chunk:
                return
            into.extend(chunk)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


async def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Wait for a real condition, in bounded steps."""
    for _ in range(4000):
        if condition():
            return
        await anyio.sleep(0.005)
    raise AssertionError(f"never happened: {what}")


def small_buffers(ours: Any, peer: socket.socket | None) -> None:
    """Small socket buffers: a send the peer does not read parks soon, with
    little in flight."""
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
    if peer is not None:
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)


# The layers: one interface over each way of reaching the core


class Side:
    """A stream of one layer, seen through the calls the tests make."""

    busy: type[BaseException]
    closed: type[BaseException]

    def __init__(self) -> None:
        self.cleanups: list[Callable[[], None]] = []

    async def send_file(self, file: Any, **kwargs: Any) -> int:
        raise NotImplementedError

    async def receive_file(self, file: Any, **kwargs: Any) -> int:
        raise NotImplementedError

    async def send(self, data: bytes) -> None:
        raise NotImplementedError

    async def receive(self, max_bytes: int) -> bytes:
        raise NotImplementedError

    async def send_eof(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    def setsockopt(self, level: int, option: int, value: int) -> None:
        raise NotImplementedError

    async def aclose(self) -> None:
        try:
            await self.close()
        finally:
            for cleanup in self.cleanups:
                cleanup()

    async def receive_exactly(self, n: int) -> bytes:
        got = b""
        while len(got) < n:
            chunk = await self.receive(n - len(got))
            assert chunk, f"the stream ended after {len(got)} of {n} bytes"
            got += chunk
        return got


class TrioMethods(Side):
    """``TrafficStream.send_file`` / ``receive_file``."""

    busy = trio.BusyResourceError
    closed = trio.ClosedResourceError

    def __init__(self, stream: traffic.TrafficStream) -> None:
        super().__init__()
        self.stream = stream

    async def send_file(self, file: Any, **kwargs: Any) -> int:
        return await self.stream.send_file(file, **kwargs)

    async def receive_file(self, file: Any, **kwargs: Any) -> int:
        return await self.stream.receive_file(file, **kwargs)

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def receive(self, max_bytes: int) -> bytes:
        return await self.stream.receive_some(max_bytes)

    async def send_eof(self) -> None:
        await self.stream.send_eof()

    async def close(self) -> None:
        await self.stream.aclose()

    def setsockopt(self, level: int, option: int, value: int) -> None:
        self.stream.setsockopt(level, option, value)


class TrioFunctions(TrioMethods):
    """``traffic.send_file(stream, ...)`` / ``traffic.receive_file(stream, ...)``."""

    async def send_file(self, file: Any, **kwargs: Any) -> int:
        return await traffic.send_file(self.stream, file, **kwargs)

    async def receive_file(self, file: Any, **kwargs: Any) -> int:
        return await traffic.receive_file(self.stream, file, **kwargs)


class TrioTransits(Side):
    """``traffic.send_file(output)`` / ``traffic.receive_file(input)`` on the
    Octets transits of a socket (``Octets.wrap``)."""

    busy = trio.BusyResourceError
    closed = trio.ClosedResourceError

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self.input, self.output = Octets.wrap(sock)

    async def send_file(self, file: Any, **kwargs: Any) -> int:
        return await traffic.send_file(self.output, file, **kwargs)

    async def receive_file(self, file: Any, **kwargs: Any) -> int:
        return await traffic.receive_file(self.input, file, **kwargs)

    async def send(self, data: bytes) -> None:
        await traffic.send_all(self.output, data)

    async def receive(self, max_bytes: int) -> bytes:
        buffer = bytearray(max_bytes)
        n = await traffic.recv_into(self.input, buffer)
        return bytes(buffer[:n])

    async def send_eof(self) -> None:
        self.output.terminate()
        await trio.lowlevel.checkpoint()

    async def close(self) -> None:
        self.input.terminate()
        self.output.terminate()
        await trio.lowlevel.checkpoint()


class AnyioMethods(Side):
    """The anyio streams' ``send_file`` / ``receive_file``."""

    busy = anyio.BusyResourceError
    closed = anyio.ClosedResourceError

    def __init__(self, stream: ab.TrafficSocketStream) -> None:
        super().__init__()
        self.stream = stream

    async def send_file(self, file: Any, **kwargs: Any) -> int:
        return await self.stream.send_file(file, **kwargs)

    async def receive_file(self, file: Any, **kwargs: Any) -> int:
        return await self.stream.receive_file(file, **kwargs)

    async def send(self, data: bytes) -> None:
        await self.stream.send(data)

    async def receive(self, max_bytes: int) -> bytes:
        return await self.stream.receive(max_bytes)

    async def send_eof(self) -> None:
        await self.stream.send_eof()

    async def close(self) -> None:
        await self.stream.aclose()

    def setsockopt(self, level: int, option: int, value: int) -> None:
        self.stream.extra(SocketAttribute.raw_socket).setsockopt(level, option, value)


def _unix_path(cleanups: list[Callable[[], None]]) -> str:
    """A short AF_UNIX path (tmp_path may pass the 108 bytes of sun_path)."""
    directory = tempfile.mkdtemp(prefix="tfbad")
    cleanups.append(lambda: shutil.rmtree(directory, ignore_errors=True))
    return os.path.join(directory, "s")


def _tcp_server(small: bool) -> socket.socket:
    server = socket.socket()
    if small:
        # Inherited by the accepted peer (and its window set at the handshake).
        server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    server.bind(("127.0.0.1", 0))
    server.listen()
    return server


def _unix_server(path: str) -> socket.socket:
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen()
    return server


def _client(address: Any, family: int = socket.AF_INET, small: bool = False) -> socket.socket:
    client = socket.socket(family)
    if small:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    client.connect(address)
    return client


async def _open_trio(kind: str, small: bool) -> tuple[Side, socket.socket]:
    cleanups: list[Callable[[], None]] = []
    if kind in ("methods", "functions", "transits"):
        ours, peer = socket.socketpair()
        if small:
            small_buffers(ours, peer)
        if kind == "transits":
            return TrioTransits(ours), peer
        cls = TrioMethods if kind == "methods" else TrioFunctions
        return cls(traffic.TrafficStream(ours)), peer
    if kind == "open_tcp_stream":
        with _tcp_server(small) as server:
            stream = await traffic.open_tcp_stream(*server.getsockname())
            peer, _ = server.accept()
    elif kind == "open_tcp_listeners":
        listener = (await traffic.open_tcp_listeners(0, host="127.0.0.1"))[0]
        try:
            peer = _client(listener.socket.getsockname(), small=small)
            stream = await listener.accept()
        finally:
            await listener.aclose()
    elif kind == "open_unix_stream":
        path = _unix_path(cleanups)
        with _unix_server(path) as server:
            stream = await traffic.open_unix_stream(path)
            peer, _ = server.accept()
    else:
        raise AssertionError(kind)
    side = TrioMethods(stream)
    side.cleanups = cleanups
    if small:
        small_buffers(side, None)
    return side, peer


async def _open_anyio(kind: str, small: bool) -> tuple[Side, socket.socket]:
    cleanups: list[Callable[[], None]] = []
    if kind == "unix":
        ours, peer = socket.socketpair()
        if small:
            small_buffers(ours, peer)
        return AnyioMethods(await ab.TrafficUNIXSocketStream.from_socket(ours)), peer
    if kind == "from_socket-unix":
        ours, peer = socket.socketpair()
        stream: ab.TrafficSocketStream = await ab.TrafficSocketStream.from_socket(ours)
    elif kind == "from_socket-tcp":
        with _tcp_server(small) as server:
            ours = socket.create_connection(server.getsockname())
            peer, _ = server.accept()
        stream = await ab.TrafficSocketStream.from_socket(ours)
    elif kind == "tcp":
        with _tcp_server(small) as server:
            stream = await ab.connect_tcp(*server.getsockname())
            peer, _ = server.accept()
    elif kind == "create_tcp_listener":
        listener = (await ab.create_tcp_listener(local_host="127.0.0.1")).listeners[0]
        try:
            port = listener.extra(SocketAttribute.local_port)
            peer = _client(("127.0.0.1", port), small=small)
            stream = await listener.accept()
        finally:
            await listener.aclose()
    elif kind == "connect_unix":
        path = _unix_path(cleanups)
        with _unix_server(path) as server:
            stream = await ab.connect_unix(path)
            peer, _ = server.accept()
    elif kind == "create_unix_listener":
        path = _unix_path(cleanups)
        unix_listener = await ab.create_unix_listener(path)
        try:
            peer = _client(path, socket.AF_UNIX)
            stream = await unix_listener.accept()
        finally:
            await unix_listener.aclose()
    else:
        raise AssertionError(kind)
    side = AnyioMethods(stream)
    side.cleanups = cleanups
    if small:
        small_buffers(side, None)
    return side, peer


Body = Callable[[Side, socket.socket], Awaitable[None]]


@dataclass
class Layer:
    """How to run a test's body on one layer: the run (``trio.run``, or
    ``anyio.run`` on a backend) and how its stream is made."""

    id: str
    backend: str | None  # None: trio.run and the trio layer
    options: dict[str, Any] = field(default_factory=dict)
    kind: str = "methods"

    def run(self, body: Body, small: bool = False) -> None:
        async def main() -> None:
            with anyio.fail_after(LIMIT):
                if self.backend is None:
                    side, peer = await _open_trio(self.kind, small)
                else:
                    side, peer = await _open_anyio(self.kind, small)
                try:
                    with peer:
                        await body(side, peer)
                finally:
                    await side.aclose()

        if self.backend is None:
            trio.run(main)
        else:
            anyio.run(main, backend=self.backend, backend_options=self.options)


def layers(trio_kinds: list[str], anyio_kinds: list[str]) -> list[Layer]:
    out = [Layer(f"trio-{kind}", None, kind=kind) for kind in trio_kinds]
    for backend in RUN_BACKENDS:
        name, options = backend.values[0]
        out += [Layer(f"anyio-{backend.id}-{kind}", name, options, kind) for kind in anyio_kinds]
    return out


def on_every_layer(layers_: list[Layer], body: Body, small: bool = False) -> None:
    """Run ``body`` on each layer (one test for them all: a test costs its
    leak check's collections); fail with every layer's failure, by name.
    Only the text of a failure is kept: its frames would keep the core's
    objects alive past the leak check.  The uvloop layers are left out where
    uvloop is not installed (as anyio_support's marks skip them)."""
    failures = []
    for layer in layers_:
        if layer.backend == "asyncio" and layer.options.get("use_uvloop") and not HAVE_UVLOOP:
            continue
        try:
            layer.run(body, small)
        except Exception as error:
            failures.append(f"--- {layer.id}:\n" + "".join(traceback.format_exception(error)))
        except pytest.fail.Exception as error:  # pytest.raises saw no exception
            failures.append(f"--- {layer.id}:\n" + "".join(traceback.format_exception(error)))
    assert not failures, "\n".join(failures)


#: Every layer, each with the stream the catalogue uses.
LAYERS = layers(["methods", "functions", "transits"], ["unix", "tcp"])
#: Every way to make a stream, for the factories' test.
FACTORIES = layers(
    ["open_tcp_stream", "open_tcp_listeners", "open_unix_stream"],
    [
        "from_socket-unix",
        "from_socket-tcp",
        "create_tcp_listener",
        "connect_unix",
        "create_unix_listener",
    ],
)


# What shows the stream still works


async def send_good(side: Side, peer: socket.socket, directory: Path) -> None:
    """A region of a file, then the rest of it from its position: all arrive."""
    path = directory / "good-out"
    path.write_bytes(GOOD)
    with open(path, "rb") as f:
        assert await side.send_file(f, offset=100, count=2000) == 2000
        assert f.tell() == 2100
        assert await side.send_file(f) == len(GOOD) - 2100
        assert f.tell() == len(GOOD)
    assert peer_read(peer, len(GOOD) - 100) == GOOD[100:]
    await side.send(MARKER)
    assert peer_read(peer, len(MARKER)) == MARKER


async def receive_good(side: Side, peer: socket.socket, directory: Path) -> None:
    """The peer's bytes land in a file after what it held, then a plain receive."""
    path = directory / "good-in"
    with open(path, "w+b") as f:
        f.write(b"head")
        peer.sendall(GOOD)
        assert await side.receive_file(f, count=len(GOOD)) == len(GOOD)
        assert f.tell() == 4 + len(GOOD)
    assert path.read_bytes() == b"head" + GOOD
    peer.sendall(PAYLOAD)
    assert await side.receive_exactly(len(PAYLOAD)) == PAYLOAD


# The catalogue's rows


@dataclass
class Bad:
    """A bad argument set, and the check that the refusal changed nothing."""

    file: Any
    kwargs: dict[str, Any] = field(default_factory=dict)
    check: Callable[[], None] = lambda: None


class Ctx:
    """Makes a row's files; closes them after the row."""

    def __init__(self, directory: Path, owned: ExitStack) -> None:
        self.directory = directory
        self.owned = owned
        self.made = 0

    def path(self, data: bytes = DATA) -> Path:
        self.made += 1
        path = self.directory / f"bad-{self.made}"
        path.write_bytes(data)
        return path

    def keep(self, thing: Any) -> Any:
        self.owned.callback(thing.close)
        return thing

    def open(self, path: Path | str, mode: str, encoding: str | None = None) -> Any:
        """A file closed after the row."""
        return self.keep(open(path, mode, encoding=encoding))

    def fd(self, fd: int) -> int:
        self.owned.callback(os.close, fd)
        return fd

    def opened(self, mode: str, data: bytes = DATA, text: bool = False) -> tuple[Any, Path]:
        """A file of ``data`` open in ``mode``, its position at START."""
        path = self.path(data)
        f = self.open(path, mode, encoding="latin-1" if text else None)
        f.seek(START)
        return f, path

    def unchanged(self, file: Any, path: Path | None) -> Callable[[], None]:
        """A check that ``file`` (object or descriptor) kept its position, and
        ``path`` its contents."""

        def state() -> tuple[Any, ...]:
            raw = getattr(file, "wrapped", file)
            if isinstance(raw, int):
                positions: tuple[Any, ...] = (os.lseek(raw, 0, os.SEEK_CUR),)
            elif raw.closed:
                positions = ()
            else:
                positions = (raw.tell(), os.lseek(raw.fileno(), 0, os.SEEK_CUR))
            return (*positions, path.read_bytes() if path is not None else None)

        before = state()

        def check() -> None:
            assert state() == before, "the refusal moved or changed the file"

        return check


Make = Callable[[Ctx], Bad]


def regular(mode: str, wrap: Callable[[Any], Any] = lambda f: f, **kwargs: Any) -> Make:
    """A regular file open in ``mode`` (also closed, wrapped, as text)."""

    def make(c: Ctx) -> Bad:
        text = "b" not in mode
        f, path = c.opened(mode.replace("!", ""), text=text)
        if "!" in mode:  # closed
            f.close()
        return Bad(wrap(f), kwargs, c.unchanged(f, path))

    return make


def descriptor(flags: int, **kwargs: Any) -> Make:
    def make(c: Ctx) -> Bad:
        path = c.path()
        fd = c.fd(os.open(path, flags))
        os.lseek(fd, START, os.SEEK_SET)
        return Bad(fd, kwargs, c.unchanged(fd, path))

    return make


def truncated_before(c: Ctx) -> Bad:
    f, path = c.opened("rb")
    os.truncate(path, 10)  # the size check reads fstat at the call
    return Bad(f, {"offset": 0, "count": len(DATA)}, c.unchanged(f, path))


def empty_file(c: Ctx) -> Bad:
    path = c.path(b"")
    f = c.open(path, "rb")
    return Bad(f, {"count": 1}, c.unchanged(f, path))


def directory(c: Ctx) -> Bad:
    fd = c.fd(os.open(c.directory, os.O_RDONLY))
    return Bad(fd)


class Duck:
    """No io object: a "file" ``_files`` takes by its ``fileno()``."""

    closed = False

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def fileno(self) -> int:
        return self.fd

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return 0


def directory_duck(c: Ctx) -> Bad:
    """The only way a directory reaches receive_file's type check: a
    directory cannot be opened for writing."""
    return Bad(Duck(c.fd(os.open(c.directory, os.O_RDONLY))))


def pipe_end(reading: bool, as_file: bool) -> Make:
    """A pipe's end; the check: the read end's bytes are still there (send),
    nothing was written to the write end (receive)."""

    def make(c: Ctx) -> Bad:
        r, w = os.pipe()
        c.fd(r)
        c.fd(w)
        os.write(w, b"pending")
        if not reading:
            assert os.read(r, 100) == b"pending"
        end = r if reading else w
        file = os.fdopen(os.dup(end), "rb" if reading else "wb") if as_file else end
        if as_file:
            c.keep(file)

        def check() -> None:
            os.set_blocking(r, False)
            if reading:
                assert os.read(r, 100) == b"pending"
            with pytest.raises(BlockingIOError):
                os.read(r, 100)

        return Bad(file, {}, check)

    return make


def socket_end(reading: bool) -> Make:
    """One end of a stdlib socket pair; the check: the bytes waiting in it
    are still there (send), nothing went to its peer (receive)."""

    def make(c: Ctx) -> Bad:
        x, y = socket.socketpair()
        c.keep(x)
        c.keep(y)
        y.sendall(b"pending")

        def check() -> None:
            assert idle(y)
            assert peer_read(x, 7) == b"pending"

        return Bad(x.fileno(), {}, check)

    return make


def device(name: str, mode: str) -> Make:
    def make(c: Ctx) -> Bad:
        return Bad(c.open(name, mode))

    return make


def socket_file(c: Ctx) -> Bad:
    x, y = socket.socketpair()
    c.keep(x)
    c.keep(y)
    y.sendall(b"pending")
    f = c.keep(x.makefile("rb"))

    def check() -> None:
        assert peer_read(x, 7) == b"pending"

    return Bad(f, {}, check)


def unopened(big: bool) -> Make:
    """A descriptor number that is open in no process: at the descriptor
    limit (never handed out), or the largest C int."""

    def make(c: Ctx) -> Bad:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        fd = 2**31 - 1 if big or not 0 < soft < 2**31 - 1 else soft
        with pytest.raises(OSError) as info:
            os.fstat(fd)
        assert info.value.errno == errno.EBADF
        return Bad(fd)

    return make


def value(thing: Any) -> Make:
    return lambda c: Bad(thing)


def with_args(**kw: Any) -> Make:
    """A good file at START with bad keyword arguments; writable for receive."""

    def make(c: Ctx) -> Bad:
        f, path = c.opened("r+b")
        return Bad(f, kw, c.unchanged(f, path))

    return make


def o_path(c: Ctx) -> Bad:
    """An ``O_PATH`` descriptor: it names the file but reads nothing."""
    path = c.path()
    fd = c.fd(os.open(path, os.O_PATH))
    return Bad(fd, {"offset": 0, "count": 10}, lambda: None)


def regular_fdopen(c: Ctx, flags: int, mode: str, wrap: Callable[[Any], Any] = lambda f: f) -> Bad:
    """A file object over ``os.open(path, flags)``: write-only without
    truncating it (``open(path, "wb")`` would)."""
    path = c.path()
    f = c.keep(os.fdopen(os.open(path, flags), mode))
    f.seek(START)
    return Bad(wrap(f), {}, c.unchanged(f, path))


def trio_wrap(f: Any) -> Any:
    return trio.wrap_file(f)


def anyio_wrap(f: Any) -> Any:
    return anyio.wrap_file(f)


def row(make: Make, exception: Any, id: str, errno_: int | None = None) -> Any:
    """A row: its expected exception type(s) (exact: ``io.UnsupportedOperation``
    is a ValueError too, and must not pass for one)."""
    types = exception if isinstance(exception, tuple) else (exception,)
    return pytest.param(make, types, errno_, id=id)


UNSUPPORTED = io.UnsupportedOperation
NON_FILES = [
    row(value(True), TypeError, "file=True"),
    row(value(None), TypeError, "file=None"),
    row(value("/etc/passwd"), TypeError, "file=str"),
    row(value(b"bytes"), TypeError, "file=bytes"),
    row(value(3.0), TypeError, "file=float"),
    # BytesIO has no descriptor: its fileno() says so.
    row(lambda c: Bad(io.BytesIO(DATA)), (TypeError, UNSUPPORTED), "file=BytesIO"),
    row(value(-1), ValueError, "fd=-1"),
    row(unopened(False), OSError, "fd=unopened", errno.EBADF),
    row(unopened(True), OSError, "fd=2**31-1", errno.EBADF),
    # Past a C int: refused, with nothing moved (the type: see
    # test_descriptor_beyond_a_c_int_error_type).
    row(value(2**31), (OSError, OverflowError, OutOfRangeError), "fd=2**31"),
    row(value(2**63), (OSError, OverflowError, OutOfRangeError), "fd=2**63"),
]

SEND: list[Any] = [
    row(regular("r"), TypeError, "text"),
    row(regular("r", trio_wrap), TypeError, "text-trio.wrap_file"),
    row(regular("r", anyio_wrap), TypeError, "text-anyio.wrap_file"),
    row(regular("rb!"), ValueError, "closed"),
    row(regular("rb!", trio_wrap), ValueError, "closed-trio.wrap_file"),
    row(regular("rb!", anyio_wrap), ValueError, "closed-anyio.wrap_file"),
    row(regular("ab"), UNSUPPORTED, "write-only-append"),
    row(lambda c: regular_fdopen(c, os.O_WRONLY, "wb"), UNSUPPORTED, "write-only"),
    row(lambda c: regular_fdopen(c, os.O_WRONLY, "wb", trio_wrap), UNSUPPORTED, "wo-trio.wrap"),
    row(lambda c: regular_fdopen(c, os.O_WRONLY, "wb", anyio_wrap), UNSUPPORTED, "wo-anyio.wrap"),
    row(descriptor(os.O_WRONLY), UNSUPPORTED, "fd-write-only"),
    row(directory, IsADirectoryError, "fd-directory"),
    row(directory_duck, IsADirectoryError, "duck-directory"),
    row(pipe_end(True, False), ValueError, "fd-pipe"),
    row(pipe_end(True, True), ValueError, "pipe-file"),
    row(socket_end(True), ValueError, "fd-socket"),
    row(socket_file, ValueError, "socket-makefile"),
    row(device("/dev/zero", "rb"), ValueError, "device-/dev/zero"),
    row(device("/dev/null", "rb"), ValueError, "device-/dev/null"),
    *NON_FILES,
    row(o_path, OSError, "fd-O_PATH", errno.EBADF),
    row(with_args(offset=-1), ValueError, "offset=-1"),
    row(with_args(offset=-(2**63)), ValueError, "offset=-2**63"),
    row(with_args(offset=-1, count=1), ValueError, "offset=-1,count=1"),
    row(with_args(count=0), ValueError, "count=0"),
    row(with_args(count=-1), ValueError, "count=-1"),
    row(with_args(offset=0, count=0), ValueError, "offset=0,count=0"),
    row(with_args(offset=10, count=len(DATA) - 9), ValueError, "offset+count>size"),
    row(with_args(count=len(DATA) - START + 1), ValueError, "position+count>size"),
    row(with_args(offset=len(DATA) + 1), ValueError, "offset>size"),
    row(with_args(offset=2**63), ValueError, "offset=2**63"),
    row(with_args(offset=2**64), ValueError, "offset=2**64"),
    row(with_args(count=2**63), ValueError, "count=2**63"),
    row(with_args(count=2**64), ValueError, "count=2**64"),
    row(descriptor(os.O_RDONLY, offset=-1), ValueError, "fd,offset=-1"),
    row(descriptor(os.O_RDONLY, count=len(DATA)), ValueError, "fd,position+count>size"),
    row(truncated_before, ValueError, "truncated-before-the-call"),
    row(empty_file, ValueError, "empty-file,count=1"),
    row(with_args(offset=1.0), TypeError, "offset=1.0"),
    row(with_args(offset="0"), TypeError, "offset=str"),
    row(with_args(offset=True), TypeError, "offset=True"),
    row(with_args(count=1.0), TypeError, "count=1.0"),
    row(with_args(count="5"), TypeError, "count=str"),
    row(with_args(count=True), TypeError, "count=True"),
    row(with_args(offset=0, count=b"\x05"), TypeError, "count=bytes"),
]

RECEIVE: list[Any] = [
    row(regular("r+"), TypeError, "text"),
    row(regular("r+", trio_wrap), TypeError, "text-trio.wrap_file"),
    row(regular("r+", anyio_wrap), TypeError, "text-anyio.wrap_file"),
    row(regular("r+b!"), ValueError, "closed"),
    row(regular("r+b!", trio_wrap), ValueError, "closed-trio.wrap_file"),
    row(regular("r+b!", anyio_wrap), ValueError, "closed-anyio.wrap_file"),
    row(regular("rb"), UNSUPPORTED, "read-only"),
    row(regular("rb", trio_wrap), UNSUPPORTED, "read-only-trio.wrap_file"),
    row(regular("rb", anyio_wrap), UNSUPPORTED, "read-only-anyio.wrap_file"),
    row(descriptor(os.O_RDONLY), UNSUPPORTED, "fd-read-only"),
    # A directory opens read-only only: as a descriptor, the access check
    # may come first; by an object whose writable() says yes, it is the
    # directory that is refused.
    row(directory, (UNSUPPORTED, IsADirectoryError), "fd-directory"),
    row(directory_duck, IsADirectoryError, "duck-directory"),
    row(pipe_end(False, False), ValueError, "fd-pipe"),
    row(pipe_end(False, True), ValueError, "pipe-file"),
    row(socket_end(False), ValueError, "fd-socket"),
    row(device("/dev/null", "wb"), ValueError, "device-/dev/null"),
    *NON_FILES,
    row(with_args(count=0), ValueError, "count=0"),
    row(with_args(count=-1), ValueError, "count=-1"),
    row(with_args(count=-(2**63)), ValueError, "count=-2**63"),
    row(descriptor(os.O_RDWR, count=0), ValueError, "fd,count=0"),
    row(with_args(count=1.0), TypeError, "count=1.0"),
    row(with_args(count="5"), TypeError, "count=str"),
    row(with_args(count=True), TypeError, "count=True"),
    row(with_args(count=False), TypeError, "count=False"),
]


def check_refusal(
    info: pytest.ExceptionInfo[BaseException], types: tuple[Any, ...], code: Any
) -> None:
    assert type(info.value) in types, f"{type(info.value).__name__}: {info.value}"
    assert str(info.value), "a refusal says why"
    if code is not None:
        assert isinstance(info.value, OSError)
        assert info.value.errno == code


async def refuse_send(
    side: Side, peer: socket.socket, c: Ctx, make: Make, types: tuple[Any, ...], code: Any
) -> None:
    """Refused: nothing sent (the marker comes first), nothing changed."""
    bad = make(c)
    with pytest.raises(BaseException) as info:
        await side.send_file(bad.file, **bad.kwargs)
    check_refusal(info, types, code)
    bad.check()
    await side.send(MARKER)
    assert peer_read(peer, len(MARKER)) == MARKER, "the refused send_file sent bytes"


async def refuse_receive(
    side: Side, peer: socket.socket, c: Ctx, make: Make, types: tuple[Any, ...], code: Any
) -> None:
    """Refused: nothing consumed (the peer's bytes come next), nothing changed."""
    peer.sendall(PAYLOAD)
    bad = make(c)
    with pytest.raises(BaseException) as info:
        await side.receive_file(bad.file, **bad.kwargs)
    check_refusal(info, types, code)
    bad.check()
    assert await side.receive_exactly(len(PAYLOAD)) == PAYLOAD, "the refusal consumed bytes"


@pytest.mark.parametrize("make, types, code", SEND)
def test_send_file_refused(make: Make, types: tuple[Any, ...], code: Any, tmp_path: Path) -> None:
    """Refused on every layer: nothing sent, the file as it was, the stream
    working (both ways) afterwards."""

    async def body(side: Side, peer: socket.socket) -> None:
        with ExitStack() as owned:
            await refuse_send(side, peer, Ctx(tmp_path, owned), make, types, code)
        await send_good(side, peer, tmp_path)
        await receive_good(side, peer, tmp_path)
        assert idle(peer)

    on_every_layer(LAYERS, body)


@pytest.mark.parametrize("make, types, code", RECEIVE)
def test_receive_file_refused(
    make: Make, types: tuple[Any, ...], code: Any, tmp_path: Path
) -> None:
    """Refused on every layer: nothing consumed (nor sent), the file as it
    was, the stream working (both ways) afterwards."""

    async def body(side: Side, peer: socket.socket) -> None:
        with ExitStack() as owned:
            await refuse_receive(side, peer, Ctx(tmp_path, owned), make, types, code)
        await receive_good(side, peer, tmp_path)
        await send_good(side, peer, tmp_path)
        assert idle(peer), "the refused receive_file sent bytes"

    on_every_layer(LAYERS, body)


def test_empty_region_sends_nothing(tmp_path: Path) -> None:
    """Not a refusal, but its edge: an empty file, or a position at the end,
    with no count, sends 0 bytes (none reaches the peer) and leaves the
    position where it was."""

    async def body(side: Side, peer: socket.socket) -> None:
        empty = tmp_path / "empty"
        empty.write_bytes(b"")
        with open(empty, "rb") as f:
            assert await side.send_file(f) == 0
            assert f.tell() == 0
        full = tmp_path / "full"
        full.write_bytes(DATA)
        with open(full, "rb") as f:
            f.seek(len(DATA))
            assert await side.send_file(f) == 0
            assert await side.send_file(f, offset=len(DATA)) == 0
            assert f.tell() == len(DATA)
        await side.send(MARKER)
        assert peer_read(peer, len(MARKER)) == MARKER
        await send_good(side, peer, tmp_path)

    on_every_layer(LAYERS, body)


# The trio functions' own checks: the target

TRIO_TRANSITS = Layer("trio-transits", None, kind="transits")

TARGETS: list[Any] = [
    pytest.param(lambda side: side.input, ValueError, "send", id="send_file(input)"),
    pytest.param(lambda side: side.output, ValueError, "receive", id="receive_file(output)"),
    pytest.param(lambda side: 42, TypeError, "send", id="send_file(int)"),
    pytest.param(lambda side: 42, TypeError, "receive", id="receive_file(int)"),
    pytest.param(lambda side: None, TypeError, "send", id="send_file(None)"),
    pytest.param(lambda side: side.other, TypeError, "send", id="send_file(socket)"),
    pytest.param(lambda side: side.other, TypeError, "receive", id="receive_file(socket)"),
]


@pytest.mark.parametrize("target, exception, direction", TARGETS)
def test_trio_functions_bad_target(
    target: Callable[[Any], Any], exception: type, direction: str, tmp_path: Path
) -> None:
    async def body(side: Side, peer: socket.socket) -> None:
        assert isinstance(side, TrioTransits)
        path = tmp_path / "data"
        path.write_bytes(DATA)
        other, other_peer = socket.socketpair()
        with other, other_peer, open(path, "r+b") as f:
            f.seek(START)
            side.other = other  # type: ignore[attr-defined]
            peer.sendall(PAYLOAD)
            call = traffic.send_file if direction == "send" else traffic.receive_file
            with pytest.raises(exception) as info:
                await call(target(side), f)
            assert type(info.value) is exception
            assert str(info.value)
            assert f.tell() == START
            assert path.read_bytes() == DATA
            assert idle(other_peer)
        # Neither transit moved a byte.
        await side.send(MARKER)
        assert peer_read(peer, len(MARKER)) == MARKER
        assert await side.receive_exactly(len(PAYLOAD)) == PAYLOAD
        await send_good(side, peer, tmp_path)
        await receive_good(side, peer, tmp_path)

    TRIO_TRANSITS.run(body)


# A closed stream


class PositionMoved(AssertionError):
    """A refusal moved the file's position."""


def test_closed_stream_send_file(tmp_path: Path) -> None:
    async def body(side: Side, peer: socket.socket) -> None:
        path = tmp_path / "data"
        path.write_bytes(DATA)
        await side.close()
        with open(path, "rb") as f:
            f.seek(START)
            with pytest.raises(side.closed):
                await side.send_file(f)
            assert f.tell() == START
            with pytest.raises(side.closed):
                await side.send_file(f, offset=0, count=10)
            assert f.tell() == START
        assert ended(peer), "a closed stream sent bytes"

    on_every_layer(LAYERS, body)


def test_closed_stream_receive_file(tmp_path: Path) -> None:
    async def body(side: Side, peer: socket.socket) -> None:
        peer.sendall(PAYLOAD)
        await side.close()
        path = tmp_path / "data"
        path.write_bytes(DATA)
        with open(path, "r+b") as f:
            f.seek(START)
            with pytest.raises(side.closed):
                await side.receive_file(f)
            with pytest.raises(side.closed):
                await side.receive_file(f, count=3)
            assert f.tell() == START
        assert path.read_bytes() == DATA
        assert ended(peer)

    on_every_layer(LAYERS, body)


def test_send_file_after_send_eof(tmp_path: Path) -> None:
    """After ``send_eof()`` the sending side is closed: ``send_file`` is
    refused, sends nothing, leaves the position; the receiving side still
    works, for bytes and for files."""
    positions: list[tuple[str, str, int]] = []

    async def body(side: Side, peer: socket.socket) -> None:
        await side.send_eof()
        path = tmp_path / "data"
        path.write_bytes(DATA)
        with open(path, "rb") as f:
            f.seek(START)
            with pytest.raises(side.closed):
                await side.send_file(f)
            assert f.tell() == START
            with pytest.raises(side.closed):
                await side.send_file(f, offset=0, count=10)
            positions.append((type(side).__name__, "send_file(f, offset=0, count=10)", f.tell()))
        assert peer_read(peer, 1) == b"", "send_file after send_eof sent bytes"
        await receive_good(side, peer, tmp_path)

    on_every_layer(LAYERS, body)
    moved = [(where, call, at) for where, call, at in positions if at != START]
    if moved:
        raise PositionMoved(f"position after the refusal (was {START}): {moved}")


# A busy stream


@pytest.mark.parametrize("holder", ["send", "send_file"])
def test_busy_sending(holder: str, tmp_path: Path) -> None:
    """Another task is sending (bytes or a file) and the peer does not read:
    ``send_file`` and a send are refused, and add nothing to what it sends;
    the refused call leaves the file's position as it was."""
    big = pseudorandom(2 * MiB, 3)
    path = tmp_path / "big"
    path.write_bytes(big)
    positions: list[tuple[str, str, int]] = []

    async def body(side: Side, peer: socket.socket) -> None:
        where = type(side).__name__
        small = tmp_path / "data"
        small.write_bytes(DATA)
        got = bytearray()
        with open(path, "rb") as big_file, open(small, "rb") as f:
            async with anyio.create_task_group() as tg:
                if holder == "send":
                    tg.start_soon(side.send, big)
                else:
                    tg.start_soon(side.send_file, big_file)
                await wait_until(lambda: readable(peer), "the holder's send started")
                await anyio.wait_all_tasks_blocked()
                f.seek(START)
                with pytest.raises(side.busy):
                    await side.send_file(f)
                positions.append((where, "send_file(f)", f.tell()))
                f.seek(START)
                with pytest.raises(side.busy):
                    await side.send_file(f, offset=0, count=10)
                positions.append((where, "send_file(f, offset=0, count=10)", f.tell()))
                f.seek(START)
                with pytest.raises(side.busy):
                    await side.send(b"intruder")
                thread = drainer(peer, got, len(big))
                await anyio.to_thread.run_sync(thread.join)
            if holder == "send_file":
                assert big_file.tell() == len(big)
        assert bytes(got) == big, "a refused call added bytes"
        await side.send(MARKER)
        assert peer_read(peer, len(MARKER)) == MARKER
        await send_good(side, peer, tmp_path)

    on_every_layer(LAYERS, body, small=True)
    moved = [(where, call, at) for where, call, at in positions if at != START]
    if moved:
        raise PositionMoved(f"position after the refusal (was {START}): {moved}")


@pytest.mark.parametrize("holder", ["receive", "receive_file"])
def test_busy_receiving(holder: str, tmp_path: Path) -> None:
    """Another task is receiving (bytes or into a file): ``receive_file`` and
    a receive are refused, and take nothing from it."""

    async def body(side: Side, peer: socket.socket) -> None:
        target = tmp_path / "target"
        held = tmp_path / "held"
        got: list[Any] = []
        with open(target, "w+b") as f, open(held, "w+b") as held_file:
            f.write(b"head")

            async def receive() -> None:
                if holder == "receive":
                    got.append(await side.receive_exactly(len(PAYLOAD)))
                else:
                    got.append(await side.receive_file(held_file, count=len(PAYLOAD)))

            async with anyio.create_task_group() as tg:
                tg.start_soon(receive)
                await anyio.wait_all_tasks_blocked()
                with pytest.raises(side.busy):
                    await side.receive_file(f)
                assert f.tell() == 4
                with pytest.raises(side.busy):
                    await side.receive_file(f, count=1)
                assert f.tell() == 4
                with pytest.raises(side.busy):
                    await side.receive(1)
                peer.sendall(PAYLOAD)
            if holder == "receive":
                assert got == [PAYLOAD]
            else:
                assert got == [len(PAYLOAD)]
                assert held_file.tell() == len(PAYLOAD)
        assert target.read_bytes() == b"head"
        if holder == "receive_file":
            assert held.read_bytes() == PAYLOAD
        await receive_good(side, peer, tmp_path)
        assert idle(peer)

    on_every_layer(LAYERS, body)


# Every way to make a stream

#: The rows of test_factories: a refusal of each exception type, each way.
SAMPLE_SEND = {"text", "closed-anyio.wrap_file", "write-only", "fd-directory", "fd-pipe"}
SAMPLE_SEND |= {"fd=unopened", "offset+count>size", "count=str"}
SAMPLE_RECEIVE = {"text", "closed-trio.wrap_file", "read-only", "duck-directory", "fd-socket"}
SAMPLE_RECEIVE |= {"fd=unopened", "count=0", "count=1.0"}


def test_factories(tmp_path: Path) -> None:
    """A refusal of each kind, both ways, on a stream of each factory."""
    send_rows = [p for p in SEND if p.id in SAMPLE_SEND]
    receive_rows = [p for p in RECEIVE if p.id in SAMPLE_RECEIVE]
    assert len(send_rows) == len(SAMPLE_SEND)
    assert len(receive_rows) == len(SAMPLE_RECEIVE)

    async def body(side: Side, peer: socket.socket) -> None:
        for rows, refuse in ((send_rows, refuse_send), (receive_rows, refuse_receive)):
            for param in rows:
                with ExitStack() as owned:
                    await refuse(side, peer, Ctx(tmp_path, owned), *param.values)
        await send_good(side, peer, tmp_path)
        await receive_good(side, peer, tmp_path)
        assert idle(peer)

    on_every_layer(FACTORIES, body)


# A batch of refusals leaves nothing behind


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_refusals_leak_nothing(tmp_path: Path) -> None:
    """Every row, both ways, on one stream of each layer: the descriptors
    and the core's live objects are the same before and after the batch (in
    the run), and after the runs as before them."""
    gc.collect()
    fds_before_run = fd_count()
    objects_before_run = traffic.live_objects()

    async def body(side: Side, peer: socket.socket) -> None:
        # A transfer each way first: whatever the core makes once is made.
        await send_good(side, peer, tmp_path)
        await receive_good(side, peer, tmp_path)
        gc.collect()
        fds = fd_count()
        objects = traffic.live_objects()
        for rows, refuse in ((SEND, refuse_send), (RECEIVE, refuse_receive)):
            for param in rows:
                with ExitStack() as owned:
                    await refuse(side, peer, Ctx(tmp_path, owned), *param.values)
        gc.collect()
        assert fd_count() == fds, "descriptors leaked by refusals"
        assert traffic.live_objects() == objects, "core objects left by refusals"
        await send_good(side, peer, tmp_path)
        await receive_good(side, peer, tmp_path)

    on_every_layer(LAYERS, body)
    for _ in range(100):
        gc.collect()
        if fd_count() == fds_before_run and traffic.live_objects() == objects_before_run:
            break
        time.sleep(0.01)  # a joined cycle thread's last moments
    assert fd_count() == fds_before_run
    assert traffic.live_objects() == objects_before_run


# A file truncated while it is sent


@pytest.mark.parametrize("as_descriptor", [False, True], ids=["object", "descriptor"])
def test_truncated_while_sent(as_descriptor: bool, tmp_path: Path) -> None:
    """The send parks (the peer does not read, the buffers are small), the
    file is cut short, then the peer drains: ``FileEndedError``, ``sent``
    what the peer got, the position ``offset + sent``; the stream goes on."""
    size, offset, end = 4 * MiB + 12345, 12345, 2 * MiB
    data = pseudorandom(size, 4)
    path = tmp_path / "big"

    async def body(side: Side, peer: socket.socket) -> None:
        path.write_bytes(data)  # whole again, for each layer
        errors: list[FileEndedError] = []
        got = bytearray()
        with open(path, "rb") as f:
            file: Any = f.fileno() if as_descriptor else f

            async def send() -> None:
                try:
                    await side.send_file(file, offset=offset, count=size - offset)
                except FileEndedError as error:
                    errors.append(error)

            async with anyio.create_task_group() as tg:
                tg.start_soon(send)
                # Validated, and sending: at most the buffers' worth (far
                # less than end - offset) can be out before the truncation.
                await wait_until(lambda: readable(peer), "the send started")
                await anyio.wait_all_tasks_blocked()
                os.truncate(path, end)
                thread = drainer(peer, got)
            assert len(errors) == 1, "no FileEndedError"
            error = errors[0]
            assert isinstance(error, EOFError)
            assert error.expected == size - offset
            assert error.sent == end - offset
            assert os.lseek(f.fileno(), 0, os.SEEK_CUR) == offset + error.sent
            if not as_descriptor:
                assert f.tell() == offset + error.sent
            # The stream is intact: more bytes, and a file, follow.
            await side.send(MARKER)
            good = tmp_path / "good"
            good.write_bytes(GOOD)
            with open(good, "rb") as g:
                assert await side.send_file(g) == len(GOOD)
            await side.send_eof()
            await anyio.to_thread.run_sync(thread.join)
        assert len(got) == error.sent + len(MARKER) + len(GOOD)
        assert bytes(got[: error.sent]) == data[offset:end]
        assert bytes(got[error.sent :]) == MARKER + GOOD

    on_every_layer(LAYERS, body, small=True)


# Numbers beyond what the kernel takes


class WrongType(AssertionError):
    """Refused, harmlessly, but not with the exception the contract names."""


@pytest.mark.parametrize("direction", ["send", "receive"])
def test_descriptor_beyond_a_c_int_error_type(direction: str) -> None:
    seen: list[str] = []

    async def body(side: Side, peer: socket.socket) -> None:
        call = side.send_file if direction == "send" else side.receive_file
        try:
            await call(2**31)
        except OutOfRangeError:
            pass
        except OSError as error:
            if error.errno != errno.EBADF:
                seen.append(repr(error))
        except Exception as error:
            seen.append(repr(error))
        else:
            seen.append("accepted")

    TRIO_TRANSITS.run(body)
    if seen:
        raise WrongType(seen[0])


@pytest.mark.parametrize("count", [2**63 - 1, 2**63, 2**64], ids=["2**63-1", "2**63", "2**64"])
def test_receive_count_beyond_an_off_t_changes_nothing(count: int, tmp_path: Path) -> None:
    """``receive_file(count=2**63)`` from a position past 0 (the region's end
    beyond an ``off_t``): whatever it does, it takes no byte it does not
    write, and moves the position only past what it wrote."""

    async def body(side: Side, peer: socket.socket) -> None:
        path = tmp_path / "data"
        path.write_bytes(b"head")
        with open(path, "r+b") as f:
            f.seek(4)
            peer.sendall(PAYLOAD)
            peer.shutdown(socket.SHUT_WR)  # a clamped receive then ends
            try:
                written = await side.receive_file(f, count=count)
            except (OSError, OverflowError, ValueError):
                assert f.tell() == 4
                assert path.read_bytes() == b"head"
                assert await side.receive_exactly(len(PAYLOAD)) == PAYLOAD
            else:
                assert written == len(PAYLOAD)
                assert f.tell() == 4 + len(PAYLOAD)
                assert path.read_bytes() == b"head" + PAYLOAD
        await send_good(side, peer, tmp_path)

    on_every_layer(LAYERS, body)


@pytest.mark.parametrize("count", [2**63 - 1, 2**64], ids=["2**63-1", "2**64"])
def test_receive_count_beyond_an_off_t_error_type(count: int, tmp_path: Path) -> None:
    seen: list[str] = []

    async def body(side: Side, peer: socket.socket) -> None:
        path = tmp_path / "data"
        with open(path, "w+b") as f:
            f.write(b"head")
            peer.sendall(PAYLOAD)
            peer.shutdown(socket.SHUT_WR)
            try:
                written = await side.receive_file(f, count=count)
            except ValueError:
                pass  # refused, as a count < 1 is
            except Exception as error:
                seen.append(repr(error))
            else:
                if written != len(PAYLOAD):  # clamped: until the end of the stream
                    seen.append(f"wrote {written}")

    Layer("trio-methods", None).run(body)
    if seen:
        raise WrongType(seen[0])
