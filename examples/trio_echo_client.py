"""Clients for an echo server, on trio with traffic's streams.

Usage::

    python examples/trio_echo_client.py PORT [--host HOST] [--clients N]
                                             [--messages M] [--size BYTES]

Opens ``N`` connections (100 by default) with :func:`traffic.open_tcp_stream`,
at most ``CONNECT_BATCH`` connecting at once, and on each sends ``M``
messages (10) of ``BYTES`` bytes (1024) one after the other, checking that
each comes back intact before sending the next.  Then each connection
shuts down its side and expects the server's EOF.

Prints ``echoed M messages of BYTES bytes on each of N connections (TOTAL
bytes) in T s`` and exits 0 when every echo matched; otherwise prints what
failed, to stderr, and exits 1.
"""

from __future__ import annotations

import argparse
import random
import sys
import time

import trio

import traffic

#: Connections opening at once: more would overflow a small listen backlog
#: (dropped SYNs are retried only after a second).
CONNECT_BATCH = 100


async def receive_exactly(stream: traffic.TrafficStream, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = await stream.receive_some(size - len(data))
        if not chunk:
            raise EOFError(f"the server closed after {len(data)} of {size} bytes")
        data += chunk
    return bytes(data)


async def client(
    number: int,
    host: str,
    port: int,
    messages: int,
    size: int,
    limiter: trio.CapacityLimiter,
    failures: list[str],
) -> None:
    try:
        async with limiter:
            stream = await traffic.open_tcp_stream(host, port)
        async with stream:
            for m in range(messages):
                message = random.Random(f"{number}:{m}").randbytes(size)
                await stream.send_all(message)
                if await receive_exactly(stream, size) != message:
                    failures.append(f"client {number}: message {m} came back altered")
                    return
            await stream.send_eof()
            if await stream.receive_some() != b"":
                failures.append(f"client {number}: data after the echo, no EOF")
    except (OSError, EOFError, trio.BrokenResourceError) as exc:
        failures.append(f"client {number}: {type(exc).__name__}: {exc}")


async def run(host: str, port: int, clients: int, messages: int, size: int) -> list[str]:
    failures: list[str] = []
    limiter = trio.CapacityLimiter(CONNECT_BATCH)
    async with trio.open_nursery() as nursery:
        for number in range(clients):
            nursery.start_soon(client, number, host, port, messages, size, limiter, failures)
    return failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("port", type=int)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--messages", type=int, default=10)
    parser.add_argument("--size", type=int, default=1024)
    args = parser.parse_args(argv)
    if args.size < 1 or args.clients < 1 or args.messages < 0:
        parser.error("--size and --clients must be positive, --messages not negative")
    started = time.perf_counter()
    failures = trio.run(run, args.host, args.port, args.clients, args.messages, args.size)
    elapsed = time.perf_counter() - started
    if failures:
        for failure in failures:
            print(failure, file=sys.stderr)
        print(f"{len(failures)} of {args.clients} connections failed", file=sys.stderr)
        return 1
    total = args.clients * args.messages * args.size
    print(
        f"echoed {args.messages} messages of {args.size} bytes on each of "
        f"{args.clients} connections ({total} bytes) in {elapsed:.2f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
