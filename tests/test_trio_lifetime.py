"""A trio run's Traffic: started on first use, gone when the run ends; Ctrl-C.

These tests call ``trio.run`` themselves (no ``@pytest.mark.trio``), so they
can look at the process between runs.
"""

from __future__ import annotations

import errno
import gc
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing
from test_core_sync import unread
from trio_support import (
    receive_after_a_wait,
    receive_exactly,
    settled,
    tcp_pair,
    unix_pair,
    wait_for,
)

import traffic
from conftest import cycle_threads, cycle_threads_gone, open_fds

#: Where the traffic under test was imported from, for subprocesses.
IMPORT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(traffic.__file__)))


async def use_traffic(leave_open: bool) -> None:
    """Some of everything: streams, a listener, primitives, a cancelled park."""
    a, b = await tcp_pair()
    c, d = await unix_pair()
    await a.send_all(b"tcp")
    assert await receive_exactly(b, 3) == b"tcp"
    await c.send_all(b"unix")
    assert await receive_exactly(d, 4) == b"unix"
    (in1, out1), (in2, out2) = traffic.Octets.socketpair()
    await traffic.send_all(out1, b"raw")
    assert await traffic.recv_into(in2, bytearray(3)) >= 1
    listener, _ = traffic.Sockets.listen(("127.0.0.1", 0))
    with trio.move_on_after(0.001):
        await traffic.accept(listener)  # parks, then is withdrawn
    # The thread names itself as it starts: wait for it rather than race it.
    assert await wait_for(lambda: len(cycle_threads()) == 1)
    if not leave_open:
        for stream in (a, b, c, d):
            await stream.aclose()
        for transit in (in1, out1, in2, out2, listener):
            transit.terminate()


def test_run_leaves_nothing_behind() -> None:
    """After trio.run: no cycle thread, the descriptors the run's transits
    owned are closed (also those its code left open), no core object alive."""
    gc.collect()
    fds = open_fds()
    objects = traffic.live_objects()
    assert cycle_threads_gone()
    trio.run(use_traffic, True)
    # Descriptors are closed synchronously when the run ends; the joined
    # thread may take a moment to leave /proc (see settled()).
    assert open_fds() == fds
    assert settled(lambda: not cycle_threads())
    gc.collect()
    assert traffic.live_objects() == objects


def test_five_runs_in_a_row() -> None:
    gc.collect()
    fds = open_fds()
    objects = traffic.live_objects()
    traffics = []

    async def main(i: int) -> None:
        traffics.append(traffic.current_traffic())
        await use_traffic(leave_open=bool(i % 2))

    for i in range(5):
        trio.run(main, i)
        assert open_fds() == fds, f"run {i}"
        assert settled(lambda: not cycle_threads()), f"run {i}"
        gc.collect()
        assert traffic.live_objects() == objects, f"run {i}"
    # Each run had a Traffic of its own, closed at its end.
    assert len(set(map(id, traffics))) == 5
    assert all(t.closed for t in traffics)
    traffics.clear()
    gc.collect()
    assert traffic.live_objects() == objects


def test_traffic_is_per_run_and_lazy() -> None:
    async def main() -> traffic.Traffic:
        # Nothing started before first use (the previous run's thread may
        # still be leaving /proc).
        assert await wait_for(lambda: not cycle_threads())
        first = traffic.current_traffic()
        assert traffic.current_traffic() is first
        assert first.threaded
        assert await wait_for(lambda: len(cycle_threads()) == 1)
        return first

    one = trio.run(main)
    two = trio.run(main)
    assert one is not two
    assert one.closed and two.closed


def test_run_goes_on_after_its_traffic_is_closed() -> None:
    """A user who closes the run's Traffic (``current_traffic().close()``)
    mid-run ends traffic's transfers, not the run: trio goes on through its
    I/O waits (where traffic collects completions, reading the core's
    memory), traffic's operations raise ``trio.ClosedResourceError``, and
    the run ends cleanly."""

    async def main() -> None:
        a, b = await unix_pair()
        await a.send_all(b"before")
        assert await receive_exactly(b, 6) == b"before"
        traffic.current_traffic().close()
        for _ in range(20):
            await trio.sleep(0.001)  # passes of the run loop, each with an I/O wait
        with pytest.raises(trio.ClosedResourceError):
            await a.send_all(b"after")
        with pytest.raises(trio.ClosedResourceError):
            await b.receive_some()

    trio.run(main)


