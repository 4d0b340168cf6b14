"""examples/trio_echo.py and examples/trio_echo_client.py, run as a user runs them.

The server is a subprocess; its first line of output is ``listening on
HOST:PORT``.  The client is another subprocess that verifies every echo and
exits 0 only if all matched.  Timeouts bound a hang, never decide a pass.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

import traffic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERVER = os.path.join(ROOT, "examples", "trio_echo.py")
CLIENT = os.path.join(ROOT, "examples", "trio_echo_client.py")
#: Bounds a hang of a subprocess, never a pass.
TIMEOUT = 30


def environment() -> dict[str, str]:
    """The subprocesses import the same traffic as these tests."""
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(traffic.__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = package_root + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.fixture
def server() -> Iterator[tuple[subprocess.Popen[str], int]]:
    """The example server on an ephemeral port, and the port."""
    process = subprocess.Popen(
        [sys.executable, SERVER],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment(),
        cwd=ROOT,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        match = re.fullmatch(r"listening on 127\.0\.0\.1:(\d+)\n", line)
        assert match, f"first line: {line!r}"
        yield process, int(match[1])
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=TIMEOUT)


def run_client(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, CLIENT, str(port), *args],
        capture_output=True,
        text=True,
        env=environment(),
        cwd=ROOT,
        timeout=TIMEOUT,
    )


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
