"""trio on top of traffic: completed transfers delivered to trio tasks.

How a transfer reaches a task
-----------------------------
Each trio run has one threaded :class:`~traffic.libkqueue.Traffic`, started
lazily, whose ``traffic-cycle`` thread waits on the kernel and performs the
transfers.  A task that wants to transfer:

1. checks for cancellation (``checkpoint_if_cancelled``);
2. asks the core for the transfer, which first tries it *inline*, in the
   task's own thread, without blocking.  If that finished the job, the task
   takes a ``cancel_shielded_checkpoint`` and returns: trio's checkpoint
   rule holds and no other thread was involved;
3. otherwise the request stays in the core, and the task parks with
   ``wait_task_rescheduled`` until the cycle thread has performed it.

How the completion comes back (an instrument after each of trio's I/O
waits, and a system task that wakes a sleeping trio) is
:mod:`traffic._trio_parking`, shared with the anyio layer on trio; how a
request enters the core is :mod:`traffic._requests`.

A parked ``receive_some`` holds no buffer: it asks the core to allocate the
memory when data arrives, and the bytes come back with the completion.  Ten
thousand idle connections cost no receive buffers.

Cancellation
------------
A parked task's abort function withdraws its request from the core.  That
succeeds in every state except while the cycle thread is inside the system
call for it: then the abort answers ``Abort.FAILED`` and the completion
arrives promptly (the core finishes a withdrawn request as soon as its
system call returns, without waiting on the peer), carrying the data, which
is not lost: the receive returns it and the cancellation is delivered at the
task's next checkpoint.  A cancelled :func:`send_all` may have sent part of
its data, as trio's own ``SocketStream.send_all``; the stream is then in an
unknown state, and the right thing is to close it.

Errors cross once: the core's refusals map to trio's exceptions in one
table (``_REFUSALS``), and a completion's outcome in one place per kind of
operation: a transit its owner terminated becomes
``trio.ClosedResourceError``; a transit the kernel terminated with an errno
becomes ``trio.BrokenResourceError`` chained to the ``OSError``.

Descriptors
-----------
:func:`send_fds` and :func:`receive_fds` pass descriptors over AF_UNIX
stream sockets, with anyio's ``UNIXSocketStream`` signatures.  They take a
:class:`~traffic.libkqueue.Descriptors` transit or a :class:`TrafficStream`.
A kernel point carries at most one transit per polarity, so an AF_UNIX
``TrafficStream`` is made of a Descriptors pair from the start and uses it
for everything: bytes travel with zero descriptors (descriptors that arrive
during a ``receive_some`` are closed, never leaked), and ``send_fds`` /
``receive_fds`` use the same transits under the stream's send and receive
guards.  Other streams (TCP) keep an Octets pair and refuse descriptors.
Cancellation follows the rule above: a withdrawn request sent or received
nothing; one whose system call already happened returns its result, and
the received descriptors are the caller's.

Lifetime
--------
When the run ends the pump is cancelled last (system tasks outlive the main
task), and closes the Traffic: the cycle thread is joined and every
descriptor the run's transits own is closed.  ``trio.run`` can be called
any number of times; each run gets its own Traffic.
"""

from __future__ import annotations

import errno
import os
import socket as _stdlib_socket
from array import array
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

import trio

from . import _files, _trio_parking
from ._requests import (
    DONE,
    FAULT,
    TERMINATED,
    Refusal,
    Refusals,
    Result,
    bad_descriptor,
    check_buffer,
    os_error,
    protected,
)
from ._sockets import (
    ACCEPT_BACKOFF,
    ACCEPT_BATCH,
    DEFAULT_RECEIVE_SIZE,
    MAX_RECEIVE_FDS,
    AcceptQueue,
    Guard,
    SocketView,
    accept_backoff,
    claimed,
    set_nodelay,
    socket_identity,
    wants_nodelay,
)
from ._trio_parking import (
    Delivery,
    Parked,
    cancel_shielded_checkpoint,
    checkpoint_if_cancelled,
    transfer,
    transfer_file,
    transfer_pinned,
    wait_task_rescheduled,
)
from .errors import TransitClosedError
from .libkqueue import (
    Descriptors,
    Octets,
    Polarity,
    Sockets,
    Traffic,
    Transit,
    check_descriptor_message,
    check_port,
    descriptor_array,
)

__all__ = [
    "ACCEPT_BATCH",
    "DEFAULT_RECEIVE_SIZE",
    "MAX_RECEIVE_FDS",
    "SocketView",
    "TrafficListener",
    "TrafficStream",
    "accept",
    "current_traffic",
    "open_tcp_listeners",
    "open_tcp_stream",
    "open_unix_listener",
    "open_unix_stream",
    "receive_fds",
    "receive_file",
    "recv_into",
    "send_all",
    "send_fds",
    "send_file",
    "serve_listeners",
    "serve_tcp",
    "serve_unix",
]

#: Scheduling of each run's cycle thread (see ``Traffic.start``): None
#: takes ``$TRAFFIC_CYCLE_POLICY``, else ``"batch"``.  Set it before the run;
#: it applies to the anyio layer's streams on trio too (they share the run's
#: Traffic).
CYCLE_POLICY: str | None = None


def _cycle_policy() -> str | None:
    return CYCLE_POLICY


_trio_parking.policy = _cycle_policy

