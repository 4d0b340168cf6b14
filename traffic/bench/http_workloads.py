"""The HTTP workloads: http-client measures each row's HTTP client against
a C responder (http_responder.c), http-server each row's HTTP server under
a C load generator (http_load.c); each runs one row once and returns its
metrics.

It imports the shared machinery (placement, the server subprocess, the
client, CPU readings) from workloads.py, which does not import it back;
no other traffic module and no HTTP host, nor trio or anyio (the rows
run in subprocesses: http_client.py, http_server.py).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from .workloads import (
    _ROOT,
    CLIENT_BOUND,
    CLK_TCK,
    Measured,
    Placement,
    Server,
    WorkloadError,
    _client,
    _env,
    _expect,
    _preexec,
    _tail,
    _watchdog,
    base_name,
    cpu_seconds,
    read_through,
    running_server,
)

# --- the http-client workload --------------------------------------------------------

#: The http-client workload's defaults: requests in flight (each on a
#: connection of its own, kept alive) and the download's size.
HTTP_IN_FLIGHT = 100
HTTP_DOWNLOAD_MIB = 64


def http_client(
    name: str,
    seconds: float,
    warmup: float,
    placement: Placement,
    binaries: dict[str, Path],
    in_flight: int = HTTP_IN_FLIGHT,
    download_bytes: int = HTTP_DOWNLOAD_MIB << 20,
    check: bool = False,
) -> Measured:
    """Row ``name``'s HTTP client (``python -m traffic.bench.http_client``,
    the process measured) against the C responder (http_responder.c): the
    request phase, then the download phase.

    Here the client is the process measured and the C program the fixed
    peer, so they swap places: the client takes the server's CPUs of the
    placement (its cycle thread with it), the responder the client's.  The
    client reads its own CPU over each window (every thread); the
    responder's is read from /proc when each window's lines arrive, and a
    run where it used more than :data:`CLIENT_BOUND` of a core is marked
    bound by it (the note says "server-bound").  With ``check`` the
    client's tally of every response is kept in ``details``."""
    files = in_flight + 256
    command = [str(binaries["http_responder"]), str(download_bytes)]
    swapped = Placement(placement.name, placement.client, placement.server)
    with running_server("http_responder", swapped, binaries, files=files, command=command) as peer:
        args = [
            sys.executable, "-m", "traffic.bench.http_client", base_name(name), str(peer.port),
            "--seconds", str(seconds),
            "--warmup", str(warmup),
            "--in-flight", str(in_flight),
            "--download-bytes", str(download_bytes),
        ]  # fmt: skip
        if check:
            args.append("--check")
        client = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=_ROOT,
            env=_env(name),
            preexec_fn=_preexec(placement.server, files),
        )
        what = f"http-client {name}"
        phases: dict[str, tuple[dict[str, Any], float]] = {}
        try:
            with _watchdog(client, 2 * seconds + warmup + 120):
                for phase in ("requests", "download"):
                    _expect(client, what, f"start {phase}")
                    cpu_from = cpu_seconds(peer.pid)
                    line = _expect(client, what, "")
                    phases[phase] = (json.loads(line), cpu_seconds(peer.pid) - cpu_from)
            _, err = client.communicate(timeout=30)
        finally:
            if client.poll() is None:
                client.kill()
                client.communicate()
    if client.returncode != 0:
        raise WorkloadError(f"{what}: client exited with {client.returncode}: {err.strip()}")
    (requests, peer_cpu), (download, dl_peer_cpu) = phases["requests"], phases["download"]
    if requests["requests"] <= 0 or download["bytes"] <= 0:
        raise WorkloadError(f"{what}: nothing completed ({requests}, {download})")
    window, dl_window = requests["seconds"], download["seconds"]
    metrics = {
        "rate": requests["requests"] / window,
        "req_per_cpu": requests["requests"] / max(requests["cpu"], 1e-9),
        "client_cores": requests["cpu"] / window,
        "server_cores": peer_cpu / window,
        "dl_gbps": download["bytes"] / dl_window / 1e9,
        "dl_per_cpu": download["bytes"] / max(download["cpu"], 1e-9) / 1e9,
        "dl_client_cores": download["cpu"] / dl_window,
        "dl_server_cores": dl_peer_cpu / dl_window,
        "downloads": download["downloads"],
    }
    bound = max(metrics["server_cores"], metrics["dl_server_cores"]) > CLIENT_BOUND
    details = {"requests": requests.get("seen"), "downloads": download.get("seen")}
    return Measured(metrics, bound, details)


# --- the http-server workload --------------------------------------------------------

#: The http-server workload's defaults: connections of the request phase
#: (each with one request in flight, kept alive), the file's size, and the
#: connections of the file phase (each downloading the whole file in turn).
HTTP_CONNECTIONS = 100
HTTP_FILE_MIB = 64
HTTP_FILE_CONNECTIONS = 1


@dataclass
class HttpFile:
    """The file every http-server row serves at ``/file``: ``size`` random
    bytes at ``path`` (in a temp directory on disk), and their CRC-32, which
    the load generator checks each download against."""

    path: Path
    size: int
    crc: int

    @classmethod
    @contextmanager
    def made(cls, size: int) -> Iterator[HttpFile]:
        """Make the file in a new temp directory (removed at the end)."""
        directory = Path(tempfile.mkdtemp(prefix="traffic-bench-http-"))
        try:
            path = directory / "file"
            crc, left = 0, size
            with open(path, "wb") as f:
                while left:
                    chunk = os.urandom(min(left, 1 << 20))
                    crc = zlib.crc32(chunk, crc)
                    f.write(chunk)
                    left -= len(chunk)
            yield cls(path, size, crc)
        finally:
            shutil.rmtree(directory, ignore_errors=True)

    def warm(self) -> None:
        """Read the file through, so every row serves it from the page cache."""
        read_through(self.path)


