"""The synchronous API: ``with traffic:`` cycles over real pipes and sockets.

Peers are real: pipes, socketpairs, TCP over 127.0.0.1, stdlib sockets on
the other end, subprocesses where a signal or a process property is the
subject.  Cycles are bounded loops (``run_until``) that wait on real
conditions; no test passes or fails on timing.
"""

from __future__ import annotations

import errno
import fcntl
import gc
import hashlib
import os
import signal
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
from typing import Any

import pytest

import traffic
from conftest import Collector, recv_all, recv_exactly, run_until, wait_readable
from traffic import Octets, Traffic, TransitClosedError
from traffic._traffic import lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_python(
    script: str, timeout: float = 60.0, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=env,
        **kwargs,
    )


def stdlib_pair(tr: Traffic) -> tuple[Octets, Octets, socket.socket]:
    """(input, output) transits over one end of a socketpair; the stdlib peer."""
    ours, peer = socket.socketpair()
    inp, out = Octets.wrap(ours)
    tr.acquire(inp)
    tr.acquire(out)
    return inp, out, peer


def tcp_pair(tr: Traffic) -> tuple[Octets, Octets, socket.socket]:
    """(input, output) transits connected over 127.0.0.1; the accepted stdlib peer."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        inp, out = Octets.connect(listener.getsockname())
        listener.settimeout(30)
        peer, _ = listener.accept()
    tr.acquire(inp)
    tr.acquire(out)
    return inp, out, peer


def unread(fd: int) -> int:
    """Bytes waiting in the kernel for a reader of ``fd`` (FIONREAD)."""
    return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]


def send_all_from(tr: Traffic, out: Octets, data: bytes, extra: Any = None) -> None:
    """Acquire ``data`` into ``out`` and cycle until it is exhausted."""
    out.acquire(data)
    done = []

    def visit(t: traffic.Transit) -> None:
        if t is out and t.exhausted:
            done.append(True)
        if extra is not None:
            extra(t)

    run_until(tr, lambda: bool(done), visit)


# Transfers


def test_pipe_transfer(tr: Traffic) -> None:
    r, w = Octets.pipe()
    tr.acquire(r)
    tr.acquire(w)
    sink = Collector(r, 1024)
    w.acquire(b"through a pipe")
    run_until(tr, lambda: bytes(sink.data) == b"through a pipe", sink)
    assert not r.exhausted and not r.terminated


def test_pipe_output_exhaust_event(tr: Traffic) -> None:
    r, w = Octets.pipe()
    tr.acquire(r)
    tr.acquire(w)
    seen: list[tuple[int, bytes]] = []

    def visit(t: traffic.Transit) -> None:
        if t is w:
            seen.append((t.events, bytes(t.transfer() or b"")))

    w.acquire(b"abc")
    run_until(tr, lambda: bool(seen), visit)
    assert seen == [(lib.TR_EV_TRANSFER | lib.TR_EV_EXHAUST, b"abc")]
    assert w.exhausted
    assert os.read(r.fileno(), 10) == b"abc"


@pytest.mark.parametrize("maker", ["socketpair", "tcp"])
def test_socket_transfer_both_ways(tr: Traffic, maker: str) -> None:
    inp, out, peer = (stdlib_pair if maker == "socketpair" else tcp_pair)(tr)
    with peer:
        sink = Collector(inp)
        peer.sendall(b"ping from the peer")
        run_until(tr, lambda: bytes(sink.data) == b"ping from the peer", sink)
        send_all_from(tr, out, b"pong from the core")
        assert recv_exactly(peer, 18) == b"pong from the core"


def test_octets_socketpair_between_transits(tr: Traffic) -> None:
    (ain, aout), (bin_, bout) = Octets.socketpair()
    for t in (ain, aout, bin_, bout):
        tr.acquire(t)
    a_sink, b_sink = Collector(ain), Collector(bin_)

    def visit(t: traffic.Transit) -> None:
        a_sink(t)
        b_sink(t)

    aout.acquire(b"a to b")
    bout.acquire(b"b to a")
    run_until(tr, lambda: a_sink.data == b"b to a" and b_sink.data == b"a to b", visit)


def test_large_transfer_partial_writes_and_checksum(tr: Traffic) -> None:
    """16 MiB through a socketpair, read in 64 KiB resources."""
    (ain, aout), (bin_, bout) = Octets.socketpair()
    for t in (ain, aout, bin_, bout):
        tr.acquire(t)
    data = os.urandom(16 << 20)
    sink = Collector(bin_, 65536)
    out_transfers = []

    def visit(t: traffic.Transit) -> None:
        sink(t)
        if t is aout:
            view = t.transfer()
            if view is not None:
                out_transfers.append(len(view))

    aout.acquire(data)
    run_until(tr, lambda: len(sink.data) >= len(data), visit, cycles=20000)
    assert len(sink.data) == len(data)
    assert hashlib.sha256(sink.data).digest() == hashlib.sha256(data).digest()
    # The socket cannot take 16 MiB at once: the output went in several slices.
    assert len(out_transfers) > 1
    assert sum(out_transfers) == len(data)
    assert aout.exhausted
    # Input resources were reused one after another, each at most 64 KiB.
    assert sink.transfers >= len(data) // 65536


def test_short_read(tr: Traffic) -> None:
    inp, _out, peer = stdlib_pair(tr)
    with peer:
        views: list[bytes] = []
        inp.acquire(bytearray(1000))
        peer.sendall(b"ten bytes!")

        def visit(t: traffic.Transit) -> None:
            if t is inp:
                views.append(bytes(t.transfer() or b""))

        run_until(tr, lambda: b"".join(views) == b"ten bytes!", visit)
        assert not inp.exhausted and not inp.terminated
        # The same resource keeps filling after the short read.
        peer.sendall(b"+more")
        run_until(tr, lambda: b"".join(views) == b"ten bytes!+more", visit)
        assert inp.resource is not None
        assert bytes(inp.resource[:15]) == b"ten bytes!+more"  # type: ignore[index]


def test_exhaustion_is_flow_control(tr: Traffic) -> None:
    inp, _out, peer = stdlib_pair(tr)
    with peer:
        got: list[bytes] = []

        def visit(t: traffic.Transit) -> None:
            if t is inp:
                got.append(bytes(t.transfer() or b""))

        inp.acquire(bytearray(4))
        peer.sendall(b"0123456789" * 10)
        run_until(tr, lambda: inp.exhausted, visit)
        assert b"".join(got) == b"0123"
        # Starved: nothing more is transferred, the rest waits in the kernel.
        for _ in range(5):
            with tr.cycle(0.05):
                assert list(tr.transfers()) == []
        assert unread(inp.fileno()) == 96
        # A new resource transfers at once (no new edge is needed).
        inp.acquire(bytearray(200))
        run_until(tr, lambda: len(b"".join(got)) == 100, visit)
        assert b"".join(got) == b"0123456789" * 10
        assert unread(inp.fileno()) == 0


@pytest.mark.parametrize("registered", [False, True], ids=["fresh", "registered"])
@pytest.mark.parametrize("kind", ["pipe", "socketpair", "tcp"])
def test_eof_after_data(tr: Traffic, kind: str, registered: bool) -> None:
    """Data then EOF: everything delivered, then terminated with error None.

    ``registered``: the transit already waited once (its kernel point is
    registered), so the data and the end arrive as one edge.
    """
    closer: Any
    if kind == "pipe":
        read_fd, write_fd = os.pipe()
        inp = Octets.from_fd(read_fd, traffic.Polarity.INPUT)
        tr.acquire(inp)
        writer: Any = os.fdopen(write_fd, "wb", buffering=0)
        send, closer = writer.write, writer
    else:
        inp, out, closer = (stdlib_pair if kind == "socketpair" else tcp_pair)(tr)
        out.terminate()
        send = closer.sendall
    with closer:
        sink = Collector(inp, 4096)
        if registered:
            send(b"first")
            run_until(tr, lambda: sink.data == b"first", sink)
            # Waited to EAGAIN once: the next data arrives as an edge.
            with tr.cycle(0):
                assert list(tr.transfers()) == []
        payload = os.urandom(10000)
        send(payload)
    run_until(tr, lambda: sink.terminated, sink)
    assert bytes(sink.data[-len(payload) :]) == payload
    assert sink.error is None
    assert inp.error is None
    assert inp.terminated


def test_peer_reset_terminates_input_with_econnreset(tr: Traffic) -> None:
    inp, _out, peer = tcp_pair(tr)
    sink = Collector(inp)
    peer.sendall(b"x")
    run_until(tr, lambda: sink.data == b"x", sink)
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    peer.close()
    run_until(tr, lambda: sink.terminated, sink)
    assert sink.error == errno.ECONNRESET
    assert inp.error == errno.ECONNRESET


@pytest.mark.parametrize("kind", ["socketpair", "tcp"])
def test_write_to_closed_peer_epipe(tr: Traffic, kind: str) -> None:
    _inp, out, peer = (stdlib_pair if kind == "socketpair" else tcp_pair)(tr)
    peer.close()
    ended = []

    def visit(t: traffic.Transit) -> None:
        if t is out and t.terminated:
            ended.append(t.error)
        elif t is out and t.exhausted:
            t.acquire(b"more data " * 1000)

    out.acquire(b"more data " * 1000)
    run_until(tr, lambda: bool(ended), visit)
    assert ended[0] in (errno.EPIPE, errno.ECONNRESET)


def test_write_to_pipe_without_reader_epipe(tr: Traffic) -> None:
    r, w = Octets.pipe()
    tr.acquire(w)
    r.terminate()  # not in traffic: closes the read end at once
    assert r.fileno() == -1
    ended = []

    def visit(t: traffic.Transit) -> None:
        if t is w and t.terminated:
            ended.append(t.error)

    w.acquire(b"nobody reads this")
    run_until(tr, lambda: bool(ended), visit)
    assert ended == [errno.EPIPE]


@pytest.mark.parametrize("kind", ["pipe", "socketpair"])
def test_no_sigpipe_even_with_default_disposition(kind: str) -> None:
    """SIGPIPE at its default (death) disposition: the core must never raise it."""
    script = f"""
