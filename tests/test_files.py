"""Files moved by the core: send_file and receive_file, on trio and anyio.

Every transfer here has a stdlib socket on the other end, and is checked
byte for byte (SHA-256 of what arrived against the file's region) and by
the file's position afterwards, which must be just after what moved in
every outcome: done, cancelled, broken.  The autouse leak check of
conftest.py sees the core's duplicate of the file and its pipe too.
"""

from __future__ import annotations

import hashlib
import io
import os
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import trio
from anyio_support import RUN_BACKENDS
from trio_support import pseudorandom

import traffic
from traffic import anyio_backend

MiB = 1 << 20


@pytest.fixture
def big(tmp_path: Path) -> tuple[Path, bytes]:
    data = pseudorandom(24 * MiB + 12345, 1)
    path = tmp_path / "big"
    path.write_bytes(data)
    return path, data


def reader(sock: socket.socket, into: bytearray, limit: int | None = None) -> threading.Thread:
    """A stdlib peer reading until EOF (or ``limit`` bytes) in a thread."""

    def run() -> None:
        while limit is None or len(into) < limit:
            chunk = sock.recv(MiB)
            if not chunk:
                return
            into.extend(chunk)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def writer(sock: socket.socket, data: bytes, close: bool = True) -> threading.Thread:
    def run() -> None:
        sock.sendall(data)
        if close:
            sock.shutdown(socket.SHUT_WR)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.fixture(params=[socket.AF_INET, socket.AF_UNIX], ids=["tcp", "unix"])
def pair(request: pytest.FixtureRequest) -> Iterator[tuple[socket.socket, socket.socket]]:
    """(ours, the peer's): a connected TCP or AF_UNIX stream pair."""
    if request.param == socket.AF_UNIX:
        a, b = socket.socketpair()
    else:
        with socket.create_server(("127.0.0.1", 0)) as server:
            a = socket.create_connection(server.getsockname())
            b, _ = server.accept()
    with b:
        yield a, b


# trio


@pytest.mark.trio
async def test_send_file_whole_and_regions(
    pair: tuple[socket.socket, socket.socket], big: tuple[Path, bytes]
) -> None:
    ours, peer = pair
    path, data = big
    stream = traffic.TrafficStream(ours)
    got = bytearray()
    thread = reader(peer, got)
    regions = [(0, None), (7, 1000), (MiB - 1, 3 * MiB + 2), (len(data) - 1, 1)]
    expected = b""
    with open(path, "rb") as f:
        for offset, count in regions:
            sent = await stream.send_file(f, offset=offset, count=count)
            end = len(data) if count is None else offset + count
            assert sent == end - offset
            assert f.tell() == end  # the position follows what was sent
            expected += data[offset:end]
    await stream.aclose()
    await trio.to_thread.run_sync(thread.join)
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(expected).hexdigest()


@pytest.mark.trio
async def test_send_file_starts_at_a_buffered_readers_tell(tmp_path: Path) -> None:
    data = pseudorandom(300_000, 1)
    path = tmp_path / "f"
    path.write_bytes(data)
    ours, peer = socket.socketpair()
    with peer:
        stream = traffic.TrafficStream(ours)
        got = bytearray()
        thread = reader(peer, got)
        with open(path, "rb") as f:
            assert f.read(10) == data[:10]  # the reader's buffer ran ahead of tell()
            assert os.lseek(f.fileno(), 0, os.SEEK_CUR) > 10
            assert await stream.send_file(f, count=90) == 90
            assert f.tell() == 100
            assert f.read(5) == data[100:105]  # the stale read-ahead is gone
            assert await stream.send_file(trio.wrap_file(f)) == len(data) - 105
        fd = os.open(path, os.O_RDONLY)
        try:
            os.lseek(fd, 1000, os.SEEK_SET)
            assert await traffic.send_file(stream, fd, count=24) == 24
            assert os.lseek(fd, 0, os.SEEK_CUR) == 1024
        finally:
            os.close(fd)
        await stream.aclose()
        await trio.to_thread.run_sync(thread.join)
    assert bytes(got) == data[10:100] + data[105:] + data[1000:1024]


@pytest.mark.trio
async def test_send_file_of_an_empty_remainder_sends_nothing(tmp_path: Path) -> None:
    path = tmp_path / "empty"
    path.write_bytes(b"")
    ours, peer = socket.socketpair()
    with peer, open(path, "rb") as f:
        stream = traffic.TrafficStream(ours)
        assert await stream.send_file(f) == 0
        await stream.send_all(b"after")
        assert peer.recv(16) == b"after"
        await stream.aclose()


