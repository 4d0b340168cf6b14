"""The core on paths the rest of the suite never entered.

Each test here goes where a planted bug once survived every other test
(issue 28), and proves it got there by a counter of the core's
(``tr_traffic_stats``, read by ``paths_support.stats``):

- a file transfer's pass reaching its bound (``TR_FILE_PASS``): a receive
  with more than a pass queued is not finished inline but goes on in the
  cycle thread, and in a cycle the other transits get their turn after one
  pass (``file_pass_bound``);
- a datagram receive whose batch fills every slot of ``recvmmsg``
  (``datagram_full_batch``): delivered whole, and the receive goes on to
  the next batch without waiting for an edge that will not come;
- both directions of one socket waiting at once, both armed
  (``armed_both``): each completes when the kernel allows it, whichever
  fires first;
- who ended a transit, as a request then sees it: refused as closed after
  its owner's end (also one that met a system call in flight:
  ``end_settled``), the kernel's outcome and errno again and again after
  the kernel's, closed once its owner ends it too;
- an accept terminated by its owner while the cycle thread is inside it:
  what it accepted is closed by the core (``accepted_closed``).

Races are tried at random moments until the counter says they were hit,
with a bound; what is asserted holds for every moment.
"""

from __future__ import annotations

import errno
import os
import random
import select
import socket
import struct
import time
from array import array
from collections.abc import Iterator
from pathlib import Path

import pytest
from paths_support import Drain, big_file_at, ended, queue_up, stats
from trio_support import pseudorandom

from conftest import open_fds
from traffic import FileRegion, Octets, Sockets, Traffic, TransitClosedError
from traffic._traffic import lib
from traffic.datagrams import DatagramArray, Datagrams
from traffic.libkqueue import Completion

MiB = 1 << 20
PASS = int(lib.TR_FILE_PASS)
BATCH = int(lib.TR_DG_BATCH)


@pytest.fixture
def threaded() -> Iterator[Traffic]:
    traffic = Traffic()
    try:
        traffic.start("normal")
        yield traffic
    finally:
        traffic.close()


@pytest.fixture
def idle() -> Iterator[Traffic]:
    """A threaded Traffic whose cycle thread runs at the idle policy: the
    owner's thread, woken, preempts it at once, wherever it is (with the
    normal policies, mostly when its time slice ends: at the end of the
    transfer loop the test means to interrupt)."""
    traffic = Traffic()
    try:
        traffic.start("idle")
        yield traffic
    finally:
        traffic.close()


class Completions:
    """A threaded Traffic's completions, waited for by transit token."""

    def __init__(self, traffic: Traffic) -> None:
        self.traffic = traffic
        self.waiting: dict[int, Completion] = {}

    def wait(self, token: int, timeout: float = 5.0) -> Completion:
        """The completion of the transit ``token``'s request; fails after
        ``timeout`` seconds (a request that is never woken hangs nothing)."""
        deadline = time.monotonic() + timeout
        while token not in self.waiting:
            left = deadline - time.monotonic()
            assert left > 0, f"no completion for transit {token} within {timeout} s"
            select.select([self.traffic.completion_fileno()], [], [], left)
            for completion in self.traffic.collect():
                self.waiting[completion.token] = completion
        return self.waiting.pop(token)


