"""Descriptors transits: SCM_RIGHTS over AF_UNIX stream sockets.

The other end is the standard library (``socket.send_fds`` /
``socket.recv_fds``) in another process, handed its socket with
``pass_fds``.  Every test also runs under ``conftest._no_leaks``: a
descriptor the core failed to close (an extra beyond the receiver's
capacity, a duplicate of a withdrawn send) fails the test.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from array import array
from collections.abc import Iterator

import pytest
import trio
import trio.testing
from trio_support import receive_after_a_wait

import traffic
from conftest import open_fds, run_until
from traffic import Descriptors, Polarity, Traffic, TransitError
from traffic.libkqueue import FDS_PER_MESSAGE

#: Bounds a hang of a subprocess, never a pass.
TIMEOUT = 60


def environment() -> dict[str, str]:
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(traffic.__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    return env


def peer(script: str, sock: socket.socket) -> subprocess.Popen[str]:
    """Run ``script`` in another Python process with ``sock`` as descriptor
    ``SOCK`` (a global of the script); the parent's copy is closed."""
    code = f"import os, socket, sys\nSOCK = {sock.fileno()}\n" + textwrap.dedent(script)
    process = subprocess.Popen(
        [sys.executable, "-c", code],
        pass_fds=[sock.fileno()],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment(),
    )
    sock.close()
    return process


def finish(process: subprocess.Popen[str]) -> str:
    out, err = process.communicate(timeout=TIMEOUT)
    assert process.returncode == 0, err
    return out


@pytest.fixture
def secret_file() -> Iterator[str]:
    with tempfile.NamedTemporaryFile("w", delete=False) as f:
        f.write("the secret")
    try:
        yield f.name
    finally:
        os.unlink(f.name)


# Synchronous cycles


def test_sync_round_trip_and_sender_keeps_its_descriptors(tr: Traffic, secret_file: str) -> None:
    (a_in, a_out), (b_in, b_out) = Descriptors.socketpair()
    for transit in (a_in, a_out, b_in, b_out):
        tr.acquire(transit)
    fd = os.open(secret_file, os.O_RDONLY)
    try:
        a_out.acquire((b"x", [fd]))
        received: list[int] = []
        data = bytearray()
        b_in.acquire((bytearray(16), array("i", bytes(4 * 4))))

        def visit(transit: traffic.Transit) -> None:
            if transit is b_in:
                data.extend(transit.transfer() or b"")
                received.extend(b_in.descriptors())

        run_until(tr, lambda: bool(received), visit)
        assert data == b"x"
        # The sender's descriptor is still its own, open.
        os.fstat(fd)
        assert os.read(fd, 3) == b"the"
    finally:
        os.close(fd)
    assert len(received) == 1
    try:
        assert os.get_inheritable(received[0]) is False
        assert os.pread(received[0], 100, 0) == b"the secret"
    finally:
        os.close(received[0])


def test_sync_output_reports_the_callers_descriptors(tr: Traffic) -> None:
    (a_in, a_out), (b_in, b_out) = Descriptors.socketpair()
    for transit in (a_in, a_out, b_in, b_out):
        tr.acquire(transit)
    r, w = os.pipe()
    try:
        a_out.acquire((b"ab", [r, w]))
        sent: list[int] = []
        run_until(
            tr, lambda: bool(sent), lambda t: sent.extend(t.descriptors()) if t is a_out else None
        )
        assert sent == [r, w]
        b_in.acquire((bytearray(8), array("i", bytes(8))))
        got: list[int] = []
        run_until(
            tr, lambda: len(got) == 2, lambda t: got.extend(t.descriptors()) if t is b_in else None
        )
        for fd in got:
            os.close(fd)
    finally:
        os.close(r)
        os.close(w)


def test_bytes_without_descriptors(tr: Traffic) -> None:
    """A Descriptors transit moves plain bytes as Octets do."""
    (a_in, a_out), (b_in, b_out) = Descriptors.socketpair()
    for transit in (a_in, a_out, b_in, b_out):
        tr.acquire(transit)
    a_out.acquire((b"hello", []))
    b_in.acquire((bytearray(5), array("i")))
    data = bytearray()
    run_until(
        tr,
        lambda: data == b"hello",
        lambda t: data.extend(t.transfer() or b"") if t is b_in else None,
    )


