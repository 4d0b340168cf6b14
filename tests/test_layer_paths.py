"""The trio and anyio layers on paths the rest of the suite never entered.

Each test here goes where a planted bug once survived every other test
(issue 28), and proves it got there: by a counter of the core's
(``paths_support.stats``), or by the state it checked before the step
that matters.

- A file send cancelled while the core is inside its ``sendfile`` loop:
  the abort loses the race (``TR_COMPLETING``) and the completion that
  follows must settle the file's position at exactly what the peer got.
- A listener closed with accepted connections queued and unclaimed, and an
  accept whose transfer completed before its listener closed but whose
  task resumes after: every descriptor closed (the peers see their end).
- Who ended a transit, seen as each layer shows it: after the owner's end
  a request is refused as closed (``ClosedResourceError``); after the
  kernel's it fails as the kernel said (``BrokenResourceError`` from the
  errno, or the end of the stream), again and again; an owner's end after
  the kernel's makes it closed; an owner's end that met a system call in
  flight is the owner's too.

The cancellations here land at random moments; what is asserted holds for
every moment.  The cycle thread runs at the idle policy for them: a task's
wake-up (its deadline) then preempts the cycle thread at once, wherever it
is, instead of waiting for the end of its time slice, which with the normal
policies is mostly spent inside the transfer loop that the cancellation was
meant to hit.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import random
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import trio
import trio.testing
from anyio_support import RUN_BACKENDS
from paths_support import Drain, big_file_at, ended, stats
from trio_support import pseudorandom

import traffic
from traffic import anyio_backend, trio_integration
from traffic._traffic import lib

MiB = 1 << 20

#: The races below: tried until the core reports this many aborts (or
#: terminations) that met a system call in flight, at least MIN_TRIES
#: times, at most MAX_TRIES times (each a few milliseconds).
WANTED = 5
MIN_TRIES = 20
MAX_TRIES = 400


@pytest.fixture
def idle_cycle(monkeypatch: pytest.MonkeyPatch) -> None:
    """The runs' cycle threads at the idle policy (see the module's text)."""
    monkeypatch.setattr(trio_integration, "CYCLE_POLICY", "idle")
    monkeypatch.setattr(anyio_backend, "CYCLE_POLICY", "idle")


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """32 MiB to send (what it holds does not matter: counts are compared)."""
    return big_file_at(tmp_path_factory.mktemp("paths"))


def reset(sock: socket.socket) -> None:
    """Close ``sock`` with a reset (SO_LINGER 0), not a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        ours = socket.create_connection(server.getsockname())
        peer, _ = server.accept()
    return ours, peer


def cause_errno(caught: pytest.ExceptionInfo[BaseException]) -> int | None:
    cause = caught.value.__cause__
    assert isinstance(cause, OSError), f"{caught.value!r} has no OSError cause"
    return cause.errno


# A file send cancelled inside sendfile


def test_trio_send_file_cancelled_inside_sendfile(idle_cycle: None, big_file: Path) -> None:
    """trio: the file's position after a cancelled send_file is what the
    peer received, also when the abort found the core inside its sendfile
    loop (TR_COMPLETING: the completion, withdrawn or done, says how much)."""

    async def main() -> None:
        rng = random.Random(2801)
        tries = 0
        with Drain() as drain, open(big_file, "rb") as f:
            core = trio_integration.current_traffic()
            while tries < MAX_TRIES and (
                tries < MIN_TRIES or stats(core)["withdraw_in_file_call"] < WANTED
            ):
                tries += 1
                stream = traffic.TrafficStream(drain.connect())
                start = rng.randrange(0, MiB)
                f.seek(start)
                with trio.move_on_after(rng.uniform(0, 0.004)):
                    await stream.send_file(f)
                moved = f.tell() - start
                await stream.aclose()
                got = drain.received()
                assert got == moved, f"try {tries}: the peer got {got}, the position says {moved}"
            counts = stats(core)
        print(f"{tries} tries: {counts}")
        assert counts["withdraw_in_file_call"] > 0, (
            f"no abort met the core inside sendfile in {tries} tries: {counts}"
        )

    trio.run(main)


