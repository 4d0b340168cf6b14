"""The Datagrams transit: UDP over IPv4 and IPv6, AF_UNIX datagrams.

The peer on the other end is the standard library's socket, so what the
core sends is what a plain ``recvfrom`` sees and the reverse.  Every
datagram is checked for its payload, its order and its sender's address.
"""

from __future__ import annotations

import errno
import os
import socket
import tempfile
from collections.abc import Iterator

import pytest

from conftest import run_until
from traffic import Traffic, Transit, TransitError
from traffic._traffic import lib
from traffic.datagrams import (
    HEADER,
    Datagram,
    DatagramArray,
    Datagrams,
    decode_address,
    encode_address,
)

HAS_IPV6 = socket.has_ipv6
try:
    socket.socket(socket.AF_INET6, socket.SOCK_DGRAM).close()
except OSError:
    HAS_IPV6 = False

FAMILIES = [
    pytest.param(socket.AF_INET, "127.0.0.1", id="ipv4"),
    pytest.param(
        socket.AF_INET6,
        "::1",
        id="ipv6",
        marks=pytest.mark.skipif(not HAS_IPV6, reason="no IPv6 here"),
    ),
]


class Inbox:
    """Collects what an input Datagrams transit receives, re-acquiring as it exhausts."""

    def __init__(self, transit: Datagrams, count: int = 8, capacity: int = 2048) -> None:
        self.transit = transit
        self.count = count
        self.capacity = capacity
        self.datagrams: list[Datagram] = []
        self.faults: list[int] = []
        transit.acquire(DatagramArray.receiving(count, capacity))

    def __call__(self, transit: Transit) -> None:
        if transit is not self.transit:
            return
        self.datagrams += self.transit.datagrams()
        if transit.events & lib.TR_EV_FAULT:
            self.faults.append(transit.error or 0)
        if not transit.terminated and (transit.exhausted or transit.events & lib.TR_EV_FAULT):
            transit.acquire(DatagramArray.receiving(self.count, self.capacity))


@pytest.fixture
def unix_dir() -> Iterator[str]:
    with tempfile.TemporaryDirectory() as path:
        yield path


@pytest.mark.parametrize("family, host", FAMILIES)
def test_receive_from_stdlib_peer(tr: Traffic, family: int, host: str) -> None:
    (receiver, sender), address = Datagrams.bind((host, 0))
    tr.acquire(receiver)
    inbox = Inbox(receiver, count=4)
    with socket.socket(family, socket.SOCK_DGRAM) as peer:
        peer.bind((host, 0))
        payloads = [os.urandom(n) for n in (1, 0, 100, 1500, 2048)] + [b"x" * 10 for _ in range(20)]
        for payload in payloads:
            peer.sendto(payload, address)
        run_until(tr, lambda: len(inbox.datagrams) == len(payloads), inbox)
        assert [d.payload for d in inbox.datagrams] == payloads
        assert {d.address[:2] for d in inbox.datagrams} == {peer.getsockname()[:2]}
        assert not any(d.truncated for d in inbox.datagrams)
    del sender


@pytest.mark.parametrize("family, host", FAMILIES)
def test_send_to_stdlib_peer(tr: Traffic, family: int, host: str) -> None:
    (receiver, sender), address = Datagrams.bind((host, 0))
    tr.acquire(sender)
    with socket.socket(family, socket.SOCK_DGRAM) as peer:
        peer.bind((host, 0))
        target = peer.getsockname()
        payloads = [os.urandom(n % 1400) for n in range(150)]  # more than one batch
        sender.acquire(DatagramArray.sending([(p, target) for p in payloads], family))
        run_until(tr, lambda: sender.exhausted)
        peer.settimeout(10)
        for payload in payloads:
            data, source = peer.recvfrom(2048)
            assert data == payload
            assert source[:2] == address[:2]
    del receiver


def test_truncated_datagram_is_reported_with_its_real_length(tr: Traffic) -> None:
    (receiver, _), address = Datagrams.bind(("127.0.0.1", 0))
    tr.acquire(receiver)
    inbox = Inbox(receiver, count=2, capacity=16)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
        peer.sendto(b"a" * 1000, address)
        peer.sendto(b"b" * 16, address)
        run_until(tr, lambda: len(inbox.datagrams) == 2, inbox)
    cut, whole = inbox.datagrams
    assert cut.truncated and cut.payload == b"a" * 16 and cut.length == 1000
    assert not whole.truncated and whole.payload == b"b" * 16


