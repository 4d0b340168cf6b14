"""The bad-input catalogue: what a caller can get wrong, at every layer of
traffic, and what happens then.

Bad input raises a clear Python exception: a specific, documented one, with a
message, never an ``AttributeError``, ``SystemError`` or ``IndexError`` from a
missing check.  It never crashes the process or the cycle thread, never hangs,
and leaves the state unchanged: what was there before (a resource, a transit
and its Traffic, a descriptor, socket or stream the caller still owns)
survives the refusal, and the tests check it is intact and still works.

Sections:

- the core (:mod:`traffic.libkqueue`), a test per case: resources of the
  wrong kind, busy resources, terminated transits and closed Traffics,
  descriptors that are not what is needed, transits in the wrong Traffic,
  and zero-length resources (accepted: exhausted at once, no EOF);
- the synchronous API, a table with one row per call (the
  ``pytest.mark.parametrize`` ids name them): Traffic, Octets, Sockets,
  Descriptors and :class:`traffic.libloop.Loop`;
- the trio layer (``recv_into``, ``send_all``, ``accept``, ``send_fds``,
  ``receive_fds``, ``TrafficStream``, ``TrafficListener``, the openers and
  servers), open and after ``aclose()``, and objects made in one
  ``trio.run`` used in another;
- the anyio layer (the backend's functions and stream/listener methods), on
  asyncio and on trio, open, closed and from another ``anyio.run``.

Wrong types, wrong and negative sizes, huge values (``2**63``), closed
objects, read-only buffers for input, descriptors that are not sockets (a
pipe, a regular file) where a socket is needed, closed descriptors.  Where
the caller keeps something (a descriptor, a socket, a stream), the test also
checks it is intact afterwards.  Nothing here may hang: every async row runs
under ``trio.fail_after`` / ``anyio.fail_after``, which would fail it.

Covered elsewhere, not repeated: ``send_fds``/``receive_fds`` argument
checks (``tests/test_descriptors.py::test_bad_input``); a non-stream socket
for TrafficStream (``tests/test_trio_streams.py``).
"""

from __future__ import annotations

import errno
import os
import select
import socket
import tempfile
import threading
from array import array
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import anyio
import pytest
import trio

import traffic
import traffic.anyio_backend as ab
from conftest import Collector, run_until
from traffic import (
    Descriptors,
    Octets,
    Polarity,
    Sockets,
    Traffic,
    TrafficListener,
    TrafficStream,
    TransitClosedError,
    TransitError,
)
from traffic._traffic import lib
from traffic.libloop import Loop

#: Bounds a hang, never decides a pass.
LIMIT = 20

HUGE = 2**63


# The core: resources of the wrong kind, busy resources


def pipe(tr: Traffic) -> tuple[Octets, Octets]:
    # Not a fixture: pytest would hold the transits past the leak check.
    r, w = Octets.pipe()
    tr.acquire(r)
    tr.acquire(w)
    return r, w


@pytest.mark.parametrize(
    "resource, exception",
    [
        (b"read-only", TypeError),
        (memoryview(b"read-only"), TypeError),
        (42, TypeError),
        ("text", TypeError),
        (None, TypeError),
        (memoryview(bytearray(10))[::2], BufferError),
    ],
    ids=["bytes", "readonly-view", "int", "str", "none", "strided"],
)
def test_bad_input_resource(tr: Traffic, resource: Any, exception: type) -> None:
    r, w = pipe(tr)
    with pytest.raises(exception):
        r.acquire(resource)
    assert r.resource is None
    assert not r._status()[0] & lib.TR_ST_RESOURCE
    # Still usable.
    sink = Collector(r, 16)
    os.write(w.fileno(), b"fine")
    run_until(tr, lambda: sink.data == b"fine", sink)


@pytest.mark.parametrize(
    "resource", [42, "text", memoryview(bytearray(10))[::2]], ids=["int", "str", "strided"]
)
def test_bad_output_resource(tr: Traffic, resource: Any) -> None:
    _r, w = pipe(tr)
    with pytest.raises((TypeError, BufferError)):
        w.acquire(resource)
    assert w.resource is None


def test_output_accepts_read_only_buffers(tr: Traffic) -> None:
    r, w = pipe(tr)
    sink = Collector(r, 64)
    w.acquire(memoryview(b"read-only is fine for output"))
    run_until(tr, lambda: sink.data == b"read-only is fine for output", sink)


def test_second_resource_before_exhaustion(tr: Traffic) -> None:
    r, w = Octets.pipe()
    tr.acquire(r)
    tr.acquire(w)
    first = bytearray(10)
    r.acquire(first)
    with pytest.raises(BufferError):
        r.acquire(bytearray(10))
    assert r.resource is first
    os.write(w.fileno(), b"0123456789abc")
    seen: list[bytes] = []

    def visit(t: traffic.Transit) -> None:
        if t is r:
            seen.append(bytes(t.transfer() or b""))
            if not t.exhausted:
                # Still busy while not exhausted, even mid-cycle.
                with pytest.raises(BufferError):
                    r.acquire(bytearray(10))

    run_until(tr, lambda: r.exhausted, visit)
    assert b"".join(seen) == b"0123456789"
    assert bytes(first) == b"0123456789"
    # After exhaustion the next resource is accepted and gets the rest.
    r.acquire(bytearray(10))
    run_until(tr, lambda: b"".join(seen) == b"0123456789abc", visit)


def test_output_second_resource_refused_until_exhausted(tr: Traffic) -> None:
    (ain, aout), (bin_, bout) = Octets.socketpair()
    for t in (ain, aout, bin_, bout):
        tr.acquire(t)
    data = os.urandom(2 << 20)
    aout.acquire(data)
    with pytest.raises(BufferError):
        aout.acquire(b"cut in line")
    sink = Collector(bin_, 65536)
    run_until(tr, lambda: len(sink.data) == len(data), sink, cycles=3000)
    assert bytes(sink.data) == data


# The core: terminated transits and closed Traffics


def test_use_after_termination(tr: Traffic) -> None:
    r, w = Octets.pipe()
    tr.acquire(r)
    tr.acquire(w)
    r.terminate()
    r.terminate()  # twice does nothing
    with pytest.raises(TransitClosedError) as info:
        r.acquire(bytearray(1))
    assert info.value.errno == errno.EBADF
    assert isinstance(info.value, OSError)
    # After EOF too.
    w.terminate()
    r2, w2 = Octets.pipe()
    tr.acquire(r2)
    sink = Collector(r2, 8)
    w2.terminate()
    run_until(tr, lambda: sink.terminated, sink)
    with pytest.raises(TransitClosedError):
        r2.acquire(bytearray(1))
    # A terminated transit cannot be acquired into a Traffic again.
    other = Traffic()
    try:
        with pytest.raises(TransitClosedError):
            other.acquire(r2)
    finally:
        other.close()


