"""A lossy, rate-limited link between two namespaces, with random
cancellation and random resets on top.

The veth pair between the server's namespace and the clients' has a
``tbf`` rate limit on both ends (40 Mbit/s, a queue of 100 ms: tail
drops when the fifty-odd connections burst; with a 20 ms queue one of them
now and then starved in retransmission back-off past the 30 s bound, the
network's doing, not the server's), and nftables in the server's
namespace drops 2% of the TCP packets coming in and duplicates 2% of those
going out (``numgen random``; ``dup to``).
Over it, each layer's server runs:

- echoes under chaos (``chaos=SEED``): receives cancelled at random
  moments and retried (no byte may be lost), now and then a send cancelled
  (the handler then closes: the stream is in an unknown state), and a
  close from another task at a random moment under whatever is parked;
- uploads (``sink``) and downloads (``source``), checked by SHA-256;
- clients that reset their connection at a random byte.

Every echo the server did not close arrives whole (SHA-256); one it closed
arrives as a prefix; every handler's outcome is clean; the server returns
to its baseline.  The servers turn keepalive on (1 s) for every
connection: a reset the link drops (a lost RST is never sent again)
leaves the server a half-open connection, which only keepalive or
``TCP_USER_TIMEOUT`` ends.
"""

from __future__ import annotations

import random

import pytest

from . import support
from .support import Client, Engine, Server, check_clients, check_outcomes, echo_client

pytestmark = pytest.mark.timeout(60)

SERVER_ADDR, CLIENT_ADDR = "198.18.3.1", "198.18.3.2"
CHAOS = 8
RESETS = 3
SIZE = 128 << 10


def test_lossy_link_with_cancellation_and_resets() -> None:
    with support.net() as net:
        support.need_tools("tc", "nft")
        server_ns, client_ns = net.namespace("s"), net.namespace("c")
        server_dev, client_dev = net.link(server_ns, client_ns, SERVER_ADDR, CLIENT_ADDR)
        for ns, dev in ((server_ns, server_dev), (client_ns, client_dev)):
            net.exec(
                ns, "tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", "40mbit", "burst",
                "32kb", "latency", "100ms",
            )  # fmt: skip
        net.nft(
            server_ns,
            f"""
            table ip tf_lossy {{
                chain input {{
                    type filter hook input priority 0; policy accept;
                    ip protocol tcp numgen random mod 100 < 2 drop
                }}
                chain output {{
                    type filter hook output priority 0; policy accept;
                    ip protocol tcp numgen random mod 100 < 2 \
                        dup to {CLIENT_ADDR} device "{server_dev}"
                }}
            }}
            """,
        )
        rng = random.Random(28)
        with (
            Engine() as engine,
            support.servers(
                support.layers(),
                warm=support.warm_echo(engine, client_ns),
                host=SERVER_ADDR,
                netns=server_ns,
                keepalive=1,
            ) as servers,
        ):
            chaos: dict[Server, list[Client]] = {}
            whole: list[Client] = []
            resets: list[Client] = []

            def start(client: Client) -> Client:
                # The clients probe too: a reset from the server that the
                # link dropped would leave one that only reads waiting.
                client.keepalive = 1
                return engine.open(client)

            for server in servers:
                chaos[server] = [
                    start(
                        echo_client(
                            server, f"chaos{n}", SIZE, n, netns=client_ns, options=f"chaos={n}"
                        )
                    )
                    for n in range(CHAOS)
                ]
                whole += [
                    start(support.sink_client(server, "up", 2 * SIZE, 1, netns=client_ns)),
                    start(support.source_client(server, "down", 2 * SIZE, 2, netns=client_ns)),
                ]
                for n in range(RESETS):
                    client = echo_client(server, f"reset{n}", SIZE, 100 + n, netns=client_ns)
                    client.reset_after = rng.randrange(len(client.header) + 1, SIZE)
                    resets.append(start(client))
            everyone = [*whole, *resets, *(c for group in chaos.values() for c in group)]
            support.wait_clients(everyone, 30, "clients over the lossy link", servers)
            check_clients(whole)
            check_clients(resets, {"reset-by-me"})
            for server in servers:
                stats = server.settled()
                check_outcomes(stats, server.layer)
                for client in chaos[server]:
                    closed = "closed" in stats["conns"][client.label]["outcomes"]
                    if client.outcome != "ok":
                        # The server's handler closed mid-echo (the chaos):
                        # the client sees the end, or a reset when it reads
                        # (ECONNRESET) or writes (EPIPE) after the close.
                        assert closed and client.outcome in (
                            "truncated",
                            "reset:ECONNRESET",
                            "reset:EPIPE",
                        ), (
                            server.layer,
                            client.label,
                            client.outcome,
                            stats["conns"][client.label],
                        )