def test_a_collector_that_raises_leaves_delivery_to_the_pump(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """trio disables an instrument that raises.  traffic's collector tells
    the core to write the completion descriptor only while trio may sleep;
    once disabled it tells it nothing more, so on its way out it hands the
    wake-ups back to the descriptor: parked receives still wake, through the
    pump."""
    from traffic import _trio_parking

    deliver = _trio_parking.deliver
    broke: list[bool] = []

    def breaks_once_in_the_collector(delivery: Any) -> None:
        if not broke and sys._getframe(1).f_code.co_name == "after_io_wait":
            broke.append(True)
            raise RuntimeError("the collector broke")
        deliver(delivery)

    monkeypatch.setattr(_trio_parking, "deliver", breaks_once_in_the_collector)

    async def main() -> None:
        a, b = await unix_pair()

        async def late(message: bytes) -> None:
            await trio.sleep(0.01)  # the receive parks, trio sleeps
            await b.send_all(message)

        with trio.fail_after(20):
            for i in range(10):
                message = b"%d" % i
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(late, message)
                    assert await receive_exactly(a, len(message)) == message
        await a.aclose()
        await b.aclose()

    trio.run(main)
    assert broke
    assert "Instrument has been disabled" in caplog.text


def test_the_collector_is_installed_only_while_requests_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """trio calls an instrument on every pass of its run loop.  traffic's
    collector is installed by the first request that parks and steps aside
    after ``_IDLE_PASSES`` passes with nothing parked, so a program whose
    transfers all complete inline pays nothing per pass; the next request
    that parks installs it again, and it still wakes."""
    from traffic import _trio_parking

    hooked: list[float] = []
    after_io_wait = _trio_parking.Collector.after_io_wait

    def counted(self: Any, timeout: float) -> None:
        hooked.append(timeout)
        after_io_wait(self, timeout)

    monkeypatch.setattr(_trio_parking.Collector, "after_io_wait", counted)

    async def main() -> None:
        a, b = await unix_pair()
        delivery = _trio_parking.delivery()
        collector = delivery.collector
        with trio.fail_after(20):
            for round_ in range(2):
                message = b"round %d" % round_
                async with trio.open_nursery() as nursery:

                    async def late(message: bytes = message) -> None:
                        await trio.sleep(0.01)  # the receive parks, trio sleeps
                        await b.send_all(message)

                    nursery.start_soon(late)
                    assert await receive_exactly(a, len(message)) == message
                    assert collector.installed
                # Inline transfers only: the collector leaves, and then no
                # hook of it runs however many passes trio makes.
                for _ in range(_trio_parking.IDLE_PASSES + 10):
                    await b.send_all(b"x")
                    assert await a.receive_some(1) == b"x"
                assert not collector.installed
                hooked.clear()
                for _ in range(100):
                    await trio.lowlevel.checkpoint()
                assert hooked == []
        await a.aclose()
        await b.aclose()

    trio.run(main)


def cycle_wakes() -> int:
    """Times this process's traffic-cycle thread went to sleep (voluntary
    context switches, from /proc)."""
    [task] = cycle_threads()
    with open(f"/proc/self/task/{task}/status") as f:
        for line in f:
            if line.startswith("voluntary_ctxt_switches:"):
                return int(line.split()[1])
    raise AssertionError("no voluntary_ctxt_switches in /proc")


def test_data_taken_inline_does_not_wake_the_cycle_thread() -> None:
    """A socket is subscribed in the kernel only while a request waits on
    it: data that a receive finds already there (taken inline, in trio's
    thread) never wakes the cycle thread, which would otherwise run once per
    message for nothing (a context switch each, on trio's CPU if they share
    one)."""

    async def main() -> None:
        a, b = socket.socketpair()
        stream = traffic.TrafficStream(a)
        try:
            await receive_after_a_wait(stream, b)
            await trio.sleep(0.05)
            before = cycle_wakes()
            for i in range(200):
                b.send(b"%03d" % i)  # there before the receive asks
                assert await stream.receive_some() == b"%03d" % i
            await trio.sleep(0.05)
            assert cycle_wakes() - before < 20
        finally:
            await stream.aclose()
            b.close()

    trio.run(main)


CTRL_C_SCRIPT = """
import socket, sys
from functools import partial
import trio, trio.testing
import traffic

async def hold(stream):
    await stream.receive_some()

async def main():
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(traffic.serve_tcp, hold, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        clients = [await traffic.open_tcp_stream("127.0.0.1", port) for _ in range(3)]
        pairs = [socket.socketpair() for _ in range(3)]
        streams = [traffic.TrafficStream(a) for a, b in pairs]
        for stream in [*clients, *streams]:
            nursery.start_soon(stream.receive_some)
        (rx, tx), _ = traffic.Octets.socketpair()
        nursery.start_soon(traffic.recv_into, rx, bytearray(8))
        await trio.testing.wait_all_tasks_blocked()
        print("ready", flush=True)

trio.run(main)
"""


def test_ctrl_c_with_parked_tasks() -> None:
    env = {**os.environ, "PYTHONPATH": IMPORT_ROOT}
    with subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(CTRL_C_SCRIPT)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    ) as child:
        try:
            assert child.stdout is not None
            line = child.stdout.readline()
            assert line.strip() == "ready", (line, child.stderr.read() if child.stderr else "")
            child.send_signal(signal.SIGINT)
            _out, err = child.communicate(timeout=30)
        except BaseException:
            child.kill()
            child.communicate()
            raise
    assert "KeyboardInterrupt" in err, err
    assert "Traceback" in err
    assert "Fatal Python error" not in err and "Segmentation" not in err, err


