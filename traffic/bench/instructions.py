"""``python -m traffic.bench.instructions``: instructions per operation, counted by valgrind.

Timings on these shared machines drift by 10% between runs minutes apart,
and by far more when a neighbour steals CPU; instruction counts do not.
This counts the user-space instructions (all threads: traffic's cycle thread
included; the kernel's work is not counted) that each stream
implementation spends per operation, in one process, in three workloads:

``inline``
    A task sends 64 bytes ``OPS`` times into an ``AF_UNIX`` socketpair whose
    buffers hold them all, a plain socket reads them at the other end and
    sends as many back, and the task receives them 64 bytes at a time: every
    transfer can complete at once (traffic's inline path).  Reported per
    send + receive pair.
``inline-view``
    ``inline`` with each send given a ``memoryview`` of a ``bytearray``
    rather than ``bytes``: what a program slicing its own buffers sends.
    traffic exports such memory to its core for the request and releases
    it after (a ``bytes`` needs neither).
``pingpong``
    Two tasks pass 64 bytes back and forth ``OPS`` times over a socketpair:
    every receive waits (traffic's parked path: the cycle thread transfers
    and hands the completion over).  Reported per round trip (two sends and
    two receives).

Each (implementation, workload) runs under ``valgrind --tool=cachegrind
--cache-sim=no`` twice, with 1 and with 4 rounds of ``OPS``; the difference
divided by 3 rounds' operations is the cost per operation, with the start-up
and imports cancelled out.  ``inline`` counts repeat to within 0.1%;
``pingpong`` counts move by a few percent between invocations (they depend
on where the cycle thread's wake-ups fall).  The ``trio-floor`` row is what
any stream on trio has to do (:mod:`traffic.bench.floor`): the socket call
and trio's checkpoint (``wait_readable`` when nothing is there), with no
stream layer.

A profiling aid, not the benchmark: it says nothing of system calls,
wake-ups or the kernel, which decide the benchmark's echo latency.

Example: ``python -m traffic.bench.instructions --only inline``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

#: Operations per round (sends, receives, round trips).
OPS = 300
#: Bytes per send.
SIZE = 64
#: Rounds of the long run; the short run has one.
ROUNDS = 4

IMPLEMENTATIONS = [
    "trio-floor",
    "trio",
    "traffic-trio",
    "anyio-trio",
    "traffic-anyio-trio",
    "anyio-asyncio",
    "traffic-anyio-asyncio",
]
WORKLOADS = ["inline", "inline-view", "pingpong"]


# --- the worker: one implementation, one workload, some rounds ------------------


Send = Callable[[bytes], Awaitable[Any]]
Receive = Callable[[int], Awaitable[bytes]]


async def _open(name: str, sock: socket.socket) -> tuple[Any, Send, Receive]:
    """The stream of implementation ``name`` over ``sock``, its send and its receive."""
    if name == "trio-floor":
        from .floor import FloorStream

        floor = FloorStream(sock)
        return floor, floor.send_all, floor.receive_some
    if name == "trio":
        import trio

        stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
        return stream, stream.send_all, stream.receive_some
    if name == "traffic-trio":
        import traffic

        mine = traffic.TrafficStream(sock)
        return mine, mine.send_all, mine.receive_some
    if name.startswith("traffic-anyio"):
        from traffic import anyio_backend

        ours = await anyio_backend.TrafficSocketStream.from_socket(sock)
        return ours, ours.send, ours.receive
    import anyio.abc

    theirs = await anyio.abc.UNIXSocketStream.from_socket(sock)
    return theirs, theirs.send, theirs.receive


def _pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    for sock in (a, b):
        # As large as the kernel allows (net.core.wmem_max): a round's sends fit.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 22)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    return a, b


async def _inline(name: str, rounds: int, view: bool = False) -> None:
    data = b"x" * SIZE
    sent: bytes | memoryview = memoryview(bytearray(data)) if view else data
    for _ in range(rounds):
        a, peer = _pair()
        stream, send, receive = await _open(name, a)
        for _ in range(OPS):
            await send(sent)  # type: ignore[arg-type]
        got = 0
        while got < SIZE * OPS:
            got += len(peer.recv(1 << 20))
        peer.sendall(data * OPS)
        got = 0
        while got < SIZE * OPS:
            got += len(await receive(SIZE))
        await stream.aclose()
        peer.close()


async def _echo(send: Send, receive: Receive) -> None:
    for _ in range(OPS):
        await send(await receive(SIZE))


async def _pingpong(name: str, rounds: int) -> None:
    import anyio

    data = b"x" * SIZE
    for _ in range(rounds):
        a, b = _pair()
        ping, ping_send, ping_receive = await _open(name, a)
        pong, pong_send, pong_receive = await _open(name, b)

        async with anyio.create_task_group() as group:
            group.start_soon(_echo, pong_send, pong_receive)
            for _ in range(OPS):
                await ping_send(data)
                if len(await ping_receive(SIZE)) != SIZE:
                    raise RuntimeError("pingpong: a 64-byte message arrived split")
        await ping.aclose()
        await pong.aclose()


def work(name: str, workload: str, rounds: int) -> None:
    """Run ``rounds`` rounds of ``workload`` with implementation ``name``."""
    import anyio

    backend = "asyncio" if name.endswith("asyncio") else "trio"
    if workload == "pingpong":
        anyio.run(_pingpong, name, rounds, backend=backend)
    else:
        anyio.run(_inline, name, rounds, workload == "inline-view", backend=backend)


# --- the counter ------------------------------------------------------------------


def count(name: str, workload: str, rounds: int) -> int:
    """User-space instructions of a worker process running ``rounds`` rounds."""
    done = subprocess.run(
        [
            "valgrind",
            "--tool=cachegrind",
            "--cache-sim=no",
            "--cachegrind-out-file=/dev/null",
            sys.executable,
            "-m",
            "traffic.bench.instructions",
            "--worker",
            name,
            workload,
            str(rounds),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        # One string hashing for every worker: with a random seed, the two
        # runs whose difference is the count probe their dictionaries
        # differently, and the difference moves by a percent.
        env={**os.environ, "PYTHONHASHSEED": "0"},
    )
    found = re.search(r"I\s+refs:\s+([\d,]+)", done.stderr)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"{name} {workload}: valgrind failed\n{done.stderr[-2000:]}")
    return int(found.group(1).replace(",", ""))


def per_operation(
    name: str, workload: str, rounds: int = ROUNDS, pool: ThreadPoolExecutor | None = None
) -> float:
    """Instructions per operation (see the module's text); the two counts
    run side by side in ``pool`` if given (counts do not depend on timing)."""
    if pool is None:
        long, short = count(name, workload, rounds), count(name, workload, 1)
    else:
        futures = [pool.submit(count, name, workload, n) for n in (rounds, 1)]
        long, short = (future.result() for future in futures)
    return (long - short) / ((rounds - 1) * OPS)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m traffic.bench.instructions",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--only",
        default=",".join(WORKLOADS),
        help=f"workloads, comma-separated ({','.join(WORKLOADS)})",
    )
    parser.add_argument(
        "--implementations",
        default=",".join(IMPLEMENTATIONS),
        help="comma-separated; default all of: " + ",".join(IMPLEMENTATIONS),
    )
    parser.add_argument(
        "--worker", nargs=3, metavar=("NAME", "WORKLOAD", "ROUNDS"), help="internal: run one"
    )
    args = parser.parse_args(argv)
    if args.worker:
        name, workload, rounds = args.worker
        work(name, workload, int(rounds))
        return
    names = [n for n in args.implementations.split(",") if n]
    workloads = [w for w in args.only.split(",") if w]
    for bad in set(names) - set(IMPLEMENTATIONS):
        parser.error(f"unknown implementation {bad!r}")
    for bad in set(workloads) - set(WORKLOADS):
        parser.error(f"unknown workload {bad!r}")
    if shutil.which("valgrind") is None:
        parser.error("needs valgrind (apt-get install valgrind)")
    for workload in workloads:
        unit = "round trip" if workload == "pingpong" else "send + receive"
        print(f"## {workload}: user-space instructions per {unit}")
        print("| implementation | instructions | x trio |")
        print("|---|---|---|")
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            counted = {name: per_operation(name, workload, pool=pool) for name in names}
        base = counted.get("trio")
        for name, value in counted.items():
            ratio = f"{value / base:.2f}" if base else "-"
            print(f"| {name} | {value:,.0f} | {ratio} |", flush=True)
        print()


if __name__ == "__main__":
    main()