import errno, os, signal, socket
signal.signal(signal.SIGPIPE, signal.SIG_DFL)
from traffic import Octets, Traffic
tr = Traffic()
if {kind!r} == "pipe":
    r, w = Octets.pipe()
    r.terminate()
else:
    a, b = socket.socketpair()
    inp, w = Octets.wrap(a)
    b.close()
tr.acquire(w)
w.acquire(b"x" * 100)
for _ in range(100):
    with tr.cycle(0.1):
        for t in tr.transfers():
            pass
    if w.terminated:
        break
print("alive", w.error)
tr.close()
"""
    proc = run_python(script)
    assert proc.returncode == 0, (proc.returncode, proc.stderr)
    assert proc.stdout.split() == ["alive", str(errno.EPIPE)]


# Half-close


def test_terminate_output_half_closes(tr: Traffic) -> None:
    inp, out, peer = stdlib_pair(tr)
    with peer:
        out.terminate()
        ended = []
        run_until(tr, lambda: bool(ended), lambda t: ended.append(t) if t is out else None)
        assert out.terminated and out.error is None
        # The peer sees EOF; our input still works.
        assert recv_all(peer) == b""
        sink = Collector(inp)
        peer.sendall(b"still listening")
        run_until(tr, lambda: sink.data == b"still listening", sink)
        assert not inp.terminated
        assert inp.fileno() >= 0


def test_peer_shutdown_ends_only_our_input(tr: Traffic) -> None:
    inp, out, peer = tcp_pair(tr)
    with peer:
        sink = Collector(inp)
        peer.sendall(b"last words")
        peer.shutdown(socket.SHUT_WR)
        run_until(tr, lambda: sink.terminated, sink)
        assert sink.data == b"last words" and sink.error is None
        assert not out.terminated
        send_all_from(tr, out, b"our output still sends")
        assert recv_exactly(peer, 22) == b"our output still sends"
        out.terminate()
        assert recv_all(peer) == b""


# Disregard and termination with the descriptor shared


def dup_pair(tr: Traffic) -> tuple[Octets, Octets, socket.socket, socket.socket]:
    """Transits over a socket whose descriptor was duplicated first; (in, out, dup, peer)."""
    ours, peer = socket.socketpair()
    dup = ours.dup()
    inp, out = Octets.wrap(ours)
    tr.acquire(inp)
    tr.acquire(out)
    return inp, out, dup, peer


def test_disregard_leaves_shared_connection_intact(tr: Traffic) -> None:
    inp, out, dup, peer = dup_pair(tr)
    with dup, peer:
        fd = inp.fileno()
        inp.disregard()
        out.disregard()
        run_until(tr, lambda: inp.fileno() == -1 and out.fileno() == -1)
        assert not os.path.exists(f"/proc/self/fd/{fd}") or fd in (dup.fileno(), peer.fileno())
        # The connection lives on through the duplicate, both ways.
        dup.sendall(b"through the dup")
        assert recv_exactly(peer, 15) == b"through the dup"
        peer.sendall(b"back")
        assert recv_exactly(dup, 4) == b"back"


@pytest.mark.parametrize("order", ["output-first", "input-first"])
def test_terminate_shuts_down_even_with_duplicate(tr: Traffic, order: str) -> None:
    """Termination (unlike disregard) ends the connection for every holder."""
    inp, out, dup, peer = dup_pair(tr)
    with dup, peer:
        for t in (out, inp) if order == "output-first" else (inp, out):
            t.terminate()
        run_until(tr, lambda: inp.fileno() == -1)
        assert wait_readable(peer.fileno(), 10)
        assert recv_all(peer) == b""


def test_disregard_in_forked_child_keeps_parent_connection(tr: Traffic) -> None:
    """A subprocess holds the descriptor; our disregard leaves its copy working."""
    ours, peer = socket.socketpair()
    fd = ours.fileno()
    child = subprocess.Popen(
        [sys.executable, "-c", f"import os, sys; os.write({fd}, b'child'); sys.stdin.read()"],
        pass_fds=[fd],
        stdin=subprocess.PIPE,
    )
    try:
        inp, out = Octets.wrap(ours)
        tr.acquire(inp)
        tr.acquire(out)
        assert recv_exactly(peer, 5) == b"child"
        inp.disregard()
        out.disregard()
        run_until(tr, lambda: out.fileno() == -1)
        # The child still holds the connection: no EOF reaches the peer yet.
        peer.setblocking(False)
        with pytest.raises(BlockingIOError):
            peer.recv(10)
        assert child.stdin is not None
        child.stdin.close()
        assert child.wait(30) == 0
        peer.setblocking(True)
        assert recv_all(peer) == b""
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        peer.close()


# Cycles


def test_carry_over_after_body_raises(tr: Traffic) -> None:
    r1, w1 = Octets.pipe()
    r2, w2 = Octets.pipe()
    for t in (r1, r2):
        tr.acquire(t)
        t.acquire(bytearray(100))
    os.write(w1.fileno(), b"one")
    os.write(w2.fileno(), b"two")
    # Both have data; the first visit raises out of the cycle.
    with pytest.raises(ZeroDivisionError), tr.cycle(5):
        for _ in tr.transfers():
            1 / 0  # noqa: B018
    with tr.cycle(0):
        rest = [(t, t.events, bytes(t.transfer() or b"")) for t in tr.transfers()]
    assert len(rest) == 1
    transit, events, data = rest[0]
    assert events == lib.TR_EV_TRANSFER
    assert data == (b"two" if transit is r2 else b"one")
    # The visited one did not carry over; the unvisited one is gone now too.
    with tr.cycle(0):
        assert list(tr.transfers()) == []
    for t in (w1, w2):
        t.terminate()


def test_carry_over_keeps_growing_slice(tr: Traffic) -> None:
    """An unvisited transit that transfers again before its visit reports both parts."""
    r1, w1 = Octets.pipe()
    r2, w2 = Octets.pipe()
    for t in (r1, r2):
        tr.acquire(t)
        t.acquire(bytearray(100))
    os.write(w1.fileno(), b"one")
    os.write(w2.fileno(), b"two")
    visited = []
    with pytest.raises(KeyError), tr.cycle(5):
        for t in tr.transfers():
            visited.append(t)
            raise KeyError
    other = r2 if visited[0] is r1 else r1
    other_w = w2 if other is r2 else w1
    os.write(other_w.fileno(), b"+more")
    got = b""
    for _ in range(100):
        with tr.cycle(0.1):
            for t in tr.transfers():
                assert t is other
                got += bytes(t.transfer())  # type: ignore[arg-type]
        if got.endswith(b"+more"):
            break
    assert got == (b"two" if other is r2 else b"one") + b"+more"


def test_wake_from_another_thread_ends_wait(tr: Traffic) -> None:
    r, w = Octets.pipe()
    tr.acquire(r)
    returned = threading.Event()

    def cycle() -> None:
        with tr.cycle(None):
            assert list(tr.transfers()) == []
        returned.set()

    thread = threading.Thread(target=cycle)
    thread.start()
    try:
        for _ in range(300):
            tr.wake()
            if returned.wait(0.1):
                break
        assert returned.is_set()
    finally:
        thread.join(30)
    assert not thread.is_alive()
    del w


def test_wake_before_cycle_is_kept(tr: Traffic) -> None:
    tr.wake()
    done = []

    def cycle() -> None:
        with tr.cycle(None):
            done.append(list(tr.transfers()))

    thread = threading.Thread(target=cycle)
    thread.start()
    thread.join(30)
    if thread.is_alive():
        tr.wake()
        thread.join(30)
        pytest.fail("a wake before the cycle was lost")
    assert done == [[]]


def test_timeout_is_honoured(tr: Traffic) -> None:
    r, w = Octets.pipe()
    tr.acquire(r)
    r.acquire(bytearray(10))
    with tr.cycle(0):  # r tries, meets EAGAIN, registers
        assert list(tr.transfers()) == []
    start = time.monotonic()
    with tr.cycle(0.05):
        assert list(tr.transfers()) == []
    assert time.monotonic() - start >= 0.045
    tr.timeout = 0.05
    with tr:
        assert list(tr.transfers()) == []
    del w


def test_transfers_outside_cycle_is_an_error(tr: Traffic) -> None:
    with pytest.raises(RuntimeError):
        list(tr.transfers())


def test_start_after_synchronous_cycle_raises(tr: Traffic) -> None:
    with tr.cycle(0):
        pass
    with pytest.raises(RuntimeError):
        tr.start()


def test_cycle_on_threaded_traffic_raises(tr: Traffic) -> None:
    tr.start()
    with pytest.raises(RuntimeError), tr:
        pass
    with pytest.raises(RuntimeError), tr.cycle(0):
        pass


def test_second_thread_cannot_enter_open_cycle(tr: Traffic) -> None:
    entered, release = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def hold() -> None:
        try:
            with tr.cycle(0):
                entered.set()
                release.wait(30)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)
            entered.set()

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        assert entered.wait(30)
        with pytest.raises(RuntimeError), tr.cycle(0):
            pass
        with pytest.raises(RuntimeError), tr:
            pass
        # close() from another thread than the cycling one is refused too.
        with pytest.raises(RuntimeError):
            tr.close()
    finally:
        release.set()
        thread.join(30)
    assert not errors
    with tr.cycle(0):  # free again
        pass


# Dropping a transit, Ctrl-C


def test_dropped_transit_is_terminated(tr: Traffic) -> None:
    baseline = traffic.live_objects()
    inp, out, peer = stdlib_pair(tr)
    assert traffic.live_objects() == baseline + 2
    with peer:
        out.acquire(b"in flight")
        inp.acquire(bytearray(10))
        fd = out.fileno()
        target = os.readlink(f"/proc/self/fd/{fd}")
        del inp, out
        gc.collect()
        # Both dropped: terminated, descriptor closed, the peer sees the end.
        assert (
            not os.path.exists(f"/proc/self/fd/{fd}")
            or os.readlink(f"/proc/self/fd/{fd}") != target
        )
        peer.settimeout(30)
        received = recv_all(peer)
        assert received in (b"", b"in flight")
        run_until(tr, lambda: True)
        with tr.cycle(0):
            assert list(tr.transfers()) == []  # nobody is told: nobody is left
    tr.close()
    gc.collect()
    assert traffic.live_objects() == baseline - 1  # the Traffic too


def test_dropped_output_while_other_direction_lives(tr: Traffic) -> None:
    inp, out, peer = stdlib_pair(tr)
    with peer:
        del out
        gc.collect()
        assert recv_all(peer) == b""  # SHUT_WR: the peer sees EOF
        sink = Collector(inp)
        peer.sendall(b"input lives")
        run_until(tr, lambda: sink.data == b"input lives", sink)


def test_ctrl_c_interrupts_blocking_cycle(tmp_path: Any) -> None:
    ready = tmp_path / "ready"
    script = f"""
