"""The fault suite's machinery: servers in subprocesses, clients, the fault
proxy, private network namespaces, cgroups, and the invariants every
scenario checks.

- :class:`Server` starts ``server.py`` (one of traffic's layers) in a
  subprocess, in the root namespace's loopback or in a private namespace,
  and reads its descriptors and CPU time from ``/proc/PID``; it asks the
  server for traffic's live objects and its handlers' outcomes.
- :class:`Engine` drives many client connections from one thread
  (``selectors``): whole transfers, one-byte tricklers, peers that never
  read, resets; each transfer is checked by SHA-256.
- :class:`FaultProxy` stands in for netem, which this kernel lacks:
  latency, one-byte slicing, a byte limit, resets.
- :class:`Net` makes private namespaces (``ip netns``), veth pairs between
  them, qdiscs, nftables rules and per-namespace sysctls, and removes them
  all, also when a test fails; :func:`in_netns` makes a client socket
  inside one.  Nothing is routed from the root namespace.
- :func:`tcp_memory_cgroup` makes a cgroup v1 memory controller with a TCP
  memory limit, beneath this process's own, and removes it.

Invariants (:func:`check_outcomes`, :meth:`Server.settled`,
:func:`check_idle`): every byte arrives; the handlers' outcomes are clean
(the errno set is read from docs/guarantees.rst's Faults section, the
contract the suite holds traffic to); the server's descriptors and live
objects return to their baseline; nothing escapes the server; an idle wait
burns under 5% of one CPU over at least 2 s.  Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import os
import random
import re
import select
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import traffic

HERE = Path(__file__).resolve().parent
SERVER_PY = HERE / "server.py"
GUARANTEES = HERE.parent.parent / "docs" / "guarantees.rst"
IMPORT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(traffic.__file__)))
ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join(filter(None, [IMPORT_ROOT, os.environ.get("PYTHONPATH")])),
}
#: With it set (CI sets it), every skip of the suite is a failure.
REQUIRED = os.environ.get("TRAFFIC_FAULTS_REQUIRED") == "1"
#: The tag of this run's namespaces, devices and cgroups.
TAG = f"tf{os.getpid()}"

#: An idle wait's CPU bound (fraction of one CPU) and its window.
IDLE_CPU = 0.05
IDLE_WINDOW = 2.0
#: "At once": a parked operation woken, a cancellation returned.
AT_ONCE = 1.0


# The documented errno set


def documented_errnos(path: Path = GUARANTEES) -> frozenset[int]:
    """The errnos of the list in docs/guarantees.rst's Faults section,
    "Connection errors": the only ones a handler may see chained to a
    ``BrokenResourceError``."""
    text = path.read_text()
    section = text[text.index("\nFaults\n------\n") :]
    section = section[section.index("\nConnection errors\n") :]
    names: list[str] = []
    for line in section.splitlines():
        found = re.match(r"\* ``(E[A-Z]+)``", line)
        if found:
            names.append(found.group(1))
        elif names and line and not line.startswith(" "):
            break  # the end of the list
    assert names, f"no errno list in {path}'s Faults section"
    return frozenset(getattr(errno, name) for name in names)


FAULT_ERRNOS = documented_errnos()
ERRNO_NAMES = ",".join(sorted(errno.errorcode[code] for code in FAULT_ERRNOS))


# What the machine can do


def skip(reason: str) -> None:
    """Skip, or fail under ``TRAFFIC_FAULTS_REQUIRED=1``."""
    if REQUIRED:
        pytest.fail(f"TRAFFIC_FAULTS_REQUIRED=1, but: {reason}", pytrace=False)
    pytest.skip(reason)


def need_root() -> None:
    if os.geteuid() != 0:
        skip("needs root (network namespaces, ss -K, tc, nftables, cgroups)")


def need_tools(*tools: str) -> None:
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        packages = {
            "ip": "iproute2",
            "ss": "iproute2",
            "tc": "iproute2",
            "nft": "nftables",
            "unshare": "util-linux",
            "nsenter": "util-linux",
        }
        names = sorted({packages.get(tool, tool) for tool in missing})
        skip(f"{', '.join(missing)} not installed (apt-get install {' '.join(names)})")


_namespaces: str | None = None


def need_namespaces() -> None:
    """Root, ``ip``, and a kernel (or container) that lets us make network
    namespaces: probed once, by ``unshare -n`` (skipped with its error)."""
    global _namespaces
    need_root()
    need_tools("ip", "unshare", "nsenter")
    if _namespaces is None:
        probe = subprocess.run(
            ["unshare", "-n", "true"], capture_output=True, text=True, timeout=30
        )
        _namespaces = "" if probe.returncode == 0 else probe.stderr.strip() or "failed"
    if _namespaces:
        skip(f"cannot make a network namespace here (unshare -n: {_namespaces})")


def layers() -> list[str]:
    """The layers every scenario runs on (``TRAFFIC_FAULTS_LAYERS`` narrows them)."""
    chosen = ["trio", "anyio-asyncio", "anyio-uvloop", "anyio-trio"]
    wanted = os.environ.get("TRAFFIC_FAULTS_LAYERS")
    if wanted:
        chosen = [layer for layer in chosen if layer in wanted.split(",")]
    if "anyio-uvloop" in chosen:
        try:
            import uvloop  # noqa: F401
        except ImportError:
            if REQUIRED:
                pytest.fail("TRAFFIC_FAULTS_REQUIRED=1, but uvloop is not installed")
            chosen.remove("anyio-uvloop")
    return chosen


# /proc


def cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of ``pid``, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def open_descriptors(pid: int) -> dict[int, str]:
    out = {}
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            out[int(name)] = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
    return out


def wait_for(
    condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.01
) -> Any:
    """Poll ``condition`` until it is true (returned); fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(interval)


