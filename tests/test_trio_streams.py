"""TrafficStream: trio's conformance suite, lifecycle, interop, cancellation.

Every stream kind runs trio's own ``check_half_closeable_stream`` (with a
clogged maker, so the blocking paths run too); the lifecycle tests are named
after anyio's.  Peers are real sockets: traffic on both ends, trio's native
``SocketStream``, or a stdlib socket driven from a thread.
"""

from __future__ import annotations

import errno
import hashlib
import random
import socket

import pytest
import trio
import trio.testing
from trio_support import (
    clog,
    clogged_tcp_pair,
    clogged_unix_pair,
    digest,
    pseudorandom,
    receive_exactly,
    receive_until_eof,
    tcp_pair,
    unix_pair,
)

import traffic
from traffic import TrafficStream

PAIRS = {"tcp": tcp_pair, "unix": unix_pair}
CLOGGED = {"tcp": clogged_tcp_pair, "unix": clogged_unix_pair}


@pytest.fixture(params=sorted(PAIRS))
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# Conformance


@pytest.mark.trio
async def test_check_half_closeable_stream(kind: str) -> None:
    await trio.testing.check_half_closeable_stream(PAIRS[kind], CLOGGED[kind])


# Lifecycle (named like anyio's)


@pytest.mark.trio
async def test_close_during_receive(kind: str) -> None:
    a, b = await PAIRS[kind]()
    got: list[BaseException] = []

    async def receive() -> None:
        try:
            await a.receive_some()
        except trio.ClosedResourceError as exc:
            got.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(receive)
        await trio.testing.wait_all_tasks_blocked()
        await a.aclose()
    assert len(got) == 1
    await b.aclose()


@pytest.mark.trio
async def test_receive_after_close(kind: str) -> None:
    a, b = await PAIRS[kind]()
    await b.send_all(b"unread")
    await a.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await a.receive_some()
    await b.aclose()


@pytest.mark.trio
async def test_send_after_peer_closed(kind: str) -> None:
    a, b = await PAIRS[kind]()
    await b.aclose()
    # TCP takes the first send after the peer's close (the RST answers it);
    # a later one fails.  The bound turns "never fails" into a test failure.
    with pytest.raises(trio.BrokenResourceError) as caught:
        for _ in range(1000):
            await a.send_all(b"x" * 1024)
    cause = caught.value.__cause__
    assert isinstance(cause, OSError)
    assert cause.errno in (errno.EPIPE, errno.ECONNRESET)
    await a.aclose()


@pytest.mark.trio
async def test_send_after_eof(kind: str) -> None:
    a, b = await PAIRS[kind]()
    await a.send_eof()
    with pytest.raises(trio.ClosedResourceError):
        await a.send_all(b"late")
    # The other direction still works, and the peer saw EOF.
    assert await b.receive_some() == b""
    await b.send_all(b"back")
    assert await receive_exactly(a, 4) == b"back"
    await a.aclose()
    await b.aclose()


@pytest.mark.trio
async def test_send_after_close(kind: str) -> None:
    a, b = await PAIRS[kind]()
    await a.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await a.send_all(b"late")
    with pytest.raises(trio.ClosedResourceError):
        await a.send_eof()
    with pytest.raises(trio.ClosedResourceError):
        await a.wait_send_all_might_not_block()
    await a.aclose()  # idempotent
    assert await b.receive_some() == b""
    await b.aclose()


@pytest.mark.trio
async def test_concurrent_send_and_receive(kind: str) -> None:
    """One stream, a sending task and a receiving task; the peer echoes."""
    a, b = await PAIRS[kind]()
    data = pseudorandom(2 << 20, seed=1)
    received: list[bytes] = []

    async def send() -> None:
        for i in range(0, len(data), 50_000):
            await a.send_all(data[i : i + 50_000])
        await a.send_eof()

    async def receive() -> None:
        received.append(await receive_until_eof(a))

    async def echo() -> None:
        while chunk := await b.receive_some():
            await b.send_all(chunk)
        await b.send_eof()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send)
        nursery.start_soon(receive)
        nursery.start_soon(echo)
    assert digest(received[0]) == digest(data)
    await a.aclose()
    await b.aclose()