import os, sys
from traffic import Octets, Traffic
tr = Traffic()
r, w = Octets.pipe()
tr.acquire(r)
r.acquire(bytearray(10))
with tr.cycle(0):
    list(tr.transfers())
open({str(ready)!r}, "w").close()
try:
    while True:
        with tr:
            list(tr.transfers())
except KeyboardInterrupt:
    print("interrupted")
    tr.close()
    raise
"""
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=env,
    )
    try:
        for _ in range(600):
            if ready.exists() or proc.poll() is not None:
                break
            time.sleep(0.05)
        assert ready.exists(), proc.communicate(timeout=30)
        # The signal may land just before the wait begins: send until it ends.
        for _ in range(300):
            proc.send_signal(signal.SIGINT)
            try:
                out, err = proc.communicate(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                continue
        else:
            pytest.fail("SIGINT did not end the blocking cycle")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode != 0
    assert out.strip() == "interrupted"
    assert "KeyboardInterrupt" in err


# Fork


def test_fork_child_cannot_use_parent_traffic(tr: Traffic) -> None:
    inp, out, peer = stdlib_pair(tr)
    with peer:
        sink = Collector(inp)
        peer.sendall(b"before fork")
        run_until(tr, lambda: sink.data == b"before fork", sink)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            code = 0
            try:
                for op in (
                    lambda: tr.cycle(0).__enter__(),
                    lambda: tr.start(),
                    lambda: inp.terminate(),
                    lambda: out.acquire(b"x"),
                ):
                    try:
                        op()
                        code |= 1
                    except RuntimeError:
                        pass
                # A fresh Traffic works in the child.
                fresh = Traffic()
                r, w = Octets.pipe()
                fresh.acquire(r)
                fresh.acquire(w)
                r.acquire(bytearray(5))
                w.acquire(b"child")
                got = b""
                for _ in range(100):
                    with fresh.cycle(0.1):
                        for t in fresh.transfers():
                            if t is r:
                                got += bytes(t.transfer() or b"")
                    if got == b"child":
                        break
                if got != b"child":
                    code |= 2
                fresh.close()
            except BaseException:
                code |= 4
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        # The parent's connection is intact after the child exited.
        peer.sendall(b"after fork")
        run_until(tr, lambda: sink.data == b"before forkafter fork", sink)
        send_all_from(tr, out, b"parent alive")
        assert recv_exactly(peer, 12) == b"parent alive"


FORK_RECYCLED_NUMBERS = r"""
import os, sys

