"""Sockets transits: listening, accepting, and many connections in one Traffic.

Clients are stdlib sockets (or Octets.connect); accepted descriptors are
checked as the kernel sees them (flags, type).  EMFILE is provoked in a
subprocess with a lowered RLIMIT_NOFILE, which prints what it saw.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import resource
import socket
import stat
import subprocess
import sys
from array import array
from typing import Any

import pytest

import traffic
from conftest import run_until
from traffic import Octets, Sockets, Traffic
from traffic._traffic import lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Acceptor:
    """Collects the descriptors a Sockets transit accepts, re-acquiring as it exhausts."""

    def __init__(self, transit: Sockets, slots: int = 64) -> None:
        self.transit = transit
        self.slots = slots
        self.fds: list[int] = []
        self.faults: list[int] = []
        transit.acquire(array("i", [-1]) * slots)

    def __call__(self, t: traffic.Transit) -> None:
        if t is not self.transit:
            return
        view = t.transfer()
        if view is not None:
            self.fds.extend(view.tolist())
        if t.events & lib.TR_EV_FAULT:
            self.faults.append(t.error or 0)
        if (t.events & (lib.TR_EV_EXHAUST | lib.TR_EV_FAULT)) and not t.terminated:
            t.acquire(array("i", [-1]) * self.slots)

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds.clear()


def need_descriptors(n: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= n:
        return
    if hard != resource.RLIM_INFINITY and hard < n:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} is below the {n} descriptors this test needs")
    resource.setrlimit(
        resource.RLIMIT_NOFILE, (n if hard == resource.RLIM_INFINITY else hard, hard)
    )


def check_accepted(fd: int) -> None:
    """A real socket, non-blocking and close-on-exec."""
    assert stat.S_ISSOCK(os.fstat(fd).st_mode)
    assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK
    assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC


@pytest.mark.parametrize("where", ["tcp", "unix"])
def test_listen_and_accept(tr: Traffic, tmp_path: Any, where: str) -> None:
    address: Any = ("127.0.0.1", 0) if where == "tcp" else str(tmp_path / "listener")
    listener, bound = Sockets.listen(address)
    tr.acquire(listener)
    family = socket.AF_INET if where == "tcp" else socket.AF_UNIX
    if where == "tcp":
        assert bound[0] == "127.0.0.1" and bound[1] > 0
    acceptor = Acceptor(listener, 4)
    clients = []
    try:
        for _ in range(3):
            c = socket.socket(family, socket.SOCK_STREAM)
            c.connect(bound)
            clients.append(c)
        run_until(tr, lambda: len(acceptor.fds) == 3, acceptor)
        for fd, _client in zip(acceptor.fds, clients, strict=False):
            check_accepted(fd)
        # Each accepted descriptor is a live connection to one of the clients.
        for i, fd in enumerate(acceptor.fds):
            with socket.socket(fileno=os.dup(fd)) as s:
                s.setblocking(True)
                s.sendall(b"%d" % i)
        got = sorted(c.recv(10) for c in clients)
        assert got == [b"0", b"1", b"2"]
        assert not listener.terminated
    finally:
        acceptor.close()
        for c in clients:
            c.close()


def test_accept_exhaustion_leaves_connections_queued(tr: Traffic) -> None:
    listener, bound = Sockets.listen(("127.0.0.1", 0))
    tr.acquire(listener)
    acceptor = Acceptor(listener, 2)
    acceptor.slots = 0  # do not re-acquire: starve it after the first resource
    clients = [socket.create_connection(bound) for _ in range(5)]
    try:

        def visit(t: traffic.Transit) -> None:
            if t is listener:
                view = t.transfer()
                if view is not None:
                    acceptor.fds.extend(view.tolist())

        run_until(tr, lambda: listener.exhausted, visit)
        assert len(acceptor.fds) == 2
        for _ in range(3):
            with tr.cycle(0.05):
                assert list(tr.transfers()) == []
        listener.acquire(array("i", [-1]) * 8)
        run_until(tr, lambda: len(acceptor.fds) == 5, visit)
    finally:
        acceptor.close()
        for c in clients:
            c.close()


def test_thousand_connections_accepted(tr: Traffic) -> None:
    n = 1000
    need_descriptors(2 * n + 100)
    listener, bound = Sockets.listen(("127.0.0.1", 0), backlog=n)
    tr.acquire(listener)
    acceptor = Acceptor(listener, 128)
    clients: list[socket.socket] = []
    try:
        for _ in range(n):
            c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            c.setblocking(False)
            code = c.connect_ex(bound)
            assert code in (0, errno.EINPROGRESS)
            clients.append(c)
            if len(clients) % 100 == 0:  # keep the backlog from overflowing
                run_until(tr, lambda: len(acceptor.fds) >= len(clients) - 100, acceptor)
        run_until(tr, lambda: len(acceptor.fds) == n, acceptor)
        assert len(set(acceptor.fds)) == n
        for fd in acceptor.fds:
            check_accepted(fd)
        assert not listener.terminated and listener.error is None
    finally:
        acceptor.close()
        for c in clients:
            c.close()


def test_thousand_connections_exchange_data(tr: Traffic) -> None:
    """Octets.connect clients and accepted servers, all in one Traffic, both ways."""
    n = 1000
    need_descriptors(2 * n + 100)
    listener, bound = Sockets.listen(("127.0.0.1", 0), backlog=n)
    tr.acquire(listener)
    acceptor = Acceptor(listener, 128)
    received: dict[Any, bytearray] = {}
    size = 3000
    wrapped = 0
    servers: list[tuple[Octets, Octets]] = []

    clients = []
    for i in range(n):
        cin, cout = Octets.connect(bound)
        tr.acquire(cin)
        tr.acquire(cout)
        received[cin] = bytearray()
        cin.acquire(bytearray(size))
        cout.acquire(b"c%04d" % i * (size // 5))
        clients.append((cin, cout))

    def visit(t: traffic.Transit) -> None:
        nonlocal wrapped
        acceptor(t)
        view = t.transfer()
        if t in received and view is not None:
            received[t] += view
        assert not t.terminated, (t, t.error)

    def wrap_new() -> None:
        nonlocal wrapped
        while wrapped < len(acceptor.fds):
            fd = acceptor.fds[wrapped]
            wrapped += 1
            sin, sout = Octets.wrap(socket.socket(fileno=fd))
            tr.acquire(sin)
            tr.acquire(sout)
            received[sin] = bytearray()
            sin.acquire(bytearray(size))
            sout.acquire(b"s%04d" % (wrapped - 1) * (size // 5))
            servers.append((sin, sout))

    def done() -> bool:
        wrap_new()
        return len(servers) == n and all(len(v) == size for v in received.values())

    run_until(tr, done, visit, cycles=3000)
    acceptor.fds.clear()  # now owned by the server transits
    for cin, _ in clients:
        data = bytes(received[cin])
        tag = data[:5]
        assert tag.startswith(b"s") and data == tag * (size // 5)
    tags = sorted(bytes(received[sin][:5]) for sin, _ in servers)
    assert tags == sorted(b"c%04d" % i for i in range(n))
    for sin, _ in servers:
        assert bytes(received[sin]) == bytes(received[sin][:5]) * (size // 5)


EMFILE_SCRIPT = r"""
import json, os, resource, socket, sys
from array import array
from traffic import Sockets, Traffic
from traffic._traffic import lib