@pytest.mark.trio
@pytest.mark.parametrize("first", ["receive", "send"])
async def test_each_direction_subscribes_when_it_first_waits(kind: str, first: str) -> None:
    """The core subscribes a socket to the kernel one direction at a time,
    when a transfer in it first meets EAGAIN; the second direction modifies
    the first's subscription.  In either order both directions still wake:
    a receive parked on an empty socket and a send parked on a full one."""
    a, b = await PAIRS[kind]()
    data = pseudorandom(4 << 20, seed=2)

    async def wait_to_receive() -> None:
        async def late() -> None:
            await trio.sleep(0.05)
            await b.send_all(b"late")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(late)
            assert await receive_exactly(a, 4) == b"late"

    async def wait_to_send() -> None:
        received: list[bytes] = []

        async def drain() -> None:
            await trio.sleep(0.05)
            received.append(await receive_exactly(b, len(data)))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(drain)
            await a.send_all(data)  # 4 MiB: more than the kernel holds
        assert digest(received[0]) == digest(data)

    steps = [wait_to_receive, wait_to_send]
    if first == "send":
        steps.reverse()
    with trio.fail_after(30):
        for step in steps * 2:
            await step()
    await a.aclose()
    await b.aclose()


@pytest.mark.trio
async def test_a_receive_and_a_send_waiting_at_once_both_wake(kind: str) -> None:
    """A receive waits on an empty socket while a send waits on a full one.
    The core's one-shot subscription covers both directions of the socket,
    and on Linux the kernel disarms both when it reports one: the message
    wakes the receive, and the send, disarmed with it, still completes
    once the peer drains."""
    a, b = await PAIRS[kind]()
    data = pseudorandom(4 << 20, seed=3)
    received: list[bytes] = []

    async def send() -> None:
        await a.send_all(data)  # more than the kernel holds: it waits

    async def receive() -> None:
        received.append(await receive_exactly(a, 5))

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send)
            nursery.start_soon(receive)
            await trio.sleep(0.1)  # both wait now
            await b.send_all(b"hello")  # the receive's direction fires
            await trio.sleep(0.1)
            assert received == [b"hello"]
            drained = await receive_exactly(b, len(data))
    assert digest(drained) == digest(data)
    await a.aclose()
    await b.aclose()


@pytest.mark.trio
async def test_two_receivers_busy(kind: str) -> None:
    a, b = await PAIRS[kind]()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(a.receive_some)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(trio.BusyResourceError, match="receive"):
            await a.receive_some()
        nursery.cancel_scope.cancel()
    # The first receive was withdrawn: the stream still works.
    await b.send_all(b"after")
    assert await receive_exactly(a, 5) == b"after"
    await a.aclose()
    await b.aclose()


@pytest.mark.trio
async def test_two_senders_busy(kind: str) -> None:
    a, b = await CLOGGED[kind]()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(a.send_all, b"x" * 100_000)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(trio.BusyResourceError, match="send"):
            await a.send_all(b"y")
        nursery.cancel_scope.cancel()
    await a.aclose()
    await b.aclose()


@pytest.mark.trio
async def test_receive_some_bad_sizes(kind: str) -> None:
    a, b = await PAIRS[kind]()
    with pytest.raises(ValueError):
        await a.receive_some(0)
    with pytest.raises(ValueError):
        await a.receive_some(-1)
    with pytest.raises(TypeError):
        await a.receive_some(1.5)  # type: ignore[arg-type]
    # Nothing was consumed by the refused calls.
    await b.send_all(b"ok")
    assert await receive_exactly(a, 2) == b"ok"
    await a.aclose()
    await b.aclose()