def test_atexit_closes_a_live_traffic() -> None:
    """A Traffic its owner never closed is closed before the interpreter
    finalizes: the process exits cleanly with the cycle thread running."""
    script = textwrap.dedent(
        """
        import socket, traffic
        t = traffic.Traffic()
        t.start()
        (rx, tx), _ = traffic.Octets.socketpair()
        t.acquire(rx)
        buffer = bytearray(64)
        assert t.request(rx, buffer)[0] == 0  # pending when the process exits
        print("started", flush=True)
        """
    )
    env = {**os.environ, "PYTHONPATH": IMPORT_ROOT}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "started"


def test_socket_views_survive_runs() -> None:
    """A stream's .socket view does not own the descriptor: once the run's
    Traffic closed it, the view answers EBADF instead of touching a reused
    descriptor number."""
    kept = []

    async def main() -> None:
        a, b = await unix_pair()
        kept.append(a)
        await b.aclose()

    trio.run(main)
    view = kept[0].socket
    assert view.fileno() == -1
    try:
        view.getsockname()
    except OSError as exc:
        assert exc.errno == errno.EBADF
    else:
        raise AssertionError("a closed view answered")
    # A new socket may take the old number: the view still refuses.
    fresh = socket.socket()
    try:
        assert view.fileno() == -1
    finally:
        fresh.close()


def test_guest_run_inside_asyncio() -> None:
    """trio as a guest of asyncio (``start_guest_run``): its I/O waits run
    in a worker thread and its run loop in asyncio's callbacks; transfers
    still complete and parked receives are still woken."""
    import asyncio

    async def trio_main() -> int:
        a, b = socket.socketpair()
        near, far = traffic.TrafficStream(a), traffic.TrafficStream(b)

        async def echo() -> None:
            while data := await far.receive_some():
                await far.send_all(data)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(echo)
            for i in range(200):
                message = b"ping %d" % i
                await near.send_all(message)
                assert await receive_exactly(near, len(message)) == message
            await near.aclose()
        await far.aclose()
        return i

    async def host() -> int:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Any] = loop.create_future()
        trio.lowlevel.start_guest_run(
            trio_main,
            run_sync_soon_threadsafe=loop.call_soon_threadsafe,
            done_callback=done.set_result,
        )
        return (await done).unwrap()

    assert asyncio.run(host()) == 199


async def _receive_with_trio_layer(sock: socket.socket) -> bytes:
    return await traffic.TrafficStream(sock).receive_some()


async def _receive_with_anyio_layer(sock: socket.socket) -> bytes:
    from traffic.anyio_backend import TrafficSocketStream

    stream = await TrafficSocketStream.from_socket(sock)
    return await stream.receive()


