"""The transits of descriptors (:class:`Descriptors`, SCM_RIGHTS over an
AF_UNIX stream socket) and the checks of descriptors to send, which the
trio and anyio layers share.

Imports the compiled core, ``traffic._base._requests``, :mod:`traffic.errors`,
``_transit`` and ``_file_region``; nothing of trio, anyio or asyncio.
"""

from __future__ import annotations

import errno
import socket
from array import array
from typing import Any

from .._traffic import lib
from ..errors import TransitError, check
from . import _requests
from ._file_region import FileRegion
from ._transit import Octets, Transit

#: Descriptors one message carries; a send of n descriptors needs
#: ``ceil(n / FDS_PER_MESSAGE)`` data bytes, one per message.
FDS_PER_MESSAGE = int(lib.TR_FDS_PER_MESSAGE)


def check_descriptor_message(size: int, count: int) -> None:
    """``ValueError`` unless ``size`` bytes can carry ``count`` descriptors:
    at most :data:`FDS_PER_MESSAGE` travel per message, with a byte each."""
    needed = -(-count // FDS_PER_MESSAGE)
    if size < needed:
        raise ValueError(
            f"{count} descriptors need at least {needed} data byte(s) to travel with "
            f"(one per message of at most {FDS_PER_MESSAGE}); got {size}"
        )


def descriptor_array(fds: object) -> array[int]:
    """An ``array('i')`` of the descriptors to send: ints (not bools) or
    objects with ``fileno()`` (files, sockets), as anyio's ``send_fds`` takes.

    Raises ``TypeError`` for anything else, and
    :class:`~traffic.errors.TransitError` (``EBADF``) for a negative number.
    """
    if isinstance(fds, array) and fds.typecode == "i":
        numbers = list(fds)
    else:
        try:
            items = list(fds)  # type: ignore[call-overload]
        except TypeError:
            raise TypeError(
                f"descriptors come as a sequence of ints, not {type(fds).__name__}"
            ) from None
        numbers = []
        for item in items:
            if isinstance(item, int) and not isinstance(item, bool):
                numbers.append(item)
            elif not isinstance(item, (bool, int)) and hasattr(item, "fileno"):
                numbers.append(int(item.fileno()))
            else:
                raise TypeError(
                    f"a descriptor to send is an int or has fileno(), not {type(item).__name__}"
                )
    for fd in numbers:
        if fd < 0:
            raise TransitError(errno.EBADF, f"cannot send descriptor {fd}: not an open descriptor")
        if fd > 0x7FFFFFFF:
            raise TransitError(errno.EBADF, f"cannot send descriptor {fd}: not an open descriptor")
    return array("i", numbers)


def _fds_error(rc: int) -> None:
    """Raise the clear exception for a descriptor the core could not duplicate."""
    if rc == -errno.EBADF:
        raise TransitError(errno.EBADF, _requests.BAD_DESCRIPTOR_MESSAGE)


class Descriptors(Octets):
    """A transit of descriptors, with bytes, over an AF_UNIX stream socket (SCM_RIGHTS).

    Its resource is a pair:

    - input: ``(bytearray(n), array('i', bytes(4 * k)))``: up to ``n`` bytes
      and up to ``k`` descriptors are received into them; descriptors beyond
      ``k`` are closed (never leaked).  Received descriptors are
      close-on-exec and belong to the receiver;
    - output: ``(data, fds)``: ``data`` bytes-like, ``fds`` a sequence of
      ints or objects with ``fileno()``.  The descriptors ride on the bytes,
      at most :data:`FDS_PER_MESSAGE` per message and at least one byte per
      message.  The sender's descriptors are never closed: the core sends
      duplicates, made when the resource is given.

    Without descriptors it moves bytes exactly as :class:`Octets` does
    (descriptors arriving then are closed), so a stream over AF_UNIX can use
    a Descriptors pair for everything.  In a synchronous cycle,
    :meth:`descriptors` lists what moved; in a threaded Traffic use
    :meth:`Traffic.request_fds`.
    """

    __slots__ = ("_fdarray", "_fdview")

    _type = lib.TR_DESCRIPTORS
    _fdarray: array[int] | None
    _fdview: list[int]

    @classmethod
    def _create(cls, fd: int, polarity: int, sibling: Transit | None = None) -> Descriptors:
        try:
            transit = super()._create(fd, polarity, sibling)
        except TransitError as exc:
            reasons = {
                errno.ENOTSOCK: "it is not a socket",
                errno.EAFNOSUPPORT: "it is not an AF_UNIX socket",
                errno.EPROTOTYPE: "it is not a SOCK_STREAM socket",
            }
            if exc.errno in reasons:
                raise TransitError(
                    exc.errno,
                    "a Descriptors transit passes descriptors over an AF_UNIX stream "
                    f"socket (SCM_RIGHTS): descriptor {fd} cannot carry one, "
                    f"{reasons[exc.errno]}",
                ) from None
            raise
        transit._fdarray = None
        transit._fdview = []
        return transit

    @classmethod
    def pipe(cls) -> tuple[Octets, Octets]:
        """Not for descriptors: pipes cannot carry them (use :meth:`socketpair`)."""
        raise TypeError("descriptors travel over AF_UNIX sockets, not pipes: use socketpair()")

    @classmethod
    def socketpair(
        cls, family: int = socket.AF_UNIX
    ) -> tuple[tuple[Descriptors, Descriptors], tuple[Descriptors, Descriptors]]:
        """A connected AF_UNIX pair: ((input, output), (input, output))."""
        return super().socketpair(family)  # type: ignore[return-value]

    def descriptors(self) -> list[int]:
        """The descriptors that moved in this cycle: received ones (now the
        caller's to close) or the caller's own that were sent."""
        return list(self._fdview)

    def _split(self, resource: object) -> tuple[object, array[int], int]:
        """Validate a (bytes, descriptors) resource: (data, fd array, size)."""
        if not (isinstance(resource, tuple) and len(resource) == 2):
            raise TypeError(
                "a Descriptors transit's resource is a pair: (bytearray, array('i')) "
                "to receive, (bytes, [descriptors]) to send"
            )
        data, fds = resource
        _, size = Transit._buffer(self, data)
        if self._polarity == lib.TR_INPUT:
            if not (isinstance(fds, array) and fds.typecode == "i"):
                raise TypeError("an input Descriptors resource receives into an array('i')")
            return data, fds, size
        numbers = descriptor_array(fds)
        check_descriptor_message(size, len(numbers))
        return data, numbers, size

    def acquire(self, resource: object) -> None:
        """Give the transit a (bytes, descriptors) pair; see the class text.

        Raises ``TypeError`` for a resource of the wrong shape or a
        descriptor that is not an int, ``ValueError`` for descriptors
        without data to carry them, :class:`~traffic.errors.TransitError`
        (``EBADF``) for a descriptor that is not open, and what
        :meth:`Transit.acquire` raises.  A :class:`FileRegion` is taken as
        by :meth:`Transit.acquire` (its bytes carry no descriptors).
        """
        if isinstance(resource, FileRegion):
            self._acquire_region(resource)
            return
        data, fds, _ = self._split(resource)
        traffic = self._traffic
        if traffic is None and not self.terminated:
            self._resource = resource
            return
        traffic = self._in_traffic()
        if traffic.threaded:
            self._resource = resource
            return
        rc = traffic.requests.acquire(self, data, self._polarity == lib.TR_INPUT, fds)
        if rc == -errno.EBUSY:
            raise BufferError(
                "the transit's resource is not exhausted yet; acquire after its exhaust event"
            )
        if rc == -errno.EINVAL:
            raise RuntimeError("a threaded Traffic takes requests (Traffic.request), not resources")
        _fds_error(rc)
        check(rc, "acquire")
        self._resource = resource
        self._memory = memoryview(data).cast("B")  # type: ignore[arg-type]
        self._fdarray = fds

    def _take_report(self, report: Any, events: int) -> None:
        fds = self._fdarray
        if events & lib.TR_EV_TRANSFER and fds is not None:
            self._fdview = fds[report.fd_start : report.fd_stop].tolist()
        else:
            self._fdview = []
        if events & (lib.TR_EV_EXHAUST | lib.TR_EV_FAULT | lib.TR_EV_TERMINATE):
            self._fdarray = None

    def _forget_report(self) -> None:
        self._fdview = []
