"""The fault suite's server: one of traffic's layers serving the suite's
protocol, in a process of its own, controlled over stdin and stdout.

Run by :class:`support.Server` as ``python server.py --layer LAYER ...``
(under ``nsenter --net=...`` for a private namespace; ``--cgroup DIR``
joins a cgroup before anything else).  The layers:

- ``trio``: :func:`traffic.serve_tcp` in a nursery (a trio program);
- ``anyio-asyncio``, ``anyio-uvloop``, ``anyio-trio``: traffic's anyio
  listener (``traffic.anyio_backend.create_tcp_listener``) and anyio's
  ``listener.serve(handler)`` on that event loop.

The protocol.  A client's first line says what its handler does:
``MODE ID [KEY=VALUE...]\\n``; what follows is the connection's data.

- ``echo``: send back everything received, until the end of the stream;
- ``sink``: receive until the end of the stream, then send the SHA-256 of
  it (hex) and its length: ``HEX LENGTH\\n``;
- ``source N SEED``: send ``N`` bytes of ``random.Random(SEED).randbytes``
  and close;
- ``hold``: receive (a parked receive, as the client sends nothing more)
  until the end of the stream;
- ``blast``: send 64 KiB chunks forever (a parked send, once the peer
  stops reading);
- ``drip``: send 1 KiB every 50 ms forever (data always in flight, the
  peer's window open);
- ``duplex``: ``hold`` and ``blast`` at once, on one stream (both
  directions parked, or both moving when the peer reads and sends).

Options: ``tuo=MS`` sets ``TCP_USER_TIMEOUT`` through the stream
(``TrafficStream.setsockopt``; anyio: its ``raw_socket``); ``ka=S`` turns
keepalive on with ``TCP_KEEPIDLE`` and ``TCP_KEEPINTVL`` of ``S`` seconds
and ``TCP_KEEPCNT`` 1 (``--keepalive S`` does it for every connection,
before its first line); ``chaos=SEED`` (``echo`` only) cancels receives at
random moments and retries them (no byte may be lost), cancels a send now
and then (the handler then closes its stream: a cancelled send leaves it in
an unknown state), and closes the stream from another task at a random
moment, under whatever is parked.

Every connection ends in outcomes the handler judged clean, one per
direction: ``ok`` (its mode done), ``eof`` (the end of the stream),
``broken:ERRNO`` (``BrokenResourceError`` chained to an ``OSError`` whose
errno is in the documented set, given with ``--errnos``), ``closed``
(``ClosedResourceError`` after its own close) or ``cancelled`` (cancelled
by the ``cancel`` command).  Anything else is raised out of the handler,
escapes the server's nursery, and ends the process with status 3 and the
traceback on stderr: the test sees it.

Commands, one JSON object a line on stdin, each answered by one on stdout
(the first line out is ``{"ready": ..., "port": ...}``):

- ``{"cmd": "stats"}``: live objects, connections and their outcomes;
- ``{"cmd": "cancel", "ids": [...]}``: cancel those handlers, wait for
  them (at most 10 s) and answer the longest time one took;
- ``{"cmd": "limit", "headroom": N}``: ``RLIMIT_NOFILE``'s soft limit to
  the descriptors open now plus ``N``; ``{"cmd": "unlimit"}`` restores it;
- ``{"cmd": "transits"}``, ``{"cmd": "debug"}``: for a failure's message,
  the transits Python still holds and what holds them; where each
  unfinished handler's transfers are (the core's status of its transits,
  the layer's parking, the completion descriptor);
- ``{"cmd": "quit"}`` (or the end of stdin): stop serving, exit 0.
"""

from __future__ import annotations

import argparse
import errno
import gc
import hashlib
import json
import logging
import os
import random
import resource
import socket
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import anyio
import anyio.abc

import traffic

CHUNK = 65536
LINE_MAX = 512


def emit(message: dict[str, Any]) -> None:
    data = (json.dumps(message) + "\n").encode()
    while data:
        data = data[os.write(1, data) :]


