"""anyio streams whose transfers traffic's core performs, on trio and on asyncio.

The swap
--------
anyio takes no third-party backends, so traffic ships its own
implementations of anyio's socket classes and the functions that make them,
with anyio's signatures and semantics::

    from traffic.anyio_backend import connect_tcp   # was: from anyio import connect_tcp

    async with await connect_tcp("example.com", 80) as stream:
        await stream.send(b"...")
        reply = await stream.receive()

:func:`connect_tcp`, :func:`create_tcp_listener`, :func:`connect_unix` and
:func:`create_unix_listener` return :class:`TrafficSocketStream`,
:class:`TrafficUNIXSocketStream`, :class:`TrafficSocketListener` and
:class:`TrafficUNIXSocketListener`: subclasses of ``anyio.abc.SocketStream``,
``UNIXSocketStream`` and ``SocketListener`` (TCP listeners come in anyio's
own ``MultiListener``, TLS in anyio's own ``TLSStream``, exactly as anyio
does it).  Everything else (task groups, ``Listener.serve``, ``TLSStream``,
``BufferedByteReceiveStream``, cancel scopes) is anyio's own and works on
them unchanged.

Which event loop
----------------
The backend is chosen when a stream is made, with
``sniffio.current_async_library()``; a stream stays with that run.

- **trio**: the per-run Traffic and parking the trio layer uses are reused
  (:mod:`traffic._trio_parking`, imported only when a stream is made on
  trio: an asyncio program never imports trio): one pump task per run
  reschedules the
  tasks whose transfers completed, a withdrawn request that lost the race
  against the system call still delivers its data, and the run's end
  closes the Traffic.  A stream made with this module and a
  ``TrafficStream`` of the same run share one cycle thread.
- **asyncio**: one threaded Traffic per event loop (kept in a
  ``WeakKeyDictionary`` keyed by the loop).  Its completion descriptor is
  registered once with ``loop.add_reader``; the reader callback collects
  every waiting completion in one C call and resolves the futures of the
  tasks waiting on them.  No ``call_soon_threadsafe`` per completion: the
  cycle thread never takes the GIL to wake the loop, it writes the
  completion descriptor, once per batch.  asyncio's own loop and uvloop's
  (``anyio.run(..., backend_options={"use_uvloop": True})``) are served
  alike: the parking uses no more of a loop than ``add_reader``,
  ``remove_reader``, ``create_future``, ``create_task`` and ``is_closed``.

Closing the asyncio Traffic with its loop.  asyncio has no loop-close hook,
so two mechanisms cover the ways loops end:

1. A *keeper* task, made with the Traffic, awaits a future that is never
   resolved.  ``asyncio.run``, ``asyncio.Runner``, ``anyio.run`` and anyio's
   pytest plugin all cancel every remaining task before they close the
   loop; the keeper's ``finally`` then removes the reader, wakes any task
   still waiting (with ``ClosedResourceError``), and closes the Traffic:
   the cycle thread is joined and every descriptor it owns is closed
   before ``loop.close()`` runs.
2. A loop managed by hand (``run_until_complete`` then ``close``, no task
   cancelled): closing the loop drops its reader (asyncio's selector,
   uvloop's libuv poll handles), the only strong path to the loop's
   Traffic (the registry of loops holds weak references), so the
   Traffic's own finalizer closes it at the next garbage collection;
   ``libkqueue``'s exit hook closes it at the latest when the interpreter
   exits.  Such programs can call :func:`close_traffic` before
   ``loop.close()`` to have it closed at once.  A uvloop loop that has run
   and is dropped *without* ``close()`` is never collected (libuv's active
   handles hold it, and its own descriptors stay open), so its Traffic
   lives as long: close such loops, or call :func:`close_traffic`.

Cancellation loses nothing
--------------------------
A transfer is first tried inline, in the event loop's thread (non-blocking).
Only if the kernel has nothing (or no room) does the request stay in the
core, and the task waits.

On asyncio a cancelled wait withdraws the request.  If the withdrawal wins
(every state but "the cycle thread is inside the system call"), nothing was
transferred (a send reports how much went out, as anyio's own cancelled
send may have sent part of its data) and the ``CancelledError`` propagates.
If the transfer already happened, or is happening, the buffer stays pinned
until the core reports the final state, the bytes received are kept in the
stream (the next :meth:`~TrafficSocketStream.receive` returns them first;
the connections a listener accepted are kept for its next
:meth:`~TrafficSocketListener.accept`) and the ``CancelledError`` still
propagates at once.  The same holds when the cancellation hits the
checkpoint after an inline transfer.

On trio the trio layer's rule holds: a receive whose transfer already
happened returns its data, and the cancellation is delivered at the task's
next checkpoint.  On both backends no received byte is dropped.

Errors cross once
-----------------
The core's :class:`~traffic.errors.TransitClosedError`, a transit terminated
by its owner (``aclose()``, ``send_eof()``) and the trio layer's
``trio.ClosedResourceError`` become ``anyio.ClosedResourceError``; a
transit the kernel terminated with an errno (``ECONNRESET``, ``EPIPE``...)
becomes ``anyio.BrokenResourceError`` chained to the ``OSError``; EOF
becomes ``anyio.EndOfStream``; a second task using one direction gets
``anyio.BusyResourceError``, as from anyio's ``ResourceGuard``.

Sockets and ownership
---------------------
The core owns every descriptor it transfers on.  ``SocketAttribute.raw_socket``
is therefore a :class:`RawSocketView`, not a ``socket.socket``: it answers
what anyio's tests and users ask of the raw socket (``getsockname``,
``getpeername``, ``getsockopt``, ``setsockopt``, ``family``, ``type``,
``proto``, ``fileno``, ``gettimeout``, ``getblocking``), never closes the
descriptor, and raises ``OSError(EBADF)`` once the core has closed it (a
recycled descriptor number is never touched).  Every other
``SocketAttribute`` anyio's own streams answer (``family``,
``local_address``, ``remote_address``, and ``local_port``/``remote_port``
for IP sockets) is answered the same way, by anyio's own code.

Descriptor passing: :meth:`TrafficUNIXSocketStream.send_fds` and
:meth:`~TrafficUNIXSocketStream.receive_fds` work on both backends, with
anyio's argument checks (one deviation: ``msglen`` must be at least 1).
An AF_UNIX stream's transits are a ``Descriptors`` pair, used for bytes and
descriptors alike.  ``SOCK_SEQPACKET`` UNIX sockets are refused (the core's
byte transits would merge records).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import ssl
import stat
import sys
import weakref
from array import array
from collections.abc import Awaitable, Callable, Collection, Coroutine
from io import IOBase
from ipaddress import IPv6Address, ip_address
from typing import TYPE_CHECKING, Any, Literal, NoReturn, Protocol, cast

import anyio
import anyio.abc
import anyio.lowlevel
import sniffio
from anyio.streams.stapled import MultiListener
from anyio.streams.tls import TLSStream

from . import _files
from ._requests import (
    COMPLETING,
    DONE,
    FAULT,
    OWNER_TERMINATED,
    TERMINATED,
    WITHDRAWN,
    Completion,
    Refusal,
    Refusals,
    Requests,
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
from .errors import OutOfRangeError
from .libkqueue import (
    MAX_DESCRIPTOR,
    Descriptors,
    Octets,
    Sockets,
    Traffic,
    Transit,
    check_descriptor_message,
    check_port,
    cycle_policy,
    descriptor_array,
)

if sys.version_info < (3, 11):
    from exceptiongroup import ExceptionGroup  # type: ignore[import-not-found, unused-ignore]

if TYPE_CHECKING:
    from anyio.abc import IPAddressType, IPSockAddrType


__all__ = [
    "ACCEPT_BATCH",
    "DEFAULT_RECEIVE_SIZE",
    "MAX_RECEIVE_FDS",
    "RawSocketView",
    "TrafficSocketListener",
    "TrafficSocketStream",
    "TrafficUNIXSocketListener",
    "TrafficUNIXSocketStream",
    "close_traffic",
    "connect_tcp",
    "connect_unix",
    "create_tcp_listener",
    "create_unix_listener",
    "current_traffic",
]

#: Scheduling of each asyncio loop's cycle thread (see ``Traffic.start``):
#: None takes ``$TRAFFIC_CYCLE_POLICY``, else ``"batch"``.  On trio the
#: trio layer's ``CYCLE_POLICY`` applies.
CYCLE_POLICY: str | None = None

IPPROTO_IPV6 = getattr(socket, "IPPROTO_IPV6", 41)

# The core's refusals of a request, as anyio's exceptions (see _requests).
_REFUSALS: Refusals = {
    Refusal.TERMINATED: lambda _: anyio.ClosedResourceError(),
    Refusal.BUSY: lambda _: anyio.BusyResourceError("transferring on"),
    Refusal.BAD_DESCRIPTOR: bad_descriptor,
    Refusal.OS_ERROR: os_error,
}

# The result of a request the owner never sees: called with it, now or when
# it arrives.
_Orphan = Callable[[Result], None]


class _Parking(Protocol):
    """How a task waits for its transfer on one backend."""

    traffic: Traffic
    requests: Requests

    @property
    def trio(self) -> _TrioParking | None:
        """On trio, the parking the stream's hot path parks with inline
        (see TrafficSocketStream._receive); None elsewhere."""

    #: token -> future of a cancelled request whose completion is on its way.
    late: dict[int, asyncio.Future[Completion]]

    def transfer(
        self,
        transit: Transit,
        memory: Any,
        writable: bool,
        orphan: _Orphan,
        numbers: Any = None,
    ) -> Awaitable[Result]:
        """One request with ``memory`` (checked by the caller, exported at
        submission) and a Descriptors request's ``numbers``, and its result.
        A checkpoint."""

    def transfer_pinned(
        self, transit: Transit, pin: Any, size: int, keep: object, orphan: _Orphan
    ) -> Awaitable[Result]:
        """:meth:`transfer` with traffic's own long-lived export ``pin``
        (see ``Requests.submit_pinned``)."""

    def transfer_file(self, transit: Transit, region: _files.Region) -> Awaitable[Result]:
        """One file request, and its result.  A checkpoint.  Cancelled, the
        bytes it moved are in ``region.moved`` when the cancellation
        propagates."""

    async def settle(self, transit: Transit) -> None: ...

    def wake(self, transit: Transit) -> None: ...


# trio: the parking of the trio run (traffic._trio_parking)


# The trio parking's functions the hot path parks with, bound when the first
# stream is made on trio (this module never imports trio itself).  Module
# globals, made here so that binding them adds no key: a call through an
# attribute of the parking object would be looked up generically each time.
_checkpoint_if_cancelled: Any = None
_cancel_shielded_checkpoint: Any = None
_wait_task_rescheduled: Any = None
_Parked: Any = None


class _TrioParking:
    """The trio run's delivery (:mod:`traffic._trio_parking`)."""

    __slots__ = (
        "_transfer",
        "_transfer_file",
        "_transfer_pinned",
        "delivery",
        "late",
        "requests",
        "traffic",
        "trio",
    )

    def __init__(self) -> None:
        global _checkpoint_if_cancelled, _cancel_shielded_checkpoint
        global _wait_task_rescheduled, _Parked
        from . import _trio_parking as parking

        if _Parked is None:
            _checkpoint_if_cancelled = parking.checkpoint_if_cancelled
            _cancel_shielded_checkpoint = parking.cancel_shielded_checkpoint
            _wait_task_rescheduled = parking.wait_task_rescheduled
            _Parked = parking.Parked
        self.delivery = parking.delivery()
        self.traffic = self.delivery.traffic
        self.requests = self.delivery.requests
        self.trio = self
        self.late: dict[int, asyncio.Future[Completion]] = {}  # always empty
        self._transfer = parking.transfer
        self._transfer_pinned = parking.transfer_pinned
        self._transfer_file = parking.transfer_file

    async def settle(self, transit: Transit) -> None:
        """Nothing is ever late on trio."""

    def transfer(
        self,
        transit: Transit,
        memory: Any,
        writable: bool,
        orphan: _Orphan,
        numbers: Any = None,
    ) -> Awaitable[Result]:
        # The trio parking's own sequence, awaited by the caller directly (a
        # coroutine level less per transfer), raising anyio's errors.  It
        # never orphans a completion: an abort that lost the race waits for
        # the completion and returns it (trio's rule).
        return self._transfer(self.delivery, transit, memory, writable, _REFUSALS, numbers)

    def transfer_pinned(
        self, transit: Transit, pin: Any, size: int, keep: object, orphan: _Orphan
    ) -> Awaitable[Result]:
        return self._transfer_pinned(self.delivery, transit, pin, size, keep, _REFUSALS)

    def transfer_file(self, transit: Transit, region: _files.Region) -> Awaitable[Result]:
        return self._transfer_file(self.delivery, transit, region, _REFUSALS)

    def wake(self, transit: Transit) -> None:
        """Nothing to do: a task parked on a transit its owner terminated is
        rescheduled with the core's "closed" completion, also when a
        cancellation arrives first (the abort fails, the completion wins)."""