def test_unix_datagrams_with_paths(tr: Traffic, unix_dir: str) -> None:
    here = os.path.join(unix_dir, "here")
    there = os.path.join(unix_dir, "there")
    (receiver, sender), bound = Datagrams.bind(here)
    assert bound == here and receiver.family == socket.AF_UNIX
    tr.acquire(receiver)
    tr.acquire(sender)
    inbox = Inbox(receiver)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as peer:
        peer.bind(there)
        peer.sendto(b"to traffic", here)
        run_until(tr, lambda: len(inbox.datagrams) == 1, inbox)
        assert inbox.datagrams[0] == Datagram(b"to traffic", there, 10)
        sender.acquire(DatagramArray.sending([(b"to stdlib", there)], socket.AF_UNIX))
        run_until(tr, lambda: sender.exhausted)
        peer.settimeout(10)
        assert peer.recvfrom(100) == (b"to stdlib", here)


def test_unix_datagram_socketpair_without_addresses(tr: Traffic) -> None:
    (a_in, a_out), (b_in, b_out) = Datagrams.socketpair()
    for transit in (a_in, a_out, b_in, b_out):
        tr.acquire(transit)
    inbox = Inbox(b_in)
    a_out.acquire(DatagramArray.sending([(b"one", None), (b"two", None)], socket.AF_UNIX))
    run_until(tr, lambda: len(inbox.datagrams) == 2, inbox)
    assert [d.payload for d in inbox.datagrams] == [b"one", b"two"]
    # socketpair ends are unnamed: the sender's address is the empty path.
    assert {d.address for d in inbox.datagrams} <= {"", None}


def test_connected_udp_refusal_is_a_fault_and_the_transit_goes_on(tr: Traffic) -> None:
    # A port nobody listens on: the kernel answers with ICMP port unreachable,
    # reported as ECONNREFUSED to a connected socket's next operation.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as closed:
        closed.bind(("127.0.0.1", 0))
        dead = closed.getsockname()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect(dead)
    receiver, sender = Datagrams.wrap(sock)
    tr.acquire(receiver)
    tr.acquire(sender)
    inbox = Inbox(receiver)
    sender.acquire(DatagramArray.sending([(b"anyone?", None)], socket.AF_INET))
    run_until(tr, lambda: bool(inbox.faults), inbox)
    assert inbox.faults == [errno.ECONNREFUSED]
    assert not receiver.terminated and not sender.terminated


def test_oversized_datagram_is_a_fault_after_the_ones_before_it(tr: Traffic) -> None:
    (receiver, _), address = Datagrams.bind(("127.0.0.1", 0))
    (_, sender), _ = Datagrams.bind(("127.0.0.1", 0))
    tr.acquire(receiver)
    tr.acquire(sender)
    inbox = Inbox(receiver)
    array = DatagramArray.sending(
        [(b"first", address), (bytes(70000), address), (b"third", address)], socket.AF_INET
    )
    sender.acquire(array)
    sent: list[Datagram] = []
    faults: list[int] = []

    def watch(transit: Transit) -> None:
        inbox(transit)
        if transit is sender:
            sent.extend(sender.datagrams())
            if sender.events & lib.TR_EV_FAULT:
                faults.append(sender.error or 0)

    run_until(tr, lambda: bool(faults) and len(inbox.datagrams) == 1, watch)
    assert faults == [errno.EMSGSIZE]
    assert [d.payload for d in sent] == [b"first"]
    assert [d.payload for d in inbox.datagrams] == [b"first"]
    # The transit goes on: the rest, past the refused record, is sent.
    sender.acquire(DatagramArray.sending([(array[2].payload, address)], socket.AF_INET))
    run_until(tr, lambda: len(inbox.datagrams) == 2, watch)
    assert inbox.datagrams[1].payload == b"third"
    assert not sender.terminated


@pytest.mark.parametrize(
    "code, ends", [(errno.ECONNREFUSED, False), (errno.ENOBUFS, False), (errno.EBADF, True)]
)
def test_injected_errors_fault_or_terminate(tr: Traffic, code: int, ends: bool) -> None:
    (receiver, _), _ = Datagrams.bind(("127.0.0.1", 0))
    tr.acquire(receiver)
    receiver.acquire(DatagramArray.receiving(2, 64))
    assert lib.tr_transit_inject(receiver._c, code) == 0
    seen: list[int] = []

    def watch(transit: Transit) -> None:
        if transit is receiver:
            seen.append(transit.events)

    run_until(tr, lambda: bool(seen), watch)
    assert receiver.terminated is ends
    assert receiver.error == code
    assert seen[0] & (lib.TR_EV_TERMINATE if ends else lib.TR_EV_FAULT)


