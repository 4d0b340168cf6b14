"""A half-open peer: the path black-holed after the handshake.

The server runs in one private namespace, its clients in another, joined
by a veth pair.  Once each layer's connections are established, the
client namespace routes the server's address to a blackhole: the client's
kernel answers nothing, the server's sees no ACK, no RST, no ICMP.

- A send with ``TCP_USER_TIMEOUT`` 1 s (set through the stream:
  ``TrafficStream.setsockopt``, anyio's ``raw_socket``) fails within 10 s
  with ``BrokenResourceError`` from ``ETIMEDOUT``.
- A receive parked with keepalive (1 s idle, 1 s interval, one probe)
  fails the same way within 10 s.
- A receive parked with neither waits for ever (TCP cannot tell a silent
  peer from a dead one): it burns no CPU (under 5% over 2 s), cancelling
  it returns at once, and its descriptor is released.
"""

from __future__ import annotations

import time

import pytest

from . import support
from .support import Engine, Server, check_idle, check_outcomes, mode_client

pytestmark = pytest.mark.timeout(60)

SERVER_ADDR, CLIENT_ADDR = "198.18.0.1", "198.18.0.2"
#: The bound of a send under a 1 s TCP_USER_TIMEOUT (10x), and of keepalive's.
TIMEOUT_BOUND = 10.0


def test_half_open_peer() -> None:
    with support.net() as net:
        server_ns, client_ns = net.namespace("s"), net.namespace("c")
        net.link(server_ns, client_ns, SERVER_ADDR, CLIENT_ADDR)
        with (
            Engine() as engine,
            support.servers(
                support.layers(),
                warm=support.warm_echo(engine, client_ns),
                host=SERVER_ADDR,
                netns=server_ns,
            ) as servers,
        ):
            clients = {}
            for server in servers:
                clients[server] = {
                    # Reads what the server sends: data is in flight when the path goes.
                    "tuo": engine.open(
                        mode_client(server, "blast", "tuo", "tuo=1000", netns=client_ns)
                    ),
                    "ka": engine.open(mode_client(server, "hold", "ka", "ka=1", netns=client_ns)),
                    "silent": engine.open(mode_client(server, "hold", "silent", netns=client_ns)),
                }

            def ready(server: Server) -> bool:
                conns = server.stats()["conns"]
                return (
                    all(name in conns for name in ("tuo", "ka", "silent"))
                    and conns["tuo"]["sent"] > 0
                    and conns["ka"]["phase"] == conns["silent"]["phase"] == "recv"
                )

            for server in servers:
                support.wait_for(lambda s=server: ready(s), 10, f"[{server.layer}] connections")

            net.exec(client_ns, "ip", "route", "add", "blackhole", f"{SERVER_ADDR}/32")
            holed = time.monotonic()
            # The silent receive's idle wait, while the timeouts run out.
            check_idle(servers, "a receive parked on a black-holed peer")

            for server in servers:

                def timed_out(server: Server = server) -> bool:
                    conns = server.stats()["conns"]
                    return conns["tuo"]["t_end"] is not None and conns["ka"]["t_end"] is not None

                support.wait_for(
                    timed_out,
                    TIMEOUT_BOUND - (time.monotonic() - holed),
                    f"[{server.layer}] TCP_USER_TIMEOUT and keepalive give up",
                )
                conns = server.stats()["conns"]
                for name in ("tuo", "ka"):
                    assert conns[name]["outcomes"] == ["broken:ETIMEDOUT"], (
                        server.layer,
                        name,
                        conns[name]["outcomes"],
                    )
                    took = conns[name]["t_end"] - holed
                    assert took < TIMEOUT_BOUND, (server.layer, name, took)
                assert conns["silent"]["t_end"] is None, (server.layer, conns["silent"])

                answer = server.cancel("silent")
                assert answer["outcomes"] == {"silent": ["cancelled"]}, (server.layer, answer)
                assert answer["latency"] < support.AT_ONCE, (server.layer, answer)

            for server in servers:
                for client in clients[server].values():
                    engine.shut(client)
                check_outcomes(server.settled(), server.layer)


#: ICMP errors the path sends back, and the errno each becomes once
#: ``TCP_USER_TIMEOUT`` gives up (the kernel reports the last soft error).
UNREACHABLE = {
    "host-unreachable": "EHOSTUNREACH",
    "net-unreachable": "ENETUNREACH",
    "port-unreachable": "ECONNREFUSED",
}


def test_unreachable_peer() -> None:
    """The path answers the server's packets with ICMP errors (a router
    that lost the peer's host or network, a firewall's ``REJECT``, whose
    default is port-unreachable): with ``TCP_USER_TIMEOUT`` 1 s the send
    fails within 10 s, chained to the errno of the ICMP error.  The server
    sends a little at a time (``drip``), so that data is in flight when the
    errors start: a zero-window probe's error would not count (its sequence
    number is outside the window)."""
    with support.net() as net:
        support.need_tools("nft")
        server_ns, client_ns = net.namespace("s"), net.namespace("c")
        net.link(server_ns, client_ns, SERVER_ADDR, CLIENT_ADDR)
        with (
            Engine() as engine,
            support.servers(
                support.layers(),
                warm=support.warm_echo(engine, client_ns),
                host=SERVER_ADDR,
                netns=server_ns,
            ) as servers,
        ):
            clients = {
                (server, kind): engine.open(
                    mode_client(server, "drip", kind, "tuo=1000", netns=client_ns)
                )
                for server in servers
                for kind in UNREACHABLE
            }
            for server in servers:
                support.wait_for(
                    lambda s=server: all(
                        s.stats()["conns"].get(kind, {}).get("sent", 0) > 0 for kind in UNREACHABLE
                    ),
                    10,
                    f"[{server.layer}] connections",
                )
            # Every packet of the server's answered with the ICMP error, and
            # nothing of the client's reaching the server (an ACK would
            # clear the error the kernel noted).  No rate limit on the
            # errors: each connection gets its own.
            net.sysctl(client_ns, "net.ipv4.icmp_ratelimit", 0)
            rejects = "\n".join(
                f"tcp dport {client.port} reject with icmp type {kind}"
                for (_, kind), client in clients.items()
            )
            ports = ", ".join(str(client.port) for client in clients.values())
            net.nft(
                client_ns,
                f"""
                table ip tf_reject {{
                    chain input {{
                        type filter hook input priority 0; policy accept;
                        {rejects}
                    }}
                    chain output {{
                        type filter hook output priority 0; policy accept;
                        tcp sport {{ {ports} }} drop
                    }}
                }}
                """,
            )
            rejected = time.monotonic()
            for server in servers:

                def failed(server: Server = server) -> bool:
                    conns = server.stats()["conns"]
                    return all(conns[kind]["t_end"] is not None for kind in UNREACHABLE)

                support.wait_for(
                    failed,
                    TIMEOUT_BOUND - (time.monotonic() - rejected),
                    f"[{server.layer}] the sends fail",
                )
                conns = server.stats()["conns"]
                for kind, name in UNREACHABLE.items():
                    assert conns[kind]["outcomes"] == [f"broken:{name}"], (
                        server.layer,
                        kind,
                        conns[kind]["outcomes"],
                    )
            for client in clients.values():
                engine.shut(client)
            for server in servers:
                check_outcomes(server.settled(), server.layer)