null = os.open(os.devnull, os.O_RDONLY)
numbers = []   # the Traffics' descriptors, found below
claimed = []


def claim_free_numbers():
    # In the child, before traffic's own at-fork handler (registered later,
    # so run later): a number the child did not inherit now belongs to
    # another descriptor, as it may in any program by the time a forked
    # child closes its Traffics.
    for fd in numbers:
        try:
            os.fstat(fd)
        except OSError:
            os.dup2(null, fd, inheritable=False)
            claimed.append(fd)


os.register_at_fork(after_in_child=claim_free_numbers)

import traffic
from traffic import Octets, Traffic


def listing():
    fds = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            os.fstat(int(name))
        except OSError:
            continue   # the listing's own descriptor, closed already
        fds.add(int(name))
    return fds


def pipe_transfer(tr):
    r, w = Octets.pipe()
    tr.acquire(r)
    tr.acquire(w)
    buffer = bytearray(4)
    r.acquire(buffer)
    w.acquire(b"ping")
    for _ in range(100):
        with tr.cycle(0.1):
            list(tr.transfers())
        if r.exhausted:
            break
    r.terminate()
    w.terminate()
    return bytes(buffer)


before = listing()
synchronous = Traffic()
threaded = Traffic()
threaded.start()
numbers.extend(sorted(listing() - before - {null}))
pid = os.fork()
if pid == 0:
    code = 0
    for fd in claimed:
        try:
            os.fstat(fd)
        except OSError:
            code |= 1   # closed by traffic: not its descriptor in this process
    fresh = Traffic()
    if pipe_transfer(fresh) != b"ping":
        code |= 2
    fresh.close()
    os._exit(code | (len(claimed) << 4))
