"""What netem would do, by a user-space fault proxy (this kernel has no
netem qdisc): latency, one-byte slicing, a byte limit, resets.

Through :class:`support.FaultProxy`, in front of each layer's server:

- 20 ms of latency and every write cut into one-byte segments: an echo
  and an upload arrive whole (SHA-256);
- a byte limit (the proxy closes both sides after 6,000 bytes): the
  handler sees the end of its stream or a reset, the client a prefix;
- a reset (both sides, ``SO_LINGER`` 0) after 1 MiB of a download that
  never ends (``blast``): the server's send wakes at once; under a receive parked on a client
  that trickles its request: the receive wakes at once.

Loopback of the root namespace: no root needed.
"""

from __future__ import annotations

import pytest

from . import support
from .support import (
    Engine,
    FaultProxy,
    Faults,
    check_clients,
    check_outcomes,
    echo_client,
    mode_client,
    sink_client,
)

pytestmark = [pytest.mark.faults_quick, pytest.mark.timeout(60)]


def test_fault_proxy() -> None:
    with (
        Engine() as engine,
        FaultProxy() as proxy,
        support.servers(support.layers(), warm=support.warm_echo(engine)) as servers,
    ):
        whole, limited, reset_send, reset_recv = [], [], {}, {}
        for server in servers:
            slow = proxy.listen(server.address, Faults(latency=0.02, slice=1))
            whole += [
                engine.open(echo_client(slow, "sliced-echo", 2048, 1)),
                engine.open(sink_client(slow, "sliced-up", 4096, 2)),
            ]
            capped = proxy.listen(server.address, Faults(limit=6000))
            limited.append(engine.open(echo_client(capped, "limited", 65536, 3)))
            cut = proxy.listen(server.address, Faults(reset=1 << 20))
            reset_send[server] = engine.open(mode_client(cut, "blast", "reset-send"))
            cut_early = proxy.listen(server.address, Faults(reset=len(b"hold reset-recv\n") + 3))
            reset_recv[server] = engine.open(
                mode_client(cut_early, "hold", "reset-recv", payload=b"xxxxxx", trickle=0.05)
            )
        support.wait_clients(
            [*whole, *limited, *reset_send.values(), *reset_recv.values()],
            30,
            "clients through the fault proxy",
            servers,
        )
        check_clients(whole)
        check_clients(limited, {"truncated", "reset:ECONNRESET"})
        check_clients([*reset_send.values(), *reset_recv.values()], {"reset:ECONNRESET"})
        assert proxy.done["limit"] == len(servers), proxy.done
        assert proxy.done["reset"] == 2 * len(servers), proxy.done
        for server in servers:
            stats = server.settled()
            check_outcomes(stats, server.layer)
            conns = stats["conns"]
            assert conns["limited"]["outcomes"][0] in ("eof", "broken:ECONNRESET"), (
                server.layer,
                conns["limited"],
            )
            for client in (reset_send[server], reset_recv[server]):
                record = conns[client.label]
                woke = record["t_end"] - reset_time(client)
                assert woke < support.AT_ONCE, (server.layer, client.label, woke)
                assert record["outcomes"][0] in ("broken:ECONNRESET", "broken:EPIPE"), (
                    server.layer,
                    client.label,
                    record,
                )


def reset_time(client: support.Client) -> float:
    """When the proxy reset ``client``'s connection: its client saw the
    reset at once (a reset on loopback arrives in microseconds)."""
    assert client.t_end is not None
    return client.t_end
