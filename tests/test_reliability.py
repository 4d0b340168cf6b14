"""Faults and concurrency: the process survives, waiting tasks get the
documented exception, nothing is left open.

- peers that vanish (kill -9 of a client process) and peers that reset
  (SO_LINGER 0) in the middle of a transfer;
- the cycle thread meeting an unexpected errno (the core's fault injection)
  while a trio task is parked on the transit;
- Ctrl-C with two thousand parked tasks;
- two trio runs in two threads and a synchronous Traffic in a third, all
  transferring at once, each with its own Traffic;
- a stateful model of the synchronous API (hypothesis): random acquire,
  cycle, terminate sequences over a socketpair, checked against a model of
  what must have arrived; illegal transitions raise and change nothing.

Descriptor counts, core objects and cycle threads are checked after every
test by conftest's autouse fixture.
"""

from __future__ import annotations

import errno
import gc
import hashlib
import os
import resource
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
from functools import partial

import pytest
import trio
import trio.testing
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import traffic
from conftest import cycle_threads, settle
from traffic import Octets, Traffic, TransitClosedError
from traffic._traffic import lib

IMPORT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(traffic.__file__)))
ENV = {**os.environ, "PYTHONPATH": IMPORT_ROOT}


# Peers that vanish or reset mid-transfer


@pytest.mark.trio
async def test_client_killed_mid_transfer_server_survives() -> None:
    """kill -9 of a client process while the server is sending to it: the
    handler gets BrokenResourceError (or EOF), the server keeps serving."""
    outcomes: list[str] = []

    async def handler(stream: traffic.TrafficStream) -> None:
        try:
            await stream.receive_some()
            while True:  # a stream the client never reads
                await stream.send_all(b"x" * 65536)
        except trio.BrokenResourceError as exc:
            assert isinstance(exc.__cause__, OSError)
            outcomes.append("broken")

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(traffic.serve_tcp, handler, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        script = f"""
import socket, sys, time
s = socket.create_connection(("127.0.0.1", {port}))
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
s.sendall(b"go")
print("connected", flush=True)
time.sleep(60)
"""
        child = await trio.lowlevel.open_process(
            [sys.executable, "-c", script], stdout=subprocess.PIPE
        )
        try:
            assert child.stdout is not None
            line = b""
            while not line.endswith(b"\n"):
                line += await child.stdout.receive_some()
            assert line == b"connected\n"
            await trio.testing.wait_all_tasks_blocked()
        finally:
            child.kill()  # SIGKILL: the kernel closes its socket, no goodbye
            await child.wait()
            assert child.stdout is not None
            await child.stdout.aclose()
        with trio.fail_after(30):
            while not outcomes:
                await trio.sleep(0.01)
        # The server still serves.
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(b"still there?")
        nursery.cancel_scope.cancel()
    # The killed client's handler broke; the probe's may too, when it closes.
    assert outcomes and set(outcomes) == {"broken"}


@pytest.mark.trio
async def test_peer_reset_mid_transfer() -> None:
    """A peer that resets (SO_LINGER 0) while a large send is parked: the
    send raises BrokenResourceError chained to ECONNRESET or EPIPE, and the
    receive side reports the reset too (or EOF)."""
    listener = socket.create_server(("127.0.0.1", 0))
    with listener:
        client = socket.create_connection(listener.getsockname())
        server_side, _ = listener.accept()
    stream = traffic.TrafficStream(server_side)
    async with stream:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)

        async def reset_when_parked() -> None:
            await trio.testing.wait_all_tasks_blocked()
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.close()

        caught: list[trio.BrokenResourceError] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reset_when_parked)
            try:
                await stream.send_all(b"y" * (16 << 20))
            except trio.BrokenResourceError as exc:
                caught.append(exc)
        assert len(caught) == 1
        assert isinstance(caught[0].__cause__, OSError)
        assert caught[0].__cause__.errno in (errno.ECONNRESET, errno.EPIPE)
        try:
            assert await stream.receive_some() == b""
        except trio.BrokenResourceError as exc:
            assert isinstance(exc.__cause__, OSError)
            assert exc.__cause__.errno == errno.ECONNRESET


# The cycle thread meets an unexpected errno


