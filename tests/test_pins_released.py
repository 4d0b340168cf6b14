"""A caller's buffer is the caller's again when its request ends.

traffic exports memory handed to a send or a receive (``ffi.from_buffer``)
only while the core may use it: right after the call returns or raises, the
caller's ``memoryview`` can be released (``view.release()`` raises
``BufferError`` while anything still exports it).  That is what keeps an
exception in a reference cycle from crashing the garbage collector (the
end-to-end programs are in ``test_pins_collected.py``).  Every layer that
takes a caller's buffer, in every outcome: done, peer reset, local close,
cancellation at the checkpoint and while parked, the core's refusal, and
bad input found before submission.

The one exception is asyncio's: a request cancelled while the core
completes it, or woken by ``aclose()``, leaves the caller's frame while the
core may still be in the system call.  There the export is held (a
``bytearray`` handed in cannot be resized) until the completion has been
collected, and the peer receives exactly what was sent.

The random-cancellation tests at the end send and receive ``memoryview``
slices under cancellation, with the collector run between rounds.
"""

from __future__ import annotations

import gc
import random
import select
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest
import trio
import trio.testing
from anyio_support import ASYNCIO_BACKENDS, BACKENDS, on_uvloop
from trio_support import digest, pseudorandom

import traffic
import traffic.anyio_backend as tab
from traffic import Octets, Traffic, TrafficStream
from traffic._traffic import lib

#: Big enough to park on clogged buffers, small enough to copy quickly.
LARGE = 4 << 20


def caller_view(size: int) -> memoryview:
    """A caller's buffer as the crash needed it: a slice of a memoryview."""
    return memoryview(bytearray(size))[1:]


def releasable(view: memoryview) -> None:
    """Release ``view``: ``BufferError`` if traffic still exports it."""
    view.release()


def locked(data: bytearray) -> bool:
    """Whether something exports ``data`` (it cannot be resized then)."""
    try:
        data.append(0)
    except BufferError:
        return True
    data.pop()
    return False


def reset(peer: socket.socket) -> None:
    """Close ``peer`` with a reset (RST), not a FIN."""
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    peer.close()