class Errors(logging.Handler):
    """Counts what traffic logs at ERROR (serve_tcp's accept back-off)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


class Conn:
    """One connection's handler state, reported by ``stats``."""

    def __init__(self, server: Server, stream: Any) -> None:
        self.server = server
        self.stream = stream
        self.id = "?"
        self.mode = "?"
        self.phase = "header"
        self.sent = 0
        self.received = 0
        self.outcomes: list[str] = []
        self.closed_by_me = False
        self.scope: anyio.CancelScope | None = None
        self.cancel_asked: float | None = None
        self.t_end: float | None = None
        self.buffer = b""

    # The layer's stream, one face for both.

    async def recv(self) -> bytes:
        if self.buffer:
            data, self.buffer = self.buffer, b""
            return data
        self.phase = "recv"
        data = await self.server.receive(self.stream)
        self.phase = "run"
        self.received += len(data)
        return data

    async def send(self, data: bytes) -> None:
        self.phase = "send"
        await self.server.send(self.stream, data)
        self.phase = "run"
        self.sent += len(data)

    async def close(self) -> None:
        self.closed_by_me = True
        with anyio.CancelScope(shield=True):
            await self.stream.aclose()

    async def header(self) -> list[str]:
        data = b""
        while b"\n" not in data:
            chunk = await self.recv()
            if not chunk:
                raise EOFError
            data += chunk
            if b"\n" not in data and len(data) > LINE_MAX:
                raise ValueError(f"no header line in {data[:LINE_MAX]!r}")
        line, self.buffer = data.split(b"\n", 1)
        return line.decode().split()

    def report(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "phase": self.phase,
            "sent": self.sent,
            "received": self.received,
            "outcomes": self.outcomes,
            "t_end": self.t_end,
            "latency": (
                self.t_end - self.cancel_asked
                if self.t_end is not None and self.cancel_asked is not None
                else None
            ),
        }