@contextlib.contextmanager
def more_descriptors(needed: int) -> Iterator[None]:
    """This process's ``RLIMIT_NOFILE`` soft limit at least ``needed`` (restored after)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        skip(f"RLIMIT_NOFILE hard limit {hard} < {needed}")
    if soft != resource.RLIM_INFINITY and soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# The server


class ServerDied(AssertionError):
    pass


class Server:
    """``server.py`` serving one layer in a subprocess (see its docstring)."""

    def __init__(
        self,
        layer: str,
        *,
        host: str = "127.0.0.1",
        netns: str | None = None,
        backlog: int | None = None,
        cgroup: str | None = None,
        reach: str | None = None,
        keepalive: int = 0,
    ) -> None:
        """``host`` is the address it binds, ``reach`` the one its clients
        connect to (default: ``host``)."""
        self.layer = layer
        self.host = host
        self.reach = reach or host
        command = [
            sys.executable,
            str(SERVER_PY),
            "--layer",
            layer,
            "--host",
            host,
            "--errnos",
            ERRNO_NAMES,
        ]
        if backlog is not None:
            command += ["--backlog", str(backlog)]
        if cgroup is not None:
            command += ["--cgroup", cgroup]
        if keepalive:
            command += ["--keepalive", str(keepalive)]
        if netns is not None:
            # nsenter rather than ip netns exec: the latter mounts a sysfs of
            # the namespace's over /sys, which hides the cgroup hierarchy.
            command = ["nsenter", f"--net=/run/netns/{netns}", *command]
        self.stderr = tempfile.TemporaryFile()  # noqa: SIM115  (closed by kill())
        self.proc = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, env=ENV
        )
        self.pending = b""
        self.pid = self.proc.pid
        self.port = 0
        self.base_fds: dict[int, str] = {}
        self.base_live = -1

    def start(self, timeout: float = 60.0) -> None:
        """Wait for the server to listen."""
        ready = self._line(timeout)
        if not ready.get("ready"):
            raise self._died(f"not ready: {ready}")
        self.port = ready["port"]
        self.backend = ready["backend"]
        assert self.backend == traffic.backend, (
            f"[{self.layer}] the server runs the {self.backend} build, the tests {traffic.backend}"
        )

    @property
    def address(self) -> tuple[str, int]:
        return (self.reach, self.port)

    def _died(self, why: str) -> ServerDied:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        self.stderr.seek(0)
        err = self.stderr.read().decode(errors="replace")
        return ServerDied(
            f"[{self.layer}] {why} (exit status {self.proc.returncode}); stderr:\n{err}"
        )

    def _line(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self.pending:
            left = deadline - time.monotonic()
            if left <= 0:
                raise self._died(f"no answer within {timeout} s")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise self._died("the server ended")
                self.pending += chunk
        line, self.pending = self.pending.split(b"\n", 1)
        message: dict[str, Any] = json.loads(line)
        if "escaped" in message:
            raise self._died(f"an exception escaped the server: {message['escaped']}")
        return message

    def request(self, command: dict[str, Any], timeout: float = 15.0) -> dict[str, Any]:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write((json.dumps(command) + "\n").encode())
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise self._died(f"{command['cmd']}: the server is gone") from None
        return self._line(timeout)

    def stats(self) -> dict[str, Any]:
        return self.request({"cmd": "stats"})

    def conn(self, ident: str) -> dict[str, Any] | None:
        found: dict[str, Any] | None = self.stats()["conns"].get(ident)
        return found

    def cancel(self, *idents: str) -> dict[str, Any]:
        return self.request({"cmd": "cancel", "ids": list(idents)})

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def fds(self) -> dict[int, str]:
        return open_descriptors(self.pid)

    def baseline(self) -> None:
        """Take the server's descriptors and live objects as its baseline
        (after a warm-up connection has made what a run makes once)."""
        wait_for(lambda: self.stats()["active"] == 0, 10, f"[{self.layer}] warm-up handlers end")
        self.base_fds = self.fds()
        self.base_live = self.stats()["live"]

    def settled(self, timeout: float = 10.0) -> dict[str, Any]:
        """Every handler ended, descriptors and live objects back at the
        baseline (bounded wait); returns the last stats."""
        last: dict[str, Any] = {}

        def back() -> bool:
            nonlocal last
            last = self.stats()
            fds = self.fds()
            return (
                last["active"] == 0
                and set(fds) == set(self.base_fds)
                and last["live"] == self.base_live
            )

        try:
            wait_for(back, timeout, "settled", interval=0.05)
        except AssertionError:
            fds = self.fds()
            extra = {fd: fds[fd] for fd in set(fds) - set(self.base_fds)}
            transits = "\n  ".join(self.request({"cmd": "transits"})["transits"])
            active = {k: c for k, c in last.get("conns", {}).items() if c["t_end"] is None}
            raise AssertionError(
                f"[{self.layer}] not back at its baseline within {timeout} s: "
                f"{last.get('active')} handlers active, live objects {last.get('live')} "
                f"(baseline {self.base_live}), descriptors beyond the baseline {extra}; "
                f"handlers not ended {active}; "
                f"transits held:\n  {transits}"
            ) from None
        return last

    def stop(self) -> None:
        """Quit (exit status 0 required), else kill."""
        try:
            if self.proc.poll() is None:
                assert self.proc.stdin is not None
                with contextlib.suppress(BrokenPipeError):
                    self.proc.stdin.write(b'{"cmd": "quit"}\n')
                    self.proc.stdin.flush()
                try:
                    self.proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
                    raise self._died("did not quit within 15 s") from None
            if self.proc.returncode != 0:
                raise self._died("ended badly")
        finally:
            self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGCONT)
            self.proc.kill()
            self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        self.stderr.close()


@contextlib.contextmanager
def servers(
    layers_: Iterable[str], warm: Callable[[Server], None] | None = None, **kwargs: Any
) -> Iterator[list[Server]]:
    """One server per layer, started together, stopped (or killed) after.

    ``warm(server)`` runs one connection on each before the baseline is
    taken (the first connection makes what a run makes once)."""
    made: list[Server] = []
    try:
        for layer in layers_:
            made.append(Server(layer, **kwargs))
        for server in made:
            server.start()
        for server in made:
            if warm is not None:
                warm(server)
            server.baseline()
        yield made
        errors = []
        for server in made:
            try:
                server.stop()
            except AssertionError as exc:
                errors.append(str(exc))
        if errors:
            raise AssertionError("\n".join(errors))
    finally:
        for server in made:
            server.kill()


# The clients


def pattern(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


@dataclass(eq=False)
class Client:
    """A client connection, driven by an :class:`Engine`.

    Sends ``header`` then ``payload`` (all at once, or one byte every
    ``trickle`` seconds), then shuts down its sending side (``shutdown``);
    reads until the end of the stream unless ``read`` is False, and checks
    what came against ``expect`` (None: anything).  ``reset_after``: reset
    the connection (``SO_LINGER`` 0) once that many bytes went out.
    ``keepalive``: probe an idle connection after that many seconds (a
    reset the network dropped is never sent again: without probes a
    client that only reads would wait for ever).
    """

    address: tuple[str, int]
    header: bytes
    payload: bytes = b""
    expect: bytes | None = None
    read: bool = True
    trickle: float | None = None
    shutdown: bool = True
    reset_after: int | None = None
    rcvbuf: int | None = None
    keepalive: int | None = None
    netns: str | None = None
    label: str = ""
    # State, the engine's.
    sock: socket.socket | None = None
    port: int = 0
    sent: int = 0
    received: bytearray = field(default_factory=bytearray)
    outcome: str | None = None
    paused: bool = False
    t_start: float = 0.0
    t_end: float | None = None
    next_byte: float = 0.0
    connected: bool = False
    done: threading.Event = field(default_factory=threading.Event)

    @property
    def outbound(self) -> bytes:
        return self.header + self.payload

    def judge_end(self) -> str:
        """The outcome at the end of the stream."""
        if self.expect is None:
            return "eof"
        if hashlib.sha256(self.received).digest() == hashlib.sha256(self.expect).digest():
            return "ok"
        if self.expect.startswith(self.received):
            return "truncated"
        return "corrupt"


class Engine:
    """Client connections driven by one thread (``selectors``)."""

    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()
        self.wake_r, self.wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self.selector.register(self.wake_r, selectors.EVENT_READ, None)
        self.calls: list[Callable[[], None]] = []
        self.lock = threading.Lock()
        self.clients: set[Client] = set()
        self.stopping = False
        self.failure: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="faults-engine", daemon=True)
        self.thread.start()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.stopping = True
        self._wake()
        self.thread.join(30)
        for client in list(self.clients):
            self._close(client, "abandoned")
        self.selector.close()
        self.wake_r.close()
        self.wake_w.close()
        if self.failure is not None:
            raise AssertionError(f"the client engine failed: {self.failure!r}") from self.failure

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self.wake_w.send(b"x")

    def call(self, fn: Callable[[], None], wait: bool = True) -> None:
        """Run ``fn`` in the engine's thread (and wait for it)."""
        finished = threading.Event()

        def run() -> None:
            try:
                fn()
            finally:
                finished.set()

        with self.lock:
            self.calls.append(run)
        self._wake()
        if wait and not finished.wait(30):
            raise AssertionError("the client engine did not answer within 30 s")

    def open(self, client: Client) -> Client:
        """Connect ``client`` (a socket made in its namespace) and drive it."""
        with in_netns(client.netns):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            if client.rcvbuf is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, client.rcvbuf)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if client.keepalive:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, client.keepalive)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, client.keepalive)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
            code = sock.connect_ex(client.address)
            if code not in (0, errno.EINPROGRESS):
                raise OSError(code, os.strerror(code))
            client.port = sock.getsockname()[1]
        except BaseException:
            sock.close()
            raise
        client.sock = sock
        client.t_start = time.monotonic()
        client.next_byte = client.t_start

        def register() -> None:
            self.clients.add(client)
            self.selector.register(sock, selectors.EVENT_WRITE, client)

        self.call(register, wait=False)
        return client

    def reset(self, client: Client) -> None:
        """Reset ``client``'s connection (``SO_LINGER`` 0) from its side."""
        self.call(lambda: self._reset(client))

    def shut(self, client: Client) -> None:
        """Close ``client``'s connection (a FIN)."""
        self.call(lambda: self._close(client, "closed-by-test"))

    def _run(self) -> None:
        try:
            while not self.stopping:
                tricklers = [c for c in self.clients if c.trickle and c.connected and not c.paused]
                timeout = 0.005 if tricklers else 0.05
                for key, mask in self.selector.select(timeout):
                    client = key.data
                    if client is None:
                        with contextlib.suppress(BlockingIOError):
                            self.wake_r.recv(4096)
                        continue
                    if client not in self.clients:
                        continue
                    if mask & selectors.EVENT_WRITE:
                        self._writable(client)
                    if mask & selectors.EVENT_READ and client in self.clients:
                        self._readable(client)
                with self.lock:
                    calls, self.calls = self.calls, []
                for call in calls:
                    call()
                now = time.monotonic()
                for client in tricklers:
                    if client in self.clients and now >= client.next_byte:
                        self._trickle(client, now)
        except BaseException as exc:
            self.failure = exc

    def _interest(self, client: Client) -> None:
        assert client.sock is not None
        events = selectors.EVENT_READ if client.read else 0
        if client.sent < len(client.outbound) and not client.trickle:
            events |= selectors.EVENT_WRITE
        if events:
            self.selector.modify(client.sock, events, client)
        else:
            # Sent everything and never reads (a zero window): kept open, unwatched.
            self.selector.unregister(client.sock)

    def _writable(self, client: Client) -> None:
        sock = client.sock
        assert sock is not None
        if not client.connected:
            code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                self._close(client, f"connect:{errno.errorcode.get(code, code)}")
                return
            client.connected = True
            self._interest(client)
            if client.trickle:
                return
        self._send(client, 65536)

    def _send(self, client: Client, most: int) -> None:
        """Send what is left (``most`` bytes a call; 1 sends one byte only)."""
        sock = client.sock
        assert sock is not None
        out = client.outbound
        limit = len(out) if client.reset_after is None else min(len(out), client.reset_after)
        while client.sent < limit:
            try:
                n = sock.send(out[client.sent : min(client.sent + most, limit)])
            except BlockingIOError:
                return
            except OSError as exc:
                self._close(client, f"reset:{errno.errorcode.get(exc.errno or 0, exc.errno)}")
                return
            client.sent += n
            if most == 1:
                break
        if client.sent < limit:
            return
        if client.reset_after is not None and client.sent >= client.reset_after:
            self._reset(client)
            return
        # All sent.
        if client.shutdown:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)
        client.trickle = None
        self._interest(client)

    def _trickle(self, client: Client, now: float) -> None:
        assert client.trickle is not None
        client.next_byte = now + client.trickle
        self._send(client, 1)

    def _readable(self, client: Client) -> None:
        sock = client.sock
        assert sock is not None
        for _ in range(16):
            try:
                data = sock.recv(262144)
            except BlockingIOError:
                return
            except OSError as exc:
                self._close(client, f"reset:{errno.errorcode.get(exc.errno or 0, exc.errno)}")
                return
            if not data:
                self._close(client, client.judge_end())
                return
            client.received += data

    def _reset(self, client: Client) -> None:
        if client.sock is not None:
            client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self._close(client, "reset-by-me")

    def _close(self, client: Client, outcome: str) -> None:
        sock = client.sock
        if sock is not None:
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(sock)
            sock.close()
            client.sock = None
        self.clients.discard(client)
        if client.outcome is None:
            client.outcome = outcome
            client.t_end = time.monotonic()
        client.done.set()