tr = Traffic()
listener, bound = Sockets.listen(("127.0.0.1", 0))
tr.acquire(listener)
first = socket.create_connection(bound)
second = socket.create_connection(bound)

# Fill the descriptor table up to a lowered limit.
used = max(int(f) for f in os.listdir("/proc/self/fd"))
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (used + 8, hard))
filler = []
while True:
    try:
        filler.append(os.open("/dev/null", os.O_RDONLY))
    except OSError:
        break

results = {}
listener.acquire(array("i", [-1]) * 4)
seen = []
for _ in range(100):
    with tr.cycle(0.1):
        for t in tr.transfers():
            seen.append(dict(events=t.events, error=t.error, transfer=t.transfer() is not None,
                             terminated=t.terminated, exhausted=t.exhausted))
    if seen:
        break
results["fault"] = seen
results["released"] = listener.resource is None and not listener._status()[0] & lib.TR_ST_RESOURCE
# Nothing more happens while starved: the fault released the resource.
with tr.cycle(0.05):
    results["after"] = [t.events for t in tr.transfers()]

for fd in filler:
    os.close(fd)
accepted = []
listener.acquire(array("i", [-1]) * 4)
for _ in range(100):
    with tr.cycle(0.1):
        for t in tr.transfers():
            if t.transfer() is not None:
                accepted.extend(t.transfer().tolist())
    if len(accepted) >= 2:
        break
results["accepted"] = len(accepted)
results["terminated"] = listener.terminated
for fd in accepted:
    os.close(fd)
first.close()
second.close()
tr.close()
print(json.dumps(results))
"""


def test_emfile_on_accept_is_a_fault_not_a_termination() -> None:
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.run(
        [sys.executable, "-c", EMFILE_SCRIPT],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)
    assert results["fault"] == [
        dict(
            events=lib.TR_EV_FAULT,
            error=errno.EMFILE,
            transfer=False,
            terminated=False,
            exhausted=True,
        )
    ]
    assert results["released"] is True
    assert results["after"] == []
    assert results["accepted"] == 2
    assert results["terminated"] is False
