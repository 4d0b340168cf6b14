"""examples/trio_echo.py and examples/trio_echo_client.py, run as a user runs them.

The server is a subprocess; its first line of output is ``listening on
HOST:PORT``.  The client is another subprocess that verifies every echo and
exits 0 only if all matched.  Timeouts bound a hang, never decide a pass.
"""

from __future__ import annotations

import contextlib
import re
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator

import pytest
from examples_support import example, launched, listening, run_example

SERVER = example("trio_echo.py")
CLIENT = example("trio_echo_client.py")
#: Bounds a hang of a subprocess, never a pass.
TIMEOUT = 30


@pytest.fixture
def server() -> Iterator[tuple[subprocess.Popen[str], int]]:
    """The example server on an ephemeral port, and the port."""
    with launched(SERVER, timeout=TIMEOUT) as process:
        _, port = listening(process, TIMEOUT, host="127.0.0.1")
        yield process, port


def run_client(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    return run_example(CLIENT, str(port), *args, timeout=TIMEOUT)


def test_client_against_server(server: tuple[subprocess.Popen[str], int]) -> None:
    process, port = server
    done = run_client(port, "--clients", "200", "--messages", "5", "--size", "3000")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        "echoed 5 messages of 3000 bytes on each of 200 connections (3000000 bytes) in "
        + done.stdout.split(" in ")[-1].strip()
    )
    assert re.fullmatch(r".* in \d+\.\d\d s\n", done.stdout)
    # A second run against the same server: it kept serving.
    again = run_client(port, "--clients", "3", "--messages", "2")
    assert again.returncode == 0, again.stderr
    # Ctrl-C: the server stops, exits 0, and says so.
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=TIMEOUT)
    assert process.returncode == 0, err
    assert "Traceback" not in err, err
    assert err.strip() == "stopped"


def test_server_ctrl_c_with_open_connections(server: tuple[subprocess.Popen[str], int]) -> None:
    process, port = server
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(5)]
    try:
        for client in clients:
            client.sendall(b"x")
            assert client.recv(1) == b"x"
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=TIMEOUT)
        assert process.returncode == 0, err
        for client in clients:
            client.settimeout(TIMEOUT)
            with contextlib.suppress(ConnectionResetError):  # closed with data unread
                assert client.recv(1) == b""  # the server closed it
    finally:
        for client in clients:
            client.close()


def test_client_detects_a_bad_echo() -> None:
    """The client's verification can fail: a server that alters one byte."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def bad_echo() -> None:
        connection, _ = listener.accept()
        with connection:
            while data := connection.recv(65536):
                connection.sendall(bytes([data[0] ^ 1]) + data[1:])

    thread = threading.Thread(target=bad_echo)
    thread.start()
    try:
        done = run_client(port, "--clients", "1", "--messages", "1", "--size", "100")
    finally:
        thread.join(TIMEOUT)
        listener.close()
    assert done.returncode == 1
    assert "altered" in done.stderr
    assert done.stdout == ""


def test_client_reports_refused_connections() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()  # nobody listens there now
    done = run_client(port, "--clients", "2", "--messages", "1")
    assert done.returncode == 1
    assert "2 of 2 connections failed" in done.stderr
