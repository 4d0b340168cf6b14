"""Socket-memory pressure: the servers' TCP memory limited by a cgroup.

The four servers run in one cgroup v1 memory controller (beneath this
process's own) whose ``memory.kmem.tcp.limit_in_bytes`` is 256 KiB, far
below what their connections' buffers would take: the kernel refuses
their sockets memory (the controller's peak usage reaches the limit),
drops what arrives beyond it and makes sends wait.  Uploads, downloads and echoes of
1 MiB each still arrive whole (SHA-256): under pressure TCP slows down, it
does not corrupt, and traffic neither loses a byte nor spins.  A clean
error would be allowed; none comes.
"""

from __future__ import annotations

import pytest

from . import support
from .support import Engine, check_clients, check_outcomes, echo_client, sink_client, source_client

pytestmark = pytest.mark.timeout(60)

LIMIT = 256 << 10
SIZE = 1 << 20
EACH = 3


def test_socket_memory_pressure() -> None:
    with (
        support.tcp_memory_cgroup(LIMIT) as cgroup,
        Engine() as engine,
        support.servers(
            support.layers(), warm=support.warm_echo(engine), cgroup=str(cgroup)
        ) as servers,
    ):
        clients = []
        for server in servers:
            for n in range(EACH):
                clients += [
                    engine.open(sink_client(server, f"up{n}", SIZE, n)),
                    engine.open(source_client(server, f"down{n}", SIZE, n)),
                    engine.open(echo_client(server, f"echo{n}", SIZE, n)),
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