def tcp_sockets(buffer: int = 4096) -> tuple[socket.socket, socket.socket]:
    """(ours, peer): a connected TCP pair on 127.0.0.1 with small buffers,
    so that a large send parks while the peer does not read (a window of a
    few KiB also makes TCP slow: a test that moves all of a large send uses
    a larger ``buffer``)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        peer = socket.create_connection(listener.getsockname())
        ours, _ = listener.accept()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buffer)
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer)
    return ours, peer


def drain(peer: socket.socket, size: int) -> bytes:
    """Read exactly ``size`` bytes from a blocking ``peer`` (30 s at most)."""
    peer.settimeout(30)
    out = bytearray()
    while len(out) < size:
        chunk = peer.recv(min(1 << 20, size - len(out)))
        assert chunk, f"EOF after {len(out)} of {size} bytes"
        out += chunk
    return bytes(out)


# trio: TrafficStream.send_all and the primitives

TrioSend = Callable[[memoryview], Awaitable[None]]


async def trio_parked(
    send: TrioSend, view: memoryview, then: Callable[[], Any], caught: list[BaseException]
) -> None:
    """Start ``send(view)`` so that it parks (the peer reads nothing), call
    ``then()`` (sync or async) once every task is blocked; the exception
    the send ended with goes to ``caught`` (a cancellation propagates
    too)."""

    async def sender() -> None:
        try:
            await send(view)
        except BaseException as exc:
            caught.append(exc)
            raise

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender)
        await trio.testing.wait_all_tasks_blocked()
        result = then()
        if result is not None:
            await result


async def trio_parked_error(send: TrioSend, view: memoryview, then: Callable[[], Any]) -> Any:
    """:func:`trio_parked` for an outcome that is not a cancellation: the
    exception the send raised (unwrapped from the nursery's group)."""
    caught: list[BaseException] = []
    with pytest.raises(BaseException):  # noqa: B017 (checked below)
        await trio_parked(send, view, then, caught)
    assert len(caught) == 1, caught
    return caught[0]


@pytest.mark.trio
@pytest.mark.parametrize("layer", ["stream", "primitive"])
@pytest.mark.parametrize(
    "outcome", ["done", "reset", "closed", "cancelled-first", "cancelled-parked", "refused"]
)
async def test_trio_send_all_lets_go(layer: str, outcome: str) -> None:
    ours, peer = tcp_sockets()
    stream = TrafficStream(ours)
    if layer == "stream":
        send: TrioSend = stream.send_all
    else:

        async def send(view: memoryview) -> None:
            await traffic.send_all(stream._sender, view)

    view = caller_view(64 if outcome == "done" else LARGE)
    try:
        if outcome == "done":
            await send(view)
            assert drain(peer, len(view)) == bytes(len(view))
        elif outcome == "reset":
            exc = await trio_parked_error(send, view, lambda: reset(peer))
            assert isinstance(exc, trio.BrokenResourceError)
        elif outcome == "closed":
            if layer == "stream":
                exc = await trio_parked_error(send, view, stream.aclose)
            else:
                exc = await trio_parked_error(send, view, stream._sender.terminate)
            assert isinstance(exc, trio.ClosedResourceError)
        elif outcome == "cancelled-first":
            with trio.CancelScope() as scope:
                scope.cancel()
                await send(view)
            assert scope.cancelled_caught
            peer.setblocking(False)
            with pytest.raises(BlockingIOError):
                peer.recv(1)  # nothing was sent
        elif outcome == "cancelled-parked":
            caught: list[BaseException] = []
            with trio.CancelScope() as scope:
                await trio_parked(send, view, scope.cancel, caught)
            assert scope.cancelled_caught
            assert [type(exc) for exc in caught] == [trio.Cancelled]
        else:
            # The core refuses a request on a terminated transit (the
            # stream's own check, after send_eof, is not in the way).
            stream._sender.terminate()
            with pytest.raises(trio.ClosedResourceError):
                await send(view)
        releasable(view)
    finally:
        await stream.aclose()
        peer.close()


@pytest.mark.trio
@pytest.mark.parametrize(
    "outcome", ["done", "reset", "cancelled-first", "cancelled-parked", "refused"]
)
async def test_trio_recv_into_lets_go(outcome: str) -> None:
    ours, peer = tcp_sockets()
    stream = TrafficStream(ours)
    receiver = stream._receiver
    view = caller_view(4096)
    try:
        if outcome == "done":
            peer.sendall(b"hello")
            got = 0
            while got < 5:
                got += await traffic.recv_into(receiver, view[got:])
            assert bytes(view[:5]) == b"hello"
        elif outcome == "reset":

            async def receive(view: memoryview) -> None:
                await traffic.recv_into(receiver, view)

            exc = await trio_parked_error(receive, view, lambda: reset(peer))
            assert isinstance(exc, trio.BrokenResourceError)
        elif outcome == "cancelled-first":
            peer.sendall(b"kept")
            with trio.CancelScope() as scope:
                scope.cancel()
                await traffic.recv_into(receiver, view)
            assert scope.cancelled_caught
            assert await stream.receive_some() == b"kept"  # nothing was taken
        elif outcome == "cancelled-parked":
            with trio.CancelScope() as scope:

                async def receive(view: memoryview) -> None:
                    await traffic.recv_into(receiver, view)

                caught: list[BaseException] = []
                await trio_parked(receive, view, scope.cancel, caught)
            assert scope.cancelled_caught
            assert [type(exc) for exc in caught] == [trio.Cancelled]
        else:
            receiver.terminate()
            with pytest.raises(trio.ClosedResourceError):
                await traffic.recv_into(receiver, view)
        releasable(view)
    finally:
        await stream.aclose()
        peer.close()


@pytest.mark.trio
@pytest.mark.parametrize("target", ["stream", "transit"])
@pytest.mark.parametrize("outcome", ["done", "empty", "not-a-descriptor", "refused"])
async def test_trio_send_fds_lets_go(target: str, outcome: str) -> None:
    a, b = socket.socketpair()
    sender, receiver = TrafficStream(a), TrafficStream(b)
    where: Any = sender if target == "stream" else sender._sender
    try:
        with open(__file__, "rb") as passed:
            if outcome == "done":
                view = caller_view(8)
                await traffic.send_fds(where, view, [passed])
                data, fds = await traffic.receive_fds(receiver, 64, 4)
                assert data == bytes(7) and len(fds) == 1
                for fd in fds:
                    socket.close(fd)
            elif outcome == "empty":
                view = memoryview(bytearray(4))[4:]
                with pytest.raises(ValueError, match="empty"):
                    await traffic.send_fds(where, view, [passed])
            elif outcome == "not-a-descriptor":
                view = caller_view(8)
                with pytest.raises(TypeError):
                    await traffic.send_fds(where, view, ["0"])
            else:
                view = caller_view(8)
                sender._sender.terminate()
                with pytest.raises(trio.ClosedResourceError):
                    await traffic.send_fds(sender._sender, view, [passed])
            releasable(view)
    finally:
        await sender.aclose()
        await receiver.aclose()


# anyio: TrafficSocketStream.send and TrafficUNIXSocketStream.send_fds


def exports() -> dict[int, Any]:
    """The exports the running loop's (or run's) Traffic holds."""
    return tab.current_traffic().requests.exports


#: What a parked send ended with: its exception (None if it returned),
#: whether the bytearray it sent was still exported at that moment (None
#: for another kind of object), and whether the requests still held it.
Ending = tuple["BaseException | None", "bool | None", bool]


async def anyio_parked(
    stream: tab.TrafficSocketStream, item: Any, then: Callable[[], Any], endings: list[Ending]
) -> None:
    """Start ``stream.send(item)`` so that it parks, call ``then()`` (sync or
    async) once its export is held; how the send ended goes to
    ``endings`` (a cancellation propagates too)."""
    token = stream._sender._token

    def ended(exc: BaseException | None) -> None:
        held = locked(item) if isinstance(item, bytearray) else None
        endings.append((exc, held, token in exports()))

    async def sender() -> None:
        try:
            await stream.send(item)
        except BaseException as exc:
            ended(exc)
            if isinstance(exc, anyio.get_cancelled_exc_class()):
                raise
        else:
            ended(None)

    async with anyio.create_task_group() as group:
        group.start_soon(sender)
        with anyio.fail_after(10):
            while token not in exports():
                await anyio.sleep(0.001)
        result = then()
        if result is not None:
            await result


async def anyio_parked_error(
    stream: tab.TrafficSocketStream, item: Any, then: Callable[[], Any]
) -> BaseException | None:
    """:func:`anyio_parked` for an outcome that is not a cancellation: the
    exception the send raised, or None."""
    endings: list[Ending] = []
    await anyio_parked(stream, item, then, endings)
    assert len(endings) == 1, endings
    exc, _, _ = endings[0]
    return exc


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", BACKENDS)
@pytest.mark.parametrize(
    "outcome", ["done", "reset", "cancelled-first", "cancelled-parked", "refused"]
)
async def test_anyio_send_lets_go(outcome: str) -> None:
    ours, peer = tcp_sockets()
    stream = await tab.TrafficSocketStream.from_socket(ours)
    view = caller_view(64 if outcome == "done" else LARGE)
    try:
        if outcome == "done":
            await stream.send(view)
            assert drain(peer, len(view)) == bytes(len(view))
        elif outcome == "reset":
            exc = await anyio_parked_error(stream, view, lambda: reset(peer))
            assert isinstance(exc, anyio.BrokenResourceError)
        elif outcome == "cancelled-first":
            with anyio.CancelScope() as scope:
                scope.cancel()
                await stream.send(view)
            assert scope.cancelled_caught
            peer.setblocking(False)
            with pytest.raises(BlockingIOError):
                peer.recv(1)  # nothing was sent
        elif outcome == "cancelled-parked":
            endings: list[Ending] = []
            with anyio.CancelScope() as scope:
                await anyio_parked(stream, view, scope.cancel, endings)
            assert scope.cancelled_caught
            # Cancelled, or done just before the cancellation came.
            assert len(endings) == 1, endings
            exc = endings[0][0]
            assert exc is None or isinstance(exc, anyio.get_cancelled_exc_class())
            # The export may be held until the completion is collected (the
            # core was in the system call): the next send settles it.
            with anyio.CancelScope(shield=True):
                await stream._parking.settle(stream._sender)
        else:
            stream._sender.terminate()  # the core refuses from now on
            with pytest.raises(anyio.ClosedResourceError):
                await stream.send(view)
        releasable(view)
    finally:
        await stream.aclose()
        peer.close()


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", BACKENDS)
@pytest.mark.parametrize("outcome", ["done", "empty", "not-a-descriptor", "refused"])
async def test_anyio_send_fds_lets_go(outcome: str) -> None:
    a, b = socket.socketpair()
    sender = await tab.TrafficUNIXSocketStream.from_socket(a)
    receiver = await tab.TrafficUNIXSocketStream.from_socket(b)
    try:
        with open(__file__, "rb") as passed:
            if outcome == "done":
                view = caller_view(8)
                await sender.send_fds(view, [passed])
                data, fds = await receiver.receive_fds(64, 4)
                assert data == bytes(7) and len(fds) == 1
                for fd in fds:
                    socket.close(fd)
            elif outcome == "empty":
                view = memoryview(bytearray(4))[4:]
                with pytest.raises(ValueError, match="empty"):
                    await sender.send_fds(view, [passed])
            elif outcome == "not-a-descriptor":
                view = caller_view(8)
                with pytest.raises(TypeError):
                    await sender.send_fds(view, ["0"])  # type: ignore[list-item]
            else:
                view = caller_view(8)
                sender._sender.terminate()
                with pytest.raises(anyio.ClosedResourceError):
                    await sender.send_fds(view, [passed])
            releasable(view)
    finally:
        await sender.aclose()
        await receiver.aclose()


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ASYNCIO_BACKENDS)
async def test_asyncio_cancelled_while_completing_holds_the_export() -> None:
    """A send cancelled after the core completed it, before its completion
    was collected: the task leaves with the cancellation while the core
    still owns the request.  The caller's bytearray stays exported (it
    cannot be resized) until the stream's next send has settled the
    completion; the peer receives exactly what was sent, once."""
    ours, peer = tcp_sockets(buffer=65536)
    stream = await tab.TrafficSocketStream.from_socket(ours)
    data = bytearray(pseudorandom(LARGE, 7))
    token = stream._sender._token
    completion_fd = tab.current_traffic().completion_fileno()
    endings: list[Ending] = []
    try:

        def complete_then_cancel() -> None:
            # No await from here on: the loop cannot collect meanwhile.
            assert drain(peer, len(data)) == bytes(data)  # the core sent it all
            assert select.select([completion_fd], [], [], 10)[0], "no completion"
            scope.cancel()

        with anyio.CancelScope() as scope:
            await anyio_parked(stream, data, complete_then_cancel, endings)
        [(exc, held, in_requests)] = endings
        # Exported exactly while the requests hold the request.
        assert held is in_requests
        if exc is None:
            # The completion was delivered before the cancellation came
            # (uvloop can run I/O callbacks first): the send returned.
            assert not held
        else:
            assert isinstance(exc, anyio.get_cancelled_exc_class())
            if not on_uvloop():
                # asyncio's loop runs the cancelled task's step before the
                # reader that collects: the core still owned the request
                # when the task left.  (uvloop may collect first; then
                # the send completed and the cancellation still propagates.)
                assert held
        assert locked(data) == (token in exports())
        await stream.send(b"next")
        assert not locked(data)
        assert token not in exports()
        assert drain(peer, 4) == b"next"
    finally:
        await stream.aclose()
        peer.close()


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", BACKENDS)
async def test_anyio_send_woken_by_aclose_lets_go_once_collected() -> None:
    """A send parked when another task closes the stream: it raises
    ClosedResourceError at once; the caller's bytearray stays exported
    while the core still owns the request, and is released once its
    completion is collected (on trio, before the send even returns)."""
    ours, peer = tcp_sockets()
    stream = await tab.TrafficSocketStream.from_socket(ours)
    data = bytearray(LARGE)
    token = stream._sender._token
    requests = tab.current_traffic().requests
    try:
        endings: list[Ending] = []
        await anyio_parked(stream, data, stream.aclose, endings)
        [(exc, held, in_requests)] = endings
        assert isinstance(exc, anyio.ClosedResourceError)
        assert held is in_requests
        assert locked(data) == (token in requests.exports)
        with anyio.fail_after(10):
            while token in requests.exports:
                await anyio.sleep(0.001)
        assert not locked(data)
    finally:
        await stream.aclose()
        peer.close()


