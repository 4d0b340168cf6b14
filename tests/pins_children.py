"""The child programs of ``test_pins_collected.py``; it holds no tests.

``python tests/pins_children.py LAYER [BACKEND OPTIONS]`` runs one layer's
program: ``trio-stream``, ``trio-primitives``, ``anyio`` (``BACKEND`` is
anyio's backend name, ``OPTIONS`` its ``backend_options`` as JSON) or
``sync``.  Not named ``test_*``, so pytest does not collect it; it imports
``conftest`` and ``trio_support`` as the tests do (its directory is first
on ``sys.path``).

Every case hands traffic the caller's buffer as a slice of a memoryview,
makes the operation raise, puts the exception in a reference cycle
(:func:`trap`), drops every reference of its own to the view and the
exception, and collects.  The traceback's frames hold the view and whatever
traffic made of it, so only the collector frees them, in an order of its
choosing: if traffic still holds an export of the caller's memoryview then,
the collector's clearing of the memoryview fails ("memoryview has 1 exported
buffer") and the process crashes (CPython gh-77894).

Output: the first line names the traffic imported; each layer's program
runs twice, a warm-up (the process-wide resources of libkqueue and libuv,
the imports) and the run measured, separated by ``warm-up done``; every
case prints ``LAYER CASE: EXCEPTION`` (the exception's name, or ``nothing
raised``) after its collection, so a crashed child's last line names the
case before the one that crashed it.  The last line compares the
descriptors and the core's live objects with the baseline taken after the
warm-up; the child exits 1 unless both are back.
"""

from __future__ import annotations

import gc
import json
import os
import socket
import struct
import sys
import tempfile
from array import array
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any

from trio_support import CLOG_BUFFER

import traffic
from conftest import open_fds, run_until, settle

print(f"traffic {traffic.__file__}", flush=True)

#: A send bigger than any clogged socket's buffers: it parks.
CHUNK = 1 << 20

#: Sends repeated until a reset peer's error comes back (the first usually does).
ATTEMPTS = 100

#: Seconds a call waits, parked, before ``move_on_after`` cancels it.
PARKED = 0.1

#: A descriptor number that is not open, below the 0x7FFFFFFF the Python
#: side refuses: only the core finds it out, when it duplicates it.
NOT_OPEN = 1_000_000

NOTHING = "nothing raised"

#: An operation on the caller's buffer.
Call = Callable[[memoryview], Awaitable[object]]


def view_of(size: int = CHUNK) -> memoryview:
    """The caller's buffer: a memoryview slice (``size`` bytes) of a bytearray."""
    return memoryview(bytearray(size + 1))[1:]


def empty_view() -> memoryview:
    """An empty memoryview slice: a message ``send_fds`` refuses."""
    return memoryview(bytearray(4))[4:]


def trap(exc: BaseException) -> None:
    """Put ``exc`` in a reference cycle: it, its traceback and the
    traceback's frames (the view and traffic's pin in their locals) are
    freed only by the collector."""
    exc.cycle = [exc]  # type: ignore[attr-defined]


def report(layer: str, case: str, seen: str) -> None:
    """Collect the case's cycle now, then say it survived."""
    gc.collect()
    print(f"{layer} {case}: {seen}", flush=True)


def tcp_socketpair() -> tuple[socket.socket, socket.socket]:
    """A connected TCP pair on 127.0.0.1: (accepted, connecting)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    return server, client


def reset(peer: socket.socket) -> None:
    """Close ``peer`` with an RST (TCP; an AF_UNIX peer just closes)."""
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    peer.close()


def small_buffers(ours: Any, peer: socket.socket) -> None:
    """Shrink the buffers towards a peer that never reads: a :data:`CHUNK`
    send parks."""
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, CLOG_BUFFER)
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, CLOG_BUFFER)


def shrink(transit: traffic.Octets, peer: socket.socket) -> None:
    """:func:`small_buffers` for a bare transit's socket."""
    with socket.socket(fileno=transit.fileno()) as raw:  # for setsockopt only
        small_buffers(raw, peer)
        raw.detach()