# The core's refusals of a request, as trio's exceptions (see _requests).
_REFUSALS: Refusals = {
    Refusal.TERMINATED: lambda _: trio.ClosedResourceError("the transit is terminated"),
    Refusal.BUSY: lambda _: trio.BusyResourceError(
        "another task is already transferring on this transit"
    ),
    Refusal.BAD_DESCRIPTOR: bad_descriptor,
    Refusal.OS_ERROR: os_error,
}


def _delivery() -> Delivery:
    """The run's delivery (:func:`traffic._trio_parking.delivery`)."""
    return _trio_parking.delivery()


def current_traffic() -> Traffic:
    """The current trio run's Traffic (threaded), started on first use."""
    return _delivery().traffic


def _in_run(transit: Transit) -> Delivery:
    """The delivery for ``transit``, acquiring it into this run's Traffic if needed.

    Raises ``trio.ClosedResourceError`` for a terminated transit or one of
    an ended run, ``RuntimeError`` for one in another Traffic.
    """
    delivery = _delivery()
    traffic = transit.traffic
    if traffic is None:
        try:
            delivery.traffic.acquire(transit)
        except TransitClosedError:
            # Terminated before it ever was in traffic: closed, like any
            # terminated transit (the core's error crosses once, here).
            raise trio.ClosedResourceError("the transit is terminated") from None
    elif traffic is not delivery.traffic:
        if traffic.closed:
            raise trio.ClosedResourceError("the transit belongs to a trio run that has ended")
        raise RuntimeError("the transit is in another Traffic than this trio run's")
    return delivery


# What a completion means, once per kind of operation.


def _broken(error: int, doing: str) -> trio.BrokenResourceError:
    exc = trio.BrokenResourceError(f"{doing}: {os.strerror(error)}")
    exc.__cause__ = OSError(error, os.strerror(error))
    return exc


def _received(done: Result, doing: str = "receive") -> int:
    """The bytes a receive brought (0 at EOF), or the exception it ended in."""
    _, outcome, error, transferred, _, _ = done
    if outcome == DONE:
        return transferred
    if outcome == TERMINATED:
        if error == 0:
            return 0  # EOF
        raise _broken(error, doing)
    raise trio.ClosedResourceError("the transit was terminated while receiving")


def _sent(done: Result) -> None:
    """Nothing for a send that went out whole; else the exception it ended in."""
    _, outcome, error, _, _, _ = done
    if outcome == DONE:
        return
    if outcome == TERMINATED:
        raise _broken(error or errno.EPIPE, "send")
    raise trio.ClosedResourceError("the transit was terminated while sending")


def _accepted(done: Result) -> int:
    """The bytes of descriptors an accept brought; else the exception it
    ended in."""
    _, outcome, error, transferred, _, _ = done
    if outcome == DONE:
        return transferred
    if outcome == FAULT:
        raise OSError(error, f"accept: {os.strerror(error)}")
    if outcome == TERMINATED:
        raise _broken(error or errno.EINVAL, "accept")
    raise trio.ClosedResourceError("the listener was closed while accepting")


# Primitive operations


@protected
async def recv_into(transit: Octets, buffer: Any = None) -> int:
    """Receive into ``buffer`` (or the transit's acquired resource); return the
    number of bytes received, 0 at EOF.

    A checkpoint.  Raises ``trio.ClosedResourceError`` if the transit is
    terminated by its owner, ``trio.BrokenResourceError`` (from the
    ``OSError``) if the kernel reported an error, ``trio.BusyResourceError``
    if another task is receiving on it.  Cancelled, it either received
    nothing, or returns what it received (the cancellation is then raised at
    the next checkpoint): no data is lost.

    Raises ``TypeError`` for a ``transit`` that is not an
    :class:`~traffic.libkqueue.Octets` (or Descriptors) transit and for a
    read-only or non-buffer ``buffer``, ``ValueError`` for an output
    transit.  A transit still in an ended run's Traffic raises
    ``trio.ClosedResourceError``.
    """
    _expect(transit, Octets, "recv_into")
    if buffer is None:
        buffer = transit.resource
        if buffer is None:
            raise ValueError(
                "no buffer given and none acquired: transit.acquire(bytearray(n)) first"
            )
    if transit.polarity != Polarity.INPUT:
        raise ValueError("recv_into() needs an input transit")
    size = check_buffer(buffer, writable=True)
    delivery = _in_run(transit)
    if size == 0:
        await trio.lowlevel.checkpoint()
        return 0
    return _received(await transfer(delivery, transit, buffer, True, _REFUSALS))


@protected
async def send_all(transit: Octets, data: Any) -> None:
    """Send all of ``data`` (bytes, bytearray, memoryview: not copied).

    A checkpoint.  Raises ``trio.ClosedResourceError`` if the transit is
    terminated by its owner, ``trio.BrokenResourceError`` (from the
    ``OSError``) if the peer is gone.  Cancelled, it may have sent part of
    the data (as trio's ``send_all``); the stream should then be closed.
    ``TypeError`` for a ``transit`` that is not an Octets (or Descriptors)
    transit or ``data`` that is not bytes-like, ``ValueError`` for an input
    transit.
    """
    _expect(transit, Octets, "send_all")
    if transit.polarity != Polarity.OUTPUT:
        raise ValueError("send_all() needs an output transit")
    check_buffer(data, writable=False)
    delivery = _in_run(transit)
    _sent(await transfer(delivery, transit, data, False, _REFUSALS))


