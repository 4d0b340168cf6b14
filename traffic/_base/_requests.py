"""The one way into a threaded Traffic's requests.

Every request the trio and anyio layers (and :class:`~traffic.libkqueue.
Traffic`'s own request methods) hand the core goes through a
:class:`Requests`: it is the only Python code that calls the core's request
functions (request, receive, withdraw, collect), and it owns what they
share: the report the core fills for a request that completes at once, the
scratch memory such a receive lands in, and the pins that keep a pending
request's memory alive.  It imports neither trio nor asyncio, and works on
the core's handles, so :mod:`traffic.libkqueue` builds on it.

Exports.  Memory handed in with a request (a caller's ``bytearray`` or
``memoryview``, a synchronous transit's resource) is exported to the core
here, with ``ffi.from_buffer``, immediately before the core gets it, and
released (``ffi.release``) here when the core is done with it: before an
inline result is returned or a refusal raised, and for a request that
waits, when its completion is collected, when it is withdrawn, or when the
Traffic closes after its thread is joined.  The layers check the memory
(:func:`check_buffer`) and take their checkpoint before, and never hold an
export themselves.  An export left to the collector is a crash: a caller's
``memoryview`` and cffi's exporter of it, both in a reference cycle (an
exception's traceback holds the requesting frame), are cleared in any
order, and CPython up to 3.12.6 frees the view's buffer under the live
export when the memoryview goes first.  Released exports cannot meet that;
nor can the long-lived exports of traffic's own ``bytearray`` and
``array`` objects (:meth:`Requests.submit_pinned`): the collector does not
track them.

A request either completes at once, in the caller's thread (the core tried
the transfer inline), or waits: then the core's cycle thread performs it
when the kernel allows and a :class:`Completion` follows through
:meth:`Requests.collect`.  Both give a :data:`Result` with the same fields,
so the layers read a result one way, by unpacking, whichever path it took.

Refusals.  A request the core refuses (a negative return code) is
classified here, once, into a :class:`Refusal`, and raised as the exception
the caller's table maps it to: each layer has one table (trio's
``ClosedResourceError``, anyio's...), and nothing else in the package reads
a raw return code of a request.
"""

from __future__ import annotations

import enum
import errno
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, NoReturn, TypeVar

from .._traffic import ffi, lib

__all__ = [
    "COMPLETING",
    "DONE",
    "FAULT",
    "FILE_ENDED",
    "NULL",
    "OWNER_TERMINATED",
    "PENDING",
    "TERMINATED",
    "WITHDRAWN",
    "Completion",
    "Refusal",
    "Refusals",
    "Requests",
    "Result",
    "check_buffer",
    "pin_descriptors",
    "protected",
    "refuse",
    "release",
    "release_all",
]

# The outcomes of a request (traffic.h).
PENDING: int = lib.TR_PENDING  # it waits: a completion follows
DONE: int = lib.TR_DONE
TERMINATED: int = lib.TR_TERMINATED  # the transit ended (error: 0 at EOF, else the errno)
FAULT: int = lib.TR_FAULT  # this transfer failed (error); the transit goes on
OWNER_TERMINATED: int = lib.TR_OWNER_TERMINATED  # by its owner, or its Traffic's close
WITHDRAWN: int = lib.TR_WITHDRAWN
COMPLETING: int = lib.TR_COMPLETING  # a withdraw too late: the completion follows

#: A file request's FAULT error when the file ended before its region.
FILE_ENDED: int = lib.TR_FILE_ENDED

NULL: Any = ffi.NULL

# The core's request calls, bound once: an attribute of the compiled
# library is a lookup on every call.
_tr_request = lib.tr_request
_tr_request_fds = lib.tr_request_fds
_tr_receive = lib.tr_receive
_tr_request_file = lib.tr_request_file
_from_buffer = ffi.from_buffer
_release = ffi.release

#: Reports collected per C call; more simply take another call.
COLLECT_BATCH = 256


class Completion(NamedTuple):
    """A finished request, inline or collected.

    ``outcome`` is one of the outcomes above; ``transferred`` counts bytes
    (for a :class:`~traffic.libkqueue.Sockets` transit, bytes of its
    ``array('i')`` resource).  ``data`` holds what a receive into memory
    the core provides received (the scratch, or an allocation), else None.
    ``descriptors`` counts the descriptors a Descriptors request sent, or
    received into its array (for an outcome other than
    ``OWNER_TERMINATED``: the core closed those of such a request).
    ``error`` is the errno of a ``TERMINATED`` or ``FAULT`` outcome, else
    0.  ``token`` names the transit (0 for a request that completed at
    once).
    """

    token: int
    outcome: int
    error: int
    transferred: int
    data: bytes | None = None
    descriptors: int = 0


