"""File regions in the synchronous API: ``transit.acquire(FileRegion(...))``
in ``with traffic:`` cycles and on a :class:`traffic.libloop.Loop`.

The contract under test (docs/usage-sync.rst, Files):

- a stream's transit acquires a region of a regular file as it acquires a
  buffer, and the core moves the bytes (the file is read and written by
  the core: real sockets, stdlib peers, files in ``tmp_path``);
- each cycle's :meth:`Transit.transfer` is the ``range`` of file offsets
  that moved, contiguous from the region's start to its end;
- the region ends as memory does (exhausted; a fault, the file's failure,
  with the transit intact; the transit's termination), and then the
  file's position is where ``send_file`` leaves it: after the last byte
  that moved;
- bad input raises, with ``traffic.send_file``'s exception types, before
  anything moves: nothing reaches the peer (a marker sent next is the
  first thing it reads), nothing is taken from the stream, the file's
  position is unchanged, and the transit goes on working;
- the core's duplicate of the file's descriptor is closed when the
  region's end is reported (the process's descriptors are counted in
  ``/proc/self/fd``), and the caller's descriptor is never closed.

Plus a libloop server sending and receiving files with stdlib clients,
and ``examples/file_send_sync.py --demo`` run as a subprocess.  The leak
check of ``conftest.py`` runs after every test.
"""

from __future__ import annotations

import errno
import hashlib
import io
import itertools
import os
import re
import resource
import socket
import subprocess
import sys
import threading
from array import array
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from examples_support import run_example

from conftest import open_fds, recv_all, recv_exactly, run_until
from traffic import (
    Descriptors,
    FileEndedError,
    FileRegion,
    Octets,
    OutOfRangeError,
    Sockets,
    Traffic,
    Transit,
    TransitClosedError,
    TransitError,
)
from traffic._traffic import lib
from traffic.libloop import Loop

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "file_send_sync.py"

#: A small file's content: each byte is its offset modulo 256, until "the end".
DATA = bytes(range(256)) * 64 + b"the end"
MARKER = b"<marker>"

TRANSFER, EXHAUST = lib.TR_EV_TRANSFER, lib.TR_EV_EXHAUST
FAULT, TERMINATE = lib.TR_EV_FAULT, lib.TR_EV_TERMINATE


