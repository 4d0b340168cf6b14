"""traffic.libloop: timers, stopping, and event callbacks over real pipes and sockets.

No test passes or fails on timing: timers are checked for order and for
never firing early (a lower bound the monotonic clock guarantees), and
waits end on real conditions.  The leak check of conftest runs after each
test: every loop here is closed and every descriptor released.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import types
from collections.abc import Iterator

import pytest

from traffic import Octets, Polarity, Traffic, TransitClosedError, libloop
from traffic.libloop import Loop


@pytest.fixture
def loop() -> Iterator[Loop]:
    with Loop() as loop:
        yield loop


class FrozenClock:
    """The loop's monotonic clock, standing still until moved on."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FrozenClock:
    frozen = FrozenClock()
    monkeypatch.setattr(libloop, "time", types.SimpleNamespace(monotonic=frozen.monotonic))
    return frozen


def raw_pipe() -> tuple[Octets, int]:
    """An input transit over a pipe, attached nowhere yet, and the write end."""
    read_fd, write_fd = os.pipe()
    try:
        return Octets.from_fd(read_fd, Polarity.INPUT), write_fd
    except BaseException:
        os.close(read_fd)
        os.close(write_fd)
        raise


# Timers


def test_timers_run_in_deadline_order_then_run_returns(loop: Loop) -> None:
    ran: list[str] = []
    started = time.monotonic()
    loop.call_later(0.2, ran.append, "late")
    loop.call_later(0.1, ran.append, "middle")
    loop.call_soon(ran.append, "soon-1")
    loop.call_later(0, ran.append, "zero")
    loop.call_soon(ran.append, "soon-2")
    loop.call_later(-5, ran.append, "negative")
    loop.run()  # returns: no transits and no timers left
    assert ran == ["soon-1", "zero", "soon-2", "negative", "middle", "late"]
    assert time.monotonic() - started >= 0.2  # never early
    assert not loop.pending()


def test_equal_deadlines_are_first_in_first_out(loop: Loop, clock: FrozenClock) -> None:
    ran: list[int] = []
    for i in range(50):
        loop.call_later(0.5, ran.append, i)
    loop.call_later(0.25, ran.append, -1)
    clock.now += 1
    loop.run()
    assert ran == [-1, *range(50)]


def test_cancel(loop: Loop) -> None:
    ran: list[str] = []
    doomed = loop.call_later(0.05, ran.append, "doomed")
    kept = loop.call_later(0.05, ran.append, "kept")
    later = loop.call_later(3600, ran.append, "an hour")
    assert doomed.cancel() is True
    assert doomed.cancel() is False
    assert doomed.cancelled and not doomed.done

    def cancel_the_hour() -> None:
        ran.append("cancelling")
        assert later.cancel()

    loop.call_soon(cancel_the_hour)
    loop.run()  # the cancelled hour-long timer does not keep it running
    assert ran == ["cancelling", "kept"]
    assert kept.done and not kept.cancelled and kept.cancel() is False
    assert later.cancelled


def test_many_cancelled_timers_leave_nothing_pending(loop: Loop) -> None:
    timers = [loop.call_later(100 + i, print, i) for i in range(500)]
    for timer in timers:
        timer.cancel()
    assert not loop.pending()
    loop.run()


def test_cancelling_from_a_timer_callback(loop: Loop, clock: FrozenClock) -> None:
    # Enough cancellations for the loop to compact its heap while it runs
    # the due timers.
    ran: list[int] = []
    timers = [loop.call_later(1, ran.append, i) for i in range(200)]

    def cancel_the_odd() -> None:
        for timer in timers[1::2]:
            assert timer.cancel()

    loop.call_later(0.5, cancel_the_odd)
    clock.now += 2
    loop.run()
    assert ran == list(range(0, 200, 2))
    assert all(t.done for t in timers[::2]) and all(t.cancelled for t in timers[1::2])