# The synchronous cycle's resources, and a threaded Traffic's own requests


def test_synchronous_acquire_lets_go() -> None:
    """A resource is exported while the core holds it: released when the
    cycle reports its end, and at once when the core refuses it (busy)."""
    traffic_ = Traffic()
    try:
        ours, peer = socket.socketpair()
        inp, out = Octets.wrap(ours)
        traffic_.acquire(inp)
        traffic_.acquire(out)
        held = caller_view(16)
        out.acquire(held)
        refused = caller_view(16)
        with pytest.raises(BufferError, match="not exhausted"):
            out.acquire(refused)
        releasable(refused)
        while not out.exhausted:
            with traffic_.cycle(1):
                for _ in traffic_.transfers():
                    pass
        releasable(held)
        assert drain(peer, 15) == bytes(15)

        (fds_in, fds_out), (other_in, other_out) = traffic.Descriptors.socketpair()
        for transit in (fds_in, fds_out, other_in, other_out):
            traffic_.acquire(transit)
        message = caller_view(8)
        with open(__file__, "rb") as passed:
            fds_out.acquire((message, [passed.fileno()]))
            refused = caller_view(8)
            with pytest.raises(BufferError):
                fds_out.acquire((refused, [passed.fileno()]))
            releasable(refused)
        traffic_.close()
        releasable(message)  # the Traffic closed with the resource held
        peer.close()
    finally:
        traffic_.close()


