"""The core's exceptions, and the one place C return codes become them.

Every C function of the core returns 0 (or a count, or an outcome) on
success and a negative errno, or ``TR_ECLOSED``, on failure.  :func:`check`
turns the failure into an exception; nothing else in the package inspects
raw return codes.  The trio and anyio layers translate these exceptions once
more into their own ``ClosedResourceError`` and ``BrokenResourceError``.
"""

from __future__ import annotations

import errno
import os

from ._traffic import lib

__all__ = ["TransitClosedError", "TransitError", "check", "transit_error"]


class TransitError(OSError):
    """A transfer or an operation of the core failed; ``errno`` says why."""


class TransitClosedError(TransitError):
    """The transit is terminated, or its Traffic is closed.

    Carries ``errno.EBADF``, as an operation on a closed descriptor would.
    """

    def __init__(self, message: str = "transit is terminated") -> None:
        super().__init__(errno.EBADF, message)


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
    if rc == lib.TR_ECLOSED:
        raise TransitClosedError(
            f"{context}: transit is terminated" if context else "transit is terminated"
        )
    raise transit_error(rc, context)
