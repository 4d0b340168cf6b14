"""The core's exceptions, and the one place C return codes become them.

Every C function of the core returns 0 (or a count, or an outcome) on
success and a negative errno, or ``TR_ETERMINATED``, on failure.  :func:`check`
turns the failure of a synchronous call into an exception (the few codes
that mean a misuse, such as ``EBUSY`` for a transit already in a Traffic,
are told apart where the call is made, in :mod:`traffic.libkqueue`).  A
threaded Traffic's requests are refused through ``traffic._base._requests``,
which classifies the code once and raises what the caller's layer maps it
to: trio's or anyio's ``ClosedResourceError`` and ``BusyResourceError``,
or these exceptions for :class:`~traffic.libkqueue.Traffic`'s own request
methods.
"""

from __future__ import annotations

import errno
import os

from ._traffic import lib

__all__ = [
    "FileEndedError",
    "OutOfRangeError",
    "TransitClosedError",
    "TransitError",
    "check",
    "transit_error",
]


class TransitError(OSError):
    """A transfer or an operation of the core failed; ``errno`` says why."""


class TransitClosedError(TransitError):
    """The transit is terminated, or its Traffic is closed.

    Carries ``errno.EBADF``, as an operation on a closed descriptor would.
    """

    def __init__(self, message: str = "transit is terminated") -> None:
        super().__init__(errno.EBADF, message)


class OutOfRangeError(ValueError, OverflowError):
    """A number the kernel cannot take, refused before any system call: a
    port outside 0-65535, a descriptor number beyond a C ``int``.

    A ``ValueError``, and an ``OverflowError`` too: that is what the socket
    module raises for such a number (``bind()``, ``connect()``,
    ``socket(fileno=...)``), and what code written against anyio's own
    factories catches.  (For a port, the resolver would instead wrap it
    silently, to the port modulo 65536.)
    """


class FileEndedError(EOFError):
    """A file ended before the region a ``send_file`` was asked to send:
    it was truncated while being sent.

    ``sent`` counts the bytes that went out (the file's position is left
    after them), ``expected`` those that were asked for.
    """

    def __init__(self, sent: int, expected: int) -> None:
        super().__init__(f"the file ended after {sent} of {expected} bytes")
        self.sent = sent
        self.expected = expected


def transit_error(code: int, context: str = "") -> TransitError:
    """The exception for an errno (positive) or a negative return code."""
    code = abs(code)
    message = os.strerror(code)
    if context:
        message = f"{context}: {message}"
    return TransitError(code, message)


def check(rc: int, context: str = "") -> int:
    """Return ``rc`` if it is not an error; raise the matching exception otherwise."""
    if rc >= 0:
        return rc
    if rc == lib.TR_ETERMINATED:
        raise TransitClosedError(
            f"{context}: transit is terminated" if context else "transit is terminated"
        )
    raise transit_error(rc, context)