def test_asyncio_send_file_cancelled_inside_sendfile(idle_cycle: None, big_file: Path) -> None:
    """asyncio: as on trio (the cancellation waits, shielded, for the
    completion that follows a lost abort, and settles the position)."""

    async def main() -> None:
        rng = random.Random(2802)
        tries = 0
        with Drain() as drain, open(big_file, "rb") as f:
            core = anyio_backend.current_traffic()
            while tries < MAX_TRIES and (
                tries < MIN_TRIES or stats(core)["withdraw_in_file_call"] < WANTED
            ):
                tries += 1
                stream = await anyio_backend.TrafficUNIXSocketStream.from_socket(drain.connect())
                start = rng.randrange(0, MiB)
                f.seek(start)
                with anyio.move_on_after(rng.uniform(0, 0.004)):
                    await stream.send_file(f)
                moved = f.tell() - start
                await stream.aclose()
                got = drain.received()
                assert got == moved, f"try {tries}: the peer got {got}, the position says {moved}"
            counts = stats(core)
        print(f"{tries} tries: {counts}")
        assert counts["withdraw_in_file_call"] > 0, (
            f"no abort met the core inside sendfile in {tries} tries: {counts}"
        )

    anyio.run(main, backend="asyncio")


# Listeners closed with connections the core accepted


def wait_completed(transit: traffic.Transit) -> None:
    """Wait, without a checkpoint (nothing of the run moves meanwhile),
    until the core has completed the transit's pending request."""
    deadline = time.monotonic() + 10
    while transit._status()[0] & lib.TR_ST_REQUEST:
        assert time.monotonic() < deadline, "the core never accepted"
        time.sleep(0.001)


@contextlib.contextmanager
def connected(address: Any, count: int) -> Iterator[list[socket.socket]]:
    """``count`` clients connected to ``address`` (the kernel completes the
    handshakes: they wait in the listener's backlog), closed afterwards."""
    clients: list[socket.socket] = []
    try:
        clients += [socket.create_connection(address) for _ in range(count)]
        yield clients
    finally:
        for client in clients:
            client.close()


def test_trio_listener_closed_with_connections_queued() -> None:
    """The core accepts the backlog in one batch; one connection is handed
    out, the rest wait in the listener's queue, and aclose() closes them."""

    async def main() -> None:
        server = socket.create_server(("127.0.0.1", 0))
        address = server.getsockname()
        listener = traffic.TrafficListener(server)
        with connected(address, 4) as clients:
            try:
                stream = await listener.accept()
                queued = len(listener._accepted._queue)
                assert queued == 3, f"{queued} connections queued, not 3"
            finally:
                await listener.aclose()
            assert ended(clients[1:]) == [True] * 3
            await stream.aclose()
            assert ended(clients[:1]) == [True]

    trio.run(main)


def test_trio_accept_completed_before_its_listener_closed() -> None:
    """The core completes a parked accept; the listener closes before the
    accepting task resumes: the task gets ClosedResourceError and the
    descriptors the core accepted for it are closed."""

    async def main() -> None:
        server = socket.create_server(("127.0.0.1", 0))
        address = server.getsockname()
        listener = traffic.TrafficListener(server)
        with contextlib.ExitStack() as stack:
            async with trio.open_nursery() as nursery:

                async def accept() -> None:
                    with pytest.raises(trio.ClosedResourceError):
                        await listener.accept()

                nursery.start_soon(accept)
                await trio.testing.wait_all_tasks_blocked()
                try:
                    assert listener._transit._status()[0] & lib.TR_ST_REQUEST  # parked
                    clients = stack.enter_context(connected(address, 3))
                    wait_completed(listener._transit)  # done; its task not rescheduled yet
                    assert listener._accepted.descriptors[0] > 0  # with a connection
                finally:
                    await listener.aclose()
            # The accepting task is done: what it was given is closed.
            assert ended(clients) == [True] * 3

    trio.run(main)


def test_asyncio_listener_closed_with_connections_queued() -> None:
    async def main() -> None:
        server = socket.create_server(("127.0.0.1", 0))
        address = server.getsockname()
        listener = await anyio_backend.TrafficSocketListener.from_socket(server)
        with connected(address, 4) as clients:
            try:
                stream = await listener.accept()
                queued = len(listener._accepted._queue)
                assert queued == 3, f"{queued} connections queued, not 3"
            finally:
                await listener.aclose()
            assert ended(clients[1:]) == [True] * 3
            await stream.aclose()
            assert ended(clients[:1]) == [True]

    anyio.run(main, backend="asyncio")


def test_asyncio_accept_completed_before_its_listener_closed() -> None:
    """As on trio: the loop collects the completion after the close (the
    close must not answer the waiting accept with a closed outcome of its
    own and drop the core's, which carries the descriptors)."""

    async def main() -> None:
        server = socket.create_server(("127.0.0.1", 0))
        address = server.getsockname()
        listener = await anyio_backend.TrafficSocketListener.from_socket(server)
        with contextlib.ExitStack() as stack:
            async with anyio.create_task_group() as group:

                async def accept() -> None:
                    with pytest.raises(anyio.ClosedResourceError):
                        await listener.accept()

                group.start_soon(accept)
                await anyio.wait_all_tasks_blocked()
                try:
                    assert listener._transit._status()[0] & lib.TR_ST_REQUEST  # parked
                    clients = stack.enter_context(connected(address, 3))
                    wait_completed(listener._transit)  # done; not collected by the loop yet
                    assert listener._accepted.descriptors[0] > 0  # with a connection
                finally:
                    await listener.aclose()
            assert ended(clients) == [True] * 3

    anyio.run(main, backend="asyncio")