@pytest.mark.trio
async def test_receive_some_max_bytes(kind: str) -> None:
    a, b = await PAIRS[kind]()
    await b.send_all(b"abcdef")
    assert await a.receive_some(1) == b"a"
    assert await receive_exactly(a, 5) == b"bcdef"
    await a.aclose()
    await b.aclose()


@pytest.mark.trio
async def test_socket_options_tcp() -> None:
    a, b = await tcp_pair()
    for stream in (a, b):
        assert stream.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        assert stream.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    a.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    assert a.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
    a.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 0)
    assert a.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 0
    raw = a.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE, 4)
    assert int.from_bytes(raw, "little") == socket.SOCK_STREAM
    assert a.socket.getsockname() == b.socket.getpeername()
    assert a.socket.getpeername() == b.socket.getsockname()
    assert a.socket.getsockname()[0] == "127.0.0.1"
    assert a.socket.family == socket.AF_INET
    assert a.socket.type == socket.SOCK_STREAM
    await a.aclose()
    await b.aclose()
    # The view does not own the descriptor: after close it says so.
    assert a.socket.fileno() == -1 or await_closed_view(a)


@pytest.mark.trio
async def test_accepted_streams_have_nodelay() -> None:
    # The listener sets TCP_NODELAY on itself and checks that the first
    # accepted connection inherited it; every stream must have it all the same.
    listeners = await traffic.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    clients = []
    for _ in range(3):
        clients.append(await trio.open_tcp_stream("127.0.0.1", port))
        stream = await listeners[0].accept()
        assert stream.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        await stream.aclose()
    for client in clients:
        await client.aclose()
    await listeners[0].aclose()


def await_closed_view(stream: TrafficStream) -> bool:
    """True once the view reports EBADF (the core closes asynchronously)."""
    try:
        stream.socket.getsockname()
    except OSError as exc:
        return exc.errno == errno.EBADF
    return False


@pytest.mark.trio
async def test_socket_options_unix() -> None:
    a, b = await unix_pair()
    assert a.socket.family == socket.AF_UNIX
    assert a.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE) == socket.SOCK_STREAM
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
    assert a.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) >= 65536
    assert a.socket.getsockname() == ""  # unnamed socketpair ends
    await a.aclose()
    await b.aclose()


@pytest.mark.trio
async def test_stream_refuses_non_stream_socket() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        with pytest.raises(TypeError):
            TrafficStream(udp)
        # Refused before it was detached: still the caller's, open (as trio's SocketStream).
        assert udp.fileno() >= 0
        udp.getsockname()  # and open
    closed = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    closed.close()
    with pytest.raises(trio.ClosedResourceError):
        TrafficStream(closed)


# Interop with trio's native streams and plain sockets


SIZE = 4 << 20


@pytest.mark.trio
async def test_interop_trio_socket_stream() -> None:
    left, right = trio.socket.socketpair()
    ours = TrafficStream(left)
    theirs = trio.SocketStream(right)
    to_them = pseudorandom(SIZE, seed=2)
    to_us = pseudorandom(SIZE, seed=3)
    got: dict[str, bytes] = {}

    async def ours_send() -> None:
        await ours.send_all(to_them)
        await ours.send_eof()

    async def theirs_send() -> None:
        await theirs.send_all(memoryview(to_us))
        await theirs.send_eof()

    async def ours_receive() -> None:
        got["us"] = await receive_until_eof(ours)

    async def theirs_receive() -> None:
        got["them"] = await receive_until_eof(theirs)

    async with trio.open_nursery() as nursery:
        for task in (ours_send, theirs_send, ours_receive, theirs_receive):
            nursery.start_soon(task)
    assert digest(got["them"]) == digest(to_them)
    assert digest(got["us"]) == digest(to_us)
    await ours.aclose()
    await theirs.aclose()