def wait_clients(
    clients: Iterable[Client],
    timeout: float,
    what: str = "clients",
    servers: Iterable[Server] = (),
) -> None:
    """Wait (bounded) until every client has its outcome; on failure say
    where each stuck client and the servers' unfinished handlers are."""
    clients = list(clients)
    deadline = time.monotonic() + timeout
    for client in clients:
        if not client.done.wait(max(0.0, deadline - time.monotonic())):
            pending = [
                f"{c.label}@{c.port} sent {c.sent}/{len(c.outbound)} received {len(c.received)}"
                for c in clients
                if c.outcome is None
            ]
            handlers = []
            for server in servers:
                with contextlib.suppress(AssertionError):
                    conns = server.stats()["conns"]
                    handlers += [
                        f"[{server.layer}] {key}: {conn}"
                        for key, conn in conns.items()
                        if conn["t_end"] is None
                    ]
                    if any(conn["t_end"] is None for conn in conns.values()):
                        handlers.append(f"[{server.layer}] {server.request({'cmd': 'debug'})}")
            sockets = []
            for c in clients:
                if c.outcome is None and c.port and shutil.which("ss"):
                    command = ["ss", "-tnmi", f"( sport = :{c.port} or dport = :{c.port} )"]
                    if c.netns is not None:
                        command = ["ip", "netns", "exec", c.netns, *command]
                    sockets.append(run(*command, check=False))
            raise AssertionError(
                f"{what}: {len(pending)} not done within {timeout} s: {pending}; "
                f"handlers not ended: {handlers}; sockets: {sockets[:4]}"
            )