@contextmanager
def null_device() -> Iterator[int]:
    """A descriptor to send, closed afterwards."""
    fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)


# The cases, on trio's or anyio's primitives


@dataclass
class Loop:
    """What the cases need of trio or anyio."""

    checkpoint: Callable[[], Awaitable[None]]
    task_group: Callable[[], Any]
    all_blocked: Callable[[], Awaitable[None]]
    cancel_scope: Callable[[], AbstractContextManager[Any]]
    move_on_after: Callable[[float], AbstractContextManager[Any]]

    async def report(self, layer: str, case: str, seen: str) -> None:
        # trio holds the outcome it resumed the task with (a Cancelled,
        # in the cancelled cases) until the task's next step.
        await self.checkpoint()
        report(layer, case, seen)


async def caught(call: Call, view: memoryview, attempts: int = 1) -> str:
    """``call(view)`` (``attempts`` times, until it raises); the name of the
    exception caught, trapped in a cycle."""
    try:
        for _ in range(attempts):
            await call(view)
    except Exception as exc:
        trap(exc)
        return type(exc).__name__
    finally:
        del view
    return NOTHING


async def cancelled(call: Call, view: memoryview, scope: AbstractContextManager[Any]) -> str:
    """``call(view)`` in ``scope``; the cancellation is trapped in a cycle
    and goes on to the scope."""
    seen = NOTHING
    with scope:
        try:
            await call(view)
        except BaseException as exc:
            trap(exc)
            seen = type(exc).__name__
            raise
        finally:
            del view
    return seen


def cancelled_first(loop: Loop) -> AbstractContextManager[Any]:
    scope = loop.cancel_scope()
    scope.cancel()  # type: ignore[attr-defined]
    return scope


async def cases(
    loop: Loop,
    layer: str,
    make: Callable[[], Awaitable[tuple[Any, socket.socket]]],
    call: Callable[[Any], Call],
    close: Callable[[Any], Awaitable[object]],
    end: Callable[[Any], Awaitable[object]],
) -> None:
    """The cases of an operation on ``call(target)``, each on a target
    ``make()`` gives with its stdlib peer: the peer reset; ``close(target)``
    from another task while the call is parked; cancelled at its checkpoint
    and while parked; and after ``end(target)`` (send_eof, terminate)."""
    target, peer = await make()
    reset(peer)
    await loop.report(layer, "reset", await caught(call(target), view_of(), ATTEMPTS))
    await close(target)

    target, peer = await make()
    seen: list[str] = []

    async def parked() -> None:
        seen.append(await caught(call(target), view_of()))

    async with loop.task_group() as group:
        group.start_soon(parked)
        await loop.all_blocked()
        await close(target)
    await loop.report(layer, "closed while parked", seen[0])
    peer.close()

    target, peer = await make()
    seen_first = await cancelled(call(target), view_of(), cancelled_first(loop))
    await loop.report(layer, "cancelled at checkpoint", seen_first)
    await close(target)
    peer.close()

    target, peer = await make()
    seen_parked = await cancelled(call(target), view_of(), loop.move_on_after(PARKED))
    await loop.report(layer, "cancelled while parked", seen_parked)
    await close(target)
    peer.close()

    target, peer = await make()
    await end(target)
    await loop.report(layer, "ended", await caught(call(target), view_of()))
    await close(target)
    peer.close()


async def bad_input(
    loop: Loop,
    layer: str,
    make: Callable[[], Awaitable[tuple[Any, socket.socket]]],
    send_fds: Callable[[Any, memoryview, list[Any]], Awaitable[object]],
    fd: int,
    close: Callable[[Any], Awaitable[object]],
) -> None:
    """``send_fds`` with an empty message, and with a str among the descriptors."""
    target, peer = await make()
    seen = await caught(lambda view: send_fds(target, view, [fd]), empty_view())
    await loop.report(layer, "empty message", seen)
    seen = await caught(lambda view: send_fds(target, view, [fd, "0"]), view_of())
    await loop.report(layer, "str in fds", seen)
    await close(target)
    peer.close()