@pytest.mark.trio
async def test_interop_tcp_with_trio_native_peer() -> None:
    """traffic's listener, trio's native client stream, both directions."""
    listeners = await traffic.open_tcp_listeners(0, host="127.0.0.1")
    theirs = await trio.testing.open_stream_to_socket_listener(listeners[0])
    ours = await listeners[0].accept()
    await listeners[0].aclose()
    to_them = pseudorandom(SIZE, seed=4)
    to_us = pseudorandom(SIZE, seed=5)
    got: dict[str, bytes] = {}

    async def ours_side() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ours.send_all, to_them)
            got["us"] = await receive_exactly(ours, SIZE)

    async def theirs_side() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(theirs.send_all, to_us)
            got["them"] = await receive_exactly(theirs, SIZE)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ours_side)
        nursery.start_soon(theirs_side)
    assert digest(got["them"]) == digest(to_them)
    assert digest(got["us"]) == digest(to_us)
    await ours.aclose()
    assert await theirs.receive_some() == b""
    await theirs.aclose()


@pytest.mark.trio
async def test_interop_stdlib_socket_in_thread() -> None:
    left, right = socket.socketpair()
    ours = TrafficStream(left)
    to_them = pseudorandom(SIZE, seed=6)
    to_us = pseudorandom(SIZE, seed=7)
    got: dict[str, str] = {}

    def thread_send() -> None:
        right.sendall(to_us)
        right.shutdown(socket.SHUT_WR)

    def thread_receive() -> None:
        hash_ = hashlib.sha256()
        while chunk := right.recv(1 << 16):
            hash_.update(chunk)
        got["them"] = hash_.hexdigest()

    async def ours_send() -> None:
        await ours.send_all(to_them)
        await ours.send_eof()

    async def ours_receive() -> None:
        got["us"] = digest(await receive_until_eof(ours))

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, thread_send)
            nursery.start_soon(trio.to_thread.run_sync, thread_receive)
            nursery.start_soon(ours_send)
            nursery.start_soon(ours_receive)
    finally:
        right.close()
    assert got["them"] == digest(to_them)
    assert got["us"] == digest(to_us)
    await ours.aclose()


# Cancellation


LOAD = 20 << 20


#: The sender pauses after every PAUSE_EVERY chunks until a receive parked
#: on the empty socket has been cancelled: so withdrawals of parked receives
#: happen on every run, beside the ones random timing provides.
PAUSE_EVERY = 8


