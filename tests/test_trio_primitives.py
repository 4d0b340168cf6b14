"""The trio primitives on bare transits: recv_into, send_all, accept.

Transits come from ``traffic.Octets.socketpair()`` and
``traffic.Sockets.listen()``; the first primitive used on one acquires it
into the run's Traffic, which closes it when the run ends.
"""

from __future__ import annotations

import errno
import os
import socket
from array import array

import pytest
import trio
import trio.testing
from trio_support import digest, pseudorandom

import traffic
from traffic import Octets, Sockets


async def recv_exactly(transit: Octets, size: int) -> bytes:
    out = bytearray(size)
    view = memoryview(out)
    pos = 0
    while pos < size:
        n = await traffic.recv_into(transit, view[pos:])
        if n == 0:
            raise AssertionError(f"EOF after {pos} of {size} bytes")
        pos += n
    return bytes(out)


@pytest.mark.trio
async def test_recv_into_given_buffer() -> None:
    (in1, _out1), (_in2, out2) = Octets.socketpair()
    await traffic.send_all(out2, b"hello")
    buffer = bytearray(16)
    n = await traffic.recv_into(in1, buffer)
    assert buffer[:n] == b"hello"[:n]
    assert b"hello"[:n] + await recv_exactly(in1, 5 - n) == b"hello"
    assert in1.traffic is traffic.current_traffic()
    assert out2.traffic is traffic.current_traffic()


@pytest.mark.trio
async def test_recv_into_acquired_resource() -> None:
    (in1, _out1), (_in2, out2) = Octets.socketpair()
    # The first primitive puts the transit in the run's Traffic; from then
    # on it can hold a resource, which `recv_into(transit)` fills.
    await traffic.send_all(out2, b"ab")
    assert await recv_exactly(in1, 2) == b"ab"
    resource = bytearray(8)
    in1.acquire(resource)
    assert in1.resource is resource
    await traffic.send_all(out2, b"xyz")
    n = await traffic.recv_into(in1)
    assert 1 <= n <= 3
    assert resource[:n] == b"xyz"[:n]


@pytest.mark.trio
async def test_acquire_before_first_use() -> None:
    """DESIGN: ``transit.acquire(bytearray(n))`` then ``await recv_into(transit)``."""
    (in1, _out1), (_in2, out2) = Octets.socketpair()
    in1.acquire(bytearray(8))
    await traffic.send_all(out2, b"x")
    assert await traffic.recv_into(in1) == 1


@pytest.mark.trio
async def test_recv_into_without_buffer() -> None:
    (in1, _out1), _ = Octets.socketpair()
    with pytest.raises(ValueError, match="acquire"):
        await traffic.recv_into(in1)


@pytest.mark.trio
async def test_recv_into_read_only_buffer() -> None:
    (in1, _out1), _ = Octets.socketpair()
    with pytest.raises(TypeError):
        await traffic.recv_into(in1, b"read-only")
    with pytest.raises(TypeError):
        await traffic.recv_into(in1, memoryview(bytearray(4)).toreadonly())
    with pytest.raises(TypeError):
        await traffic.recv_into(in1, "text")  # type: ignore[arg-type]


@pytest.mark.trio
async def test_wrong_polarity() -> None:
    (in1, out1), _ = Octets.socketpair()
    with pytest.raises(ValueError, match="input"):
        await traffic.recv_into(out1, bytearray(4))
    with pytest.raises(ValueError, match="output"):
        await traffic.send_all(in1, b"x")


@pytest.mark.trio
async def test_recv_into_non_byte_buffers() -> None:
    (in1, _out1), (_in2, out2) = Octets.socketpair()
    ints = array("i", [0, 0])
    payload = array("i", [7, -8]).tobytes()
    await traffic.send_all(out2, payload)
    n = await traffic.recv_into(in1, ints)
    assert ints.tobytes()[:n] == payload[:n]
    strided = memoryview(bytearray(8))[::2]
    with pytest.raises(BufferError):
        await traffic.recv_into(in1, strided)


@pytest.mark.trio
async def test_recv_into_empty_buffer() -> None:
    (in1, _out1), (_in2, _out2) = Octets.socketpair()
    with trio.testing.assert_checkpoints():
        assert await traffic.recv_into(in1, bytearray(0)) == 0


@pytest.mark.trio
@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
async def test_send_all_kinds(kind: type) -> None:
    (_in1, out1), (in2, _out2) = Octets.socketpair()
    data = pseudorandom(100_000, seed=21)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(traffic.send_all, out1, kind(data))
        assert await recv_exactly(in2, len(data)) == data


