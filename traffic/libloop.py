"""Functions and classes for managing a simple event loop.

A :class:`Loop` runs one synchronous :class:`~traffic.libkqueue.Traffic`
for a plain (not trio, not anyio) program: it opens cycle after cycle,
hands every event to the callback the program attached for it, and runs
timers in between.

Why callbacks per event kind
----------------------------
A Traffic cycle reports, per transit, a set of event bits: a *transfer*
(part of the resource moved), *exhaustion* (the resource is used up: the
transit starves until it gets a new one), a *fault* (a transient accept
failure; the resource is released) and *termination* (no more transfers).
These mean different things to a program and call for different actions:
a transfer is data to process, exhaustion is the flow-control signal that
says "give me a resource when you are ready", termination is the end of a
direction.  One callback per kind keeps each of those actions a small
function, and fixes the order in which they run for a transit that has
several bits in one cycle: transfer, then exhaust, then fault, then
terminate (the data always comes before the news that no more follows).
A transit that has no callback for a kind simply ignores it; the state is
still readable from the transit (``exhausted``, ``terminated``, ``error``).

Files
-----
A stream's transit takes a :class:`~traffic.libkqueue.FileRegion` as its
resource as it takes a buffer (``attach(..., resource=FileRegion(file))``
or ``transit.acquire(FileRegion(file, offset, count))``), so a loop's
server sends a file on a connection, or receives one into a file, without
its bytes entering Python.  ``on_transfer`` is then given the ``range`` of
the file's offsets that moved instead of a memoryview; ``on_exhaust`` says
the whole region moved, ``on_fault`` that the file failed (the region's
:attr:`~traffic.libkqueue.FileRegion.fault` says how), ``on_terminate``
that the stream ended; in each case the file's position is already
settled after the last byte that moved.  A callback that takes both kinds
of resource tells them apart by the type of what it is given.

How timers bound the cycle
--------------------------
Timers live in a heap ordered by (deadline, sequence number) on
:func:`time.monotonic`, so equal deadlines fire first in, first out and
wall-clock jumps do not matter.  Each turn of the loop runs the timers that
are due, then opens one cycle whose timeout is the time left until the
next deadline (no timer: wait until an event or a :meth:`Loop.stop`).  The
loop therefore sleeps in the kernel exactly as long as nothing can happen
and wakes for the earliest of: an event, the next deadline, a stop.
Traffic rounds a timeout up to the next millisecond, so a loop never spins
on a deadline that is a fraction of a millisecond away.

Exceptions
----------
An exception raised by a callback (or a timer) propagates out of
:meth:`Loop.run` at once; nothing is swallowed.  The loop stays
consistent and can be run again:

- the callback that raised counts as delivered and is not called again;
- the other event kinds of the same transit in the same cycle are kept by
  the loop and delivered first by the next :meth:`Loop.run`;
- the transits the cycle had not visited yet keep their events in the
  Traffic, which carries them into the next cycle (Transfer-Loss is never
  silent);
- due timers that had not run yet stay in the heap and run next time.

Events carried over this way are delivered outside of a cycle, so a
callback must use the arguments it is given (the transfer's ``view``)
rather than :meth:`Transit.transfer` or :attr:`Transit.events`.

Threads
-------
A loop belongs to the thread that runs it.  Only :meth:`Loop.stop` may be
called from another thread (it wakes the cycle through
:meth:`Traffic.wake`); attach, timers and close are for the loop's thread.
"""

from __future__ import annotations

import heapq
import itertools
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import Any, Generic, TypeVar

from ._base._the_traffic import Traffic
from ._base._transit import Transit
from ._traffic import lib
from .errors import TransitClosedError

__all__ = ["Loop", "Timer"]

#: The longest a cycle waits for events while a timer is pending: deadlines
#: further away are reached in several waits (the core takes its timeout in
#: milliseconds as a C int, which overflows after 24.8 days).
MAX_WAIT = 86400.0

_T = TypeVar("_T", bound=Transit)

#: An ``on_transfer`` callback: given a memoryview of a buffer resource,
#: or the range of file offsets a :class:`~traffic.libkqueue.FileRegion`
#: moved (a callback for either kind, or for both).
OnTransfer = Callable[[_T, memoryview], object] | Callable[[_T, range], object]

#: Event kinds, in the order they are delivered for one transit.
_ORDER = (lib.TR_EV_TRANSFER, lib.TR_EV_EXHAUST, lib.TR_EV_FAULT, lib.TR_EV_TERMINATE)
_KNOWN = lib.TR_EV_TRANSFER | lib.TR_EV_EXHAUST | lib.TR_EV_FAULT | lib.TR_EV_TERMINATE