def test_many_descriptors_split_across_messages(tr: Traffic) -> None:
    count = FDS_PER_MESSAGE * 2 + 3
    (a_in, a_out), (b_in, b_out) = Descriptors.socketpair()
    for transit in (a_in, a_out, b_in, b_out):
        tr.acquire(transit)
    r, w = os.pipe()
    try:
        with pytest.raises(ValueError, match="data byte"):
            a_out.acquire((b"ab", [r] * count))  # needs 3 bytes
        a_out.acquire((b"abc", [r] * count))
        got: list[int] = []
        data = bytearray()

        def visit(transit: traffic.Transit) -> None:
            if transit is b_in:
                data.extend(transit.transfer() or b"")
                got.extend(b_in.descriptors())
                if transit.exhausted:
                    b_in.acquire((bytearray(3), array("i", bytes(4 * count))))

        b_in.acquire((bytearray(3), array("i", bytes(4 * count))))
        run_until(tr, lambda: len(got) == count, visit)
        assert data == b"abc"
        for fd in got:
            assert os.path.sameopenfile(fd, r)
            os.close(fd)
    finally:
        os.close(r)
        os.close(w)


# Threaded requests


def test_threaded_request_fds(secret_file: str) -> None:
    t = Traffic()
    t.start()
    try:
        (a_in, a_out), (b_in, b_out) = Descriptors.socketpair()
        for transit in (a_in, a_out, b_in, b_out):
            t.acquire(transit)
        fd = os.open(secret_file, os.O_RDONLY)
        try:
            outcome, error, sent, nfds = t.request_fds(a_out, b"z", [fd])
        finally:
            os.close(fd)
        assert (outcome, error, sent, nfds) == (traffic.libkqueue.lib.TR_DONE, 0, 1, 1)
        buffer, numbers = bytearray(4), array("i", bytes(4 * 2))
        outcome, error, count, nfds = t.request_fds(b_in, buffer, numbers)
        if outcome == traffic.libkqueue.lib.TR_PENDING:
            completions: list[traffic.Completion] = []
            while not completions:
                completions = t.collect()
            outcome, count, nfds = (
                completions[0].outcome,
                completions[0].transferred,
                completions[0].descriptors,
            )
        assert (outcome, count, nfds) == (traffic.libkqueue.lib.TR_DONE, 1, 1)
        try:
            assert os.pread(numbers[0], 100, 0) == b"the secret"
        finally:
            os.close(numbers[0])
    finally:
        t.close()


def test_dropped_receive_closes_what_arrived() -> None:
    """Descriptors received by a request nobody collects (the Traffic closes)
    are closed by the core."""
    t = Traffic()
    t.start()
    a, b = socket.socketpair()
    try:
        receiver, sender = Descriptors.wrap(b)
        t.acquire(receiver)
        t.acquire(sender)
        before = open_fds()
        outcome, _, _, _ = t.request_fds(receiver, bytearray(4), array("i", bytes(8)), inline=False)
        assert outcome == traffic.libkqueue.lib.TR_PENDING
        r, w = os.pipe()
        socket.send_fds(a, [b"q"], [r, w])
        os.close(r)
        os.close(w)
        # Wait until the core has them (the descriptor count grows by two).
        for _ in range(1000):
            if len(open_fds() - before) == 2:
                break
            time.sleep(0.005)
        assert len(open_fds() - before) == 2
    finally:
        t.close()
        a.close()


# Interop with the standard library in another process


def test_stdlib_receiver_in_another_process(secret_file: str) -> None:
    a, b = socket.socketpair()
    process = peer(
        """
        s = socket.socket(fileno=SOCK)
        msg, fds, flags, addr = socket.recv_fds(s, 100, 4)
        print(msg.decode(), len(fds), os.pread(fds[0], 100, 0).decode())
        s.sendall(b"k")
        s.close()
        """,
        b,
    )

    async def main() -> None:
        stream = traffic.TrafficStream(a)
        fd = os.open(secret_file, os.O_RDONLY)
        try:
            await traffic.send_fds(stream, b"hello", [fd])
        finally:
            os.close(fd)
        assert await stream.receive_some() == b"k"
        await stream.aclose()

    trio.run(main)
    assert finish(process).split() == ["hello", "1", "the", "secret"]


def test_stdlib_sender_in_another_process(secret_file: str) -> None:
    a, b = socket.socketpair()
    process = peer(
        f"""
        s = socket.socket(fileno=SOCK)
        fd = os.open({secret_file!r}, os.O_RDONLY)
        socket.send_fds(s, [b"from the child"], [fd, fd, fd])
        os.close(fd)
        s.close()
        """,
        b,
    )

    async def main() -> None:
        receiver, sender = Descriptors.wrap(a)
        traffic.current_traffic()  # the run's Traffic and its descriptors exist
        before = open_fds()
        data, fds = await traffic.receive_fds(receiver, 100, 2)
        assert data == b"from the child"
        # Three arrived, two fit: the third was closed by the core.
        assert len(fds) == 2
        assert open_fds() - before == set(fds)
        try:
            assert os.pread(fds[0], 100, 0) == b"the secret"
        finally:
            for fd in fds:
                os.close(fd)
        assert await traffic.receive_fds(receiver, 100, 2) == (b"", [])  # EOF
        receiver.terminate()
        sender.terminate()

    trio.run(main)
    finish(process)


