"""A helper module of ``test_core_paths.py`` and ``test_layer_paths.py``;
it holds no tests.

Those tests go where the rest of the suite never went (a race the abort
loses, a bound a pass reaches, a batch every slot of which is filled), and
each proves it got there by a counter of the core's: :func:`stats` reads a
Traffic's (``tr_traffic_stats``, traffic.h says what each counts).

:class:`Drain` is a peer in another process that reads as fast as it can:
a sender on traffic's side then spends its time inside its system calls
(``sendfile`` copying into a socket that is emptied as it fills), where
the tests want its cancellations and terminations to land.

Not named ``test_*``: the tests import it as a sibling top-level module.
"""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from traffic import Traffic
from traffic._traffic import ffi, lib

#: The counters of tr_stats, in the order traffic.h declares them.
STATS = (
    "withdraw_in_call",
    "withdraw_in_file_call",
    "file_pass_bound",
    "datagram_full_batch",
    "end_settled",
    "accepted_closed",
    "armed_both",
)


def stats(traffic: Traffic) -> dict[str, int]:
    """The counters of ``traffic``'s core (see traffic.h's ``tr_stats``)."""
    out = ffi.new("tr_stats *")
    assert lib.tr_traffic_stats(traffic._c, out) == 0
    return {name: int(getattr(out, name)) for name in STATS}


def ended(clients: list[socket.socket]) -> list[bool]:
    """Whether each connection's other end (an accepted descriptor) is
    closed: its client reads the end (EOF, or a reset), within 5 s for all."""
    deadline = time.monotonic() + 5
    out = []
    for client in clients:
        client.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            out.append(client.recv(1) == b"")
        except ConnectionResetError:
            out.append(True)
        except TimeoutError:
            out.append(False)
    return out


def big_file_at(directory: Path) -> Path:
    """A 32 MiB file in ``directory`` for the sends that races interrupt
    (what it holds does not matter there: byte counts are compared)."""
    path = directory / "big"
    with open(path, "wb") as f:
        f.write(bytes(range(256)) * (128 << 10))
    return path


#: SO_SNDBUFFORCE (Linux; needs CAP_NET_ADMIN): a send buffer past wmem_max.
SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)


def queue_up(peer: socket.socket, data: bytes) -> int:
    """Queue as much of ``data`` as the kernel takes without a reader, from
    ``peer`` towards its other end; return how many bytes went.

    An AF_UNIX stream's bytes wait in the receiver's queue, charged to the
    sender's buffer: as root the buffer is forced past ``wmem_max``, else it
    is what ``SO_SNDBUF`` may give (twice ``wmem_max``)."""
    try:
        peer.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, 4 * len(data))
    except OSError:
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * len(data))
    peer.setblocking(False)
    view = memoryview(data)
    sent = 0
    try:
        while sent < len(data):
            sent += peer.send(view[sent : sent + (1 << 20)])
    except BlockingIOError:
        pass
    peer.setblocking(True)
    return sent


DRAIN = r"""
import select, socket, sys
listener = socket.socket(fileno=int(sys.argv[1]))
buffer = bytearray(4 << 20)
while True:
    ready, _, _ = select.select([listener, sys.stdin], [], [])
    if sys.stdin in ready:
        break                      # the test is done with us
    connection, _ = listener.accept()
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    received = 0
    with connection:
        while True:
            n = connection.recv_into(buffer)
            if not n:
                break
            received += n
    print(received, flush=True)
"""


class Drain:
    """A reader in a child process: each connection made with
    :meth:`connect` is read as fast as the child can until its end, and
    :meth:`received` is how many bytes it got (one connection at a time)."""

    def __init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory()
        self.path = os.path.join(self._dir.name, "drain")
        self._lines = b""
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(self.path)
            listener.listen(8)
            self._child = subprocess.Popen(
                [sys.executable, "-c", DRAIN, str(listener.fileno())],
                pass_fds=[listener.fileno()],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                bufsize=0,
            )
        finally:
            listener.close()  # the child's copy listens

    def connect(self) -> socket.socket:
        """A new connection to the reader, with a large send buffer."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
            sock.connect(self.path)
        except BaseException:
            sock.close()
            raise
        return sock

    def received(self, timeout: float = 10.0) -> int:
        """The bytes the reader got on the last connection, once it ended;
        fails if it has not ended within ``timeout`` seconds."""
        assert self._child.stdout is not None
        fd = self._child.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._lines:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([fd], [], [], max(0.0, left))
            assert ready, f"the reader saw no end of the connection within {timeout} s"
            chunk = os.read(fd, 4096)
            assert chunk, f"the reader exited ({self._child.poll()})"
            self._lines += chunk
        line, self._lines = self._lines.split(b"\n", 1)
        return int(line)

    def close(self) -> None:
        assert self._child.stdin is not None and self._child.stdout is not None
        self._child.stdin.close()
        try:
            try:
                self._child.wait(timeout=10)
            except subprocess.TimeoutExpired:  # stuck in a connection that never ended
                self._child.kill()
                self._child.wait()
        finally:
            self._child.stdout.close()
            self._dir.cleanup()

    def __enter__(self) -> Drain:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