def test_threaded_requests_let_go() -> None:
    """``Traffic.request``: an inline result, a refusal, a completion, a
    withdrawal and a close each leave the caller's memory released."""
    traffic_ = Traffic()
    traffic_.start()
    try:
        ours, peer = socket.socketpair()
        inp, out = Octets.wrap(ours)
        traffic_.acquire(inp)
        traffic_.acquire(out)
        done = caller_view(9)
        assert traffic_.request(out, done)[0] == lib.TR_DONE
        releasable(done)
        assert drain(peer, 8) == bytes(8)

        waiting = caller_view(64)
        assert traffic_.request(inp, waiting)[0] == lib.TR_PENDING
        peer.sendall(b"x")
        fd = traffic_.completion_fileno()
        collected: list[Any] = []
        while not collected:
            assert select.select([fd], [], [], 10)[0]
            collected += traffic_.collect()
        releasable(waiting)

        withdrawn = caller_view(64)
        assert traffic_.request(inp, withdrawn)[0] == lib.TR_PENDING
        assert traffic_.withdraw(inp)[0] == lib.TR_WITHDRAWN
        releasable(withdrawn)

        at_close = caller_view(64)
        assert traffic_.request(inp, at_close)[0] == lib.TR_PENDING
        traffic_.close()
        releasable(at_close)

        refused = caller_view(8)
        with pytest.raises(traffic.TransitClosedError):
            traffic_.request(out, refused)
        releasable(refused)
        peer.close()
    finally:
        traffic_.close()