@pytest.mark.trio
async def test_send_file_cold_cache(tmp_path: Path) -> None:
    """Pages not in memory: the inline send hands over to the cycle thread
    (the residency probe); what arrives is the same."""
    data = pseudorandom(16 * MiB, 5)
    path = tmp_path / "cold"
    path.write_bytes(data)
    ours, peer = socket.socketpair()
    with peer, open(path, "rb") as f:
        os.fsync(f.fileno())
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        stream = traffic.TrafficStream(ours)
        got = bytearray()
        thread = reader(peer, got)
        assert await stream.send_file(f) == len(data)
        await stream.aclose()
        await trio.to_thread.run_sync(thread.join)
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()


@pytest.mark.trio
async def test_send_file_on_four_connections_at_once(big: tuple[Path, bytes]) -> None:
    path, data = big
    digests: list[bytes] = []

    async def one(offset: int) -> None:
        ours, peer = socket.socketpair()
        with peer, open(path, "rb") as f:
            stream = traffic.TrafficStream(ours)
            got = bytearray()
            thread = reader(peer, got)
            assert await stream.send_file(f, offset=offset) == len(data) - offset
            await stream.aclose()
            await trio.to_thread.run_sync(thread.join)
            assert hashlib.sha256(got).digest() == hashlib.sha256(data[offset:]).digest()
            digests.append(hashlib.sha256(got).digest())

    async with trio.open_nursery() as nursery:
        for offset in (0, 1, 4096, 5 * MiB + 3):
            nursery.start_soon(one, offset)
    assert len(digests) == 4


@pytest.mark.trio
async def test_send_file_cancelled_leaves_the_position_after_what_went(
    pair: tuple[socket.socket, socket.socket], big: tuple[Path, bytes]
) -> None:
    """The peer reads nothing, so the send parks once the buffers are full;
    cancelled there, the file's position says exactly what went out."""
    ours, peer = pair
    path, data = big
    stream = traffic.TrafficStream(ours)
    with open(path, "rb") as f:
        with trio.move_on_after(0.3) as scope:
            await stream.send_file(f, offset=100)
        assert scope.cancelled_caught
        sent = f.tell() - 100
        assert 0 < sent < len(data) - 100
        await stream.send_eof()
        got = bytearray()
        thread = reader(peer, got)
        await trio.to_thread.run_sync(thread.join)
    assert len(got) == sent
    assert bytes(got) == data[100 : 100 + sent]
    await stream.aclose()


@pytest.mark.trio
async def test_send_file_to_a_peer_that_left(big: tuple[Path, bytes]) -> None:
    path, _ = big
    ours, peer = socket.socketpair()
    stream = traffic.TrafficStream(ours)
    peer.close()
    with open(path, "rb") as f:
        with pytest.raises(trio.BrokenResourceError) as caught:
            await stream.send_file(f, offset=3)
        assert isinstance(caught.value.__cause__, OSError)
        assert f.tell() == 3  # nothing went anywhere
    await stream.aclose()


@pytest.mark.trio
async def test_send_file_primitive_on_a_transit(tmp_path: Path) -> None:
    data = pseudorandom(2 * MiB + 1, 1)
    path = tmp_path / "f"
    path.write_bytes(data)
    (_in1, out1), (in2, _out2) = traffic.Octets.socketpair()
    got = bytearray()

    async def drain() -> None:
        buffer = bytearray(MiB)
        while len(got) < len(data):
            n = await traffic.recv_into(in2, buffer)
            got.extend(buffer[:n])

    async with trio.open_nursery() as nursery:
        nursery.start_soon(drain)
        with open(path, "rb") as f:
            assert await traffic.send_file(out1, f) == len(data)
    assert bytes(got) == data
    with pytest.raises(ValueError, match="output"):
        await traffic.send_file(in2, str(path))


@pytest.mark.trio
async def test_receive_file_until_the_end(
    pair: tuple[socket.socket, socket.socket], tmp_path: Path
) -> None:
    ours, peer = pair
    data = pseudorandom(20 * MiB + 17, 2)
    stream = traffic.TrafficStream(ours)
    thread = writer(peer, data)
    target = tmp_path / "out"
    with open(target, "wb") as f:
        f.write(b"head")  # buffered: flushed before the core writes behind it
        assert await stream.receive_file(f) == len(data)
        assert f.tell() == 4 + len(data)
        f.write(b"tail")
        assert await stream.receive_file(f) == 0  # the stream had ended
    await trio.to_thread.run_sync(thread.join)
    assert target.read_bytes() == b"head" + data + b"tail"
    await stream.aclose()