def test_asyncio_receive_fds_completed_before_the_stream_closed() -> None:
    """The same on a stream: descriptors the core received for a parked
    receive_fds before the stream closed are closed (the pipe whose read
    end they carry breaks once every copy is gone)."""

    async def main() -> None:
        ours, peer = socket.socketpair()
        stream = await anyio_backend.TrafficUNIXSocketStream.from_socket(ours)
        r, w = os.pipe()
        try:
            async with anyio.create_task_group() as group:

                async def receive() -> None:
                    with pytest.raises(anyio.ClosedResourceError):
                        await stream.receive_fds(16, 4)

                group.start_soon(receive)
                await anyio.wait_all_tasks_blocked()
                try:
                    receiver = stream._receiver
                    assert receiver._status()[0] & lib.TR_ST_REQUEST  # parked in the core
                    socket.send_fds(peer, [b"x"], [r])
                    os.close(r)
                    wait_completed(receiver)  # received; not collected by the loop yet
                finally:
                    await stream.aclose()
            with pytest.raises(BrokenPipeError):
                os.write(w, b"x")  # no reader left: the received copy was closed
        finally:
            os.close(w)
            peer.close()

    anyio.run(main, backend="asyncio")


def test_asyncio_send_file_completed_before_the_stream_closed(tmp_path: Path) -> None:
    """A send_file the core completed before the stream closed returns what
    it sent, and the file's position is after it (not where it started)."""
    data = pseudorandom(2 * MiB, 2803)
    path = tmp_path / "f"
    path.write_bytes(data)

    async def main() -> None:
        ours, peer = socket.socketpair()
        stream = await anyio_backend.TrafficUNIXSocketStream.from_socket(ours)
        result: list[int] = []
        try:
            with open(path, "rb") as f:
                async with anyio.create_task_group() as group:

                    async def send() -> None:
                        result.append(await stream.send_file(f))

                    group.start_soon(send)
                    await anyio.wait_all_tasks_blocked()
                    got = bytearray()
                    try:
                        sender = stream._sender
                        assert sender._status()[0] & lib.TR_ST_REQUEST  # parked in the core
                        peer.settimeout(10)
                        while len(got) < len(data):
                            got += peer.recv(MiB)
                        wait_completed(sender)  # sent; not collected by the loop yet
                    finally:
                        await stream.aclose()
                assert result == [len(data)]
                assert f.tell() == len(data)
            assert bytes(got) == data
        finally:
            peer.close()

    anyio.run(main, backend="asyncio")


# Who ended a transit, as each layer shows it


async def expect_closed(operation: Any, closed: type[BaseException]) -> None:
    with pytest.raises(closed):
        await operation()


async def expect_broken(operation: Any, broken: type[BaseException], *errnos: int) -> int:
    """The operation fails as broken, from an OSError with one of ``errnos``."""
    with pytest.raises(broken) as caught:
        await operation()
    error = cause_errno(caught)
    assert error in errnos, f"{caught.value!r} from errno {error}, not one of {errnos}"
    assert error is not None
    return error