def echo_client(
    server: Server | tuple[str, int], ident: str, size: int, seed: int, **kwargs: Any
) -> Client:
    """A client whose ``size`` bytes must come back whole (``echo``)."""
    address = _address(server)
    payload = pattern(size, seed)
    options = kwargs.pop("options", "")
    header = f"echo {ident} {options}".strip().encode() + b"\n"
    return Client(address, header, payload, expect=payload, label=ident, **kwargs)


def _address(server: Server | tuple[str, int]) -> tuple[str, int]:
    return server.address if isinstance(server, Server) else server


def sink_client(
    server: Server | tuple[str, int], ident: str, size: int, seed: int, **kwargs: Any
) -> Client:
    """A client uploading ``size`` bytes: the server answers their SHA-256."""
    payload = pattern(size, seed)
    reply = f"{hashlib.sha256(payload).hexdigest()} {size}\n".encode()
    header = f"sink {ident}\n".encode()
    return Client(_address(server), header, payload, expect=reply, label=ident, **kwargs)


def source_client(
    server: Server | tuple[str, int], ident: str, size: int, seed: int, **kwargs: Any
) -> Client:
    """A client downloading ``size`` bytes, checked by SHA-256."""
    header = f"source {ident} {size} {seed}\n".encode()
    return Client(_address(server), header, expect=pattern(size, seed), label=ident, **kwargs)