@pytest.mark.trio
async def test_send_all_16mib_memoryview() -> None:
    (_in1, out1), (in2, _out2) = Octets.socketpair()
    data = bytearray(pseudorandom(16 << 20, seed=22))
    received: list[bytes] = []

    async def receive() -> None:
        received.append(await recv_exactly(in2, len(data)))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(receive)
        await traffic.send_all(out1, memoryview(data))
    assert digest(received[0]) == digest(data)


@pytest.mark.trio
async def test_send_all_empty() -> None:
    (_in1, out1), _ = Octets.socketpair()
    with trio.testing.assert_checkpoints():
        await traffic.send_all(out1, b"")


@pytest.mark.trio
async def test_recv_into_eof() -> None:
    (in1, out1), (in2, out2) = Octets.socketpair()
    await traffic.send_all(out2, b"last")
    out2.terminate()  # shuts down that direction: EOF after the data
    assert await recv_exactly(in1, 4) == b"last"
    assert await traffic.recv_into(in1, bytearray(4)) == 0
    assert await traffic.recv_into(in1, bytearray(4)) == 0  # EOF stays EOF
    # The other direction is intact.
    await traffic.send_all(out1, b"back")
    assert await recv_exactly(in2, 4) == b"back"


@pytest.mark.trio
async def test_terminated_transits_are_closed() -> None:
    (in1, out1), (_in2, _out2) = Octets.socketpair()
    in1.terminate()
    with pytest.raises(trio.ClosedResourceError):
        await traffic.recv_into(in1, bytearray(4))
    out1.terminate()
    with pytest.raises(trio.ClosedResourceError):
        await traffic.send_all(out1, b"x")


@pytest.mark.trio
async def test_terminated_after_eof_is_closed() -> None:
    """The owner's terminate() after EOF: the transit is closed, as after
    any other terminate()."""
    (in1, _out1), (_in2, out2) = Octets.socketpair()
    out2.terminate()
    assert await traffic.recv_into(in1, bytearray(4)) == 0
    in1.terminate()
    with pytest.raises(trio.ClosedResourceError):
        await traffic.recv_into(in1, bytearray(4))


@pytest.mark.trio
async def test_send_all_broken() -> None:
    (_in1, out1), (in2, out2) = Octets.socketpair()
    in2.terminate()
    out2.terminate()  # the peer's socket is closed
    with pytest.raises(trio.BrokenResourceError) as caught:
        for _ in range(1000):
            await traffic.send_all(out1, b"x" * 4096)
    assert isinstance(caught.value.__cause__, OSError)
    assert caught.value.__cause__.errno in (errno.EPIPE, errno.ECONNRESET)


@pytest.mark.trio
async def test_recv_into_reset() -> None:
    """A TCP reset reaches the receiver as BrokenResourceError from ECONNRESET."""
    listener, address = Sockets.listen(("127.0.0.1", 0))
    client = socket.create_connection(address)
    try:
        fds = await traffic.accept(listener)
        assert len(fds) == 1
        receiver, sender = Octets.wrap(socket.socket(fileno=fds[0]))
        # Unread data at close makes the kernel send a reset.
        await traffic.send_all(sender, b"unread")
        while not client.recv(1, socket.MSG_PEEK):
            pass
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    finally:
        client.close()
    with pytest.raises(trio.BrokenResourceError) as caught:
        while await traffic.recv_into(receiver, bytearray(16)):
            pass
    assert isinstance(caught.value.__cause__, OSError)
    assert caught.value.__cause__.errno == errno.ECONNRESET


@pytest.mark.trio
async def test_two_receivers_busy() -> None:
    (in1, _out1), (_in2, out2) = Octets.socketpair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(traffic.recv_into, in1, bytearray(4))
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(trio.BusyResourceError):
            await traffic.recv_into(in1, bytearray(4))
        nursery.cancel_scope.cancel()
    # The withdrawn receive left nothing behind.
    await traffic.send_all(out2, b"ok")
    assert await recv_exactly(in1, 2) == b"ok"


@pytest.mark.trio
async def test_cancelled_recv_into_withdraws() -> None:
    (in1, _out1), (_in2, out2) = Octets.socketpair()
    buffer = bytearray(4)
    with trio.CancelScope() as scope:

        async def cancel_when_parked() -> None:
            await trio.testing.wait_all_tasks_blocked()
            scope.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(cancel_when_parked)
            await traffic.recv_into(in1, buffer)
    assert scope.cancelled_caught
    await traffic.send_all(out2, b"next")
    assert await recv_exactly(in1, 4) == b"next"
    assert buffer == bytes(4)  # the withdrawn request never wrote


# accept


def connect_clients(address: tuple[str, int], count: int) -> list[socket.socket]:
    return [socket.create_connection(address) for _ in range(count)]


