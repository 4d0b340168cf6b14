"""The anyio layer's errors: the core's refusals and outcomes as anyio's exceptions.

Errors cross once (see :mod:`traffic.anyio_backend`): the table of the
core's refusals of a request (``_REFUSALS``), a transit the kernel ended
with an errno as ``anyio.BrokenResourceError`` chained to the ``OSError``,
and the busy errors of anyio's ``ResourceGuard``, in its words.

Imports anyio and ``traffic._base._requests``; nothing else of traffic.
"""

from __future__ import annotations

import os
from typing import NoReturn

import anyio

from .._base._requests import Refusal, Refusals, bad_descriptor, os_error

# The core's refusals of a request, as anyio's exceptions (see _requests).
_REFUSALS: Refusals = {
    Refusal.TERMINATED: lambda _: anyio.ClosedResourceError(),
    Refusal.BUSY: lambda _: anyio.BusyResourceError("transferring on"),
    Refusal.BAD_DESCRIPTOR: bad_descriptor,
    Refusal.OS_ERROR: os_error,
}


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
