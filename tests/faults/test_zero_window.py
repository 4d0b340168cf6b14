"""A live peer that never reads (a zero window), beside normal clients.

Each layer's server sends to two peers that never read (``blast``: its
send parks once the peer's window is closed) while normal clients echo
1 MiB each through it, checked by SHA-256.  Then: the parked sends burn no
CPU (under 5% of one CPU over 2 s), cancelling them returns at once, and
the server is back at its baseline.  Loopback of the root namespace: no
root needed.
"""

from __future__ import annotations

import time

import pytest

from . import support
from .support import (
    Client,
    Engine,
    Server,
    check_clients,
    check_idle,
    check_outcomes,
    echo_client,
    mode_client,
)

pytestmark = [pytest.mark.faults_quick, pytest.mark.timeout(60)]


def sends_parked(server: Server, clients: list[Client]) -> bool:
    """Each client's handler waits in a send that stopped moving."""
    first = server.stats()["conns"]
    time.sleep(0.1)
    second = server.stats()["conns"]
    for client in clients:
        a, b = first.get(client.label), second.get(client.label)
        if a is None or b is None or b["phase"] != "send" or not 0 < a["sent"] == b["sent"]:
            return False
    return True


def test_zero_window_parks_without_spinning() -> None:
    with (
        Engine() as engine,
        support.servers(support.layers(), warm=support.warm_echo(engine)) as servers,
    ):
        stuck: dict[Server, list[Client]] = {}
        normal: list[Client] = []
        for server in servers:
            stuck[server] = [
                engine.open(mode_client(server, "blast", f"stuck{n}", read=False, rcvbuf=4096))
                for n in range(2)
            ]
            normal += [engine.open(echo_client(server, f"normal{n}", 1 << 20, n)) for n in range(3)]
        support.wait_clients(normal, 30, "normal clients beside the stuck ones", servers)
        check_clients(normal)
        for server in servers:
            support.wait_for(
                lambda s=server: sends_parked(s, stuck[s]), 10, f"[{server.layer}] sends park"
            )
        check_idle(servers, "sends parked on a zero window")

        for server in servers:
            answer = server.cancel(*(c.label for c in stuck[server]))
            assert answer["latency"] is not None and answer["latency"] < support.AT_ONCE, (
                f"[{server.layer}] cancelling the parked sends took {answer['latency']} s"
            )
            for ident, outcomes in answer["outcomes"].items():
                assert outcomes == ["cancelled"], (server.layer, ident, outcomes)
        for server in servers:
            for client in stuck[server]:
                engine.shut(client)
            check_outcomes(server.settled(), server.layer)