async def _trio_wait_within(delivery: Any, transit: Transit, timeout: float) -> Result:
    """On trio, the completion of the transit's parked request, waited for
    at most ``timeout`` seconds (``TimeoutError``; the abort withdraws the
    request, or the completion that won the race is returned)."""
    with anyio.fail_after(timeout):
        result: Result = await _wait_task_rescheduled(_Parked(delivery, transit))
        return result


# asyncio: one Traffic per loop, its completion descriptor read by the loop


class _AsyncioParking:
    """A loop's Traffic, the futures waiting on it, and its keeper task."""

    __slots__ = (
        "__weakref__",
        "closed",
        "fd",
        "keeper",
        "late",
        "loop",
        "parked",
        "requests",
        "traffic",
        "unclaimed",
    )

    #: No trio here: every transfer goes through :meth:`transfer`.
    trio = None

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        traffic = Traffic()
        try:
            traffic.start(CYCLE_POLICY or cycle_policy())
            self.fd = traffic.completion_fileno()
            loop.add_reader(self.fd, self._collect)
        except BaseException:
            traffic.close()
            raise
        self.traffic = traffic
        self.requests = traffic.requests
        self.requests.reserve_scratch(DEFAULT_RECEIVE_SIZE)
        # Closed by hand (current_traffic().close()), the Traffic closes
        # the parking first: the loop must stop watching a descriptor
        # number that the next Traffic may well reuse (in the loop's
        # thread, as every use of a loop's Traffic).
        self.requests.on_close = self.close
        self.loop = loop
        self.closed = False
        # token -> the future its task awaits; None: the waiter was woken
        # already (wake()), the completion only unpins.  What the core may
        # touch meanwhile is pinned by the requests.
        self.parked: dict[int, asyncio.Future[Completion] | None] = {}
        # token -> completion collected after its waiter was cancelled.
        self.unclaimed: dict[int, Completion] = {}
        # token -> future of a withdrawn request whose completion follows.
        self.late: dict[int, asyncio.Future[Completion]] = {}
        # Held here, and so by the loop's selector (through the reader
        # callback) while the loop lives: asyncio keeps only weak references
        # to tasks.
        self.keeper = loop.create_task(self._keep(), name="traffic.anyio_backend keeper")
        # A loop closed by hand with the keeper still pending: when the
        # keeper is collected with the rest, that is expected, not an error
        # to log (asyncio.gather sets the same flag on its children).
        with contextlib.suppress(AttributeError):
            self.keeper._log_destroy_pending = False  # type: ignore[attr-defined]

    @classmethod
    def current(cls) -> _AsyncioParking:
        loop = asyncio.get_running_loop()
        ref = _LOOPS.get(loop)
        parking = ref() if ref is not None else None
        if parking is None or parking.closed:
            parking = cls(loop)
            # A weak reference: the dictionary must not keep the loop (its
            # key) alive through the parking.  When a loop closed by hand
            # loses its selector, the parking becomes garbage, and the
            # Traffic's own finalizer closes it.
            _LOOPS[loop] = weakref.ref(parking)
        return parking

    async def _keep(self) -> None:
        """Wait for the loop's shutdown (which cancels every task), then close."""
        try:
            await self.loop.create_future()
        finally:
            self.close()

    def _collect(self) -> None:
        """The loop's reader callback: every completion waiting, in one C call."""
        parked = self.parked
        for completion in self.requests.collect():
            future = parked.pop(completion.token, None)
            if future is None:
                continue  # a dropped transit's last word, or a waiter woken already
            if future.done():
                # Its task was cancelled before this arrived: its cancel
                # handler claims it (and keeps the data).
                self.unclaimed[completion.token] = completion
            else:
                future.set_result(completion)

    def close(self) -> None:
        """Stop reading, wake every waiter with a closed outcome, close the Traffic."""
        if self.closed:
            return
        self.closed = True
        ref = _LOOPS.get(self.loop)
        if ref is not None and ref() is self:
            del _LOOPS[self.loop]
        if not self.loop.is_closed():
            # Before the Traffic closes the descriptor: its number is soon
            # reused (often by the loop's next Traffic), and a loop still
            # watching a closed number misses the new descriptor under it
            # (asyncio's selector keeps a key that epoll has dropped).
            self.loop.remove_reader(self.fd)
        parked, self.parked = self.parked, {}
        for token, future in parked.items():
            if future is not None and not future.done() and not self.loop.is_closed():
                future.set_result(Completion(token, OWNER_TERMINATED, 0, 0))
        self.traffic.close()
        if (
            not self.keeper.done()
            and not self.loop.is_closed()
            and asyncio.current_task(self.loop) is not self.keeper
        ):
            self.keeper.cancel()

    def wake(self, transit: Transit) -> None:
        """Wake the task waiting on ``transit`` (just terminated by its owner)
        with a closed outcome now, without waiting for the core's report;
        the resource stays pinned until that report arrives.

        The completions already queued are collected first: a request the
        core completed before its owner's end gets its own completion,
        which carries what it transferred (descriptors accepted or
        received, bytes of a file sent) for the waiter to settle (close,
        count).  Woken with a closed outcome instead, the waiter would
        never see them, and the descriptors would leak.  Only a request
        whose system call was in flight at the termination is woken here:
        the core finishes it when the call returns, as its owner's end, and
        closes what it accepted or received meanwhile."""
        token = transit._token
        if token not in self.parked:
            return
        self._collect()
        future = self.parked.get(token)
        if future is not None:
            self.parked[token] = None
            if not future.done():
                future.set_result(Completion(token, OWNER_TERMINATED, 0, 0))

    # Every request's sequence.  The checkpoint comes first, as anyio's own
    # streams take theirs: a cancellation pending for the task is delivered
    # there, before anything is transferred (and before the memory is
    # exported), and the other tasks run.  A request that then completes at
    # once returns without another yield (nothing is awaited between the
    # transfer and its result, so nothing is lost); one that waits parks
    # (_wait).  The sequence is spelled out in each kind of request rather
    # than shared through a coroutine: a coroutine level is time on every
    # transfer.

    async def transfer(
        self,
        transit: Transit,
        memory: Any,
        writable: bool,
        orphan: _Orphan,
        numbers: Any = None,
        timeout: float | None = None,
    ) -> Result:
        """One request with ``memory`` (and a Descriptors request's
        ``numbers``), and its result.  A checkpoint.

        ``orphan`` receives the result of a request whose transfer
        happened although the task was cancelled (now, or when it arrives).
        With a ``timeout``, a request that waits waits at most that long
        (``TimeoutError``, as a cancellation); one that completes at once
        costs no deadline.
        """
        if transit._token in self.late:
            await self.settle(transit)
        await asyncio.sleep(0)
        if self.closed:
            raise anyio.ClosedResourceError("the event loop's Traffic is closed")
        done = self.requests.submit(transit, memory, writable, _REFUSALS, numbers)
        if done is not None:
            return done
        return await self._wait(transit, orphan, timeout)

    async def transfer_pinned(
        self, transit: Transit, pin: Any, size: int, keep: object, orphan: _Orphan
    ) -> Result:
        """:meth:`transfer` with traffic's own long-lived export ``pin``."""
        if transit._token in self.late:
            await self.settle(transit)
        await asyncio.sleep(0)
        if self.closed:
            raise anyio.ClosedResourceError("the event loop's Traffic is closed")
        done = self.requests.submit_pinned(transit, pin, size, keep, _REFUSALS)
        if done is not None:
            return done
        return await self._wait(transit, orphan)

    async def receive(
        self, transit: Transit, size: int, orphan: _Orphan, timeout: float | None = None
    ) -> Result:
        """A receive of up to ``size`` bytes into memory the core provides
        (the loop's scratch at once, an allocation when data arrives); the
        result's ``data`` holds the bytes.  ``timeout`` as for :meth:`transfer`."""
        if transit._token in self.late:
            await self.settle(transit)
        await asyncio.sleep(0)
        if self.closed:
            raise anyio.ClosedResourceError("the event loop's Traffic is closed")
        done = self.requests.receive(transit, size, _REFUSALS)
        if done is not None:
            return done
        return await self._wait(transit, orphan, timeout)

    async def _wait(
        self, transit: Transit, orphan: _Orphan, timeout: float | None = None
    ) -> Result:
        """The completion of the transit's request, which waits (at most
        ``timeout`` seconds if given: then ``TimeoutError``)."""
        future: asyncio.Future[Completion] = self.loop.create_future()
        self.parked[transit._token] = future
        if timeout is None:
            return await self._claim(transit, future, orphan)
        with anyio.fail_after(timeout):
            return await self._claim(transit, future, orphan)

    async def _claim(
        self, transit: Transit, future: asyncio.Future[Completion], orphan: _Orphan
    ) -> Result:
        """``future``'s completion; cancelled, the request is withdrawn (or
        its late completion goes to ``orphan``) before the cancellation
        propagates (as a ``TimeoutError`` when a deadline of _wait's)."""
        try:
            return await future
        except asyncio.CancelledError:
            self._cancelled(transit, future, orphan)
            raise

    async def transfer_file(self, transit: Transit, region: _files.Region) -> Result:
        """One file request, and its result.  A checkpoint.

        Cancelled while it waits, the request is withdrawn; if the core is
        inside its system call, the cancellation waits (shielded) for the
        completion, which comes promptly: either way ``region.moved``
        holds what moved when the cancellation propagates.
        """
        token = transit._token
        if token in self.late:
            await self.settle(transit)
        await asyncio.sleep(0)
        if self.closed:
            raise anyio.ClosedResourceError("the event loop's Traffic is closed")
        done = self.requests.submit_file(transit, region.fd, region.offset, region.count, _REFUSALS)
        region.submitted = True  # the core took it: from now on the position is settled
        if done is not None:
            return done

        def moved(done: Result) -> None:
            region.moved = done[3]

        future: asyncio.Future[Completion] = self.loop.create_future()
        self.parked[token] = future
        try:
            return await future
        except asyncio.CancelledError:
            self._cancelled(transit, future, moved)
            if token in self.late:
                with anyio.CancelScope(shield=True):
                    await self.settle(transit)
            raise

    async def settle(self, transit: Transit) -> None:
        """Wait until the completion of ``transit``'s cancelled request has
        arrived (promptly: the core is in or just out of the system call)
        and been handed to its orphan handler.  Waiting with asyncio.wait
        leaves that future alone if this task is cancelled meanwhile."""
        late = self.late.get(transit._token)
        if late is not None:
            await asyncio.wait((late,))

    def _cancelled(
        self, transit: Transit, future: asyncio.Future[Completion], orphan: _Orphan
    ) -> None:
        token = transit._token
        if future.done() and not future.cancelled():
            orphan(future.result())  # completed before the cancellation reached the task
            return
        completion = self.unclaimed.pop(token, None)
        if completion is not None:
            orphan(completion)  # collected after the cancellation
            return
        code, transferred = self.requests.withdraw(transit)
        if code != COMPLETING:
            # Withdrawn (nothing more will happen), or the Traffic is gone.
            self.parked.pop(token, None)
            if code == WITHDRAWN and transferred:
                orphan((token, WITHDRAWN, 0, transferred, None, 0))  # what had moved
            return
        # Inside the system call, or done and not yet collected: the
        # resource stays pinned, and the completion goes to ``orphan`` on
        # arrival.
        late: asyncio.Future[Completion] = self.loop.create_future()
        self.parked[token] = late
        self.late[token] = late

        def arrived(done: asyncio.Future[Completion]) -> None:
            if self.late.get(token) is done:
                del self.late[token]
            orphan(done.result())

        late.add_done_callback(arrived)


