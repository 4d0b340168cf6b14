"""The core's limits and facts as Python reads them, and the checks that hold
a caller's arguments to them before anything reaches the core.

Imports the compiled core and :mod:`traffic.errors` only, so that every
other module of the core's face (``traffic._base._files`` too) may import it;
nothing of trio, anyio or asyncio.
"""

from __future__ import annotations

import enum
import errno
import os
from typing import Any

from .._traffic import ffi, lib
from ..errors import OutOfRangeError, TransitError

#: Timeouts from this many seconds on wait without limit (the kernel takes
#: an int of milliseconds: 2**31 ms is almost 25 days).
MAX_TIMEOUT = 2**31 // 1000

#: Backlog of listening sockets made by :meth:`Sockets.listen` (trio's
#: default is also "as large as the kernel allows"; 128 is SOMAXCONN's floor).
DEFAULT_BACKLOG = 128

#: The most :meth:`Traffic.receive` asks the core to allocate for one
#: receive; a larger ``size`` is clamped to it (a receive returns "up to"
#: its size anyway).
MAX_RECEIVE = 1 << 24

#: The largest descriptor number a C ``int`` holds.
MAX_DESCRIPTOR = 2**31 - 1


def _descriptor(fd: object, kind: str) -> int:
    """``fd`` as a descriptor number for the core: ``TypeError`` for a
    non-int, :class:`~traffic.errors.TransitError` (``EBADF``) for a number
    no descriptor can have (beyond a C ``int``)."""
    if not isinstance(fd, int) or isinstance(fd, bool):
        raise TypeError(f"a descriptor is an int, not {type(fd).__name__}")
    if fd > MAX_DESCRIPTOR or fd < -MAX_DESCRIPTOR:
        article = "an" if kind[0] in "AEIOU" else "a"
        raise TransitError(
            errno.EBADF,
            f"cannot make {article} {kind} transit of descriptor {fd}: not an open descriptor",
        )
    return fd


def _polarity(polarity: object) -> int:
    """``polarity`` as the core's ``TR_INPUT`` / ``TR_OUTPUT``; ``ValueError`` otherwise."""
    if (
        isinstance(polarity, int)
        and not isinstance(polarity, bool)
        and polarity in (lib.TR_INPUT, lib.TR_OUTPUT)
    ):
        return int(polarity)
    raise ValueError(f"polarity must be Polarity.INPUT or Polarity.OUTPUT, not {polarity!r}")


def _timeout_ms(timeout: object) -> int:
    """A cycle timeout in seconds (None: no limit) as the kernel's milliseconds (-1: none).

    ``TypeError`` for a non-number, ``ValueError`` for NaN; negative is 0
    (poll), from :data:`MAX_TIMEOUT` on (infinity too) there is no limit.
    """
    if timeout is None:
        return -1
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool):
        raise TypeError(f"a timeout is a number of seconds or None, not {type(timeout).__name__}")
    if timeout != timeout:
        raise ValueError("a timeout cannot be NaN")
    if timeout >= MAX_TIMEOUT:
        return -1
    if timeout <= 0:
        return 0
    return int(timeout * 1000 + 0.999)


def _address(address: object) -> str | bytes | tuple[Any, ...]:
    """Check a ``(host, port)`` or AF_UNIX path argument.

    ``TypeError`` for anything else; ``ValueError`` for a port outside
    0-65535 (the resolver would silently wrap it).
    """
    if isinstance(address, (str, bytes)):
        return address
    if isinstance(address, os.PathLike):
        path: str | bytes = os.fspath(address)
        return path
    if not isinstance(address, tuple) or len(address) < 2:
        raise TypeError(f"an address is a (host, port) tuple or an AF_UNIX path, not {address!r}")
    check_port(address[1])
    return address


def check_port(port: object) -> int:
    """A port: ``TypeError`` for a non-int, :class:`~traffic.errors.OutOfRangeError`
    (a ``ValueError``) outside 0-65535."""
    if not isinstance(port, int) or isinstance(port, bool):
        raise TypeError(f"a port is an int, not {type(port).__name__}")
    if not 0 <= port <= 65535:
        raise OutOfRangeError(f"port must be 0-65535, not {port}")
    return port


class Polarity(enum.IntEnum):
    """The direction of a transit: the seed's "on" (gain) and "off" (loss)."""

    OUTPUT = lib.TR_OUTPUT
    INPUT = lib.TR_INPUT


#: The kernel event backend the core was compiled with: ``"epoll"`` or
#: ``"kqueue"`` (chosen at build time; see ``TRAFFIC_BACKEND``).
backend: str = ffi.string(lib.tr_backend()).decode("ascii")


def live_objects() -> int:
    """Core objects (Traffics and transits) alive in C; 0 when nothing leaked."""
    return int(lib.tr_live_objects())


#: The events that end a transit's resource: the core lets go of it.
_ENDS = lib.TR_EV_EXHAUST | lib.TR_EV_FAULT | lib.TR_EV_TERMINATE
