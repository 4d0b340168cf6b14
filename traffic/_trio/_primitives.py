"""The trio layer's primitives on transits, and what they share.

The run's delivery and its Traffic (:func:`current_traffic`), the table
that turns the core's refusals into trio's exceptions, what a completion
means once per kind of operation, and the primitives that take a transit:
:func:`recv_into`, :func:`send_all`, :func:`accept`, and a file region
moved by the core (``_transfer_region``, for the streams and the file
primitives).

Imports trio, ``traffic._trio_parking``, ``traffic._base._requests``,
``traffic._base._sockets``, ``traffic._base._files``, ``traffic._base`` and
``traffic.errors``; nothing else of the trio layer.
"""

from __future__ import annotations

import errno
import os
from array import array
from typing import Any

import trio

from .. import _trio_parking
from .._base import _files
from .._base._checks import Polarity
from .._base._requests import (
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
from .._base._sockets import ACCEPT_BATCH
from .._base._the_traffic import Traffic
from .._base._transit import Octets, Sockets, Transit
from .._trio_parking import Delivery, transfer, transfer_file
from ..errors import TransitClosedError

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


# Files


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