_LOOPS: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, weakref.ReferenceType[_AsyncioParking]
] = weakref.WeakKeyDictionary()


def _parking() -> _Parking:
    """The parking of the running backend, created on first use."""
    name = sniffio.current_async_library()
    if name == "trio":
        return _TrioParking()
    if name == "asyncio":
        return _AsyncioParking.current()
    raise RuntimeError(f"traffic's anyio streams run on asyncio or trio, not {name}")


def current_traffic() -> Traffic:
    """The running event loop's (asyncio) or trio run's Traffic, started on first use."""
    return _parking().traffic


def close_traffic(loop: asyncio.AbstractEventLoop | None = None) -> None:
    """Close ``loop``'s Traffic now (default: the running loop): its streams
    and listeners become closed, the cycle thread is joined.

    Only needed for loops closed by hand without cancelling their tasks
    first; ``asyncio.run`` and ``anyio.run`` close it themselves.  Nothing
    happens on a loop without a Traffic.
    """
    if loop is None:
        loop = asyncio.get_running_loop()
    if not isinstance(loop, asyncio.AbstractEventLoop):
        raise TypeError(f"close_traffic() takes an asyncio event loop, not {type(loop).__name__}")
    ref = _LOOPS.get(loop)
    parking = ref() if ref is not None else None
    if parking is not None:
        parking.close()