@pytest.mark.trio
@pytest.mark.parametrize("code", [errno.EIO, errno.ENOMEM, errno.EBADF])
async def test_injected_fault_reaches_the_parked_task(code: int) -> None:
    a, b = socket.socketpair()
    stream = traffic.TrafficStream(a)
    async with stream:
        with b:

            async def inject_when_parked() -> None:
                await trio.testing.wait_all_tasks_blocked()
                assert lib.tr_transit_inject(stream._receiver._c, code) == 0
                b.send(b"edge")  # an edge, in case the injection waits for one

            caught: list[trio.BrokenResourceError] = []
            async with trio.open_nursery() as nursery:
                nursery.start_soon(inject_when_parked)
                with trio.fail_after(30):  # nothing hangs
                    try:
                        await stream.receive_some()
                    except trio.BrokenResourceError as exc:
                        caught.append(exc)
            assert len(caught) == 1
            assert isinstance(caught[0].__cause__, OSError)
            assert caught[0].__cause__.errno == code
            # The output direction is untouched by the input's fault.
            await stream.send_all(b"still sending")
            assert b.recv(64) == b"still sending"


# Ctrl-C with thousands of parked tasks

CTRL_C_MANY = """
import resource, socket
import trio, trio.testing
import traffic

soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 10000), hard))

async def main():
    async with trio.open_nursery() as nursery:
        for _ in range(2000):
            a, b = socket.socketpair()
            nursery.start_soon(traffic.TrafficStream(a).receive_some)
            nursery.start_soon(trio.sleep_forever)  # keeps b open, unread
            keep.append(b)
        await trio.testing.wait_all_tasks_blocked()
        print("ready", flush=True)

keep = []
trio.run(main)
"""


def test_ctrl_c_with_two_thousand_parked_tasks() -> None:
    with subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(CTRL_C_MANY)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    ) as child:
        try:
            assert child.stdout is not None
            line = child.stdout.readline()
            assert line.strip() == "ready", (line, child.stderr.read() if child.stderr else "")
            child.send_signal(signal.SIGINT)
            _, err = child.communicate(timeout=60)
        except BaseException:
            child.kill()
            child.communicate()
            raise
    assert "KeyboardInterrupt" in err, err
    assert "Fatal Python error" not in err and "Segmentation" not in err, err


# Independent Traffics in three threads at once


