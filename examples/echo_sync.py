"""A synchronous echo server on traffic.libloop.

Usage::

    python examples/echo_sync.py [PORT] [--host HOST]   # serve until Ctrl-C
    python examples/echo_sync.py --demo                 # serve, echo, report, exit

The server listens with a :class:`~traffic.Sockets` transit and prints
``listening on HOST:PORT`` (flushed) once it does.  Each accepted
descriptor becomes a connection of two :class:`~traffic.Octets` transits,
and the echo uses exhaustion as its flow control:

- the input transit receives into one buffer; every transfer is a slice of
  it, queued and sent as it is by the output transit (no copy);
- the output takes the next slice when it has exhausted the previous one;
- only when the input has exhausted its buffer *and* every slice of it has
  been sent does the input get the buffer back: a client that does not
  read its echo starves the server's input, so the server never holds more
  than one buffer per connection;
- when the input terminates (the client shut down its side), the output is
  terminated once the queue is sent: the client sees EOF after its echo.
  If the output fails (the client went away), the input is terminated.

Ctrl-C stops the server: it closes every connection and exits with status
0 (a requested shutdown is not an error).  With ``--demo``, the server runs
in the main thread while client threads connect with plain sockets, each
echoing ``--size`` bytes (1 MiB by default) and comparing SHA-256 digests;
it prints ``echoed N bytes over M connections in T s`` and exits 0, or 1
if any client failed.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import socket
import sys
import threading
import time
from array import array
from collections import deque

from traffic import Octets, Sockets
from traffic.libloop import Loop

#: Bytes one connection receives into before it must be sent back.
BUFFER_SIZE = 64 * 1024
#: Descriptors one accept resource holds.
ACCEPT_BATCH = 16
#: Seconds the listener rests after EMFILE and friends.
ACCEPT_BACKOFF = 0.1
#: Seconds a demo client waits for the server before it fails.
CLIENT_TIMEOUT = 30.0


class Stats:
    """What the server did: connections accepted, bytes echoed."""

    def __init__(self) -> None:
        self.connections = 0
        self.echoed = 0


class Echo:
    """One connection: echo what arrives, with exhaustion as flow control."""

    def __init__(self, loop: Loop, fd: int, stats: Stats) -> None:
        sock = socket.socket(fileno=fd)
        self.input, self.output = Octets.wrap(sock)
        self.stats = stats
        self.buffer = bytearray(BUFFER_SIZE)
        self.queue: deque[memoryview] = deque()
        self.sending = 0  # bytes of the output's current resource, 0 when idle
        self.input_full = False
        self.input_ended = False
        loop.attach(self.output, on_exhaust=self.sent, on_terminate=self.output_ended)
        loop.attach(
            self.input,
            on_transfer=self.received,
            on_exhaust=self.full,
            on_terminate=self.ended,
            resource=self.buffer,
        )

    def received(self, transit: Octets, view: memoryview) -> None:
        self.queue.append(view)
        self.advance()

    def full(self, transit: Octets) -> None:
        self.input_full = True
        self.advance()

    def ended(self, transit: Octets) -> None:
        self.input_ended = True
        self.advance()

    def sent(self, transit: Octets) -> None:
        self.stats.echoed += self.sending
        self.sending = 0
        self.advance()

    def output_ended(self, transit: Octets) -> None:
        # Terminated by advance() after the input ended, or by the client
        # going away (transit.error says why): either way, nothing more.
        self.queue.clear()
        self.sending = 0
        self.input.terminate()

    def advance(self) -> None:
        """Send the next slice; give the buffer back once all of it went out."""
        if self.sending or self.output.terminated:
            return
        if self.queue:
            view = self.queue.popleft()
            self.sending = len(view)
            self.output.acquire(view)
        elif self.input_ended:
            self.output.terminate()
        elif self.input_full:
            self.input_full = False
            self.input.acquire(self.buffer)


class Server:
    """A listener on ``loop`` that starts an :class:`Echo` per connection."""

    def __init__(self, loop: Loop, host: str, port: int) -> None:
        self.loop = loop
        self.stats = Stats()
        self.listener, address = Sockets.listen((host, port))
        self.address: tuple[str, int] = (address[0], address[1])
        loop.attach(
            self.listener,
            on_transfer=self.accepted,
            on_exhaust=self.rearm,
            on_fault=self.fault,
            on_terminate=self.lost,
            resource=self.descriptors(),
        )

    @staticmethod
    def descriptors() -> array[int]:
        return array("i", [-1]) * ACCEPT_BATCH

    def accepted(self, transit: Sockets, view: memoryview) -> None:
        for fd in view:
            try:
                Echo(self.loop, fd, self.stats)
            except OSError as error:
                print(f"dropping a connection: {error}", file=sys.stderr)
                continue
            self.stats.connections += 1

    def rearm(self, transit: Sockets) -> None:
        transit.acquire(self.descriptors())

    def fault(self, transit: Sockets) -> None:
        # Out of descriptors (EMFILE...): rest, then accept again.
        self.loop.call_later(ACCEPT_BACKOFF, self.rearm, transit)

    def lost(self, transit: Sockets) -> None:
        print(f"the listener terminated: {os.strerror(transit.error or 0)}", file=sys.stderr)
        self.loop.stop()


def client(address: tuple[str, int], size: int, seed: int) -> int:
    """Echo ``size`` bytes through the server; raise if what returns differs.

    Returns the bytes verified.  A server that stops answering makes the
    client fail after CLIENT_TIMEOUT seconds rather than hang the demo.
    """
    block = hashlib.sha256(seed.to_bytes(8, "big")).digest() * 2048  # 64 KiB
    with socket.create_connection(address, timeout=CLIENT_TIMEOUT) as sock:
        sent = hashlib.sha256()
        failure: list[BaseException] = []

        def send() -> None:
            try:
                left = size
                while left:
                    chunk = block[: min(left, len(block))]
                    sock.sendall(chunk)
                    sent.update(chunk)
                    left -= len(chunk)
                sock.shutdown(socket.SHUT_WR)
            except BaseException as error:
                failure.append(error)

        sender = threading.Thread(target=send, name=f"demo-sender-{seed}")
        sender.start()
        received = hashlib.sha256()
        count = 0
        while count < size:
            data = sock.recv(BUFFER_SIZE)
            if not data:
                break
            received.update(data)
            count += len(data)
        sender.join()
        if failure:
            raise failure[0]
        if count != size:
            raise AssertionError(f"client {seed}: got {count} of {size} bytes back")
        if received.digest() != sent.digest():
            raise AssertionError(f"client {seed}: the echo differs from what was sent")
        return count


def demo(loop: Loop, server: Server, clients: int, size: int) -> int:
    """Run ``clients`` echo clients in threads against ``server``; report."""
    failures: list[BaseException] = []
    verified: list[int] = []

    def run_client(seed: int) -> None:
        try:
            verified.append(client(server.address, size, seed))
        except BaseException as error:
            failures.append(error)

    def coordinate() -> None:
        threads = [
            threading.Thread(target=run_client, args=(i,), name=f"demo-client-{i}")
            for i in range(clients)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        loop.stop()  # safe from this thread: it wakes the cycle

    started = time.monotonic()
    coordinator = threading.Thread(target=coordinate, name="demo-coordinator")
    coordinator.start()
    loop.run()
    coordinator.join()
    elapsed = time.monotonic() - started
    for error in failures:
        print(f"client failed: {error!r}", file=sys.stderr)
    if failures:
        return 1
    # Bytes the clients verified; connections the server accepted.
    echoed, connections = sum(verified), server.stats.connections
    print(f"echoed {echoed} bytes over {connections} connections in {elapsed:.2f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A synchronous echo server on traffic.")
    parser.add_argument("port", nargs="?", type=int, default=0, help="TCP port (0: any)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--demo", action="store_true", help="echo with local clients, then exit")
    parser.add_argument("--clients", type=int, default=8, help="demo connections")
    parser.add_argument("--size", type=int, default=1 << 20, help="demo bytes per connection")
    options = parser.parse_args(argv)
    if options.clients < 1 or options.size < 1:
        parser.error("--clients and --size must be positive")

    with Loop() as loop:
        server = Server(loop, options.host, options.port)
        host, port = server.address
        print(f"listening on {host}:{port}", flush=True)
        if options.demo:
            return demo(loop, server, options.clients, options.size)
        # Ctrl-C is how this server is asked to stop: closing the loop (on
        # leaving the with block) closes every connection; exit 0.
        with contextlib.suppress(KeyboardInterrupt):
            loop.run()
        return 0


if __name__ == "__main__":
    sys.exit(main())
