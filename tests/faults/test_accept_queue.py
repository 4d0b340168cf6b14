"""A full accept queue, and a SYN flood, in private namespaces.

- Overflow: ``somaxconn`` 4 and ``tcp_abort_on_overflow`` 1 in the
  server's namespace; each layer's server is stopped (``SIGSTOP``) while
  three clients connect, send their line and reset (dead connections in
  the queue), then 40 more connect; then it is continued.  The kernel
  resets the handshakes that found the queue full (the namespace's
  ``ListenOverflows`` counts them); the dead connections are accepted and
  end cleanly; every live connection the server accepted is served (its
  echo comes back whole), and nothing escapes.
- SYN flood: a third namespace sends 250 SYNs a layer whose SYN-ACKs its
  nftables rule drops, filling the server's SYN queue (``somaxconn`` 16:
  the kernel answers with SYN cookies, ``TCPReqQFullDoCookies`` counts
  them); normal clients from another namespace are all served, and the
  server accepts nothing of the flood.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from . import support
from .support import Client, Engine, Server, check_clients, check_outcomes, echo_client

pytestmark = pytest.mark.timeout(60)

OVERFLOW_CLIENTS = 40
DEAD = 3
FLOOD = 250
NORMAL = 20
#: What a client of an overflowing queue may see: served, or refused by the kernel.
REFUSED = {"reset:ECONNRESET", "reset:EPIPE", "connect:ECONNRESET", "connect:ECONNREFUSED"}


def served(server: Server, prefix: str) -> list[dict[str, object]]:
    stats = server.settled()
    check_outcomes(stats, server.layer)
    return [conn for key, conn in stats["conns"].items() if key.startswith(prefix)]


def test_accept_queue_overflow() -> None:
    with support.net() as net:
        ns = net.namespace("q")
        net.sysctl(ns, "net.core.somaxconn", 4)
        net.sysctl(ns, "net.ipv4.tcp_abort_on_overflow", 1)
        with (
            Engine() as engine,
            support.servers(
                support.layers(), warm=support.warm_echo(engine, ns), netns=ns
            ) as servers,
        ):
            before = net.counters(ns)
            clients: dict[Server, list[Client]] = {}
            for server in servers:
                os.kill(server.pid, signal.SIGSTOP)
            dead: dict[Server, list[Client]] = {}
            try:
                for server in servers:
                    # First into the queue: connections whose clients send
                    # their line and reset before the server accepts them.
                    dead[server] = []
                    for n in range(DEAD):
                        client = echo_client(server, f"dead{n}", 4096, n, netns=ns)
                        client.reset_after = len(client.header)
                        dead[server].append(engine.open(client))
                support.wait_clients(
                    [c for group in dead.values() for c in group], 10, "clients that reset"
                )
                for server in servers:
                    clients[server] = [
                        engine.open(echo_client(server, f"c{n}", 4096, n, netns=ns))
                        for n in range(OVERFLOW_CLIENTS)
                    ]
                time.sleep(0.3)  # the handshakes meet the full queue
            finally:
                for server in servers:
                    os.kill(server.pid, signal.SIGCONT)
            everyone = [c for group in clients.values() for c in group]
            support.wait_clients(everyone, 30, "clients of an overflowing queue", servers)
            check_clients(everyone, {"ok", *REFUSED})
            after = net.counters(ns)
            assert after["TcpExtListenOverflows"] > before["TcpExtListenOverflows"], (
                "the accept queue never overflowed"
            )
            for server in servers:
                ok = [c for c in clients[server] if c.outcome == "ok"]
                assert ok, f"[{server.layer}] no client served"
                conns = served(server, "c")
                # Every connection accepted was served to its end, and
                # every one served is a client that got its echo.
                assert len(conns) == len(ok), (server.layer, len(conns), len(ok))
                assert all(conn["outcomes"] == ["eof"] for conn in conns), server.layer
                # The dead ones accepted (clean outcomes: checked by served).
                assert served(server, "dead"), f"[{server.layer}] no reset connection accepted"


def test_syn_flood() -> None:
    with support.net() as net:
        support.need_tools("nft")
        server_ns, client_ns, flood_ns = (net.namespace(role) for role in "scf")
        net.link(server_ns, client_ns, "198.18.1.1", "198.18.1.2")
        net.link(server_ns, flood_ns, "198.18.2.1", "198.18.2.2")
        net.sysctl(server_ns, "net.core.somaxconn", 16)
        net.sysctl(server_ns, "net.ipv4.tcp_syncookies", 1)
        net.nft(
            flood_ns,
            """
            table ip tf_flood {
                chain input {
                    type filter hook input priority 0; policy accept;
                    tcp flags & (syn | ack) == (syn | ack) drop
                }
            }
            """,
        )
        with (
            support.more_descriptors(len(support.layers()) * (FLOOD + NORMAL) + 256),
            Engine() as engine,
            support.servers(
                support.layers(),
                warm=support.warm_echo(engine, client_ns),
                host="0.0.0.0",
                reach="198.18.1.1",
                netns=server_ns,
            ) as servers,
        ):
            before = net.counters(server_ns)
            flood = [
                engine.open(
                    Client(("198.18.2.1", server.port), b"", label=f"flood{n}", netns=flood_ns)
                )
                for server in servers
                for n in range(FLOOD)
            ]

            def flooded() -> bool:
                counters = net.counters(server_ns)
                return bool(
                    counters["TcpExtTCPReqQFullDoCookies"] > before["TcpExtTCPReqQFullDoCookies"]
                )

            support.wait_for(flooded, 10, "the SYN queue full (SYN cookies)")
            normal = [
                engine.open(echo_client(server, f"n{n}", 65536, n, netns=client_ns))
                for server in servers
                for n in range(NORMAL)
            ]
            support.wait_clients(normal, 20, "normal clients during a SYN flood", servers)
            check_clients(normal)
            assert all(c.outcome is None for c in flood), "a flood connection completed"
            for client in flood:
                engine.shut(client)
            for server in servers:
                conns = served(server, "n")
                assert len(conns) == NORMAL, (server.layer, len(conns))
                assert server.stats()["accepted"] == NORMAL + 1, server.layer  # + the warm-up