def _trio_echo_run(size: int, digests: dict[str, bytes], name: str) -> None:
    async def main() -> None:
        a, b = socket.socketpair()
        left, right = traffic.TrafficStream(a), traffic.TrafficStream(b)
        payload = hashlib.sha256(name.encode()).digest() * (size // 32)
        got = bytearray()

        async def send() -> None:
            await left.send_all(payload)
            await left.send_eof()

        async with left, right, trio.open_nursery() as nursery:
            nursery.start_soon(send)
            while data := await right.receive_some():
                got += data
        digests[name] = hashlib.sha256(got).digest()
        digests[name + ".expected"] = hashlib.sha256(payload).digest()

    trio.run(main)


def _sync_run(size: int, digests: dict[str, bytes]) -> None:
    t = Traffic(timeout=0.1)
    try:
        (receiver, _), (_, sender) = Octets.socketpair()
        for transit in (receiver, sender):
            t.acquire(transit)
        payload = os.urandom(size)
        sender.acquire(payload)
        got = bytearray()
        buffer = bytearray(65536)
        receiver.acquire(buffer)
        for _ in range(100_000):
            if len(got) == size:
                break
            with t:
                for transit in t.transfers():
                    if transit is receiver:
                        got += transit.transfer() or b""
                        if transit.exhausted:
                            buffer = bytearray(65536)
                            receiver.acquire(buffer)
        digests["sync"] = hashlib.sha256(got).digest()
        digests["sync.expected"] = hashlib.sha256(payload).digest()
    finally:
        t.close()


def test_two_trio_runs_and_a_synchronous_traffic_at_once() -> None:
    digests: dict[str, bytes] = {}
    size = 8 << 20
    threads = [
        threading.Thread(target=_trio_echo_run, args=(size, digests, "first")),
        threading.Thread(target=_trio_echo_run, args=(size, digests, "second")),
        threading.Thread(target=_sync_run, args=(size, digests)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
        assert not thread.is_alive()
    for name in ("first", "second", "sync"):
        assert digests[name] == digests[name + ".expected"], name


# A stateful model of the synchronous API


class SynchronousModel(RuleBasedStateMachine):
    """Random sequences over one socketpair, checked against a model.

    The model: everything the output transits were given arrives, in order,
    exactly once at the peer's input; a transit with a resource that is not
    exhausted refuses another; a terminated transit refuses everything.
    """

    def __init__(self) -> None:
        super().__init__()
        self.traffic = Traffic()
        (self.receiver, self.our_sender), (self.peer_receiver, self.sender) = Octets.socketpair()
        for transit in (self.receiver, self.our_sender, self.peer_receiver, self.sender):
            self.traffic.acquire(transit)
        self.sent = bytearray()  # what the sender was given
        self.received = bytearray()  # what arrived at the receiver
        self.sender_busy = False
        self.receiver_busy = False
        self.sender_terminated = False

    def teardown(self) -> None:
        self.traffic.close()

    def _cycle(self, timeout: float) -> None:
        with self.traffic.cycle(timeout):
            for transit in self.traffic.transfers():
                if transit is self.receiver:
                    self.received += transit.transfer() or b""
                    if transit.exhausted:
                        self.receiver_busy = False
                elif transit is self.sender and transit.exhausted:
                    self.sender_busy = False

    @precondition(lambda self: not self.sender_busy and not self.sender_terminated)
    @rule(data=st.binary(min_size=1, max_size=200_000))
    def send(self, data: bytes) -> None:
        self.sender.acquire(data)
        self.sent += data
        self.sender_busy = True

    @precondition(lambda self: self.sender_busy and not self.sender_terminated)
    @rule(data=st.binary(min_size=1, max_size=10))
    def send_while_busy_is_refused(self, data: bytes) -> None:
        resource = self.sender.resource
        with pytest.raises(BufferError):
            self.sender.acquire(data)
        assert self.sender.resource is resource

    @precondition(lambda self: not self.receiver_busy)
    @rule(size=st.integers(min_value=1, max_value=300_000))
    def receive(self, size: int) -> None:
        self.receiver.acquire(bytearray(size))
        self.receiver_busy = True

    @rule(timeout=st.sampled_from([0.0, 0.01]))
    def cycle(self, timeout: float) -> None:
        self._cycle(timeout)

    @precondition(lambda self: not self.sender_terminated)
    @rule()
    def terminate_sender(self) -> None:
        self.sender.terminate()
        self.sender_terminated = True

    @precondition(lambda self: self.sender_terminated)
    @rule()
    def terminated_refuses(self) -> None:
        with pytest.raises(TransitClosedError):
            self.sender.acquire(b"late")

    @invariant()
    def received_is_a_prefix_of_sent(self) -> None:
        assert self.sent.startswith(self.received)

    def drained(self) -> bool:
        return len(self.received) == len(self.sent)

    @precondition(lambda self: not self.sender_busy or not self.sender_terminated)
    @rule()
    def everything_sent_arrives(self) -> None:
        """Cycle until all given data arrived (receiving as needed)."""
        if self.sender_terminated and self.sender_busy:
            return  # terminated mid-send: what arrives is a prefix (invariant)
        for _ in range(2000):
            if self.drained() and not self.sender_busy:
                break
            if not self.receiver_busy:
                self.receive(65536)
            self._cycle(0.01)
        if not self.sender_terminated:
            assert self.drained()
            assert self.received == self.sent


TestSynchronousModel = SynchronousModel.TestCase
TestSynchronousModel.settings = settings(max_examples=25, stateful_step_count=30, deadline=None)


# A socket whose one transit is in traffic and the other never is


@pytest.mark.parametrize("threaded", [False, True])
@pytest.mark.parametrize("order", ["drop-then-close", "close-then-drop"])
def test_half_acquired_pair_in_every_order(threaded: bool, order: str) -> None:
    """The sibling outside traffic shares the kernel point: dropping the
    transit in traffic, closing the Traffic and dropping the sibling, in
    either order, touches no freed memory (the sanitizer run checks) and
    leaves nothing open or alive (the autouse fixture checks)."""
    t = Traffic(timeout=0.1)
    if threaded:
        t.start()
    ours, peer = socket.socketpair()
    with peer:
        receiver, sender = Octets.wrap(ours)
        t.acquire(receiver)
        if not threaded:
            receiver.acquire(bytearray(8))
            peer.send(b"x")  # registers the point, raises an edge
            with t.cycle(0.1):
                assert [x is receiver for x in t.transfers()] == [True]
            peer.send(b"y")  # an edge the dropped transit never takes
        if order == "drop-then-close":
            del receiver
            gc.collect()
            t.close()
        else:
            t.close()
            del receiver
            gc.collect()
        if order == "close-then-drop":
            assert sender.fileno() == -1  # the point closed with the Traffic
        del sender
        gc.collect()


# Ten thousand connections through serve_tcp: nothing left behind

#: Connections of the live-object run (CI's sanitize step sets it too).
CONNECTIONS = int(os.environ.get("TRAFFIC_CONNECTIONS", "10000"))
#: Clients connected at once.
BATCH = 500


def test_ten_thousand_connections_leave_nothing_behind() -> None:
    """Open and close ``CONNECTIONS`` connections through ``traffic.serve_tcp``,
    ``BATCH`` at a time, each echoing a message of its own; afterwards the
    core's live objects and the process's descriptors are back at their
    baseline (counted here, and again by the autouse leak check)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = 2 * BATCH + 200
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {needed}")
    if soft != resource.RLIM_INFINITY and soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    try:
        gc.collect()
        fds_before = len(os.listdir("/proc/self/fd"))
        objects_before = traffic.live_objects()
        echoed = hashlib.sha256()
        expected = hashlib.sha256()
        served = [0]

        async def echo(stream: traffic.TrafficStream) -> None:
            got = b""
            while len(got) < 16:
                data = await stream.receive_some()
                if not data:
                    return
                got += data
            await stream.send_all(got)
            served[0] += 1

        async def client(port: int, n: int, results: list[bytes]) -> None:
            message = n.to_bytes(8, "big") * 2
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                await stream.send_all(message)
                got = b""
                while len(got) < 16:
                    data = await stream.receive_some()
                    assert data, f"connection {n}: EOF before the echo"
                    got += data
            results[n % BATCH] = got

        async def main() -> None:
            with trio.fail_after(600):  # bounds a hang, never decides a pass
                async with trio.open_nursery() as nursery:
                    listeners = await nursery.start(
                        partial(traffic.serve_tcp, echo, 0, host="127.0.0.1")
                    )
                    port = listeners[0].socket.getsockname()[1]
                    for start in range(0, CONNECTIONS, BATCH):
                        results = [b""] * BATCH
                        count = min(BATCH, CONNECTIONS - start)
                        async with trio.open_nursery() as clients:
                            for n in range(start, start + count):
                                clients.start_soon(client, port, n, results)
                        for n in range(start, start + count):
                            expected.update(n.to_bytes(8, "big") * 2)
                            echoed.update(results[n % BATCH])
                    nursery.cancel_scope.cancel()

        trio.run(main)
        assert served[0] == CONNECTIONS
        assert echoed.hexdigest() == expected.hexdigest()
        settle(
            lambda: (
                traffic.live_objects() == objects_before
                and len(os.listdir("/proc/self/fd")) == fds_before
            )
        )
        assert traffic.live_objects() == objects_before
        assert len(os.listdir("/proc/self/fd")) == fds_before
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_cycle_thread_blocks_signals() -> None:
    """The guarantee behind Ctrl-C: the ``traffic-cycle`` thread blocks
    SIGINT (and the other asynchronous signals), so the kernel delivers them
    to the main thread, where Python's handlers run."""
    t = Traffic()
    try:
        t.start()
        tasks = cycle_threads()
        assert len(tasks) == 1
        with open(f"/proc/self/task/{tasks[0]}/status") as f:
            status = dict(line.split(":", 1) for line in f if ":" in line)
        blocked = int(status["SigBlk"].strip(), 16)
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD, signal.SIGALRM):
            assert blocked & (1 << (signum - 1)), f"{signum!r} is not blocked in the cycle thread"
    finally:
        t.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux scheduling policies")
@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (None, os.SCHED_BATCH),  # the default
        ("batch", os.SCHED_BATCH),
        ("normal", os.SCHED_OTHER),
        ("idle", os.SCHED_IDLE),
    ],
)
def test_cycle_thread_runs_its_policy(
    policy: str | None, expected: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cycle thread's Linux scheduling policy is the one asked for, and
    a Traffic started without one takes the default (SCHED_BATCH: edges
    never preempt the owner's thread, and it cannot starve)."""
    monkeypatch.delenv("TRAFFIC_CYCLE_POLICY", raising=False)
    t = Traffic()
    try:
        t.start(policy)
        tasks = cycle_threads()
        assert len(tasks) == 1
        # The thread sets its own policy as it starts: poll, bounded.
        deadline = time.monotonic() + 10
        while True:
            with open(f"/proc/self/task/{tasks[0]}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
            found = int(fields[38])  # field 41 of stat(5): policy
            if found == expected or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        assert found == expected
    finally:
        t.close()
