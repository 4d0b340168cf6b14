"""Bad input gets a clear Python exception and leaves the state unchanged.

The core must never crash the process on bad input; each case here also
checks that what was there before (a resource, a descriptor the caller
still owns) survives the refusal.
"""

from __future__ import annotations

import errno
import os
import socket
from array import array
from collections.abc import Callable
from typing import Any

import pytest

import traffic
from conftest import Collector, run_until
from traffic import Octets, Polarity, Sockets, Traffic, TransitClosedError
from traffic._traffic import lib


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


# Zero-length resources: exhausted at once, nothing transferred, no EOF.


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