@pytest.mark.trio
@pytest.mark.parametrize("seed", [11, 12, 13])
async def test_cancelled_receives_lose_nothing(seed: int) -> None:
    """Receives cancelled at random moments (timeouts of 0..200 us, and a
    third task cancelling their scope) while 20 MiB arrive in random-size
    chunks: the bytes received are exactly the bytes sent."""
    a, b = await tcp_pair()
    rng = random.Random(seed)
    data = pseudorandom(LOAD, seed)
    received = bytearray()
    counts = {"timeout": 0, "scope": 0, "parked": 0, "pauses": 0}
    current: list[trio.CancelScope | None] = [None]
    done = trio.Event()
    paused = trio.Event()
    resume = trio.Event()

    async def sender() -> None:
        nonlocal paused, resume
        view = memoryview(data)
        offset = chunks = 0
        while offset < len(data):
            size = rng.randint(1, 256 << 10)
            await a.send_all(view[offset : offset + size])
            offset += size
            chunks += 1
            if chunks % PAUSE_EVERY == 0:
                counts["pauses"] += 1
                paused.set()
                await resume.wait()
                resume = trio.Event()
            elif rng.random() < 0.3:
                await trio.sleep(rng.uniform(0, 300e-6))  # let the receiver park
        await a.send_eof()

    async def receiver() -> None:
        turn = 0
        while True:
            turn += 1
            scope = trio.move_on_after(rng.uniform(0, 200e-6)) if turn % 2 else trio.CancelScope()
            current[0] = scope
            chunk = None
            with scope:
                chunk = await b.receive_some()
            current[0] = None
            if scope.cancelled_caught:
                counts["timeout" if turn % 2 else "scope"] += 1
            if chunk is None:
                continue
            if not chunk:
                break
            received.extend(chunk)
        done.set()

    async def canceller() -> None:
        nonlocal paused
        while not done.is_set():
            await trio.sleep(rng.uniform(0, 200e-6))
            scope = current[0]
            if scope is not None:
                scope.cancel()

    async def unpauser() -> None:
        nonlocal paused
        while True:
            await paused.wait()
            paused = trio.Event()
            # The sender waits, the canceller sleeps: once every task is
            # blocked, the receiver is parked in the core on a socket it
            # drained (or its last completion is on its way).
            await trio.testing.wait_all_tasks_blocked()
            scope = current[0]
            if scope is not None:
                counts["parked"] += 1
                scope.cancel()
            resume.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(unpauser)
        async with trio.open_nursery() as workers:
            workers.start_soon(sender)
            workers.start_soon(receiver)
            workers.start_soon(canceller)
        nursery.cancel_scope.cancel()
    assert len(received) == len(data), counts
    assert digest(received) == digest(data)
    # The test exercised what it claims to: parked receives were cancelled.
    assert counts["pauses"] > 0
    assert counts["parked"] == counts["pauses"], counts
    await a.aclose()
    await b.aclose()


@pytest.mark.trio
@pytest.mark.parametrize("make", ["tcp", "unix"])
async def test_cancelled_send_all_then_aclose(make: str) -> None:
    a, b = await CLOGGED[make]()
    with trio.CancelScope() as scope:

        async def cancel_when_parked() -> None:
            await trio.testing.wait_all_tasks_blocked()
            scope.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(cancel_when_parked)
            await a.send_all(b"z" * (1 << 20))
    assert scope.cancelled_caught
    await a.aclose()
    await b.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await a.send_all(b"z")


@pytest.mark.trio
async def test_cancelled_send_all_raises_cancelled() -> None:
    a, b = await clogged_unix_pair()
    caught: list[BaseException] = []

    async def send() -> None:
        try:
            await a.send_all(b"z" * (1 << 20))
        except trio.Cancelled as exc:
            caught.append(exc)
            raise

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert len(caught) == 1
    await a.aclose()
    await b.aclose()


@pytest.mark.trio
async def test_cancelled_receive_then_data_arrives() -> None:
    a, b = await unix_pair()
    with trio.move_on_after(0) as scope:
        await a.receive_some()
    assert scope.cancelled_caught
    async with trio.open_nursery() as nursery:
        nursery.start_soon(a.receive_some)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    await b.send_all(b"kept")
    assert await receive_exactly(a, 4) == b"kept"
    await a.aclose()
    await b.aclose()


# aclose wakes what is parked


@pytest.mark.trio
async def test_aclose_wakes_parked_receive(kind: str) -> None:
    a, b = await PAIRS[kind]()
    results: list[BaseException] = []

    async def receive() -> None:
        try:
            await a.receive_some()
        except BaseException as exc:
            results.append(exc)

    async def closer() -> None:
        await trio.testing.wait_all_tasks_blocked()
        await a.aclose()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(receive)
        nursery.start_soon(closer)
    assert len(results) == 1
    assert isinstance(results[0], trio.ClosedResourceError)
    await b.aclose()


@pytest.mark.trio
async def test_aclose_wakes_parked_send(kind: str) -> None:
    a, b = await CLOGGED[kind]()
    results: list[BaseException] = []

    async def send() -> None:
        try:
            await a.send_all(b"s" * (1 << 20))
        except BaseException as exc:
            results.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send)
        await trio.testing.wait_all_tasks_blocked()
        await a.aclose()
    assert len(results) == 1
    assert isinstance(results[0], trio.ClosedResourceError)
    await b.aclose()