@pytest.mark.trio
async def test_receive_file_count_then_receive_some(tmp_path: Path) -> None:
    """A count stops exactly there: what follows is the next receive's."""
    ours, peer = socket.socketpair()
    data = pseudorandom(3 * MiB, 3)
    with peer:
        stream = traffic.TrafficStream(ours)
        thread = writer(peer, data)
        fd = os.open(tmp_path / "part", os.O_RDWR | os.O_CREAT)
        try:
            assert await traffic.receive_file(stream, fd, count=MiB + 5) == MiB + 5
            assert os.lseek(fd, 0, os.SEEK_CUR) == MiB + 5
            assert os.pread(fd, MiB + 10, 0) == data[: MiB + 5]
        finally:
            os.close(fd)
        rest = bytearray()
        while chunk := await stream.receive_some():
            rest += chunk
        assert bytes(rest) == data[MiB + 5 :]
        await trio.to_thread.run_sync(thread.join)
        await stream.aclose()


@pytest.mark.trio
async def test_receive_file_appends_to_an_append_file(tmp_path: Path) -> None:
    target = tmp_path / "log"
    target.write_bytes(b"old")
    ours, peer = socket.socketpair()
    with peer:
        stream = traffic.TrafficStream(ours)
        thread = writer(peer, b"new" * 100_000)
        with open(target, "ab") as f:
            assert await stream.receive_file(f, count=300_000) == 300_000
            assert f.tell() == 300_003
        await trio.to_thread.run_sync(thread.join)
        await stream.aclose()
    assert target.read_bytes() == b"old" + b"new" * 100_000


@pytest.mark.trio
async def test_receive_file_cancelled_keeps_every_byte(tmp_path: Path) -> None:
    """Cancelled while it waits, the file has what came, its position says
    so, and what comes next is the next receive's: nothing lost, nothing
    twice."""
    ours, peer = socket.socketpair()
    first, second = pseudorandom(700_000, 4), pseudorandom(50_000, 6)
    with peer:
        stream = traffic.TrafficStream(ours)
        with open(tmp_path / "x", "w+b") as f:
            thread = writer(peer, first, close=False)
            with trio.move_on_after(1.0) as scope:
                await stream.receive_file(f)
            assert scope.cancelled_caught
            await trio.to_thread.run_sync(thread.join)
            assert f.tell() == len(first)
            f.seek(0)
            assert f.read() == first
        peer.sendall(second)
        peer.shutdown(socket.SHUT_WR)
        rest = bytearray()
        while chunk := await stream.receive_some():
            rest += chunk
        assert bytes(rest) == second
        await stream.aclose()


@pytest.mark.trio
async def test_file_transfers_on_a_closed_stream(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * 10)
    ours, peer = socket.socketpair()
    with peer, open(path, "r+b") as f:
        stream = traffic.TrafficStream(ours)
        await stream.aclose()
        with pytest.raises(trio.ClosedResourceError):
            await stream.send_file(f)
        with pytest.raises(trio.ClosedResourceError):
            await stream.receive_file(f)
        assert f.tell() == 0


@pytest.mark.trio
async def test_receive_file_closed_while_waiting(tmp_path: Path) -> None:
    ours, peer = socket.socketpair()
    with peer, open(tmp_path / "x", "wb") as f:
        stream = traffic.TrafficStream(ours)
        async with trio.open_nursery() as nursery:

            async def close_soon() -> None:
                await trio.sleep(0.05)
                await stream.aclose()

            nursery.start_soon(close_soon)
            with pytest.raises(trio.ClosedResourceError):
                await stream.receive_file(f)
        assert f.tell() == 0


# The file refuses: the bytes it did not take stay with the stream.

REFUSING_FILE = textwrap.dedent(
    """
    import os, resource, signal, socket, sys, threading, trio, traffic

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # EFBIG instead of a core dump
    LIMIT = 100_000
    data = bytes(range(256)) * 1200                    # 307,200 bytes
    path, family, mode = sys.argv[1], sys.argv[2], sys.argv[3]

    async def main():
        if family == "unix":
            ours, peer = socket.socketpair()
        else:
            with socket.create_server(("127.0.0.1", 0)) as server:
                peer = socket.create_connection(server.getsockname())
                ours, _ = server.accept()
        stream = traffic.TrafficStream(ours)
        def send():
            peer.sendall(data)
            peer.shutdown(socket.SHUT_WR)
        threading.Thread(target=send).start()
        resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, resource.RLIM_INFINITY))
        with open(path, mode) as f:
            try:
                await stream.receive_file(f)
            except OSError as error:
                print("error", error.errno, f.tell())
            else:
                raise SystemExit("no error")
        resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY,) * 2)
        rest = bytearray()
        while chunk := await stream.receive_some():
            rest += chunk
        written = open(path, "rb").read()
        assert written + rest == data, (len(written), len(rest))
        print("kept", len(written), len(rest))
        await stream.aclose()

    trio.run(main)
    """
)


