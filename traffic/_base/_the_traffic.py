"""The Traffic: the cycle owner, its synchronous cycles and its threaded
requests, and what a fork does to every live one.

The process's Traffic state lives here and is changed only here: the
live Traffics (closed in a forked child) and the fork generation.  Named
``_the_traffic`` so as not to be read as the compiled core,
``traffic._traffic``.

Imports the compiled core, ``traffic._base._files``, ``traffic._base._requests``,
:mod:`traffic.errors` and the other modules of ``traffic._base``; nothing
of trio, anyio or asyncio.
"""

from __future__ import annotations

import errno
import itertools
import os
import threading
import weakref
from collections.abc import Iterator
from types import TracebackType
from typing import Any

from .._traffic import ffi, lib
from ..errors import TransitClosedError, TransitError, check
from . import _files, _requests
from ._checks import _ENDS, MAX_RECEIVE, _timeout_ms
from ._descriptors import Descriptors
from ._file_region import FileRegion
from ._requests import Completion, Refusal, Requests
from ._transit import Octets, Transit, _transit

_live_traffics: weakref.WeakSet[Traffic] = weakref.WeakSet()

#: The cycle thread's scheduling unless told otherwise (see Traffic.start):
#: measured best on echo and accept (docs/benchmark.rst), and it cannot starve.
DEFAULT_CYCLE_POLICY = "batch"


def cycle_policy() -> str:
    """The policy a threaded Traffic starts with: ``$TRAFFIC_CYCLE_POLICY``,
    else :data:`DEFAULT_CYCLE_POLICY`."""
    return os.environ.get("TRAFFIC_CYCLE_POLICY") or DEFAULT_CYCLE_POLICY


#: How many fork()s this process is from the first one: a Traffic made at an
#: older generation belongs to a parent.  Cheaper than os.getpid() (a system
#: call) on every check.
_generation = 0


def _refused_os_error(error: int) -> BaseException:
    if error == errno.EINVAL:
        return RuntimeError("requests need a threaded Traffic: call start() first")
    return TransitError(error, f"request: {os.strerror(error)}")


# The request methods' exceptions for the core's refusals (see _requests).
_REFUSALS: _requests.Refusals = {
    Refusal.TERMINATED: lambda _: TransitClosedError("request: transit is terminated"),
    Refusal.BUSY: lambda _: RuntimeError("another request of this transit is outstanding"),
    Refusal.BAD_DESCRIPTOR: lambda error: TransitError(error, _requests.BAD_DESCRIPTOR_MESSAGE),
    Refusal.OS_ERROR: _refused_os_error,
}


