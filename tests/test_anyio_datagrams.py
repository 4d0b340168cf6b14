"""anyio datagram sockets backed by traffic (traffic.anyio_datagrams), on asyncio and trio.

Each test runs on both backends.  Peers are the standard library's sockets
and anyio's own datagram sockets; the same code runs with either
implementation (the one-import swap).
"""

from __future__ import annotations

import os
import random
import socket
import tempfile
from typing import Any

import anyio
import pytest
from anyio.abc import SocketAttribute
from anyio_support import BACKENDS

import traffic.anyio_datagrams as tad

pytestmark = pytest.mark.anyio


@pytest.fixture(params=BACKENDS)
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    return request.param


def stdlib_peer() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(10)
    return sock


async def test_udp_with_stdlib_peer() -> None:
    async with await tad.create_udp_socket(local_host="127.0.0.1") as ours:
        assert isinstance(ours, anyio.abc.UDPSocket)
        assert ours.extra(SocketAttribute.family) == socket.AF_INET
        address = ours.extra(SocketAttribute.local_address)
        assert ours.extra(SocketAttribute.local_port) == address[1]
        with stdlib_peer() as peer:
            payloads = [os.urandom(random.randrange(1500)) for _ in range(40)]
            for payload in payloads:
                peer.sendto(payload, address)
            for payload in payloads:
                assert await ours.receive() == (payload, peer.getsockname())
            await ours.sendto(b"back", *peer.getsockname())
            await ours.send((b"again", peer.getsockname()))
            assert peer.recv(10) == b"back"
            assert peer.recv(10) == b"again"


@pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6")
async def test_ipv6_addresses_are_anyio_pairs() -> None:
    async with await tad.create_udp_socket(local_host="::1") as ours:
        port = ours.extra(SocketAttribute.local_port)
        async with await tad.create_connected_udp_socket("::1", port) as client:
            await client.send(b"six")
            data, source = await ours.receive()
            expected = client.extra(SocketAttribute.local_address)
        assert data == b"six"
        assert source == expected
        assert len(source) == 2


async def test_connected_udp_refusal_is_broken_resource_and_goes_on() -> None:
    with stdlib_peer() as gone:
        dead = gone.getsockname()
    async with await tad.create_connected_udp_socket(*dead) as ours:
        assert isinstance(ours, anyio.abc.ConnectedUDPSocket)
        assert ours.extra(SocketAttribute.remote_address) == dead
        await ours.send(b"anyone?")
        with anyio.fail_after(10), pytest.raises(anyio.BrokenResourceError) as caught:
            await ours.receive()
        assert isinstance(caught.value.__cause__, ConnectionRefusedError)


async def test_cancelled_receives_lose_nothing() -> None:
    count = 1000
    async with await tad.create_udp_socket(local_host="127.0.0.1") as ours:
        ours.extra(SocketAttribute.raw_socket).setsockopt(
            socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20
        )
        received: list[bytes] = []

        async def receive_with_random_cancels() -> None:
            rng = random.Random(3)
            while len(received) < count:
                with anyio.move_on_after(rng.choice([0, 0.0001, 0.001, 1])):
                    received.append((await ours.receive())[0])

        async with anyio.create_task_group() as group:
            group.start_soon(receive_with_random_cancels)
            with stdlib_peer() as peer:
                for i in range(count):
                    peer.sendto(i.to_bytes(4, "big"), ours.extra(SocketAttribute.local_address))
                    if i % 50 == 0:
                        await anyio.sleep(0.001)
        assert [int.from_bytes(d, "big") for d in received] == list(range(count))


async def test_unix_datagram_sockets() -> None:
    with tempfile.TemporaryDirectory() as directory:
        here = os.path.join(directory, "here")
        there = os.path.join(directory, "there")
        async with await tad.create_unix_datagram_socket(local_path=here) as server:
            assert isinstance(server, anyio.abc.UNIXDatagramSocket)
            async with await tad.create_connected_unix_datagram_socket(
                here, local_path=there
            ) as client:
                assert isinstance(client, anyio.abc.ConnectedUNIXDatagramSocket)
                await client.send(b"ping")
                assert await server.receive() == (b"ping", there)
                await server.sendto(b"pong", there)
                assert await client.receive() == b"pong"


async def test_from_socket() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    async with await tad.TrafficUDPSocket.from_socket(sock) as ours:
        assert sock.fileno() == -1  # detached: the core owns it now
        with stdlib_peer() as peer:
            peer.sendto(b"x", ours.extra(SocketAttribute.local_address))
            assert (await ours.receive())[0] == b"x"


async def test_closed_socket() -> None:
    ours = await tad.create_udp_socket(local_host="127.0.0.1")

    async def receive() -> None:
        with pytest.raises(anyio.ClosedResourceError):
            await ours.receive()

    async with anyio.create_task_group() as group:
        group.start_soon(receive)
        await anyio.wait_all_tasks_blocked()
        await ours.aclose()
    with pytest.raises(anyio.ClosedResourceError):
        await ours.sendto(b"x", "127.0.0.1", 9)
    with pytest.raises(ValueError):
        await tad.create_udp_socket()


@pytest.mark.parametrize("ours_serves", [True, False], ids=["traffic-serves", "anyio-serves"])
async def test_swap_one_import(ours_serves: bool) -> None:
    """The same echo with traffic on one side and anyio's own on the other."""
    make_server: Any = tad.create_udp_socket if ours_serves else anyio.create_udp_socket
    make_client: Any = (
        anyio.create_connected_udp_socket if ours_serves else tad.create_connected_udp_socket
    )
    async with await make_server(local_host="127.0.0.1") as server:
        port = server.extra(SocketAttribute.local_port)
        async with await make_client("127.0.0.1", port) as client:
            for i in range(20):
                await client.send(b"%d" % i)
                data, source = await server.receive()
                await server.send((data * 2, source))
                assert await client.receive() == b"%d" % i * 2
