"""The workloads: each runs one implementation once and returns its metrics.

Every server is a subprocess (``python -m traffic.bench.servers NAME``) and
every load generator a C program (see build.py), each pinned per the
placement.  CPU is read from ``/proc/PID/stat`` (utime + stime of the whole
thread group: the kernel sums every thread, those that already exited too)
at the moment the client says its warm-up is over and again when it reports,
so the server's CPU covers exactly the measured window.

The placements (``--pin``): "cross" puts the server on the first allowed CPU
and the client on the second; "same" puts both on the first; "none" leaves
the scheduler free.  The stream workload is a single process: pinned to the
first CPU unless the placement is "none".

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
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

#: Echo message size in bytes (docs/benchmark.rst).
ECHO_SIZE = 64

#: Connection attempts the accept client keeps in flight: enough to keep any
#: of these servers' accept loops busy, few enough for a default listen queue
#: (asyncio's backlog is 100).
ACCEPT_IN_FLIGHT = 64

#: Idle connections held in the idle workload, and the warm set
#: opened before the first RSS reading so one-time costs are not counted.
IDLE_CONNECTIONS = 10_000
IDLE_WARM = 100

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

#: A client that uses more than this fraction of a core is the bottleneck.
CLIENT_BOUND = 0.8

#: The reference row: a C server (epoll_server.c) rather than servers.py.
C_SERVER = "c-epoll"

#: Row-name suffixes that run a traffic server with another cycle-thread
#: policy than the default: ``traffic-trio-idle`` is traffic-trio with its
#: cycle thread at SCHED_IDLE, ``traffic-trio-normal`` at SCHED_OTHER.
POLICY_SUFFIXES = {"-idle": "idle", "-normal": "normal", "-batch": "batch"}

CLK_TCK = os.sysconf("SC_CLK_TCK")


class WorkloadError(RuntimeError):
    """A server or client failed; the message says which and why."""


@dataclass
class Placement:
    """CPU sets for the server and the client (None: unpinned)."""

    name: str
    server: set[int] | None
    client: set[int] | None

    @classmethod
    def make(cls, name: str) -> Placement:
        cpus = sorted(os.sched_getaffinity(0))
        if name == "none":
            return cls(name, None, None)
        if name == "same":
            return cls(name, {cpus[0]}, {cpus[0]})
        if len(cpus) < 2:
            raise WorkloadError("--pin cross needs two CPUs; use --pin same or none")
        return cls(name, {cpus[0]}, {cpus[1]})


def _preexec(cpus: set[int] | None, files: int) -> Callable[[], None]:
    def setup() -> None:
        if cpus is not None:
            os.sched_setaffinity(0, cpus)
        if files:
            raise_file_limit(files)

    return setup


def raise_file_limit(files: int) -> bool:
    """Raise this process's RLIMIT_NOFILE to at least ``files`` if allowed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= files:
        return True
    try:
        if hard != resource.RLIM_INFINITY and hard < files:
            resource.setrlimit(resource.RLIMIT_NOFILE, (files, files))  # root only
        else:
            resource.setrlimit(resource.RLIMIT_NOFILE, (files, hard))
    except (ValueError, OSError):
        return False
    return True


def file_limit_possible(files: int) -> bool:
    """Whether a child can get ``files`` descriptors (tried in a child)."""
    probe = (
        "import sys, resource\n"
        f"from traffic.bench.workloads import raise_file_limit as r\n"
        f"sys.exit(0 if r({files}) else 1)\n"
    )
    return subprocess.run([sys.executable, "-c", probe], cwd=_ROOT).returncode == 0