@pytest.mark.skipif(not hasattr(socket, "SO_PASSCRED"), reason="Linux credentials")
def test_credentials_beside_the_descriptors_are_ignored(secret_file: str) -> None:
    """With SO_PASSCRED the kernel adds an SCM_CREDENTIALS message to each
    receive: the parser skips it and still finds the SCM_RIGHTS one."""
    a, b = socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    fd = os.open(secret_file, os.O_RDONLY)
    try:
        socket.send_fds(b, [b"c"], [fd])
    finally:
        os.close(fd)
        b.close()

    async def main() -> None:
        receiver, sender = Descriptors.wrap(a)
        data, fds = await traffic.receive_fds(receiver, 10, 4)
        assert data == b"c"
        assert len(fds) == 1
        try:
            assert os.pread(fds[0], 100, 0) == b"the secret"
        finally:
            os.close(fds[0])
        receiver.terminate()
        sender.terminate()

    trio.run(main)


def test_bytes_of_two_writers_with_credentials_all_arrive() -> None:
    """With SO_PASSCRED the kernel never glues two writers' bytes into one
    read, so a read can come back short with more queued behind it.  The
    core takes a short read for a drained socket (and waits for the next
    edge) only when it carried no control data: here the rest arrives with
    no new edge to announce it."""
    a, b = socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)

    async def main() -> None:
        stream = traffic.TrafficStream(a)
        await receive_after_a_wait(stream, b)
        # Two writers, this process and a child, while no request is
        # pending; the cycle thread takes their edge meanwhile (the sleep).
        b.send(b"a")
        subprocess.run(
            [sys.executable, "-c", f"import os; os.write({b.fileno()}, b'b')"],
            pass_fds=[b.fileno()],
            check=True,
            timeout=TIMEOUT,
        )
        time.sleep(0.1)
        got = b""
        with trio.fail_after(10):
            while len(got) < 2:
                got += await stream.receive_some()
        assert got == b"ab"
        await stream.aclose()

    try:
        trio.run(main)
    finally:
        b.close()


# trio


def test_trio_eof_and_plain_bytes() -> None:
    async def main() -> None:
        a, b = socket.socketpair()
        sa, sb = traffic.TrafficStream(a), traffic.TrafficStream(b)
        r, w = os.pipe()
        try:
            # Descriptors arriving during a plain receive are closed, not leaked.
            await traffic.send_fds(sa, b"x", [r, w])
            assert await sb.receive_some() == b"x"
        finally:
            os.close(r)
            os.close(w)
        await sa.send_eof()
        assert await traffic.receive_fds(sb, 10, 1) == (b"", [])
        await sa.aclose()
        await sb.aclose()

    trio.run(main)


def test_trio_cancelled_receive_withdraws_then_delivers() -> None:
    async def main() -> None:
        a, b = socket.socketpair()
        sa, sb = traffic.TrafficStream(a), traffic.TrafficStream(b)
        with trio.move_on_after(0.05) as scope:
            await traffic.receive_fds(sb, 10, 1)
        assert scope.cancelled_caught
        r, w = os.pipe()
        try:
            await traffic.send_fds(sa, b"y", [r])
            with trio.CancelScope() as scope:
                scope.cancel()
                with pytest.raises(trio.Cancelled):
                    await traffic.receive_fds(sb, 10, 1)  # cancelled before: nothing taken
            data, fds = await traffic.receive_fds(sb, 10, 1)
            assert data == b"y"
            assert os.path.sameopenfile(fds[0], r)
            os.close(fds[0])
        finally:
            os.close(r)
            os.close(w)
        await sa.aclose()
        await sb.aclose()

    trio.run(main)


def test_trio_cancelled_send_closes_its_duplicates() -> None:
    async def main() -> None:
        a, b = socket.socketpair()
        b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stream = traffic.TrafficStream(a)
        with trio.move_on_after(0.2):
            await stream.send_all(b"f" * (1 << 24))  # fills the socket: the peer never reads
        r, w = os.pipe()
        try:
            with trio.move_on_after(0.1) as scope:
                await traffic.send_fds(stream, b"z", [r, w])
            assert scope.cancelled_caught
            os.fstat(r)  # ours, still open
        finally:
            os.close(r)
            os.close(w)
        await stream.aclose()
        b.close()

    trio.run(main)


