"""A file region for ``send_file`` and ``receive_file``: what every layer shares.

The core transfers between a socket and a region of a regular file given
by descriptor, offset and count (``tr_request_file``): it never uses, nor
moves, the file's own position.  This module turns what a caller passes
(a binary file object, an async wrapper of one, or a descriptor) into
such a region, refusing bad input before anything is transferred, and
puts the file's position where the transfer left it afterwards
(:meth:`Region.settle`), in every outcome.

Positions are explicit because a buffered file's position is not the
kernel's: a ``BufferedReader`` has read ahead of its ``tell()``, and a
``BufferedWriter`` holds bytes not yet written.  So a send starts at
``tell()`` unless given an offset, a receive flushes the writer first and
starts at its ``tell()``, and both ``seek`` the file object (which drops a
reader's stale buffer) to the end of what moved.

The size of a file to send is read once (``fstat``), when the region is
made: a file that ends earlier than that while it is sent ends the
transfer with :class:`~traffic.errors.FileEndedError`.

Imports ``traffic._base._requests`` (the outcomes), ``traffic._base._checks``
and :mod:`traffic.errors`; neither trio, anyio nor asyncio.
"""

from __future__ import annotations

import errno
import io
import os
import stat
from collections.abc import Callable
from typing import Any

from ..errors import FileEndedError, OutOfRangeError
from ._checks import MAX_DESCRIPTOR
from ._requests import DONE, FAULT, FILE_ENDED, TERMINATED, Result

__all__ = ["UNTIL_END", "Region", "conclude", "fault", "receive_region", "send_region"]

#: The count of a receive that goes on until the stream ends.
UNTIL_END = 1 << 62  # beyond any stream; offset + count still fits an off_t


class Region:
    """A file's region for one transfer, and the file object to settle.

    ``fd`` is the file's descriptor (the core duplicates it: the caller's
    stays as it is), ``offset`` where the transfer starts, ``count`` the
    bytes to move (:data:`UNTIL_END` for a receive until the end),
    ``moved`` the bytes moved so far, as the layers learn it, and
    ``submitted`` whether the core took the request (or bytes were written
    otherwise): until then nothing happened to the file, and
    :meth:`settle` leaves it alone.
    """

    __slots__ = ("append", "count", "fd", "file", "moved", "offset", "submitted")

    def __init__(self, fd: int, offset: int, count: int, file: Any, append: bool) -> None:
        self.fd = fd
        self.offset = offset
        self.count = count
        self.file = file
        self.append = append
        self.moved = 0
        self.submitted = False

    def settle(self, moved: int | None = None) -> None:
        """Put the file's position after what moved (``moved``, if given,
        else :attr:`moved`): ``offset + moved``, or the end of a file
        opened for appending.  For a file object, through its ``seek``,
        which also drops what a buffered reader had read ahead.  A
        request the core refused, or that was cancelled before it was
        made, leaves the file as it was."""
        if not self.submitted:
            return
        if moved is not None:
            self.moved = moved
        if self.append:
            position, whence = 0, os.SEEK_END
        else:
            position, whence = self.offset + self.moved, os.SEEK_SET
        if self.file is None:
            os.lseek(self.fd, position, whence)
        elif not self.file.closed:
            self.file.seek(position, whence)


def _unwrap(file: Any) -> Any:
    """The file object under an async wrapper (trio's ``wrap_file``,
    anyio's ``AsyncFile``: both keep it as ``wrapped``)."""
    wrapped = getattr(file, "wrapped", None)
    if isinstance(wrapped, io.IOBase):
        return wrapped
    return file


def _descriptor(file: Any, doing: str, reading: bool) -> tuple[int, Any]:
    """The open descriptor of ``file``, and the file object (None for an int).

    ``TypeError`` for a text file or an object that is not a file,
    ``ValueError`` for a closed one, ``io.UnsupportedOperation`` for one
    not open for the direction (as io raises for a read of a write-only
    file); an int that is not an open descriptor is the kernel's
    ``OSError(EBADF)``."""
    if isinstance(file, bool):
        raise TypeError(f"{doing}() needs a binary file or a descriptor, not bool")
    if isinstance(file, int):
        if file < 0:
            raise ValueError(f"{doing}(): {file} is not a descriptor")
        _check_descriptor(file, doing)
        flags = _flags(file)
        if flags & getattr(os, "O_PATH", 0):
            # It names the file but reads and writes nothing: refused now,
            # as the kernel would refuse the transfer's first system call.
            raise OSError(errno.EBADF, f"{doing}(): an O_PATH descriptor moves no bytes")
        access = flags & os.O_ACCMODE
        if access == (os.O_WRONLY if reading else os.O_RDONLY):
            direction = "reading" if reading else "writing"
            raise io.UnsupportedOperation(f"{doing}() needs a descriptor open for {direction}")
        return file, None
    file = _unwrap(file)
    if isinstance(file, io.TextIOBase):
        raise TypeError(f"{doing}() needs a binary file, not a text one (open it with 'b')")
    if not isinstance(file, io.IOBase) and not hasattr(file, "fileno"):
        raise TypeError(f"{doing}() needs a binary file or a descriptor, not {type(file).__name__}")
    if getattr(file, "closed", False):
        raise ValueError(f"{doing}(): I/O operation on closed file")
    able = file.readable() if reading else file.writable()
    if not able:
        direction = "reading" if reading else "writing"
        raise io.UnsupportedOperation(f"{doing}() needs a file open for {direction}")
    fd = file.fileno()
    if not isinstance(fd, int):
        raise TypeError(f"{doing}(): fileno() gave {type(fd).__name__}, not an int")
    return fd, file


