"""EMFILE with connections waiting: out of descriptors, the server neither
spins nor fails, and serves every waiting client once descriptors are back.

Each layer's server gets an ``RLIMIT_NOFILE`` a few descriptors above what
it holds; clients that hold their connections (``hold``) use them up, and
more clients connect and send their echo at once: the kernel completes
their handshakes, the server cannot accept them (EMFILE).  At the limit
the server burns under 5% of one CPU over 2 s (its accept loop backs off:
trio's 100 ms, as trio's ``serve_listeners``), and nothing escapes.  Then
the holders leave: every waiting client is accepted and its echo comes
back whole.  Loopback of the root namespace: no root needed.
"""

from __future__ import annotations

import pytest

from . import support
from .support import Engine, Server, check_clients, check_idle, check_outcomes, echo_client

pytestmark = pytest.mark.timeout(60)

HEADROOM = 6
WAITING = 8


def test_emfile_with_connections_waiting() -> None:
    with (
        Engine() as engine,
        support.servers(support.layers(), warm=support.warm_echo(engine)) as servers,
    ):
        holders = {}
        waiting = []
        for server in servers:
            server.request({"cmd": "limit", "headroom": HEADROOM})
            holders[server] = [
                engine.open(support.mode_client(server, "hold", f"holder{n}"))
                for n in range(HEADROOM + 2)
            ]

        def full(server: Server) -> bool:
            stats = server.stats()
            return stats["active"] > 0 and stats["log_errors"] > 0

        for server in servers:
            support.wait_for(lambda s=server: full(s), 10, f"[{server.layer}] EMFILE reached")
            waiting += [
                engine.open(echo_client(server, f"waiting{n}", 65536, n)) for n in range(WAITING)
            ]
        check_idle(servers, "accepting at the descriptor limit")

        for server in servers:
            for client in holders[server]:
                engine.shut(client)
        support.wait_clients(waiting, 20, "clients waiting through EMFILE", servers)
        check_clients(waiting)
        for server in servers:
            server.request({"cmd": "unlimit"})
            stats = check_settled(server)
            served = [key for key in stats["conns"] if key.startswith("waiting")]
            assert len(served) == WAITING, (server.layer, sorted(stats["conns"]))


def check_settled(server: Server) -> dict[str, object]:
    stats = server.settled()
    check_outcomes(stats, server.layer)
    return stats