def mode_client(
    server: Server | tuple[str, int], mode: str, ident: str, options: str = "", **kwargs: Any
) -> Client:
    """A client that asks for ``mode`` (hold, blast, duplex) and sends nothing more."""
    address = _address(server)
    header = f"{mode} {ident} {options}".strip().encode() + b"\n"
    kwargs.setdefault("shutdown", False)
    return Client(address, header, label=ident, **kwargs)


def warm_echo(engine: Engine, netns: str | None = None) -> Callable[[Server], None]:
    """A warm-up: one echo through the server, checked."""

    def warm(server: Server) -> None:
        client = engine.open(echo_client(server, "warm", 4096, 0, netns=netns))
        wait_clients([client], 30, f"[{server.layer}] warm-up")
        assert client.outcome == "ok", f"[{server.layer}] warm-up: {client.outcome}"

    return warm


# The invariants


def check_clients(clients: Iterable[Client], allowed: Iterable[str] = ("ok",)) -> None:
    """Every client ended in an allowed outcome (``ok``: the SHA-256 matched)."""
    allowed = set(allowed)
    bad = [(c.label, c.outcome) for c in clients if c.outcome not in allowed]
    assert not bad, f"clients with outcomes outside {sorted(allowed)}: {bad}"


def is_clean(outcome: str) -> bool:
    """A handler outcome the docs allow (the server enforces it too)."""
    if outcome in ("ok", "eof", "closed", "cancelled", "duplex"):
        return True
    if outcome.startswith("broken:"):
        return getattr(errno, outcome.split(":", 1)[1], None) in FAULT_ERRNOS
    return False