#: A request's result, in :class:`Completion`'s fields: (token, outcome,
#: error, transferred, data, descriptors).  A request that completed at once
#: gives a plain tuple (making a NamedTuple costs more than the rest of the
#: call), a collected one a Completion: read either by unpacking.
Result = tuple[int, int, int, int, "bytes | None", int]


class Refusal(enum.Enum):
    """Why the core refused a request (a negative return code)."""

    #: The transit is terminated, or its Traffic is closed (``TR_ETERMINATED``).
    TERMINATED = "terminated"
    #: Another request of the transit is outstanding (``EBUSY``).
    BUSY = "busy"
    #: A descriptor to send is not an open descriptor (``EBADF``).
    BAD_DESCRIPTOR = "bad descriptor"
    #: Anything else: an ``OSError`` with the errno.
    OS_ERROR = "OS error"


#: A layer's table: the exception to raise for each refusal, made from the
#: errno (``EBADF`` for ``TERMINATED``).
Refusals = Mapping[Refusal, Callable[[int], BaseException]]


def refusal(code: int) -> tuple[Refusal, int]:
    """The refusal a negative return code means, and its errno."""
    if code == lib.TR_ETERMINATED:
        return Refusal.TERMINATED, errno.EBADF
    if code == -errno.EBUSY:
        return Refusal.BUSY, errno.EBUSY
    if code == -errno.EBADF:
        return Refusal.BAD_DESCRIPTOR, errno.EBADF
    return Refusal.OS_ERROR, -code


def refuse(code: int, refusals: Refusals) -> NoReturn:
    """Raise what ``refusals`` maps the refusal of ``code`` to."""
    kind, error = refusal(code)
    raise refusals[kind](error)


def os_error(error: int) -> OSError:
    """The plain ``OSError`` of an errno: every layer's ``OS_ERROR``."""
    return OSError(error, os.strerror(error))


#: What a refused descriptor to send is told with, in every layer.
BAD_DESCRIPTOR_MESSAGE = "cannot send descriptors: one of them is not an open descriptor"


def bad_descriptor(error: int) -> OSError:
    """Every async layer's ``BAD_DESCRIPTOR``."""
    return OSError(error, BAD_DESCRIPTOR_MESSAGE)


def take_data(report: Any) -> bytes | None:
    """Copy a core-allocated resource out of a report and free it."""
    pointer = report.data
    if pointer == NULL:
        return None
    try:
        data: bytes = ffi.buffer(pointer, report.stop)[:]
        return data
    finally:
        lib.tr_free(pointer)


def check_buffer(data: Any, writable: bool) -> int:
    """The size in bytes of ``data`` as a request's memory, checked without
    exporting it (the export is made at submission, see the module text).

    ``TypeError`` for an object that is not bytes-like, or a read-only one
    to receive into; ``BufferError`` for a non-contiguous one.  The
    memoryview made here to look is released at once: a live one would
    lock a ``bytearray``'s size.
    """
    if not writable and type(data) is bytes:  # the common send: nothing to check
        return len(data)
    try:
        view = memoryview(data)
    except TypeError:
        raise TypeError(f"expected a bytes-like object, not {type(data).__name__}") from None
    with view:
        if writable and view.readonly:
            raise TypeError(
                "receiving needs a writable buffer (bytearray, memoryview of one, array)"
            )
        if not view.contiguous:
            raise BufferError("the buffer must be contiguous")
        return view.nbytes


def release(exported: Any) -> None:
    """Release an export (or a tuple of them) made for a request: the
    exported object is free again (resizable, releasable)."""
    if exported.__class__ is tuple:
        for one in exported:
            _release(one)
    else:
        _release(exported)


def release_all(exports: dict[int, Any]) -> None:
    """Release every export of ``exports`` (a :attr:`Requests.exports`, whose
    core is gone) and empty it, in place: a Traffic's finalizer holds the
    same dictionary (see ``Traffic``)."""
    while exports:
        release(exports.popitem()[1])