def trio_loop() -> Loop:
    import trio
    import trio.testing

    return Loop(
        trio.lowlevel.checkpoint,
        trio.open_nursery,
        trio.testing.wait_all_tasks_blocked,
        trio.CancelScope,
        trio.move_on_after,
    )


async def terminate(transit: traffic.Octets) -> None:
    transit.terminate()


async def aclose(stream: Any) -> None:
    await stream.aclose()


async def send_eof(stream: Any) -> None:
    await stream.send_eof()


# trio: TrafficStream.send_all


def trio_stream() -> None:
    import trio

    from traffic import TrafficStream

    async def make() -> tuple[TrafficStream, socket.socket]:
        ours, peer = tcp_socketpair()
        stream = TrafficStream(ours)
        small_buffers(stream, peer)
        return stream, peer

    def send_all(stream: TrafficStream) -> Call:
        return stream.send_all

    async def main() -> None:
        await cases(trio_loop(), "trio-stream send_all", make, send_all, aclose, send_eof)

    trio.run(main)


# trio: the primitives on bare transits, and send_fds


def trio_primitives() -> None:
    import trio

    from traffic import Descriptors, Octets, TrafficStream

    layer = "trio-primitives"

    def transits(kind: type[Octets]) -> tuple[Octets, Octets, socket.socket]:
        """(input, output) transits and their stdlib peer: Octets over TCP,
        Descriptors over AF_UNIX."""
        ours, peer = tcp_socketpair() if kind is Octets else socket.socketpair()
        receiver, sender = kind.wrap(ours)
        shrink(sender, peer)
        return receiver, sender, peer

    async def output() -> tuple[Octets, socket.socket]:
        _, sender, peer = transits(Octets)
        return sender, peer

    async def input_() -> tuple[Octets, socket.socket]:
        receiver, _, peer = transits(Octets)
        return receiver, peer

    async def descriptors() -> tuple[Octets, socket.socket]:
        _, sender, peer = transits(Descriptors)
        return sender, peer

    async def unix_stream() -> tuple[TrafficStream, socket.socket]:
        ours, peer = socket.socketpair()
        stream = TrafficStream(ours)
        small_buffers(stream, peer)
        return stream, peer

    def send_all(transit: Octets) -> Call:
        return lambda view: traffic.send_all(transit, view)

    def recv_into(transit: Octets) -> Call:
        return lambda view: traffic.recv_into(transit, view)

    async def main() -> None:
        loop = trio_loop()
        await cases(loop, f"{layer} send_all", output, send_all, terminate, terminate)
        await cases(loop, f"{layer} recv_into", input_, recv_into, terminate, terminate)
        with null_device() as fd:

            def send_fds(target: Any) -> Call:
                return lambda view: traffic.send_fds(target, view, [fd])

            for name, make, close, end in (
                ("send_fds(transit)", descriptors, terminate, terminate),
                ("send_fds(stream)", unix_stream, aclose, send_eof),
            ):
                await cases(loop, f"{layer} {name}", make, send_fds, close, end)
                await bad_input(loop, f"{layer} {name}", make, traffic.send_fds, fd, close)

    trio.run(main)


# anyio: traffic.anyio_backend's streams