def reset(sock: socket.socket) -> None:
    """Close ``sock`` with a reset (SO_LINGER 0), not a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        ours = socket.create_connection(server.getsockname())
        peer, _ = server.accept()
    return ours, peer


def queued_passes(peer: socket.socket, data: bytes) -> int:
    """Queue ``data`` from ``peer``: more than two passes, or skip."""
    queued = queue_up(peer, data)
    if queued <= 2 * PASS:
        pytest.skip(
            f"only {queued} bytes could be queued on an AF_UNIX stream here (more than "
            f"{2 * PASS} needs SO_SNDBUFFORCE, or net.core.wmem_max of at least {PASS})"
        )
    return queued


# TR_FILE_PASS


def test_a_receive_with_more_than_a_pass_queued_goes_on_in_the_cycle_thread(
    threaded: Traffic, tmp_path: Path
) -> None:
    """The inline attempt (the owner's thread) stops at the pass bound and
    hands the rest to the cycle thread, which takes it a pass at a time;
    the file gets every byte, in order."""
    data = pseudorandom(10 * MiB + 4321, 2804)
    ours, peer = socket.socketpair()
    receiver, sender = Octets.wrap(ours)
    with peer:
        queued = queued_passes(peer, data)
        threaded.acquire(receiver)
        completions = Completions(threaded)
        with open(tmp_path / "in", "w+b") as f:
            outcome, _, inline = threaded.request_file(receiver, f, count=queued)
            assert outcome == lib.TR_PENDING, "a receive of more than a pass finished inline"
            assert PASS <= inline < queued, f"the inline attempt moved {inline} bytes"
            completion = completions.wait(receiver._token)
            assert (completion.outcome, completion.transferred) == (lib.TR_DONE, queued)
        assert (tmp_path / "in").read_bytes() == data[:queued]
        counts = stats(threaded)
        assert counts["file_pass_bound"] >= queued // PASS, counts
        receiver.terminate()
        sender.terminate()


def test_a_pass_at_its_bound_lets_the_other_transits_go(tmp_path: Path) -> None:
    """In a cycle a file region moves at most a pass, then the transits
    behind it transfer: the small receive, ready behind the big one, gets
    its bytes in the first cycle, after one pass of the big one (not after
    all of it), and the big one takes a cycle per pass."""
    data = pseudorandom(10 * MiB + 999, 2805)
    big_ours, big_peer = socket.socketpair()
    small_ours, small_peer = socket.socketpair()
    traffic = Traffic()
    with big_peer, small_peer:
        big, big_out = Octets.wrap(big_ours)
        small, small_out = Octets.wrap(small_ours)
        traffic.acquire(big)
        traffic.acquire(small)
        try:
            small.acquire(bytearray(64))
            with traffic.cycle(0):  # finds nothing: waits for an edge
                assert list(traffic.transfers()) == []
            queued = queued_passes(big_peer, data)
            small_peer.sendall(b"small")
            moved: list[int] = []
            got = b""
            with open(tmp_path / "in", "w+b") as f:
                region = FileRegion(f, count=queued)
                big.acquire(region)  # the work's first: the small one's edge comes after
                for _ in range(100):
                    if sum(moved) == queued:
                        break
                    with traffic.cycle(1.0):
                        this = 0
                        for transit in traffic.transfers():
                            span = transit.transfer()
                            if transit is big and span is not None:
                                this = len(span)
                            elif transit is small and span is not None:
                                got += bytes(span)
                        moved.append(this)
                    if len(moved) == 1:
                        assert got == b"small", "the small receive waited for the big one"
                assert sum(moved) == queued, moved
            assert moved[0] < queued, "the first pass took everything"
            assert max(moved) < PASS + int(lib.TR_FILE_HOLD), moved
            assert len([n for n in moved if n]) >= queued // PASS, moved
            assert (tmp_path / "in").read_bytes() == data[:queued]
            assert stats(traffic)["file_pass_bound"] >= queued // PASS
        finally:
            traffic.close()
            for transit in (big, big_out, small, small_out):
                transit.terminate()


# A full batch of datagrams


def udp_receiver() -> tuple[Datagrams, Datagrams, tuple[str, int]]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.bind(("127.0.0.1", 0))
    address = sock.getsockname()
    receiver, sender = Datagrams.wrap(sock)
    return receiver, sender, address


def send_numbered(count: int, address: tuple[str, int]) -> tuple[str, int]:
    """``count`` datagrams, each saying its number; returns the sender's address."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
        peer.bind(("127.0.0.1", 0))
        for i in range(count):
            peer.sendto(b"%05d" % i * (1 + i % 7), address)
        return peer.getsockname()


def check_numbered(datagrams: list, count: int, source: tuple[str, int]) -> None:
    assert len(datagrams) == count, f"{len(datagrams)} datagrams of {count} arrived"
    assert [d.payload for d in datagrams] == [b"%05d" % i * (1 + i % 7) for i in range(count)]
    assert {d.address for d in datagrams} == {source}
    assert not any(d.truncated for d in datagrams)


COUNT = 3 * BATCH + 5  # three full batches, and the rest


def test_full_batches_of_datagrams_in_a_cycle() -> None:
    """Every datagram queued arrives in one cycle's receive, whole and in
    order, although the kernel's batches are cut at TR_DG_BATCH: a full
    batch is no sign the queue was drained, and no edge would come for the
    rest."""
    traffic = Traffic()
    receiver, sender, address = udp_receiver()
    try:
        traffic.acquire(receiver)
        source = send_numbered(COUNT, address)
        inbox = DatagramArray.receiving(4 * BATCH, 64)
        receiver.acquire(inbox)
        got: list = []
        for _ in range(20):
            if len(got) >= COUNT:
                break
            with traffic.cycle(0.05):
                for transit in traffic.transfers():
                    if transit is receiver:
                        got += receiver.datagrams()
        check_numbered(got, COUNT, source)
        counts = stats(traffic)
        assert counts["datagram_full_batch"] >= COUNT // BATCH, counts
    finally:
        traffic.close()
        receiver.terminate()
        sender.terminate()


def test_full_batches_of_datagrams_in_one_request(threaded: Traffic) -> None:
    """A request with room for them all takes every queued datagram at
    once, batch after full batch."""
    receiver, sender, address = udp_receiver()
    try:
        threaded.acquire(receiver)
        source = send_numbered(COUNT, address)
        inbox = DatagramArray.receiving(4 * BATCH, 64)
        outcome, _, transferred = threaded.request(receiver, inbox)
        assert outcome == lib.TR_DONE
        check_numbered(inbox.between(0, transferred), COUNT, source)
        counts = stats(threaded)
        assert counts["datagram_full_batch"] >= COUNT // BATCH, counts
    finally:
        receiver.terminate()
        sender.terminate()


# Both directions of one socket waiting


@pytest.mark.parametrize("first", ["write", "read"])
def test_both_directions_waiting_are_both_armed(threaded: Traffic, first: str) -> None:
    """A send waits for room and a receive for data on one socket, both
    subscribed at once; whichever the kernel allows first completes, and
    the other still does when its turn comes (a one-shot subscription
    fires for the whole descriptor: the direction it did not report must
    be armed again)."""
    ours, peer = socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    payload = pseudorandom(MiB, 2806)
    with peer:
        receiver, sender = Octets.wrap(ours)
        threaded.acquire(receiver)
        threaded.acquire(sender)
        completions = Completions(threaded)

        def read() -> None:
            """The peer reads: the send completes."""
            got = bytearray()
            peer.settimeout(5)
            try:
                while len(got) < len(payload):
                    got += peer.recv(MiB)
            except TimeoutError:
                raise AssertionError(
                    f"the send stalled after {len(got)} of {len(payload)} bytes"
                ) from None
            assert got == payload
            assert completions.wait(sender._token).outcome == lib.TR_DONE

        def write(message: bytes, buffer: bytearray) -> None:
            """The peer writes: the receive completes."""
            peer.sendall(message)
            done = completions.wait(receiver._token)
            assert done.outcome == lib.TR_DONE
            assert bytes(buffer[: done.transferred]) == message

        try:
            for round_ in range(3):
                before = stats(threaded)["armed_both"]
                outcome, _, sent = threaded.request(sender, payload)
                assert outcome == lib.TR_PENDING and sent < len(payload)
                buffer = bytearray(64)
                assert threaded.request(receiver, buffer)[0] == lib.TR_PENDING
                assert stats(threaded)["armed_both"] > before, "not both armed at once"
                message = b"round %d" % round_
                if first == "write":
                    read()
                    write(message, buffer)
                else:
                    write(message, buffer)
                    read()
        finally:
            receiver.terminate()
            sender.terminate()


# Who ended a transit


def test_who_ended_a_transit(threaded: Traffic) -> None:
    """After the kernel's end a request gets the kernel's outcome and errno,
    every time; after the owner's it is refused as closed, also when the
    kernel had ended it first."""
    # The owner's end.
    ours, peer = tcp_pair()
    receiver, sender = Octets.wrap(ours)
    threaded.acquire(receiver)
    threaded.acquire(sender)
    sender.terminate()
    receiver.terminate()
    with pytest.raises(TransitClosedError):
        threaded.request(sender, b"x")
    with pytest.raises(TransitClosedError):
        threaded.request(receiver, bytearray(8))
    peer.close()

    # The kernel's: a reset, then the owner's too.
    ours, peer = tcp_pair()
    receiver, sender = Octets.wrap(ours)
    threaded.acquire(receiver)
    threaded.acquire(sender)
    reset(peer)
    for _ in range(3):
        assert threaded.request(receiver, bytearray(8)) == (
            lib.TR_TERMINATED,
            errno.ECONNRESET,
            0,
        )
    outcome, error, _ = threaded.request(sender, b"x" * 100)
    assert outcome == lib.TR_TERMINATED and error in (errno.EPIPE, errno.ECONNRESET)
    for _ in range(3):
        assert threaded.request(sender, b"x") == (lib.TR_TERMINATED, error, 0)
    receiver.terminate()
    sender.terminate()
    with pytest.raises(TransitClosedError):
        threaded.request(receiver, bytearray(8))
    with pytest.raises(TransitClosedError):
        threaded.request(sender, b"x")

    # The kernel's: the end of the stream.
    ours, peer = tcp_pair()
    receiver, sender = Octets.wrap(ours)
    threaded.acquire(receiver)
    peer.shutdown(socket.SHUT_WR)
    for _ in range(3):
        assert threaded.request(receiver, bytearray(8)) == (lib.TR_TERMINATED, 0, 0)
    receiver.terminate()
    with pytest.raises(TransitClosedError):
        threaded.request(receiver, bytearray(8))
    sender.terminate()
    peer.close()


def test_an_owners_end_during_a_system_call_is_the_owners(
    idle: Traffic, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The owner terminates a sending transit while the cycle thread is
    inside its sendfile loop: the thread finishes the termination when the
    call returns, the request completes as the owner's end with what went
    out (the peer got exactly that), and the next request is refused as
    closed, as after any owner's end."""
    threaded = idle
    path = big_file_at(tmp_path_factory.mktemp("paths"))
    rng = random.Random(2808)
    completions = Completions(threaded)
    tries = 0
    with Drain() as drain, open(path, "rb") as f:
        while tries < 300 and (tries < 10 or stats(threaded)["end_settled"] < 3):
            tries += 1
            receiver, sender = Octets.wrap(drain.connect())
            threaded.acquire(sender)
            assert threaded.request_file(sender, f, inline=False)[0] == lib.TR_PENDING
            time.sleep(rng.uniform(0, 0.003))
            sender.terminate()
            done = completions.wait(sender._token)
            assert done.outcome in (lib.TR_OWNER_TERMINATED, lib.TR_DONE), done
            with pytest.raises(TransitClosedError):
                threaded.request(sender, b"x")
            assert drain.received() == done.transferred
            receiver.terminate()
    counts = stats(threaded)
    print(f"{tries} tries: {counts}")
    assert counts["end_settled"] > 0, f"no termination met the sendfile loop in {tries} tries"


# An accept terminated inside its system call


def test_an_accept_terminated_inside_its_system_call(threaded: Traffic) -> None:
    """The owner terminates a listener while the cycle thread is inside
    its accept loop: the request completes as the owner's end, and the
    core closes what it had accepted for it (every client sees its end;
    no descriptor is left open in this process)."""
    rng = random.Random(2809)
    completions = Completions(threaded)

    def reached(counts: dict[str, int]) -> bool:
        # An owner's end finished by the thread of the call, and accepted
        # descriptors nobody was told of, closed by the core: only an end
        # during the accept loop leaves any (a request that completes
        # reports what it accepted).
        return counts["end_settled"] > 0 and counts["accepted_closed"] > 0

    tries = 0
    while tries < 200 and (tries < 5 or not reached(stats(threaded))):
        tries += 1
        baseline = open_fds()
        listener, address = Sockets.listen(("127.0.0.1", 0), backlog=512)
        threaded.acquire(listener)
        clients = [socket.create_connection(address) for _ in range(200)]
        slots = array("i", [-1]) * 512
        assert threaded.request(listener, slots, inline=False)[0] == lib.TR_PENDING
        if tries % 2:
            # At a random moment: before, inside or after the loop.
            end = time.perf_counter() + rng.uniform(0, 0.001)
            while time.perf_counter() < end:
                pass
        else:
            # As soon as the loop has accepted one: on a loaded machine a
            # random moment can miss the loop every time.
            waiting = len(clients) + 1
            end = time.perf_counter() + 1
            while len(os.listdir("/proc/self/fd")) <= len(baseline) + waiting + 1:
                if time.perf_counter() > end:
                    break
        listener.terminate()
        done = completions.wait(listener._token)
        if done.outcome == lib.TR_DONE:  # accepted before the end: ours to close
            for fd in slots[: done.transferred // 4]:
                os.close(fd)
        else:
            assert done.outcome == lib.TR_OWNER_TERMINATED, done
        del listener
        try:
            # Each ended: closed by the core, by us, or (never accepted)
            # reset by the listener's close.
            open_ = ended(clients).count(False)
            assert open_ == 0, f"try {tries}: {open_} accepted connections left open"
        finally:
            for client in clients:
                client.close()
        assert open_fds() == baseline
    counts = stats(threaded)
    print(f"{tries} tries: {counts}")
    assert reached(counts), f"no termination met the accept loop in {tries} tries: {counts}"