@pytest.mark.trio
async def test_aclose_wakes_parked_accept() -> None:
    listeners = await traffic.open_tcp_listeners(0, host="127.0.0.1")
    listener = listeners[0]
    results: list[BaseException] = []

    async def accept() -> None:
        try:
            await listener.accept()
        except BaseException as exc:
            results.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(accept)
        await trio.testing.wait_all_tasks_blocked()
        await listener.aclose()
    assert len(results) == 1
    assert isinstance(results[0], trio.ClosedResourceError)
    with pytest.raises(trio.ClosedResourceError):
        await listener.accept()


# Checkpoints


@pytest.mark.trio
async def test_stream_checkpoints(kind: str) -> None:
    a, b = await PAIRS[kind]()
    with trio.testing.assert_checkpoints():
        await a.send_all(b"ready")  # fast path: sent inline
    await trio.testing.wait_all_tasks_blocked()
    with trio.testing.assert_checkpoints():
        data = await b.receive_some()  # data ready (or parks: either way)
    assert data
    assert await receive_exactly(b, 5 - len(data)) == b"ready"[len(data) :]
    with trio.testing.assert_checkpoints():
        await a.wait_send_all_might_not_block()

    async def parked_receive() -> None:
        with trio.testing.assert_checkpoints():
            assert await b.receive_some() == b"later"

    async with trio.open_nursery() as nursery:
        nursery.start_soon(parked_receive)
        await trio.testing.wait_all_tasks_blocked()
        await a.send_all(b"later")
    with trio.testing.assert_checkpoints():
        await a.send_eof()
    with trio.testing.assert_checkpoints():
        await a.send_eof()  # again: still a checkpoint
    with trio.testing.assert_checkpoints():
        await a.aclose()
    with trio.testing.assert_checkpoints():
        await b.aclose()


@pytest.mark.trio
async def test_receive_with_data_ready_checkpoints() -> None:
    """The inline fast path still checkpoints, and honours a pending cancel."""
    a, b = await unix_pair()
    await b.send_all(b"here")
    with trio.testing.assert_checkpoints():
        assert await receive_exactly(a, 4) == b"here"
    await b.send_all(b"kept")
    with trio.CancelScope() as scope:
        scope.cancel()
        await a.receive_some()  # cancelled before it transfers anything
    assert scope.cancelled_caught
    assert await receive_exactly(a, 4) == b"kept"
    await a.aclose()
    await b.aclose()


@pytest.mark.trio
async def test_listener_accept_checkpoints() -> None:
    listeners = await traffic.open_tcp_listeners(0, host="127.0.0.1")
    listener = listeners[0]
    client = await trio.testing.open_stream_to_socket_listener(listener)
    with trio.testing.assert_checkpoints():
        first = await listener.accept()  # pending already
    streams = [first]

    async def parked_accept() -> None:
        with trio.testing.assert_checkpoints():
            streams.append(await listener.accept())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(parked_accept)
        await trio.testing.wait_all_tasks_blocked()
        second_client = await trio.testing.open_stream_to_socket_listener(listener)
    assert len(streams) == 2
    await listener.aclose()
    for stream in (*streams, client, second_client):
        await stream.aclose()


@pytest.mark.trio
async def test_clog_helper_clogs() -> None:
    """The clogged maker really blocks: a send parks until the peer reads."""
    a, b = await unix_pair()
    written = clog(a, b)
    assert written > 0
    sent = trio.Event()

    async def send() -> None:
        await a.send_all(b"q")
        sent.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send)
        await trio.testing.wait_all_tasks_blocked()
        assert not sent.is_set()
        data = await receive_exactly(b, written + 1)
    assert sent.is_set()
    assert data[-1:] == b"q"
    await a.aclose()
    await b.aclose()