# Errors


def _broken(error: int) -> NoReturn:
    raise _broken_error(error)


def _broken_error(error: int) -> anyio.BrokenResourceError:
    """anyio's ``BrokenResourceError``, from the ``OSError`` of ``error``."""
    exc = anyio.BrokenResourceError()
    exc.__cause__ = OSError(error, os.strerror(error))
    return exc


def _busy_send() -> anyio.BusyResourceError:
    return anyio.BusyResourceError("writing to")


def _busy_receive() -> anyio.BusyResourceError:
    return anyio.BusyResourceError("reading from")


# Sockets


class RawSocketView(SocketView):
    """``SocketAttribute.raw_socket`` of traffic's streams and listeners.

    A view of a descriptor the core owns: it never closes it, and raises
    ``OSError(EBADF)`` once the core has.  Beside the trio layer's
    ``SocketView`` methods it answers ``gettimeout()`` (``0.0``: the
    socket is non-blocking, as anyio's are) and ``getblocking()``, and
    ``setsockopt`` takes its arguments as ``socket.socket``'s does (where
    anyio's raw socket is one): ``(level, option, value)`` or ``(level,
    option, None, length)``, anything else a ``TypeError``.
    """

    __slots__ = ()

    def setsockopt(self, *args: Any) -> None:
        self._call("setsockopt", *args)

    def gettimeout(self) -> float:
        return 0.0

    def getblocking(self) -> bool:
        return False


def _take(sock_or_fd: socket.socket | int) -> int:
    """The descriptor of a socket object (detached) or an integer."""
    if isinstance(sock_or_fd, int):
        return sock_or_fd
    if isinstance(sock_or_fd, socket.socket):
        if sock_or_fd.fileno() < 0:
            raise anyio.ClosedResourceError
        return sock_or_fd.detach()
    raise TypeError(f"expected an int or socket, got {type(sock_or_fd).__qualname__} instead")