# Random cancellation with memoryview slices, the collector between rounds

ROUNDS = 6


@pytest.mark.trio
@pytest.mark.parametrize("seed", [21, 22])
async def test_trio_cancelled_memoryview_sends_and_receives(seed: int) -> None:
    """Sends of memoryview slices cancelled at random moments: what the
    peer receives is a prefix of what was offered and holds every send
    that returned; receives into a memoryview slice cancelled at random
    lose nothing.  The collector runs between rounds, with the
    cancellations' exceptions kept in reference cycles until then."""
    rng = random.Random(seed)
    graveyard: list[Any] = []
    for round_ in range(ROUNDS):
        payload = pseudorandom(128 << 10, seed * 100 + round_)
        await trio_round(rng, payload, graveyard, stalled=round_ == ROUNDS - 1)
        gc.collect()
    assert graveyard, "no send was cancelled: the test did not test"
    graveyard.clear()
    gc.collect()


async def trio_round(
    rng: random.Random, payload: bytes, graveyard: list[Any], *, stalled: bool = False
) -> None:
    """One connection of :func:`test_trio_cancelled_memoryview_sends_and_receives`.

    Whether a send with a random deadline of a few hundred microseconds
    parks long enough to be cancelled depends on the machine's speed; a
    ``stalled`` round makes sure one is: its first send offers all of the
    payload (more than the two socket buffers hold) while the receiver
    waits, and is cancelled after 50 ms."""
    ours, peer = tcp_sockets(buffer=16384)
    sender, receiver = TrafficStream(ours), TrafficStream(peer)
    offered = memoryview(bytearray(payload))[1:]
    returned = 0
    received = bytearray()
    into = memoryview(bytearray(70000))[3:]
    receiver_may_start = trio.Event()
    if not stalled:
        receiver_may_start.set()

    async def send_until_cancelled() -> None:
        nonlocal returned
        offset = 0
        try:
            while offset < len(offered):
                size = len(offered) if stalled else rng.randint(1, 64 << 10)
                with trio.move_on_after(0.05 if stalled else rng.uniform(0, 300e-6)) as scope:
                    try:
                        await sender.send_all(offered[offset : offset + size])
                    except trio.Cancelled as exc:
                        graveyard.append([exc, graveyard])  # a cycle
                        raise
                if scope.cancelled_caught:
                    break  # part of it may have gone: the stream is done
                offset = min(offset + size, len(offered))
                returned = offset
        finally:
            receiver_may_start.set()
            await sender.aclose()  # the receiver's EOF

    async def receive_to_eof() -> None:
        await receiver_may_start.wait()
        while True:
            with trio.move_on_after(rng.uniform(0, 300e-6)):
                n = await traffic.recv_into(receiver._receiver, into)
                if n == 0:
                    return
                received.extend(into[:n])

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_until_cancelled)
            nursery.start_soon(receive_to_eof)
    assert len(received) >= returned
    assert digest(received) == digest(offered[: len(received)])
    await receiver.aclose()
    offered.release()
    into.release()


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", BACKENDS)
@pytest.mark.parametrize("seed", [31])
async def test_anyio_cancelled_memoryview_sends(seed: int) -> None:
    """anyio's ``send`` of memoryview slices cancelled at random moments, a
    stdlib peer reading in a thread: a prefix of what was offered arrives,
    holding every send that returned; the collector runs between rounds.
    The last round is stalled, as in the trio test above: its first send
    offers all of the payload before the peer reads, and is cancelled."""
    rng = random.Random(seed)
    graveyard: list[Any] = []
    for round_ in range(ROUNDS):
        stalled = round_ == ROUNDS - 1
        payload = pseudorandom(128 << 10, seed * 100 + round_)
        ours, peer = tcp_sockets(buffer=16384)
        stream = await tab.TrafficSocketStream.from_socket(ours)
        offered = memoryview(bytearray(payload))[1:]
        returned = 0
        received = bytearray()

        def read_to_eof(peer: socket.socket = peer, received: bytearray = received) -> None:
            peer.settimeout(30)
            while chunk := peer.recv(1 << 20):
                received.extend(chunk)

        async with anyio.create_task_group() as group:
            if not stalled:
                group.start_soon(anyio.to_thread.run_sync, read_to_eof)
            offset = 0
            while offset < len(offered):
                size = len(offered) if stalled else rng.randint(1, 64 << 10)
                with anyio.move_on_after(0.05 if stalled else rng.uniform(0, 300e-6)) as scope:
                    try:
                        await stream.send(offered[offset : offset + size])
                    except anyio.get_cancelled_exc_class() as exc:
                        graveyard.append([exc, graveyard])  # a cycle
                        raise
                if stalled:
                    stalled = False
                    group.start_soon(anyio.to_thread.run_sync, read_to_eof)
                if scope.cancelled_caught:
                    break
                offset = min(offset + size, len(offered))
                returned = offset
            await stream.aclose()
        peer.close()
        assert len(received) >= returned
        assert bytes(received) == bytes(offered[: len(received)])
        # Released once the stream's requests have settled (aclose above).
        with anyio.fail_after(10):
            while True:
                try:
                    offered.release()
                    break
                except BufferError:
                    await anyio.sleep(0.001)
        gc.collect()
    assert graveyard, "no send was cancelled: the test did not test"
    graveyard.clear()
    gc.collect()