def test_call_soon_from_a_callback_runs_in_the_next_turn(loop: Loop, clock: FrozenClock) -> None:
    # A callback that reschedules itself must not starve the transits: each
    # rescheduled call waits for a cycle, in which the pipe's data arrives.
    # The clock stands still, so a new call_soon is as due as the old one.
    receiver, write_fd = raw_pipe()
    got: list[bytes] = []
    turns: list[int] = []
    try:
        loop.attach(
            receiver,
            on_transfer=lambda t, view: got.append(bytes(view)),
            resource=bytearray(4),
        )
        os.write(write_fd, b"ping")

        def spin(n: int) -> None:
            turns.append(n)
            if got:
                loop.stop()
            elif n < 10_000:
                loop.call_soon(spin, n + 1)

        loop.call_soon(spin, 0)
        loop.run()
    finally:
        os.close(write_fd)
    assert got == [b"ping"]
    assert turns == list(range(len(turns)))
    assert len(turns) <= 3  # data already waiting: seen by the first cycle


def test_timer_exception_propagates_and_later_timers_still_run(loop: Loop) -> None:
    ran: list[str] = []

    def boom() -> None:
        ran.append("boom")
        raise ValueError("from a timer")

    loop.call_soon(ran.append, "first")
    loop.call_soon(boom)
    loop.call_soon(ran.append, "third")
    with pytest.raises(ValueError, match="from a timer"):
        loop.run()
    assert ran == ["first", "boom"]
    loop.run()
    assert ran == ["first", "boom", "third"]


def test_far_deadline_does_not_overflow_the_cycle_timeout(loop: Loop) -> None:
    # 30 days is more milliseconds than the core's C int timeout holds: the
    # loop caps each wait.  The data waiting makes the capped cycle return.
    receiver, write_fd = raw_pipe()
    got: list[bytes] = []

    def received(transit: Octets, view: memoryview) -> None:
        got.append(bytes(view))
        loop.stop()

    try:
        far = loop.call_later(30 * 86400, print, "never")
        os.write(write_fd, b"now")
        loop.attach(receiver, on_transfer=received, resource=bytearray(8))
        loop.run()
    finally:
        os.close(write_fd)
    assert got == [b"now"]
    assert not far.done
    far.cancel()


def test_bad_delay(loop: Loop) -> None:
    with pytest.raises(ValueError):
        loop.call_later(float("nan"), print)


# Stopping


def test_stop_from_another_thread_wakes_a_blocked_wait(loop: Loop) -> None:
    # A pipe reader with nothing coming: run() would wait forever.
    receiver, write_fd = raw_pipe()
    try:
        loop.attach(receiver, resource=bytearray(16))

        def stopper() -> None:
            while not loop.running:
                time.sleep(0.001)
            time.sleep(0.05)  # most likely inside the kernel wait by now
            loop.stop()

        thread = threading.Thread(target=stopper)
        thread.start()
        loop.run()
        thread.join()
        assert loop.transits() == [receiver]  # still attached, still live
        assert not receiver.terminated

        # The stop was consumed: the next run() waits again, until data.
        os.write(write_fd, b"x")
        got: list[bytes] = []

        def received(transit: Octets, view: memoryview) -> None:
            got.append(bytes(view))
            loop.stop()

        loop.attach(receiver, on_transfer=received)
        loop.run()
        assert got == [b"x"]
    finally:
        os.close(write_fd)


def test_stop_before_run_returns_at_once(loop: Loop) -> None:
    ran: list[int] = []
    loop.call_soon(ran.append, 1)
    loop.stop()
    loop.run()
    assert ran == []
    loop.run()
    assert ran == [1]


def test_run_returns_when_the_last_transit_terminates(loop: Loop) -> None:
    receiver, sender = Octets.pipe()
    log: list[tuple[str, object]] = []
    data = bytearray()

    def sent(transit: Octets) -> None:
        log.append(("tx-exhaust", None))
        transit.terminate()

    def received(transit: Octets, view: memoryview) -> None:
        log.append(("rx-transfer", len(view)))
        data.extend(view)

    def full(transit: Octets) -> None:
        log.append(("rx-exhaust", transit.exhausted))
        transit.acquire(bytearray(3))

    def ended(transit: Octets) -> None:
        log.append(("rx-terminate", transit.error))

    loop.attach(sender, on_exhaust=sent, on_terminate=lambda t: log.append(("tx-terminate", None)))
    loop.attach(
        receiver, on_transfer=received, on_exhaust=full, on_terminate=ended, resource=bytearray(3)
    )
    sender.acquire(b"abcdef")
    loop.run()  # returns by itself: both transits terminated, no timers
    assert loop.transits() == []
    assert not loop.pending()
    assert data == b"abcdef"
    kinds = [k for k, _ in log]
    assert kinds.count("tx-exhaust") == 1 and kinds.count("tx-terminate") == 1
    assert kinds.index("tx-exhaust") < kinds.index("tx-terminate")
    assert kinds.count("rx-exhaust") == 2  # 3 + 3 bytes; the third buffer sees EOF
    assert ("rx-exhaust", True) in log
    assert ("rx-terminate", None) in log  # EOF: no errno
    assert sender.terminated and receiver.terminated