def pin_descriptors(numbers: Any, writable: bool) -> Any:
    """The core's view of an ``array('i')`` of descriptor numbers (for
    traffic's own long-lived arrays: a request's go through
    :meth:`Requests.submit`)."""
    return _from_buffer("int[]", numbers, writable)


class Requests:
    """A threaded Traffic's requests, its scratch, its pins and its exports.

    Used from one thread at a time (the trio run's or the asyncio loop's):
    the report and the scratch are shared by every request made through it.
    Made by the Traffic (``Traffic.requests``) on the core's handle; closed
    by it after its cycle thread is joined, when nothing can touch the
    pinned memory any more.
    """

    __slots__ = (
        "_c",
        "_reports",
        "closed",
        "exports",
        "on_close",
        "pins",
        "received",
        "report",
        "room",
        "scratch",
    )

    def __init__(self, c: Any) -> None:
        self._c = c
        self.closed = False
        #: Called once by ``Traffic.close()``, in the closing thread, before
        #: anything is torn down: the layer that watches the completion
        #: descriptor (a trio run's pump, an asyncio loop's reader) stops
        #: watching it there, whoever closes the Traffic.
        self.on_close: Callable[[], None] | None = None
        self.report: Any = ffi.new("tr_report *")
        self._reports: Any = ffi.new("tr_report[]", COLLECT_BATCH)
        # What the core may touch while a request waits, by transit token,
        # in two kinds.  The requester's frame is not enough to keep either:
        # a frame can die before the core is done with the memory (a run
        # abandoned by an internal error closes its coroutines, and what
        # they alone referenced is freed while the cycle thread may be
        # inside read() into it).  Both are let go of when the completion is
        # collected, when the request is withdrawn, or at close.
        #
        # The exports made here of memory handed in (a cffi buffer, or a
        # tuple of them): released then, see the module text.  Never
        # replaced: the Traffic's finalizer holds this dictionary.
        self.exports: dict[int, Any] = {}
        # Objects only kept alive: a ``bytes`` sent as it is, and traffic's
        # own long-lived exports with their arrays (submit_pinned).
        self.pins: dict[int, object] = {}
        # No allocation and no free per receive that completes at once:
        # such a receive lands here, and its bytes are copied out at once.
        self.room = 0
        self.scratch: Any = NULL
        self.received: Any = None

    def reserve_scratch(self, room: int) -> None:
        """Make the scratch (``room`` bytes) for :meth:`receive`, once."""
        if self.room == 0:
            self.scratch = ffi.new("char[]", room)
            self.received = ffi.buffer(self.scratch)
            self.room = room

    # Submitting: the first call of every request.  Each returns the Result
    # of a request that completed at once, or None when it waits (and then
    # holds what the core may touch until the request ends).

    def submit(
        self,
        transit: Any,
        memory: Any,
        writable: bool,
        refusals: Refusals,
        numbers: Any = None,
        inline: int = 1,
    ) -> Result | None:
        """Hand the core a request to transfer with ``memory``, all of it:
        a bytes-like object the caller checked (:func:`check_buffer`), to
        receive into when ``writable``.  A Descriptors request gives its
        descriptor numbers in ``numbers``, an ``array('i')``: those to send,
        or as many entries as may arrive.

        An input request completes when anything arrives, an output request
        when all of it is sent.  With ``inline``, the core first tries the
        transfer in the calling thread.  The exports of ``memory`` and
        ``numbers`` are made here, as the core gets them, and released when
        the core is done with them (see the module text).  A ``bytes`` to
        send is not exported: cffi hands the core the address of its own
        storage, which does not move while the object lives.
        """
        report = self.report
        if memory.__class__ is bytes and numbers is None and not writable:
            # The common send: no export to make or release.
            code = _tr_request(transit._c, memory, len(memory), inline, report)
            if code == DONE:
                return (0, DONE, 0, report.stop, None, 0)
            if code == PENDING:
                self.pins[transit._token] = memory
                return None
            if code < 0:
                refuse(code, refusals)
            return (0, code, report.error, report.stop, None, 0)
        exported = _from_buffer("char[]", memory, writable)
        try:
            if numbers is None:
                code = _tr_request(transit._c, exported, len(exported), inline, report)
            else:
                exported = (exported, _from_buffer("int[]", numbers, writable))
                code = _tr_request_fds(
                    transit._c,
                    exported[0],
                    len(exported[0]),
                    exported[1],
                    len(numbers),
                    inline,
                    report,
                )
        except BaseException:  # nothing reached the core
            release(exported)
            raise
        if code == PENDING:
            self.exports[transit._token] = exported
            return None
        # The core is done with the memory: it is the caller's again.
        release(exported)
        if code < 0:
            refuse(code, refusals)
        # The error and the descriptors are read only when there are any:
        # every field read of the report is a cffi attribute lookup.
        descriptors = report.fd_stop if numbers is not None else 0
        if code == DONE:
            return (0, DONE, 0, report.stop, None, descriptors)
        return (0, code, report.error, report.stop, None, descriptors)

    def submit_pinned(
        self, transit: Any, pin: Any, size: int, keep: object, refusals: Refusals
    ) -> Result | None:
        """Hand the core a request to transfer with ``pin`` (``size``
        bytes), an export of traffic's own memory that its owner keeps for
        request after request (an accept queue's array, a datagram inbox):
        nothing is exported or released here; while the request waits,
        ``keep`` (the owner of ``pin``, or ``pin`` and what it exports) is
        kept alive.  Otherwise as :meth:`submit`.
        """
        report = self.report
        code = _tr_request(transit._c, pin, size, 1, report)
        if code == DONE:
            return (0, DONE, 0, report.stop, None, 0)
        if code == PENDING:
            self.pins[transit._token] = keep
            return None
        if code < 0:
            refuse(code, refusals)
        return (0, code, report.error, report.stop, None, 0)

    def receive(self, transit: Any, size: int, refusals: Refusals) -> Result | None:
        """A receive of up to ``size`` bytes (at most the scratch's room) into
        memory the core provides: the scratch if data is there at once
        (copied out into the result's ``data`` before this returns, so
        the scratch is free again), else an allocation made when data
        arrives, so a waiting receive holds no memory."""
        if size > self.room:
            size = self.room
        report = self.report
        code = _tr_receive(transit._c, size, self.scratch, report)
        if code == DONE:
            stop = report.stop
            return (0, DONE, 0, stop, self.received[:stop], 0)
        if code == PENDING:
            return None
        if code < 0:
            refuse(code, refusals)
        stop = report.stop
        return (0, code, report.error, stop, self.received[:stop], 0)

    def submit_file(
        self,
        transit: Any,
        fd: int,
        offset: int,
        count: int,
        refusals: Refusals,
        inline: int = 1,
    ) -> Result | None:
        """Hand the core a request to transfer ``count`` bytes between the
        stream transit and the regular file ``fd`` from ``offset`` (the
        core duplicates ``fd``: nothing of the caller's needs pinning).

        An output request completes when the region is sent; an input one
        when it is full or the stream ends (``DONE`` with what was written,
        the next request sees the end).  ``FAULT`` is the file's failure:
        its errno, or ``FILE_ENDED``.  ``transferred`` counts the bytes
        moved in every outcome.
        """
        report = self.report
        code = _tr_request_file(transit._c, fd, offset, count, inline, report)
        if code == PENDING:
            return None
        if code < 0:
            refuse(code, refusals)
        return (0, code, report.error, report.stop, None, 0)

    def allocate(
        self, transit: Any, size: int, refusals: Refusals, inline: int = 1
    ) -> Result | None:
        """A receive of up to ``size`` bytes into memory the core allocates
        (never the scratch), also when it completes at once."""
        report = self.report
        code = _tr_request(transit._c, NULL, size, inline, report)
        if code == PENDING:
            return None
        if code < 0:
            refuse(code, refusals)
        error = report.error if code != DONE else 0
        return (0, code, error, report.stop, take_data(report), 0)

    # A synchronous Traffic's resources

    def acquire(self, transit: Any, memory: Any, writable: bool, numbers: Any = None) -> int:
        """Give a synchronous Traffic's transit ``memory`` (and a Descriptors
        transit its ``numbers``, an ``array('i')``) as its resource: the
        core's return code.  Exported here, and released here when the
        core refuses it, and otherwise by :meth:`end` (its cycle reported
        the resource's end) or :meth:`close`."""
        exported = _from_buffer("char[]", memory, writable)
        try:
            if numbers is None or len(numbers) == 0:
                code = lib.tr_transit_acquire(transit._c, exported, len(exported))
            else:
                exported = (exported, _from_buffer("int[]", numbers, writable))
                code = lib.tr_transit_acquire_fds(
                    transit._c, exported[0], len(exported[0]), exported[1], len(numbers)
                )
        except BaseException:  # nothing reached the core
            release(exported)
            raise
        if code < 0:
            release(exported)
        else:
            self.exports[transit._token] = exported
        return int(code)

    def acquire_file(self, transit: Any, fd: int, offset: int, count: int) -> int:
        """Give a synchronous Traffic's stream transit the region of the
        regular file ``fd`` from ``offset`` for ``count`` bytes as its
        resource: the core's return code.  Nothing is exported or pinned:
        the core duplicates ``fd``, and closes its duplicate when the
        cycle reports the region's end."""
        return int(lib.tr_transit_acquire_file(transit._c, fd, offset, count))

    def end(self, token: int) -> None:
        """The core is done with the memory of the transit ``token``'s
        request or resource: release its exports, let go of its pins."""
        self.pins.pop(token, None)
        exported = self.exports.pop(token, None)
        if exported is not None:
            release(exported)

    # While a request waits

    def pin(self, token: int, keep: object) -> None:
        """Keep ``keep`` alive until the request of the transit ``token``
        completes, is withdrawn, or the Traffic closes."""
        self.pins[token] = keep

    def unpin(self, token: int) -> None:
        self.pins.pop(token, None)

    def withdraw(self, transit: Any) -> tuple[int, int]:
        """Withdraw the transit's request: ``(WITHDRAWN, transferred)``;
        ``(COMPLETING, 0)`` when the core is inside the system call for it
        or already done (the completion follows); or ``(code, 0)`` with a
        negative code when nothing is outstanding or the Traffic is gone
        (no completion will come).  Lets go of the request's memory unless
        the completion follows (:meth:`collect` does then)."""
        report = self.report
        code = lib.tr_withdraw(transit._c, report)
        if code == COMPLETING:
            return code, 0
        self.end(transit._token)
        return code, report.stop if code == WITHDRAWN else 0

    # Completions

    def collect(self) -> list[Completion]:
        """Every completion waiting, in one call per batch; lets go of the
        memory of each (:meth:`end`)."""
        if self.closed:
            return []
        completions = []
        reports = self._reports
        pins = self.pins
        exports = self.exports
        while True:
            n = lib.tr_collect(self._c, reports, COLLECT_BATCH)
            for i in range(n):
                r = reports[i]
                token = r.token
                pins.pop(token, None)
                exported = exports.pop(token, None)
                if exported is not None:
                    release(exported)
                completions.append(
                    Completion(token, r.outcome, r.error, r.stop, take_data(r), r.fd_stop)
                )
            if n < COLLECT_BATCH:
                return completions

    def notify_flag(self) -> Any:
        """The core's flag, raised (nonzero) while completions wait: read
        without a call or a lock, a stale zero only defers them."""
        return lib.tr_traffic_notify_flag(self._c)

    def collector_asleep(self, state: int) -> None:
        """Tell the core whether the collector may block in its I/O wait (1),
        is awake (0: it looks at the flag after each wait, so the completion
        descriptor is not written), or is gone (-1: write it every time)."""
        if not self.closed:
            lib.tr_traffic_collector_asleep(self._c, state)

    def close(self) -> None:
        """The Traffic is closed and its thread joined (or, in a forked
        child, never ran here): release every export, let go of every pin."""
        self.closed = True
        release_all(self.exports)
        self.pins.clear()


_Function = TypeVar("_Function", bound=Callable[..., Any])

# Functions marked before trio was imported, for trio to mark when it is.
_unmarked: list[Callable[..., Any]] = []


def protected(function: _Function) -> _Function:
    """Protect ``function`` from KeyboardInterrupt under trio.

    The functions that hand the core a request and take its result are
    protected: raised between the two, a KeyboardInterrupt would strand a
    request in the core, and with it bytes or descriptors the core has
    already transferred.  trio defers it to the task's next checkpoint,
    where it parks or ends.  It costs nothing per call (trio marks the code
    object).  Marked without importing trio: an asyncio program never
    imports it, and trio marks what was decorated before it came when the
    trio parking is imported (:func:`mark_protected`).
    """
    trio = sys.modules.get("trio")
    if trio is not None:
        trio.lowlevel.enable_ki_protection(function)
    else:
        _unmarked.append(function)
    return function


def mark_protected() -> None:
    """Let trio mark the functions :func:`protected` saw before it was imported."""
    import trio

    while _unmarked:
        trio.lowlevel.enable_ki_protection(_unmarked.pop())
