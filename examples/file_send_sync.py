"""A synchronous file server on traffic.libloop: the core moves the files.

Usage::

    python examples/file_send_sync.py FILE [PORT] [--host HOST] [--uploads DIR]
    python examples/file_send_sync.py --demo    # serve itself, verify, report, exit

The server listens with a :class:`~traffic.Sockets` transit and prints
``listening on HOST:PORT`` (flushed) once it does.  A client sends a
request of 9 bytes, a command byte and a big-endian 8-byte length:

- ``b"G"`` (length 0): the server sends FILE's size (8 bytes, big-endian),
  then FILE, then ends the connection;
- ``b"P"`` and a length: the client sends that many bytes, the server
  writes them to a new file in ``--uploads`` (without it, uploads are
  refused: the connection is closed), then sends back the SHA-256 of what
  it stored (32 bytes) and ends the connection.

Each connection is an input and an output :class:`~traffic.Octets`
transit, and every step is a resource acquired when the last one is
exhausted: the request is read into a 9-byte buffer (so nothing after it
is taken from the stream); a download is the size in a buffer, then a
:class:`~traffic.FileRegion` of FILE; an upload is a FileRegion of the
new file with the announced count.  The bytes of the files never enter
Python: the core sends them with ``sendfile(2)`` and receives them with
``splice(2)`` where the system has them.  When a region ends, the file's
position is already after its last byte.

Ctrl-C stops the server (exit status 0).  With ``--demo``, the server
serves a temporary file of ``--size`` bytes (16 MiB by default) while
client threads with plain sockets download it and upload their own
payloads, comparing SHA-256 digests; it prints ``verified N downloads and
M uploads (B bytes) in T s`` and exits 0, or 1 if any client failed.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import itertools
import os
import socket
import struct
import sys
import tempfile
import threading
import time
from array import array
from typing import BinaryIO

from traffic import FileRegion, Octets, Sockets
from traffic.libloop import Loop

#: A request: a command byte and a big-endian 8-byte length.
REQUEST = struct.Struct("!cQ")
#: Descriptors one accept resource holds.
ACCEPT_BATCH = 16
#: Seconds a demo client waits for the server before it fails.
CLIENT_TIMEOUT = 30.0


class Server:
    """Serves ``path`` for downloads, and stores uploads in ``uploads`` (if given)."""

    def __init__(self, loop: Loop, path: str, uploads: str | None, host: str, port: int) -> None:
        self.loop = loop
        self.path = path
        self.uploads = uploads
        self.numbers = itertools.count(1)
        self.listener, address = Sockets.listen((host, port))
        self.address: tuple[str, int] = (address[0], address[1])
        loop.attach(
            self.listener,
            on_transfer=self.accepted,
            on_exhaust=self.rearm,
            on_fault=lambda transit: loop.call_later(0.1, self.rearm, transit),
            resource=self.descriptors(),
        )

    @staticmethod
    def descriptors() -> array[int]:
        return array("i", [-1]) * ACCEPT_BATCH

    def accepted(self, transit: Sockets, view: memoryview) -> None:
        for fd in view:
            Connection(self, socket.socket(fileno=fd))

    def rearm(self, transit: Sockets) -> None:
        transit.acquire(self.descriptors())


class Connection:
    """One client: a request, then a download or an upload, then the end."""

    def __init__(self, server: Server, sock: socket.socket) -> None:
        self.server = server
        self.input, self.output = Octets.wrap(sock)
        self.request = bytearray(REQUEST.size)
        self.file: BinaryIO | None = None
        self.upload: FileRegion | None = None
        self.then: list[bytes | FileRegion] = []  # the output's next resources
        loop = server.loop
        loop.attach(self.output, on_exhaust=self.sent, on_terminate=self.close)
        loop.attach(
            self.input, on_exhaust=self.received, on_terminate=self.close, resource=self.request
        )

    def received(self, transit: Octets) -> None:
        """The input's resource is full: the request, or an upload's region."""
        if self.upload is not None:
            self.stored()
            return
        command, length = REQUEST.unpack(self.request)
        if command == b"G":
            self.file = open(self.server.path, "rb")  # noqa: SIM115 (closed by close())
            size = os.fstat(self.file.fileno()).st_size
            self.send(struct.pack("!Q", size), FileRegion(self.file))
        elif command == b"P" and self.server.uploads is not None:
            name = f"upload-{next(self.server.numbers)}"
            self.file = open(os.path.join(self.server.uploads, name), "wb")  # noqa: SIM115
            if length == 0:
                self.stored()
                return
            self.upload = FileRegion(self.file, count=length)
            self.input.acquire(self.upload)
        else:
            self.output.terminate()

    def stored(self) -> None:
        """An upload is in its file: answer with the digest of what is there."""
        assert self.file is not None
        self.file.flush()
        digest = hashlib.sha256()
        with open(self.file.name, "rb") as stored:
            while chunk := stored.read(1 << 20):
                digest.update(chunk)
        self.send(digest.digest())

    def send(self, *resources: bytes | FileRegion) -> None:
        self.then = list(resources)
        self.sent(self.output)

    def sent(self, transit: Octets) -> None:
        """The output's resource went out: the next one, or the end."""
        if self.then:
            transit.acquire(self.then.pop(0))
        else:
            transit.terminate()  # the client sees EOF

    def close(self, transit: Octets) -> None:
        """Either direction ended (done, or the client went away): end both."""
        self.input.terminate()
        self.output.terminate()
        if self.file is not None:
            self.file.close()
            self.file = None


