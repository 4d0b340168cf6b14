"""trio datagram sockets (traffic.open_udp_socket and friends).

Peers are the standard library's sockets and trio's own.  Checked: every
datagram arrives once, in order, with its sender's address; every
operation is a checkpoint; cancellation never loses a received datagram;
per-datagram errors raise and the socket goes on.
"""

from __future__ import annotations

import errno
import os
import random
import socket
import tempfile

import pytest
import trio
import trio.testing

import traffic
from traffic import TrafficConnectedDatagramSocket, TrafficDatagramSocket

pytestmark = pytest.mark.trio


def stdlib_peer(family: int = socket.AF_INET, host: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    sock.settimeout(10)
    return sock


async def test_receive_and_send_with_stdlib_peer() -> None:
    async with await traffic.open_udp_socket("127.0.0.1") as ours:
        with stdlib_peer() as peer:
            address = ours.local_address
            payloads = [os.urandom(random.randrange(0, 1500)) for _ in range(100)]
            for payload in payloads:
                peer.sendto(payload, address)
            for payload in payloads:
                data, source = await ours.receive()
                assert data == payload
                assert source == peer.getsockname()
            await ours.send(b"answer", peer.getsockname())
            assert peer.recvfrom(100) == (b"answer", address)


@pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6")
async def test_ipv6() -> None:
    async with await traffic.open_udp_socket("::1") as ours:
        with stdlib_peer(socket.AF_INET6, "::1") as peer:
            peer.sendto(b"six", ours.local_address[:2])
            data, source = await ours.receive()
            assert data == b"six" and source[:2] == peer.getsockname()[:2]
            await ours.send(b"back", peer.getsockname())
            assert peer.recvfrom(10)[0] == b"back"


async def test_send_resolves_names() -> None:
    async with await traffic.open_udp_socket("127.0.0.1") as ours:
        with stdlib_peer() as peer:
            await ours.send(b"by name", ("localhost", peer.getsockname()[1]))
            assert peer.recvfrom(100)[0] == b"by name"


async def test_connected_socket_and_refusal() -> None:
    with stdlib_peer() as gone:
        dead = gone.getsockname()
    async with await traffic.open_connected_udp_socket(*dead) as ours:
        assert ours.remote_address == dead
        await ours.send(b"anyone?")
        # The ICMP refusal arrives to the next operation, as with any socket.
        with pytest.raises(ConnectionRefusedError):
            with trio.fail_after(10):
                await ours.receive()
        # The socket goes on.
        with stdlib_peer() as peer:
            async with await traffic.open_connected_udp_socket(*peer.getsockname()) as other:
                await other.send(b"fine")
                data, source = peer.recvfrom(10)
                assert data == b"fine"
                peer.sendto(b"reply", source)
                assert await other.receive() == b"reply"


async def test_oversized_send_raises_and_the_socket_goes_on() -> None:
    async with await traffic.open_udp_socket("127.0.0.1") as ours:
        with stdlib_peer() as peer:
            with pytest.raises(OSError) as caught:
                await ours.send(bytes(70000), peer.getsockname())
            assert caught.value.errno == errno.EMSGSIZE
            await ours.send(b"still here", peer.getsockname())
            assert peer.recvfrom(100)[0] == b"still here"


async def test_unix_datagram_longer_than_max_size_is_reported() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with b:
        async with TrafficConnectedDatagramSocket(a, max_size=100) as ours:
            b.send(b"x" * 1000)
            b.send(b"short")
            with pytest.raises(OSError) as caught:
                await ours.receive()
            assert caught.value.errno == errno.EMSGSIZE
            assert await ours.receive() == b"short"


async def test_unix_datagram_paths() -> None:
    with tempfile.TemporaryDirectory() as directory:
        here = os.path.join(directory, "here")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(here)
        async with TrafficDatagramSocket(sock) as ours:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as peer:
                peer.bind(os.path.join(directory, "there"))
                peer.sendto(b"hi", here)
                assert await ours.receive() == (b"hi", peer.getsockname())
                await ours.send(b"ho", peer.getsockname())
                assert peer.recv(10) == b"ho"


async def test_every_operation_is_a_checkpoint() -> None:
    async with await traffic.open_udp_socket("127.0.0.1") as ours:
        with stdlib_peer() as peer:
            for _ in range(3):
                peer.sendto(b"queued", ours.local_address)
            await trio.sleep(0.05)
            for _ in range(3):  # the first parks or not; the others come from the queue
                with trio.testing.assert_checkpoints():
                    await ours.receive()
            with trio.testing.assert_checkpoints():
                await ours.send(b"x", peer.getsockname())
            with trio.testing.assert_checkpoints():
                await ours.aclose()


async def test_cancelled_receives_lose_nothing() -> None:
    count = 2000
    async with await traffic.open_udp_socket("127.0.0.1") as ours:
        ours.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        received: list[bytes] = []

        async def receive_with_random_cancels() -> None:
            rng = random.Random(7)
            while len(received) < count:
                with trio.move_on_after(rng.choice([0, 0.0001, 0.001, 1])):
                    received.append((await ours.receive())[0])

        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive_with_random_cancels)
            with stdlib_peer() as peer:
                for i in range(count):
                    peer.sendto(i.to_bytes(4, "big"), ours.local_address)
                    if i % 50 == 0:
                        await trio.sleep(0.001)
        assert [int.from_bytes(d, "big") for d in received] == list(range(count))


async def test_one_receiver_at_a_time() -> None:
    ours = await traffic.open_udp_socket("127.0.0.1")
    async with ours, trio.open_nursery() as nursery:
        nursery.start_soon(ours.receive)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(trio.BusyResourceError):
            await ours.receive()
        nursery.cancel_scope.cancel()


async def test_close_wakes_the_parked_receiver_and_later_calls_fail() -> None:
    ours = await traffic.open_udp_socket("127.0.0.1")

    async def receive() -> None:
        with pytest.raises(trio.ClosedResourceError):
            await ours.receive()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(receive)
        await trio.testing.wait_all_tasks_blocked()
        await ours.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await ours.receive()
    with pytest.raises(trio.ClosedResourceError):
        await ours.send(b"x", ("127.0.0.1", 9))
    await ours.aclose()  # idempotent


async def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="family"):
        await traffic.open_udp_socket()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as stream, pytest.raises(TypeError):
        TrafficDatagramSocket(stream)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock, pytest.raises(ValueError):
        TrafficDatagramSocket(sock, max_size=0)
    async with await traffic.open_udp_socket("127.0.0.1") as ours:
        with pytest.raises(TypeError):
            await ours.send("text", ("127.0.0.1", 9))  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            await ours.send(b"x", None)
        with pytest.raises(TypeError):
            await ours.send(b"x", "not an address")
        with pytest.raises(ValueError):
            await ours.send(b"x", ("127.0.0.1", 70000))
        # Still fine after every refusal.
        with stdlib_peer() as peer:
            await ours.send(b"ok", peer.getsockname())
            assert peer.recv(10) == b"ok"


async def test_interop_with_trio_sockets() -> None:
    async with await traffic.open_udp_socket("127.0.0.1") as ours:
        theirs = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with theirs:
            await theirs.bind(("127.0.0.1", 0))
            for i in range(50):
                await ours.send(b"%d" % i, theirs.getsockname())
                data, source = await theirs.recvfrom(100)
                assert data == b"%d" % i
                await theirs.sendto(data + b"!", source)
                assert await ours.receive() == (data + b"!", theirs.getsockname())
