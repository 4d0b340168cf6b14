"""examples/echo_sync.py, run as a user runs it: a subprocess and stdlib clients.

The server's stdout's first line is ``listening on HOST:PORT``; clients
compare SHA-256 digests of what they sent and what came back.  Ctrl-C
(SIGINT) is the server's way to stop and exits with status 0 (documented in
the example).  Timeouts here only bound a hang; they never decide a pass.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator

import pytest
from examples_support import example, launched, listening, run_example

EXAMPLE = example("echo_sync.py")
#: Bounds a hang of the subprocess, never a pass.
TIMEOUT = 60


@pytest.fixture
def server() -> Iterator[tuple[subprocess.Popen[str], tuple[str, int]]]:
    """The example serving on an ephemeral port, and its address."""
    with launched(EXAMPLE, "0", timeout=TIMEOUT) as process:
        yield process, listening(process, TIMEOUT)


def echo(address: tuple[str, int], payload: bytes, errors: list[BaseException]) -> None:
    """Send ``payload`` while reading its echo; record a mismatch in ``errors``."""
    try:
        with socket.create_connection(address, timeout=TIMEOUT) as sock:
            sender = threading.Thread(target=sock.sendall, args=(payload,))
            sender.start()
            digest = hashlib.sha256()
            count = 0
            while count < len(payload):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                digest.update(chunk)
                count += len(chunk)
            sender.join()
            assert count == len(payload), f"{count} of {len(payload)} bytes came back"
            assert digest.digest() == hashlib.sha256(payload).digest(), "the echo differs"
    except BaseException as error:
        errors.append(error)


def test_demo_is_the_main_job() -> None:
    result = run_example(EXAMPLE, "--demo", timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert re.fullmatch(r"listening on 127\.0\.0\.1:\d+", lines[0])
    match = re.fullmatch(r"echoed (\d+) bytes over (\d+) connections in [\d.]+ s", lines[-1])
    assert match, result.stdout
    assert (int(match[1]), int(match[2])) == (8 * 2**20, 8)
    assert result.stderr == ""


def test_server_echoes_concurrent_connections_then_stops_on_sigint(
    server: tuple[subprocess.Popen[str], tuple[str, int]],
) -> None:
    process, address = server
    errors: list[BaseException] = []
    payloads = [os.urandom(100 * 1024) for _ in range(10)]
    clients = [threading.Thread(target=echo, args=(address, p, errors)) for p in payloads]
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join()
    assert not errors, errors

    # One connection stays open through the Ctrl-C: the server closes it.
    with socket.create_connection(address, timeout=TIMEOUT) as idle:
        idle.sendall(b"still here")
        assert idle.recv(64) == b"still here"
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=TIMEOUT)
        try:
            rest = idle.recv(64)
        except ConnectionResetError:
            rest = b""  # closed with bytes unread is closed too
        assert rest == b""
    assert process.returncode == 0, err
    assert "Traceback" not in err
    assert out == ""  # nothing after the listening line


def test_server_ends_its_output_after_the_client_ends_its_input(
    server: tuple[subprocess.Popen[str], tuple[str, int]],
) -> None:
    _, address = server
    failures: list[str] = []

    def half_close(index: int) -> None:
        with socket.create_connection(address, timeout=TIMEOUT) as sock:
            # A round trip first: the server's input is then drained and
            # waiting for an edge, as on any long-lived connection; the last
            # words and the EOF then tend to arrive in one edge (which an
            # earlier core lost the EOF of).
            sock.sendall(b"ping")
            assert sock.recv(4) == b"ping"
            sock.sendall(b"last words %d" % index)
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(10)  # bounds a hang waiting for the EOF; never a pass
            data = b""
            try:
                while chunk := sock.recv(64):
                    data += chunk
            except TimeoutError:
                failures.append(f"connection {index}: no EOF after {data!r}")
                return
            if data != b"last words %d" % index:
                failures.append(f"connection {index}: {data!r}")

    threads = [threading.Thread(target=half_close, args=(i,)) for i in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures


def test_echo_cycle_serves_one_connection_with_eof_after_the_echo() -> None:
    """examples/echo_cycle.py, the README's ``with traffic:`` example: 1 MB
    echoed intact, EOF after it, and the server exits with its --once."""
    with launched(example("echo_cycle.py"), "--once", timeout=TIMEOUT) as process:
        address = listening(process, TIMEOUT)
        payload = os.urandom(1 << 20)
        with socket.create_connection(address, timeout=TIMEOUT) as sock:

            def send() -> None:
                sock.sendall(payload)
                sock.shutdown(socket.SHUT_WR)

            sender = threading.Thread(target=send)
            sender.start()
            received = bytearray()
            while chunk := sock.recv(65536):  # ends at the server's EOF
                received += chunk
            sender.join()
        assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()
        assert process.wait(timeout=TIMEOUT) == 0
        assert process.stderr is not None and process.stderr.read() == ""