def test_trio_who_ended_a_transit() -> None:
    """trio's primitives: closed after the owner's end; the kernel's
    outcome and errno after the kernel's, every time; closed once the
    owner ends it too.  (trio's streams keep a flag of their own for the
    owner's end; their receive after a reset reaches the core.)"""

    async def main() -> None:
        core = trio_integration.current_traffic()
        buffer = bytearray(8)

        def pair() -> tuple[traffic.Octets, traffic.Octets, socket.socket]:
            ours, peer = tcp_pair()
            receiver, sender = traffic.Octets.wrap(ours)
            core.acquire(receiver)
            core.acquire(sender)
            return receiver, sender, peer

        def receive(receiver: traffic.Octets) -> Any:
            return lambda: traffic.recv_into(receiver, buffer)

        def send(sender: traffic.Octets) -> Any:
            return lambda: traffic.send_all(sender, b"x" * 100)

        closed = trio.ClosedResourceError
        broken = trio.BrokenResourceError

        # The owner's end.
        receiver, sender, peer = pair()
        receiver.terminate()
        sender.terminate()
        await expect_closed(receive(receiver), closed)
        await expect_closed(send(sender), closed)
        peer.close()

        # The kernel's (a reset), then the owner's.
        receiver, sender, peer = pair()
        reset(peer)
        for _ in range(3):
            await expect_broken(receive(receiver), broken, errno.ECONNRESET)
        error = await expect_broken(send(sender), broken, errno.EPIPE, errno.ECONNRESET)
        for _ in range(3):
            await expect_broken(send(sender), broken, error)
        receiver.terminate()
        sender.terminate()
        await expect_closed(receive(receiver), closed)
        await expect_closed(send(sender), closed)

        # The kernel's (the end of the stream), then the owner's.
        receiver, sender, peer = pair()
        peer.shutdown(socket.SHUT_WR)
        for _ in range(3):
            assert await traffic.recv_into(receiver, buffer) == 0
        receiver.terminate()
        await expect_closed(receive(receiver), closed)
        sender.terminate()
        peer.close()

        # A stream's receive after a reset.
        ours, peer = tcp_pair()
        stream = traffic.TrafficStream(ours)
        reset(peer)
        for _ in range(3):
            await expect_broken(stream.receive_some, broken, errno.ECONNRESET)
        await stream.aclose()
        await expect_closed(stream.receive_some, closed)

    trio.run(main)


@pytest.mark.parametrize("backend", RUN_BACKENDS)
def test_anyio_who_ended_a_transit(backend: tuple[str, dict[str, Any]]) -> None:
    """anyio's streams: a send after send_eof() (the owner's end of the
    sending direction) is refused by the core as closed; after a reset,
    receives and sends fail as broken from the kernel's errno, every time;
    send_eof() after the kernel's end makes the sender closed."""

    async def main() -> None:
        closed = anyio.ClosedResourceError
        broken = anyio.BrokenResourceError

        async def pair() -> tuple[anyio_backend.TrafficSocketStream, socket.socket]:
            ours, peer = tcp_pair()
            return await anyio_backend.TrafficSocketStream.from_socket(ours), peer

        def send(stream: anyio_backend.TrafficSocketStream) -> Any:
            return lambda: stream.send(b"x" * 100)

        # The owner's end.
        stream, peer = await pair()
        await stream.send_eof()
        await expect_closed(send(stream), closed)
        assert peer.recv(1) == b""
        await stream.aclose()
        peer.close()

        # The kernel's (a reset), then the owner's.
        stream, peer = await pair()
        reset(peer)
        for _ in range(3):
            await expect_broken(stream.receive, broken, errno.ECONNRESET)
        error = await expect_broken(send(stream), broken, errno.EPIPE, errno.ECONNRESET)
        for _ in range(3):
            await expect_broken(send(stream), broken, error)
        await stream.send_eof()
        await expect_closed(send(stream), closed)
        await stream.aclose()

        # The kernel's (the end of the stream).
        stream, peer = await pair()
        peer.shutdown(socket.SHUT_WR)
        for _ in range(3):
            with pytest.raises(anyio.EndOfStream):
                await stream.receive()
        await stream.aclose()
        peer.close()

    anyio.run(main, backend=backend[0], backend_options=backend[1])


async def send(transit: traffic.Octets, file: Any) -> None:
    """send_file, which the owner's end may interrupt (closed)."""
    with contextlib.suppress(trio.ClosedResourceError):
        await traffic.send_file(transit, file)


def test_trio_owners_end_during_sendfile_is_the_owners(idle_cycle: None, big_file: Path) -> None:
    """trio: the owner terminates a transit whose send_file the core is
    inside: the send ends as closed (or done, if it finished first), the
    file's position is what the peer got, and the next request is refused
    as closed (the owner's end, finished by the cycle thread)."""

    async def main() -> None:
        rng = random.Random(2810)
        core = trio_integration.current_traffic()
        tries = 0
        with Drain() as drain, open(big_file, "rb") as f:
            while tries < MAX_TRIES and (tries < MIN_TRIES or stats(core)["end_settled"] < WANTED):
                tries += 1
                receiver, sender = traffic.Octets.wrap(drain.connect())
                core.acquire(sender)
                start = rng.randrange(0, MiB)
                f.seek(start)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(send, sender, f)
                    await trio.sleep(rng.uniform(0, 0.004))
                    sender.terminate()
                await expect_closed(
                    functools.partial(traffic.send_all, sender, b"x"), trio.ClosedResourceError
                )
                assert drain.received() == f.tell() - start
                receiver.terminate()
            counts = stats(core)
        print(f"{tries} tries: {counts}")
        assert counts["end_settled"] > 0, f"no termination met sendfile in {tries} tries: {counts}"

    trio.run(main)