class TrafficSocketStream(anyio.abc.SocketStream):
    """A connected stream socket whose transfers traffic's core performs.

    Made by :func:`connect_tcp`, a listener's ``accept()`` or
    :meth:`from_socket`.  Semantics are anyio's ``SocketStream``'s; see the
    module's text for cancellation and ``raw_socket``.
    """

    _parking: _Parking
    _receiver: Octets
    _sender: Octets

    def __init__(
        self,
        fd: int,
        identity: tuple[socket.AddressFamily, socket.SocketKind, int] | None = None,
        nodelay: bool = True,
    ) -> None:
        """Take ownership of the connected stream socket ``fd`` (also on failure).

        ``identity`` is (family, type, proto) when the caller knows it (a
        listener's accepted connections have its own), sparing the probe;
        ``nodelay`` False when ``fd`` already has TCP_NODELAY (inherited
        from a listener that has it)."""
        try:
            family, kind, proto = identity or socket_identity(fd)
            if kind != socket.SOCK_STREAM:
                raise ValueError(f"socket type mismatch: expected SOCK_STREAM, got {kind.name}")
            parking = _parking()
        except BaseException:
            os.close(fd)
            raise
        # AF_UNIX: a Descriptors pair for bytes and descriptors alike (a
        # kernel point carries one transit per polarity; see send_fds).
        kinds = Descriptors if family == socket.AF_UNIX else Octets
        receiver, sender = kinds._pair(fd)  # owns fd, also if it fails
        parking.traffic.acquire(receiver)
        parking.traffic.acquire(sender)
        self._parking = parking
        self._receiver = receiver
        self._sender = sender
        self._view = RawSocketView(receiver, family, kind, proto)
        self._closed = False
        # One task per direction (anyio's ResourceGuard), kept as two bare
        # flags: send and receive test and set them inline (the hot path),
        # where a guard would be two Python calls per transfer.
        self._receiving = False
        self._sending = False
        # Bytes (and descriptors, AF_UNIX) whose receive was cancelled after they arrived.
        self._pending = bytearray()
        self._pending_fds: list[int] = []
        if nodelay and wants_nodelay(family):
            set_nodelay(self._view)

    @classmethod
    async def from_socket(cls, sock_or_fd: socket.socket | int) -> TrafficSocketStream:
        """Wrap a connected stream socket (or its descriptor), taking ownership.

        Raises ``ValueError`` for a socket that is not a connected
        ``SOCK_STREAM`` socket (the socket is then left with the caller).
        """
        check_socket(sock_or_fd, connected=True)
        await anyio.lowlevel.checkpoint()
        return cls(_take(sock_or_fd))

    @property
    def _raw_socket(self) -> socket.socket:
        return self._view  # type: ignore[return-value]  # a view; see RawSocketView

    def _known_readable(self) -> bool | None:
        """Whether a receive would return at once, where traffic knows it
        without asking the kernel: True for a closed stream, bytes kept
        from a cancelled receive (or on their way to it), or an input that
        already ended; None when only the kernel knows (nothing of the
        stream's own is waiting: poll its descriptor)."""
        if self._closed or self._pending:
            return True
        receiver = self._receiver
        if receiver._token in self._parking.late or receiver.terminated:
            return True
        return None

    def _stash(self, done: Result) -> None:
        """Keep the bytes of a receive that was cancelled after it happened."""
        _, outcome, _, _, data, _ = done
        if outcome == DONE and not self._closed and data:
            self._pending += data

    def receive(self, max_bytes: int = DEFAULT_RECEIVE_SIZE) -> Coroutine[Any, Any, bytes]:
        """Receive at most ``max_bytes`` bytes (at least one).  Awaited, as anyio's.

        Raises ``ValueError`` for ``max_bytes < 1``, ``anyio.EndOfStream``
        once the peer has sent EOF, ``anyio.ClosedResourceError`` after
        :meth:`aclose` (also when it closes the stream during the receive),
        ``anyio.BrokenResourceError`` (from the ``OSError``) if the
        connection broke, ``anyio.BusyResourceError`` if another task is
        receiving.  Cancelled after the bytes arrived, it keeps them for the
        next receive.  ``TypeError`` for a ``max_bytes`` that is not an int.
        """
        # A plain method returning the coroutine, as __anext__ does: the
        # receive is the hot path, and a coroutine level costs time on every
        # resumption (anyio's __anext__ awaits receive(), which would await
        # this).
        return self._receive(max_bytes, anyio.EndOfStream, None)

    def __anext__(self) -> Coroutine[Any, Any, bytes]:
        """The next chunk of ``async for``: :meth:`receive`, ending at EOF."""
        return self._receive(DEFAULT_RECEIVE_SIZE, StopAsyncIteration, None)

    # protected: on trio a KeyboardInterrupt waits for the next checkpoint
    # rather than strand a request in the core (see _requests.protected).
    @protected
    async def _receive(self, max_bytes: int, end: type[Exception], timeout: float | None) -> bytes:
        """:meth:`receive`, raising ``end`` at EOF.  With a ``timeout``, a
        receive that has to wait for data waits at most that long and
        raises ``TimeoutError`` (nothing is lost: as a cancellation); one
        that finds data at once costs no deadline (httpcore's reads: see
        traffic.integrations)."""
        if not isinstance(max_bytes, int):
            raise TypeError(f"max_bytes must be an integer, not {type(max_bytes).__name__}")
        if max_bytes < 1:
            raise ValueError("max_bytes must be a positive integer")
        if self._receiving:
            raise _busy_receive()
        self._receiving = True
        try:
            if self._closed:
                raise anyio.ClosedResourceError
            if self._parking.late:
                # A cancelled receive's bytes may still be on their way: they
                # come before anything received after them.
                await self._parking.settle(self._receiver)
                if self._closed:
                    raise anyio.ClosedResourceError
            pending = self._pending
            if pending:
                await anyio.lowlevel.checkpoint()
                if self._closed:
                    raise anyio.ClosedResourceError
                chunk = bytes(pending[:max_bytes])
                del pending[:max_bytes]
                return chunk
            # No buffer of the stream's own: tried at once into the run's
            # scratch, and if it waits the core allocates one when data
            # arrives, so a waiting receive holds no memory.
            size = min(max_bytes, DEFAULT_RECEIVE_SIZE)
            parking = self._parking
            on_trio = parking.trio
            if on_trio is not None:
                # The park sequence of the trio parking's transfer, spelled
                # out as in TrafficStream.receive_some: a coroutine level is
                # time on every receive (docs/benchmark.rst).
                await _checkpoint_if_cancelled()
                receiver = self._receiver
                done = on_trio.requests.receive(receiver, size, _REFUSALS)
                if done is None:
                    if timeout is None:
                        done = await _wait_task_rescheduled(_Parked(on_trio.delivery, receiver))
                    else:
                        done = await _trio_wait_within(on_trio.delivery, receiver, timeout)
                else:
                    await _cancel_shielded_checkpoint()
            else:
                # Not trio: the asyncio parking, whose wait takes the deadline.
                asyncio_parking = cast(_AsyncioParking, parking)
                done = await asyncio_parking.receive(self._receiver, size, self._stash, timeout)
            if self._closed:
                raise anyio.ClosedResourceError
            _, outcome, error, _, data, _ = done
            if outcome == DONE and data is not None:
                return data  # bytes, from the scratch or the core
            if outcome == TERMINATED:
                if error:
                    _broken(error)
                raise end
            raise anyio.ClosedResourceError
        finally:
            self._receiving = False

    def send(self, item: bytes) -> Coroutine[Any, Any, None]:
        """Send all of ``item`` (any bytes-like object; not copied).  Awaited,
        as anyio's.

        Raises ``anyio.ClosedResourceError`` after :meth:`aclose` or
        :meth:`send_eof`, ``anyio.BrokenResourceError`` (from the
        ``OSError``) if the peer is gone, ``anyio.BusyResourceError`` if
        another task is sending, ``TypeError`` for an object that is not
        bytes-like.  Cancelled, it may have sent part of ``item`` (as
        anyio's own streams may); the stream should then be closed.
        """
        # A plain method returning the coroutine, as receive.
        return self._send(item, None)

    @protected
    async def _send(self, item: bytes, timeout: float | None) -> None:
        """:meth:`send`; with a ``timeout``, a send that has to wait for room
        waits at most that long (``TimeoutError``), as :meth:`_receive`."""
        if self._sending:
            raise _busy_send()
        self._sending = True
        try:
            if self._closed:
                raise anyio.ClosedResourceError
            check_buffer(item, False)  # not writable (positional: cheaper)
            parking = self._parking
            on_trio = parking.trio
            if on_trio is not None:
                # Spelled out as in _receive (and TrafficStream.send_all);
                # the memory is exported in submit, after the checkpoint.
                await _checkpoint_if_cancelled()
                sender = self._sender
                done = on_trio.requests.submit(sender, item, False, _REFUSALS)
                if done is None:
                    if timeout is None:
                        done = await _wait_task_rescheduled(_Parked(on_trio.delivery, sender))
                    else:
                        done = await _trio_wait_within(on_trio.delivery, sender, timeout)
                else:
                    await _cancel_shielded_checkpoint()
            else:
                asyncio_parking = cast(_AsyncioParking, parking)  # not trio
                done = await asyncio_parking.transfer(
                    self._sender, item, False, _ignore, None, timeout
                )
            if done[1] != DONE:  # the outcome
                _sent(done, self._closed)
        finally:
            self._sending = False

    @protected
    async def send_file(
        self, file: Any, *, offset: int | None = None, count: int | None = None
    ) -> int:
        """Send ``count`` bytes of ``file`` from ``offset`` (default: its
        position, to its end); return the bytes sent.  The core sends them
        itself (``sendfile(2)`` where the system has it).  In every
        outcome, cancellation included, the file's position ends just after
        the last byte sent.  The trio layer's :func:`traffic.send_file`
        says what ``file`` may be and what is refused before anything is
        sent (``ValueError``, ``TypeError``, ``io.UnsupportedOperation``).

        Raises :class:`~traffic.errors.FileEndedError` if the file was
        truncated while being sent, ``OSError`` if reading it failed (the
        stream is intact), else as :meth:`send`.
        """
        with claimed(self, "_sending", _busy_send):
            if self._closed:
                raise anyio.ClosedResourceError
            region = _files.send_region(file, offset, count)
            return await self._transfer_region(self._sender, region, sending=True)

    @protected
    async def receive_file(self, file: Any, *, count: int | None = None) -> int:
        """Write what arrives to ``file``, from its position, until ``count``
        bytes (None: until the peer ends the stream); return the bytes
        written (0 if the stream had ended: no ``EndOfStream``).  Bytes the
        stream already holds from a cancelled receive are written first.
        The file's position ends just after the last byte written, in every
        outcome.  A failure to write the file (``OSError``: ``ENOSPC``...)
        keeps the bytes it did not take for the next receive.
        """
        with claimed(self, "_receiving", _busy_receive):
            if self._closed:
                raise anyio.ClosedResourceError
            region = _files.receive_region(file, count)
            if self._parking.late:
                await self._parking.settle(self._receiver)
                if self._closed:
                    raise anyio.ClosedResourceError
            held = self._write_pending(region)
            if held and region.count == 0:
                await anyio.lowlevel.checkpoint()
                return held
            written = held + await self._transfer_region(self._receiver, region, sending=False)
            if self._closed:
                raise anyio.ClosedResourceError
            return written

    def _write_pending(self, region: _files.Region) -> int:
        """Write the bytes kept from a cancelled receive at the region's
        start, and move the region past them; return how many."""
        pending = self._pending
        written = 0
        try:
            while pending and written < region.count:
                chunk = pending[: region.count - written]
                if region.append:
                    n = os.write(region.fd, chunk)
                else:
                    n = os.pwrite(region.fd, chunk, region.offset + written)
                del pending[:n]
                written += n
        finally:
            if written:
                region.submitted = True
                region.settle(written)
        region.offset += written
        region.moved = 0
        region.submitted = False
        if region.count != _files.UNTIL_END:
            region.count -= written
        return written

    async def _transfer_region(self, transit: Octets, region: _files.Region, sending: bool) -> int:
        """Move the region and say how much moved; the file's position is
        settled after what moved in every outcome."""
        try:
            if region.count == 0:
                await anyio.lowlevel.checkpoint()  # nothing left to send
                return 0
            done = await self._parking.transfer_file(transit, region)
            region.moved = done[3]  # the bytes moved
        finally:
            region.settle()
        if done[1] != DONE and self._closed:
            raise anyio.ClosedResourceError
        return _files.conclude(done, region, sending, _broken_error, anyio.ClosedResourceError)

    async def send_eof(self) -> None:
        """Shut down the sending direction (half-close); receiving goes on.

        Idempotent.  Raises ``anyio.ClosedResourceError`` after :meth:`aclose`.
        """
        if self._closed:
            raise anyio.ClosedResourceError
        self._sender.terminate()
        await anyio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        """Close the stream; operations waiting on it raise
        ``anyio.ClosedResourceError``.  Idempotent; closes even when cancelled."""
        if not self._closed:
            self._closed = True
            self._pending.clear()
            self._receiver.terminate()
            self._sender.terminate()
            self._parking.wake(self._receiver)
            self._parking.wake(self._sender)
        await anyio.lowlevel.checkpoint()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"fd={self._receiver.fileno()}"
        return f"<traffic.anyio_backend.{type(self).__name__} {state}>"


def _sent(done: Result, closed: bool) -> None:
    """Nothing for a send that went out whole; else the exception it ended in."""
    _, outcome, error, _, _, _ = done
    if outcome == DONE:
        return
    if closed or outcome != TERMINATED:
        raise anyio.ClosedResourceError
    _broken(error or errno.EPIPE)


def _ignore(done: Result) -> None:
    """A cancelled send's completion: what went out is out."""


