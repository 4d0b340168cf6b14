"""The workloads' shared machinery, and the echo, accept, stream and idle
workloads: each runs one implementation once and returns its metrics.

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

The file workload (file_workloads.py) and the HTTP client and server
workloads (http_workloads.py) build on this machinery; this module
imports neither of them and no traffic module, nor trio or anyio
(its servers and clients are subprocesses).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import threading
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


def read_through(path: Path) -> None:
    """Read the file at ``path`` through, so all of it is in the page cache."""
    with open(path, "rb", buffering=0) as f:
        buffer = bytearray(1 << 20)
        while f.readinto(buffer):
            pass


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
