"""trio on top of traffic: completed transfers delivered to trio tasks.

How a transfer reaches a task
-----------------------------
Each trio run has one threaded :class:`~traffic.libkqueue.Traffic` (a
``RunVar``), started lazily, whose ``traffic-cycle`` thread waits on the
kernel and performs the transfers.  A task that wants to transfer:

1. checks for cancellation (``checkpoint_if_cancelled``);
2. asks the core for the transfer, which first tries it *inline*, in the
   task's own thread, without blocking.  If that finished the job, the task
   takes a ``cancel_shielded_checkpoint`` and returns: trio's checkpoint
   rule holds and no other thread was involved;
3. otherwise the request stays in the core, and the task parks with
   ``wait_task_rescheduled``.  The cycle thread performs the transfer when
   the kernel allows and queues a completion, raising a flag of the core
   for the batch.  Right after each of trio's I/O waits, an instrument
   (``after_io_wait``) looks at the flag; if completions wait, it collects
   them all in one C call and ``reschedule``\\ s the parked tasks, which
   then run in that same pass of the run loop.  One system task per run
   (the *pump*) waits on the core's completion descriptor with
   ``wait_readable``: it is what wakes a sleeping trio.  The core writes
   the descriptor only while trio may be blocked (the instrument tells it
   before an I/O wait with a timeout and after it), so a busy trio pays no
   system call and no pump step per batch.  The cycle thread never takes
   the GIL and never calls into trio; ``reschedule`` (not thread-safe) is
   only ever called in trio's thread, by those two.

A parked ``receive_some`` holds no buffer: it asks the core to allocate the
memory when data arrives (``tr_request`` with a NULL resource), and the
bytes come back with the completion.  Ten thousand idle connections cost
no receive buffers.

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

Errors cross once: the core's :class:`~traffic.errors.TransitClosedError`
and a transit its owner terminated become ``trio.ClosedResourceError``; a
transit the kernel terminated with an errno becomes
``trio.BrokenResourceError`` chained to the ``OSError``.

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

import contextlib
import errno
import logging
import os
import socket as _stdlib_socket
from array import array
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, NoReturn

import outcome
import trio

from ._traffic import ffi, lib
from .errors import TransitClosedError
from .libkqueue import (
    FDS_PER_MESSAGE,
    Descriptors,
    Octets,
    Sockets,
    Traffic,
    Transit,
    check_port,
    cycle_policy,
    descriptor_array,
    has_nodelay,
    receive_scratch,
)

__all__ = [
    "TrafficListener",
    "TrafficStream",
    "accept",
    "current_traffic",
    "open_tcp_listeners",
    "open_tcp_stream",
    "open_unix_listener",
    "open_unix_stream",
    "receive_fds",
    "recv_into",
    "send_all",
    "send_fds",
    "serve_listeners",
    "serve_tcp",
    "serve_unix",
]

#: Bytes a ``receive_some()`` without ``max_bytes`` asks for (trio's
#: ``SocketStream`` uses the same, ``DEFAULT_RECEIVE_SIZE``).
DEFAULT_RECEIVE_SIZE = 65536

#: Descriptors one accept request may collect; the rest wait in the kernel.
ACCEPT_BATCH = 64

#: The most descriptors one :func:`receive_fds` makes room for; a larger
#: ``maxfds`` is clamped to it.  The core stops receiving once the room is
#: full, so what it does not take waits in the kernel for the next call.
MAX_RECEIVE_FDS = 4096

#: Scheduling of each run's cycle thread (see ``Traffic.start``): None
#: takes ``$TRAFFIC_CYCLE_POLICY``, else ``"batch"``.  Set it before the run.
CYCLE_POLICY: str | None = None

# Outcomes of the core's requests (see traffic.h).
_PENDING = lib.TR_PENDING
_DONE = lib.TR_DONE
_TERMINATED = lib.TR_TERMINATED
_FAULT = lib.TR_FAULT
_CLOSED = lib.TR_CLOSED
_WITHDRAWN = lib.TR_WITHDRAWN
_NULL = ffi.NULL
_tr_request_fds = lib.tr_request_fds
_tr_receive = lib.tr_receive
_tr_traffic_collector_asleep = lib.tr_traffic_collector_asleep
_SUCCEEDED = trio.lowlevel.Abort.SUCCEEDED
_FAILED = trio.lowlevel.Abort.FAILED
_current_task = trio.lowlevel.current_task
_checkpoint_if_cancelled = trio.lowlevel.checkpoint_if_cancelled
_cancel_shielded_checkpoint = trio.lowlevel.cancel_shielded_checkpoint
_wait_task_rescheduled = trio.lowlevel.wait_task_rescheduled
_reschedule = trio.lowlevel.reschedule

#: The functions that hand the core a request and take its result are
#: protected from KeyboardInterrupt (trio defers it to the task's next
#: checkpoint, where it parks or ends): raised between the two, it would
#: strand a request in the core, and with it bytes or descriptors the core
#: has already transferred.  It costs nothing per call (a mark on the code).
_protected = trio.lowlevel.enable_ki_protection


#: I/O waits of trio's run loop with no request parked after which the
#: collector uninstalls itself (see _Collector).
_IDLE_PASSES = 256


class _Delivery:
    """The run's Traffic and the tasks parked on it, by transit token.

    Only the pump and the tasks of this run touch it (all in trio's thread).
    """

    __slots__ = ("collector", "parked", "received", "report", "room", "scratch", "traffic")

    def __init__(self, traffic: Traffic) -> None:
        self.traffic = traffic
        self.parked: dict[int, _Parked] = {}
        self.report = ffi.new("tr_report *")
        # No allocation and no free per receive that completes at once.
        # room: the most a receive into the scratch may ask for.
        self.room = DEFAULT_RECEIVE_SIZE
        self.scratch, self.received = receive_scratch(self.room)
        self.collector = _Collector(self)


def _deliver(delivery: _Delivery) -> None:
    """Reschedule the tasks whose transfers completed (trio's thread)."""
    parked = delivery.parked
    for completion in delivery.traffic.collect():
        waiter = parked.pop(completion.token, None)
        if waiter is None:
            continue  # a dropped transit's last word
        raise_cancel = waiter.raise_cancel
        if raise_cancel is not None and completion.outcome == _WITHDRAWN:
            # Its abort failed while the core was in the system call,
            # and nothing was transferred: deliver the cancellation.
            _reschedule(waiter.task, outcome.capture(raise_cancel))
        else:
            _reschedule(waiter.task, outcome.Value(completion))


class _Collector(trio.abc.Instrument):
    """Delivers completions right after each of trio's I/O waits.

    The pump alone would cost a woken task a whole extra pass of trio's run
    loop: trio takes the pump's wake-up from its I/O wait, runs the pump in
    that pass's batch, and the tasks the pump reschedules wait for the next
    pass (another I/O poll, deadline check and batch).  Collected here,
    after the I/O wait and before the batch is taken, they run in the same
    pass.  The core's flag is read without a call or lock: a stale zero only
    defers the tasks to the pump.

    The pump is what wakes trio when it sleeps (the completion descriptor is
    what its I/O wait sees), so the core writes the descriptor only then:
    the collector tells it before an I/O wait that may block (a timeout
    above zero) and after it.  While trio is busy the cycle thread makes no
    system call to signal, trio none to clear, and the pump is not woken
    (each wake-up costs trio a task step, a re-registration of the
    descriptor and, as often as not, a pass of the run loop).

    It is installed only while it has work: the first request that parks
    installs it, and after ``_IDLE_PASSES`` I/O waits with nothing parked it
    steps aside (handing the wake-ups back to the descriptor).  trio calls
    an instrument's hooks through a generic dispatcher, about half a
    microsecond each, twice a pass: for a program whose transfers all
    complete inline (a stream that never waits) that was a sixth of the
    instructions of a send and a receive.  Installing costs tens of
    microseconds, hence the patience before stepping aside.
    """

    __slots__ = ("asleep", "c", "delivery", "flag", "idle", "installed", "traffic")

    def __init__(self, delivery: _Delivery) -> None:
        self.delivery = delivery
        self.traffic = delivery.traffic
        self.c = delivery.traffic._c
        self.flag = lib.tr_traffic_signal_flag(self.c)
        self.asleep = False
        self.installed = False  # the core signals every batch (its default)
        self.idle = 0  # I/O waits since one found something parked

    # Protected from KeyboardInterrupt (it runs in the parking task): a
    # lazy core with no collector installed would never signal again.
    @_protected
    def install(self) -> None:
        """Collect from now on (a request is about to park)."""
        if self.traffic._closed:
            return  # the core's memory is freed: nothing parks any more
        # Lazy before the hooks run: until the first before_io_wait trio is
        # awake (it is running this task), and after_io_wait reads the flag.
        _tr_traffic_collector_asleep(self.c, 0)
        try:
            trio.lowlevel.add_instrument(self)
        except BaseException:
            _tr_traffic_collector_asleep(self.c, -1)
            raise
        self.installed = True
        self.idle = 0

    def _step_aside(self) -> None:
        """Nothing parked for a while: leave delivery to the pump."""
        self.installed = False
        _tr_traffic_collector_asleep(self.c, -1)  # the descriptor, every batch
        trio.lowlevel.remove_instrument(self)

    def before_io_wait(self, timeout: float) -> None:
        if timeout > 0 and not self.traffic._closed:
            self.asleep = True
            _tr_traffic_collector_asleep(self.c, 1)

    def after_io_wait(self, timeout: float) -> None:
        # Closed (by the pump, or a user of current_traffic()): the core's
        # memory is freed.
        if self.traffic._closed:
            return
        try:
            if self.asleep:
                self.asleep = False
                _tr_traffic_collector_asleep(self.c, 0)
            if self.flag[0]:
                _deliver(self.delivery)
            if self.delivery.parked:
                self.idle = 0
            else:
                self.idle += 1
                if self.idle >= _IDLE_PASSES:
                    self._step_aside()
        except BaseException:
            # trio disables an instrument that raises: from now on the pump
            # alone delivers, so the descriptor must be written every time.
            # (installed stays True: a broken collector is not reinstalled.)
            _tr_traffic_collector_asleep(self.c, -1)
            raise


class _Parked:
    """A task waiting for the completion of its transit's request.

    Registered under the transit's token for the pump to find, and handed
    to ``wait_task_rescheduled`` as the abort function itself: one small
    object per parked request, no closure (a parked receive is most of an
    idle connection's memory).
    """

    __slots__ = ("delivery", "raise_cancel", "task", "transit")

    def __init__(self, delivery: _Delivery, transit: Transit, keep: object) -> None:
        self.delivery = delivery
        self.transit = transit
        self.task = _current_task()
        # Set once an abort failed (the core was inside the system call).
        self.raise_cancel: Any = None
        if not delivery.collector.installed:
            delivery.collector.install()
        token = transit._token
        delivery.parked[token] = self
        if keep is not None:
            # Held by the Traffic too, not only by the requester's frame:
            # see _request.
            delivery.traffic._pins[token] = (keep, None)

    def __call__(self, raise_cancel: Any) -> trio.lowlevel.Abort:
        """Withdraw the request (trio's abort function)."""
        transit = self.transit
        delivery = self.delivery
        code = lib.tr_withdraw(transit._c, delivery.report)
        if code == _WITHDRAWN or code < 0:
            # Withdrawn; or the Traffic is gone (closed, its thread joined),
            # so no completion will ever come and the memory is free.
            delivery.parked.pop(transit._token, None)
            delivery.traffic._pins.pop(transit._token, None)
            return _SUCCEEDED
        # Inside the system call, or done: the completion follows promptly.
        self.raise_cancel = raise_cancel
        return _FAILED


_DELIVERY: trio.lowlevel.RunVar[_Delivery] = trio.lowlevel.RunVar("traffic")


def _delivery() -> _Delivery:
    """The run's delivery, created (and its cycle thread started) on first use."""
    try:
        return _DELIVERY.get()
    except LookupError:
        pass
    traffic = Traffic()
    try:
        traffic.start(CYCLE_POLICY or cycle_policy())
        delivery = _Delivery(traffic)
        trio.lowlevel.spawn_system_task(_pump, delivery, name="traffic.pump")
    except BaseException:
        traffic.close()
        raise
    _DELIVERY.set(delivery)
    return delivery


def current_traffic() -> Traffic:
    """The current trio run's Traffic (threaded), started on first use."""
    return _delivery().traffic


@_protected
async def _pump(delivery: _Delivery) -> None:
    """Reschedule the tasks whose transfers completed.  Never raises: a crash
    here would kill the run; the Traffic is closed when the run ends.

    Protected from KeyboardInterrupt: Ctrl-C goes to the main task, and the
    pump goes on delivering while the tasks it parked unwind.
    """
    traffic = delivery.traffic
    parked = delivery.parked
    try:
        fd = traffic.completion_fileno()
        while True:
            await trio.lowlevel.wait_readable(fd)
            _deliver(delivery)
    finally:
        # The collector reads the core's memory: gone before the Traffic.
        with contextlib.suppress(KeyError, RuntimeError):  # removed, or outside trio
            trio.lowlevel.remove_instrument(delivery.collector)
        # Cancelled at the end of the run: normally no task is parked any
        # more.  Only reschedule() of trio here: a run abandoned mid-way (an
        # internal error, a guest run dropped) closes this coroutine outside
        # trio, and the Traffic must still be closed then (close() does not
        # block on trio).  Once it is closed (the cycle thread joined), no
        # completion can come: a task still parked wakes closed, not never.
        traffic.close()
        while parked:
            _, waiter = parked.popitem()
            with contextlib.suppress(RuntimeError):  # outside trio: nothing to wake
                _reschedule(
                    waiter.task, outcome.Error(trio.ClosedResourceError("the run's Traffic closed"))
                )


def _in_run(transit: Transit) -> _Delivery:
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


@_protected
async def _request(
    delivery: _Delivery,
    transit: Transit,
    pin: Any,
    size: int,
    fdpin: Any = ffi.NULL,
    nfds: int = 0,
    keep: object = None,
    raise_error: Callable[[int], NoReturn] | None = None,
) -> tuple[int, int, int, bytes | None, int]:
    """Perform one request: (outcome, error, transferred, data, descriptors).  A checkpoint.

    ``raise_error`` raises for the core's refusals (negative codes); trio's
    errors unless told (the anyio layer passes its own).

    ``fdpin`` and ``nfds`` are a Descriptors request's descriptor array
    (``keep`` holds every object that must stay alive while it is pending).

    ``pin`` (a cffi buffer) is the memory the core transfers with, or
    ``ffi.NULL`` for a receive into memory the core provides (the run's
    scratch at once, an allocation when data arrives; ``data`` then holds
    what came).  While the
    request is pending it is also held by the Traffic (``_pins``, by token),
    not only by this frame: a frame can die before the core is done with the
    memory (a run abandoned by an internal error closes its coroutines, and
    whatever they alone referenced is freed at once, while the cycle thread
    may be inside ``read()`` into it).  The Traffic drops the pin when it
    collects the completion, when the request is withdrawn, or after its
    cycle thread is joined at close.
    """
    await _checkpoint_if_cancelled()
    report = delivery.report
    into_scratch = pin == _NULL
    if into_scratch:
        size = min(size, delivery.room)
        code = _tr_receive(transit._c, size, delivery.scratch, report)
    else:
        code = _tr_request_fds(transit._c, pin, size, fdpin, nfds, 1, report)
    if code != _PENDING:
        if code < 0:
            (raise_error or _raise_request_error)(code)
        # Out of the scratch before the checkpoint lets another task use it.
        data = delivery.received[: report.stop] if into_scratch else None
        result = (code, report.error, report.stop, data, report.fd_stop)
        await _cancel_shielded_checkpoint()
        return result
    if keep is None and (pin != _NULL or fdpin != _NULL):
        keep = pin
    completion = await _wait_task_rescheduled(_Parked(delivery, transit, keep))
    return (
        completion.outcome,
        completion.error,
        completion.transferred,
        completion.data,
        completion.descriptors,
    )


def _raise_request_error(code: int) -> NoReturn:
    if code == lib.TR_ECLOSED:
        raise trio.ClosedResourceError("the transit is terminated")
    if code == -errno.EBUSY:
        raise trio.BusyResourceError("another task is already transferring on this transit")
    if code == -errno.EBADF:
        raise OSError(errno.EBADF, "cannot send descriptors: one of them is not an open descriptor")
    raise OSError(-code, os.strerror(-code))


def _broken(error: int, doing: str) -> trio.BrokenResourceError:
    exc = trio.BrokenResourceError(f"{doing}: {os.strerror(error)}")
    exc.__cause__ = OSError(error, os.strerror(error))
    return exc


def _pin(data: Any, writable: bool) -> tuple[Any, int]:
    """What the core transfers with (``data`` itself, or a cffi view of it:
    never a copy), and its size.

    A ``bytes`` to send is passed as it is: cffi hands a C function the
    address of a bytes object's own storage, which does not move while the
    object lives (the pending request holds it), and makes no view object.
    Anything else gets a view made from the object itself: a cffi buffer
    over a temporary memoryview can be torn down by the collector in the
    wrong order.
    """
    if not writable and type(data) is bytes:  # the common send: nothing to check
        return data, len(data)
    try:
        view = memoryview(data)
    except TypeError:
        raise TypeError(f"expected a bytes-like object, not {type(data).__name__}") from None
    with view:  # released at once: a live export would lock a bytearray's size
        if writable and view.readonly:
            raise TypeError(
                "receiving needs a writable buffer (bytearray, memoryview of one, array)"
            )
        if not view.contiguous:
            raise BufferError("the buffer must be contiguous")
        size = view.nbytes
    return ffi.from_buffer(data, require_writable=writable), size


# Primitive operations


@_protected
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
    if transit.polarity != lib.TR_INPUT:
        raise ValueError("recv_into() needs an input transit")
    pin, size = _pin(buffer, writable=True)
    delivery = _in_run(transit)
    if size == 0:
        await trio.lowlevel.checkpoint()
        return 0
    code, error, count, _, _ = await _request(delivery, transit, pin, size)
    return _received(code, error, count, "receive")


def _received(code: int, error: int, count: int, doing: str) -> int:
    if code == _DONE:
        return count
    if code == _TERMINATED:
        if error == 0:
            return 0  # EOF
        raise _broken(error, doing)
    raise trio.ClosedResourceError("the transit was terminated while receiving")


@_protected
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
    if transit.polarity != lib.TR_OUTPUT:
        raise ValueError("send_all() needs an output transit")
    pin, size = _pin(data, writable=False)
    delivery = _in_run(transit)
    code, error, _, _, _ = await _request(delivery, transit, pin, size)
    _sent(code, error)


def _sent(code: int, error: int) -> None:
    if code == _DONE:
        return
    if code == _TERMINATED:
        raise _broken(error or errno.EPIPE, "send")
    raise trio.ClosedResourceError("the transit was terminated while sending")


@_protected
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
    pin = ffi.from_buffer(descriptors)
    code, error, count, _, _ = await _request(delivery, transit, pin, len(descriptors) * 4)
    if code == _DONE:
        return descriptors[: count // 4].tolist()
    if code == _FAULT:
        raise OSError(error, f"accept: {os.strerror(error)}")
    if code == _TERMINATED:
        raise _broken(error or errno.EINVAL, "accept")
    raise trio.ClosedResourceError("the listener was closed while accepting")


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


@_protected
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
    if transit.polarity != lib.TR_OUTPUT:
        raise ValueError("send_fds() needs an output Descriptors transit")
    pin, size = _pin(data, writable=False)
    if size == 0:
        raise ValueError("message must not be empty")
    numbers = descriptor_array(fds)
    if len(numbers) == 0:
        raise ValueError("fds must not be empty")
    if size < -(-len(numbers) // FDS_PER_MESSAGE):
        raise ValueError(
            f"{len(numbers)} descriptors need at least "
            f"{-(-len(numbers) // FDS_PER_MESSAGE)} bytes of data to travel with"
        )
    fdpin = ffi.from_buffer("int[]", numbers)

    async def go(delivery: _Delivery) -> None:
        code, error, _, _, _ = await _request(
            delivery, transit, pin, size, fdpin, len(numbers), (pin, fdpin, data, numbers)
        )
        _sent(code, error)

    if stream is not None:
        with _claimed(stream, "send"):
            if stream._closed:
                raise trio.ClosedResourceError("the stream is closed")
            await go(stream._delivery)
    else:
        await go(_in_run(transit))


@_protected
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
    if transit.polarity != lib.TR_INPUT:
        raise ValueError("receive_fds() needs an input Descriptors transit")
    buffer = bytearray(msglen)
    numbers = array("i", bytes(4 * maxfds))
    pin = ffi.from_buffer(buffer, require_writable=True)
    fdpin = ffi.from_buffer("int[]", numbers, require_writable=True)

    async def go(delivery: _Delivery) -> tuple[int, int, int, int]:
        code, error, count, _, nfds = await _request(
            delivery, transit, pin, msglen, fdpin, maxfds, (pin, fdpin, buffer, numbers)
        )
        return code, error, count, nfds

    if stream is not None:
        with _claimed(stream, "receive"):
            if stream._closed:
                raise trio.ClosedResourceError("the stream is closed")
            code, error, count, nfds = await go(stream._delivery)
            if stream._closed:
                if code == _DONE:
                    for fd in numbers[:nfds]:
                        os.close(fd)
                raise trio.ClosedResourceError("the stream was closed while receiving")
    else:
        code, error, count, nfds = await go(_in_run(transit))
    if code == _DONE:
        return bytes(buffer[:count]), numbers[:nfds].tolist()
    _received(code, error, count, "receive")
    return b"", []


# Streams and listeners


class _Guard:
    """One task at a time per direction, named after the action (trio's
    ConflictDetector)."""

    __slots__ = ("_busy", "_message")

    def __init__(self, message: str) -> None:
        self._message = message
        self._busy = False

    def __enter__(self) -> None:
        if self._busy:
            raise trio.BusyResourceError(self._message)
        self._busy = True

    def __exit__(self, *exc: object) -> None:
        self._busy = False


_BUSY_SEND = "another task is using this stream for send"
_BUSY_RECEIVE = "another task is using this stream for receive"


@contextlib.contextmanager
def _claimed(stream: Any, direction: str, busy: BaseException | None = None) -> Iterator[None]:
    """The stream's ``direction`` ("send" or "receive") for one task: its
    ``_sending`` or ``_receiving`` flag, as ``send_all`` and
    ``receive_some`` take it inline.  Raises ``busy`` (default trio's
    ``BusyResourceError``) if another task has it."""
    flag = "_sending" if direction == "send" else "_receiving"
    if getattr(stream, flag):
        if busy is None:
            busy = trio.BusyResourceError(_BUSY_SEND if direction == "send" else _BUSY_RECEIVE)
        raise busy
    setattr(stream, flag, True)
    try:
        yield
    finally:
        setattr(stream, flag, False)


class SocketView:
    """A socket-like view of a descriptor the core owns.

    It answers ``getsockname``, ``getpeername``, ``getsockopt``,
    ``setsockopt``, ``family``, ``type``, ``proto`` and ``fileno``, never
    closes the descriptor, and raises ``OSError(EBADF)`` once the core has
    closed it.
    """

    __slots__ = ("_transit", "family", "proto", "type")

    def __init__(self, transit: Transit, family: int, type: int, proto: int) -> None:
        self._transit = transit
        self.family = family
        self.type = type
        self.proto = proto

    def fileno(self) -> int:
        return self._transit.fileno()

    def _call(self, name: str, *args: Any) -> Any:
        fd = self._transit.fileno()
        if fd < 0:
            raise OSError(errno.EBADF, "the socket is closed")
        sock = _stdlib_socket.socket(self.family, self.type, self.proto, fileno=fd)
        try:
            return getattr(sock, name)(*args)
        finally:
            sock.detach()

    def getsockname(self) -> Any:
        return self._call("getsockname")

    def getpeername(self) -> Any:
        return self._call("getpeername")

    def getsockopt(self, level: int, option: int, buflen: int | None = None) -> Any:
        if buflen is None:
            return self._call("getsockopt", level, option)
        return self._call("getsockopt", level, option, buflen)

    def setsockopt(self, level: int, option: int, value: Any, optlen: int | None = None) -> None:
        if optlen is None:
            self._call("setsockopt", level, option, value)
        else:
            self._call("setsockopt", level, option, value, optlen)

    def __repr__(self) -> str:
        return f"<traffic.SocketView fd={self.fileno()} family={self.family!r}>"


def _socket_identity(fd: int) -> tuple[int, int, int]:
    sock = _stdlib_socket.socket(fileno=fd)
    try:
        return sock.family, sock.type, sock.proto
    finally:
        sock.detach()


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
    # connections are ten thousand of these (issue 6).
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
            identity = identity or _socket_identity(fd)
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
        # ConflictDetector, kept as two booleans: no object per guard).
        self._sending = False
        self._receiving = False
        self._identity = identity
        self._view: SocketView | None = None
        if nodelay and family in (_stdlib_socket.AF_INET, _stdlib_socket.AF_INET6):
            # Not TCP after all (SCTP, say): trio ignores the failure too.
            with contextlib.suppress(OSError):
                self.setsockopt(_stdlib_socket.IPPROTO_TCP, _stdlib_socket.TCP_NODELAY, True)

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

    @_protected
    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Send all of ``data``; see :func:`traffic.send_all` for cancellation.

        A checkpoint.  Raises ``trio.BusyResourceError`` if another task is
        sending, ``trio.ClosedResourceError`` after :meth:`aclose` or
        :meth:`send_eof`, ``trio.BrokenResourceError`` if the peer is gone.
        """
        if self._sending:
            raise trio.BusyResourceError(_BUSY_SEND)
        self._sending = True
        try:
            if self._closed:
                raise trio.ClosedResourceError("the stream is closed")
            pin, size = _pin(data, writable=False)
            # _request inlined: this and receive_some are the hot path, and a
            # coroutine level costs time per call and memory while parked.
            await _checkpoint_if_cancelled()
            sender = self._sender
            delivery = self._delivery
            report = delivery.report
            code = _tr_request_fds(sender._c, pin, size, _NULL, 0, 1, report)
            if code == _PENDING:
                completion = await _wait_task_rescheduled(_Parked(delivery, sender, pin))
                code = completion.outcome
                error = completion.error
            else:
                if code < 0:
                    _raise_request_error(code)
                error = report.error if code != _DONE else 0
                await _cancel_shielded_checkpoint()
            if code != _DONE:
                _sent(code, error)
        finally:
            self._sending = False

    async def wait_send_all_might_not_block(self) -> None:
        """Wait until the socket can take more data.  A checkpoint."""
        with _claimed(self, "send"):
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
        with _claimed(self, "send"):
            if self._closed:
                raise trio.ClosedResourceError("the stream is closed")
            await trio.lowlevel.checkpoint()
            self._sender.terminate()

    @_protected
    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Receive at most ``max_bytes`` (default 64 KiB); ``b""`` at EOF.

        A checkpoint.  Raises ``ValueError`` for ``max_bytes < 1``,
        ``trio.BusyResourceError`` if another task is receiving,
        ``trio.ClosedResourceError`` after :meth:`aclose`,
        ``trio.BrokenResourceError`` if the connection broke.
        """
        if self._receiving:
            raise trio.BusyResourceError(_BUSY_RECEIVE)
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
            # _request inlined, as in send_all.
            await _checkpoint_if_cancelled()
            receiver = self._receiver
            delivery = self._delivery
            if size > delivery.room:
                size = delivery.room
            report = delivery.report
            code = _tr_receive(receiver._c, size, delivery.scratch, report)
            if code == _PENDING:
                completion = await _wait_task_rescheduled(_Parked(delivery, receiver, None))
                code = completion.outcome
                error = completion.error
                data = completion.data
            else:
                if code < 0:
                    _raise_request_error(code)
                # Copied out before the checkpoint lets another task use it.
                data = delivery.received[: report.stop]
                error = report.error if code != _DONE else 0
                await _cancel_shielded_checkpoint()
            if self._closed:
                raise trio.ClosedResourceError("the stream was closed while receiving")
            if code == _DONE:
                return data  # type: ignore[no-any-return]  # bytes: the core allocated it
            _received(code, error, 0, "receive")
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
            family, kind, proto = _socket_identity(fd)
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
        self._accepted: deque[int] = deque()
        self._guard = _Guard("another task is already accepting on this listener")
        self._descriptors = array("i", bytes(4 * ACCEPT_BATCH))
        self._pin = ffi.from_buffer(self._descriptors)
        self.socket = SocketView(transit, family, kind, proto)
        self._identity = (family, kind, proto)
        # Whether each accepted stream needs its own setsockopt(TCP_NODELAY).
        # Set on the listener, the option is inherited by what it accepts on
        # Linux and the BSDs: the first accepted connection tells.
        self._nodelay: bool | None = False
        if family in (_stdlib_socket.AF_INET, _stdlib_socket.AF_INET6):
            self._nodelay = None
            try:
                self.socket.setsockopt(_stdlib_socket.IPPROTO_TCP, _stdlib_socket.TCP_NODELAY, 1)
            except OSError:
                self._nodelay = True  # not TCP after all: each stream tries

    @_protected
    async def accept(self) -> TrafficStream:
        """Accept a connection.  A checkpoint.

        Raises ``OSError`` (EMFILE, ENFILE, ENOBUFS, ENOMEM) when out of
        resources, with the listener intact (``trio.serve_listeners`` backs
        off and retries); ``trio.ClosedResourceError`` after :meth:`aclose`;
        ``trio.BusyResourceError`` if another task is accepting.
        """
        with self._guard:
            await self._fill()
            return self._stream(self._accepted.popleft())

    @_protected
    async def _accept_all(self) -> list[TrafficStream]:
        """Every connection accepted so far, at least one: :meth:`accept`
        for a whole batch with one checkpoint (``serve_listeners``)."""
        with self._guard:
            await self._fill()
            accepted = self._accepted
            streams = []
            while accepted:
                # One at a time: if making a stream fails, the descriptors
                # not taken yet stay queued (closed by aclose), and the
                # streams made are closed when dropped.
                streams.append(self._stream(accepted.popleft()))
            return streams

    @_protected
    async def _fill(self) -> None:
        """Make sure a connection is queued in ``_accepted``.  A checkpoint."""
        if self._closed:
            raise trio.ClosedResourceError("the listener is closed")
        if self._accepted:
            await trio.lowlevel.checkpoint()
            return
        size = len(self._descriptors) * 4
        code, error, count, _, _ = await _request(self._delivery, self._transit, self._pin, size)
        if self._closed:
            for fd in self._descriptors[: count // 4] if code == _DONE else ():
                os.close(fd)
            raise trio.ClosedResourceError("the listener was closed while accepting")
        if code == _FAULT:
            raise OSError(error, f"accept: {os.strerror(error)}")
        if code == _TERMINATED:
            raise _broken(error or errno.EINVAL, "accept")
        if code != _DONE:
            raise trio.ClosedResourceError("the listener was closed while accepting")
        self._accepted.extend(self._descriptors[: count // 4])

    def _stream(self, fd: int) -> TrafficStream:
        """The stream of accepted descriptor ``fd`` (closed if that fails)."""
        nodelay = self._nodelay
        if nodelay is None:
            nodelay = self._nodelay = not has_nodelay(fd)
        return TrafficStream._from_fd(fd, self._identity, nodelay)

    async def aclose(self) -> None:
        """Stop listening; connections accepted but not handed out are closed."""
        if not self._closed:
            self._closed = True
            self._transit.terminate()
            while self._accepted:
                os.close(self._accepted.popleft())
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

#: Accept errors that mean "out of resources for now": back off and retry
#: (trio's serve_listeners handles the same).
ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})

#: Seconds to wait after such an error, as trio.
ACCEPT_BACKOFF = 0.100

_LOGGER = logging.getLogger("traffic.serve_listeners")


async def _run_handler(stream: TrafficStream, handler: _Handler) -> None:
    try:
        await handler(stream)
    finally:
        # trio's aclose_forcefully without its cancel scope and checkpoint:
        # closing a TrafficStream never blocks, and the task is ending.
        stream._close()


async def _serve_one_listener(
    listener: TrafficListener, handler_nursery: trio.Nursery, handler: _Handler
) -> NoReturn:
    async with listener:
        while True:
            try:
                streams = await listener._accept_all()
            except OSError as exc:
                if exc.errno not in ACCEPT_CAPACITY_ERRNOS:
                    raise
                _LOGGER.error(
                    "accept returned %s (%s); retrying in %s seconds",
                    errno.errorcode[exc.errno],
                    os.strerror(exc.errno),
                    ACCEPT_BACKOFF,
                    exc_info=True,
                )
                await trio.sleep(ACCEPT_BACKOFF)
                continue
            for stream in streams:
                handler_nursery.start_soon(_run_handler, stream, handler)


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