def test_threaded_request_round_trip() -> None:
    tr = Traffic()
    try:
        tr.start()
        (receiver, _), address = Datagrams.bind(("127.0.0.1", 0))
        (_, sender), _ = Datagrams.bind(("127.0.0.1", 0))
        tr.acquire(receiver)
        tr.acquire(sender)
        inbox = DatagramArray.receiving(4, 256)
        outcome, error, n = tr.request(receiver, inbox)
        assert outcome == lib.TR_PENDING and n == 0
        outgoing = DatagramArray.sending([(b"ping", address), (b"pong", address)], socket.AF_INET)
        outcome, error, n = tr.request(sender, outgoing)
        assert (outcome, error, n) == (lib.TR_DONE, 0, len(outgoing.buffer))
        completions = []
        while not completions:
            run_until_readable(tr.completion_fileno())
            completions = tr.collect()
        (completion,) = completions
        assert completion.outcome == lib.TR_DONE
        received = inbox.between(0, completion.transferred)
        if len(received) == 1:  # the second may come in a request of its own
            outcome, error, n = tr.request(receiver, inbox := DatagramArray.receiving(4, 256))
            if outcome == lib.TR_PENDING:
                run_until_readable(tr.completion_fileno())
                (completion,) = tr.collect()
                n = completion.transferred
            received += inbox.between(0, n)
        assert [d.payload for d in received] == [b"ping", b"pong"]
    finally:
        tr.close()


def run_until_readable(fd: int) -> None:
    import select

    r, _, _ = select.select([fd], [], [], 10)
    assert r, "no completion within 10 s"


# Bad input


def test_not_a_datagram_socket_is_refused() -> None:
    read_fd, write_fd = os.pipe()
    try:
        with pytest.raises(TransitError) as caught:
            Datagrams.from_fd(read_fd, 1)
        assert caught.value.errno == errno.ENOTSOCK
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as stream:
            with pytest.raises(TransitError) as caught:
                Datagrams.wrap(stream)
            assert caught.value.errno == errno.EPROTOTYPE
            assert stream.fileno() >= 0  # refused: still the caller's
    finally:
        os.close(read_fd)
        os.close(write_fd)


def test_resource_must_be_a_datagram_array(tr: Traffic) -> None:
    (receiver, sender), _ = Datagrams.bind(("127.0.0.1", 0))
    tr.acquire(receiver)
    tr.acquire(sender)
    with pytest.raises(TypeError, match="DatagramArray"):
        receiver.acquire(bytearray(1024))
    damaged = DatagramArray.receiving(2, 64)
    damaged.buffer[0:4] = (10**6).to_bytes(4, "little")  # a capacity past the end
    with pytest.raises(ValueError, match="damaged"):
        receiver.acquire(damaged)
    cut = DatagramArray.receiving(2, 64)
    cut.buffer = cut.buffer[:-1]
    with pytest.raises(ValueError, match="damaged"):
        receiver.acquire(cut)
    assert receiver.resource is None


@pytest.mark.parametrize(
    "family, address, exception",
    [
        (socket.AF_INET, ("localhost", 1), ValueError),  # names are resolved above, not here
        (socket.AF_INET, ("127.0.0.1", 70000), ValueError),
        (socket.AF_INET, ("127.0.0.1",), TypeError),
        (socket.AF_INET, "/path", TypeError),
        (socket.AF_INET6, ("127.0.0.1", 1), ValueError),
        (socket.AF_UNIX, ("127.0.0.1", 1), TypeError),
        (socket.AF_UNIX, "x" * 200, ValueError),
        (socket.AF_PACKET, ("eth0", 0), ValueError),
    ],
)
def test_bad_addresses(family: int, address: object, exception: type) -> None:
    with pytest.raises(exception):
        DatagramArray.sending([(b"x", address)], family)


def test_bad_array_shapes() -> None:
    with pytest.raises(ValueError):
        DatagramArray.receiving(0)
    with pytest.raises(ValueError):
        DatagramArray.receiving(1, -1)
    with pytest.raises(TypeError):
        DatagramArray.sending([b"not a pair"], socket.AF_INET)  # type: ignore[list-item]
    with pytest.raises(TypeError):
        DatagramArray.sending([("text", None)], socket.AF_INET)


@pytest.mark.parametrize(
    "family, address",
    [
        (socket.AF_INET, ("10.1.2.3", 53)),
        (socket.AF_INET6, ("fe80::1", 443, 0, 2)),
        (socket.AF_UNIX, "/tmp/some.sock"),
        (socket.AF_UNIX, b"\0abstract"),
    ],
)
def test_addresses_round_trip(family: int, address: object) -> None:
    raw = encode_address(family, address)
    assert len(raw) <= HEADER
    assert decode_address(raw) == address


def test_record_layout_matches_the_core() -> None:
    array = DatagramArray.receiving(3, 5)
    assert len(array) == 3
    # 5 bytes of payload padded to 8, after each header.
    assert len(array.buffer) == 3 * (HEADER + 8)
    assert lib.tr_datagrams_check(bytes(array.buffer), len(array.buffer), lib.TR_INPUT) == 3
