"""The file workload: each run is one transfer of one server row (a
download or uploads, over TCP or AF_UNIX) and returns its metrics.

The file workload moves a fixed amount rather than running for a time: its
client (file_client.c) connects, says "ready", and starts on the driver's
"go" (the server's CPU is read in between), so the window is the transfer
alone, from the first request to the last EOF.  Its files
(:class:`FileFixture`) are made once per run: the download file in a temp
directory on disk (a cold run drops its pages from the page cache first:
``fsync``, then ``posix_fadvise(POSIX_FADV_DONTNEED)``, no root needed; a
warm run reads it through first), and the uploads in a tmpfs (/dev/shm).
Every byte follows file_client.c's pattern: the client checks each one it
downloads, and each uploaded file is checked after the run.

It imports the shared machinery (placement, the server subprocess, the
client, CPU readings) from workloads.py, which does not import it back;
no other traffic module, nor trio or anyio.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .workloads import (
    CLIENT_BOUND,
    CLK_TCK,
    Measured,
    Placement,
    Server,
    WorkloadError,
    _client,
    _expect,
    _watchdog,
    cpu_seconds,
    read_through,
    running_server,
)

#: The file workload: the download file's size, the bytes each upload
#: connection sends, and the connections of both (docs/benchmark.rst).
FILE_MIB = 256
UPLOAD_MIB = 64
FILE_CONNECTIONS = 4

#: Where uploads are written: a tmpfs, so the disk does not set their pace.
UPLOAD_ROOT = "/dev/shm"

#: The file workload's cases (``--file-cases``): direction, socket family
#: and, for downloads, whether the file is in the page cache.
FILE_CASES = (
    "download-tcp-warm",
    "download-tcp-cold",
    "download-unix-warm",
    "download-unix-cold",
    "upload-tcp",
    "upload-unix",
)


def mounted_type(path: Path) -> str:
    """The type of the file system holding ``path`` ("tmpfs", "ext4"...)."""
    target = os.path.realpath(path)
    best, kind = "", "unknown"
    with open("/proc/self/mounts") as f:
        for line in f:
            fields = line.split()
            point = fields[1].replace("\\040", " ")
            inside = target == point or target.startswith(point.rstrip("/") + "/")
            if inside and len(point) >= len(best):
                best, kind = point, fields[2]
    return kind


@dataclass
class FileFixture:
    """The file workload's files, made once per benchmark run: ``download``
    (``download_bytes`` of the pattern) and the sockets in ``directory``, the
    uploads under ``upload_root``; ``connections`` per transfer, each upload
    connection sending ``upload_bytes``."""

    directory: Path
    download: Path
    download_bytes: int
    upload_root: Path
    upload_bytes: int
    connections: int
    client: Path
    runs: int = 0

    @classmethod
    @contextmanager
    def made(
        cls,
        client: Path,
        download_bytes: int,
        upload_bytes: int,
        connections: int,
        notes: list[str],
    ) -> Iterator[FileFixture]:
        """Make the download file in a new temp directory (removed at the end)."""
        directory = Path(tempfile.mkdtemp(prefix="traffic-bench-file-"))
        uploads: Path | None = None
        try:
            if mounted_type(directory) == "tmpfs":
                notes.append(
                    f"file: {directory} is on a tmpfs: the cold downloads are not cold "
                    "(set TMPDIR to a directory on disk)"
                )
            root = Path(UPLOAD_ROOT)
            if root.is_dir() and os.access(root, os.W_OK):
                uploads = Path(tempfile.mkdtemp(prefix="traffic-bench-upload-", dir=root))
            else:
                uploads = directory / "uploads"
                uploads.mkdir()
                notes.append(f"file: no writable {UPLOAD_ROOT}: uploads go to {uploads}")
            download = directory / "download"
            _run_client(client, ["make", download, download_bytes], "file: making the file")
            yield cls(
                directory, download, download_bytes, uploads, upload_bytes, connections, client
            )
        finally:
            shutil.rmtree(directory, ignore_errors=True)
            if uploads is not None:
                shutil.rmtree(uploads, ignore_errors=True)

    def warm(self) -> None:
        """Read the download file through, so all of it is in the page cache."""
        read_through(self.download)

    def drop(self) -> None:
        """Drop the download file's pages from the page cache (no root needed:
        clean pages of one's own file)."""
        fd = os.open(self.download, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _run_client(client: Path, args: list[Any], what: str) -> None:
    done = subprocess.run(
        [str(client), *map(str, args)], capture_output=True, text=True, timeout=600
    )
    if done.returncode != 0:
        raise WorkloadError(f"{what}: {done.stderr.strip() or f'exit {done.returncode}'}")


def file_transfer(name: str, case: str, fixture: FileFixture, placement: Placement) -> Measured:
    """One file transfer (``case``, one of :data:`FILE_CASES`) of server ``name``."""
    direction, family, *cache = case.split("-")
    what = f"{case} {name}"
    fixture.runs += 1
    upload = direction == "upload"
    each = fixture.upload_bytes if upload else fixture.download_bytes
    n = fixture.connections
    target = Path(tempfile.mkdtemp(prefix="run-", dir=fixture.upload_root)) if upload else None
    path = fixture.directory / f"s{fixture.runs}.sock" if family == "unix" else None
    extra = ["--upload", str(target)] if target else ["--download", str(fixture.download)]
    if path is not None:
        extra += ["--unix", str(path)]
    try:
        with running_server(name, placement, {}, extra=tuple(extra)) as server:
            if cache == ["warm"]:
                fixture.warm()
            elif cache == ["cold"]:
                fixture.drop()
            address = str(path) if path is not None else f"127.0.0.1:{server.port}"
            client = _client(fixture.client, [direction, address, n, each], placement)
            # Generous: 20 MB/s would be very slow (a cold read from a slow disk).
            timeout = 60 + n * each / 20e6
            result, cpu = _transfer_window(server, client, what, timeout)
        if target is not None:
            _check_uploads(fixture, target, n, what)
    finally:
        if target is not None:
            shutil.rmtree(target, ignore_errors=True)
        if path is not None and path.exists():
            path.unlink()
    moved, window = result["bytes"], result["seconds"]
    if moved != n * each:
        raise WorkloadError(f"{what}: {moved} bytes moved, expected {n * each}")
    window = max(window, 1e-6)
    return Measured(
        {
            "gbps": moved / window / 1e9,
            "per_cpu": moved / max(cpu, 1.0 / CLK_TCK) / 1e9,
            "server_cores": cpu / window,
            "client_cores": result["client_cpu"] / window,
            "bytes": moved,
            "seconds": window,
        },
        result["client_cpu"] / window > CLIENT_BOUND,
    )


def _transfer_window(
    server: Server, client: subprocess.Popen[str], what: str, timeout: float
) -> tuple[dict[str, Any], float]:
    """The file client's result and the server's CPU seconds between the
    client's "ready" and its result (the transfer starts on our "go")."""
    assert client.stdin is not None
    try:
        with _watchdog(client, timeout):
            _expect(client, what, "ready")
            cpu_from = cpu_seconds(server.pid)
            client.stdin.write("go\n")
            client.stdin.flush()
            line = _expect(client, what, "")
            cpu = cpu_seconds(server.pid) - cpu_from
        _, err = client.communicate(timeout=30)
    finally:
        if client.poll() is None:
            client.kill()
            client.communicate()
    if client.returncode != 0:
        raise WorkloadError(f"{what}: client exited with {client.returncode}: {err.strip()}")
    return json.loads(line), cpu


def _check_uploads(fixture: FileFixture, directory: Path, n: int, what: str) -> None:
    """Every upload connection left one file, the pattern's first bytes."""
    found = sorted(directory.iterdir())
    if len(found) != n:
        raise WorkloadError(f"{what}: {len(found)} uploaded files, expected {n}")
    for path in found:
        _run_client(fixture.client, ["verify", path, fixture.upload_bytes], what)