def test_transfer_exhaust_terminate_on_a_socketpair(loop: Loop) -> None:
    (a_in, a_out), (b_in, b_out) = Octets.socketpair()
    events: list[tuple[str, str]] = []
    received = bytearray()
    payload = os.urandom(200_000)

    def on_transfer(transit: Octets, view: memoryview) -> None:
        received.extend(view)

    def b_full(transit: Octets) -> None:
        events.append(("b_in", "exhaust"))
        transit.acquire(bytearray(65536))

    def a_sent(transit: Octets) -> None:
        events.append(("a_out", "exhaust"))
        transit.terminate()  # half-close: b_in sees EOF after the data

    def b_ended(transit: Octets) -> None:
        events.append(("b_in", "terminate"))
        b_out.terminate()  # and close the other way too

    def a_ended(transit: Octets) -> None:
        events.append(("a_in", "terminate"))

    loop.attach(a_out, on_exhaust=a_sent, resource=payload)
    loop.attach(a_in, on_terminate=a_ended, resource=bytearray(16))
    loop.attach(b_in, on_transfer=on_transfer, on_exhaust=b_full, on_terminate=b_ended)
    loop.attach(b_out)
    b_in.acquire(bytearray(65536))
    loop.run()
    assert bytes(received) == payload
    assert ("a_out", "exhaust") in events
    assert ("b_in", "terminate") in events
    assert ("a_in", "terminate") in events  # b's SHUT_WR reached a
    assert events.count(("b_in", "exhaust")) >= 3  # 200 kB through 64 KiB buffers
    assert events.index(("b_in", "terminate")) > max(
        i for i, e in enumerate(events) if e == ("b_in", "exhaust")
    )
    assert loop.transits() == []  # every direction ended: run() returned by itself


# Exceptions


def test_callback_exception_propagates_and_nothing_is_lost(loop: Loop) -> None:
    # Three pipes, each with exactly its buffer's worth waiting: the first
    # cycle reports all three, each with transfer and exhaust together.
    pipes = [raw_pipe() for _ in range(3)]
    log: list[tuple[int, str, bytes]] = []
    raised: list[int] = []

    def on_transfer(transit: Octets, view: memoryview) -> None:
        index = next(i for i, (t, _) in enumerate(pipes) if t is transit)
        log.append((index, "transfer", bytes(view)))
        if not raised:
            raised.append(index)
            raise RuntimeError("callback failed")

    def on_exhaust(transit: Octets) -> None:
        index = next(i for i, (t, _) in enumerate(pipes) if t is transit)
        log.append((index, "exhaust", b""))
        transit.terminate()

    def on_terminate(transit: Octets) -> None:
        index = next(i for i, (t, _) in enumerate(pipes) if t is transit)
        log.append((index, "terminate", b""))

    try:
        for i, (transit, write_fd) in enumerate(pipes):
            os.write(write_fd, b"%4d" % i)
            loop.attach(
                transit,
                on_transfer=on_transfer,
                on_exhaust=on_exhaust,
                on_terminate=on_terminate,
                resource=bytearray(4),
            )
        with pytest.raises(RuntimeError, match="callback failed"):
            loop.run()
        assert len(log) == 1 and log[0][1] == "transfer"  # the one that raised
        assert loop.pending()
        loop.run()  # the rest is delivered; then nothing is left
    finally:
        for _, write_fd in pipes:
            os.close(write_fd)
    assert not loop.pending()
    for i in range(3):
        mine = [(kind, data) for index, kind, data in log if index == i]
        assert mine == [
            ("transfer", b"%4d" % i),
            ("exhaust", b""),
            ("terminate", b""),
        ], f"pipe {i}: {mine}"
    assert len(raised) == 1