def test_trio_closed_while_receiving() -> None:
    async def main() -> None:
        a, b = socket.socketpair()
        stream = traffic.TrafficStream(a)

        async def close_soon() -> None:
            await trio.sleep(0.05)
            await stream.aclose()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(close_soon)
            with pytest.raises(trio.ClosedResourceError):
                await traffic.receive_fds(stream, 10, 1)
        b.close()

    trio.run(main)


def test_trio_tcp_stream_refuses_descriptors() -> None:
    async def main() -> None:
        listener = socket.create_server(("127.0.0.1", 0))
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
        listener.close()
        stream = traffic.TrafficStream(client)
        with pytest.raises(TypeError, match="AF_UNIX"):
            await traffic.send_fds(stream, b"x", [0])
        await stream.aclose()
        server.close()

    trio.run(main)


# Bad input


def test_bad_input() -> None:
    async def main() -> None:
        a, b = socket.socketpair()
        stream = traffic.TrafficStream(a)
        with pytest.raises(ValueError, match="message must not be empty"):
            await traffic.send_fds(stream, b"", [0])
        with pytest.raises(ValueError, match="fds must not be empty"):
            await traffic.send_fds(stream, b"x", [])
        with pytest.raises(TransitError) as info:
            await traffic.send_fds(stream, b"x", [-1])
        assert info.value.errno == errno.EBADF
        r, w = os.pipe()
        os.close(r)
        os.close(w)
        with pytest.raises(OSError) as info2:
            await traffic.send_fds(stream, b"x", [r])  # closed: EBADF from the duplication
        assert info2.value.errno == errno.EBADF
        for bad in (["3"], [1.5], [None], [True]):
            with pytest.raises(TypeError, match="descriptor"):
                await traffic.send_fds(stream, b"x", bad)
        with pytest.raises(ValueError, match="msglen"):
            await traffic.receive_fds(stream, 0, 1)
        with pytest.raises(ValueError, match="maxfds"):
            await traffic.receive_fds(stream, 1, 0)
        # Nothing was sent by the refused calls.
        b.setblocking(False)
        with pytest.raises(BlockingIOError):
            b.recv(1)
        await stream.aclose()
        b.close()

    trio.run(main)


def test_descriptors_transit_needs_an_af_unix_stream_socket() -> None:
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        with pytest.raises(TransitError, match="not an AF_UNIX socket") as info:
            Descriptors.wrap(tcp)
        assert info.value.errno == errno.EAFNOSUPPORT
        assert tcp.fileno() >= 0  # still the caller's
    finally:
        tcp.close()
    r, w = os.pipe()
    try:
        with pytest.raises(TransitError, match="not a socket") as info:
            Descriptors.from_fd(r, Polarity.INPUT)
        assert info.value.errno == errno.ENOTSOCK
    finally:
        os.close(r)
        os.close(w)
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        with pytest.raises(TransitError, match="SOCK_STREAM"):
            Descriptors.wrap(a)
    finally:
        a.close()
        b.close()
    with pytest.raises(TypeError, match="socketpair"):
        Descriptors.pipe()


def test_sync_resource_shape(tr: Traffic) -> None:
    (a_in, a_out), (b_in, b_out) = Descriptors.socketpair()
    for transit in (a_in, a_out, b_in, b_out):
        tr.acquire(transit)
    with pytest.raises(TypeError, match="pair"):
        a_out.acquire(b"x")
    with pytest.raises(TypeError, match="array"):
        b_in.acquire((bytearray(1), [0]))
    with pytest.raises(TypeError, match="writable"):
        b_in.acquire((b"x", array("i", bytes(4))))
    with pytest.raises(TransitError) as info:
        a_out.acquire((b"x", [-5]))
    assert info.value.errno == errno.EBADF


def test_closed_traffic_closes_unreported_descriptors() -> None:
    """Received in a cycle but never taken: closing the Traffic closes them."""
    t = Traffic()
    a, b = socket.socketpair()
    try:
        receiver, sender = Descriptors.wrap(b)
        t.acquire(receiver)
        t.acquire(sender)
        receiver.acquire((bytearray(4), array("i", bytes(4 * 4))))
        r, w = os.pipe()
        socket.send_fds(a, [b"q"], [r, w, r])
        os.close(r)
        os.close(w)
        before = open_fds()
        with t.cycle(5):
            pass  # the core received them; nobody looked
        assert len(open_fds() - before) == 3
    finally:
        t.close()
        a.close()