class Timer:
    """A callback scheduled by :meth:`Loop.call_later` or :meth:`Loop.call_soon`.

    Ordered by (deadline, sequence): equal deadlines run in the order they
    were scheduled.
    """

    __slots__ = ("_args", "_callback", "_loop", "_seq", "_state", "when")

    _PENDING, _DONE, _CANCELLED = 0, 1, 2

    def __init__(
        self,
        loop: Loop,
        when: float,
        seq: int,
        callback: Callable[..., object],
        args: tuple[Any, ...],
    ) -> None:
        #: The :func:`time.monotonic` deadline.
        self.when = when
        self._seq = seq
        self._loop = loop
        self._callback = callback
        self._args = args
        self._state = Timer._PENDING

    def __lt__(self, other: Timer) -> bool:
        return (self.when, self._seq) < (other.when, other._seq)

    @property
    def cancelled(self) -> bool:
        """Whether :meth:`cancel` took effect (before the timer ran)."""
        return self._state == Timer._CANCELLED

    @property
    def done(self) -> bool:
        """Whether the callback has been called (it may have raised)."""
        return self._state == Timer._DONE

    def cancel(self) -> bool:
        """Keep the callback from running.  Returns whether it was still
        pending; cancelling a timer that ran or was cancelled does nothing.
        A cancelled timer no longer keeps :meth:`Loop.run` going."""
        if self._state != Timer._PENDING:
            return False
        self._state = Timer._CANCELLED
        self._loop._timer_cancelled()
        self._callback = _nothing
        self._args = ()
        return True

    def __repr__(self) -> str:
        state = ("pending", "done", "cancelled")[self._state]
        return f"<Timer {state} when={self.when:.3f} {self._callback!r}>"


def _nothing(*args: Any) -> None:
    return None


class _Callbacks(Generic[_T]):
    """The callbacks attached for one transit."""

    __slots__ = ("on_exhaust", "on_fault", "on_terminate", "on_transfer")

    def __init__(
        self,
        on_transfer: OnTransfer[_T] | None,
        on_exhaust: Callable[[_T], object] | None,
        on_terminate: Callable[[_T], object] | None,
        on_fault: Callable[[_T], object] | None,
    ) -> None:
        self.on_transfer = on_transfer
        self.on_exhaust = on_exhaust
        self.on_terminate = on_terminate
        self.on_fault = on_fault


class _Carried:
    """Events of one transit taken from a cycle and not delivered yet."""

    __slots__ = ("events", "transit", "view")

    def __init__(self, transit: Transit, events: int, view: memoryview | range | None) -> None:
        self.transit = transit
        self.events = events
        self.view = view