@protected
async def accept(transit: Sockets) -> list[int]:
    """Accept at least one connection; return the new descriptors, which the
    caller owns (non-blocking, close-on-exec).

    A checkpoint.  Raises ``OSError`` with EMFILE, ENFILE, ENOBUFS or ENOMEM
    when the process or system is out of resources: the listener is intact,
    back off and call again (:func:`serve_tcp` sleeps 100 ms, as trio's).
    ``trio.ClosedResourceError`` once the transit is terminated,
    ``TypeError`` for a transit that is not a
    :class:`~traffic.libkqueue.Sockets` transit.
    """
    _expect(transit, Sockets, "accept")
    delivery = _in_run(transit)
    descriptors = array("i", bytes(4 * ACCEPT_BATCH))
    transferred = _accepted(await transfer(delivery, transit, descriptors, True, _REFUSALS))
    return descriptors[: transferred // 4].tolist()


def _expect(transit: object, kind: type[Transit], doing: str) -> None:
    """``TypeError`` unless ``transit`` is a ``kind`` transit."""
    if not isinstance(transit, kind):
        name = kind.__name__
        article = "an" if name[0] in "AEIOU" else "a"
        raise TypeError(f"{doing}() needs {article} {name} transit, not {type(transit).__name__}")


def _descriptor_transits(target: Any) -> tuple[Descriptors, Descriptors | None, Any]:
    """The Descriptors transit(s) of a stream or a transit: (input or output
    transit, its sibling if known, the stream or None)."""
    if isinstance(target, TrafficStream):
        if not isinstance(target._receiver, Descriptors):
            raise TypeError(
                "descriptors travel over AF_UNIX sockets: this TrafficStream is "
                f"{_stdlib_socket.AddressFamily(target.socket.family).name}"
            )
        return target._receiver, target._sender, target  # type: ignore[return-value]
    if isinstance(target, Descriptors):
        return target, None, None
    raise TypeError(
        f"expected a TrafficStream or a Descriptors transit, not {type(target).__name__}"
    )


@protected
async def send_fds(target: Any, data: Any, fds: Any) -> None:
    """Send ``data`` with the descriptors ``fds`` over an AF_UNIX stream
    (a :class:`TrafficStream` or an output
    :class:`~traffic.libkqueue.Descriptors` transit), as anyio's
    ``UNIXSocketStream.send_fds``.

    ``fds`` holds ints or objects with ``fileno()``; they are duplicated
    before anything is sent, so the caller's descriptors stay open (close
    them when you like).  At most :data:`~traffic.libkqueue.FDS_PER_MESSAGE`
    descriptors travel per message and each message needs a byte of
    ``data``.  A checkpoint.  Raises ``ValueError`` for empty ``data`` or
    ``fds`` (as anyio), ``TypeError`` for an entry that is not a descriptor,
    ``OSError(EBADF)`` for one that is not open, and what :func:`send_all`
    raises.  Cancelled, it either sent nothing (the duplicates are closed)
    or completes.
    """
    transit, sibling, stream = _descriptor_transits(target)
    if stream is not None:
        transit = sibling  # type: ignore[assignment]
    if transit.polarity != Polarity.OUTPUT:
        raise ValueError("send_fds() needs an output Descriptors transit")
    size = check_buffer(data, writable=False)
    if size == 0:
        raise ValueError("message must not be empty")
    numbers = descriptor_array(fds)
    if len(numbers) == 0:
        raise ValueError("fds must not be empty")
    check_descriptor_message(size, len(numbers))
    if stream is not None:
        with claimed(stream, "_sending", _busy_send):
            if stream._closed:
                raise trio.ClosedResourceError("the stream is closed")
            done = await transfer(stream._delivery, transit, data, False, _REFUSALS, numbers)
    else:
        done = await transfer(_in_run(transit), transit, data, False, _REFUSALS, numbers)
    _sent(done)


@protected
async def receive_fds(target: Any, msglen: int, maxfds: int) -> tuple[bytes, list[int]]:
    """Receive up to ``msglen`` bytes and up to ``maxfds`` descriptors over an
    AF_UNIX stream (a :class:`TrafficStream` or an input
    :class:`~traffic.libkqueue.Descriptors` transit), as anyio's
    ``UNIXSocketStream.receive_fds``: ``(data, descriptors)``.

    The descriptors (close-on-exec) are the caller's to close; more than
    ``maxfds`` arriving are closed, never leaked.  At EOF it returns
    ``(b"", [])`` (trio's ``receive_some`` convention).  ``msglen`` must be
    at least 1: descriptors always travel with a byte (anyio allows 0).  A
    checkpoint.  Cancelled, it either received nothing, or returns what it
    received (the cancellation is raised at the next checkpoint).  Raises
    ``trio.ClosedResourceError`` if the stream is closed meanwhile (what
    arrived is then closed).  ``msglen`` is clamped to 64 KiB and
    ``maxfds`` to :data:`MAX_RECEIVE_FDS` (what does not fit waits in the
    kernel for the next call).
    """
    if not isinstance(msglen, int) or msglen < 1:
        raise ValueError("msglen must be a positive integer (descriptors travel with a byte)")
    if not isinstance(maxfds, int) or maxfds < 1:
        raise ValueError("maxfds must be a positive integer")
    msglen = min(msglen, DEFAULT_RECEIVE_SIZE)
    maxfds = min(maxfds, MAX_RECEIVE_FDS)
    transit, _, stream = _descriptor_transits(target)
    if transit.polarity != Polarity.INPUT:
        raise ValueError("receive_fds() needs an input Descriptors transit")
    buffer = bytearray(msglen)
    numbers = array("i", bytes(4 * maxfds))
    if stream is not None:
        with claimed(stream, "_receiving", _busy_receive):
            if stream._closed:
                raise trio.ClosedResourceError("the stream is closed")
            done = await transfer(stream._delivery, transit, buffer, True, _REFUSALS, numbers)
            if stream._closed:
                _, outcome, _, _, _, descriptors = done
                if outcome == DONE:
                    for fd in numbers[:descriptors]:
                        os.close(fd)
                raise trio.ClosedResourceError("the stream was closed while receiving")
    else:
        done = await transfer(_in_run(transit), transit, buffer, True, _REFUSALS, numbers)
    _, outcome, _, transferred, _, descriptors = done
    if outcome == DONE:
        return bytes(buffer[:transferred]), numbers[:descriptors].tolist()
    _received(done)
    return b"", []


# Files


def _file_transits(target: Any, doing: str, polarity: Polarity) -> tuple[Octets, Any]:
    """The stream transit of ``target`` for ``polarity`` (a TrafficStream's
    sender or receiver, or an Octets/Descriptors transit), and the stream or None."""
    if isinstance(target, TrafficStream):
        transit = target._sender if polarity == Polarity.OUTPUT else target._receiver
        return transit, target
    if isinstance(target, Octets):
        if target.polarity != polarity:
            direction = "an output" if polarity == Polarity.OUTPUT else "an input"
            raise ValueError(f"{doing}() needs {direction} transit")
        return target, None
    raise TypeError(
        f"{doing}() needs a TrafficStream or an Octets transit, not {type(target).__name__}"
    )


async def _transfer_region(
    delivery: Delivery, transit: Octets, region: _files.Region, sending: bool
) -> int:
    """Move the region and say how much moved; the file's position is
    settled after what moved in every outcome, cancellation included."""
    try:
        if region.count == 0:
            await trio.lowlevel.checkpoint()  # nothing left to send
            return 0
        done = await transfer_file(delivery, transit, region, _REFUSALS)
        region.moved = done[3]  # the bytes moved
    finally:
        region.settle()
    return _files.conclude(
        done,
        region,
        sending,
        lambda error: _broken(error, "send" if sending else "receive"),
        lambda: trio.ClosedResourceError("the transit was terminated during the transfer"),
    )


@protected
async def send_file(
    target: Any, file: Any, *, offset: int | None = None, count: int | None = None
) -> int:
    """Send ``count`` bytes of ``file`` from ``offset`` over a stream (a
    :class:`TrafficStream` or an output Octets transit); return the bytes
    sent, which is ``count``.  The core sends them itself (``sendfile(2)``
    where the system has it): they never enter Python.

    ``file`` is a binary file object open for reading (also one wrapped by
    ``trio.wrap_file`` or ``anyio``), or a descriptor; it must be a
    regular file.  ``offset`` None starts at the file's position
    (``tell()``); ``count`` None sends to the end of the file as it is
    now.  Afterwards, in every outcome (cancellation and errors too), the
    file's position is just after the last byte sent: ``offset + sent``.

    A checkpoint.  Refused before anything is sent: ``ValueError`` for a
    negative ``offset``, ``count < 1`` or a region past the end of the
    file, and for a file that is not a regular one (``IsADirectoryError``
    for a directory); ``TypeError`` for a text file; ``ValueError`` for a
    closed one; ``io.UnsupportedOperation`` for one not open for reading.
    During the transfer: :class:`~traffic.errors.FileEndedError` (with
    ``sent``) if the file was truncated, ``OSError`` for a failure to read
    the file (the stream is intact), and what :meth:`TrafficStream.send_all`
    raises for the stream.  TLS streams are not supported: their bytes
    must be encrypted in Python.
    """
    transit, stream = _file_transits(target, "send_file", Polarity.OUTPUT)
    if stream is not None:
        sent: int = await stream.send_file(file, offset=offset, count=count)
        return sent
    region = _files.send_region(file, offset, count)
    return await _transfer_region(_in_run(transit), transit, region, sending=True)


@protected
async def receive_file(target: Any, file: Any, *, count: int | None = None) -> int:
    """Write what arrives on a stream (a :class:`TrafficStream` or an input
    Octets transit) to ``file``, from its position, until ``count`` bytes
    (None: until the peer ends the stream); return the bytes written (less
    than ``count`` if the stream ended first, 0 if it had ended).  The core
    writes them itself (``splice(2)`` on Linux): they never enter Python.

    ``file`` is a binary file object open for writing (a buffered one is
    flushed first; wrapped by ``trio.wrap_file`` or anyio too), or a
    descriptor, of a regular file; one opened for appending is written at
    its end.  Afterwards, in every outcome, the file's position is just
    after the last byte written.

    A checkpoint.  Refused before anything is received: ``ValueError`` for
    ``count < 1`` and a file that is not a regular one; ``TypeError`` for a
    text file; ``ValueError`` for a closed one; ``io.UnsupportedOperation``
    for one not open for writing.  A failure to write the file (``OSError``:
    ``ENOSPC``...) keeps the bytes it did not take in the stream: the next
    receive returns them first.  Else as :meth:`TrafficStream.receive_some`.
    """
    transit, stream = _file_transits(target, "receive_file", Polarity.INPUT)
    if stream is not None:
        written: int = await stream.receive_file(file, count=count)
        return written
    region = _files.receive_region(file, count)
    return await _transfer_region(_in_run(transit), transit, region, sending=False)


# Streams and listeners


def _busy_send() -> trio.BusyResourceError:
    return trio.BusyResourceError("another task is using this stream for send")


def _busy_receive() -> trio.BusyResourceError:
    return trio.BusyResourceError("another task is using this stream for receive")


def _detach(
    sock: Any, what: str, listening: bool = False, kind: int = _stdlib_socket.SOCK_STREAM
) -> int:
    """Take the descriptor out of a stdlib or trio socket object.

    Checked before it is taken, so that a refused socket stays the
    caller's, open: ``TypeError`` for a non-socket or a socket that is not
    of type ``kind`` (``SOCK_STREAM`` unless told), ``ValueError`` for a
    listener's socket that is not listening, ``trio.ClosedResourceError``
    for a closed socket.
    """
    # Sockets only: a buffered file has detach() and fileno() too, and
    # detaching it would take its raw stream.
    if not isinstance(sock, (_stdlib_socket.socket, trio.socket.SocketType)):
        raise TypeError(f"expected a socket object, not {type(sock).__name__}")
    if sock.fileno() < 0:
        raise trio.ClosedResourceError("the socket is closed")
    if getattr(sock, "type", kind) != kind:
        raise TypeError(f"{what} needs a {_stdlib_socket.SocketKind(kind).name} socket")
    if listening and hasattr(sock, "getsockopt"):
        try:
            accepting = sock.getsockopt(_stdlib_socket.SOL_SOCKET, _stdlib_socket.SO_ACCEPTCONN)
        except OSError:
            accepting = 1  # cannot tell: the core's check decides
        if not accepting:
            raise ValueError(f"{what} needs a listening socket: call listen() first")
    return int(sock.detach())


class TrafficStream(trio.abc.HalfCloseableStream):
    """A connected stream socket whose transfers traffic's core performs.

    Mirrors ``trio.SocketStream``: construct it from a connected stream
    socket (stdlib or trio; the descriptor is detached and owned by the
    core), or get one from :func:`open_tcp_stream`, :func:`open_unix_stream`
    or a :class:`TrafficListener`.  TCP streams get ``TCP_NODELAY``, as in
    trio.  Must be created inside a trio run.

    An AF_UNIX stream is made of a :class:`~traffic.libkqueue.Descriptors`
    pair (a kernel point carries one transit per direction), so
    :func:`send_fds` and :func:`receive_fds` take it; its bytes travel with
    no descriptors, and descriptors arriving during :meth:`receive_some`
    are closed, never leaked.
    """

    # Slots, and the socket view made on first use: ten thousand idle
    # connections are ten thousand of these.
    __slots__ = (
        "_closed",
        "_delivery",
        "_identity",
        "_receiver",
        "_receiving",
        "_sender",
        "_sending",
        "_view",
    )

    def __init__(self, socket: Any) -> None:
        self._setup(_detach(socket, "TrafficStream"))

    @classmethod
    def _from_fd(
        cls, fd: int, identity: tuple[int, int, int] | None = None, nodelay: bool = True
    ) -> TrafficStream:
        """A stream owning ``fd``; closed here if it cannot be made one.

        ``identity`` is (family, type, proto) when the caller knows it (an
        accepted connection has its listener's), sparing the probe;
        ``nodelay`` False when the descriptor already has TCP_NODELAY (a
        connection accepted from a listener that has it inherits it)."""
        self = cls.__new__(cls)
        self._setup(fd, identity, nodelay)
        return self

    def _setup(
        self, fd: int, identity: tuple[int, int, int] | None = None, nodelay: bool = True
    ) -> None:
        # Ownership moves once: until Octets._pair succeeds, fd is ours to
        # close on failure; from then on the transits own it, and closing it
        # here too could close a descriptor number reused meanwhile.
        try:
            identity = identity or socket_identity(fd)
            family = identity[0]
            if identity[1] != _stdlib_socket.SOCK_STREAM:
                raise TypeError("TrafficStream needs a SOCK_STREAM socket")
            # AF_UNIX: a Descriptors pair, for bytes and descriptors alike
            # (one transit per polarity on a kernel point; see send_fds).
            kinds = Descriptors if family == _stdlib_socket.AF_UNIX else Octets
            receiver, sender = kinds._pair(fd)
        except BaseException:
            os.close(fd)
            raise
        delivery = _delivery()
        delivery.traffic.acquire(receiver)
        delivery.traffic.acquire(sender)
        self._delivery = delivery
        self._receiver = receiver
        self._sender = sender
        self._closed = False
        # Busy flags, one task at a time per direction (trio's
        # ConflictDetector), kept as two booleans rather than guard objects:
        # send_all and receive_some test and set them inline (the hot path),
        # and an idle connection holds no guard.
        self._sending = False
        self._receiving = False
        self._identity = identity
        self._view: SocketView | None = None
        if nodelay and wants_nodelay(family):
            set_nodelay(self.socket)

    @property
    def socket(self) -> SocketView:
        """A view of the socket: ``getsockname()``, ``getsockopt()``,
        ``fileno()``... (it never closes the descriptor)."""
        view = self._view
        if view is None:
            view = self._view = SocketView(self._receiver, *self._identity)
        return view

    def setsockopt(self, level: int, option: int, value: Any, length: int | None = None) -> None:
        """Set an option on the underlying socket (see ``socket.setsockopt``)."""
        self.socket.setsockopt(level, option, value, length)

    def getsockopt(self, level: int, option: int, buffersize: int | None = None) -> Any:
        """Read an option of the underlying socket (see ``socket.getsockopt``)."""
        return self.socket.getsockopt(level, option, buffersize)

    @protected
    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Send all of ``data``; see :func:`traffic.send_all` for cancellation.

        A checkpoint.  Raises ``trio.BusyResourceError`` if another task is
        sending, ``trio.ClosedResourceError`` after :meth:`aclose` or
        :meth:`send_eof`, ``trio.BrokenResourceError`` if the peer is gone.
        """
        if self._sending:
            raise _busy_send()
        self._sending = True
        try:
            if self._closed:
                raise trio.ClosedResourceError("the stream is closed")
            check_buffer(data, False)  # not writable (positional: cheaper)
            # The park sequence of _trio_parking.transfer, spelled out: this
            # and receive_some are the hot path, where a coroutine level
            # costs time per call and memory while parked.  The memory is
            # exported in submit, after the checkpoint (see _requests).
            await checkpoint_if_cancelled()
            sender = self._sender
            delivery = self._delivery
            done = delivery.requests.submit(sender, data, False, _REFUSALS)
            if done is None:
                done = await wait_task_rescheduled(Parked(delivery, sender))
            else:
                await cancel_shielded_checkpoint()
            if done[1] != DONE:  # the outcome
                _sent(done)
        finally:
            self._sending = False

    @protected
    async def send_file(
        self, file: Any, *, offset: int | None = None, count: int | None = None
    ) -> int:
        """Send ``count`` bytes of ``file`` from ``offset`` (default: its
        position, to its end); return the bytes sent.  The file's position
        ends after them in every outcome.  See :func:`traffic.send_file`.

        A checkpoint.  Raises ``trio.BusyResourceError`` if another task is
        sending, ``trio.ClosedResourceError`` after :meth:`aclose` or
        :meth:`send_eof`.
        """
        with claimed(self, "_sending", _busy_send):
            if self._closed:
                raise trio.ClosedResourceError("the stream is closed")
            region = _files.send_region(file, offset, count)
            return await _transfer_region(self._delivery, self._sender, region, sending=True)

    @protected
    async def receive_file(self, file: Any, *, count: int | None = None) -> int:
        """Write what arrives to ``file`` from its position until ``count``
        bytes or the end of the stream; return the bytes written.  See
        :func:`traffic.receive_file`.

        A checkpoint.  Raises ``trio.BusyResourceError`` if another task is
        receiving, ``trio.ClosedResourceError`` after :meth:`aclose`.
        """
        with claimed(self, "_receiving", _busy_receive):
            if self._closed:
                raise trio.ClosedResourceError("the stream is closed")
            region = _files.receive_region(file, count)
            written = await _transfer_region(self._delivery, self._receiver, region, sending=False)
            if self._closed:
                raise trio.ClosedResourceError("the stream was closed while receiving")
            return written

    async def wait_send_all_might_not_block(self) -> None:
        """Wait until the socket can take more data.  A checkpoint."""
        with claimed(self, "_sending", _busy_send):
            if self._closed:
                raise trio.ClosedResourceError("the stream is closed")
            fd = self._sender.fileno()
            if fd < 0 or self._sender.terminated:
                await trio.lowlevel.checkpoint()
                return
            self.socket  # noqa: B018  (made, so that aclose notifies trio)
            await trio.lowlevel.wait_writable(fd)

    async def send_eof(self) -> None:
        """Shut down the sending direction; receiving goes on.  A checkpoint.

        Idempotent.  Raises ``trio.ClosedResourceError`` after :meth:`aclose`.
        """
        with claimed(self, "_sending", _busy_send):
            if self._closed:
                raise trio.ClosedResourceError("the stream is closed")
            await trio.lowlevel.checkpoint()
            self._sender.terminate()

    @protected
    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Receive at most ``max_bytes`` (default 64 KiB); ``b""`` at EOF.

        A checkpoint.  Raises ``ValueError`` for ``max_bytes < 1``,
        ``trio.BusyResourceError`` if another task is receiving,
        ``trio.ClosedResourceError`` after :meth:`aclose`,
        ``trio.BrokenResourceError`` if the connection broke.
        """
        if self._receiving:
            raise _busy_receive()
        self._receiving = True
        try:
            if max_bytes is None:
                size = DEFAULT_RECEIVE_SIZE
            elif not isinstance(max_bytes, int):
                raise TypeError("max_bytes must be an integer")
            elif max_bytes < 1:
                raise ValueError("max_bytes must be >= 1")
            else:
                size = min(max_bytes, DEFAULT_RECEIVE_SIZE)
            if self._closed:
                raise trio.ClosedResourceError("the stream is closed")
            # No buffer of the stream's own: tried at once into the run's
            # scratch, and if it waits the core allocates one when data
            # arrives, so a parked receive holds no memory (idle connections).
            # The park sequence spelled out, as in send_all.
            await checkpoint_if_cancelled()
            receiver = self._receiver
            delivery = self._delivery
            done = delivery.requests.receive(receiver, size, _REFUSALS)
            if done is None:
                done = await wait_task_rescheduled(Parked(delivery, receiver))
            else:
                await cancel_shielded_checkpoint()
            if self._closed:
                raise trio.ClosedResourceError("the stream was closed while receiving")
            _, outcome, _, _, data, _ = done
            if outcome == DONE:
                return data  # type: ignore[return-value]  # bytes: from the core
            _received(done)
            return b""
        finally:
            self._receiving = False

    async def aclose(self) -> None:
        """Close the stream: operations parked on it wake with
        ``trio.ClosedResourceError``.  Idempotent; a checkpoint, and it
        closes even when cancelled."""
        self._close()
        await trio.lowlevel.checkpoint()

    def _close(self) -> None:
        """Close now (it never blocks); :meth:`aclose` without its checkpoint."""
        if self._closed:
            return
        self._closed = True
        if self._view is not None:
            # Its descriptor number went out (fileno()): someone may wait
            # on it with trio (wait_send_all_might_not_block does).  Only
            # then: notify_closing costs an epoll_ctl per connection.
            fd = self._receiver.fileno()
            if fd >= 0:
                trio.lowlevel.notify_closing(fd)
        # Closed as trio's SocketStream closes: no shutdown(2) first (the
        # peer sees the end all the same; a copy of the descriptor in
        # another process keeps the connection, as it would with trio).
        self._receiver.disregard()
        self._sender.disregard()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"fd={self._receiver.fileno()}"
        return f"<traffic.TrafficStream {state}>"


class TrafficListener(trio.abc.Listener[TrafficStream]):
    """A listening stream socket whose accepts traffic's core performs.

    Mirrors ``trio.SocketListener``: ``.socket`` is a view of the listening
    socket (so ``trio.testing.open_stream_to_socket_listener`` works),
    :meth:`accept` returns :class:`TrafficStream`\\ s.
    """

    def __init__(self, socket: Any) -> None:
        fd = _detach(socket, "TrafficListener", listening=True)
        # Ownership moves once, to the transit (see TrafficStream._setup).
        try:
            family, kind, proto = socket_identity(fd)
            if kind != _stdlib_socket.SOCK_STREAM:
                raise TypeError("TrafficListener needs a SOCK_STREAM socket")
            transit = Sockets.from_fd(fd)
        except BaseException:
            os.close(fd)
            raise
        delivery = _delivery()
        delivery.traffic.acquire(transit)
        self._delivery = delivery
        self._transit = transit
        self._closed = False
        self._guard = Guard(
            lambda: trio.BusyResourceError("another task is already accepting on this listener")
        )
        self.socket = SocketView(transit, family, kind, proto)
        self._identity = (family, kind, proto)
        self._accepted = AcceptQueue(self.socket)

    @protected
    async def accept(self) -> TrafficStream:
        """Accept a connection.  A checkpoint.

        Raises ``OSError`` (EMFILE, ENFILE, ENOBUFS, ENOMEM) when out of
        resources, with the listener intact (``trio.serve_listeners`` backs
        off and retries); ``trio.ClosedResourceError`` after :meth:`aclose`;
        ``trio.BusyResourceError`` if another task is accepting.
        """
        with self._guard:
            await self._fill()
            return self._stream()

    @protected
    async def _accept_all(self) -> list[TrafficStream]:
        """Every connection accepted so far, at least one: :meth:`accept`
        for a whole batch with one checkpoint (``serve_listeners``)."""
        with self._guard:
            await self._fill()
            streams = []
            while self._accepted:
                # One at a time: if making a stream fails, the descriptors
                # not taken yet stay queued (closed by aclose), and the
                # streams made are closed when dropped.
                streams.append(self._stream())
            return streams

    @protected
    async def _fill(self) -> None:
        """Make sure a connection is queued.  A checkpoint."""
        if self._closed:
            raise trio.ClosedResourceError("the listener is closed")
        queue = self._accepted
        if queue:
            await trio.lowlevel.checkpoint()
            return
        done = await transfer_pinned(
            self._delivery, self._transit, queue.pin, queue.size, queue, _REFUSALS
        )
        if self._closed:
            if done[1] == DONE:  # the outcome
                queue.discard(done[3])  # transferred
            raise trio.ClosedResourceError("the listener was closed while accepting")
        queue.accepted(_accepted(done))

    def _stream(self) -> TrafficStream:
        """The stream of the next accepted descriptor (closed if that fails)."""
        fd, nodelay = self._accepted.popleft()
        return TrafficStream._from_fd(fd, self._identity, nodelay)

    async def aclose(self) -> None:
        """Stop listening; connections accepted but not handed out are closed."""
        if not self._closed:
            self._closed = True
            self._transit.terminate()
            self._accepted.close()
        await trio.lowlevel.checkpoint()

    def __repr__(self) -> str:
        return f"<traffic.TrafficListener {'closed' if self._closed else self.socket!r}>"


# Openers, mirroring trio's


async def open_tcp_stream(host: str | bytes, port: int, **kwargs: Any) -> TrafficStream:
    """Connect to ``host``:``port`` as ``trio.open_tcp_stream`` does (happy
    eyeballs included: trio makes the connection), then hand the socket to
    traffic.  ``ValueError`` for a port outside 0-65535."""
    check_port(port)
    stream = await trio.open_tcp_stream(host, port, **kwargs)
    return TrafficStream(stream.socket)


async def open_unix_stream(path: str | bytes | os.PathLike[str]) -> TrafficStream:
    """Connect to the AF_UNIX stream socket at ``path``."""
    stream = await trio.open_unix_socket(path)
    return TrafficStream(stream.socket)


async def open_tcp_listeners(
    port: int, *, host: str | bytes | None = None, backlog: int | None = None
) -> list[TrafficListener]:
    """Listen on ``port`` as ``trio.open_tcp_listeners`` does (one listener
    per address family of ``host``).  ``TypeError`` for a port that is not
    an int, ``ValueError`` outside 0-65535 (the resolver would wrap it)."""
    check_port(port)
    listeners = await trio.open_tcp_listeners(port, host=host, backlog=backlog)
    return [TrafficListener(listener.socket) for listener in listeners]


async def open_unix_listener(
    path: str | bytes | os.PathLike[str], *, backlog: int | None = None
) -> TrafficListener:
    """Listen on the AF_UNIX path ``path`` (which must not exist yet)."""
    sock = _stdlib_socket.socket(_stdlib_socket.AF_UNIX, _stdlib_socket.SOCK_STREAM)
    try:
        sock.bind(os.fspath(path))
        sock.listen(backlog if backlog is not None else _stdlib_socket.SOMAXCONN)
        listener = TrafficListener(sock)
    except BaseException:
        sock.close()
        raise
    await trio.lowlevel.checkpoint()
    return listener


_Handler = Callable[[TrafficStream], Awaitable[object]]


async def _run_handler(stream: TrafficStream, handler: _Handler) -> None:
    try:
        await handler(stream)
    finally:
        # trio's aclose_forcefully without its cancel scope and checkpoint:
        # closing a TrafficStream never blocks, and the task is ending.
        stream._close()


def _start_handlers(
    handler_nursery: trio.Nursery, handler: _Handler, streams: list[TrafficStream]
) -> None:
    """A handler task per stream; the list is emptied.  The serving loop
    holds no stream while it waits for the next batch: a stream it held
    would outlive its handler (its transits alive, if closed) for as long
    as no connection comes."""
    for stream in streams:
        handler_nursery.start_soon(_run_handler, stream, handler)
    streams.clear()


async def _serve_one_listener(
    listener: TrafficListener, handler_nursery: trio.Nursery, handler: _Handler
) -> NoReturn:
    async with listener:
        while True:
            try:
                streams = await listener._accept_all()
            except OSError as exc:
                if not accept_backoff(exc):
                    raise
                await trio.sleep(ACCEPT_BACKOFF)
                continue
            _start_handlers(handler_nursery, handler, streams)


async def serve_listeners(
    handler: _Handler,
    listeners: list[TrafficListener],
    *,
    handler_nursery: trio.Nursery | None = None,
    task_status: trio.TaskStatus[list[TrafficListener]] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """``trio.serve_listeners`` for :class:`TrafficListener`\\ s: run
    ``handler(stream)`` in a new task per connection; never returns.

    The same contract as trio's (listeners closed when it ends, handlers in
    ``handler_nursery`` or an internal nursery, a stream closed when its
    handler returns, EMFILE, ENFILE, ENOMEM and ENOBUFS logged at ERROR to
    the ``traffic.serve_listeners`` logger and retried after 100 ms), with
    less work per connection: each batch of connections the core accepted
    costs one checkpoint, and a stream is closed at once when its handler
    returns, without a cancel scope.  ``TypeError`` for a listener that is
    not a :class:`TrafficListener` (use ``trio.serve_listeners`` for those).
    """
    for listener in listeners:
        if not isinstance(listener, TrafficListener):
            raise TypeError(
                f"serve_listeners() takes TrafficListeners, not {type(listener).__name__}"
            )
    async with trio.open_nursery() as nursery:
        if handler_nursery is None:
            handler_nursery = nursery
        for listener in listeners:
            nursery.start_soon(_serve_one_listener, listener, handler_nursery, handler)
        task_status.started(listeners)
    raise AssertionError("_serve_one_listener never returns")  # pragma: no cover


async def serve_tcp(
    handler: _Handler,
    port: int,
    *,
    host: str | bytes | None = None,
    backlog: int | None = None,
    handler_nursery: trio.Nursery | None = None,
    task_status: trio.TaskStatus[list[TrafficListener]] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Serve TCP with ``handler(stream)`` per connection, as ``trio.serve_tcp``.

    ``await nursery.start(traffic.serve_tcp, handler, 0)`` returns the
    listeners.  Handlers run in ``handler_nursery`` (default: an internal
    one); a stream is closed when its handler returns.  On EMFILE, ENFILE,
    ENOMEM, ENOBUFS the server sleeps 100 ms and retries (trio's
    ``serve_listeners`` does it).  Cancelling closes every connection.
    """
    listeners = await open_tcp_listeners(port, host=host, backlog=backlog)
    await serve_listeners(
        handler, listeners, handler_nursery=handler_nursery, task_status=task_status
    )


async def serve_unix(
    handler: _Handler,
    path: str | bytes | os.PathLike[str],
    *,
    backlog: int | None = None,
    handler_nursery: trio.Nursery | None = None,
    task_status: trio.TaskStatus[list[TrafficListener]] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """:func:`serve_tcp` for an AF_UNIX path."""
    listener = await open_unix_listener(path, backlog=backlog)
    await serve_listeners(
        handler, [listener], handler_nursery=handler_nursery, task_status=task_status
    )
