"""The stream workload: one process, one AF_UNIX socketpair, one task writing
64 KiB chunks into it and another reading them, for a fixed time.

Run as ``python -m traffic.bench.stream NAME SECONDS``: prints one line of
JSON with the bytes the reader got, the seconds from the first write to the
reader's end of stream, and the process's CPU seconds (all threads) over the
same window.  Each implementation is written the way its users write it.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import resource
import socket
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, cast

from .servers import anyio_run

#: Bytes per write, as the benchmark's workloads specify (docs/benchmark.rst).
CHUNK = 65536

#: Bytes one receive asks for: trio's DEFAULT_RECEIVE_SIZE, anyio's default.
RECEIVE_SIZE = 65536


class Window:
    """Wall and CPU time of the measured window, and the bytes seen."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.received = 0
        self.start = time.perf_counter()
        self.deadline = time.monotonic() + seconds
        self.cpu = _cpu()
        self.end = self.start
        self.cpu_end = self.cpu

    def running(self) -> bool:
        return time.monotonic() < self.deadline

    def finish(self) -> None:
        self.end = time.perf_counter()
        self.cpu_end = _cpu()

    def result(self) -> dict[str, float]:
        return {
            "bytes": self.received,
            "seconds": self.end - self.start,
            "cpu": self.cpu_end - self.cpu,
        }


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --- trio ---------------------------------------------------------------------


async def _trio_pair(make: Callable[[socket.socket], Any], seconds: float) -> Window:
    import trio

    a, b = socket.socketpair()
    writer, reader = make(a), make(b)
    chunk = b"x" * CHUNK
    window = Window(seconds)

    async def write() -> None:
        async with writer:
            while window.running():
                await writer.send_all(chunk)

    async def read() -> None:
        async with reader:
            while data := await reader.receive_some(RECEIVE_SIZE):
                window.received += len(data)
        window.finish()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(write)
        nursery.start_soon(read)
    return window


def traffic_trio(seconds: float) -> Window:
    import trio

    import traffic

    return trio.run(_trio_pair, traffic.TrafficStream, seconds)


def trio_floor(seconds: float) -> Window:
    import trio

    from .floor import FloorStream

    return trio.run(_trio_pair, FloorStream, seconds)


def trio_native(seconds: float) -> Window:
    import trio

    def make(sock: socket.socket) -> trio.SocketStream:
        return trio.SocketStream(trio.socket.from_stdlib_socket(sock))

    return trio.run(_trio_pair, make, seconds)


# --- asyncio and uvloop ---------------------------------------------------------


async def _asyncio_streams(seconds: float) -> Window:
    import asyncio

    a, b = socket.socketpair()
    _, writer = await asyncio.open_unix_connection(sock=a)
    reader, other = await asyncio.open_unix_connection(sock=b)
    chunk = b"x" * CHUNK
    window = Window(seconds)

    async def write() -> None:
        while window.running():
            writer.write(chunk)
            await writer.drain()
        writer.close()
        await writer.wait_closed()

    async def read() -> None:
        while data := await reader.read(RECEIVE_SIZE):
            window.received += len(data)
        window.finish()
        other.close()

    await asyncio.gather(write(), read())
    return window


async def _asyncio_protocols(seconds: float) -> Window:
    import asyncio

    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    chunk = b"x" * CHUNK
    done = loop.create_future()

    class Writer(asyncio.Protocol):
        """Writes while the transport is below its high-water mark."""

        paused = False

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = cast(asyncio.Transport, transport)  # uvloop's: no subclass
            self.fill()

        def pause_writing(self) -> None:
            self.paused = True

        def resume_writing(self) -> None:
            self.paused = False
            self.fill()

        def fill(self) -> None:
            while not self.paused:
                if not window.running():
                    self.transport.close()
                    return
                self.transport.write(chunk)

    class Reader(asyncio.Protocol):
        def data_received(self, data: bytes) -> None:
            window.received += len(data)

        def eof_received(self) -> bool:
            window.finish()
            done.set_result(None)
            return False

    await loop.connect_accepted_socket(Reader, b)
    window = Window(seconds)
    await loop.connect_accepted_socket(Writer, a)  # its connection_made starts writing
    await done
    return window


def asyncio_streams(seconds: float) -> Window:
    import asyncio

    return asyncio.run(_asyncio_streams(seconds))


def uvloop_streams(seconds: float) -> Window:
    import uvloop

    window: Window = uvloop.run(_asyncio_streams(seconds))
    return window


def uvloop_protocol(seconds: float) -> Window:
    import uvloop

    window: Window = uvloop.run(_asyncio_protocols(seconds))
    return window


# --- anyio ----------------------------------------------------------------------


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


async def _anyio_pair(
    wrap: Callable[[socket.socket], Awaitable[Any] | Any], seconds: float
) -> Window:
    import anyio

    a, b = socket.socketpair()
    writer = await _maybe_await(wrap(a))
    reader = await _maybe_await(wrap(b))
    chunk = b"x" * CHUNK
    window = Window(seconds)

    async def write() -> None:
        async with writer:
            while window.running():
                await writer.send(chunk)

    async def read() -> None:
        async with reader:
            async for data in reader:
                window.received += len(data)
        window.finish()

    async with anyio.create_task_group() as group:
        group.start_soon(write)
        group.start_soon(read)
    return window


def _anyio_run(loop: str, seconds: float) -> Window:
    from anyio.abc import UNIXSocketStream

    return anyio_run(loop, _anyio_pair, UNIXSocketStream.from_socket, seconds)


def _traffic_anyio_run(loop: str, seconds: float) -> Window:
    from traffic import anyio_backend

    return anyio_run(loop, _anyio_pair, anyio_backend.TrafficUNIXSocketStream.from_socket, seconds)


STREAMS: dict[str, Callable[[float], Window]] = {
    "traffic-trio": traffic_trio,
    "trio": trio_native,
    "trio-floor": trio_floor,
    "asyncio": asyncio_streams,
    "uvloop": uvloop_streams,
    "uvloop-protocol": uvloop_protocol,
    "anyio-trio": partial(_anyio_run, "trio"),
    "anyio-asyncio": partial(_anyio_run, "asyncio"),
    "anyio-uvloop": partial(_anyio_run, "uvloop"),
    "traffic-anyio-trio": partial(_traffic_anyio_run, "trio"),
    "traffic-anyio-asyncio": partial(_traffic_anyio_run, "asyncio"),
    "traffic-anyio-uvloop": partial(_traffic_anyio_run, "uvloop"),
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m traffic.bench.stream")
    parser.add_argument("name", choices=sorted(STREAMS))
    parser.add_argument("seconds", type=float)
    parser.add_argument(
        "--cycle-policy", choices=["normal", "idle", "batch"], help="traffic's cycle thread"
    )
    args = parser.parse_args(argv)
    if args.cycle_policy:
        os.environ["TRAFFIC_CYCLE_POLICY"] = args.cycle_policy
    window = STREAMS[args.name](args.seconds)
    print(json.dumps(window.result()), flush=True)


if __name__ == "__main__":
    main()