def _check_descriptor(fd: int, doing: str) -> None:
    """:class:`~traffic.errors.OutOfRangeError` for a number beyond a C ``int``."""
    if fd > MAX_DESCRIPTOR:
        raise OutOfRangeError(f"{doing}(): {fd} is beyond any descriptor number")


def _flags(fd: int) -> int:
    import fcntl

    return fcntl.fcntl(fd, fcntl.F_GETFL)


def _regular(fd: int, doing: str) -> os.stat_result:
    """``fstat`` of a regular file; ``IsADirectoryError`` for a directory,
    ``ValueError`` for a pipe, a socket or a device."""
    info = os.fstat(fd)
    if stat.S_ISREG(info.st_mode):
        return info
    if stat.S_ISDIR(info.st_mode):
        raise IsADirectoryError(f"{doing}() needs a regular file, not a directory")
    kind = (
        "a pipe"
        if stat.S_ISFIFO(info.st_mode)
        else "a socket"
        if stat.S_ISSOCK(info.st_mode)
        else "a device"
    )
    raise ValueError(f"{doing}() needs a regular file, not {kind}")


def _number(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, not {type(value).__name__}")
    return value


def send_region(
    file: Any, offset: int | None, count: int | None, doing: str = "send_file"
) -> Region:
    """The region of ``file`` a ``send_file`` sends: from ``offset`` (None:
    the file's position, ``tell()``) for ``count`` bytes (None: to the
    end of the file as ``fstat`` sees it now).

    ``ValueError`` for a negative offset, a ``count`` below 1, or a region
    past the end of the file; see :func:`_descriptor` and :func:`_regular`
    for the file itself.  Nothing is transferred or moved when it raises.
    ``doing`` names the caller in the messages.
    """
    fd, obj = _descriptor(file, doing, reading=True)
    size = _regular(fd, doing).st_size
    if offset is None:
        offset = obj.tell() if obj is not None else os.lseek(fd, 0, os.SEEK_CUR)
    offset = _number(offset, "offset")
    if offset < 0:
        raise ValueError(f"offset must be >= 0, not {offset}")
    if count is None:
        if offset > size:
            raise ValueError(f"offset {offset} is past the end of the file ({size} bytes)")
        count = size - offset
    else:
        count = _number(count, "count")
        if count < 1:
            raise ValueError(f"count must be >= 1, not {count}")
        if offset + count > size:
            raise ValueError(
                f"offset {offset} + count {count} is past the end of the file ({size} bytes)"
            )
    return Region(fd, offset, count, obj, append=False)


def receive_region(file: Any, count: int | None, doing: str = "receive_file") -> Region:
    """The region of ``file`` a ``receive_file`` writes: from the file's
    position (a buffered writer is flushed first) for ``count`` bytes
    (None: until the stream ends).  A file opened for appending is
    written at its end, whatever its position.

    ``ValueError`` for a ``count`` below 1; a count beyond any stream
    (:data:`UNTIL_END`) receives until the end.  See :func:`_descriptor`
    and :func:`_regular` for the file itself.  ``doing`` names the caller
    in the messages.
    """
    if count is not None:
        count = _number(count, "count")
        if count < 1:
            raise ValueError(f"count must be >= 1, not {count}")
        count = min(count, UNTIL_END)
    fd, obj = _descriptor(file, doing, reading=False)
    _regular(fd, doing)
    if obj is not None and hasattr(obj, "flush"):
        obj.flush()  # its bytes go first, where they belong
    offset = obj.tell() if obj is not None else os.lseek(fd, 0, os.SEEK_CUR)
    append = bool(_flags(fd) & os.O_APPEND)
    return Region(fd, offset, UNTIL_END if count is None else count, obj, append)


def conclude(
    done: Result,
    region: Region,
    sending: bool,
    broken: Callable[[int], BaseException],
    closed: Callable[[], BaseException],
) -> int:
    """What a file request's result means, in every layer: the bytes moved,
    or the exception to raise, made by the layer's ``broken`` (from the
    stream's errno) and ``closed``.  The region's position is the caller's
    to settle (before this, so that it is settled also when this raises).

    ``FAULT`` is the file's failure, the stream intact:
    :class:`~traffic.errors.FileEndedError` for a file that ended before
    the region, else ``OSError``.  A receive that met the stream's end
    with nothing written moved 0 bytes: no exception.
    """
    _, outcome, error, moved, _, _ = done
    if outcome == DONE:
        return moved
    if outcome == FAULT:
        raise fault(error, moved, region.count, "send_file" if sending else "receive_file")
    if outcome == TERMINATED:
        if not sending and error == 0:
            return 0  # the end of the stream, nothing written
        raise broken(error or errno.EPIPE)
    raise closed()


def fault(error: int, moved: int, count: int, doing: str) -> BaseException:
    """The exception a file's failure (a ``FAULT`` with ``error``) means,
    after ``moved`` of ``count`` bytes: :class:`~traffic.errors.FileEndedError`
    for a file that ended before the region, else ``OSError``."""
    if error == FILE_ENDED:
        return FileEndedError(moved, count)
    return OSError(error, f"{doing}: the file: {os.strerror(error)}")