# The demo: clients with plain sockets.


def read_exactly(sock: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(min(n - len(data), 1 << 20))
        if not chunk:
            raise AssertionError(f"the server ended after {len(data)} of {n} bytes")
        data += chunk
    return bytes(data)


def download(address: tuple[str, int], expected: bytes) -> int:
    """Download the file; raise unless its size and digest are ``expected``'s."""
    with socket.create_connection(address, timeout=CLIENT_TIMEOUT) as sock:
        sock.sendall(REQUEST.pack(b"G", 0))
        (size,) = struct.unpack("!Q", read_exactly(sock, 8))
        digest = hashlib.sha256()
        count = 0
        while chunk := sock.recv(1 << 20):
            digest.update(chunk)
            count += len(chunk)
    if (size, count) != (len(expected), len(expected)):
        raise AssertionError(f"download: {count} bytes of {size} announced, {len(expected)} due")
    if digest.digest() != hashlib.sha256(expected).digest():
        raise AssertionError("download: the file differs")
    return count


def upload(address: tuple[str, int], payload: bytes) -> int:
    """Upload ``payload``; raise unless the server stored exactly it."""
    with socket.create_connection(address, timeout=CLIENT_TIMEOUT) as sock:
        sock.sendall(REQUEST.pack(b"P", len(payload)) + payload)
        digest = read_exactly(sock, 32)
        if sock.recv(1):
            raise AssertionError("upload: the server sent more than its digest")
    if digest != hashlib.sha256(payload).digest():
        raise AssertionError("upload: the server stored something else")
    return len(payload)


def demo(size: int, clients: int) -> int:
    with tempfile.TemporaryDirectory() as directory, Loop() as loop:
        content = os.urandom(size)
        path = os.path.join(directory, "served")
        with open(path, "wb") as f:
            f.write(content)
        uploads = os.path.join(directory, "uploads")
        os.mkdir(uploads)
        server = Server(loop, path, uploads, "127.0.0.1", 0)
        print("listening on {}:{}".format(*server.address), flush=True)
        failures: list[BaseException] = []
        moved: list[int] = []

        def client(job: int) -> None:
            try:
                if job % 2:
                    moved.append(upload(server.address, os.urandom(size // 4 + job)))
                else:
                    moved.append(download(server.address, content))
            except BaseException as error:
                failures.append(error)

        def coordinate() -> None:
            threads = [threading.Thread(target=client, args=(i,)) for i in range(2 * clients)]
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
    print(
        f"verified {clients} downloads and {clients} uploads ({sum(moved)} bytes) "
        f"in {elapsed:.2f} s"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A synchronous file server on traffic.")
    parser.add_argument("file", nargs="?", help="the file to serve")
    parser.add_argument("port", nargs="?", type=int, default=0, help="TCP port (0: any)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--uploads", help="a directory to store uploads in (none: refused)")
    parser.add_argument("--demo", action="store_true", help="serve local clients, then exit")
    parser.add_argument("--size", type=int, default=16 << 20, help="demo file size in bytes")
    parser.add_argument("--clients", type=int, default=4, help="demo downloads (and uploads)")
    options = parser.parse_args(argv)
    if options.demo:
        if options.size < 1 or options.clients < 1:
            parser.error("--size and --clients must be positive")
        return demo(options.size, options.clients)
    if options.file is None:
        parser.error("a FILE to serve, or --demo")
    with Loop() as loop:
        server = Server(loop, options.file, options.uploads, options.host, options.port)
        print("listening on {}:{}".format(*server.address), flush=True)
        # Ctrl-C is how this server is asked to stop: closing the loop (on
        # leaving the with block) closes every connection; exit 0.
        with contextlib.suppress(KeyboardInterrupt):
            loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
