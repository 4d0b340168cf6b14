"""Socket-memory pressure: the servers' TCP memory limited by a cgroup.

The four servers run in one cgroup v1 memory controller (beneath this
process's own) whose ``memory.kmem.tcp.limit_in_bytes`` is 128 KiB, far
below what their connections' buffers would take, in a private namespace
whose loopback has an Ethernet MTU (1500: segments of a real network's
size, not loopback's 64 KiB).  The kernel refuses their sockets memory
(the controller's peak usage reaches the limit), drops what arrives
beyond it and makes sends wait; uploads and downloads of 1 MiB each still
arrive whole (SHA-256), and the servers return to their baseline.  A
clean error would be allowed; none comes.

No echoes here: an echo's handler blocked in its send while its receive
queue is full can stall TCP itself for tens of seconds under so tight a
limit (the peer's segments, which carry the ACKs the send waits for, fall
outside the closed window and are dropped whole; both sides back off
their retransmissions).  The suite saw it happen with traffic waiting as
it should: the send parked in the core, the socket not writable.
"""

from __future__ import annotations

import pytest

from . import support
from .support import Engine, check_clients, check_outcomes, sink_client, source_client

pytestmark = pytest.mark.timeout(60)

LIMIT = 128 << 10
SIZE = 1 << 20
EACH = 3


def test_socket_memory_pressure() -> None:
    with support.net() as net:
        ns = net.namespace("m")
        net.exec(ns, "ip", "link", "set", "lo", "mtu", "1500")
        with (
            support.tcp_memory_cgroup(LIMIT) as cgroup,
            Engine() as engine,
            support.servers(
                support.layers(), warm=support.warm_echo(engine, ns), cgroup=str(cgroup), netns=ns
            ) as servers,
        ):
            clients = []
            for server in servers:
                for n in range(EACH):
                    clients += [
                        engine.open(sink_client(server, f"up{n}", SIZE, n, netns=ns)),
                        engine.open(source_client(server, f"down{n}", SIZE, n, netns=ns)),
                    ]
            support.wait_clients(clients, 30, "clients under socket-memory pressure", servers)
            # The counter reached its limit (its failcnt is no witness: recent
            # kernels count no failures of the TCP counter; what the kernel
            # forces beyond the limit shows in the peak).
            peak = int((cgroup / "memory.kmem.tcp.max_usage_in_bytes").read_text())
            assert peak >= LIMIT, f"the TCP memory limit was never reached (peak {peak})"
            check_clients(clients)
            for server in servers:
                check_outcomes(server.settled(), server.layer)