class Server:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.layer = args.layer
        self.allowed = {getattr(errno, name) for name in args.errnos.split(",")}
        self.conns: dict[str, Conn] = {}
        self.active: set[Conn] = set()
        self.accepted = 0
        self.errors = Errors()
        logging.getLogger("traffic").addHandler(self.errors)
        logging.getLogger("traffic").propagate = False
        self.limit = resource.getrlimit(resource.RLIMIT_NOFILE)
        if self.layer == "trio":
            import trio

            self.broken: tuple[type[BaseException], ...] = (trio.BrokenResourceError,)
            self.closed: tuple[type[BaseException], ...] = (trio.ClosedResourceError,)
        else:
            self.broken = (anyio.BrokenResourceError,)
            self.closed = (anyio.ClosedResourceError,)

    # The layer's stream operations.

    async def receive(self, stream: Any) -> bytes:
        if self.layer == "trio":
            return bytes(await stream.receive_some(CHUNK))
        try:
            return bytes(await stream.receive(CHUNK))
        except anyio.EndOfStream:
            return b""

    async def send(self, stream: Any, data: bytes) -> None:
        if self.layer == "trio":
            await stream.send_all(data)
        else:
            await stream.send(data)

    def setsockopt(self, stream: Any, level: int, option: int, value: int) -> None:
        if self.layer == "trio":
            stream.setsockopt(level, option, value)
        else:
            stream.extra(anyio.abc.SocketAttribute.raw_socket).setsockopt(level, option, value)

    # Serving.

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            if self.layer == "trio":
                listeners = await tg.start(
                    partial(
                        traffic.serve_tcp,
                        self.handle,
                        self.args.port,
                        host=self.args.host,
                        backlog=self.args.backlog,
                    )
                )
                port = listeners[0].socket.getsockname()[1]
            else:
                from traffic.anyio_backend import create_tcp_listener

                kwargs = {} if self.args.backlog is None else {"backlog": self.args.backlog}
                listener = await create_tcp_listener(
                    local_host=self.args.host, local_port=self.args.port, **kwargs
                )
                port = listener.extra(anyio.abc.SocketAttribute.local_port)
                tg.start_soon(listener.serve, self.handle)
            emit({"ready": True, "port": port, "pid": os.getpid(), "backend": traffic.backend})
            await self.control()
            tg.cancel_scope.cancel()

    async def handle(self, stream: Any) -> None:
        self.accepted += 1
        conn = Conn(self, stream)
        conn.id = f"#{self.accepted}"  # until its header names it
        self.conns[conn.id] = conn
        self.active.add(conn)
        try:
            with anyio.CancelScope() as scope:
                conn.scope = scope
                await self.guarded(conn, self.serve_conn)
            if scope.cancelled_caught:
                conn.outcomes.append("cancelled")
        finally:
            await conn.close()
            conn.t_end = time.monotonic()
            self.active.discard(conn)
            conn.stream = None  # its record stays; the stream and transits go

    async def guarded(self, conn: Conn, body: Callable[[Conn], Awaitable[str]]) -> None:
        """Run ``body`` and record its clean outcome; raise anything else."""
        try:
            conn.outcomes.append(await body(conn))
        except self.broken as exc:
            cause = exc.__cause__
            if not isinstance(cause, OSError) or cause.errno not in self.allowed:
                raise
            conn.outcomes.append(f"broken:{errno.errorcode[cause.errno]}")
        except self.closed:
            if not conn.closed_by_me:
                raise
            conn.outcomes.append("closed")

    def keepalive(self, conn: Conn, seconds: int) -> None:
        """Keepalive on, its first probe after ``seconds`` idle, one probe."""
        self.setsockopt(conn.stream, socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        self.setsockopt(conn.stream, socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, seconds)
        self.setsockopt(conn.stream, socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, seconds)
        self.setsockopt(conn.stream, socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 1)

    async def serve_conn(self, conn: Conn) -> str:
        if self.args.keepalive:
            self.keepalive(conn, self.args.keepalive)
        try:
            words = await conn.header()
        except EOFError:
            return "eof"
        del self.conns[conn.id]
        conn.mode, conn.id, *rest = words
        self.conns[conn.id] = conn
        options = dict(word.split("=", 1) for word in rest if "=" in word)
        positional = [word for word in rest if "=" not in word]
        if "tuo" in options:
            self.setsockopt(
                conn.stream, socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(options["tuo"])
            )
        if "ka" in options:
            self.keepalive(conn, int(options["ka"]))
        if conn.mode == "echo":
            if "chaos" in options:
                return await self.chaotic_echo(conn, random.Random(int(options["chaos"])))
            while data := await conn.recv():
                await conn.send(data)
            return "eof"
        if conn.mode == "sink":
            digest = hashlib.sha256()
            count = 0
            while data := await conn.recv():
                digest.update(data)
                count += len(data)
            await conn.send(f"{digest.hexdigest()} {count}\n".encode())
            return "eof"
        if conn.mode == "source":
            size, seed = int(positional[0]), int(positional[1])
            payload = random.Random(seed).randbytes(size)
            view = memoryview(payload)
            for at in range(0, size, CHUNK):
                await conn.send(bytes(view[at : at + CHUNK]))
            return "ok"
        if conn.mode == "hold":
            return await self.hold(conn)
        if conn.mode == "blast":
            return await self.blast(conn)
        if conn.mode == "drip":
            while True:
                await conn.send(bytes(1024))
                await anyio.sleep(0.05)
        if conn.mode == "duplex":
            # One outcome per direction (guarded records each).
            async with anyio.create_task_group() as tg:
                tg.start_soon(self.guarded, conn, self.blast)
                await self.guarded(conn, self.hold)
            return "duplex"
        raise ValueError(f"unknown mode {conn.mode!r}")

    async def hold(self, conn: Conn) -> str:
        while await conn.recv():
            pass
        return "eof"

    async def blast(self, conn: Conn) -> str:
        chunk = bytes(CHUNK)
        while True:
            await conn.send(chunk)

    async def chaotic_echo(self, conn: Conn, rng: random.Random) -> str:
        """echo under random cancellation, and a close at a random moment."""
        error: BaseException | None = None
        outcome = "?"
        async with anyio.create_task_group() as tg:
            if rng.random() < 0.3:
                tg.start_soon(self.close_later, conn, rng.uniform(0.0, 0.5))
            try:
                outcome = await self.chaos_loop(conn, rng)
            except (*self.broken, *self.closed) as exc:
                error = exc  # raised below, not wrapped in the group
            tg.cancel_scope.cancel()
        if error is not None:
            raise error
        return outcome

    async def chaos_loop(self, conn: Conn, rng: random.Random) -> str:
        while True:
            data: bytes | None
            if rng.random() < 0.4:
                data = None
                with anyio.move_on_after(rng.uniform(0.0, 0.01)):
                    data = await conn.recv()
                if data is None:
                    continue  # cancelled before anything came: again
            else:
                data = await conn.recv()
            if not data:
                return "eof"
            if rng.random() < 0.05:
                with anyio.move_on_after(rng.uniform(0.0, 0.005)) as scope:
                    await conn.send(data)
                if scope.cancelled_caught:
                    # Part of it may have gone out: the stream is in an
                    # unknown state, so close it (trio's and anyio's rule).
                    await conn.close()
                    return "closed"
            else:
                await conn.send(data)

    async def close_later(self, conn: Conn, delay: float) -> None:
        await anyio.sleep(delay)
        await conn.close()

    def debug(self) -> dict[str, Any]:
        """Where each unfinished handler's transfers are: the core's status
        of each transit, whether the layer has it parked, the completion
        descriptor's and flag's state (what a stuck handler waits on)."""
        import select

        from traffic._traffic import ffi, lib

        if self.layer in ("trio", "anyio-trio"):
            from traffic import _trio_parking

            parking: Any = _trio_parking.delivery()
        else:
            from traffic._anyio._asyncio_parking import _AsyncioParking

            parking = _AsyncioParking.current()
        requests = parking.requests
        readable = select.select([parking.fd], [], [], 0)[0] != []
        out: dict[str, Any] = {
            "completion_fd_readable": readable,
            "notify_flag": requests.notify_flag()[0],
            "parked": len(parking.parked),
        }
        error = ffi.new("int *")
        for conn in self.active:
            stream = conn.stream
            if stream is None:
                continue
            state = {}
            for side in ("_receiver", "_sender"):
                transit = getattr(stream, side)
                status = lib.tr_transit_status(transit._c, error)
                state[side] = {
                    "status": [
                        name
                        for name in ("ACQUIRED", "RESOURCE", "EXHAUSTED", "TERMINATED", "REQUEST")
                        if status & getattr(lib, f"TR_ST_{name}")
                    ],
                    "error": error[0],
                    "parked": transit._token in parking.parked,
                    "fd": transit.fileno(),
                }
            out[conn.id] = state
        return out

    # Control.

    async def control(self) -> None:
        os.set_blocking(0, False)
        pending = b""
        while True:
            await anyio.wait_readable(0)
            try:
                chunk = os.read(0, 65536)
            except BlockingIOError:
                continue
            if not chunk:
                return
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                command = json.loads(line)
                if command["cmd"] == "quit":
                    return
                emit(await self.command(command))

    async def command(self, command: dict[str, Any]) -> dict[str, Any]:
        name = command["cmd"]
        if name == "stats":
            # Streams in reference cycles (an exception's traceback holds
            # the frames that hold them) go at a collection: not a leak.
            gc.collect()
            return {
                "live": traffic.live_objects(),
                "accepted": self.accepted,
                "active": len(self.active),
                "log_errors": self.errors.count,
                "conns": {key: conn.report() for key, conn in self.conns.items()},
            }
        if name == "transits":
            return {"transits": live_transits()}
        if name == "debug":
            return {"debug": self.debug()}
        if name == "cancel":
            asked = time.monotonic()
            targets = [self.conns[key] for key in command["ids"]]
            for conn in targets:
                conn.cancel_asked = asked
                assert conn.scope is not None
                conn.scope.cancel()
            with anyio.move_on_after(10):
                while any(conn.t_end is None for conn in targets):
                    await anyio.sleep(0.001)
            ends = [conn.t_end for conn in targets]
            return {
                "latency": None if None in ends else max(ends) - asked,  # type: ignore[type-var]
                "outcomes": {conn.id: conn.outcomes for conn in targets},
            }
        if name == "limit":
            open_now = len(os.listdir("/proc/self/fd")) - 1  # listdir's own
            soft = open_now + int(command["headroom"])
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, self.limit[1]))
            return {"limit": soft, "open": open_now}
        if name == "unlimit":
            resource.setrlimit(resource.RLIMIT_NOFILE, self.limit)
            return {"limit": self.limit[0]}
        raise ValueError(f"unknown command {name!r}")