class Traffic:
    """The cycle owner: a kernel queue and the transits acquired into it.

    ``timeout`` (seconds, None: wait until an event or :meth:`wake`) is
    what ``with traffic:`` waits for events; :meth:`cycle` takes its own.
    A timeout that is not a number raises ``TypeError``, NaN ``ValueError``;
    a negative one polls.
    """

    def __init__(self, timeout: float | None = None) -> None:
        _timeout_ms(timeout)  # TypeError, ValueError before anything is made
        out = ffi.new("tr_traffic **")
        check(lib.tr_traffic_create(out), "cannot create a Traffic")
        self._c: Any = out[0]
        self.timeout = timeout
        self._pid = os.getpid()
        self._generation = _generation
        self._closed = False
        self._tokens = itertools.count(1)
        #: The threaded Traffic's requests (the trio and anyio layers' way
        #: into the core; see :mod:`traffic._base._requests`).
        self.requests = Requests(self._c)
        # Resources handed to the core, by transit token (also a synchronous
        # cycle's): the requests' exports, one dictionary.
        self._exports = self.requests.exports
        # The transits a synchronous cycle reports on, by token.  A threaded
        # Traffic's completions go to their requester instead, and its
        # transits are not kept here (a weak entry per transit costs memory
        # and time per connection).
        self._transits: weakref.WeakValueDictionary[int, Transit] = weakref.WeakValueDictionary()
        # The file regions the core holds, by transit token: settled when
        # the cycle reports their end, also of a transit its owner dropped.
        self._regions: dict[int, FileRegion] = {}
        self._seen: list[Transit] = []
        self._cycling: threading.Thread | None = None
        # Orders wake() (any thread) against close() destroying the C side.
        self._lifecycle = threading.Lock()
        self._report = ffi.new("tr_report *")
        # Closes a Traffic its owner dropped, and every live one at exit
        # (before the interpreter finalizes: the cycle thread must never
        # touch a buffer after Python has freed it).
        #
        # The finalizer also releases the requests' exports once the core is
        # gone.  It holds their dictionary, not the requests (whose on_close
        # leads back here, so the Traffic would never be collected): a
        # Traffic collected in a reference cycle with a caller's memoryview
        # and its export must not leave the export to the collector (see
        # traffic._base._requests).  Weak reference callbacks run before the
        # collector clears anything.
        self._finalizer = weakref.finalize(
            self, _destroy, self._c, self._pid, self.requests.exports
        )
        _live_traffics.add(self)

    # State

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def threaded(self) -> bool:
        """Whether the core's own cycle thread runs this Traffic's cycle."""
        return not self._closed and lib.tr_traffic_mode(self._c) == lib.TR_MODE_THREADED

    def _check_fork(self) -> None:
        if self._generation != _generation:
            raise RuntimeError(
                "this Traffic belongs to the parent process: after fork(), create a new Traffic"
            )

    def _check_usable(self) -> None:
        self._check_fork()
        if self._closed:
            raise TransitClosedError("the Traffic is closed")

    def acquire(self, transit: Transit) -> None:
        """Put ``transit`` in traffic.  A socket's two transits share one Traffic."""
        self._check_usable()
        if not isinstance(transit, Transit):
            raise TypeError(f"acquire() takes a Transit, not {type(transit).__name__}")
        token = next(self._tokens)
        rc = lib.tr_traffic_acquire(self._c, transit._c, token)
        if rc == -errno.EALREADY:
            return
        if rc == -errno.EBUSY:
            raise RuntimeError("the transit is already in another Traffic")
        if rc == -errno.EXDEV:
            raise RuntimeError("the transit's sibling (the other direction) is in another Traffic")
        check(rc, "acquire")
        transit._traffic = self
        transit._token = token
        if lib.tr_traffic_mode(self._c) == lib.TR_MODE_THREADED:
            return
        self._transits[token] = transit
        recorded = transit._resource
        if recorded is not None:
            transit._resource = None
            transit.acquire(recorded)

    # Synchronous cycles

    def __enter__(self) -> Traffic:
        self._enter(self.timeout)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._exit()

    def cycle(self, timeout: float | None = None) -> _Cycle:
        """``with traffic.cycle(timeout):`` is ``with traffic:`` with its own timeout."""
        return _Cycle(self, timeout)

    def _enter(self, timeout: float | None) -> None:
        self._check_usable()
        milliseconds = _timeout_ms(timeout)
        rc = lib.tr_cycle_enter(self._c, milliseconds)
        try:
            if rc == -errno.EINVAL:
                raise RuntimeError("a threaded Traffic's cycle runs in its own thread")
            if rc == -errno.EBUSY:
                raise RuntimeError(
                    "a cycle of this Traffic is already open (in this or another thread)"
                )
            if rc != -errno.EINTR:
                # EINTR: the wait ended for a signal; the cycle is empty
                # and Python's signal handlers run as it returns.
                check(rc, "cycle")
            self._cycling = threading.current_thread()
        except BaseException:
            if rc >= 0:
                lib.tr_cycle_exit(self._c)
            raise

    def _exit(self) -> None:
        if self._cycling is None:
            return
        # Reset the event state of the transits visited in this cycle.
        # Unvisited events stay in the core and open the next cycle.
        for transit in self._seen:
            transit._events = 0
            transit._view = None
            transit._forget_report()
            token = transit._token
            held = token in self._exports or token in self._regions
            if transit._traffic is self and not held:
                transit._resource = None
                transit._memory = None
        self._seen.clear()
        self._cycling = None
        if not self._closed:
            lib.tr_cycle_exit(self._c)

    def transfers(self) -> Iterator[Transit]:
        """The transits with events in the open cycle, each visited once."""
        if self._cycling is None:
            raise RuntimeError("transfers() is for the inside of a cycle: with traffic: ...")
        report = self._report
        regions = self._regions
        while not self._closed and lib.tr_cycle_take(self._c, report):
            token = report.token
            events = report.events
            region = regions.get(token) if regions else None
            if events & _ENDS:
                self.requests.end(token)  # the core is done with the resource
                if region is not None:
                    del regions[token]
            if region is not None:
                # Settled at its end, also for a transit dropped by its owner.
                span = region._took(report, events)
            transit = self._transits.get(token)
            if transit is None:
                continue  # dropped by its owner: nobody to tell
            transit._events = events
            memory = transit._memory
            if region is not None:
                transit._view = span
            elif events & lib.TR_EV_TRANSFER and memory is not None:
                size = transit._itemsize
                transit._view = memory[report.start // size : report.stop // size]
            else:
                transit._view = None
            transit._take_report(report, events)
            self._seen.append(transit)
            yield transit

    def wake(self) -> None:
        """End a wait of the current or next cycle early.  Safe from any thread."""
        with self._lifecycle:
            if not self._closed and self._pid == os.getpid():
                lib.tr_traffic_wake(self._c)

    # Threaded use (the trio and anyio layers)

    def start(self, policy: str | None = None) -> None:
        """Run the cycle in the core's own thread, ``traffic-cycle``, from now on.

        ``policy`` is the thread's scheduling (None: :func:`cycle_policy`):

        - ``"batch"`` (Linux ``SCHED_BATCH``, the default): a fair share of
          the CPU, but a wake-up never preempts the thread running there, so
          edges batch up while the owner's thread works, and under outside
          load it does not starve;
        - ``"normal"``: every edge may preempt the owner's thread;
        - ``"idle"`` (Linux ``SCHED_IDLE``): it runs only when its CPU has
          nothing else to do; under outside load it starves.

        Elsewhere than Linux every policy is the normal one.  Starting
        twice does nothing.
        """
        if policy is None:
            policy = cycle_policy()
        self._check_usable()
        policies = {
            "normal": lib.TR_CYCLE_NORMAL,
            "idle": lib.TR_CYCLE_IDLE,
            "batch": lib.TR_CYCLE_BATCH,
        }
        if policy not in policies:
            raise ValueError(f"policy must be one of {sorted(policies)}, not {policy!r}")
        if lib.tr_traffic_mode(self._c) == lib.TR_MODE_SYNCHRONOUS:
            raise RuntimeError("a synchronous Traffic cannot become threaded")
        rc = lib.tr_traffic_start(self._c, policies[policy])
        check(rc, "start")

    def completion_fileno(self) -> int:
        """The descriptor that is readable while completions wait to be collected."""
        self._check_usable()
        return int(lib.tr_traffic_completion_fd(self._c))

    def request(
        self, transit: Transit, resource: object, *, inline: bool = True
    ) -> tuple[int, int, int]:
        """Ask the core to transfer with ``resource``; returns (outcome, error, transferred).

        An input request completes when anything arrives, an output request
        when all of it is sent.  With ``inline``, the transfer is first tried
        in the calling thread.  ``TR_PENDING`` means a completion follows
        (through :meth:`collect`) and the resource stays pinned until then.
        """
        self._check_usable()
        self._check_mine(transit)
        transit._buffer(resource)
        done = self.requests.submit(
            transit,
            transit._pinned(resource),
            transit._polarity == lib.TR_INPUT,
            _REFUSALS,
            inline=int(inline),
        )
        if done is None:
            report = self.requests.report  # a partly done send's count
            return _requests.PENDING, report.error, report.stop
        _, outcome, error, transferred, _, _ = done
        return outcome, error, transferred

    def request_fds(
        self, transit: Descriptors, data: object, fds: object, *, inline: bool = True
    ) -> tuple[int, int, int, int]:
        """:meth:`request` for a :class:`Descriptors` transit: (outcome, error,
        bytes transferred, descriptors transferred).

        Output: ``data`` (at least one byte) and ``fds`` (ints or objects
        with ``fileno()``), duplicated now: the caller's descriptors stay
        open and may be closed at once.  Input: ``data`` a writable buffer,
        ``fds`` an ``array('i')`` whose length is how many descriptors may
        arrive (more are closed); on ``TR_DONE`` (or a completion's
        ``descriptors``) its first entries are the received descriptors,
        now the caller's.  Both stay pinned while the request is pending.
        """
        self._check_usable()
        self._check_mine(transit)
        if not isinstance(transit, Descriptors):
            raise TypeError("request_fds() needs a Descriptors transit")
        payload, numbers, _ = transit._split((data, fds))
        writable = transit._polarity == lib.TR_INPUT
        done = self.requests.submit(
            transit, payload, writable, _REFUSALS, numbers, inline=int(inline)
        )
        if done is None:
            report = self.requests.report  # a partly done send's counts
            return _requests.PENDING, report.error, report.stop, report.fd_stop
        _, outcome, error, transferred, _, descriptors = done
        return outcome, error, transferred, descriptors

    def request_file(
        self,
        transit: Octets,
        file: object,
        *,
        offset: int | None = None,
        count: int | None = None,
        inline: bool = True,
    ) -> tuple[int, int, int]:
        """Ask the core to transfer between a stream transit and a regular
        file: (outcome, error, transferred).

        An output transit sends ``count`` bytes of ``file`` from ``offset``
        (defaults: the file's position, to its end); an input one writes
        what arrives to ``file`` from its position until ``count`` bytes
        (None: until the stream ends).  ``file`` is a binary file object or
        a descriptor; the core works on a duplicate of it and never moves
        its position: the caller settles it from ``transferred``, which
        counts the bytes moved in every outcome, a completion's too.
        ``TR_FAULT`` is the file's failure: its errno, or
        ``TR_FILE_ENDED`` for a file that ended before the region.  The
        checks on ``file``, ``offset`` and ``count`` are those of
        :func:`traffic.send_file` and :func:`traffic.receive_file`.
        Nothing needs pinning while the request is pending.
        """
        self._check_usable()
        self._check_mine(transit)
        if transit._type not in (lib.TR_OCTETS, lib.TR_DESCRIPTORS):
            raise TypeError("request_file() needs an Octets (or Descriptors) transit")
        if transit._polarity == lib.TR_OUTPUT:
            region = _files.send_region(file, offset, count)
        else:
            if offset is not None:
                raise TypeError("a receive into a file starts at its position: no offset")
            region = _files.receive_region(file, count)
        done = self.requests.submit_file(
            transit, region.fd, region.offset, region.count, _REFUSALS, inline=int(inline)
        )
        if done is None:
            return _requests.PENDING, 0, self.requests.report.stop
        _, outcome, error, transferred, _, _ = done
        return outcome, error, transferred

    def _check_mine(self, transit: Transit) -> None:
        """Refuse a transit of another Traffic (or of none).

        The core would serve it, but the resource would be pinned here under
        a token of the other Traffic: a collision with one of ours would
        unpin a buffer the core still writes into.
        """
        _transit(transit)
        if transit._traffic is not self:
            if transit._traffic is None and transit.terminated:
                raise TransitClosedError()
            raise RuntimeError("the transit is not in this Traffic: Traffic.acquire() it first")

    def receive(
        self, transit: Transit, size: int, *, inline: bool = True
    ) -> tuple[int, int, bytes | None]:
        """Ask the core to receive up to ``size`` bytes into memory it
        allocates only when data arrives: (outcome, error, data).

        Nothing is held while the request waits, so thousands of idle
        receivers cost no buffers.  ``data`` is the received bytes for
        ``TR_DONE``; for ``TR_PENDING`` the completion's ``data`` carries them.
        ``size`` is clamped to :data:`MAX_RECEIVE`; ``TypeError`` for a
        non-int, ``ValueError`` below 1.
        """
        self._check_usable()
        self._check_mine(transit)
        if transit._polarity != lib.TR_INPUT or transit._type not in (
            lib.TR_OCTETS,
            lib.TR_DESCRIPTORS,
        ):
            raise ValueError("receive() needs an input Octets (or Descriptors) transit")
        if not isinstance(size, int) or isinstance(size, bool):
            raise TypeError(f"size is an int, not {type(size).__name__}")
        if size < 1:
            raise ValueError("size must be >= 1")
        size = min(size, MAX_RECEIVE)
        done = self.requests.allocate(transit, size, _REFUSALS, inline=int(inline))
        if done is None:
            return _requests.PENDING, 0, None
        _, outcome, error, _, data, _ = done
        return outcome, error, data

    def pin(self, transit: Transit, pin: object) -> None:
        """Keep ``pin`` (a cffi buffer) alive until the transit's pending
        request completes, is withdrawn, or the Traffic closes: the core may
        write into it from its thread after the requester's frame is gone."""
        _transit(transit)
        self.requests.pin(transit._token, pin)

    def unpin(self, transit: Transit) -> None:
        """Forget the transit's pin: the core let go of the memory."""
        _transit(transit)
        self.requests.unpin(transit._token)

    def withdraw(self, transit: Transit) -> tuple[int, int]:
        """Withdraw the transit's request: (TR_WITHDRAWN, transferred), or
        (TR_COMPLETING, 0) when the core is inside the system call for it or
        already done (the completion then follows through :meth:`collect`).

        Raises :class:`~traffic.errors.TransitError` (``ENOENT``) when no
        request of the transit is outstanding, ``RuntimeError`` for a
        synchronous Traffic (it takes no requests),
        :class:`~traffic.errors.TransitClosedError` once the Traffic is closed.
        """
        self._check_fork()
        self._check_mine(transit)
        outcome, transferred = self.requests.withdraw(transit)
        if outcome == -errno.ENOENT:
            if not self._closed and lib.tr_traffic_mode(self._c) != lib.TR_MODE_THREADED:
                raise RuntimeError("requests need a threaded Traffic: call start() first")
            raise TransitError(errno.ENOENT, "withdraw: no request of this transit is outstanding")
        check(outcome, "withdraw")
        return outcome, transferred

    def collect(self) -> list[Completion]:
        """Every completion waiting, in one call per batch."""
        return self.requests.collect()

    # Lifecycle

    def close(self) -> None:
        """Stop and join the cycle thread, terminate every transit, close
        every kernel point the Traffic owns.  Idempotent."""
        if self._closed:
            return
        if self._pid != os.getpid():
            self._abandon()
            return
        cycling = self._cycling
        if cycling is not None and cycling is not threading.current_thread():
            raise RuntimeError(
                "close() while another thread runs a cycle: wake() it and close there"
            )
        on_close, self.requests.on_close = self.requests.on_close, None
        if on_close is not None:
            on_close()  # the layer lets go of the descriptor (it may close us itself)
            if self._closed:
                return
        with self._lifecycle:
            self._closed = True
            self.requests.closed = True  # before the core's memory goes
            self._finalizer()
        self.requests.close()  # the cycle thread is joined: unpin
        for transit in list(self._transits.values()):
            transit._resource = None
            transit._memory = None
        # Regions whose end no cycle reported: settled after what was reported.
        while self._regions:
            self._regions.popitem()[1]._end(0)
        _live_traffics.discard(self)

    def _abandon(self) -> None:
        """In a forked child: close the child's copies, touch nothing shared."""
        if not self._closed:
            self._closed = True
            self.requests.closed = True
            self._finalizer()  # abandons: it sees the pid changed
            self.requests.close()
            # The file's position is shared with the parent: left alone.
            while self._regions:
                self._regions.popitem()[1]._end(0, settle=False)
            _live_traffics.discard(self)

    def __len__(self) -> int:
        """The transits in this Traffic that their owners still hold."""
        if self._closed:
            return 0
        return int(lib.tr_traffic_transits(self._c))

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("threaded" if self.threaded else "synchronous")
        return f"<Traffic {state} transits={len(self)}>"


class _Cycle:
    """``with traffic.cycle(timeout):``; see :meth:`Traffic.cycle`."""

    __slots__ = ("_timeout", "_traffic")

    def __init__(self, traffic: Traffic, timeout: float | None) -> None:
        self._traffic = traffic
        self._timeout = timeout

    def __enter__(self) -> Traffic:
        self._traffic._enter(self._timeout)
        return self._traffic

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._traffic._exit()


def _after_fork_in_child() -> None:
    global _generation
    _generation += 1
    for traffic in list(_live_traffics):
        traffic._abandon()


def _destroy(c: Any, pid: int, exports: dict[int, Any]) -> None:
    if os.getpid() == pid:
        lib.tr_traffic_destroy(c)
    else:
        lib.tr_traffic_abandon(c)
    _requests.release_all(exports)  # the cycle thread is joined (or never ran here)


os.register_at_fork(after_in_child=_after_fork_in_child)
