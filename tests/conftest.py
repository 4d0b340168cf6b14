"""Shared fixtures for the core's tests: leak checks and real peers.

Every test runs under ``_no_leaks`` (autouse): after the test and a garbage
collection, the process holds exactly the descriptors it held before, the
core's live object count is back at its baseline, and no ``traffic-cycle``
thread is left (C threads do not show in ``threading.enumerate()``: their
names are read from ``/proc/self/task/*/comm``).

Timing never decides a test: helpers wait on real conditions with generous
bounded loops and fail only when the condition never holds.
"""

from __future__ import annotations

import gc
import logging
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator

import pytest

import traffic
from traffic import Traffic


def open_fds() -> set[int]:
    fds = set()
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            os.fstat(fd)
        except OSError:
            continue  # the listdir's own descriptor, closed already
        fds.add(fd)
    return fds


def fd_targets(fds: set[int]) -> dict[int, str]:
    out = {}
    for fd in fds:
        try:
            out[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            out[fd] = "?"
    return out


def cycle_threads() -> list[str]:
    """Task ids of threads named traffic-cycle in this process."""
    found = []
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/comm") as f:
                if f.read().strip() == "traffic-cycle":
                    found.append(task)
        except OSError:
            continue  # the thread ended while we looked
    return found


def cycle_threads_gone(attempts: int = 1000) -> bool:
    """Whether every traffic-cycle thread is gone, allowing for the moment a
    joined thread still shows in /proc/self/task after pthread_join()."""
    for _ in range(attempts):
        if not cycle_threads():
            return True
        time.sleep(0.01)
    return not cycle_threads()


def settle(condition: Callable[[], bool], attempts: int = 50) -> bool:
    """Collect garbage until ``condition`` holds, at most ``attempts`` times.

    The retries cover Python's own finalizers (weakref callbacks run at
    collection) and a joined thread's last moments: pthread_join() returns
    before the exiting thread leaves /proc/self/task.
    """
    for _ in range(attempts):
        gc.collect()
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def pytest_report_header(config: pytest.Config) -> str:
    from traffic import _traffic

    return f"traffic {traffic.__version__}: {traffic.backend} backend, core {_traffic.__file__}"


def pytest_sessionstart(session: pytest.Session) -> None:
    """With ``TRAFFIC_EXPECT_BACKEND`` set (CI does), refuse to test another core.

    A shell without job control starts a background command (``cmd &``,
    ``nohup``) with SIGINT ignored, and an ignored signal stays ignored in
    every child: Python then installs no KeyboardInterrupt handler, and the
    Ctrl-C tests (here and in the subprocesses they start) would wait for
    an interrupt that never comes.  Python's own handler is put back, so
    the suite behaves the same however it was started.
    """
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    expected = os.environ.get("TRAFFIC_EXPECT_BACKEND")
    if expected and traffic.backend != expected:
        raise pytest.UsageError(
            f"TRAFFIC_EXPECT_BACKEND={expected}, but the traffic imported was built "
            f"with the {traffic.backend} backend"
        )


@pytest.fixture(scope="session", autouse=True)
def _process_resources() -> None:
    """Let libkqueue and libuv make their process-wide resources first.

    libkqueue (the kqueue backend built on Linux) opens two descriptors of its
    own at the process's first kqueue(), an epoll set and an eventfd that
    watch every kqueue's closing, and keeps them until the process exits.
    libuv (uvloop's, for the anyio tests' uvloop cases) opens a pipe at its
    first loop (``uv__signal_global_once_init``: the lock of its signal
    handling) and keeps it until the process exits.  They belong to no
    Traffic and no test, so they are made here, before any test's leak check
    takes its baseline; everything a Traffic or a loop opens is still checked.
    """
    if traffic.backend == "kqueue" and sys.platform.startswith("linux"):
        Traffic().close()
    try:
        import uvloop
    except ImportError:
        pass  # no uvloop cases run
    else:
        uvloop.new_event_loop().close()


@pytest.fixture(autouse=True)
def _no_leaks(request: pytest.FixtureRequest) -> Iterator[None]:
    gc.collect()
    fds = open_fds()
    baseline = traffic.live_objects()
    yield
    settle(lambda: open_fds() == fds and traffic.live_objects() == baseline and not cycle_threads())
    extra = open_fds() - fds
    missing = fds - open_fds()
    assert not extra, f"descriptors leaked: {fd_targets(extra)}"
    assert not missing, f"descriptors closed that the test did not own: {sorted(missing)}"
    assert traffic.live_objects() == baseline, (
        f"core objects alive: {traffic.live_objects()} (baseline {baseline})"
    )
    assert not cycle_threads(), "a traffic-cycle thread outlived its Traffic"


@pytest.fixture
def tr() -> Iterator[Traffic]:
    """A Traffic closed after the test (the leak check then sees everything released)."""
    t = Traffic()
    try:
        yield t
    finally:
        t.close()


def run_until(
    traffic_: Traffic,
    condition: Callable[[], bool],
    on_transit: Callable[[traffic.Transit], None] | None = None,
    cycles: int = 300,
    timeout: float = 0.1,
) -> None:
    """Run cycles (``timeout`` each) until ``condition()`` holds; fail after ``cycles``."""
    for _ in range(cycles):
        if condition():
            return
        with traffic_.cycle(timeout):
            for transit in traffic_.transfers():
                if on_transit is not None:
                    on_transit(transit)
    assert condition(), "condition not reached within the cycle bound"


def wait_readable(fd: int, timeout: float = 30.0) -> bool:
    r, _, _ = select.select([fd], [], [], timeout)
    return bool(r)


def recv_exactly(sock: socket.socket, n: int, timeout: float = 30.0) -> bytes:
    sock.settimeout(timeout)
    chunks = []
    while n:
        chunk = sock.recv(min(n, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def recv_all(sock: socket.socket, timeout: float = 30.0) -> bytes:
    """Everything until EOF."""
    sock.settimeout(timeout)
    chunks = []
    while True:
        chunk = sock.recv(1 << 20)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


class Collector:
    """Collects what an input transit delivers, re-acquiring as it exhausts."""

    def __init__(self, transit: traffic.Octets, size: int = 65536) -> None:
        self.transit = transit
        self.size = size
        self.data = bytearray()
        self.terminated = False
        self.error: int | None = None
        self.transfers = 0
        transit.acquire(bytearray(size))

    def __call__(self, transit: traffic.Transit) -> None:
        if transit is not self.transit:
            return
        view = transit.transfer()
        if view is not None:
            self.data += view
            self.transfers += 1
        if transit.terminated:
            self.terminated = True
            self.error = transit.error
        elif transit.exhausted:
            transit.acquire(bytearray(self.size))


class MessagesOf(logging.Handler):
    """Collects a logger's messages as text (pytest's caplog keeps the
    records, whose tracebacks would keep the test's streams alive past the
    leak check); the logger does not propagate meanwhile, for the same reason."""

    def __init__(self, name: str) -> None:
        super().__init__(logging.DEBUG)
        self.logger = logging.getLogger(name)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def __enter__(self) -> list[str]:
        self.logger.addHandler(self)
        self.propagate = self.logger.propagate
        self.logger.propagate = False  # pytest's own capture keeps records too
        return self.messages

    def __exit__(self, *exc: object) -> None:
        self.logger.removeHandler(self)
        self.logger.propagate = self.propagate