@pytest.mark.parametrize("receive", [_receive_with_trio_layer, _receive_with_anyio_layer])
def test_a_receive_asks_the_core_for_no_more_than_the_runs_scratch_holds(
    monkeypatch: pytest.MonkeyPatch, receive: Any
) -> None:
    """A receive that completes at once lands in the run's scratch, made
    when the run's Traffic is; the core writes as much as it is told to.
    Each layer asks for at most the scratch's room, whatever its own
    default receive size says by then (here: the trio layer's, raised after
    the scratch was made; anyio's is 64 KiB)."""
    from traffic import _trio_parking
    from traffic._base import _sockets

    a, b = socket.socketpair()
    b.sendall(b"x" * 10_000)
    monkeypatch.setattr(_sockets, "DEFAULT_RECEIVE_SIZE", 1024)

    async def main() -> bytes:
        _trio_parking.delivery()  # the run's scratch: 1 KiB
        monkeypatch.setattr(_sockets, "DEFAULT_RECEIVE_SIZE", 65536)
        return await receive(a)

    try:
        got = trio.run(main)
    finally:
        b.close()
    assert got == b"x" * 1024


@pytest.mark.parametrize("receive", [_receive_with_trio_layer, _receive_with_anyio_layer])
def test_ctrl_c_after_the_core_took_a_receive_loses_nothing(
    monkeypatch: pytest.MonkeyPatch, receive: Any
) -> None:
    """A Ctrl-C that arrives while the core holds a receive request (here:
    the request waited, and the cycle thread has already read the bytes into
    it) must not strand those bytes.  The receive is protected from
    KeyboardInterrupt, so the interrupt reaches the task where it parks; the
    abort fails (the transfer happened) and the task returns the bytes, and
    the interrupt comes at its next checkpoint."""
    from traffic._base._requests import Requests

    a, b = socket.socketpair()
    kernel_side = a.dup()  # to see what the kernel still holds
    fired: list[bool] = []

    def then_interrupt(request: Callable[..., Any]) -> Callable[..., Any]:
        def request_then_interrupt(*args: Any) -> Any:
            done = request(*args)
            if done is None and not fired:  # the request waits in the core
                fired.append(True)
                b.sendall(b"taken by the core")
                for _ in range(2000):  # until the cycle thread has read it
                    if unread(kernel_side.fileno()) == 0:
                        break
                    time.sleep(0.001)
                signal.raise_signal(signal.SIGINT)
            return done

        return request_then_interrupt

    # Both layers' receives hand the core their request through the one
    # request module.
    monkeypatch.setattr(Requests, "receive", then_interrupt(Requests.receive))
    got: list[bytes] = []

    async def main() -> None:
        got.append(await receive(a))
        await trio.sleep(10)  # the interrupt comes here

    try:
        with pytest.raises(KeyboardInterrupt):
            trio.run(main)
        assert fired
        kernel_side.setblocking(False)
        try:
            left = kernel_side.recv(100)
        except BlockingIOError:
            left = b""
        assert b"".join(got) + left == b"taken by the core"
    finally:
        kernel_side.close()
        b.close()


def test_the_runs_traffic_closed_by_hand_is_replaced() -> None:
    """``traffic.current_traffic().close()`` inside a run: the pump stops
    watching the completion descriptor before it closes, a task parked on
    the old Traffic wakes closed, and the next stream gets a new Traffic
    (it used to get the closed one, and the run died of an internal error
    of trio's)."""

    async def main() -> None:
        first = traffic.current_traffic()
        (rx, _tx), _ = traffic.Octets.socketpair()
        parked: list[BaseException] = []

        async def park() -> None:
            try:
                await traffic.recv_into(rx, bytearray(8))
            except trio.ClosedResourceError as exc:
                parked.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(park)
            await trio.testing.wait_all_tasks_blocked()
            first.close()
        assert len(parked) == 1
        second = traffic.current_traffic()
        assert second is not first and not second.closed
        a, b = socket.socketpair()
        with b:
            stream = traffic.TrafficStream(a)
            b.sendall(b"after")
            with trio.fail_after(10):
                assert await stream.receive_some() == b"after"
                await stream.send_all(b"back")
            assert b.recv(4) == b"back"
            await stream.aclose()
        assert traffic.current_traffic() is second

    trio.run(main)