def anyio_streams(backend: str, options: str) -> None:
    import anyio
    import sniffio
    from anyio.abc import SocketAttribute
    from anyio_support import on_uvloop

    from traffic import anyio_backend

    layer = "anyio"
    loop = Loop(
        anyio.lowlevel.checkpoint,
        anyio.create_task_group,
        anyio.wait_all_tasks_blocked,
        anyio.CancelScope,
        anyio.move_on_after,
    )

    def shrunk(stream: Any, peer: socket.socket) -> tuple[Any, socket.socket]:
        small_buffers(stream.extra(SocketAttribute.raw_socket), peer)
        return stream, peer

    async def connected() -> tuple[Any, socket.socket]:
        """A stream of connect_tcp, and its stdlib peer."""
        with socket.create_server(("127.0.0.1", 0)) as listener:
            stream = await anyio_backend.connect_tcp("127.0.0.1", listener.getsockname()[1])
            peer, _ = listener.accept()
        return shrunk(stream, peer)

    async def accepted() -> tuple[Any, socket.socket]:
        """A stream a create_tcp_listener listener accepted, and its stdlib peer."""
        async with await anyio_backend.create_tcp_listener(local_host="127.0.0.1") as multi:
            port = multi.extra(SocketAttribute.local_port)
            peer = socket.create_connection(("127.0.0.1", port))
            stream = await multi.listeners[0].accept()
        return shrunk(stream, peer)

    async def main() -> None:
        library = sniffio.current_async_library()
        print(f"anyio on {library}{' (uvloop)' if library == 'asyncio' and on_uvloop() else ''}")

        def send(stream: Any) -> Call:
            return stream.send  # type: ignore[no-any-return]

        await cases(loop, f"{layer} send(connect_tcp)", connected, send, aclose, send_eof)
        await cases(loop, f"{layer} send(create_tcp_listener)", accepted, send, aclose, send_eof)
        with tempfile.TemporaryDirectory() as directory, null_device() as fd:
            path = os.path.join(directory, "socket")

            async def unix() -> tuple[Any, socket.socket]:
                """A stream of connect_unix, and its stdlib peer."""
                with socket.socket(socket.AF_UNIX) as listener:
                    listener.bind(path)
                    listener.listen()
                    stream = await anyio_backend.connect_unix(path)
                    peer, _ = listener.accept()
                os.unlink(path)
                return shrunk(stream, peer)

            def send_fds(stream: Any) -> Call:
                return lambda view: stream.send_fds(view, [fd])

            async def send_fds_to(stream: Any, view: memoryview, fds: list[Any]) -> None:
                await stream.send_fds(view, fds)

            await cases(loop, f"{layer} send_fds", unix, send_fds, aclose, send_eof)
            await bad_input(loop, f"{layer} send_fds", unix, send_fds_to, fd, aclose)

    anyio.run(main, backend=backend, backend_options=json.loads(options))


# The synchronous Traffic, and a threaded one's requests