class TrafficUNIXSocketStream(TrafficSocketStream, anyio.abc.UNIXSocketStream):
    """:class:`TrafficSocketStream` over an ``AF_UNIX`` socket, with
    descriptor passing (:meth:`send_fds`, :meth:`receive_fds`).

    Its transits are a :class:`~traffic.libkqueue.Descriptors` pair, used for
    bytes and descriptors alike (a kernel point carries one transit per
    direction): ``send()`` sends bytes with no descriptors, and descriptors
    arriving during a ``receive()`` are closed, never leaked.
    """

    @classmethod
    async def from_socket(cls, sock_or_fd: socket.socket | int) -> TrafficUNIXSocketStream:
        """Wrap a connected ``AF_UNIX`` stream socket (or its descriptor), taking ownership."""
        check_socket(sock_or_fd, connected=True, family=socket.AF_UNIX)
        await anyio.lowlevel.checkpoint()
        return cls(_take(sock_or_fd))

    @protected
    async def send_fds(self, message: bytes, fds: Collection[int | IOBase]) -> None:
        """Send ``message`` with the descriptors ``fds`` (ints or objects with
        ``fileno()``), as anyio's.

        The descriptors are duplicated before anything is sent: the caller's
        stay open.  Raises ``ValueError`` for an empty message or no
        descriptors (as anyio), ``TypeError`` for an entry that is not a
        descriptor, ``OSError(EBADF)`` for one that is not open, and what
        :meth:`send` raises.  Cancelled, it sent nothing (the duplicates are
        closed) or sent all of it.
        """
        if not message:
            raise ValueError("message must not be empty")
        if not fds:
            raise ValueError("fds must not be empty")
        numbers = descriptor_array(fds)
        with claimed(self, "_sending", _busy_send):
            if self._closed:
                raise anyio.ClosedResourceError
            check_descriptor_message(check_buffer(message, writable=False), len(numbers))
            done = await self._parking.transfer(self._sender, message, False, _ignore, numbers)
            _sent(done, self._closed)

    @protected
    async def receive_fds(self, msglen: int, maxfds: int) -> tuple[bytes, list[int]]:
        """Receive up to ``msglen`` bytes and up to ``maxfds`` descriptors, as anyio's.

        The descriptors (close-on-exec) are the caller's; more than
        ``maxfds`` arriving are closed.  ``ValueError`` for bad arguments
        (anyio's checks; and ``msglen`` 0, which anyio allows: descriptors
        always travel with a byte), ``anyio.EndOfStream`` at EOF,
        ``anyio.ClosedResourceError`` after :meth:`aclose` (what arrived
        meanwhile is closed), ``anyio.BrokenResourceError`` if the
        connection broke.  Cancelled after the transfer happened (asyncio),
        the bytes and descriptors are kept for the next call.  ``msglen`` is
        clamped to 64 KiB and ``maxfds`` to ``MAX_RECEIVE_FDS`` (4096).
        """
        if not isinstance(msglen, int) or msglen < 0:
            raise ValueError("msglen must be a non-negative integer")
        if not isinstance(maxfds, int) or maxfds < 1:
            raise ValueError("maxfds must be a positive integer")
        if msglen == 0:
            raise ValueError("msglen must be at least 1: descriptors travel with a byte")
        # Clamped, as receive()'s max_bytes: what does not fit waits in the kernel.
        msglen = min(msglen, DEFAULT_RECEIVE_SIZE)
        maxfds = min(maxfds, MAX_RECEIVE_FDS)
        with claimed(self, "_receiving", _busy_receive):
            if self._closed:
                raise anyio.ClosedResourceError
            if self._parking.late:
                await self._parking.settle(self._receiver)
                if self._closed:
                    raise anyio.ClosedResourceError
            if self._pending or self._pending_fds:
                await anyio.lowlevel.checkpoint()
                if self._closed:
                    raise anyio.ClosedResourceError
                chunk = bytes(self._pending[:msglen])
                del self._pending[:msglen]
                taken = self._pending_fds[:maxfds]
                del self._pending_fds[:maxfds]
                return chunk, taken
            buffer = bytearray(msglen)
            numbers = array("i", bytes(4 * maxfds))

            def keep(done: Result) -> None:
                # A cancelled receive whose transfer happened: nothing is lost.
                _, outcome, _, transferred, _, descriptors = done
                if outcome != DONE:
                    return
                received = numbers[:descriptors].tolist()
                if self._closed:
                    for fd in received:
                        os.close(fd)
                    return
                self._pending += buffer[:transferred]
                self._pending_fds.extend(received)

            done = await self._parking.transfer(self._receiver, buffer, True, keep, numbers)
            _, outcome, error, transferred, _, descriptors = done
            if self._closed:
                if outcome == DONE:
                    for fd in numbers[:descriptors]:
                        os.close(fd)
                raise anyio.ClosedResourceError
            if outcome == DONE:
                return bytes(buffer[:transferred]), numbers[:descriptors].tolist()
            if outcome == TERMINATED:
                if error:
                    _broken(error)
                raise anyio.EndOfStream
            raise anyio.ClosedResourceError

    async def aclose(self) -> None:
        """Close the stream; descriptors kept from a cancelled
        :meth:`receive_fds` are closed too."""
        pending, self._pending_fds = self._pending_fds, []
        for fd in pending:
            os.close(fd)
        await super().aclose()


class TrafficSocketListener(anyio.abc.SocketListener):
    """A listening stream socket whose accepts traffic's core performs.

    ``accept()`` returns :class:`TrafficSocketStream`\\ s (``TCP_NODELAY``
    set, as anyio does); ``serve()`` is anyio's, one checkpoint per batch.
    """

    _stream_class: type[TrafficSocketStream] = TrafficSocketStream

    def __init__(self, fd: int) -> None:
        """Take ownership of the listening socket ``fd`` (also on failure)."""
        try:
            family, kind, proto = socket_identity(fd)
            if kind != socket.SOCK_STREAM:
                raise ValueError(f"socket type mismatch: expected SOCK_STREAM, got {kind.name}")
            parking = _parking()
            transit = Sockets.from_fd(fd)
        except BaseException:
            os.close(fd)
            raise
        parking.traffic.acquire(transit)
        self._parking = parking
        self._transit = transit
        self._view = RawSocketView(transit, family, kind, proto)
        self._identity = (family, kind, proto)
        self._closed = False
        self._accept_guard = Guard(lambda: anyio.BusyResourceError("accepting connections from"))
        self._accepted = AcceptQueue(self._view)

    @classmethod
    async def from_socket(cls, sock_or_fd: socket.socket | int) -> TrafficSocketListener:
        """Wrap a bound, listening stream socket (or its descriptor), taking ownership."""
        check_socket(sock_or_fd, bound=True)
        await anyio.lowlevel.checkpoint()
        fd = _take(sock_or_fd)
        if _identity_family(fd) == socket.AF_UNIX:
            return TrafficUNIXSocketListener(fd)
        return cls(fd)

    @property
    def _raw_socket(self) -> socket.socket:
        return self._view  # type: ignore[return-value]  # a view; see RawSocketView

    def _stash(self, done: Result) -> None:
        """Keep the connections of an accept that was cancelled after it happened."""
        _, outcome, _, transferred, _, _ = done
        if outcome == DONE:
            if self._closed:
                self._accepted.discard(transferred)
            else:
                self._accepted.accepted(transferred)

    async def accept(self) -> TrafficSocketStream:
        """Accept a connection.

        Raises ``anyio.ClosedResourceError`` after :meth:`aclose` (also
        when it closes the listener during the accept),
        ``anyio.BusyResourceError`` if another task is accepting, ``OSError``
        (EMFILE, ENFILE, ENOBUFS, ENOMEM) when the process or system is out
        of resources (the listener stays intact: back off and retry),
        ``anyio.BrokenResourceError`` (from the ``OSError``) if the kernel
        ended the listening socket.
        """
        with self._accept_guard:
            await self._fill()
            return self._stream()

    async def serve(
        self,
        handler: Callable[[anyio.abc.SocketStream], Any],
        task_group: anyio.abc.TaskGroup | None = None,
    ) -> None:
        """anyio's ``serve()``: a task running ``handler(stream)`` per
        connection, in ``task_group`` or an internal one; never returns.

        Every batch of connections the core accepted costs one checkpoint,
        not one per connection.  The handler closes its stream, as with
        anyio's own listeners.  Out of descriptors or memory (EMFILE,
        ENFILE, ENOBUFS, ENOMEM) it logs to the ``traffic.serve_listeners``
        logger and accepts again after 100 ms, as the trio layer's
        :func:`~traffic.trio_integration.serve_listeners` (and trio's own)
        does, where anyio's ``serve()`` would end with the ``OSError``.
        """
        async with contextlib.AsyncExitStack() as stack:
            if task_group is None:
                task_group = await stack.enter_async_context(anyio.create_task_group())
            while True:
                try:
                    streams = await self._accept_all()
                except OSError as exc:
                    # Out of descriptors or memory: the listener is intact;
                    # back off and accept again, as the trio layer's
                    # serve_listeners (anyio's own serve() would end).
                    if not accept_backoff(exc):
                        raise
                    await anyio.sleep(ACCEPT_BACKOFF)
                    continue
                _start_handlers(task_group, handler, streams)

    async def _accept_all(self) -> list[TrafficSocketStream]:
        """Every connection accepted so far, at least one: :meth:`accept`
        for a whole batch with one checkpoint (:meth:`serve`)."""
        with self._accept_guard:
            await self._fill()
            streams = []
            while self._accepted:
                # One at a time: if making a stream fails, the descriptors
                # not taken yet stay queued.
                streams.append(self._stream())
            return streams

    @protected
    async def _fill(self) -> None:
        """Make sure a connection is queued in ``_accepted``.  A checkpoint."""
        if self._closed:
            raise anyio.ClosedResourceError
        queue = self._accepted
        if queue:
            await anyio.lowlevel.checkpoint()
            if self._closed:
                raise anyio.ClosedResourceError
            return
        done = await self._parking.transfer_pinned(
            self._transit, queue.pin, queue.size, queue, self._stash
        )
        _, outcome, error, _, _, _ = done
        if outcome == DONE:
            self._stash(done)
        if self._closed:
            raise anyio.ClosedResourceError
        if outcome == FAULT:
            raise OSError(error, f"accept: {os.strerror(error)}")
        if outcome == TERMINATED:
            _broken(error or errno.EINVAL)
        if outcome != DONE:
            raise anyio.ClosedResourceError

    def _stream(self) -> TrafficSocketStream:
        """The stream of the next accepted descriptor (closed if that fails)."""
        fd, nodelay = self._accepted.popleft()
        return self._stream_class(fd, self._identity, nodelay)

    async def aclose(self) -> None:
        """Stop listening; connections accepted but not handed out are closed.
        Idempotent; closes even when cancelled."""
        if not self._closed:
            self._closed = True
            self._transit.terminate()
            self._parking.wake(self._transit)
            self._accepted.close()
        await anyio.lowlevel.checkpoint()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"fd={self._transit.fileno()}"
        return f"<traffic.anyio_backend.{type(self).__name__} {state}>"