@pytest.mark.parametrize(
    ("family", "mode"),
    [("tcp", "wb"), ("unix", "wb"), ("unix", "ab")],
    ids=["tcp", "unix", "append"],
)
def test_receive_file_refused_by_the_file_keeps_the_bytes(
    tmp_path: Path, family: str, mode: str
) -> None:
    """EFBIG (a file size limit) in the middle of a receive: the file has
    what it took, the error says why, and every byte it did not take comes
    out of the stream's next receives, in order.  The bytes were in the
    core's pipe (splice), or in its copy buffer (a file opened for
    appending is copied to)."""
    done = subprocess.run(
        [sys.executable, "-c", REFUSING_FILE, str(tmp_path / "limited"), family, mode],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.split()
    assert lines[:3] == ["error", str(27), "100000"], done.stdout  # EFBIG
    assert lines[3:] == ["kept", "100000", "207200"]


# anyio


async def anyio_pair(
    family: int,
) -> tuple[anyio_backend.TrafficSocketStream, socket.socket]:
    if family == socket.AF_UNIX:
        a, b = socket.socketpair()
    else:
        with socket.create_server(("127.0.0.1", 0)) as server:
            a = socket.create_connection(server.getsockname())
            b, _ = server.accept()
    stream: Any
    if family == socket.AF_UNIX:
        stream = await anyio_backend.TrafficUNIXSocketStream.from_socket(a)
    else:
        stream = await anyio_backend.TrafficSocketStream.from_socket(a)
    return stream, b


def run_anyio(backend: tuple[str, dict[str, Any]], test: Callable[[], Any]) -> None:
    name, options = backend
    anyio.run(test, backend=name, backend_options=options)


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_UNIX], ids=["tcp", "unix"])
@pytest.mark.parametrize("backend", RUN_BACKENDS)
def test_anyio_send_and_receive_file(
    backend: tuple[str, dict[str, Any]], family: int, big: tuple[Path, bytes], tmp_path: Path
) -> None:
    path, data = big

    async def main() -> None:
        stream, peer = await anyio_pair(family)
        with peer:
            got = bytearray()
            thread = reader(peer, got, limit=len(data) - 9)
            f = await anyio.open_file(path, "rb")
            assert await stream.send_file(f, offset=9) == len(data) - 9
            assert f.wrapped.tell() == len(data)
            await f.aclose()
            await anyio.to_thread.run_sync(thread.join)
            assert hashlib.sha256(got).digest() == hashlib.sha256(data[9:]).digest()

            thread = writer(peer, data)
            with open(tmp_path / "in", "wb") as out:
                assert await stream.receive_file(out, count=MiB) == MiB
                assert await stream.receive_file(out) == len(data) - MiB
                assert out.tell() == len(data)
            await anyio.to_thread.run_sync(thread.join)
            assert (tmp_path / "in").read_bytes() == data
            await stream.aclose()
            with pytest.raises(anyio.ClosedResourceError):
                await stream.send_file(io.BytesIO(b"x"))

    run_anyio(backend, main)


@pytest.mark.parametrize("backend", RUN_BACKENDS)
def test_anyio_send_file_cancelled(
    backend: tuple[str, dict[str, Any]], big: tuple[Path, bytes]
) -> None:
    path, data = big

    async def main() -> None:
        stream, peer = await anyio_pair(socket.AF_UNIX)
        with peer, open(path, "rb") as f:
            with anyio.move_on_after(0.3) as scope:
                await stream.send_file(f)
            assert scope.cancelled_caught
            sent = f.tell()
            assert 0 < sent < len(data)
            await stream.send_eof()
            got = bytearray()
            thread = reader(peer, got)
            await anyio.to_thread.run_sync(thread.join)
            assert bytes(got) == data[:sent]
            await stream.aclose()

    run_anyio(backend, main)


@pytest.mark.parametrize("backend", RUN_BACKENDS)
def test_anyio_receive_file_writes_the_held_bytes_first(
    backend: tuple[str, dict[str, Any]], tmp_path: Path
) -> None:
    """Bytes the stream holds from a receive cancelled after they arrived
    go to the file before anything received later."""

    async def main() -> None:
        stream, peer = await anyio_pair(socket.AF_INET)
        with peer, open(tmp_path / "x", "wb") as f:
            stream._pending += b"held "  # what a cancelled receive left
            peer.sendall(b"then the rest")
            peer.shutdown(socket.SHUT_WR)
            assert await stream.receive_file(f, count=3) == 3  # from the held bytes alone
            assert await stream.receive_file(f) == len("held then the rest") - 3
            assert f.tell() == len("held then the rest")
            await stream.aclose()
        assert (tmp_path / "x").read_bytes() == b"held then the rest"

    run_anyio(backend, main)