def sync() -> None:
    from traffic import Descriptors, Octets, Traffic

    layer = "sync"

    def caught_sync(call: Callable[[memoryview], object], view: memoryview) -> str:
        try:
            call(view)
        except Exception as exc:
            trap(exc)
            return type(exc).__name__
        finally:
            del view
        return NOTHING

    def octets(tr: Traffic) -> None:
        """acquire() pins the resource it is given."""
        (receiver, sender), _ = Octets.socketpair()
        tr.acquire(receiver)
        tr.acquire(sender)
        receiver.acquire(view_of())  # no cycle runs: it stays unexhausted
        report(layer, "acquire refused (input)", caught_sync(receiver.acquire, view_of()))
        sender.acquire(view_of())
        report(layer, "acquire refused (output)", caught_sync(sender.acquire, view_of()))
        sender.terminate()
        report(layer, "acquire terminated", caught_sync(sender.acquire, view_of()))

        ours, peer = tcp_socketpair()
        _, sender = Octets.wrap(ours)
        tr.acquire(sender)
        reset(peer)
        sender.acquire(view_of())
        run_until(tr, lambda: sender.terminated)
        report(layer, "acquire after reset", caught_sync(sender.acquire, view_of()))

    def descriptors(tr: Traffic, fd: int) -> None:
        """Descriptors.acquire() pins the data of its pair."""
        (receiver, sender), _ = Descriptors.socketpair()
        tr.acquire(receiver)
        tr.acquire(sender)

        def receive(view: memoryview) -> None:
            receiver.acquire((view, array("i", bytes(16))))

        def send(fds: list[Any]) -> Callable[[memoryview], None]:
            return lambda view: sender.acquire((view, fds))

        receive(view_of())
        seen = caught_sync(receive, view_of())
        report(layer, "Descriptors.acquire refused (input)", seen)
        seen = caught_sync(send([NOT_OPEN]), view_of())
        report(layer, "Descriptors.acquire descriptor not open", seen)
        seen = caught_sync(send([fd, "0"]), view_of())
        report(layer, "Descriptors.acquire str in fds", seen)
        seen = caught_sync(send([fd]), empty_view())
        report(layer, "Descriptors.acquire empty message", seen)
        send([fd])(view_of())
        seen = caught_sync(send([fd]), view_of())
        report(layer, "Descriptors.acquire refused (output)", seen)
        sender.terminate()
        seen = caught_sync(send([fd]), view_of())
        report(layer, "Descriptors.acquire terminated", seen)

    def request(tr: Traffic) -> None:
        """request() pins what it sends while the request waits."""
        ours, peer = tcp_socketpair()
        _, sender = Octets.wrap(ours)
        tr.acquire(sender)
        shrink(sender, peer)

        def request(view: memoryview) -> tuple[int, int, int]:
            return tr.request(sender, view)

        assert request(view_of())[0] == traffic._base._requests.PENDING
        report(layer, "request busy", caught_sync(request, view_of()))
        tr.withdraw(sender)
        sender.terminate()
        report(layer, "request terminated", caught_sync(request, view_of()))
        peer.close()

    def request_fds(tr: Traffic, fd: int) -> None:
        """request_fds() pins the data it sends while the request waits."""
        ours, peer = socket.socketpair()
        _, sender = Descriptors.wrap(ours)
        tr.acquire(sender)
        shrink(sender, peer)

        def request(fds: list[Any]) -> Callable[[memoryview], tuple[int, int, int, int]]:
            return lambda view: tr.request_fds(sender, view, fds)  # type: ignore[arg-type]

        seen = caught_sync(request([NOT_OPEN]), view_of())
        report(layer, "request_fds descriptor not open", seen)
        report(layer, "request_fds str in fds", caught_sync(request([fd, "0"]), view_of()))
        report(layer, "request_fds empty message", caught_sync(request([fd]), empty_view()))
        assert request([fd])(view_of())[0] == traffic._base._requests.PENDING
        report(layer, "request_fds busy", caught_sync(request([fd]), view_of()))
        tr.withdraw(sender)
        sender.terminate()
        report(layer, "request_fds terminated", caught_sync(request([fd]), view_of()))
        peer.close()

    with null_device() as fd:
        tr = Traffic()
        try:
            octets(tr)
            descriptors(tr, fd)
        finally:
            tr.close()
        tr = Traffic()
        try:
            tr.start()
            request(tr)
            request_fds(tr, fd)
        finally:
            tr.close()


LAYERS: dict[str, Callable[..., None]] = {
    "trio-stream": trio_stream,
    "trio-primitives": trio_primitives,
    "anyio": anyio_streams,
    "sync": sync,
}


def main() -> int:
    layer, *arguments = sys.argv[1:]
    run = LAYERS[layer]
    run(*arguments)
    gc.collect()
    print("warm-up done", flush=True)
    fds = open_fds()
    live = traffic.live_objects()
    run(*arguments)
    back = settle(lambda: open_fds() == fds and traffic.live_objects() == live)
    print(
        f"descriptors {len(open_fds())} (baseline {len(fds)}), "
        f"live objects {traffic.live_objects()} (baseline {live})",
        flush=True,
    )
    return 0 if back else 1


if __name__ == "__main__":
    sys.exit(main())