def _start_handlers(
    task_group: anyio.abc.TaskGroup,
    handler: Callable[[anyio.abc.SocketStream], Any],
    streams: list[TrafficSocketStream],
) -> None:
    """A handler task per stream; the list is emptied.  The serving loop
    holds no stream while it waits for the next batch: a stream it held
    would outlive its handler (its transits alive, if closed) for as long
    as no connection comes."""
    for stream in streams:
        task_group.start_soon(handler, stream)
    streams.clear()


class TrafficUNIXSocketListener(TrafficSocketListener):
    """:class:`TrafficSocketListener` over an ``AF_UNIX`` socket; accepts
    :class:`TrafficUNIXSocketStream`\\ s."""

    _stream_class = TrafficUNIXSocketStream


def _identity_family(fd: int) -> socket.AddressFamily:
    return socket_identity(fd)[0]


def check_socket(
    sock_or_fd: socket.socket | int,
    kind: socket.SocketKind = socket.SOCK_STREAM,
    *,
    connected: bool = False,
    bound: bool = False,
    family: socket.AddressFamily = socket.AF_UNSPEC,
) -> None:
    """anyio's checks of a ``from_socket`` argument, in anyio's order and words.

    ``TypeError`` for neither an int nor a socket; ``ValueError`` for a
    descriptor that is not a socket (or, where the socket must be connected
    or bound, one that cannot be looked at, as a closed one), and for a
    socket that is not connected, not bound, or of another family or kind.
    :class:`~traffic.errors.OutOfRangeError` (a ``ValueError``, and the
    ``OverflowError`` anyio lets through) for a descriptor number beyond a
    C ``int``.  Leaves the socket non-blocking and with its caller.
    """
    if isinstance(sock_or_fd, int) and sock_or_fd > MAX_DESCRIPTOR:
        raise OutOfRangeError(f"{sock_or_fd} is beyond any descriptor number")
    if isinstance(sock_or_fd, int):
        try:
            sock = socket.socket(fileno=sock_or_fd)
        except OSError as exc:
            if exc.errno == errno.ENOTSOCK:
                raise ValueError("the file descriptor does not refer to a socket") from exc
            if connected:
                raise ValueError("the socket must be connected") from exc
            if bound:
                raise ValueError("the socket must be bound to a local address") from exc
            raise
    elif isinstance(sock_or_fd, socket.socket):
        sock = sock_or_fd
    else:
        raise TypeError(f"expected an int or socket, got {type(sock_or_fd).__qualname__} instead")
    try:
        if connected:
            try:
                sock.getpeername()
            except OSError as exc:
                raise ValueError("the socket must be connected") from exc
        if bound:
            try:
                name = sock.getsockname()
                bound_to = name[1] if sock.family in (socket.AF_INET, socket.AF_INET6) else name
            except OSError:
                bound_to = None
            if not bound_to:
                raise ValueError("the socket must be bound to a local address")
        if family != socket.AF_UNSPEC and sock.family != family:
            raise ValueError(
                f"address family mismatch: expected {family.name}, got {sock.family.name}"
            )
        if sock.type != kind:
            raise ValueError(f"socket type mismatch: expected {kind.name}, got {sock.type.name}")
        sock.setblocking(False)
    finally:
        if isinstance(sock_or_fd, int):
            sock.detach()


# Connecting


async def resolve_port(port: object, kind: int = socket.SOCK_STREAM) -> int:
    """A port as anyio's factories take it, as an int in 0-65535.

    An int is checked (``TypeError`` for another type,
    :class:`~traffic.errors.OutOfRangeError` outside the range); a ``str``
    is a port number or a service name, which the resolver turns into a
    port, as it does for anyio (``socket.gaierror`` for an unknown name).
    A number outside the range is refused as a str too: the resolver would
    wrap it to the port modulo 65536, a connection to the wrong port.
    """
    if isinstance(port, str):
        if port.isascii() and port.isdigit():  # int() takes every such string
            return check_port(int(port))
        infos = await anyio.getaddrinfo(None, port, type=kind)
        return int(infos[0][4][1])
    return check_port(port)