def content(size: int, seed: int = 0) -> bytes:
    """``size`` pseudo-random bytes (a SHA-256 chain: quick, no two blocks alike)."""
    block = hashlib.sha256(seed.to_bytes(8, "big")).digest()
    blocks = []
    for i in range(-(-size // 32)):
        blocks.append(hashlib.sha256(block + i.to_bytes(8, "big")).digest())
    return b"".join(blocks)[:size]


def big_content(size: int) -> bytes:
    """Bytes for a large file: a random MiB, each copy stamped with its index."""
    mib = os.urandom(1 << 20)
    parts = [i.to_bytes(8, "big") + mib[8:] for i in range(-(-size // (1 << 20)))]
    return b"".join(parts)[:size]


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.fixture
def tr() -> Iterator[Traffic]:
    t = Traffic()
    try:
        yield t
    finally:
        t.close()


#: A test's (input, output, peer): see :func:`pair`.
Pair = list[Any]


@pytest.fixture
def pair(tr: Traffic) -> Iterator[Pair]:
    """[input, output] transits over a socketpair's end in ``tr``, and the
    stdlib peer: a list, emptied after the test, so that pytest's hold on
    it keeps no transit alive for the leak check."""
    ours, peer = socket.socketpair()
    inp, out = Octets.wrap(ours)
    tr.acquire(inp)
    tr.acquire(out)
    held: Pair = [inp, out, peer]
    del inp, out
    with peer:
        yield held
    held.clear()


def tcp_pair(tr: Traffic) -> tuple[Octets, Octets, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        inp, out = Octets.connect(listener.getsockname())
        listener.settimeout(30)
        peer, _ = listener.accept()
    tr.acquire(inp)
    tr.acquire(out)
    return inp, out, peer


class Seen:
    """What the cycles reported for one transit."""

    def __init__(self, transit: Transit) -> None:
        self.transit = transit
        self.spans: list[range] = []
        self.events: list[int] = []
        self.ended = False

    def __call__(self, t: Transit) -> None:
        if t is not self.transit:
            return
        self.events.append(t.events)
        view = t.transfer()
        if view is not None:
            assert isinstance(view, range), f"a region's transfer is a range, not {view!r}"
            self.spans.append(view)
        elif t.events & TRANSFER:
            raise AssertionError("a transfer event without a range")
        if t.events & (EXHAUST | FAULT | TERMINATE):
            self.ended = True

    def moved(self) -> int:
        return sum(len(span) for span in self.spans)

    def check_contiguous(self, start: int) -> None:
        """The ranges follow one another from ``start``, none empty."""
        at = start
        for span in self.spans:
            assert span.start == at and span.step == 1 and len(span) > 0, (span, at)
            at = span.stop


def cycle(tr: Traffic, seen: Seen) -> None:
    run_until(tr, lambda: seen.ended, seen)


def reader(sock: socket.socket) -> tuple[threading.Thread, list[bytes]]:
    """A stdlib thread reading ``sock`` to EOF (a reset ends it too)."""
    got: list[bytes] = []

    def read() -> None:
        sock.settimeout(30)
        chunks = []
        try:
            while chunk := sock.recv(1 << 20):
                chunks.append(chunk)
        except ConnectionResetError:
            pass
        got.append(b"".join(chunks))

    thread = threading.Thread(target=read, name="stdlib-reader")
    thread.start()
    return thread, got


# Sending


def test_large_file_through_the_cycle_to_a_stdlib_reader(tr: Traffic, tmp_path: Path) -> None:
    """64 MiB over TCP: the digest matches, the ranges cover the file in
    order, the exhaustion comes with the last one, the position is at the end."""
    size = 64 << 20
    data = big_content(size)
    path = write(tmp_path / "big", data)
    _, out, peer = tcp_pair(tr)
    with peer, open(path, "rb") as f:
        thread, got = reader(peer)
        region = FileRegion(f)
        out.acquire(region)
        assert out.resource is region and region.held
        assert (region.start, region.length, region.moved) == (0, size, 0)
        seen = Seen(out)
        cycle(tr, seen)
        assert seen.events[-1] & EXHAUST and not seen.events[-1] & (FAULT | TERMINATE)
        assert out.exhausted and not out.terminated
        seen.check_contiguous(0)
        assert seen.spans[-1].stop == size == seen.moved() == region.moved
        assert f.tell() == size
        assert region.fault is None and not region.held
        assert out.resource is None  # let go of once the cycle closed
        out.terminate()
        thread.join(30)
        assert len(got[0]) == size
        assert hashlib.sha256(got[0]).digest() == hashlib.sha256(data).digest()


#: (offset, count, the file's position before): the regions of test_subranges.
SUBRANGES = [
    (0, 1, 0),
    (1, 10, 0),
    (len(DATA) - 1, 1, 0),
    (1000, 5000, 0),
    (3000, None, 0),  # to the end of the file
    (None, 777, 4321),  # from the position
    (None, None, 100),  # from the position to the end
    (0, len(DATA), 999),  # the position does not matter with an offset
]


def test_subranges(pair: Pair, tr: Traffic, tmp_path: Path) -> None:
    """Each region sent is exactly ``[offset, offset + count)``, reported as
    that range, the position after it; the transit goes on with memory.
    (One test for them all: the leak check costs more than a region.)"""
    _, out, peer = pair
    path = write(tmp_path / "data", DATA)
    for offset, count, seek in SUBRANGES:
        with open(path, "rb") as f:
            f.seek(seek)
            start = seek if offset is None else offset
            stop = len(DATA) if count is None else start + count
            region = FileRegion(f, offset, count)
            out.acquire(region)
            assert (region.start, region.length) == (start, stop - start)
            seen = Seen(out)
            cycle(tr, seen)
            seen.check_contiguous(start)
            assert seen.spans[-1].stop == stop, (offset, count, seek)
            assert f.tell() == stop
            assert f.read() == DATA[stop:]  # a reader's buffer does not lie
            assert recv_exactly(peer, stop - start) == DATA[start:stop]
            out.acquire(MARKER)
            run_until(tr, lambda: out.exhausted)
            assert recv_exactly(peer, len(MARKER)) == MARKER


def test_one_cycle_reports_the_region_as_one_range(pair: Pair, tr: Traffic, tmp_path: Path) -> None:
    """A region the socket takes at once: one report, transfer and exhaust,
    its range the region's offsets (as a memory transfer is the whole
    slice of its resource)."""
    _, out, peer = pair
    path = write(tmp_path / "data", DATA)
    with open(path, "rb") as f:
        out.acquire(FileRegion(f, 100, 1000))
        with tr.cycle(5):
            reports = [(t, t.events, t.transfer()) for t in tr.transfers()]
        assert reports == [(out, TRANSFER | EXHAUST, range(100, 1100))]
        assert out.transfer() is None  # outside the cycle
        assert recv_exactly(peer, 1000) == DATA[100:1100]


def test_buffered_reader_sends_from_its_tell(pair: Pair, tr: Traffic, tmp_path: Path) -> None:
    """A reader that read ahead: the region starts at ``tell()``, and after
    it a read sees the file's bytes there, not the stale buffer."""
    _, out, peer = pair
    path = write(tmp_path / "data", DATA)
    with open(path, "rb") as f:
        assert f.read(10) == DATA[:10]  # the buffer holds far more
        out.acquire(FileRegion(f, count=500))
        seen = Seen(out)
        cycle(tr, seen)
        assert seen.spans[0].start == 10
        assert f.tell() == 510 and f.read(5) == DATA[510:515]
        assert recv_exactly(peer, 500) == DATA[10:510]


def test_descriptor_as_the_file(pair: Pair, tr: Traffic, tmp_path: Path) -> None:
    """A plain descriptor: its position is the start, and is settled with
    lseek; the descriptor stays the caller's, open."""
    _, out, peer = pair
    fd = os.open(write(tmp_path / "data", DATA), os.O_RDONLY)
    try:
        os.lseek(fd, 50, os.SEEK_SET)
        out.acquire(FileRegion(fd, count=200))
        cycle(tr, Seen(out))
        assert os.lseek(fd, 0, os.SEEK_CUR) == 250
        assert recv_exactly(peer, 200) == DATA[50:250]
        os.fstat(fd)  # still open
    finally:
        os.close(fd)


def test_empty_region_exhausts_without_a_transfer(pair: Pair, tr: Traffic, tmp_path: Path) -> None:
    """A region from the end of the file to its end moves nothing: it is
    exhausted at once (as an empty buffer is), with no range reported."""
    _, out, peer = pair
    path = write(tmp_path / "data", DATA)
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        region = FileRegion(f)
        out.acquire(region)
        assert region.length == 0
        seen = Seen(out)
        cycle(tr, seen)
        assert seen.spans == [] and seen.events[-1] == EXHAUST
        assert f.tell() == len(DATA)
    out.acquire(MARKER)
    run_until(tr, lambda: out.exhausted)
    assert recv_exactly(peer, len(MARKER)) == MARKER


def test_descriptors_transit_sends_a_region(tr: Traffic, tmp_path: Path) -> None:
    """An AF_UNIX Descriptors transit takes a region too (bytes, no descriptors)."""
    (a_in, a_out), (b_in, b_out) = Descriptors.socketpair()
    for t in (a_in, a_out, b_in, b_out):
        tr.acquire(t)
    path = write(tmp_path / "data", DATA)
    with open(path, "rb") as f:
        a_out.acquire(FileRegion(f))
        b_in.acquire((bytearray(len(DATA)), array("i", bytes(16))))
        got = bytearray()

        def visit(t: Transit) -> None:
            if t is b_in and (view := t.transfer()) is not None:
                assert isinstance(view, memoryview)
                got.extend(view)

        run_until(tr, lambda: len(got) == len(DATA) and a_out.exhausted, visit)
        assert bytes(got) == DATA and f.tell() == len(DATA)


def test_region_recorded_before_the_transit_enters_traffic(tr: Traffic, tmp_path: Path) -> None:
    """As memory: checked when given, taken when the transit enters a Traffic."""
    ours, peer = socket.socketpair()
    inp, out = Octets.wrap(ours)
    path = write(tmp_path / "data", DATA)
    with peer, open(path, "rb") as f:
        with pytest.raises(ValueError):
            out.acquire(FileRegion(f, 10, len(DATA)))  # past the end: refused now
        region = FileRegion(f, 10, 20)
        out.acquire(region)
        assert out.resource is region and not region.held
        tr.acquire(inp)
        tr.acquire(out)
        assert region.held
        cycle(tr, Seen(out))
        assert recv_exactly(peer, 20) == DATA[10:30] and f.tell() == 30


def test_region_is_held_by_one_transit_and_reusable_after(tr: Traffic, tmp_path: Path) -> None:
    """A held region is refused by another transit (ValueError); once its
    end is reported it can be acquired again, from where the last left."""
    path = write(tmp_path / "data", DATA)
    ours1, peer1 = socket.socketpair()
    ours2, peer2 = socket.socketpair()
    _, out1 = Octets.wrap(ours1)
    _, out2 = Octets.wrap(ours2)
    tr.acquire(out1)
    tr.acquire(out2)
    with peer1, peer2, open(path, "rb") as f:
        region = FileRegion(f, count=100)
        out1.acquire(region)
        with pytest.raises(ValueError):
            out2.acquire(region)
        with pytest.raises(BufferError):
            out1.acquire(FileRegion(f, count=1))  # the transit is busy too
        cycle(tr, Seen(out1))
        out2.acquire(region)  # offset None: from the position, 100
        assert region.start == 100
        cycle(tr, Seen(out2))
        assert recv_exactly(peer1, 100) == DATA[:100]
        assert recv_exactly(peer2, 100) == DATA[100:200]
        assert f.tell() == 200


# Receiving


def test_receive_until_the_stream_ends(tr: Traffic, tmp_path: Path) -> None:
    """Count None: what arrives goes to the file from its position until
    the peer's EOF, which terminates the transit; the position is after it."""
    data = content(3 << 20)
    inp, _, peer = tcp_pair(tr)
    path = tmp_path / "received"
    with peer, open(path, "w+b") as f:
        f.write(b"kept:")
        region = FileRegion(f)  # the buffered "kept:" is flushed first
        inp.acquire(region)
        assert (region.start, region.length) == (5, None)

        def send() -> None:
            peer.sendall(data)
            peer.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send)
        sender.start()
        seen = Seen(inp)
        cycle(tr, seen)
        sender.join()
        assert seen.events[-1] & TERMINATE and inp.terminated and inp.error is None
        seen.check_contiguous(5)
        assert seen.moved() == len(data) == region.moved
        assert f.tell() == 5 + len(data)
    assert path.read_bytes() == b"kept:" + data


def test_receive_count_leaves_the_rest_in_the_stream(
    pair: Pair, tr: Traffic, tmp_path: Path
) -> None:
    """A count: exhausted once it is written; what follows is the next
    resource's (memory here), byte for byte."""
    inp, _, peer = pair
    path = tmp_path / "received"
    with open(path, "w+b") as f:
        region = FileRegion(f, count=len(DATA))
        inp.acquire(region)
        peer.sendall(DATA + b"after the region")
        seen = Seen(inp)
        cycle(tr, seen)
        assert seen.events[-1] & EXHAUST and not inp.terminated
        seen.check_contiguous(0)
        assert f.tell() == len(DATA) == region.moved
        rest = bytearray(16)
        inp.acquire(rest)
        run_until(tr, lambda: inp.exhausted)
        assert rest == b"after the region"
    assert path.read_bytes() == DATA


def test_receive_into_a_file_opened_for_appending(pair: Pair, tr: Traffic, tmp_path: Path) -> None:
    """An appending file is written at its end: the offsets reported are
    from its size, the position ends at its end."""
    inp, _, peer = pair
    path = write(tmp_path / "log", b"0123456789")
    with open(path, "ab") as f:
        region = FileRegion(f, count=100)
        inp.acquire(region)
        assert region.start == 10
        peer.sendall(DATA[:100])
        seen = Seen(inp)
        cycle(tr, seen)
        seen.check_contiguous(10)
        assert seen.spans[-1].stop == 110 and f.tell() == 110
    assert path.read_bytes() == b"0123456789" + DATA[:100]


def test_receive_then_send_the_same_file_back(pair: Pair, tr: Traffic, tmp_path: Path) -> None:
    """Both directions of one connection, with regions of one ``r+b`` file."""
    inp, out, peer = pair
    with open(tmp_path / "both", "w+b") as f:
        inp.acquire(FileRegion(f, count=len(DATA)))
        peer.sendall(DATA)
        cycle(tr, Seen(inp))
        out.acquire(FileRegion(f, 0, len(DATA)))
        cycle(tr, Seen(out))
        assert recv_exactly(peer, len(DATA)) == DATA


# How a region ends: the position


def test_position_after_termination_when_the_peer_closes(tr: Traffic, tmp_path: Path) -> None:
    """The peer reads some and closes: the transit terminates with the
    error, the region ends, and the position is after what was reported
    moved, which the peer had at least partly read, in order."""
    data = content(8 << 20)
    path = write(tmp_path / "data", data)
    ours, peer = socket.socketpair()
    inp, out = Octets.wrap(ours)
    tr.acquire(inp)
    tr.acquire(out)
    with open(path, "rb") as f:
        f.seek(1000)
        region = FileRegion(f)
        out.acquire(region)
        seen = Seen(out)
        head = b""
        with peer:
            while not seen.spans:
                with tr.cycle(1):
                    for t in tr.transfers():
                        seen(t)
            head = recv_exactly(peer, 4096)
        cycle(tr, seen)
        assert out.terminated and out.error in (errno.EPIPE, errno.ECONNRESET)
        assert seen.events[-1] & TERMINATE and not seen.events[-1] & EXHAUST
        seen.check_contiguous(1000)
        assert 4096 <= seen.moved() < len(data) - 1000
        assert f.tell() == 1000 + seen.moved() == 1000 + region.moved
        assert region.fault is None and not region.held
        assert head == data[1000:5096]


def test_position_after_the_owner_terminates_mid_transfer(
    pair: Pair, tr: Traffic, tmp_path: Path
) -> None:
    """The peer reads nothing, the socket fills, the owner terminates: the
    position is after exactly what the peer then finds before its EOF."""
    _, out, peer = pair
    data = content(4 << 20)
    path = write(tmp_path / "data", data)
    with open(path, "rb") as f:
        region = FileRegion(f)
        out.acquire(region)
        seen = Seen(out)
        with tr.cycle(5):
            for t in tr.transfers():
                seen(t)
        while True:  # until the socket is full: a cycle with nothing to report
            with tr.cycle(0.05):
                reported = list(tr.transfers())
            for t in reported:
                seen(t)
            if not reported:
                break
        assert 0 < seen.moved() < len(data) and not seen.ended
        out.terminate()
        cycle(tr, seen)
        assert seen.events[-1] == TERMINATE  # no transfer with it
        assert f.tell() == seen.moved() == region.moved
        assert recv_all(peer) == data[: seen.moved()]


def test_position_after_a_fault_the_file_truncated(pair: Pair, tr: Traffic, tmp_path: Path) -> None:
    """The file shrinks after the region was acquired: the region ends in
    a fault with FileEndedError (sent: what went, expected: the region),
    the position after what went, and the stream intact."""
    _, out, peer = pair
    data = content(1 << 20)
    path = write(tmp_path / "data", data)
    with open(path, "rb") as f:
        f.seek(100)
        region = FileRegion(f)
        out.acquire(region)
        os.truncate(path, 300_000)
        thread, got = reader(peer)
        seen = Seen(out)
        cycle(tr, seen)
        assert seen.events[-1] & FAULT and not out.terminated
        assert isinstance(region.fault, FileEndedError)
        assert region.fault.sent == region.moved == seen.moved() == 300_000 - 100
        assert region.fault.expected == len(data) - 100
        assert out.error == lib.TR_FILE_ENDED
        assert f.tell() == 300_000
        out.acquire(MARKER)  # the stream goes on
        run_until(tr, lambda: out.exhausted)
        out.terminate()
        thread.join(30)
        assert got[0] == data[100:300_000] + MARKER


RECEIVE_FAULT = """
import os, resource, signal, socket, sys
from traffic import FileRegion, Octets, Traffic

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
path, limit = sys.argv[1], int(sys.argv[2])
tr = Traffic()
ours, peer = socket.socketpair()
inp, _ = Octets.wrap(ours)
tr.acquire(inp)
data = bytes(range(256)) * 400
with open(path, "wb") as f:
    f.write(b"x" * 10)
    region = FileRegion(f)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    inp.acquire(region)
    peer.sendall(data)
    events = 0
    while not region.fault and not inp.terminated:
        with tr.cycle(5):
            for t in tr.transfers():
                events |= t.events
    moved, position = region.moved, f.tell()
    # The bytes the file refused are the next resource's, first.
    rest = bytearray(len(data) - moved)
    inp.acquire(rest)
    while not inp.exhausted:
        with tr.cycle(5):
            list(tr.transfers())
    print(type(region.fault).__name__, region.fault.errno, events, moved, position,
          bytes(rest) == data[moved:], inp.terminated)
tr.close()
"""


def test_position_after_a_fault_the_file_refuses(tmp_path: Path) -> None:
    """A receive whose file refuses to grow (``RLIMIT_FSIZE``: ``EFBIG``):
    a fault with the OSError, the position after what the file took, and
    the bytes it did not take are the next resource's.  In a child
    process: the limit is the process's."""
    path = tmp_path / "limited"
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    result = subprocess.run(
        [sys.executable, "-c", RECEIVE_FAULT, str(path), "50000"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    name, code, events, moved, position, rest_ok, terminated = result.stdout.split()
    assert (name, int(code)) == ("OSError", errno.EFBIG)
    assert int(events) & FAULT
    assert int(moved) == 50000 - 10 and int(position) == 50000
    assert rest_ok == "True" and terminated == "False"
    assert path.read_bytes() == b"x" * 10 + (bytes(range(256)) * 400)[: 50000 - 10]


def test_position_after_the_traffic_closes(pair: Pair, tr: Traffic, tmp_path: Path) -> None:
    """A region whose end no cycle reported: closing the Traffic settles
    the position after what the cycles did report."""
    out = pair[1]
    data = content(4 << 20)
    path = write(tmp_path / "data", data)
    with open(path, "rb") as f:
        region = FileRegion(f)
        out.acquire(region)
        seen = Seen(out)
        with tr.cycle(5):
            for t in tr.transfers():
                seen(t)
        assert 0 < seen.moved() < len(data)
        tr.close()
        assert not region.held and f.tell() == seen.moved()


def test_dropped_transit_still_settles(tr: Traffic, tmp_path: Path) -> None:
    """The owner drops the transit holding a region: nobody is told of the
    end, but the file's position is settled when the cycle takes it."""
    ours, peer = socket.socketpair()
    _, out = Octets.wrap(ours)
    tr.acquire(out)
    data = content(4 << 20)
    path = write(tmp_path / "data", data)
    with peer, open(path, "rb") as f:
        region = FileRegion(f)
        out.acquire(region)
        del out
        run_until(tr, lambda: not region.held)
        assert f.tell() == region.moved < len(data)


# Bad input, refused before anything moves


class Ctx:
    """Files for one refusal, closed after it."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.fds: list[int] = []
        self.objects: list[Any] = []

    def path(self, data: bytes = DATA) -> Path:
        return write(self.tmp / f"f{len(self.fds) + len(self.objects)}", data)

    def fd(self, fd: int) -> int:
        self.fds.append(fd)
        return fd

    def keep(self, thing: Any) -> Any:
        self.objects.append(thing)
        return thing

    def close(self) -> None:
        for thing in self.objects:
            thing.close()
        for fd in self.fds:
            os.close(fd)


#: A bad input: (the file, FileRegion's other arguments) made in a Ctx.
Make = Callable[[Ctx], tuple[Any, dict[str, Any]]]


def opened(mode: str, seek: int = 7, **kw: Any) -> Make:
    """A regular file opened with ``mode`` (``!``: then closed), at ``seek``."""

    def make(c: Ctx) -> tuple[Any, dict[str, Any]]:
        f = c.keep(open(c.path(), mode.rstrip("!")))  # noqa: SIM115
        f.seek(seek)
        if mode.endswith("!"):
            f.close()
        return f, kw

    return make


def descriptor(flags: int, **kw: Any) -> Make:
    return lambda c: (c.fd(os.open(c.path(), flags)), kw)


def fdopen(flags: int, mode: str) -> Make:
    """A file object over ``os.open(path, flags)`` (write-only, not truncated)."""
    return lambda c: (c.keep(os.fdopen(os.open(c.path(), flags), mode)), {})


def directory(c: Ctx) -> tuple[Any, dict[str, Any]]:
    return c.fd(os.open(c.tmp, os.O_RDONLY)), {}


def pipe_end(reading: bool) -> Make:
    def make(c: Ctx) -> tuple[Any, dict[str, Any]]:
        r, w = os.pipe()
        c.fd(r)
        c.fd(w)
        return (r if reading else w), {}

    return make


def socket_end(c: Ctx) -> tuple[Any, dict[str, Any]]:
    x, y = socket.socketpair()
    c.keep(x)
    c.keep(y)
    return x.fileno(), {}


def device(name: str, mode: str) -> Make:
    return lambda c: (c.keep(open(name, mode)), {})


def value(thing: Any, **kw: Any) -> Make:
    return lambda c: (thing, kw)


def unopened(c: Ctx) -> tuple[Any, dict[str, Any]]:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return (soft if 0 < soft < 2**31 - 1 else 2**31 - 1), {}


def o_path(c: Ctx) -> tuple[Any, dict[str, Any]]:
    return c.fd(os.open(c.path(), os.O_PATH)), {"offset": 0, "count": 10}


def empty_file(c: Ctx) -> tuple[Any, dict[str, Any]]:
    return c.keep(open(c.path(b""), "rb")), {"count": 1}


UNSUPPORTED = io.UnsupportedOperation


#: A row of the catalogue: its name, the bad input, the exception's exact
#: type(s), and its errno if it must have one.
Row = tuple[str, Make, tuple[type[BaseException], ...], "int | None"]


def row(make: Make, exception: Any, id: str, code: int | None = None) -> Row:
    types = exception if isinstance(exception, tuple) else (exception,)
    return id, make, types, code


NON_FILES: list[Row] = [
    row(value(True), TypeError, "file=True"),
    row(value(None), TypeError, "file=None"),
    row(value("/etc/passwd"), TypeError, "file=str"),
    row(value(b"bytes"), TypeError, "file=bytes"),
    row(value(3.0), TypeError, "file=float"),
    row(lambda c: (io.BytesIO(DATA), {}), UNSUPPORTED, "file=BytesIO"),
    row(value(-1), ValueError, "fd=-1"),
    row(unopened, OSError, "fd=unopened", errno.EBADF),
    row(value(2**31), OutOfRangeError, "fd=2**31"),
    row(value(2**63), OutOfRangeError, "fd=2**63"),
]

SEND: list[Row] = [
    row(opened("r"), TypeError, "text"),
    row(opened("rb!"), ValueError, "closed"),
    row(opened("ab"), UNSUPPORTED, "append-only"),
    row(fdopen(os.O_WRONLY, "wb"), UNSUPPORTED, "write-only"),
    row(descriptor(os.O_WRONLY), UNSUPPORTED, "fd-write-only"),
    row(directory, IsADirectoryError, "fd-directory"),
    row(pipe_end(True), ValueError, "fd-pipe"),
    row(socket_end, ValueError, "fd-socket"),
    row(device("/dev/zero", "rb"), ValueError, "/dev/zero"),
    row(o_path, OSError, "fd-O_PATH", errno.EBADF),
    *NON_FILES,
    row(opened("rb", offset=-1), ValueError, "offset=-1"),
    row(opened("rb", offset=-(2**63)), ValueError, "offset=-2**63"),
    row(opened("rb", count=0), ValueError, "count=0"),
    row(opened("rb", count=-1), ValueError, "count=-1"),
    row(opened("rb", offset=10, count=len(DATA) - 9), ValueError, "offset+count>size"),
    row(opened("rb", count=len(DATA) - 7 + 1), ValueError, "position+count>size"),
    row(opened("rb", offset=len(DATA) + 1), ValueError, "offset>size"),
    row(opened("rb", seek=len(DATA) + 5), ValueError, "position>size"),
    row(opened("rb", offset=2**63), ValueError, "offset=2**63"),
    row(opened("rb", offset=2**64), ValueError, "offset=2**64"),
    row(opened("rb", count=2**63), ValueError, "count=2**63"),
    row(opened("rb", count=2**64), ValueError, "count=2**64"),
    row(descriptor(os.O_RDONLY, count=len(DATA) + 1), ValueError, "fd,count>size"),
    row(empty_file, ValueError, "empty-file,count=1"),
    row(opened("rb", offset=1.0), TypeError, "offset=1.0"),
    row(opened("rb", offset="0"), TypeError, "offset=str"),
    row(opened("rb", offset=True), TypeError, "offset=True"),
    row(opened("rb", count=1.0), TypeError, "count=1.0"),
    row(opened("rb", count="5"), TypeError, "count=str"),
    row(opened("rb", count=True), TypeError, "count=True"),
]

RECEIVE: list[Row] = [
    row(opened("r+"), TypeError, "text"),
    row(opened("r+b!"), ValueError, "closed"),
    row(opened("rb"), UNSUPPORTED, "read-only"),
    row(descriptor(os.O_RDONLY), UNSUPPORTED, "fd-read-only"),
    row(pipe_end(False), ValueError, "fd-pipe"),
    row(socket_end, ValueError, "fd-socket"),
    row(device("/dev/null", "wb"), ValueError, "/dev/null"),
    *NON_FILES,
    row(opened("r+b", count=0), ValueError, "count=0"),
    row(opened("r+b", count=-1), ValueError, "count=-1"),
    row(opened("r+b", count=1.0), TypeError, "count=1.0"),
    row(opened("r+b", count=False), TypeError, "count=False"),
    # A receive is written from the file's position: no offset.
    row(opened("r+b", offset=0), TypeError, "offset-on-a-receive"),
    row(opened("r+b", offset=0, count=5), TypeError, "offset,count-on-a-receive"),
]


def check_refusal(info: pytest.ExceptionInfo[BaseException], types: Any, code: Any) -> None:
    assert type(info.value) in types, f"{type(info.value).__name__}: {info.value}"
    assert str(info.value), "a refusal says why"
    if code is not None:
        assert isinstance(info.value, OSError) and info.value.errno == code


def position(file: Any) -> int | None:
    """The position of a file object or a descriptor, None if there is none."""
    try:
        if isinstance(file, int) and not isinstance(file, bool):
            return os.lseek(file, 0, os.SEEK_CUR)
        if hasattr(file, "tell") and not file.closed:
            return int(file.tell())
    except (OSError, ValueError, OverflowError):
        pass
    return None


def catalogue(rows: list[Row], tmp_path: Path, attempt: Callable[[Row, Ctx], None]) -> None:
    """``attempt`` every row (one test for them all: the leak check costs
    more than a refusal); fail naming every row that failed."""
    failures = []
    for i, one in enumerate(rows):
        directory = tmp_path / f"row{i}"
        directory.mkdir()
        c = Ctx(directory)
        try:
            attempt(one, c)
        except Exception as error:
            failures.append(f"{one[0]}: {type(error).__name__}: {error}")
        finally:
            c.close()
    assert not failures, "\n".join(failures)


def refuse(one: Row, c: Ctx, transit: Octets) -> None:
    """The row's refusal, and nothing changed: the file's position, the
    process's descriptors, the transit's resource."""
    _, make, types, code = one
    file, kwargs = make(c)
    before, fds = position(file), open_fds()
    with pytest.raises(BaseException) as info:
        transit.acquire(FileRegion(file, **kwargs))
    check_refusal(info, types, code)
    assert position(file) == before, "the position moved"
    assert open_fds() == fds, "a descriptor was made or closed"
    assert transit.resource is None


def test_send_refused(pair: Pair, tr: Traffic, tmp_path: Path) -> None:
    """Every bad input of a send, refused with send_file's exception type:
    nothing sent (a good region and the marker are what the peer reads
    next), the position unchanged, no descriptor made, the transit intact."""
    _, out, peer = pair
    good = write(tmp_path / "good", DATA)

    def attempt(one: Row, c: Ctx) -> None:
        refuse(one, c, out)
        with open(good, "rb") as f:
            out.acquire(FileRegion(f, 0, 10))
            cycle(tr, Seen(out))
        out.acquire(MARKER)
        run_until(tr, lambda: out.exhausted)
        assert recv_exactly(peer, 10 + len(MARKER)) == DATA[:10] + MARKER

    catalogue(SEND, tmp_path, attempt)


def test_receive_refused(pair: Pair, tr: Traffic, tmp_path: Path) -> None:
    """Every bad input of a receive, refused with receive_file's exception
    type: nothing taken from the stream (the peer's bytes are what a good
    region receives next), the file untouched, the transit intact."""
    inp, _, peer = pair

    def attempt(one: Row, c: Ctx) -> None:
        peer.sendall(MARKER)
        refuse(one, c, inp)
        with open(c.tmp / "good", "w+b") as f:
            inp.acquire(FileRegion(f, count=len(MARKER)))
            cycle(tr, Seen(inp))
            f.seek(0)
            assert f.read() == MARKER

    catalogue(RECEIVE, tmp_path, attempt)


def test_refused_by_the_transit(tr: Traffic, tmp_path: Path) -> None:
    """What the transit refuses, before anything moves: a transit that is
    not a stream's (TypeError), a pipe's (an OSError: EINVAL, as
    send_file), a busy one (BufferError, as memory), a terminated one
    (TransitClosedError), one of a threaded Traffic (RuntimeError)."""
    path = write(tmp_path / "data", DATA)
    with open(path, "rb") as f, open(tmp_path / "w", "wb") as w:
        listener, _ = Sockets.listen(("127.0.0.1", 0))
        tr.acquire(listener)
        with pytest.raises(TypeError):
            listener.acquire(FileRegion(f))
        r, pw = Octets.pipe()
        tr.acquire(r)
        tr.acquire(pw)
        with pytest.raises(OSError) as info:
            pw.acquire(FileRegion(f))
        assert type(info.value) is TransitError and info.value.errno == errno.EINVAL
        with pytest.raises(OSError):
            r.acquire(FileRegion(w))
        ours, peer = socket.socketpair()
        inp, out = Octets.wrap(ours)
        tr.acquire(inp)
        tr.acquire(out)
        with peer:
            inp.acquire(bytearray(10))
            with pytest.raises(BufferError):
                inp.acquire(FileRegion(w))
            out.terminate()
            with pytest.raises(TransitClosedError):
                out.acquire(FileRegion(f))
        threaded = Traffic()
        try:
            threaded.start()
            (a, b), (c, d) = Octets.socketpair()
            for t in (a, b):
                threaded.acquire(t)
            with pytest.raises(RuntimeError):
                b.acquire(FileRegion(f))
            del c, d
        finally:
            threaded.close()
        assert f.tell() == 0 and w.tell() == 0


# Descriptors


def test_the_core_duplicate_closes_with_the_region(pair: Pair, tr: Traffic, tmp_path: Path) -> None:
    """Counted in /proc/self/fd while the Traffic stays open: the core's
    duplicate (and a receive's pipe) exist while a region is held and are
    gone once its end is reported, whichever end; the caller's descriptor
    stays open."""
    inp, out, peer = pair
    path = write(tmp_path / "data", DATA)
    with open(tmp_path / "received", "wb") as w:
        base = open_fds()
        inp.acquire(FileRegion(w, count=10))
        assert len(open_fds()) > len(base)  # the duplicate, and the pipe where splice(2) is
        peer.sendall(DATA[:10])
        cycle(tr, Seen(inp))  # exhausted
        assert open_fds() == base
        inp.acquire(FileRegion(w))
        peer.shutdown(socket.SHUT_WR)
        cycle(tr, Seen(inp))  # terminated: the stream's end
        assert open_fds() == base and not w.closed
    with open(path, "rb") as f:
        base = open_fds()
        out.acquire(FileRegion(f))
        assert open_fds() - base and len(open_fds()) == len(base) + 1  # the duplicate
        cycle(tr, Seen(out))  # exhausted
        assert open_fds() == base and not f.closed
        f.seek(0)
        out.acquire(FileRegion(f))
        os.truncate(path, 10)
        cycle(tr, Seen(out))  # a fault
        assert open_fds() == base
        f.seek(0)
        out.acquire(FileRegion(f))
        ours = out.fileno()
        out.terminate()  # the last transit: the socket closes with it
        cycle(tr, Seen(out))  # terminated by its owner
        assert open_fds() == base - {ours} and not f.closed


def test_many_regions_leak_nothing(pair: Pair, tr: Traffic, tmp_path: Path) -> None:
    """A hundred regions, sent and received, and refusals between them."""
    inp, out, peer = pair
    path = write(tmp_path / "data", DATA)
    base = open_fds()
    with open(path, "rb") as f, open(tmp_path / "received", "wb") as w:
        for i in range(100):
            with pytest.raises(ValueError):
                out.acquire(FileRegion(f, len(DATA), 1))
            out.acquire(FileRegion(f, i, 64))
            cycle(tr, Seen(out))
            assert recv_exactly(peer, 64) == DATA[i : i + 64]
            peer.sendall(DATA[i : i + 32])
            inp.acquire(FileRegion(w, count=32))
            cycle(tr, Seen(inp))
    assert open_fds() == base
    assert (tmp_path / "received").read_bytes() == b"".join(DATA[i : i + 32] for i in range(100))


# libloop


def test_libloop_server_sends_a_file_to_a_stdlib_client(tmp_path: Path) -> None:
    """A Loop's server: per connection, a FileRegion attached as the
    output's resource; on_transfer gets the ranges, on_exhaust ends the
    connection.  The client's digest matches the file."""
    data = content(4 << 20, seed=7)
    path = write(tmp_path / "served", data)
    ranges: list[range] = []
    results: list[bytes] = []
    with Loop() as loop:
        listener, address = Sockets.listen(("127.0.0.1", 0))

        def accepted(transit: Sockets, view: memoryview) -> None:
            for fd in view:
                _, output = Octets.wrap(socket.socket(fileno=fd))
                f = open(path, "rb")  # noqa: SIM115

                def sent(t: Octets, f: Any = f) -> None:
                    assert f.tell() == len(data)
                    f.close()
                    t.terminate()

                loop.attach(
                    output,
                    on_transfer=lambda t, span: ranges.append(span),
                    on_exhaust=sent,
                    resource=FileRegion(f),
                )

        loop.attach(listener, on_transfer=accepted, resource=array("i", [-1]) * 4)

        def client() -> None:
            try:
                with socket.create_connection(address, timeout=30) as sock:
                    results.append(recv_all(sock))
            finally:
                loop.stop()

        thread = threading.Thread(target=client)
        thread.start()
        loop.run()
        thread.join(30)
    assert hashlib.sha256(results[0]).digest() == hashlib.sha256(data).digest()
    assert all(isinstance(span, range) for span in ranges)
    assert ranges[0].start == 0 and ranges[-1].stop == len(data)
    assert all(a.stop == b.start for a, b in itertools.pairwise(ranges))


def test_libloop_server_receives_a_file_from_a_stdlib_client(tmp_path: Path) -> None:
    """A Loop's server writes a connection's bytes to a file until the
    client ends its side: on_terminate finds the file complete, its
    position at the end."""
    data = content(2 << 20, seed=9)
    received = tmp_path / "upload"
    done: list[int] = []
    with Loop() as loop:
        listener, address = Sockets.listen(("127.0.0.1", 0))

        def accepted(transit: Sockets, view: memoryview) -> None:
            for fd in view:
                inp, out = Octets.wrap(socket.socket(fileno=fd))
                f = open(received, "wb")  # noqa: SIM115

                def ended(t: Octets, f: Any = f, out: Octets = out) -> None:
                    done.append(f.tell())
                    f.close()
                    out.acquire(b"stored")
                    loop.attach(out, on_exhaust=lambda o: o.terminate())

                loop.attach(inp, on_terminate=ended, resource=FileRegion(f))

        loop.attach(listener, on_transfer=accepted, resource=array("i", [-1]) * 4)
        answer: list[bytes] = []

        def client() -> None:
            try:
                with socket.create_connection(address, timeout=30) as sock:
                    sock.sendall(data)
                    sock.shutdown(socket.SHUT_WR)
                    answer.append(recv_all(sock))
            finally:
                loop.stop()

        thread = threading.Thread(target=client)
        thread.start()
        loop.run()
        thread.join(30)
    assert done == [len(data)] and answer == [b"stored"]
    assert received.read_bytes() == data


# The example


def test_example_demo() -> None:
    """``examples/file_send_sync.py --demo``: serves itself a file and
    uploads, verifies the digests, exits 0."""
    result = run_example(EXAMPLE, "--demo", "--size", str(8 << 20), "--clients", "3", timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert re.fullmatch(r"listening on 127\.0\.0\.1:\d+", lines[0])
    match = re.fullmatch(
        r"verified 3 downloads and 3 uploads \((\d+) bytes\) in [\d.]+ s", lines[-1]
    )
    assert match, result.stdout
    assert int(match[1]) == 3 * (8 << 20) + sum((8 << 20) // 4 + job for job in (1, 3, 5))
    assert result.stderr == ""