def check_outcomes(stats: dict[str, Any], layer: str) -> None:
    for ident, conn in stats["conns"].items():
        for outcome in conn["outcomes"]:
            assert is_clean(outcome), f"[{layer}] connection {ident}: unclean outcome {outcome}"


def check_idle(servers_: Iterable[Server], what: str, window: float = IDLE_WINDOW) -> None:
    """Each server burns under ``IDLE_CPU`` of one CPU over ``window`` seconds."""
    servers_ = list(servers_)
    t0 = time.monotonic()
    before = [server.cpu() for server in servers_]
    time.sleep(window)
    elapsed = time.monotonic() - t0
    used = [(server.cpu() - b) / elapsed for server, b in zip(servers_, before, strict=True)]
    busy = [
        f"[{server.layer}] {share:.1%}"
        for server, share in zip(servers_, used, strict=True)
        if share >= IDLE_CPU
    ]
    assert not busy, f"{what}: CPU over {elapsed:.2f} s above {IDLE_CPU:.0%} of one CPU: {busy}"


# Namespaces


_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"setns: {os.strerror(code)}")


@contextlib.contextmanager
def in_netns(name: str | None) -> Iterator[None]:
    """This thread in network namespace ``name`` (None: stay), for making
    sockets: a socket keeps the namespace it was made in."""
    if name is None:
        yield
        return
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(f"/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(own)


def run(*command: str, input: str | None = None, check: bool = True) -> str:
    done = subprocess.run(command, input=input, capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(command)}: exit {done.returncode}: {done.stderr}")
    return done.stdout


class Net:
    """Private namespaces and what is in them, all removed by :meth:`close`."""

    counter = 0

    def __init__(self) -> None:
        self.names: list[str] = []

    def __enter__(self) -> Net:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def namespace(self, role: str) -> str:
        Net.counter += 1
        name = f"{TAG}-{Net.counter}{role}"
        run("ip", "netns", "add", name)
        self.names.append(name)
        self.exec(name, "ip", "link", "set", "lo", "up")
        return name

    def exec(self, ns: str, *command: str, input: str | None = None, check: bool = True) -> str:
        return run("ip", "netns", "exec", ns, *command, input=input, check=check)

    def link(self, a: str, b: str, a_addr: str, b_addr: str, prefix: int = 24) -> tuple[str, str]:
        """A veth pair between namespaces ``a`` and ``b`` (made inside them:
        the root namespace never holds either end), addressed and up."""
        Net.counter += 1
        dev_a, dev_b = f"tfa{Net.counter}", f"tfb{Net.counter}"
        run(
            "ip", "link", "add", dev_a, "netns", a, "type", "veth", "peer", "name", dev_b,
            "netns", b,
        )  # fmt: skip
        for ns, dev, addr in ((a, dev_a, a_addr), (b, dev_b, b_addr)):
            self.exec(ns, "ip", "addr", "add", f"{addr}/{prefix}", "dev", dev)
            self.exec(ns, "ip", "link", "set", dev, "up")
        return dev_a, dev_b

    def sysctl(self, ns: str, key: str, value: str | int) -> None:
        """A sysctl of namespace ``ns`` (it goes with the namespace)."""
        self.exec(ns, "sysctl", "-q", "-w", f"{key}={value}")

    def nft(self, ns: str, script: str) -> None:
        self.exec(ns, "nft", "-f", "-", input=script)

    def counters(self, ns: str) -> dict[str, int]:
        """The namespace's TCP counters (/proc/net/netstat and snmp)."""
        out: dict[str, int] = {}
        for name in ("netstat", "snmp"):
            lines = self.exec(ns, "cat", f"/proc/net/{name}").splitlines()
            for head, values in zip(lines[::2], lines[1::2], strict=True):
                prefix, keys = head.split(":", 1)
                for key, value in zip(keys.split(), values.split(":", 1)[1].split(), strict=True):
                    out[f"{prefix}{key}"] = int(value)
        return out

    def close(self) -> None:
        errors = []
        for name in reversed(self.names):
            # Whatever still runs in it (a server the test could not stop).
            pids = run("ip", "netns", "pids", name, check=False).split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            # Its nftables tables and qdiscs go with it; deleted all the same.
            with contextlib.suppress(AssertionError, subprocess.TimeoutExpired):
                self.exec(name, "nft", "flush", "ruleset", check=False)
            try:
                run("ip", "netns", "del", name)
            except AssertionError as exc:
                errors.append(str(exc))
        self.names.clear()
        if errors:
            raise AssertionError("; ".join(errors))


@contextlib.contextmanager
def net() -> Iterator[Net]:
    need_namespaces()
    with Net() as made:
        yield made


# cgroups


def own_memory_cgroup() -> Path | None:
    """This process's cgroup v1 memory controller directory, if any."""
    root = Path("/sys/fs/cgroup/memory")
    if not (root / "memory.kmem.tcp.limit_in_bytes").exists():
        return None
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            if "memory" in controllers.split(","):
                return root / path.lstrip("/")
    return None


@contextlib.contextmanager
def tcp_memory_cgroup(limit: int) -> Iterator[Path]:
    """A memory cgroup beneath this process's own, its TCP memory limited
    to ``limit`` bytes (``memory.kmem.tcp.limit_in_bytes``); removed after
    (its processes must have ended)."""
    need_root()
    base = own_memory_cgroup()
    if base is None:
        skip("no cgroup v1 memory controller with kmem.tcp at /sys/fs/cgroup/memory")
    assert base is not None
    Net.counter += 1
    path = base / f"traffic-faults-{TAG}-{Net.counter}"
    path.mkdir()
    try:
        (path / "memory.kmem.tcp.limit_in_bytes").write_text(str(limit))
        yield path
    finally:
        deadline = time.monotonic() + 10
        while True:
            try:
                path.rmdir()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                for pid in (path / "cgroup.procs").read_text().split():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
                time.sleep(0.05)


# What a run may leave behind


def leftovers() -> list[str]:
    """This run's namespaces and cgroups still there (none may be)."""
    found = []
    if shutil.which("ip"):
        for line in run("ip", "netns", "list", check=False).splitlines():
            if line.startswith(f"{TAG}-"):
                found.append(f"namespace {line.split()[0]}")
    base = own_memory_cgroup()
    if base is not None and base.exists():
        found += [f"cgroup {p}" for p in base.glob(f"traffic-faults-{TAG}-*")]
    return found


def root_state() -> dict[str, str]:
    """The root namespace's qdiscs, nftables ruleset and the sysctls the
    suite sets in its namespaces: the suite must leave them as it found them."""
    state = {}
    if shutil.which("tc"):
        state["qdiscs"] = run("tc", "qdisc", "show", check=False)
    if shutil.which("nft") and os.geteuid() == 0:
        state["nft"] = run("nft", "list", "ruleset", check=False)
    for key in (
        "net/core/somaxconn",
        "net/ipv4/tcp_abort_on_overflow",
        "net/ipv4/tcp_syncookies",
        "net/ipv4/tcp_max_syn_backlog",
        "net/ipv4/icmp_ratelimit",
    ):
        with contextlib.suppress(OSError):
            state[key] = Path("/proc/sys", key).read_text()
    return state


# The fault proxy


@dataclass
class Faults:
    """What the proxy does to a connection: ``latency`` seconds added to
    every chunk, ``slice`` bytes per write (1: one byte a segment), a byte
    ``limit`` after which both sides are closed (FIN), ``reset`` after
    that many bytes both sides are reset (RST).  Both marks count the bytes
    of both directions; the bytes before a mark are delivered first (a
    chunk read across it is cut there), whenever the proxy reads them."""

    latency: float = 0.0
    slice: int | None = None
    limit: int | None = None
    reset: int | None = None


@dataclass(eq=False)
class _Leg:
    """One socket of a proxied connection and what waits to be written to it."""

    sock: socket.socket
    queue: list[tuple[float, bytes]] = field(default_factory=list)
    reading: bool = True  # its input has not ended
    eof_pending: bool = False  # shut its output once the queue is written
    shut: bool = False


@dataclass(eq=False)
class _Pair:
    faults: Faults
    down: _Leg  # the client's
    up: _Leg  # the server's
    moved: int = 0
    connected: bool = False
    closing: bool = False  # a mark reached: end both once the queues are out
    resetting: bool = False  # ... and end them with a reset


class FaultProxy:
    """A user-space TCP proxy that injects :class:`Faults` (netem's job,
    which this kernel has no qdisc for), one thread for all its listeners."""

    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()
        self.wake_r, self.wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self.selector.register(self.wake_r, selectors.EVENT_READ, None)
        self.lock = threading.Lock()
        self.new: list[tuple[socket.socket, tuple[str, int], Faults]] = []
        self.listeners: list[socket.socket] = []
        self.pairs: set[_Pair] = set()
        self.stopping = False
        self.failure: BaseException | None = None
        self.done = {"limit": 0, "reset": 0}
        self.thread = threading.Thread(target=self._run, name="faults-proxy", daemon=True)
        self.thread.start()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def listen(self, upstream: tuple[str, int], faults: Faults) -> tuple[str, int]:
        """A listener whose connections reach ``upstream`` through ``faults``."""
        sock = socket.create_server(("127.0.0.1", 0))
        sock.setblocking(False)
        with self.lock:
            self.listeners.append(sock)
            self.new.append((sock, upstream, faults))
        self.wake_w.send(b"x")
        address: tuple[str, int] = sock.getsockname()
        return address

    def close(self) -> None:
        self.stopping = True
        with contextlib.suppress(OSError):
            self.wake_w.send(b"x")
        self.thread.join(30)
        for pair in list(self.pairs):
            self._end(pair, reset=False)
        for sock in self.listeners:
            sock.close()
        self.selector.close()
        self.wake_r.close()
        self.wake_w.close()
        if self.failure is not None:
            raise AssertionError(f"the fault proxy failed: {self.failure!r}") from self.failure

    def _run(self) -> None:
        try:
            while not self.stopping:
                with self.lock:
                    new, self.new = self.new, []
                for sock, upstream, faults in new:
                    self.selector.register(sock, selectors.EVENT_READ, ("listen", upstream, faults))
                now = time.monotonic()
                due = [
                    leg.queue[0][0]
                    for pair in self.pairs
                    for leg in (pair.down, pair.up)
                    if leg.queue
                ]
                timeout = min(max(0.002, min(due) - now), 0.05) if due else 0.05
                for key, _mask in self.selector.select(timeout):
                    data = key.data
                    if data is None:
                        with contextlib.suppress(BlockingIOError):
                            self.wake_r.recv(4096)
                    elif data[0] == "listen":
                        self._accept(key.fileobj, data[1], data[2])  # type: ignore[arg-type]
                    elif data[1] in self.pairs:
                        self._event(data[1], data[0])
                now = time.monotonic()
                for pair in list(self.pairs):
                    self._flush(pair, now)
        except BaseException as exc:
            self.failure = exc

    def _accept(self, listener: socket.socket, upstream: tuple[str, int], faults: Faults) -> None:
        try:
            down, _ = listener.accept()
        except BlockingIOError:
            return
        up = socket.socket()
        for sock in (down, up):
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        up.connect_ex(upstream)
        pair = _Pair(faults, _Leg(down), _Leg(up))
        self.pairs.add(pair)
        self.selector.register(up, selectors.EVENT_WRITE, ("up", pair))

    def _event(self, pair: _Pair, side: str) -> None:
        if side == "up" and not pair.connected:
            if pair.up.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                self._end(pair, reset=True)
                return
            pair.connected = True
            self.selector.modify(pair.up.sock, selectors.EVENT_READ, ("up", pair))
            self.selector.register(pair.down.sock, selectors.EVENT_READ, ("down", pair))
            return
        source, target = (pair.down, pair.up) if side == "down" else (pair.up, pair.down)
        try:
            data = source.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            self._end(pair, reset=True)
            return
        if not data:
            self._stop_reading(source)
            target.eof_pending = True
            return
        faults = pair.faults
        for kind, mark in (("reset", faults.reset), ("limit", faults.limit)):
            if mark is not None and pair.moved + len(data) >= mark:
                # What comes before the mark goes through (however late the
                # proxy read it), then both connections end.
                data = data[: mark - pair.moved]
                self.done[kind] += 1
                pair.closing = True
                pair.resetting = kind == "reset"
                for leg in (pair.down, pair.up):
                    self._stop_reading(leg)
                break
        pair.moved += len(data)
        if data:
            target.queue.append((time.monotonic() + faults.latency, data))

    def _stop_reading(self, leg: _Leg) -> None:
        if leg.reading:
            leg.reading = False
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(leg.sock)

    def _flush(self, pair: _Pair, now: float) -> None:
        step = pair.faults.slice
        for leg in (pair.down, pair.up):
            while leg.queue and leg.queue[0][0] <= now:
                at, data = leg.queue[0]
                try:
                    n = leg.sock.send(data[:step] if step else data)
                except BlockingIOError:
                    break
                except OSError:
                    self._end(pair, reset=True)
                    return
                if n == len(data):
                    leg.queue.pop(0)
                else:
                    leg.queue[0] = (at, data[n:])
            if not leg.queue and leg.eof_pending and not leg.shut:
                with contextlib.suppress(OSError):
                    leg.sock.shutdown(socket.SHUT_WR)
                leg.shut = True
        if pair.down.queue or pair.up.queue:
            return
        if pair.closing or (pair.connected and not pair.down.reading and not pair.up.reading):
            self._end(pair, reset=pair.resetting)

    def _end(self, pair: _Pair, reset: bool) -> None:
        for leg in (pair.down, pair.up):
            self._stop_reading(leg)
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(leg.sock)
            if reset:
                with contextlib.suppress(OSError):
                    leg.sock.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                    )
            leg.sock.close()
        self.pairs.discard(pair)
