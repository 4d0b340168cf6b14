"""examples/fd_handoff.py, run as a user runs it: the parent accepts, a
worker process serves the connections handed to it over SCM_RIGHTS.

Each connection is greeted with ``worker <pid>``: a pid other than the
parent's proves the connection was served by the worker.  Timeouts here
only bound a hang; they never decide a pass.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import threading

from examples_support import example, launched, listening

EXAMPLE = example("fd_handoff.py")
TIMEOUT = 60


def read_line(sock: socket.socket) -> bytes:
    line = b""
    while not line.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            break
        line += chunk
    return line


def test_parent_hands_connections_to_a_worker() -> None:
    with launched(EXAMPLE, "0", timeout=TIMEOUT) as process:
        address = listening(process, TIMEOUT)
        workers: list[int] = []
        errors: list[BaseException] = []

        def client(payload: bytes) -> None:
            try:
                with socket.create_connection(address, timeout=TIMEOUT) as sock:
                    greeting = read_line(sock)
                    found = re.fullmatch(rb"worker (\d+)\n", greeting)
                    assert found, greeting
                    workers.append(int(found[1]))
                    sock.sendall(payload)
                    echoed = b""
                    while len(echoed) < len(payload):
                        chunk = sock.recv(65536)
                        assert chunk, "the worker closed early"
                        echoed += chunk
                    assert echoed == payload
            except BaseException as error:
                errors.append(error)

        threads = [threading.Thread(target=client, args=(os.urandom(10000 + i),)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(TIMEOUT)
        assert not errors, errors
        assert len(workers) == 8
        assert len(set(workers)) == 1
        assert workers[0] not in (process.pid, os.getpid())

        # Ctrl-C: the parent stops, the worker sees EOF on the pair and exits.
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=TIMEOUT)
        assert process.returncode == 0, err
        assert "Traceback" not in err
        assert out == ""
