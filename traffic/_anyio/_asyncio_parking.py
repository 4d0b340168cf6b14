"""asyncio: one Traffic per event loop, its completion descriptor read by the loop.

:class:`_AsyncioParking` is the anyio layer's parking on asyncio (and on
uvloop's loop: it uses no more of a loop than ``add_reader``,
``remove_reader``, ``create_future``, ``create_task`` and ``is_closed``).
The module text of :mod:`traffic.anyio_backend` says how the loop's
Traffic is made, woken and closed with its loop, and what a cancelled
wait does; the methods say how.

Who owns what: every use of a loop's Traffic, its futures and its
dictionaries is in the loop's thread.  The cycle thread only writes the
completion descriptor (once per batch); the reader callback collects.

Imports asyncio, anyio, ``traffic._anyio._errors``, ``traffic._base._requests``,
``traffic._base._sockets``, ``traffic._base._files`` (types) and ``traffic._base``;
``traffic._anyio._parking`` for types only (it imports this module).
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio

from .._base import _files
from .._base._requests import (
    COMPLETING,
    OWNER_TERMINATED,
    WITHDRAWN,
    Completion,
    Result,
)
from .._base._sockets import DEFAULT_RECEIVE_SIZE
from .._base._the_traffic import Traffic, cycle_policy
from .._base._transit import Transit
from ._errors import _REFUSALS

if TYPE_CHECKING:
    from ._parking import _Orphan


def _no_policy() -> str | None:
    return None


#: Where a loop's cycle policy comes from (see ``Traffic.start``): the
#: face installs its reader of ``traffic.anyio_backend.CYCLE_POLICY``;
#: None takes ``$TRAFFIC_CYCLE_POLICY``, else ``"batch"``.
policy: Callable[[], str | None] = _no_policy


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
            traffic.start(policy() or cycle_policy())
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
    # transfer (python -m traffic.bench.instructions --only inline shows it
    # well beyond its noise).  transfer_file repeats it too: a prologue
    # shared with it alone would still leave the other three copies.

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