def test_terminated_before_acquire_into_traffic(tr: Traffic) -> None:
    r, w = Octets.pipe()
    r.terminate()
    with pytest.raises(TransitClosedError):
        tr.acquire(r)
    with pytest.raises(TransitClosedError):
        r.acquire(bytearray(1))
    del w


def test_closed_traffic_operations() -> None:
    tr = Traffic()
    tr.start()
    r, w = Octets.pipe()
    tr.acquire(r)
    tr.close()
    ops: list[Callable[[], object]] = [
        lambda: tr.acquire(w),
        lambda: tr.request(r, bytearray(1)),
        lambda: tr.withdraw(r),
        lambda: tr.start(),
        lambda: tr.completion_fileno(),
        lambda: r.acquire(bytearray(1)),
        lambda: tr.cycle(0).__enter__(),
    ]
    for op in ops:
        with pytest.raises(TransitClosedError):
            op()
    assert tr.collect() == []
    r.terminate()  # harmless
    r.disregard()


# The core: descriptors that are not what is needed


def opened_closed_fd() -> int:
    fd = os.open(os.devnull, os.O_RDONLY)
    os.close(fd)
    return fd


def regular_file(tmp_path: Any) -> int:
    return os.open(tmp_path / "regular", os.O_RDWR | os.O_CREAT)


def pipe_read_end(_: Any) -> int:
    r, w = os.pipe()
    os.close(w)
    return r


def unconnected_socket(_: Any) -> int:
    return socket.socket().detach()


def connected_socket(_: Any) -> int:
    a, b = socket.socketpair()
    b.close()
    return a.detach()


def udp_socket(_: Any) -> int:
    return socket.socket(socket.AF_INET, socket.SOCK_DGRAM).detach()


@pytest.mark.parametrize(
    "make, code",
    [
        (regular_file, errno.ENOTSOCK),
        (pipe_read_end, errno.ENOTSOCK),
        (unconnected_socket, errno.EINVAL),
        (connected_socket, errno.EINVAL),
        (udp_socket, errno.EINVAL),
    ],
    ids=["regular-file", "pipe", "unconnected", "connected", "udp"],
)
def test_sockets_from_unsuitable_fd(tmp_path: Any, make: Callable[[Any], int], code: int) -> None:
    fd = make(tmp_path)
    try:
        with pytest.raises(OSError) as info:
            Sockets.from_fd(fd)
        assert info.value.errno == code
        os.fstat(fd)  # the caller still owns it
    finally:
        os.close(fd)


def test_sockets_from_closed_fd() -> None:
    with pytest.raises(OSError) as info:
        Sockets.from_fd(opened_closed_fd())
    assert info.value.errno == errno.EBADF


@pytest.mark.parametrize("fd", [-1, -1000])
def test_octets_from_negative_fd(fd: int) -> None:
    with pytest.raises(OSError) as info:
        Octets.from_fd(fd, Polarity.INPUT)
    assert info.value.errno == errno.EBADF


def test_octets_from_closed_fd() -> None:
    with pytest.raises(OSError) as info:
        Octets.from_fd(opened_closed_fd(), Polarity.OUTPUT)
    assert info.value.errno == errno.EBADF


@pytest.mark.parametrize("polarity", [2, -1, 99])
def test_octets_bad_polarity(polarity: int) -> None:
    r, w = os.pipe()
    try:
        with pytest.raises((OSError, ValueError)):
            Octets.from_fd(r, polarity)
        os.fstat(r)  # still the caller's
    finally:
        os.close(r)
        os.close(w)