async def _connect(family: int, address: Any, local_address: Any = None) -> socket.socket:
    """A connected non-blocking socket; the caller owns it."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        if family != socket.AF_UNIX:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if local_address:
            sock.bind(local_address)
        while True:
            try:
                sock.connect(address)
            except BlockingIOError:
                # TCP: in progress; AF_UNIX: the listener's backlog is full.
                await anyio.wait_writable(sock)
                if family == socket.AF_UNIX:
                    continue
                error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if error:
                    raise OSError(error, f"Connect call failed {address!r}") from None
            break
    except BaseException:
        sock.close()
        raise
    return sock


async def _connect_stream(
    family: int, address: Any, local_address: Any = None
) -> TrafficSocketStream:
    sock = await _connect(family, address, local_address)
    fd = sock.detach()
    if family == socket.AF_UNIX:
        return TrafficUNIXSocketStream(fd)
    return TrafficSocketStream(fd)


async def connect_tcp(
    remote_host: IPAddressType,
    remote_port: int,
    *,
    local_host: IPAddressType | None = None,
    local_port: int | None = None,
    tls: bool = False,
    ssl_context: ssl.SSLContext | None = None,
    tls_standard_compatible: bool = True,
    tls_hostname: str | None = None,
    happy_eyeballs_delay: float = 0.25,
) -> anyio.abc.SocketStream | TLSStream:
    """Connect to a host using TCP: ``anyio.connect_tcp``, with traffic's stream.

    Happy eyeballs as anyio's (RFC 6555, stateless: an IPv6 address first
    if there is one, the next attempt started after
    ``happy_eyeballs_delay`` seconds).  With ``tls``, ``ssl_context`` or
    ``tls_hostname``, the stream is wrapped in anyio's ``TLSStream`` after
    the handshake, as anyio does.

    Raises ``OSError("All connection attempts failed")`` chained to the
    attempts' error(s) (an ``ExceptionGroup`` for several), the
    resolver's ``socket.gaierror``, ``ssl.SSLError`` if the handshake
    fails.  Ports are ints or, as for anyio, strs the resolver turns into
    ports (:func:`resolve_port`); one outside 0-65535 raises
    :class:`~traffic.errors.OutOfRangeError` (a ``ValueError`` and an
    ``OverflowError``) before any attempt, where anyio's attempts raise
    ``OverflowError`` or, on uvloop, connect to the port modulo 65536.
    """
    remote_port = await resolve_port(remote_port)
    if local_port is not None:
        local_port = await resolve_port(local_port)
    connected: TrafficSocketStream | None = None
    oserrors: list[OSError] = []

    async def try_connect(family: int, host: str, event: anyio.Event) -> None:
        nonlocal connected
        try:
            stream = await _connect_stream(family, (host, remote_port), local_address)
        except OSError as exc:
            oserrors.append(exc)
            return
        else:
            if connected is None:
                connected = stream
                tg.cancel_scope.cancel()
            else:
                await stream.aclose()
        finally:
            event.set()

    local_address: IPSockAddrType | None = None
    family: int = socket.AF_UNSPEC
    if local_host:
        gai_res = await anyio.getaddrinfo(str(local_host), local_port)
        family, *_, local_address = gai_res[0]

    target_host = str(remote_host)
    try:
        addr_obj = ip_address(remote_host)
    except ValueError:
        addr_obj = None

    target_addrs: list[tuple[int, str]]
    if addr_obj is not None:
        if isinstance(addr_obj, IPv6Address):
            target_addrs = [(socket.AF_INET6, addr_obj.compressed)]
        else:
            target_addrs = [(socket.AF_INET, addr_obj.compressed)]
    else:
        gai_res = await anyio.getaddrinfo(
            target_host, remote_port, family=family, type=socket.SOCK_STREAM
        )
        # The first address an IPv6 one (if any), the second an IPv4 one.
        v6_found = v4_found = False
        target_addrs = []
        for af, *_, sa in gai_res:
            if af == socket.AF_INET6 and not v6_found:
                v6_found = True
                target_addrs.insert(0, (af, sa[0]))
            elif af == socket.AF_INET and not v4_found and v6_found:
                v4_found = True
                target_addrs.insert(1, (af, sa[0]))
            else:
                target_addrs.append((af, sa[0]))

    try:
        async with anyio.create_task_group() as tg:
            for target_family, addr in target_addrs:
                event = anyio.Event()
                tg.start_soon(try_connect, target_family, addr, event)
                with anyio.move_on_after(happy_eyeballs_delay):
                    await event.wait()

        if connected is None:
            cause = (
                oserrors[0]
                if len(oserrors) == 1
                else ExceptionGroup("multiple connection attempts failed", oserrors)
            )
            raise OSError("All connection attempts failed") from cause
    except BaseException:
        if connected is not None:
            await anyio.aclose_forcefully(connected)
        raise
    finally:
        oserrors.clear()

    if tls or tls_hostname or ssl_context:
        try:
            return await TLSStream.wrap(
                connected,
                server_side=False,
                hostname=tls_hostname or str(remote_host),
                ssl_context=ssl_context,
                standard_compatible=tls_standard_compatible,
            )
        except BaseException:
            await anyio.aclose_forcefully(connected)
            raise

    return connected


async def connect_unix(
    path: str | bytes | os.PathLike[Any],
    kind: Literal[socket.SocketKind.SOCK_STREAM] = socket.SOCK_STREAM,
) -> TrafficUNIXSocketStream:
    """Connect to the UNIX stream socket at ``path``: ``anyio.connect_unix``.

    Raises ``OSError`` (``FileNotFoundError``, ``ConnectionRefusedError``...)
    if the connection fails, ``NotImplementedError`` for ``SOCK_SEQPACKET``.
    """
    if kind != socket.SOCK_STREAM:
        raise NotImplementedError("traffic's streams are SOCK_STREAM only")
    await anyio.lowlevel.checkpoint()
    stream = await _connect_stream(socket.AF_UNIX, os.fspath(path))
    assert isinstance(stream, TrafficUNIXSocketStream)
    return stream


# Listening


async def create_tcp_listener(
    *,
    local_host: IPAddressType | None = None,
    local_port: int = 0,
    family: Literal[
        socket.AddressFamily.AF_UNSPEC,
        socket.AddressFamily.AF_INET,
        socket.AddressFamily.AF_INET6,
    ] = socket.AddressFamily.AF_UNSPEC,
    backlog: int = 65536,
    reuse_port: bool = False,
) -> MultiListener[anyio.abc.SocketStream]:
    """Create TCP listeners: ``anyio.create_tcp_listener``, with traffic's listeners.

    Without ``local_host``, one dual-stack IPv6 socket where the system has
    them, else one listener per address family; with port 0 all listeners
    share the port chosen.  Returns anyio's ``MultiListener``.

    Raises ``OSError`` if creating or binding a socket fails, ``TypeError``
    for a port that is not an int, ``ValueError`` for one outside 0-65535.
    """
    check_port(local_port)
    backlog = min(backlog, 65536)
    host = str(local_host) if local_host is not None else None

    def setup_raw_socket(
        fam: socket.AddressFamily, bind_addr: tuple[Any, ...], *, v6only: bool = True
    ) -> socket.socket:
        sock = socket.socket(fam)
        try:
            sock.setblocking(False)
            if fam == socket.AF_INET6:
                sock.setsockopt(IPPROTO_IPV6, socket.IPV6_V6ONLY, v6only)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if fam == socket.AF_INET6 and "%" in bind_addr[0]:
                addr, scope_id = bind_addr[0].split("%", 1)
                bind_addr = (addr, bind_addr[1], 0, int(scope_id))
            sock.bind(bind_addr)
            sock.listen(backlog)
        except BaseException:
            sock.close()
            raise
        return sock

    def listener(sock: socket.socket) -> TrafficSocketListener:
        return TrafficSocketListener(sock.detach())

    gai_res = await anyio.getaddrinfo(
        host, local_port, family=family, type=0, flags=socket.AI_PASSIVE | socket.AI_ADDRCONFIG
    )
    sockaddrs = sorted({res for res in gai_res if res[1] == socket.SOCK_STREAM})

    if (
        host is None
        and family == socket.AF_UNSPEC
        and socket.has_dualstack_ipv6()
        and any(fam == socket.AF_INET6 for fam, *_ in gai_res)
    ):
        sock = setup_raw_socket(socket.AF_INET6, ("::", local_port), v6only=False)
        return MultiListener([listener(sock)])

    errors: list[OSError] = []
    try:
        for _ in range(10):  # enough to absorb ephemeral port collisions
            listeners: list[anyio.abc.SocketListener] = []
            bound_port = local_port
            try:
                for fam, *_, sockaddr in sockaddrs:
                    sockaddr = (sockaddr[0], bound_port, *sockaddr[2:])
                    sock = setup_raw_socket(fam, sockaddr)
                    if local_port == 0 and len(gai_res) > 1:
                        bound_port = sock.getsockname()[1]
                    listeners.append(listener(sock))
            except BaseException as exc:
                for made in listeners:
                    await made.aclose()
                if (
                    isinstance(exc, OSError)
                    and exc.errno == errno.EADDRINUSE
                    and local_port == 0
                    and bound_port
                ):
                    errors.append(exc)
                    sockaddrs.append(sockaddrs.pop(0))
                    continue
                raise
            return MultiListener(listeners)

        raise OSError(
            f"Could not create {len(sockaddrs)} listeners with a consistent port"
        ) from ExceptionGroup("Several bind attempts failed", errors)
    finally:
        del errors


async def create_unix_listener(
    path: str | bytes | os.PathLike[Any],
    *,
    mode: int | None = None,
    backlog: int = 65536,
    kind: Literal[socket.SocketKind.SOCK_STREAM] = socket.SOCK_STREAM,
) -> TrafficUNIXSocketListener:
    """Listen on the UNIX socket ``path``: ``anyio.create_unix_listener``.

    A socket already at ``path`` is removed first (as anyio does); ``mode``
    sets its permissions.  Raises ``OSError`` if binding fails,
    ``NotImplementedError`` for ``SOCK_SEQPACKET``.
    """
    if kind != socket.SOCK_STREAM:
        raise NotImplementedError("traffic's streams are SOCK_STREAM only")
    backlog = min(backlog, 65536)
    sock = await unix_local_socket(path, mode, socket.SOCK_STREAM)
    try:
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return TrafficUNIXSocketListener(sock.detach())


async def unix_local_socket(
    path: str | bytes | os.PathLike[Any] | None, mode: int | None, kind: int
) -> socket.socket:
    """A non-blocking AF_UNIX socket of ``kind``, bound to ``path`` unless None.

    As anyio's factories make theirs: a socket already at a filesystem path
    is removed first (and nothing else is); a Linux abstract address (a
    leading NUL, ``str`` or ``bytes``) has no file, so nothing is looked up
    for it.  ``mode`` is given to ``os.chmod`` on the path, which refuses an
    abstract address as it does for anyio (``ValueError``).  ``bind`` and
    ``chmod`` run in a worker thread: on a slow filesystem they block.
    Raises ``OSError`` from ``bind``, ``TypeError`` for a path that is not a
    path; the socket is closed on any failure.
    """
    name = os.fsdecode(path) if path is not None else None
    if name is not None and not name.startswith("\0"):
        try:
            if stat.S_ISSOCK(os.stat(name).st_mode):
                os.unlink(name)
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENOTDIR, errno.EBADF, errno.ELOOP):
                raise
    sock = socket.socket(socket.AF_UNIX, kind)
    try:
        sock.setblocking(False)
        if name is not None:
            await anyio.to_thread.run_sync(sock.bind, name, abandon_on_cancel=True)
            if mode is not None:
                await anyio.to_thread.run_sync(os.chmod, name, mode, abandon_on_cancel=True)
    except BaseException:
        sock.close()
        raise
    return sock