def test_trio_checkpoints() -> None:
    async def main() -> None:
        a, b = socket.socketpair()
        sa, sb = traffic.TrafficStream(a), traffic.TrafficStream(b)
        with trio.testing.assert_checkpoints():
            await traffic.send_fds(sa, b"x", [0])
        with trio.testing.assert_checkpoints():
            data, fds = await traffic.receive_fds(sb, 1, 1)
        assert data == b"x"
        os.close(fds[0])
        await sa.aclose()
        await sb.aclose()

    trio.run(main)


# The receiver out of descriptors: MSG_CTRUNC from a real kernel

CTRUNC_RECEIVER = """
import json, os, resource, socket, sys
import trio
import traffic

SOCK, ROOM, PASSCRED = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"


def open_fds(limit):
    # fstat, not listdir: listing /proc/self/fd needs a descriptor of its own.
    found = []
    for fd in range(limit):
        try:
            os.fstat(fd)
        except OSError:
            continue
        found.append(fd)
    return found


async def main():
    sock = socket.socket(fileno=SOCK)
    if PASSCRED:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    stream = traffic.TrafficStream(sock)
    await trio.sleep(0)  # the run's Traffic, its cycle thread and pump exist
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    before = open_fds(soft)
    # Descriptor numbers below the limit: only ROOM of them are free.
    limit = max(before) + 1 + ROOM
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    free = limit - len(before)
    report = {"free": free}
    await stream.send_all(b"r")  # ready: the parent sends now
    data, fds = await traffic.receive_fds(stream, 16, 64)
    report["first"] = [data.decode(), len(fds)]
    report["first_held"] = sorted(set(open_fds(limit)) - set(before)) == sorted(fds)
    for fd in fds:
        os.close(fd)
    report["first_closed"] = open_fds(limit) == before
    await stream.send_all(b"n")  # the next message, please
    data, fds = await traffic.receive_fds(stream, 16, 64)
    report["second"] = [data.decode(), len(fds)]
    for fd in fds:
        os.close(fd)
    report["second_closed"] = open_fds(limit) == before
    await stream.send_all(b"d")
    assert await stream.receive_some() == b""
    await stream.aclose()
    print(json.dumps(report), flush=True)


trio.run(main)
"""


@pytest.mark.skipif(not hasattr(socket, "SO_PASSCRED"), reason="Linux: RLIMIT_NOFILE, SO_PASSCRED")
@pytest.mark.parametrize("passcred", [False, True], ids=["rights", "rights+credentials"])
def test_receiver_out_of_descriptors_gets_a_truncated_message(passcred: bool) -> None:
    """A message carrying more descriptors than the receiver (RLIMIT_NOFILE
    lowered) can take: the kernel installs what fits, drops the rest and
    flags ``MSG_CTRUNC``.  traffic delivers the data and the descriptors
    that were installed (no error: the truncation is not reported), nothing
    leaks, and the next message arrives whole.  With ``SO_PASSCRED`` an
    ``SCM_CREDENTIALS`` message comes first and changes nothing."""
    sent, room = 10, 3
    a, b = socket.socketpair()
    r, w = os.pipe()
    try:
        child = subprocess.Popen(
            [sys.executable, "-c", CTRUNC_RECEIVER, str(b.fileno()), str(room), str(int(passcred))],
            pass_fds=[b.fileno()],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=environment(),
        )
        b.close()
        a.settimeout(TIMEOUT)
        try:
            assert a.recv(1) == b"r"
            # Ten copies of the pipe's write end, in one message.
            socket.send_fds(a, [b"1"], [w] * sent)
            assert a.recv(1) == b"n"
            socket.send_fds(a, [b"2"], [w, w])
            assert a.recv(1) == b"d"
            a.shutdown(socket.SHUT_WR)
            out, err = child.communicate(timeout=TIMEOUT)
        except BaseException:
            child.kill()
            child.communicate()
            raise
        assert child.returncode == 0, err
        assert "Fatal Python error" not in err and "Sanitizer" not in err, err
        report = json.loads(out)
        assert 0 < report["free"] < sent
        # The kernel installed what fit; traffic delivered exactly those.
        assert report["first"] == ["1", report["free"]]
        assert report["first_held"] and report["first_closed"]
        # The transit goes on: the next message arrives whole.
        assert report["second"] == ["2", 2]
        assert report["second_closed"]
    finally:
        a.close()
        os.close(w)
    # Every copy of the write end is gone (delivered and closed, or dropped
    # by the kernel): the read end sees EOF.
    try:
        assert os.read(r, 1) == b""
    finally:
        os.close(r)