def test_stop_inside_a_callback_keeps_the_other_events(loop: Loop) -> None:
    pipes = [raw_pipe() for _ in range(3)]
    got: list[bytes] = []

    def on_transfer(transit: Octets, view: memoryview) -> None:
        got.append(bytes(view))
        loop.stop()

    try:
        for transit, write_fd in pipes:
            os.write(write_fd, b"ok")
            loop.attach(transit, on_transfer=on_transfer, resource=bytearray(2))
        for expected in (1, 2, 3):
            loop.run()
            assert len(got) == expected
    finally:
        for _, write_fd in pipes:
            os.close(write_fd)
    assert got == [b"ok"] * 3


# Attaching and closing


def test_attach_refuses_a_terminated_transit(loop: Loop) -> None:
    receiver, sender = Octets.pipe()
    sender.terminate()
    with pytest.raises(TransitClosedError):
        loop.attach(sender)
    receiver.terminate()


def test_loop_refuses_a_threaded_traffic() -> None:
    traffic = Traffic()
    try:
        traffic.start()
        with pytest.raises(ValueError, match="synchronous"):
            Loop(traffic)
    finally:
        traffic.close()


def test_close_with_a_given_traffic_terminates_the_attached_transits() -> None:
    traffic = Traffic()
    try:
        loop = Loop(traffic)
        (a_in, a_out), (b_in, b_out) = Octets.socketpair()
        for transit in (a_in, a_out, b_in, b_out):
            loop.attach(transit)
        loop.close()
        assert loop.closed and not traffic.closed
        assert all(t.terminated for t in (a_in, a_out, b_in, b_out))
        with pytest.raises(RuntimeError, match="closed"):
            loop.run()
        with pytest.raises(RuntimeError, match="closed"):
            loop.call_soon(print)
    finally:
        traffic.close()


def test_close_from_a_callback_ends_run() -> None:
    loop = Loop()
    receiver, write_fd = raw_pipe()
    try:
        loop.attach(receiver, resource=bytearray(1))
        loop.call_soon(loop.close)
        later = loop.call_later(0.01, print, "never")
        loop.run()
        assert loop.closed and loop.traffic.closed
        assert later.cancelled
    finally:
        os.close(write_fd)


def test_close_from_an_event_callback_ends_run() -> None:
    loop = Loop()
    pipes = [raw_pipe() for _ in range(2)]
    got: list[bytes] = []

    def received(transit: Octets, view: memoryview) -> None:
        got.append(bytes(view))
        loop.close()

    try:
        for transit, write_fd in pipes:
            os.write(write_fd, b"hi")
            loop.attach(transit, on_transfer=received, resource=bytearray(2))
        loop.run()
    finally:
        for _, write_fd in pipes:
            os.close(write_fd)
    assert got == [b"hi"]  # the second transit's events died with the loop
    assert loop.closed and loop.traffic.closed
    assert all(transit.terminated for transit, _ in pipes)


def test_run_is_not_reentrant(loop: Loop) -> None:
    errors: list[BaseException] = []

    def nested() -> None:
        try:
            loop.run()
        except RuntimeError as error:
            errors.append(error)

    loop.call_soon(nested)
    loop.run()
    assert len(errors) == 1 and "already running" in str(errors[0])


def test_accepting_with_the_loop(loop: Loop) -> None:
    from array import array

    from traffic import Sockets

    listener, address = Sockets.listen(("127.0.0.1", 0))
    accepted: list[int] = []

    def on_transfer(transit: Sockets, view: memoryview) -> None:
        accepted.extend(view)
        if len(accepted) == 3:
            transit.terminate()

    loop.attach(listener, on_transfer=on_transfer, resource=array("i", [-1]) * 8)
    clients = [socket.create_connection(address) for _ in range(3)]
    try:
        loop.run()  # ends when the listener's termination is delivered
        assert len(accepted) == 3
        for fd in accepted:
            with socket.socket(fileno=fd) as sock:
                assert sock.type == socket.SOCK_STREAM
    finally:
        for sock in clients:
            sock.close()