def test_wrap_rejects_non_sockets_and_closed_sockets() -> None:
    with pytest.raises(TypeError):
        Octets.wrap(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Sockets.wrap("listener")  # type: ignore[arg-type]
    s = socket.socket()
    s.close()
    with pytest.raises(TransitClosedError):
        Octets.wrap(s)
    with pytest.raises(TransitClosedError):
        Sockets.wrap(s)


# The core: transits and Traffics of the wrong kind


@pytest.mark.parametrize(
    "resource",
    [bytearray(16), array("b", [0] * 16), array("l", [0] * 4), array("I", [0] * 4), b"\0" * 16],
    ids=["bytearray", "array-b", "array-l", "array-I", "bytes"],
)
def test_sockets_resource_must_be_int_array(tr: Traffic, resource: Any) -> None:
    listener, _ = Sockets.listen(("127.0.0.1", 0))
    tr.acquire(listener)
    with pytest.raises(TypeError):
        listener.acquire(resource)
    assert listener.resource is None
    listener.acquire(array("i", [0] * 2))  # the right kind is accepted


def test_acquire_resource_on_transit_not_in_traffic(tr: Traffic) -> None:
    """Before it is in traffic, a transit records its resource (validated at
    once); the Traffic that acquires it then transfers with it."""
    r, w = Octets.pipe()
    with pytest.raises(TypeError):
        r.acquire(b"read-only")
    buffer = bytearray(2)
    r.acquire(buffer)
    w.acquire(b"xy")
    tr.acquire(r)
    tr.acquire(w)
    run_until(tr, lambda: r.exhausted and w.exhausted)
    assert buffer == b"xy"
    r.terminate()
    with pytest.raises(TransitClosedError):
        r.acquire(bytearray(1))  # terminated: not recorded either


def test_transit_in_two_traffics(tr: Traffic) -> None:
    other = Traffic()
    try:
        r, w = Octets.pipe()
        tr.acquire(r)
        tr.acquire(r)  # again into the same one: nothing happens
        with pytest.raises(RuntimeError):
            other.acquire(r)
        assert r.traffic is tr
        # A socket's two transits share one Traffic.
        a, b = socket.socketpair()
        inp, out = Octets.wrap(a)
        tr.acquire(inp)
        with pytest.raises(RuntimeError):
            other.acquire(out)
        other.acquire(w)
        b.close()
    finally:
        other.close()


def test_traffic_acquire_rejects_non_transits(tr: Traffic) -> None:
    with socket.socket() as s, pytest.raises(TypeError):
        tr.acquire(s)  # type: ignore[arg-type]


def test_transits_are_not_constructed_directly() -> None:
    with pytest.raises(TypeError):
        Octets()
    with pytest.raises(TypeError):
        Sockets()


# The core: zero-length resources (exhausted at once, nothing transferred, no EOF)


def events_of(
    transit: traffic.Transit, into: list[tuple[int, Any]]
) -> Callable[[traffic.Transit], None]:
    def visit(t: traffic.Transit) -> None:
        if t is transit:
            view = t.transfer()
            into.append((t.events, None if view is None else bytes(view)))

    return visit


@pytest.mark.parametrize("state", ["fresh-idle", "data-waiting", "eof-waiting"])
def test_zero_length_input_resource(tr: Traffic, state: str) -> None:
    """Exhausted in the next cycle with nothing transferred; never an EOF."""
    r, w = Octets.pipe()
    tr.acquire(r)
    events: list[tuple[int, Any]] = []
    visit = events_of(r, events)
    if state != "fresh-idle":
        # A first resource fills exactly: exhausted, the kernel still ready.
        os.write(w.fileno(), b"fill" + b"more")
        r.acquire(bytearray(4))
        run_until(tr, lambda: r.exhausted, visit)
        assert events == [(lib.TR_EV_TRANSFER | lib.TR_EV_EXHAUST, b"fill")]
        events.clear()
    if state == "eof-waiting":
        w.terminate()
    r.acquire(bytearray(0))
    run_until(tr, lambda: bool(events), visit)
    assert events == [(lib.TR_EV_EXHAUST, None)]
    assert r.exhausted and not r.terminated
    # No spin: starved, the cycles are quiet.
    for _ in range(3):
        with tr.cycle(0.02):
            assert list(tr.transfers()) == []
    if state != "fresh-idle":
        # What waited is still there for the next real resource, then the end.
        sink = Collector(r, 16)
        if state == "data-waiting":
            run_until(tr, lambda: sink.data == b"more", sink)
            w.terminate()
        run_until(tr, lambda: sink.terminated, sink)
        assert sink.data == b"more" and sink.error is None
    del w


def test_zero_length_output_resource(tr: Traffic) -> None:
    r, w = Octets.pipe()
    tr.acquire(w)
    seen: list[int] = []
    w.acquire(b"")
    run_until(tr, lambda: bool(seen), lambda t: seen.append(t.events) if t is w else None)
    assert seen == [lib.TR_EV_EXHAUST]
    assert not w.terminated
    del r


def test_zero_length_sockets_resource(tr: Traffic) -> None:
    listener, bound = Sockets.listen(("127.0.0.1", 0))
    tr.acquire(listener)
    seen: list[int] = []
    with socket.create_connection(bound):
        listener.acquire(array("i"))
        run_until(
            tr, lambda: bool(seen), lambda t: seen.append(t.events) if t is listener else None
        )
        assert seen == [lib.TR_EV_EXHAUST]
        # The connection was not accepted (and so not leaked): it is still queued.
        slots = array("i", [-1])
        listener.acquire(slots)
        run_until(tr, lambda: slots[0] >= 0)
        os.close(slots[0])


# The synchronous API: one row per call


class Env:
    """What the synchronous rows work on; everything is closed by ``close()``."""

    def __init__(self) -> None:
        self.tr = Traffic()
        self.threaded = Traffic()
        self.threaded.start()
        self.r, self.w = Octets.pipe()
        self.tr.acquire(self.r)
        self.tr.acquire(self.w)
        self.tin, self.tout = Octets.pipe()
        self.threaded.acquire(self.tin)
        self.threaded.acquire(self.tout)
        self.listener, _ = Sockets.listen(("127.0.0.1", 0))
        self.tr.acquire(self.listener)
        (self.din, self.dout), (self.pin, self.pout) = Descriptors.socketpair()
        for transit in (self.din, self.dout, self.pin, self.pout):
            self.threaded.acquire(transit)
        self.loop = Loop()
        self.owned: list[int] = []

    def fd(self, kind: str) -> int:
        """A descriptor the test owns (closed by ``close()``): a pipe end,
        a regular file, or the number of a closed descriptor."""
        if kind == "pipe":
            r, w = os.pipe()
            os.close(w)
            fd = r
        elif kind == "file":
            fd, path = tempfile.mkstemp()
            os.unlink(path)
        else:
            fd = os.open(os.devnull, os.O_RDONLY)
            os.close(fd)
            return fd
        self.owned.append(fd)
        return fd

    def close(self) -> None:
        for fd in self.owned:
            os.fstat(fd)  # still open: the refusal left the caller's descriptor alone
            os.close(fd)
        self.loop.close()
        self.tr.close()
        self.threaded.close()
        # pytest holds the fixture value past the leak check: drop the transits.
        self.__dict__.clear()


@pytest.fixture
def env() -> Iterator[Env]:
    e = Env()
    try:
        yield e
    finally:
        e.close()


SyncCase = Callable[[Env], object]


def closed_traffic_cycle(e: Env) -> object:
    t = Traffic()
    t.close()
    return t.cycle(0).__enter__()


SYNC: list[Any] = [
    # Traffic
    pytest.param(lambda e: Traffic(timeout="1"), TypeError, id="Traffic(timeout=str)"),
    pytest.param(lambda e: Traffic(timeout=float("nan")), ValueError, id="Traffic(timeout=nan)"),
    pytest.param(lambda e: e.tr.cycle("x").__enter__(), TypeError, id="cycle(str)"),
    pytest.param(lambda e: e.tr.cycle(float("nan")).__enter__(), ValueError, id="cycle(nan)"),
    pytest.param(lambda e: e.tr.acquire(42), TypeError, id="Traffic.acquire(int)"),
    pytest.param(lambda e: e.tr.acquire(e.tin), RuntimeError, id="Traffic.acquire(other's)"),
    pytest.param(lambda e: e.tr.start("fast"), ValueError, id="start(bad-policy)"),
    pytest.param(lambda e: e.threaded.cycle(0).__enter__(), RuntimeError, id="threaded.cycle"),
    pytest.param(lambda e: next(e.tr.transfers()), RuntimeError, id="transfers()-outside"),
    pytest.param(lambda e: e.tr.request(e.r, bytearray(1)), RuntimeError, id="sync.request"),
    pytest.param(lambda e: e.tr.receive(e.r, 1), RuntimeError, id="sync.receive"),
    pytest.param(lambda e: e.tr.withdraw(e.r), RuntimeError, id="sync.withdraw"),
    pytest.param(lambda e: e.threaded.withdraw(42), TypeError, id="withdraw(int)"),
    pytest.param(lambda e: e.threaded.withdraw(e.tin), TransitError, id="withdraw(idle)"),
    pytest.param(lambda e: e.threaded.pin(42, None), TypeError, id="pin(int)"),
    pytest.param(lambda e: e.threaded.unpin("x"), TypeError, id="unpin(str)"),
    pytest.param(lambda e: e.threaded.request(42, b"x"), TypeError, id="request(int)"),
    pytest.param(lambda e: e.threaded.request(e.r, b"x"), RuntimeError, id="request(other's)"),
    pytest.param(lambda e: e.threaded.request(e.tin, b"ro"), TypeError, id="request(read-only)"),
    pytest.param(lambda e: e.threaded.request(e.tout, "s"), TypeError, id="request(str)"),
    pytest.param(lambda e: e.threaded.receive(e.tin, 0), ValueError, id="receive(0)"),
    pytest.param(lambda e: e.threaded.receive(e.tin, -1), ValueError, id="receive(-1)"),
    pytest.param(lambda e: e.threaded.receive(e.tin, "9"), TypeError, id="receive(str)"),
    pytest.param(lambda e: e.threaded.receive(e.tin, 1.5), TypeError, id="receive(float)"),
    pytest.param(lambda e: e.threaded.receive(e.tout, 1), ValueError, id="receive(output)"),
    pytest.param(
        lambda e: e.threaded.request_fds(e.tin, bytearray(1), array("i")),
        TypeError,
        id="request_fds(Octets)",
    ),
    pytest.param(
        lambda e: e.threaded.request_fds(e.dout, b"x", [HUGE]),
        TransitError,
        id="request_fds(2**63)",
    ),
    pytest.param(
        lambda e: e.threaded.request_fds(e.din, bytearray(1), [0]),
        TypeError,
        id="request_fds(input-list)",
    ),
    pytest.param(closed_traffic_cycle, TransitClosedError, id="closed-Traffic.cycle"),
    # Transit constructors
    pytest.param(lambda e: Octets.from_fd("3", Polarity.INPUT), TypeError, id="from_fd(str)"),
    pytest.param(lambda e: Octets.from_fd(None, Polarity.INPUT), TypeError, id="from_fd(None)"),
    pytest.param(lambda e: Octets.from_fd(HUGE, Polarity.INPUT), TransitError, id="from_fd(2**63)"),
    pytest.param(lambda e: Octets.from_fd(e.fd("pipe"), 2**63), ValueError, id="polarity(2**63)"),
    pytest.param(lambda e: Octets.from_fd(e.fd("pipe"), "in"), ValueError, id="polarity(str)"),
    pytest.param(lambda e: Sockets.from_fd(HUGE), TransitError, id="Sockets.from_fd(2**63)"),
    pytest.param(lambda e: Sockets.from_fd(e.fd("file")), TransitError, id="Sockets.from_fd(file)"),
    pytest.param(
        lambda e: Descriptors.from_fd(e.fd("file"), Polarity.INPUT),
        TransitError,
        id="Descriptors.from_fd(file)",
    ),
    pytest.param(
        lambda e: Descriptors.from_fd(e.fd("closed"), Polarity.INPUT),
        TransitError,
        id="Descriptors.from_fd(closed)",
    ),
    pytest.param(lambda e: Octets.connect(42), TypeError, id="connect(int)"),
    pytest.param(lambda e: Octets.connect(()), TypeError, id="connect(())"),
    pytest.param(lambda e: Octets.connect(("127.0.0.1", 2**20)), ValueError, id="connect(port)"),
    pytest.param(lambda e: Octets.connect(("127.0.0.1", -1)), ValueError, id="connect(port-1)"),
    pytest.param(lambda e: Octets.connect(("127.0.0.1", "80")), TypeError, id="connect(port-str)"),
    pytest.param(lambda e: Sockets.listen(42), TypeError, id="listen(int)"),
    pytest.param(lambda e: Sockets.listen(("127.0.0.1", 70000)), ValueError, id="listen(port)"),
    pytest.param(lambda e: Octets.socketpair(socket.AF_INET), OSError, id="socketpair(AF_INET)"),
    pytest.param(lambda e: Descriptors.pipe(), TypeError, id="Descriptors.pipe"),
    # Transit methods
    pytest.param(lambda e: e.r.acquire(memoryview(b"ro")), TypeError, id="input.acquire(ro)"),
    pytest.param(
        lambda e: e.listener.acquire(array("i", [0, 0])[::1].tobytes()),
        TypeError,
        id="Sockets.acquire(bytes)",
    ),
    pytest.param(lambda e: e.dout.acquire((b"x", [-1])), TransitError, id="Descriptors(-1)"),
    pytest.param(lambda e: e.dout.acquire((b"x", [HUGE])), TransitError, id="Descriptors(2**63)"),
    pytest.param(lambda e: e.dout.acquire((b"x", 42)), TypeError, id="Descriptors(fds=int)"),
    pytest.param(lambda e: e.dout.acquire((b"", [0])), ValueError, id="Descriptors(no-byte)"),
    # Loop
    pytest.param(lambda e: e.loop.attach(42), TypeError, id="Loop.attach(int)"),
    pytest.param(lambda e: e.loop.attach(e.r), RuntimeError, id="Loop.attach(other's)"),
    pytest.param(lambda e: e.loop.call_later(1, 42), TypeError, id="call_later(non-callable)"),
    pytest.param(lambda e: e.loop.call_later("1", print), TypeError, id="call_later(str)"),
    pytest.param(
        lambda e: e.loop.call_later(float("nan"), print), ValueError, id="call_later(nan)"
    ),
    pytest.param(lambda e: e.loop.call_soon(None), TypeError, id="call_soon(None)"),
]


@pytest.mark.parametrize("call, exception", SYNC)
def test_sync_bad_input(env: Env, call: SyncCase, exception: type[BaseException]) -> None:
    with pytest.raises(exception) as info:
        call(env)
    # A clear exception, never the symptoms of a missing check.
    assert not isinstance(info.value, (AttributeError, SystemError, IndexError))
    assert str(info.value), "an exception without a message"
    # The objects the calls were refused on still work.
    sink = bytearray(2)
    env.r.acquire(sink)
    os.write(env.w.fileno(), b"ok")
    run_until(env.tr, lambda: env.r.exhausted)
    assert sink == b"ok"


def test_sync_huge_receive_is_clamped(env: Env) -> None:
    """``receive(2**63)``: clamped (was: ENOMEM from the core's allocation)."""
    outcome, _, _ = env.threaded.receive(env.tin, HUGE)
    assert outcome == traffic.libkqueue.lib.TR_PENDING
    os.write(env.tout.fileno(), b"x")
    for _ in range(1000):
        select.select([env.threaded.completion_fileno()], [], [], 0.1)
        done = env.threaded.collect()
        if done:
            assert [c.data for c in done] == [b"x"]
            break
    else:
        pytest.fail("the clamped receive never completed")


def test_sync_closed_loop(env: Env) -> None:
    loop = Loop()
    loop.close()
    for call in (lambda: loop.call_soon(print), loop.run, lambda: loop.attach(env.r)):
        with pytest.raises(RuntimeError, match="closed"):
            call()
    loop.close()  # idempotent


def test_regular_file_in_traffic_terminates_with_eperm(env: Env) -> None:
    """epoll refuses regular files: the transit terminates with ``EPERM``
    (after whatever an inline read delivered), it does not spin or crash."""
    fd = env.fd("file")
    os.write(fd, b"data")
    os.lseek(fd, 0, os.SEEK_SET)
    transit = Octets.from_fd(os.dup(fd), Polarity.INPUT)
    env.tr.acquire(transit)
    transit.acquire(bytearray(16))
    run_until(env.tr, lambda: transit.terminated)
    assert transit.error == errno.EPERM


# The trio layer


def trio_run(body: Callable[[], Awaitable[object]]) -> None:
    async def main() -> None:
        with trio.fail_after(LIMIT):
            await body()

    trio.run(main)


class TrioEnv:
    """Objects of the trio layer, made inside the run; ``aclose()`` ends them."""

    async def open(self) -> TrioEnv:
        a, self.peer = socket.socketpair()
        self.stream = TrafficStream(a)
        self.tcp_listener = (await traffic.open_tcp_listeners(0, host="127.0.0.1"))[0]
        self.tcp = await traffic.open_tcp_stream(*self.tcp_listener.socket.getsockname())
        self.r, self.w = Octets.pipe()
        self.sockets, _ = Sockets.listen(("127.0.0.1", 0))
        (self.din, self.dout), (self.pin, self.pout) = Descriptors.socketpair()
        self.owned: list[Any] = []
        return self

    async def aclose(self) -> None:
        for thing in self.owned:
            assert thing.fileno() >= 0  # refused: still the caller's, open
            thing.close()
        await self.stream.aclose()
        await self.tcp.aclose()
        await self.tcp_listener.aclose()
        self.peer.close()
        for transit in (self.r, self.w, self.sockets, self.din, self.dout, self.pin, self.pout):
            transit.terminate()

    def keep(self, thing: Any) -> Any:
        self.owned.append(thing)
        return thing


AsyncCase = Callable[[Any], Awaitable[object]]


def _closed_socket() -> socket.socket:
    s = socket.socket()
    s.close()
    return s


TRIO: list[Any] = [
    # Primitives
    pytest.param(lambda e: traffic.recv_into(42, bytearray(1)), TypeError, id="recv_into(int)"),
    pytest.param(
        lambda e: traffic.recv_into(e.sockets, bytearray(8)), TypeError, id="recv_into(Sockets)"
    ),
    pytest.param(lambda e: traffic.recv_into(e.w, bytearray(1)), ValueError, id="recv_into(out)"),
    pytest.param(lambda e: traffic.recv_into(e.r, b"ro"), TypeError, id="recv_into(read-only)"),
    pytest.param(lambda e: traffic.recv_into(e.r, "str"), TypeError, id="recv_into(str)"),
    pytest.param(
        lambda e: traffic.recv_into(e.r, memoryview(bytearray(8))[::2]),
        BufferError,
        id="recv_into(strided)",
    ),
    pytest.param(lambda e: traffic.recv_into(e.r), ValueError, id="recv_into(no-buffer)"),
    pytest.param(lambda e: traffic.send_all(42, b"x"), TypeError, id="send_all(int)"),
    pytest.param(lambda e: traffic.send_all(e.r, b"x"), ValueError, id="send_all(input)"),
    pytest.param(lambda e: traffic.send_all(e.w, "str"), TypeError, id="send_all(str)"),
    pytest.param(lambda e: traffic.send_all(e.w, None), TypeError, id="send_all(None)"),
    pytest.param(lambda e: traffic.accept(42), TypeError, id="accept(int)"),
    pytest.param(lambda e: traffic.accept(e.r), TypeError, id="accept(Octets)"),
    pytest.param(lambda e: traffic.send_fds(42, b"x", [0]), TypeError, id="send_fds(int)"),
    pytest.param(lambda e: traffic.send_fds(e.tcp, b"x", [0]), TypeError, id="send_fds(tcp)"),
    pytest.param(lambda e: traffic.send_fds(e.din, b"x", [0]), ValueError, id="send_fds(input)"),
    pytest.param(lambda e: traffic.send_fds(e.stream, b"x", 42), TypeError, id="send_fds(fds=int)"),
    pytest.param(
        lambda e: traffic.send_fds(e.stream, b"x", [HUGE]), TransitError, id="send_fds(2**63)"
    ),
    pytest.param(lambda e: traffic.receive_fds(42, 1, 1), TypeError, id="receive_fds(int)"),
    pytest.param(lambda e: traffic.receive_fds(e.dout, 1, 1), ValueError, id="receive_fds(out)"),
    pytest.param(lambda e: traffic.receive_fds(e.stream, -1, 1), ValueError, id="receive_fds(-1)"),
    pytest.param(
        lambda e: traffic.receive_fds(e.stream, "1", 1), ValueError, id="receive_fds(str)"
    ),
    pytest.param(lambda e: traffic.receive_fds(e.tcp, 1, 1), TypeError, id="receive_fds(tcp)"),
    # Streams
    pytest.param(lambda e: e.stream.receive_some(0), ValueError, id="receive_some(0)"),
    pytest.param(lambda e: e.stream.receive_some(-1), ValueError, id="receive_some(-1)"),
    pytest.param(lambda e: e.stream.receive_some("8"), TypeError, id="receive_some(str)"),
    pytest.param(lambda e: e.stream.send_all("str"), TypeError, id="stream.send_all(str)"),
    pytest.param(lambda e: e.stream.send_all(42), TypeError, id="stream.send_all(int)"),
    pytest.param(
        lambda e: e.stream.send_all(memoryview(bytearray(8))[::2]),
        BufferError,
        id="stream.send_all(strided)",
    ),
    pytest.param(
        lambda e: e.stream.setsockopt(socket.SOL_SOCKET, 12345, 1),
        OSError,
        id="setsockopt(bad-option)",
    ),
    # Constructors: refused sockets stay the caller's, open (TrioEnv.aclose checks)
    pytest.param(lambda e: _sync(TrafficStream, 42), TypeError, id="TrafficStream(int)"),
    pytest.param(
        lambda e: _sync(TrafficStream, e.keep(open(os.devnull, "rb"))),  # noqa: SIM115
        TypeError,
        id="TrafficStream(file)",
    ),
    pytest.param(
        lambda e: _sync(TrafficStream, e.keep(socket.socket(type=socket.SOCK_DGRAM))),
        TypeError,
        id="TrafficStream(udp)",
    ),
    pytest.param(
        lambda e: _sync(TrafficStream, _closed_socket()),
        trio.ClosedResourceError,
        id="TrafficStream(closed)",
    ),
    pytest.param(
        lambda e: _sync(TrafficListener, e.keep(socket.socket())),
        ValueError,
        id="TrafficListener(not-listening)",
    ),
    pytest.param(
        lambda e: _sync(TrafficListener, e.keep(socket.socket(type=socket.SOCK_DGRAM))),
        TypeError,
        id="TrafficListener(udp)",
    ),
    pytest.param(
        lambda e: _sync(TrafficListener, _closed_socket()),
        trio.ClosedResourceError,
        id="TrafficListener(closed)",
    ),
    # Openers and servers
    pytest.param(
        lambda e: traffic.open_tcp_stream("127.0.0.1", 2**20),
        ValueError,
        id="open_tcp_stream(port)",
    ),
    pytest.param(
        lambda e: traffic.open_tcp_stream("127.0.0.1", -1), ValueError, id="open_tcp_stream(port-1)"
    ),
    pytest.param(lambda e: traffic.open_tcp_stream(42, 80), ValueError, id="open_tcp_stream(host)"),
    pytest.param(
        lambda e: traffic.open_tcp_listeners(HUGE), ValueError, id="open_tcp_listeners(2**63)"
    ),
    pytest.param(
        lambda e: traffic.open_tcp_listeners("80"), TypeError, id="open_tcp_listeners(str)"
    ),
    pytest.param(
        lambda e: traffic.open_unix_stream("/nonexistent/traffic.sock"),
        FileNotFoundError,
        id="open_unix_stream(missing)",
    ),
    pytest.param(lambda e: traffic.open_unix_stream(42), TypeError, id="open_unix_stream(int)"),
    pytest.param(
        lambda e: traffic.open_unix_listener(tempfile.gettempdir()),
        OSError,
        id="open_unix_listener(exists)",
    ),
    pytest.param(lambda e: traffic.open_unix_listener(42), TypeError, id="open_unix_listener(int)"),
    pytest.param(lambda e: traffic.serve_tcp(print, 2**20), ValueError, id="serve_tcp(port)"),
    pytest.param(
        lambda e: traffic.serve_unix(print, tempfile.gettempdir()), OSError, id="serve_unix(exists)"
    ),
]


async def _sync(factory: Callable[[Any], object], argument: Any) -> object:
    """A constructor as an async row (it must raise before anything awaits)."""
    return factory(argument)


@pytest.mark.parametrize("call, exception", TRIO)
def test_trio_bad_input(call: AsyncCase, exception: type[BaseException]) -> None:
    async def body() -> None:
        e = await TrioEnv().open()
        try:
            with pytest.raises(exception) as info:
                await call(e)
            assert not isinstance(info.value, (AttributeError, SystemError, IndexError))
            # The stream the calls were refused on still works.
            await e.stream.send_all(b"ok")
            assert e.peer.recv(2) == b"ok"
            e.peer.send(b"back")
            got = b""
            while len(got) < 4:
                got += await e.stream.receive_some()
            assert got == b"back"
        finally:
            await e.aclose()

    trio_run(body)


def test_trio_huge_sizes_are_clamped() -> None:
    """``receive_some(2**63)``, ``receive_fds(s, 2**63, 2**63)``: a receive
    of "up to" that much, clamped (was: OverflowError from the allocation)."""

    async def body() -> None:
        e = await TrioEnv().open()
        try:
            e.peer.send(b"1")
            assert await e.stream.receive_some(HUGE) == b"1"
            e.peer.send(b"2")
            assert await traffic.receive_fds(e.stream, HUGE, HUGE) == (b"2", [])
        finally:
            await e.aclose()

    trio_run(body)


CLOSED_STREAM: list[Any] = [
    pytest.param(lambda s: s.receive_some(), id="receive_some"),
    pytest.param(lambda s: s.send_all(b"x"), id="send_all"),
    pytest.param(lambda s: s.send_eof(), id="send_eof"),
    pytest.param(lambda s: s.wait_send_all_might_not_block(), id="wait_send_all_might_not_block"),
    pytest.param(lambda s: traffic.send_fds(s, b"x", [0]), id="send_fds"),
    pytest.param(lambda s: traffic.receive_fds(s, 1, 1), id="receive_fds"),
]


@pytest.mark.parametrize("call", CLOSED_STREAM)
def test_trio_closed_stream(call: AsyncCase) -> None:
    async def body() -> None:
        a, b = socket.socketpair()
        with b:
            stream = TrafficStream(a)
            await stream.aclose()
            with pytest.raises(trio.ClosedResourceError):
                await call(stream)
            await stream.aclose()  # idempotent
            with pytest.raises(OSError) as info:
                stream.socket.getsockname()
            assert info.value.errno == errno.EBADF

    trio_run(body)


def test_trio_closed_listener_and_transits() -> None:
    async def body() -> None:
        listener = (await traffic.open_tcp_listeners(0, host="127.0.0.1"))[0]
        await listener.aclose()
        with pytest.raises(trio.ClosedResourceError):
            await listener.accept()
        await listener.aclose()
        r, w = Octets.pipe()
        sockets, _ = Sockets.listen(("127.0.0.1", 0))
        for transit in (r, w, sockets):
            transit.terminate()
        with pytest.raises(trio.ClosedResourceError):
            await traffic.recv_into(r, bytearray(1))
        with pytest.raises(trio.ClosedResourceError):
            await traffic.send_all(w, b"x")
        with pytest.raises(trio.ClosedResourceError):
            await traffic.accept(sockets)

    trio_run(body)


# Objects from another trio run


def _first_run() -> dict[str, Any]:
    """Objects made and used in one run (so they belong to its Traffic)."""
    made: dict[str, Any] = {}

    async def first() -> None:
        a, b = socket.socketpair()
        made["peer"] = b
        made["stream"] = TrafficStream(a)
        made["listener"] = (await traffic.open_tcp_listeners(0, host="127.0.0.1"))[0]
        r, w = Octets.pipe()
        await traffic.send_all(w, b"x")
        assert await traffic.recv_into(r, bytearray(1)) == 1
        made["r"], made["w"] = r, w
        sockets, address = Sockets.listen(("127.0.0.1", 0))
        with socket.create_connection(address):
            for fd in await traffic.accept(sockets):
                os.close(fd)
        made["sockets"] = sockets
        (din, dout), (pin, pout) = Descriptors.socketpair()
        await traffic.send_fds(dout, b"x", [0])
        _, fds = await traffic.receive_fds(pin, 1, 1)
        for fd in fds:
            os.close(fd)
        made["din"], made["dout"], made["keep"] = pin, dout, (din, pout)

    trio_run(first)
    return made


ANOTHER_RUN: list[Any] = [
    pytest.param(lambda m: m["stream"].send_all(b"x"), id="stream.send_all"),
    pytest.param(lambda m: m["stream"].receive_some(), id="stream.receive_some"),
    pytest.param(lambda m: traffic.send_fds(m["stream"], b"x", [0]), id="stream.send_fds"),
    pytest.param(lambda m: traffic.receive_fds(m["stream"], 1, 1), id="stream.receive_fds"),
    pytest.param(lambda m: m["listener"].accept(), id="listener.accept"),
    pytest.param(lambda m: traffic.recv_into(m["r"], bytearray(1)), id="recv_into"),
    pytest.param(lambda m: traffic.send_all(m["w"], b"x"), id="send_all"),
    pytest.param(lambda m: traffic.accept(m["sockets"]), id="accept"),
    pytest.param(lambda m: traffic.send_fds(m["dout"], b"x", [0]), id="send_fds"),
    pytest.param(lambda m: traffic.receive_fds(m["din"], 1, 1), id="receive_fds"),
]


@pytest.mark.parametrize("call", ANOTHER_RUN)
def test_objects_from_another_trio_run(call: AsyncCase) -> None:
    """The first run's Traffic closed with it: its streams, listeners and
    transits raise ``trio.ClosedResourceError`` in a second run, at once
    (never hang, never crash); closing them there is harmless."""
    made = _first_run()

    async def second() -> None:
        with pytest.raises(trio.ClosedResourceError):
            await call(made)
        await made["stream"].aclose()
        await made["listener"].aclose()
        # The second run's own objects work.
        a, b = socket.socketpair()
        with b:
            stream = TrafficStream(a)
            await stream.send_all(b"fresh")
            assert b.recv(5) == b"fresh"
            await stream.aclose()

    try:
        trio_run(second)
    finally:
        made["peer"].close()


def test_transit_of_a_live_run_in_another_thread_is_refused() -> None:
    """A transit in a run that is still going, used from another run
    (another thread): ``RuntimeError``, the owner's run unaffected."""
    ready = threading.Event()
    done = threading.Event()
    shared: dict[str, Any] = {}

    async def owner() -> None:
        r, w = Octets.pipe()
        await traffic.send_all(w, b"x")
        shared["w"] = w
        ready.set()
        await trio.to_thread.run_sync(done.wait)
        await traffic.send_all(w, b"still mine")
        r.terminate()
        w.terminate()

    thread = threading.Thread(target=trio_run, args=(owner,))
    thread.start()
    try:
        assert ready.wait(LIMIT)

        async def intruder() -> None:
            with pytest.raises(RuntimeError, match="another Traffic"):
                await traffic.send_all(shared["w"], b"x")

        trio_run(intruder)
    finally:
        done.set()
        thread.join(LIMIT)
    assert not thread.is_alive()


# The anyio layer


class AnyioEnv:
    async def open(self) -> AnyioEnv:
        a, self.peer = socket.socketpair()
        self.stream = await ab.TrafficUNIXSocketStream.from_socket(a)
        multi = await ab.create_tcp_listener(local_host="127.0.0.1")
        self.listener = multi.listeners[0]
        self.owned: list[Any] = []
        return self

    def keep(self, thing: Any) -> Any:
        self.owned.append(thing)
        return thing

    def fd(self, kind: str) -> int:
        if kind == "pipe":
            r, w = os.pipe()
            os.close(w)
            self.owned.append(_Fd(r))
            return r
        fd = os.open(os.devnull, os.O_RDONLY)
        os.close(fd)
        return fd

    async def aclose(self) -> None:
        for thing in self.owned:
            assert thing.fileno() >= 0
            os.fstat(thing.fileno())  # refused: still the caller's, open
            thing.close()
        await self.stream.aclose()
        await self.listener.aclose()
        self.peer.close()


class _Fd:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        os.close(self.fd)


ANYIO: list[Any] = [
    pytest.param(lambda e: e.stream.receive(0), ValueError, id="receive(0)"),
    pytest.param(lambda e: e.stream.receive(-1), ValueError, id="receive(-1)"),
    pytest.param(lambda e: e.stream.receive("8"), TypeError, id="receive(str)"),
    pytest.param(lambda e: e.stream.send("str"), TypeError, id="send(str)"),
    pytest.param(lambda e: e.stream.send(42), TypeError, id="send(int)"),
    pytest.param(
        lambda e: e.stream.send(memoryview(bytearray(8))[::2]), BufferError, id="send(strided)"
    ),
    pytest.param(lambda e: e.stream.send_fds(b"", [0]), ValueError, id="send_fds(empty)"),
    pytest.param(lambda e: e.stream.send_fds(b"x", []), ValueError, id="send_fds(no-fds)"),
    pytest.param(lambda e: e.stream.send_fds(b"x", [-1]), TransitError, id="send_fds(-1)"),
    pytest.param(lambda e: e.stream.send_fds(b"x", [HUGE]), TransitError, id="send_fds(2**63)"),
    pytest.param(lambda e: e.stream.send_fds(b"x", ["0"]), TypeError, id="send_fds(str)"),
    pytest.param(
        lambda e: e.stream.send_fds(b"x", [e.fd("closed")]), OSError, id="send_fds(closed-fd)"
    ),
    pytest.param(lambda e: e.stream.receive_fds(0, 1), ValueError, id="receive_fds(0)"),
    pytest.param(lambda e: e.stream.receive_fds(1, 0), ValueError, id="receive_fds(maxfds=0)"),
    pytest.param(lambda e: e.stream.receive_fds(-1, 1), ValueError, id="receive_fds(-1)"),
    pytest.param(
        lambda e: ab.TrafficSocketStream.from_socket(e.fd("pipe")),
        ValueError,
        id="from_socket(pipe)",
    ),
    pytest.param(
        lambda e: ab.TrafficSocketListener.from_socket(e.fd("pipe")),
        ValueError,
        id="Listener.from_socket(pipe)",
    ),
    pytest.param(
        # anyio's own check: a socket that must be connected and cannot
        # even be looked at is not a connected socket.
        lambda e: ab.TrafficSocketStream.from_socket(e.fd("closed")),
        ValueError,
        id="from_socket(closed-fd)",
    ),
    pytest.param(
        lambda e: ab.TrafficSocketStream.from_socket(HUGE), ValueError, id="from_socket(2**63)"
    ),
    pytest.param(
        lambda e: ab.TrafficSocketStream.from_socket(-1), ValueError, id="from_socket(-1)"
    ),
    pytest.param(
        lambda e: ab.TrafficSocketStream.from_socket("3"), TypeError, id="from_socket(str)"
    ),
    pytest.param(
        lambda e: ab.TrafficSocketStream.from_socket(e.keep(socket.socket())),
        ValueError,
        id="from_socket(unconnected)",
    ),
    pytest.param(
        lambda e: ab.TrafficSocketListener.from_socket(e.keep(socket.socket())),
        ValueError,
        id="Listener.from_socket(unbound)",
    ),
    pytest.param(
        lambda e: ab.TrafficUNIXSocketStream.from_socket(
            e.keep(
                socket.create_connection(e.listener.extra(anyio.abc.SocketAttribute.local_address))
            )
        ),
        ValueError,
        id="UNIX.from_socket(tcp)",
    ),
    pytest.param(lambda e: ab.connect_tcp("127.0.0.1", 2**20), ValueError, id="connect_tcp(port)"),
    pytest.param(lambda e: ab.connect_tcp("127.0.0.1", -1), ValueError, id="connect_tcp(port-1)"),
    pytest.param(
        lambda e: ab.connect_unix("/nonexistent/traffic.sock"),
        FileNotFoundError,
        id="connect_unix(missing)",
    ),
    pytest.param(lambda e: ab.connect_unix(42), TypeError, id="connect_unix(int)"),
    pytest.param(
        lambda e: ab.create_tcp_listener(local_port=2**20),
        ValueError,
        id="create_tcp_listener(port)",
    ),
    pytest.param(
        lambda e: ab.create_tcp_listener(local_port="80"), TypeError, id="create_tcp_listener(str)"
    ),
    pytest.param(
        lambda e: ab.create_unix_listener(tempfile.gettempdir()),
        OSError,
        id="create_unix_listener(exists)",
    ),
    pytest.param(lambda e: ab.create_unix_listener(42), TypeError, id="create_unix_listener(int)"),
    pytest.param(lambda e: _sync(ab.close_traffic, 42), TypeError, id="close_traffic(int)"),
]


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize("call, exception", ANYIO)
def test_anyio_bad_input(call: AsyncCase, exception: type[BaseException], backend: str) -> None:
    async def main() -> None:
        with anyio.fail_after(LIMIT):
            e = await AnyioEnv().open()
            try:
                with pytest.raises(exception) as info:
                    await call(e)
                assert not isinstance(info.value, (AttributeError, SystemError, IndexError))
                await e.stream.send(b"ok")
                assert e.peer.recv(2) == b"ok"
                e.peer.send(b"back")
                got = b""
                while len(got) < 4:
                    got += await e.stream.receive()
                assert got == b"back"
            finally:
                await e.aclose()

    anyio.run(main, backend=backend)


ANYIO_CLOSED: list[Any] = [
    pytest.param(lambda s, listener: s.receive(), id="receive"),
    pytest.param(lambda s, listener: s.send(b"x"), id="send"),
    pytest.param(lambda s, listener: s.send_eof(), id="send_eof"),
    pytest.param(lambda s, listener: s.send_fds(b"x", [0]), id="send_fds"),
    pytest.param(lambda s, listener: s.receive_fds(1, 1), id="receive_fds"),
    pytest.param(lambda s, listener: listener.accept(), id="listener.accept"),
]


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize("call", ANYIO_CLOSED)
def test_anyio_closed(call: Callable[[Any, Any], Awaitable[object]], backend: str) -> None:
    async def main() -> None:
        with anyio.fail_after(LIMIT):
            a, b = socket.socketpair()
            with b:
                stream = await ab.TrafficUNIXSocketStream.from_socket(a)
                listener = (await ab.create_tcp_listener(local_host="127.0.0.1")).listeners[0]
                await stream.aclose()
                await listener.aclose()
                with pytest.raises(anyio.ClosedResourceError):
                    await call(stream, listener)
                await stream.aclose()
                await listener.aclose()

    anyio.run(main, backend=backend)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize("call", [p for p in ANYIO_CLOSED if p.id != "send_eof"])
def test_anyio_objects_from_another_run(
    call: Callable[[Any, Any], Awaitable[object]], backend: str
) -> None:
    """Made in one ``anyio.run``, used in the next: ``anyio.ClosedResourceError``
    (``send_eof()`` and ``aclose()`` there do nothing: the run's end closed it)."""
    made: dict[str, Any] = {}

    async def first() -> None:
        a, made["peer"] = socket.socketpair()
        made["stream"] = await ab.TrafficUNIXSocketStream.from_socket(a)
        made["listener"] = (await ab.create_tcp_listener(local_host="127.0.0.1")).listeners[0]

    async def second() -> None:
        with anyio.fail_after(LIMIT), pytest.raises(anyio.ClosedResourceError):
            await call(made["stream"], made["listener"])
        await made["stream"].aclose()
        await made["listener"].aclose()

    anyio.run(first, backend=backend)
    try:
        anyio.run(second, backend=backend)
    finally:
        made["peer"].close()