def live_transits() -> list[str]:
    """The transits Python still holds, each with what holds it (two levels
    of referrers): what a live-object count above the baseline is made of."""
    gc.collect()
    out = []
    for obj in gc.get_objects():
        if not isinstance(obj, traffic.Transit):
            continue
        holders = []
        for ref in gc.get_referrers(obj):
            if isinstance(ref, list) and ref is out:
                continue
            outer = [type(r).__name__ for r in gc.get_referrers(ref)][:6]
            holders.append(f"{type(ref).__name__}{getattr(ref, '__qualname__', '')} <- {outer}")
        out.append(f"{obj!r}: {holders[:6]}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layer", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--backlog", type=int, default=None)
    parser.add_argument("--errnos", required=True)
    parser.add_argument("--cgroup", default=None, help="a cgroup directory to join first")
    parser.add_argument("--keepalive", type=int, default=0, help="keepalive on every connection")
    args = parser.parse_args()
    if args.cgroup:
        with open(os.path.join(args.cgroup, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))
    backend, options = {
        "trio": ("trio", {}),
        "anyio-trio": ("trio", {}),
        "anyio-asyncio": ("asyncio", {}),
        "anyio-uvloop": ("asyncio", {"use_uvloop": True}),
    }[args.layer]
    server = Server(args)
    try:
        anyio.run(server.run, backend=backend, backend_options=options)
    except BaseException as exc:
        traceback.print_exc()
        sys.stderr.flush()
        emit({"escaped": repr(exc)})
        sys.exit(3)


if __name__ == "__main__":
    main()
