"""How a task of the anyio layer waits for its transfer, and which way.

A stream, listener or datagram socket is made with the parking of the
backend running (:func:`_parking`, chosen with
``sniffio.current_async_library()``), and waits through it for every
transfer that does not complete at once:

- on trio, :class:`_TrioParking`: the run's delivery of
  :mod:`traffic._trio_parking` (the trio layer's own parking, imported
  only when a stream is made on trio: an asyncio program never imports
  trio), raising anyio's exceptions;
- on asyncio, :class:`~traffic._anyio._asyncio_parking._AsyncioParking`:
  the loop's own Traffic.

:class:`_Parking` is what both answer.  :func:`current_traffic` and
:func:`close_traffic` are the faces of that choice.

Imports asyncio (its types, and the running loop), sniffio,
``traffic._anyio._asyncio_parking`` and ``_errors``,
``traffic._base._requests``, ``traffic._base._files`` (types) and
``traffic._base``; ``traffic._trio_parking`` only when a stream is
made on trio.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import sniffio

from .._base import _files
from .._base._requests import Completion, Requests, Result
from .._base._the_traffic import Traffic
from .._base._transit import Transit
from ._asyncio_parking import _LOOPS, _AsyncioParking
from ._errors import _REFUSALS

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
        from .. import _trio_parking as parking

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