def http_server(
    name: str,
    seconds: float,
    warmup: float,
    placement: Placement,
    binaries: dict[str, Path],
    http_file: HttpFile,
    connections: int = HTTP_CONNECTIONS,
    file_connections: int = HTTP_FILE_CONNECTIONS,
) -> Measured:
    """Row ``name``'s HTTP server (``python -m traffic.bench.http_server``)
    under the C load generator (http_load.c), in one server process: the
    request phase (``connections`` connections, ``GET /small`` one request
    at a time each, ``warmup`` then ``seconds``), then the file phase
    (``file_connections`` connections downloading ``GET /file`` in turn,
    one download each to warm up, then ``seconds``).  The server's CPU
    (every thread) is read from /proc when each window starts and ends.

    A download that breaks off (the server closes or resets the connection,
    or stalls) is the row's result for the file phase: ``file_broken_mb``
    says how far it got, in place of the file's figures, and ``details``
    keeps the last error the server logged."""
    files = connections + 256
    command = [
        sys.executable, "-m", "traffic.bench.http_server", base_name(name),
        "--file", str(http_file.path),
    ]  # fmt: skip
    what = f"http-server {name}"
    client = binaries["http_load"]
    with running_server(name, placement, binaries, files=files, command=command) as server:
        address = f"127.0.0.1:{server.port}"
        args: list[Any] = ["requests", address, connections, seconds, warmup, SMALL_BYTES]
        requests, cpu = _load_window(
            server, _client(client, args, placement, files), f"{what} requests",
            seconds + warmup + 60,
        )  # fmt: skip
        http_file.warm()
        args = ["file", address, file_connections, seconds, http_file.size, http_file.crc]
        # Generous: two downloads of each connection at 20 MB/s, and the window.
        timeout = 60 + seconds + 2 * file_connections * http_file.size / 20e6
        download, file_cpu = _load_window(
            server, _client(client, args, placement, files), f"{what} file", timeout
        )
        logged = _last_error(server.stderr) if download["broken"] else None
    if requests["requests"] <= 0:
        raise WorkloadError(f"{what}: no request completed ({requests})")
    window = requests["seconds"]
    metrics = {
        "rate": requests["requests"] / window,
        "req_per_cpu": requests["requests"] / max(cpu, 1.0 / CLK_TCK),
        "server_cores": cpu / window,
        "client_cores": requests["client_cpu"] / window,
        "reconnects": requests["reconnects"],
    }
    if download["broken"]:
        metrics["file_broken_mb"] = download["broken_at"] / 1e6
    else:
        file_window = max(download["seconds"], 1e-6)
        moved = download["bytes"]
        metrics.update(
            {
                "file_gbps": moved / file_window / 1e9,
                "file_per_cpu": moved / max(file_cpu, 1.0 / CLK_TCK) / 1e9,
                "file_server_cores": file_cpu / file_window,
                "file_client_cores": download["client_cpu"] / file_window,
                "downloads": download["downloads"],
            }
        )
    bound = max(metrics["client_cores"], metrics.get("file_client_cores", 0.0)) > CLIENT_BOUND
    details: dict[str, Any] = {"file": download}
    if download["broken"]:
        details["error"] = (
            f"the download broke off after {download['broken_at']:,} bytes "
            f"({download['broken']})" + (f": the server logged {logged}" if logged else "")
        )
    return Measured(metrics, bound, details)


#: The body size of ``GET /small`` (asgi_app.SMALL_BYTES; this module
#: imports no host).
SMALL_BYTES = 1024


def _load_window(
    server: Server, client: subprocess.Popen[str], what: str, timeout: float
) -> tuple[dict[str, Any], float]:
    """http_load's result, and the server's CPU seconds between its "start"
    and its result."""
    try:
        with _watchdog(client, timeout):
            _expect(client, what, "start")
            cpu_from = cpu_seconds(server.pid)
            line = _expect(client, what, "")
            cpu = cpu_seconds(server.pid) - cpu_from
        _, err = client.communicate(timeout=30)
    finally:
        if client.poll() is None:
            client.kill()
            client.communicate()
    if client.returncode != 0:
        raise WorkloadError(
            f"{what}: client exited with {client.returncode}: {err.strip()} "
            f"(server: {_tail(server.stderr, 3)})"
        )
    return json.loads(line), cpu


def _last_error(stream: IO[str]) -> str | None:
    """The last line of a traceback (``SomeError: ...``) in a server's
    stderr, or None."""
    stream.flush()
    fd = stream.fileno()
    # pread: the server writes to the same open file, whose offset a seek
    # would move under it.
    text = os.pread(fd, os.fstat(fd).st_size, 0).decode(errors="replace")
    found = None
    for line in text.splitlines():
        head = line.split(":", 1)[0].strip()
        if ":" in line and head.isidentifier() and head.endswith(("Error", "Exception")):
            found = line.strip()
    return found
