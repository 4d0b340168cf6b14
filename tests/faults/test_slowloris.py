"""Slowloris: hundreds of clients trickling one byte at a time, beside
normal clients.

Each layer's server gets 100 clients that send their echo request one
byte every 50 ms, and five normal clients echoing 256 KiB each in the
middle of it: the normal transfers finish (within 10 s) and arrive whole
while every trickler is still trickling.  Then the tricklers pause, every
one of them parked in a receive: the server burns under 5% of one CPU over
2 s.  They resume and finish: each one's echo arrives whole.  Loopback of
the root namespace: no root needed.
"""

from __future__ import annotations

import time

import pytest

from . import support
from .support import Client, Engine, check_clients, check_idle, check_outcomes, echo_client

pytestmark = pytest.mark.timeout(60)

TRICKLERS = 100
NORMAL = 5
#: The normal clients' bound beside the tricklers: liveness, not speed.
NORMAL_BOUND = 10.0


def test_slowloris_beside_normal_clients() -> None:
    with (
        Engine() as engine,
        support.servers(support.layers(), warm=support.warm_echo(engine)) as servers,
    ):
        tricklers: list[Client] = []
        for server in servers:
            for n in range(TRICKLERS):
                client = echo_client(server, f"t{n}", 48, n, trickle=0.05)
                tricklers.append(engine.open(client))

        def trickling() -> bool:
            # Every trickler connected and partway through its request.
            return all(0 < c.sent < len(c.outbound) for c in tricklers)

        support.wait_for(trickling, 10, "every trickler trickling")
        started = time.monotonic()
        normal = [
            engine.open(echo_client(server, f"normal{n}", 256 << 10, n))
            for server in servers
            for n in range(NORMAL)
        ]
        support.wait_clients(normal, NORMAL_BOUND, "normal clients beside the tricklers", servers)
        check_clients(normal)
        slowest = max((c.t_end or 0) - started for c in normal)
        assert slowest < NORMAL_BOUND, slowest

        # Every trickler parked in a receive on the server: no CPU.
        engine.call(lambda: [setattr(c, "paused", True) for c in tricklers])
        time.sleep(0.1)
        check_idle(servers, f"{TRICKLERS} receives parked on tricklers")
        engine.call(lambda: [setattr(c, "paused", False) for c in tricklers])

        support.wait_clients(tricklers, 30, "tricklers", servers)
        check_clients(tricklers)
        for server in servers:
            stats = server.settled()
            check_outcomes(stats, server.layer)
            assert stats["accepted"] == TRICKLERS + NORMAL + 1, (server.layer, stats["accepted"])