@pytest.mark.trio
async def test_accept_returns_descriptors() -> None:
    listener, address = Sockets.listen(("127.0.0.1", 0))
    clients = connect_clients(address, 5)
    try:
        accepted: list[int] = []
        while len(accepted) < 5:
            fds = await traffic.accept(listener)
            assert fds
            accepted += fds
        assert len(accepted) == 5
        peers = set()
        for fd in accepted:
            sock = socket.socket(fileno=fd)
            try:
                assert not os.get_blocking(fd)
                assert os.get_inheritable(fd) is False
                peers.add(sock.getpeername())
            finally:
                sock.close()
        assert peers == {client.getsockname() for client in clients}
    finally:
        for client in clients:
            client.close()


@pytest.mark.trio
async def test_accept_parks_until_a_connection() -> None:
    listener, address = Sockets.listen(("127.0.0.1", 0))
    accepted: list[int] = []

    async def accept() -> None:
        with trio.testing.assert_checkpoints():
            accepted.extend(await traffic.accept(listener))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(accept)
        await trio.testing.wait_all_tasks_blocked()
        client = socket.create_connection(address)
    try:
        assert len(accepted) == 1
    finally:
        client.close()
        for fd in accepted:
            os.close(fd)


@pytest.mark.trio
async def test_accept_cancelled_and_closed() -> None:
    listener, address = Sockets.listen(("127.0.0.1", 0))
    with trio.move_on_after(0) as scope:
        await traffic.accept(listener)
    assert scope.cancelled_caught
    async with trio.open_nursery() as nursery:
        nursery.start_soon(traffic.accept, listener)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    # Withdrawn: a connection made now is accepted by the next call.
    client = socket.create_connection(address)
    try:
        fds = await traffic.accept(listener)
        for fd in fds:
            os.close(fd)
        assert len(fds) == 1
    finally:
        client.close()
    listener.terminate()
    with pytest.raises(trio.ClosedResourceError):
        await traffic.accept(listener)


@pytest.mark.trio
async def test_accept_parked_then_terminated() -> None:
    listener, _ = Sockets.listen(("127.0.0.1", 0))
    results: list[BaseException] = []

    async def accept() -> None:
        try:
            await traffic.accept(listener)
        except BaseException as exc:
            results.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(accept)
        await trio.testing.wait_all_tasks_blocked()
        listener.terminate()
    assert len(results) == 1
    assert isinstance(results[0], trio.ClosedResourceError)


# Checkpoints


@pytest.mark.trio
async def test_primitive_checkpoints() -> None:
    (in1, out1), (in2, out2) = Octets.socketpair()
    with trio.testing.assert_checkpoints():
        await traffic.send_all(out1, b"data")  # inline
    await trio.testing.wait_all_tasks_blocked()
    with trio.testing.assert_checkpoints():
        assert await recv_exactly(in2, 4) == b"data"  # data ready

    async def parked() -> None:
        with trio.testing.assert_checkpoints():
            assert await recv_exactly(in1, 4) == b"late"

    async with trio.open_nursery() as nursery:
        nursery.start_soon(parked)
        await trio.testing.wait_all_tasks_blocked()
        await traffic.send_all(out2, b"late")

    listener, address = Sockets.listen(("127.0.0.1", 0))
    client = socket.create_connection(address)
    try:
        with trio.testing.assert_checkpoints():
            fds = await traffic.accept(listener)  # pending already
        for fd in fds:
            os.close(fd)
    finally:
        client.close()


@pytest.mark.trio
async def test_pending_cancel_is_honoured_before_transferring() -> None:
    (in1, out1), (_in2, out2) = Octets.socketpair()
    await traffic.send_all(out2, b"keep")
    buffer = bytearray(4)
    with trio.CancelScope() as scope:
        scope.cancel()
        await traffic.recv_into(in1, buffer)
    assert scope.cancelled_caught
    assert buffer == bytes(4)
    with trio.CancelScope() as scope:
        scope.cancel()
        await traffic.send_all(out1, b"never")
    assert scope.cancelled_caught
    assert await recv_exactly(in1, 4) == b"keep"


# Ownership across runs and Traffics


def test_transit_of_an_ended_run() -> None:
    (in1, out1), (in2, out2) = Octets.socketpair()

    async def first() -> None:
        await traffic.send_all(out2, b"x")
        assert await recv_exactly(in1, 1) == b"x"

    async def second() -> None:
        with pytest.raises(trio.ClosedResourceError):
            await traffic.recv_into(in1, bytearray(1))

    trio.run(first)
    trio.run(second)
    in2.terminate()
    out1.terminate()


@pytest.mark.trio
async def test_transit_of_another_traffic() -> None:
    other = traffic.Traffic()
    try:
        (in1, _out1), (_in2, _out2) = Octets.socketpair()
        other.acquire(in1)
        with pytest.raises(RuntimeError, match="another Traffic"):
            await traffic.recv_into(in1, bytearray(1))
    finally:
        other.close()