class Loop:
    """A simple event loop over one synchronous :class:`Traffic`.

    ``traffic``: the Traffic to run; by default the loop makes its own, and
    then :meth:`close` closes it.  A threaded Traffic is refused
    (``ValueError``).  Usable as a context manager that closes the loop.
    """

    def __init__(self, traffic: Traffic | None = None) -> None:
        if traffic is None:
            traffic = Traffic()
            self._owns_traffic = True
        else:
            if not isinstance(traffic, Traffic):
                raise TypeError(f"Loop() takes a Traffic, not {type(traffic).__name__}")
            if traffic.threaded:
                raise ValueError("a Loop runs a synchronous Traffic; this one is threaded")
            if traffic.closed:
                raise ValueError("the Traffic is closed")
            self._owns_traffic = False
        self._traffic = traffic
        # Attached transits that have not been reported terminated yet.
        self._attached: dict[Transit, _Callbacks[Any]] = {}
        self._timers: list[Timer] = []
        self._pending_timers = 0  # in the heap and not cancelled
        self._seq = itertools.count()
        self._next_seq = 0
        self._carried: deque[_Carried] = deque()
        self._stopping = False
        self._running = False
        self._closed = False
        # Orders a stop() from another thread against close(): the Traffic
        # must not be woken while (or after) it is being destroyed.
        self._lifecycle = threading.Lock()

    # State

    @property
    def traffic(self) -> Traffic:
        """The Traffic this loop runs."""
        return self._traffic

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def running(self) -> bool:
        """Whether :meth:`run` is executing."""
        return self._running

    def transits(self) -> list[Transit]:
        """The attached transits not yet reported terminated, in attach order."""
        return list(self._attached)

    def pending(self) -> bool:
        """Whether anything is left for :meth:`run` to do: an attached live
        transit, a pending timer, or carried-over events."""
        return bool(self._attached or self._pending_timers or self._carried)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the Loop is closed")

    # Transits

    def attach(
        self,
        transit: _T,
        *,
        on_transfer: OnTransfer[_T] | None = None,
        on_exhaust: Callable[[_T], object] | None = None,
        on_terminate: Callable[[_T], object] | None = None,
        on_fault: Callable[[_T], object] | None = None,
        resource: object | None = None,
    ) -> _T:
        """Acquire ``transit`` into the loop's Traffic and deliver its events.

        Callbacks are called from :meth:`run` as ``on_transfer(transit,
        view)`` (``view``: a memoryview slice of the resource holding what
        moved; for :class:`~traffic.libkqueue.Sockets`, the new descriptors,
        which the callback then owns; for a
        :class:`~traffic.libkqueue.FileRegion`, the ``range`` of the file's
        offsets that moved) and ``on_exhaust(transit)``,
        ``on_fault(transit)``, ``on_terminate(transit)``.  A kind without a
        callback is ignored.  The transit stays attached, keeping
        :meth:`run` going, until its termination is delivered.

        ``resource``, if given, is acquired into the transit right away
        (:meth:`Transit.acquire`), a convenience for the common first step;
        if that raises, the transit stays attached.

        Attaching an attached transit again replaces its callbacks.  The
        loop takes every event of its Traffic: events of a transit acquired
        into it without :meth:`attach` are dropped.  Raises
        what :meth:`Traffic.acquire` and :meth:`Transit.acquire` raise (a
        transit in another Traffic: ``RuntimeError``; a terminated one:
        :class:`~traffic.errors.TransitClosedError`).  Returns ``transit``.
        """
        self._check_open()
        if not isinstance(transit, Transit):
            raise TypeError(f"attach() takes a Transit, not {type(transit).__name__}")
        if transit.terminated:
            raise TransitClosedError("cannot attach a terminated transit")
        self._traffic.acquire(transit)
        self._attached[transit] = _Callbacks(on_transfer, on_exhaust, on_terminate, on_fault)
        if resource is not None:
            transit.acquire(resource)
        return transit

    # Timers

    def call_later(self, delay: float, callback: Callable[..., object], *args: Any) -> Timer:
        """Call ``callback(*args)`` from :meth:`run` once ``delay`` seconds
        have passed (on :func:`time.monotonic`; negative means now).

        Timers with equal deadlines run in the order they were scheduled.  A
        timer scheduled by a callback with no delay runs in the next turn of
        the loop, after the cycle, never in the same pass (so a callback
        rescheduling itself cannot starve the transits).  Returns a
        cancellable :class:`Timer`.  Raises ``TypeError`` for a ``callback``
        that is not callable or a ``delay`` that is not a number,
        ``ValueError`` for a NaN ``delay``.
        """
        self._check_open()
        if not callable(callback):
            raise TypeError(f"callback must be callable, not {type(callback).__name__}")
        if not isinstance(delay, (int, float)) or isinstance(delay, bool):
            raise TypeError(f"delay is a number of seconds, not {type(delay).__name__}")
        delay = float(delay)
        if math.isnan(delay):
            raise ValueError("delay is NaN")
        when = time.monotonic() + max(0.0, delay)
        seq = next(self._seq)
        self._next_seq = seq + 1
        timer = Timer(self, when, seq, callback, args)
        heapq.heappush(self._timers, timer)
        self._pending_timers += 1
        return timer

    def call_soon(self, callback: Callable[..., object], *args: Any) -> Timer:
        """Call ``callback(*args)`` from :meth:`run` as soon as possible, in
        the order of scheduling (``call_later(0, ...)``)."""
        return self.call_later(0.0, callback, *args)

    def _timer_cancelled(self) -> None:
        self._pending_timers -= 1
        # Drop cancelled timers once they are most of the heap.
        if len(self._timers) > 64 and self._pending_timers < len(self._timers) // 2:
            # In place: _run_timers may be iterating this very list.
            self._timers[:] = [t for t in self._timers if t._state == Timer._PENDING]
            heapq.heapify(self._timers)

    def _run_timers(self) -> None:
        """Run the timers due now and scheduled before this pass began."""
        timers = self._timers
        now = time.monotonic()
        limit = self._next_seq
        while timers and timers[0].when <= now and timers[0]._seq < limit:
            timer = heapq.heappop(timers)
            if timer._state != Timer._PENDING:
                continue
            timer._state = Timer._DONE
            self._pending_timers -= 1
            callback, args = timer._callback, timer._args
            timer._callback, timer._args = _nothing, ()
            callback(*args)
            if self._closed or self._stopping:
                return

    def _timeout(self) -> float | None:
        """The cycle's timeout: the time to the next deadline, or None."""
        timers = self._timers
        while timers and timers[0]._state != Timer._PENDING:
            heapq.heappop(timers)
        if not timers:
            return None
        return min(MAX_WAIT, max(0.0, timers[0].when - time.monotonic()))

    # Events

    def _deliver(self) -> None:
        """Deliver carried events, oldest first; each callback exactly once."""
        carried = self._carried
        while carried:
            entry = carried[0]
            transit = entry.transit
            for kind in _ORDER:
                if not entry.events & kind:
                    continue
                # Marked delivered before the call: a raising callback is
                # not called again, the other kinds stay carried.
                entry.events &= ~kind
                if kind == lib.TR_EV_TERMINATE:
                    callbacks = self._attached.pop(transit, None)
                else:
                    callbacks = self._attached.get(transit)
                if callbacks is None:
                    continue
                if kind == lib.TR_EV_TRANSFER:
                    on_transfer: Callable[[Transit, Any], object] | None = callbacks.on_transfer
                    if on_transfer is not None:
                        view = entry.view if entry.view is not None else memoryview(b"")
                        entry.view = None
                        on_transfer(transit, view)
                elif kind == lib.TR_EV_EXHAUST:
                    if callbacks.on_exhaust is not None:
                        callbacks.on_exhaust(transit)
                elif kind == lib.TR_EV_FAULT:
                    if callbacks.on_fault is not None:
                        callbacks.on_fault(transit)
                elif callbacks.on_terminate is not None:
                    callbacks.on_terminate(transit)
                if self._closed or self._stopping:
                    return  # the entry keeps its other kinds for the next run()
            carried.popleft()

    def _cycle(self, timeout: float | None) -> None:
        """One Traffic cycle: deliver the events of every transit it reports."""
        traffic = self._traffic
        with traffic.cycle(timeout):
            transits = traffic.transfers()
            try:
                for transit in transits:
                    events = transit.events & _KNOWN
                    if events:
                        # Taken from the Traffic: the loop keeps it until
                        # every kind is delivered.
                        self._carried.append(_Carried(transit, events, transit.transfer()))
                    if self._closed or self._stopping:
                        break  # the Traffic carries the transits not taken yet
                    self._deliver()
                    if self._closed or self._stopping:
                        break
            finally:
                # A generator: closing it now, not at garbage collection,
                # leaves the unvisited transits to the Traffic at once.
                close = getattr(transits, "close", None)
                if close is not None:
                    close()

    # Running

    def run(self) -> None:
        """Run until :meth:`stop` is called or nothing is left.

        Each turn: deliver carried events, run due timers, then (unless
        stopping, closed, or nothing is left) open one cycle with the time
        to the next timer as its timeout and deliver its events.  Returns
        when :meth:`stop` was called (during this run or since the last
        one) or :meth:`pending` is false; the stop request is consumed.  A
        callback's exception propagates, leaving the loop consistent (see
        the module's documentation); ``run()`` may be called again.
        Raises ``RuntimeError`` if the loop is closed or already running.
        """
        self._check_open()
        if self._running:
            raise RuntimeError("the Loop is already running")
        self._running = True
        try:
            while not (self._closed or self._stopping):
                self._deliver()
                if self._closed or self._stopping:
                    break
                self._run_timers()
                if self._closed or self._stopping or not self.pending():
                    break
                self._cycle(0.0 if self._carried else self._timeout())
        finally:
            self._running = False
            self._stopping = False

    def stop(self) -> None:
        """Make :meth:`run` return once the callback now running (if any)
        returns: no further callback is called by this run.

        Safe from any thread and from callbacks; a blocked cycle wait ends
        at once (from another thread, a callback just being started may
        still run).  Events and due timers not delivered yet are kept for the
        next :meth:`run`.  Called while the loop is not running, the next
        :meth:`run` returns at once (before calling anything).
        """
        self._stopping = True
        with self._lifecycle:
            if not self._closed:
                self._traffic.wake()

    def close(self) -> None:
        """Forget every timer and transit; close the Traffic if the loop made it.

        With a Traffic given to the constructor, the attached transits are
        terminated and the Traffic is left to its owner.  For the loop's
        thread (from a callback too: :meth:`run` then returns).  Idempotent.
        """
        with self._lifecycle:
            if self._closed:
                return
            self._closed = True
        attached = list(self._attached)
        self._attached.clear()
        for timer in self._timers:
            if timer._state == Timer._PENDING:
                timer._state = Timer._CANCELLED
                timer._callback, timer._args = _nothing, ()
        self._timers.clear()
        self._pending_timers = 0
        self._carried.clear()
        if self._owns_traffic:
            with self._lifecycle:
                self._traffic.close()
        else:
            for transit in attached:
                transit.terminate()

    def __enter__(self) -> Loop:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("running" if self._running else "idle")
        return f"<Loop {state} transits={len(self._attached)} timers={self._pending_timers}>"
