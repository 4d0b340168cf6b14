"""A region of a regular file as a synchronous transit's transfer resource
(:class:`FileRegion`): checked through ``traffic._base._files`` when acquired,
its file's position settled when its end is reported.

Imports the compiled core, ``traffic._base._files`` and ``_checks``; nothing of
trio, anyio or asyncio.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

from .._traffic import lib
from . import _files
from ._checks import _ENDS


class FileRegion:
    """A region of a regular file as a transfer resource: what a stream's
    transit (:class:`Octets`, :class:`Descriptors`, over a socket) in a
    synchronous Traffic sends from or receives into, as it would a buffer:
    ``transit.acquire(FileRegion(file, offset, count))``.  The core moves
    the bytes between the socket and the file itself (``sendfile(2)``,
    ``splice(2)`` where the system has them): they never enter Python.

    ``file`` is a binary file object (open for reading to send, for
    writing to receive) or a descriptor, of a regular file; the core works
    on a duplicate of its descriptor, so the caller's is never closed.

    - Sent by an output transit: ``count`` bytes from ``offset``; None
      for ``offset`` is the file's position (``tell()``) and for
      ``count`` the rest of the file, its size read once, when the region
      is acquired (as :func:`traffic.send_file` does).
    - Received by an input transit: what arrives is written from the
      file's position (a buffered writer is flushed first; a file opened
      for appending is written at its end) until ``count`` bytes, None:
      until the stream ends.  A receive takes no ``offset``.

    In the cycle, :meth:`Transit.transfer` is the ``range`` of the file's
    offsets that moved in this cycle (a region has no memory to slice:
    its length is the bytes moved, as a memoryview's is).  The region
    ends as memory does: exhausted once every byte of ``count`` moved; a
    fault is the file's failure (:attr:`fault` says which; the stream is
    intact); the transit's termination ends it too (the stream's end, an
    error, the owner).  When it ends, the file's position is settled just
    after the last byte that moved, as :func:`traffic.send_file` leaves
    it: ``start + moved`` (the end of a file opened for appending).

    Refused when acquired, before anything moves, with
    :func:`traffic.send_file`'s exceptions: ``TypeError`` for a text file
    or an object that is not a file, ``ValueError`` for a closed file, a
    file that is not a regular one (``IsADirectoryError`` for a
    directory), a negative ``offset``, a ``count`` below 1 or a region
    past the end of the file, ``io.UnsupportedOperation`` for a file not
    open for the direction, ``OSError`` (``EBADF``) for a descriptor that
    is not open.  A region is held by one transit at a time, until its end
    is reported; after that it may be acquired again (``offset`` None then
    starts at the position the last transfer left).
    """

    __slots__ = ("_fault", "_length", "_moved", "_region", "_start", "count", "file", "offset")

    def __init__(self, file: object, offset: int | None = None, count: int | None = None) -> None:
        if offset is not None and _files._number(offset, "offset") < 0:
            raise ValueError(f"offset must be >= 0, not {offset}")
        if count is not None and _files._number(count, "count") < 1:
            raise ValueError(f"count must be >= 1, not {count}")
        #: The file, the offset and the count, as given.
        self.file = file
        self.offset = offset
        self.count = count
        self._region: _files.Region | None = None
        self._start: int | None = None
        self._length: int | None = None
        self._moved = 0
        self._fault: BaseException | None = None

    @property
    def start(self) -> int | None:
        """The file offset of the region's first byte, once acquired."""
        return self._start

    @property
    def length(self) -> int | None:
        """The bytes the region moves once acquired: ``count``, or what a
        send's ``count`` None came to; None for a receive until the end."""
        return self._length

    @property
    def moved(self) -> int:
        """The bytes moved so far, as the cycles reported them: the file's
        offsets ``range(start, start + moved)``."""
        return self._moved

    @property
    def fault(self) -> BaseException | None:
        """Why the region ended by a fault (the file's failure): a
        :class:`~traffic.errors.FileEndedError` for a file that ended
        before the region (truncated while it was sent), else an
        ``OSError``; None otherwise.  Not raised: the cycle reports."""
        return self._fault

    @property
    def held(self) -> bool:
        """Whether a transit holds the region (acquired, its end not reported yet)."""
        return self._region is not None

    def _resolve(self, polarity: int) -> _files.Region:
        """The file's region for a transit of ``polarity``, checked."""
        if polarity == lib.TR_OUTPUT:
            return _files.send_region(self.file, self.offset, self.count, "FileRegion")
        if self.offset is not None:
            raise TypeError(
                "a receive into a file starts at its position: FileRegion(file, count=...) "
                "takes no offset for an input transit"
            )
        return _files.receive_region(self.file, self.count, "FileRegion")

    def _begin(self, region: _files.Region) -> None:
        """The core took ``region``: from now on the file's position is
        settled when it ends."""
        region.submitted = True
        self._region = region
        self._start = os.fstat(region.fd).st_size if region.append else region.offset
        self._length = None if region.count == _files.UNTIL_END else region.count
        self._moved = 0
        self._fault = None

    def _took(self, report: Any, events: int) -> range | None:
        """A cycle's report: the offsets moved, and the end if it came."""
        start = self._start
        if self._region is None or start is None:
            return None
        stop = int(report.stop)
        self._moved = stop
        span = range(start + report.start, start + stop) if events & lib.TR_EV_TRANSFER else None
        if events & _ENDS:
            self._end(report.error if events & lib.TR_EV_FAULT else 0)
        return span

    def _end(self, error: int, settle: bool = True) -> None:
        """The region ended (``error``: the file's, for a fault): settle
        the file's position after what moved."""
        region, self._region = self._region, None
        if region is None:
            return
        if error:
            self._fault = _files.fault(error, self._moved, region.count, "FileRegion")
        if settle:
            with contextlib.suppress(OSError, ValueError):  # the caller closed it
                region.settle(self._moved)

    def __repr__(self) -> str:
        if self._region is None:
            return f"<FileRegion file={self.file!r} offset={self.offset} count={self.count}>"
        return f"<FileRegion held start={self._start} length={self._length} moved={self._moved}>"
