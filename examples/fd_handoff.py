"""Pre-fork hand-off: a parent accepts TCP connections, a worker serves them.

The parent listens and accepts; each accepted connection's descriptor is
handed to a worker process over an AF_UNIX socketpair (SCM_RIGHTS, with
``traffic.send_fds``) and closed in the parent.  The worker, started with
``subprocess`` and its end of the pair passed with ``pass_fds``, receives
descriptors with ``traffic.receive_fds`` and serves each connection: it
greets with ``worker <pid>`` and echoes until the client closes.

Run::

    python examples/fd_handoff.py [PORT]

The first line printed is ``listening on HOST:PORT``.  Ctrl-C (SIGINT) stops
the parent, exiting with status 0; closing its end of the pair makes the
worker see EOF, close its connections and exit.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys

import trio

import traffic
from traffic import Descriptors, Sockets


async def parent(port: int, handoff: socket.socket) -> None:
    listener, (host, bound) = Sockets.listen(("127.0.0.1", port))
    _, sender = Descriptors.wrap(handoff)  # our end of the pair, to the worker
    print(f"listening on {host}:{bound}", flush=True)
    while True:
        for fd in await traffic.accept(listener):
            try:
                # The worker gets its own copy of the connection...
                await traffic.send_fds(sender, b"c", [fd])
            finally:
                os.close(fd)  # ...and the parent lets go of its own.


async def echo(stream: traffic.TrafficStream) -> None:
    async with stream:
        try:
            await stream.send_all(f"worker {os.getpid()}\n".encode())
            while data := await stream.receive_some():
                await stream.send_all(data)
        except trio.BrokenResourceError:
            pass  # the client went away


async def worker(fd: int) -> None:
    receiver, _ = Descriptors.wrap(socket.socket(fileno=fd))
    async with trio.open_nursery() as nursery:
        while True:
            data, fds = await traffic.receive_fds(receiver, 64, 16)
            if not data:  # EOF: the parent is gone
                nursery.cancel_scope.cancel()
                return
            for conn in fds:
                nursery.start_soon(echo, traffic.TrafficStream(socket.socket(fileno=conn)))


def main() -> None:
    if sys.argv[1:2] == ["--worker"]:
        # Ctrl-C in a terminal reaches the worker too: it ends quietly.
        with contextlib.suppress(KeyboardInterrupt):
            trio.run(worker, int(sys.argv[2]))
        return
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    ours, theirs = socket.socketpair()
    process = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--worker", str(theirs.fileno())],
        pass_fds=[theirs.fileno()],
    )
    theirs.close()
    try:
        trio.run(parent, port, ours)
    except KeyboardInterrupt:
        pass
    finally:
        if ours.fileno() >= 0:
            ours.close()  # not handed over yet (the run ended early)
        process.wait()


if __name__ == "__main__":
    main()
