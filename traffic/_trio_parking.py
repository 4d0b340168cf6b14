"""How a trio task waits for its transfer: the parking both trio-run layers use.

The trio layer (:mod:`traffic.trio_integration`) and the anyio layer on
trio (:mod:`traffic.anyio_backend`) share each run's threaded Traffic and
this machinery; it knows neither layer's exceptions (each passes its own
refusal table) and imports nothing of them.

A task that transfers checks for cancellation, hands the core its request
(:meth:`~traffic._base._requests.Requests.submit`, which exports the memory there
and then), and either takes a ``cancel_shielded_checkpoint`` (the request
completed inline) or parks with ``wait_task_rescheduled``; :func:`transfer`
is that sequence, and the hot paths (a stream's send and receive) spell out
the same three steps inline.  What the core may touch while a request
waits is held by the run's requests, not by the task's frame.
The cycle thread performs a parked request when the kernel allows and
queues its completion, raising the core's flag for the batch.  Right after
each of trio's I/O waits the collector (a trio instrument) looks at the
flag and reschedules the parked tasks, which then run in that same pass of
the run loop; one system task per run, the pump, waits on the core's
completion descriptor: it is what wakes a sleeping trio.  The core writes
the descriptor only while trio may be blocked (the collector tells it
before and after each I/O wait), so a busy trio pays no system call and no
pump step per batch.  The cycle thread never takes the GIL and never calls
into trio; ``reschedule`` is only ever called in trio's thread.

A parked task's abort function withdraws its request.  That succeeds in
every state except while the cycle thread is inside the system call for it:
then the abort fails and the completion arrives promptly, carrying what was
transferred, which the task returns (the cancellation comes at its next
checkpoint).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import outcome
import trio

from ._base import _sockets
from ._base._files import Region
from ._base._requests import (
    COMPLETING,
    WITHDRAWN,
    Refusals,
    Requests,
    Result,
    mark_protected,
    protected,
)
from ._base._the_traffic import Traffic, cycle_policy
from ._base._transit import Transit

__all__ = [
    "Delivery",
    "Parked",
    "cancel_shielded_checkpoint",
    "checkpoint_if_cancelled",
    "conclude",
    "delivery",
    "transfer",
    "transfer_file",
    "transfer_pinned",
    "wait_task_rescheduled",
]

# What was marked protected before trio was imported is marked now.
mark_protected()

checkpoint_if_cancelled = trio.lowlevel.checkpoint_if_cancelled
cancel_shielded_checkpoint = trio.lowlevel.cancel_shielded_checkpoint
wait_task_rescheduled = trio.lowlevel.wait_task_rescheduled
_current_task = trio.lowlevel.current_task
_reschedule = trio.lowlevel.reschedule
_SUCCEEDED = trio.lowlevel.Abort.SUCCEEDED
_FAILED = trio.lowlevel.Abort.FAILED


def _no_policy() -> str | None:
    return None


#: Where a run's cycle policy comes from (see ``Traffic.start``): the trio
#: layer points it at its ``CYCLE_POLICY`` when it is imported; None takes
#: ``$TRAFFIC_CYCLE_POLICY``, else the default.
policy: Callable[[], str | None] = _no_policy

#: I/O waits of trio's run loop with no request parked after which the
#: collector uninstalls itself (see Collector).
IDLE_PASSES = 256


class Delivery:
    """A trio run's Traffic, its requests, and the tasks parked on it by
    transit token.  Only the pump and the tasks of this run touch it (all in
    trio's thread)."""

    __slots__ = ("collector", "fd", "parked", "requests", "traffic")

    def __init__(self, traffic: Traffic) -> None:
        self.traffic = traffic
        self.fd = traffic.completion_fileno()
        self.requests: Requests = traffic.requests
        self.requests.reserve_scratch(_sockets.DEFAULT_RECEIVE_SIZE)
        self.parked: dict[int, Parked] = {}
        self.collector = Collector(self)
        self.requests.on_close = self.closing

    def closing(self) -> None:
        """The Traffic is about to close (its owner closed it by hand, or the
        run ends): the collector stops reading the core's memory, and the
        pump's wait on the completion descriptor ends (trio's
        ``notify_closing``) before the descriptor is closed under it.  The
        next :func:`delivery` makes a new Traffic for the run."""
        with contextlib.suppress(KeyError, RuntimeError):  # removed, or outside trio
            trio.lowlevel.remove_instrument(self.collector)
        with contextlib.suppress(RuntimeError):  # outside trio: the pump ends with the run
            trio.lowlevel.notify_closing(self.fd)


def deliver(delivery: Delivery) -> None:
    """Reschedule the tasks whose transfers completed (trio's thread)."""
    parked = delivery.parked
    for completion in delivery.requests.collect():
        waiter = parked.pop(completion.token, None)
        if waiter is None:
            continue  # a dropped transit's last word
        raise_cancel = waiter.raise_cancel
        if raise_cancel is not None and completion.outcome == WITHDRAWN:
            # Its abort failed while the core was in the system call, and
            # the request was withdrawn after it: deliver the cancellation
            # (a file transfer reads what moved from the waiter).
            waiter.withdrawn = completion.transferred
            _reschedule(waiter.task, outcome.capture(raise_cancel))
        else:
            _reschedule(waiter.task, outcome.Value(completion))


class Collector(trio.abc.Instrument):
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
    system call to signal, trio none to clear, and the pump is not woken.

    It is installed only while it has work: the first request that parks
    installs it, and after ``IDLE_PASSES`` I/O waits with nothing parked it
    steps aside (handing the wake-ups back to the descriptor).  trio calls
    an instrument's hooks through a generic dispatcher, twice a pass, which
    a program whose transfers all complete inline would pay for nothing;
    installing costs more than a pass, hence the patience before stepping
    aside (docs/benchmark.rst has the measurements).
    """

    __slots__ = ("asleep", "delivery", "flag", "idle", "installed", "requests")

    def __init__(self, delivery: Delivery) -> None:
        self.delivery = delivery
        self.requests = delivery.requests
        self.flag = self.requests.notify_flag()
        self.asleep = False
        self.installed = False  # the core signals every batch (its default)
        self.idle = 0  # I/O waits since one found something parked

    # Protected from KeyboardInterrupt (it runs in the parking task): a
    # lazy core with no collector installed would never signal again.
    @protected
    def install(self) -> None:
        """Collect from now on (a request is about to park)."""
        if self.requests.closed:
            return  # the core's memory is freed: nothing parks any more
        # Lazy before the hooks run: until the first before_io_wait trio is
        # awake (it is running this task), and after_io_wait reads the flag.
        self.requests.collector_asleep(0)
        try:
            trio.lowlevel.add_instrument(self)
        except BaseException:
            self.requests.collector_asleep(-1)
            raise
        self.installed = True
        self.idle = 0

    def _step_aside(self) -> None:
        """Nothing parked for a while: leave delivery to the pump."""
        self.installed = False
        self.requests.collector_asleep(-1)  # the descriptor, every batch
        trio.lowlevel.remove_instrument(self)

    def before_io_wait(self, timeout: float) -> None:
        if timeout > 0 and not self.requests.closed:
            self.asleep = True
            self.requests.collector_asleep(1)

    def after_io_wait(self, timeout: float) -> None:
        # Closed (by the pump, or a user of current_traffic()): the core's
        # memory is freed.
        if self.requests.closed:
            return
        try:
            if self.asleep:
                self.asleep = False
                self.requests.collector_asleep(0)
            if self.flag[0]:
                deliver(self.delivery)
            if self.delivery.parked:
                self.idle = 0
            else:
                self.idle += 1
                if self.idle >= IDLE_PASSES:
                    self._step_aside()
        except BaseException:
            # trio disables an instrument that raises: from now on the pump
            # alone delivers, so the descriptor must be written every time.
            # (installed stays True: a broken collector is not reinstalled.)
            self.requests.collector_asleep(-1)
            raise


class Parked:
    """A task waiting for the completion of its transit's request.

    Registered under the transit's token for the collector to find, and
    handed to ``wait_task_rescheduled`` as the abort function itself: one
    small object per parked request, no closure (a parked receive is most
    of an idle connection's memory).  What the core may touch meanwhile is
    held by the run's requests since its submission.
    """

    __slots__ = ("delivery", "raise_cancel", "task", "transit", "withdrawn")

    # ``withdrawn``: set when the request was withdrawn, to the bytes it
    # had transferred (unset on the hot path, which never reads it).

    def __init__(self, delivery: Delivery, transit: Transit) -> None:
        self.delivery = delivery
        self.transit = transit
        self.task = _current_task()
        # Set once an abort failed (the core was inside the system call).
        self.raise_cancel: Any = None
        if not delivery.collector.installed:
            delivery.collector.install()
        delivery.parked[transit._token] = self

    def __call__(self, raise_cancel: Any) -> trio.lowlevel.Abort:
        """Withdraw the request (trio's abort function)."""
        transit = self.transit
        code, self.withdrawn = self.delivery.requests.withdraw(transit)
        if code != COMPLETING:
            # Withdrawn; or the Traffic is gone (closed, its thread joined),
            # so no completion will ever come and the memory is free.
            self.delivery.parked.pop(transit._token, None)
            return _SUCCEEDED
        # Inside the system call, or done: the completion follows promptly.
        self.raise_cancel = raise_cancel
        return _FAILED


@protected
async def transfer(
    delivery: Delivery,
    transit: Transit,
    memory: Any,
    writable: bool,
    refusals: Refusals,
    numbers: Any = None,
) -> Result:
    """Perform one request with ``memory`` (checked by the caller, exported
    at submission; written into when ``writable``) and a Descriptors
    request's ``numbers``, and return its result.  A checkpoint.

    ``refusals`` maps the core's refusals to the caller's exceptions.
    """
    await checkpoint_if_cancelled()
    done = delivery.requests.submit(transit, memory, writable, refusals, numbers)
    return await conclude(delivery, transit, done)


@protected
async def transfer_pinned(
    delivery: Delivery, transit: Transit, pin: Any, size: int, keep: object, refusals: Refusals
) -> Result:
    """:func:`transfer` with traffic's own long-lived export ``pin``
    (``size`` bytes; ``keep`` is what to keep alive while the request
    waits): see :meth:`~traffic._base._requests.Requests.submit_pinned`."""
    await checkpoint_if_cancelled()
    done = delivery.requests.submit_pinned(transit, pin, size, keep, refusals)
    return await conclude(delivery, transit, done)


@protected
async def conclude(delivery: Delivery, transit: Transit, done: Result | None) -> Result:
    """The second half of a transfer: the inline result after a shielded
    checkpoint, or, for a request that waits (``done`` None), its
    completion once the task is rescheduled."""
    if done is None:
        completion: Result = await wait_task_rescheduled(Parked(delivery, transit))
        return completion
    await cancel_shielded_checkpoint()
    return done


@protected
async def transfer_file(
    delivery: Delivery, transit: Transit, region: Region, refusals: Refusals
) -> Result:
    """Perform one file request (the region of a regular file to or from
    the stream transit) and return its result.  A checkpoint.

    Cancelled while it waits, the request is withdrawn and the bytes it
    had moved are recorded in ``region.moved`` before the cancellation
    propagates, so the caller can settle the file's position exactly.
    """
    await checkpoint_if_cancelled()
    done = delivery.requests.submit_file(transit, region.fd, region.offset, region.count, refusals)
    region.submitted = True  # the core took it: from now on the position is settled
    if done is None:
        parked = Parked(delivery, transit)  # the core holds its own duplicate
        try:
            completion: Result = await wait_task_rescheduled(parked)
        except BaseException:
            region.moved = getattr(parked, "withdrawn", 0)
            raise
        return completion
    await cancel_shielded_checkpoint()
    return done


_DELIVERY: trio.lowlevel.RunVar[Delivery] = trio.lowlevel.RunVar("traffic")


def delivery() -> Delivery:
    """The run's delivery, created (and its cycle thread started) on first use."""
    try:
        made = _DELIVERY.get()
    except LookupError:
        pass
    else:
        if not made.traffic.closed:
            return made
    traffic = Traffic()
    try:
        traffic.start(policy() or cycle_policy())
        made = Delivery(traffic)
        trio.lowlevel.spawn_system_task(pump, made, name="traffic.pump")
    except BaseException:
        traffic.close()
        raise
    _DELIVERY.set(made)
    return made


@protected
async def pump(delivery: Delivery) -> None:
    """Reschedule the tasks whose transfers completed.  Never raises: a crash
    here would kill the run; the Traffic is closed when the run ends.

    Protected from KeyboardInterrupt: Ctrl-C goes to the main task, and the
    pump goes on delivering while the tasks it parked unwind.
    """
    traffic = delivery.traffic
    parked = delivery.parked
    try:
        while True:
            try:
                await trio.lowlevel.wait_readable(delivery.fd)
            except trio.ClosedResourceError:
                break  # the Traffic was closed by hand (Delivery.closing)
            deliver(delivery)
    finally:
        # Closing the Traffic removes the collector first (Delivery.closing):
        # it reads the core's memory.  Cancelled at the end of the run:
        # normally no task is parked any more.  Only reschedule() of trio
        # here: a run abandoned mid-way (an internal error, a guest run
        # dropped) closes this coroutine outside trio, and the Traffic must
        # still be closed then (close() does not block on trio).  Once it is
        # closed (the cycle thread joined), no completion can come: a task
        # still parked wakes closed, not never.
        traffic.close()
        while parked:
            _, waiter = parked.popitem()
            with contextlib.suppress(RuntimeError):  # outside trio: nothing to wake
                _reschedule(
                    waiter.task, outcome.Error(trio.ClosedResourceError("the run's Traffic closed"))
                )