def cpu_seconds(pid: int) -> float:
    """utime + stime of process ``pid``, all its threads, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise WorkloadError(f"no VmRSS for {pid}")


# The project root, so ``python -m traffic.bench.servers`` imports this
# checkout's traffic however the driver was started.
_ROOT = str(Path(__file__).resolve().parents[2])


def _env(server: str) -> dict[str, str]:
    env = dict(os.environ)
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = _ROOT + (os.pathsep + path if path else "")
    for suffix, policy in POLICY_SUFFIXES.items():
        if server.startswith("traffic") and server.endswith(suffix):
            env["TRAFFIC_CYCLE_POLICY"] = policy
    return env


def base_name(server: str) -> str:
    """The servers.py name behind a driver row name."""
    for suffix in POLICY_SUFFIXES:
        if server.startswith("traffic") and server.endswith(suffix):
            return server.removesuffix(suffix)
    return server


@dataclass
class Server:
    process: subprocess.Popen[str]
    port: int  # 0 for a server on an AF_UNIX path
    stderr: IO[str]

    @property
    def pid(self) -> int:
        return self.process.pid


@contextmanager
def running_server(
    name: str,
    placement: Placement,
    binaries: dict[str, Path],
    accept_only: bool = False,
    files: int = 0,
    extra: tuple[str, ...] = (),
    command: list[str] | None = None,
) -> Iterator[Server]:
    """Start server ``name`` (``extra``: more arguments; ``command``: run
    that instead of the row's server), wait for its port (or, on an AF_UNIX
    socket, its path), and stop it afterwards."""
    if command is not None:
        args = list(command)
    elif name == C_SERVER:
        args = [str(binaries["epoll_server"])]
    else:
        args = [sys.executable, "-m", "traffic.bench.servers", base_name(name)]
    if accept_only:
        args.append("--accept")
    args.extend(extra)
    stderr = _tempfile()
    process = subprocess.Popen(
        args,
        stdout=subprocess.PIPE,
        stderr=stderr,
        stdin=subprocess.DEVNULL,
        text=True,
        cwd=_ROOT,
        env=_env(name),
        preexec_fn=_preexec(placement.server, files),
    )
    try:
        with _watchdog(process, 60.0):
            assert process.stdout is not None
            line = process.stdout.readline().strip()
        if not (line.isdigit() or line.startswith("/")):
            process.kill()
            process.wait()
            raise WorkloadError(f"server {name} did not start: {_tail(stderr)}")
        server = Server(process, int(line) if line.isdigit() else 0, stderr)
        yield server
        if process.poll() is not None:
            raise WorkloadError(f"server {name} died: {_tail(stderr)}")
    finally:
        _stop(process)
        stderr.close()


def _tempfile() -> IO[str]:
    import tempfile

    return tempfile.TemporaryFile("w+")


def _tail(stream: IO[str], lines: int = 6) -> str:
    stream.flush()
    stream.seek(0)
    text = stream.read().strip().splitlines()
    return " | ".join(text[-lines:]) or "(no output)"


def _stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if process.stdout is not None:
        process.stdout.close()
    if process.stdin is not None:
        process.stdin.close()


@contextmanager
def _watchdog(process: subprocess.Popen[str], seconds: float) -> Iterator[None]:
    """Kill ``process`` if the block takes longer than ``seconds``."""
    timer = threading.Timer(seconds, process.kill)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def _client(binary: Path, args: list[Any], placement: Placement, files: int = 0) -> Any:
    return subprocess.Popen(
        [str(binary), *map(str, args)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_preexec(placement.client, files),
    )


def _expect(process: subprocess.Popen[str], what: str, word: str) -> str:
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line.strip() or (word and line.strip() != word):
        process.kill()
        _, err = process.communicate()
        raise WorkloadError(f"{what}: expected {word or 'a result'}, got {line!r}: {err.strip()}")
    return line


@dataclass
class Measured:
    """What one run of one implementation in one workload gave."""

    metrics: dict[str, float] = field(default_factory=dict)
    client_bound: bool = False
    #: What the run saw beyond its numbers (the http-client workload's
    #: responses with ``check``, for the tests); not reported.
    details: dict[str, Any] = field(default_factory=dict)


def _measure_window(
    server: Server, client: subprocess.Popen[str], what: str, timeout: float
) -> tuple[dict[str, Any], float]:
    with _watchdog(client, timeout):
        _expect(client, what, "start")
        cpu_from = cpu_seconds(server.pid)
        line = _expect(client, what, "")
        cpu = cpu_seconds(server.pid) - cpu_from
    client.communicate()
    if client.returncode != 0:
        raise WorkloadError(f"{what}: client exited with {client.returncode}")
    return json.loads(line), cpu


def echo(
    name: str,
    connections: int,
    seconds: float,
    warmup: float,
    placement: Placement,
    binaries: dict[str, Path],
) -> Measured:
    files = connections + 256
    with running_server(name, placement, binaries, files=files) as server:
        client = _client(
            binaries["echo_client"],
            ["127.0.0.1", server.port, connections, seconds, ECHO_SIZE, warmup],
            placement,
            files,
        )
        result, cpu = _measure_window(server, client, f"echo {name}", seconds + warmup + 60)
    window = result["seconds"]
    trips = result["round_trips"]
    if trips <= 0:
        raise WorkloadError(f"echo {name}: no round trip completed")
    return Measured(
        {
            "rate": trips / window,
            "p50_us": result["p50_us"],
            "p99_us": result["p99_us"],
            "per_cpu": trips / max(cpu, 1.0 / CLK_TCK),
            "server_cores": cpu / window,
            "client_cores": result["client_cpu"] / window,
        },
        result["client_cpu"] / window > CLIENT_BOUND,
    )


def accept(
    name: str,
    seconds: float,
    warmup: float,
    placement: Placement,
    binaries: dict[str, Path],
) -> Measured:
    with running_server(name, placement, binaries, accept_only=True, files=4096) as server:
        client = _client(
            binaries["accept_client"],
            ["127.0.0.1", server.port, ACCEPT_IN_FLIGHT, seconds, warmup],
            placement,
            4096,
        )
        result, cpu = _measure_window(server, client, f"accept {name}", seconds + warmup + 60)
    window = result["seconds"]
    count = result["connections"]
    if count <= 0:
        raise WorkloadError(f"accept {name}: no connection accepted ({result})")
    return Measured(
        {
            "rate": count / window,
            "per_cpu": count / max(cpu, 1.0 / CLK_TCK),
            "server_cores": cpu / window,
            "client_cores": result["client_cpu"] / window,
        },
        result["client_cpu"] / window > CLIENT_BOUND,
    )


def stream(name: str, seconds: float, cpus: set[int] | None) -> Measured:
    """The one-process AF_UNIX stream, pinned to ``cpus`` (None: unpinned)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "traffic.bench.stream", base_name(name), str(seconds)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=_ROOT,
        env=_env(name),
        preexec_fn=_preexec(cpus, 0),
    )
    try:
        out, err = process.communicate(timeout=seconds + 60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise WorkloadError(f"stream {name}: timed out") from None
    if process.returncode != 0 or not out.strip():
        tail = " | ".join(err.strip().splitlines()[-4:])
        raise WorkloadError(f"stream {name}: exit {process.returncode}: {tail}")
    result = json.loads(out.strip().splitlines()[-1])
    if result["bytes"] <= 0:
        raise WorkloadError(f"stream {name}: nothing transferred")
    return Measured(
        {
            "gbps": result["bytes"] / result["seconds"] / 1e9,
            "per_cpu": result["bytes"] / max(result["cpu"], 1e-3) / 1e9,
            "cores": result["cpu"] / result["seconds"],
        }
    )


def idle(name: str, connections: int, placement: Placement, binaries: dict[str, Path]) -> Measured:
    """Server RSS growth per idle connection, in KiB."""
    files = connections + IDLE_WARM + 256
    with running_server(name, placement, binaries, files=files) as server:
        client = _client(
            binaries["idle_client"],
            ["127.0.0.1", server.port, connections, IDLE_WARM],
            placement,
            files,
        )
        assert client.stdin is not None
        try:
            with _watchdog(client, 120.0):
                _expect(client, f"idle {name}", "warm")
                before = rss_kib(server.pid)
                client.stdin.write("go\n")
                client.stdin.flush()
                result = json.loads(_expect(client, f"idle {name}", ""))
                after = rss_kib(server.pid)
                client.stdin.write("done\n")
                client.stdin.flush()
            client.communicate(timeout=30)
        finally:
            if client.poll() is None:
                client.kill()
                client.communicate()
    return Measured(
        {
            "kib_per_conn": (after - before) / connections,
            "rss_mib": after / 1024,
            "open_seconds": result["open_seconds"],
        }
    )


# --- the file workload -------------------------------------------------------------


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
        with open(self.download, "rb", buffering=0) as f:
            buffer = bytearray(1 << 20)
            while f.readinto(buffer):
                pass

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
        with open(self.path, "rb", buffering=0) as f:
            buffer = bytearray(1 << 20)
            while f.readinto(buffer):
                pass


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
