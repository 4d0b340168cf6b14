"""A reset from the network mid-transfer: ``ss -K`` on either side.

In a private namespace, each layer's server has connections parked in a
receive (``hold``), in a send to a peer that stopped reading (``blast``)
and in both at once (``duplex``), beside normal clients echoing 1 MiB.
Each parked connection is then destroyed with ``ss -K``, either the
server's socket (the kernel aborts it: ``ECONNABORTED`` there, a reset to
the client) or the client's (a reset reaches the server: ``ECONNRESET``,
``EPIPE``); so are two connections in full flight both ways.  Every parked or
moving operation is woken at once (within 1 s) with a clean outcome, the
normal clients' transfers arrive whole, and the server returns to its
baseline.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from . import support
from .support import Client, Engine, Server, check_clients, check_outcomes, echo_client

pytestmark = [pytest.mark.faults_quick, pytest.mark.timeout(60)]

MODES = ("hold", "blast", "duplex")


def kill(net: support.Net, ns: str, local: int, remote: int) -> None:
    """``ss -K`` the one TCP socket bound to port ``local`` and connected to
    port ``remote`` (the killed socket is listed: exactly one)."""
    out = net.exec(ns, "ss", "-K", "-t", "-n", "-H", f"( sport = :{local} and dport = :{remote} )")
    killed = [line for line in out.splitlines() if line.strip()]
    assert len(killed) == 1, f"ss -K sport {local} dport {remote} killed {killed}"


def parked(server: Server, victims: list[Client]) -> bool:
    """Every victim's handler waits: a receive, or a send that stopped moving."""
    first = server.stats()["conns"]
    time.sleep(0.05)
    second = server.stats()["conns"]
    for client in victims:
        a, b = first.get(client.label), second.get(client.label)
        if a is None or b is None:
            return False
        if "blast" in client.label or "duplex" in client.label:
            if b["phase"] not in ("send", "recv") or a["sent"] != b["sent"] or b["sent"] == 0:
                return False
        elif b["phase"] != "recv":
            return False
    return True


def reset(net: support.Net, ns: str, server: Server, clients: list[Client]) -> dict[str, float]:
    """``ss -K`` each client's connection on the side its label ends with
    (``server`` or ``client``); when each was reset, by label."""
    killed_at = {}
    for client in clients:
        killed_at[client.label] = time.monotonic()
        if client.label.endswith("server"):
            kill(net, ns, server.port, client.port)
        else:
            kill(net, ns, client.port, server.port)
    return killed_at


def ended(server: Server, clients: list[Client], what: str) -> dict[str, dict[str, Any]]:
    """The server's records of ``clients`` once every handler has ended
    (within 10 s), by label."""

    def done() -> bool:
        conns = server.stats()["conns"]
        return all(conns[c.label]["t_end"] is not None for c in clients)

    support.wait_for(done, 10, f"[{server.layer}] {what}")
    conns = server.stats()["conns"]
    return {c.label: conns[c.label] for c in clients}


def test_reset_from_the_network_wakes_parked_operations() -> None:
    with support.net() as net:
        support.need_tools("ss")
        ns = net.namespace("r")
        with (
            Engine() as engine,
            support.servers(
                support.layers(), warm=support.warm_echo(engine, ns), netns=ns
            ) as servers,
        ):
            victims: dict[Server, list[Client]] = {}
            normal: list[Client] = []
            for server in servers:
                victims[server] = [
                    engine.open(
                        support.mode_client(
                            server, mode, f"{mode}-{side}", netns=ns, read=False, rcvbuf=4096
                        )
                    )
                    for mode in MODES
                    for side in ("server", "client")
                ]
            for server in servers:
                support.wait_for(
                    lambda server=server: parked(server, victims[server]),
                    10,
                    f"[{server.layer}] the victims park",
                )
            # The normal clients start, and the resets happen under them.
            for server in servers:
                normal += [
                    engine.open(echo_client(server, f"normal{n}", 1 << 20, n, netns=ns))
                    for n in range(3)
                ]
            killed_at = {server: reset(net, ns, server, victims[server]) for server in servers}
            for server in servers:
                records = ended(server, victims[server], "the victims wake")
                for client in victims[server]:
                    record = records[client.label]
                    took = record["t_end"] - killed_at[server][client.label]
                    assert took < support.AT_ONCE, (
                        f"[{server.layer}] {client.label} woke {took:.2f} s after the reset"
                    )
                    outcomes = record["outcomes"]
                    # A parked receive may find the end of the stream when
                    # the send consumed the socket's error first.
                    expected = len(outcomes) == (3 if client.label.startswith("duplex") else 1)
                    assert expected and all(
                        o.startswith("broken:") or o in ("eof", "duplex") for o in outcomes
                    ), f"[{server.layer}] {client.label}: {outcomes}"
                    assert any(o.startswith("broken:") for o in outcomes) or (
                        client.label.startswith("hold")
                    ), f"[{server.layer}] {client.label}: {outcomes}"
                    if client.label.endswith("server"):
                        # The server's own socket was aborted.
                        assert any(o == "broken:ECONNABORTED" for o in outcomes) or outcomes == [
                            "eof"
                        ], f"[{server.layer}] {client.label}: {outcomes}"

            # Mid-transfer: both directions moving (the server sends for
            # ever to a client that reads, and reads what the client sends).
            busy = {
                server: [
                    engine.open(
                        support.mode_client(
                            server, "duplex", f"busy-{side}", payload=bytes(4 << 20), netns=ns
                        )
                    )
                    for side in ("server", "client")
                ]
                for server in servers
            }
            for server in servers:

                def moving(server: Server = server) -> bool:
                    conns = server.stats()["conns"]
                    return all(
                        conns.get(c.label, {}).get("received", 0) > 512 << 10 for c in busy[server]
                    )

                support.wait_for(moving, 10, f"[{server.layer}] the busy echoes move")
                killed_at[server] = reset(net, ns, server, busy[server])
            for server in servers:
                records = ended(server, busy[server], "the busy echoes end")
                for client in busy[server]:
                    record = records[client.label]
                    took = record["t_end"] - killed_at[server][client.label]
                    assert took < support.AT_ONCE, (server.layer, client.label, took)
                    outcomes = record["outcomes"]
                    assert len(outcomes) == 3 and any(o.startswith("broken:") for o in outcomes), (
                        server.layer,
                        client.label,
                        record,
                    )

            support.wait_clients(normal, 30, "normal clients beside the resets", servers)
            check_clients(normal)
            for group in victims.values():
                for client in group:
                    engine.shut(client)  # they never read: the engine does not watch them
            moving = [c for group in busy.values() for c in group]
            support.wait_clients(moving, 10, "the busy clients see their reset", servers)
            for server in servers:
                check_outcomes(server.settled(), server.layer)