_, status = os.waitpid(pid, 0)
code = os.waitstatus_to_exitcode(status)
assert code & 15 == 0, f"child failed: {code & 15}"
assert pipe_transfer(synchronous) == b"ping"
threaded.close()
synchronous.close()
print(traffic.backend, code >> 4)
"""


def test_fork_child_never_closes_a_number_it_did_not_inherit() -> None:
    """A forked child lets go of its parent's Traffics by closing only what
    it inherited: a kqueue is not inherited (kqueue(2)), and its number may
    be another descriptor's in the child. Both processes' Traffics work."""
    result = run_python(FORK_RECYCLED_NUMBERS)
    assert result.returncode == 0, result.stderr
    backend, claimed = result.stdout.split()
    assert backend == traffic.backend
    if backend == "kqueue":
        # Each Traffic's kqueue: absent in the child, so its number was taken.
        assert int(claimed) >= 2
    else:
        assert int(claimed) == 0


def test_closed_traffic_rejects_operations() -> None:
    tr = Traffic()
    r, w = Octets.pipe()
    tr.acquire(r)
    tr.close()
    tr.close()  # idempotent
    assert tr.closed
    assert r.terminated and r.fileno() == -1
    for op in (
        lambda: tr.cycle(0).__enter__(),
        lambda: tr.acquire(w),
        lambda: r.acquire(bytearray(1)),
        lambda: tr.start(),
        lambda: tr.completion_fileno(),
    ):
        with pytest.raises(TransitClosedError) as info:
            op()
        assert info.value.errno == errno.EBADF
    tr.wake()  # harmless
    assert tr.collect() == []
