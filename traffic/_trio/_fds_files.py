"""The trio layer's primitives that take a stream or a transit.

:func:`send_fds` and :func:`receive_fds` (descriptors over AF_UNIX, with
anyio's ``UNIXSocketStream`` signatures), :func:`send_file` and
:func:`receive_file` (a file's bytes moved by the core).  Each takes a
:class:`TrafficStream` (under its send or receive guard) or a bare
transit, so this module sits above both the transit primitives and the
stream.

Imports trio, ``traffic._trio._primitives``, ``traffic._trio._stream``,
``traffic._trio_parking``, ``traffic._base._requests``, ``traffic._base._sockets``,
``traffic._base._files`` and ``traffic._base``.
"""

from __future__ import annotations

import os
import socket as _stdlib_socket
from array import array
from typing import Any

import trio

from .._base import _files
from .._base._checks import Polarity
from .._base._descriptors import Descriptors, check_descriptor_message, descriptor_array
from .._base._requests import DONE, check_buffer, protected
from .._base._sockets import DEFAULT_RECEIVE_SIZE, MAX_RECEIVE_FDS, claimed
from .._base._transit import Octets
from .._trio_parking import transfer
from ._primitives import _REFUSALS, _in_run, _received, _sent, _transfer_region
from ._stream import TrafficStream, _busy_receive, _busy_send

# Descriptors


def _descriptor_transits(target: Any) -> tuple[Descriptors, Descriptors | None, Any]:
    """The Descriptors transit(s) of a stream or a transit: (input or output
    transit, its sibling if known, the stream or None)."""
    if isinstance(target, TrafficStream):
        if not isinstance(target._receiver, Descriptors):
            raise TypeError(
                "descriptors travel over AF_UNIX sockets: this TrafficStream is "
                f"{_stdlib_socket.AddressFamily(target.socket.family).name}"
            )
        return target._receiver, target._sender, target  # type: ignore[return-value]
    if isinstance(target, Descriptors):
        return target, None, None
    raise TypeError(
        f"expected a TrafficStream or a Descriptors transit, not {type(target).__name__}"
    )


@protected
async def send_fds(target: Any, data: Any, fds: Any) -> None:
    """Send ``data`` with the descriptors ``fds`` over an AF_UNIX stream
    (a :class:`TrafficStream` or an output
    :class:`~traffic.libkqueue.Descriptors` transit), as anyio's
    ``UNIXSocketStream.send_fds``.

    ``fds`` holds ints or objects with ``fileno()``; they are duplicated
    before anything is sent, so the caller's descriptors stay open (close
    them when you like).  At most :data:`~traffic.libkqueue.FDS_PER_MESSAGE`
    descriptors travel per message and each message needs a byte of
    ``data``.  A checkpoint.  Raises ``ValueError`` for empty ``data`` or
    ``fds`` (as anyio), ``TypeError`` for an entry that is not a descriptor,
    ``OSError(EBADF)`` for one that is not open, and what :func:`send_all`
    raises.  Cancelled, it either sent nothing (the duplicates are closed)
    or completes.
    """
    transit, sibling, stream = _descriptor_transits(target)
    if stream is not None:
        transit = sibling  # type: ignore[assignment]
    if transit.polarity != Polarity.OUTPUT:
        raise ValueError("send_fds() needs an output Descriptors transit")
    size = check_buffer(data, writable=False)
    if size == 0:
        raise ValueError("message must not be empty")
    numbers = descriptor_array(fds)
    if len(numbers) == 0:
        raise ValueError("fds must not be empty")
    check_descriptor_message(size, len(numbers))
    if stream is not None:
        with claimed(stream, "_sending", _busy_send):
            if stream._closed:
                raise trio.ClosedResourceError("the stream is closed")
            done = await transfer(stream._delivery, transit, data, False, _REFUSALS, numbers)
    else:
        done = await transfer(_in_run(transit), transit, data, False, _REFUSALS, numbers)
    _sent(done)


@protected
async def receive_fds(target: Any, msglen: int, maxfds: int) -> tuple[bytes, list[int]]:
    """Receive up to ``msglen`` bytes and up to ``maxfds`` descriptors over an
    AF_UNIX stream (a :class:`TrafficStream` or an input
    :class:`~traffic.libkqueue.Descriptors` transit), as anyio's
    ``UNIXSocketStream.receive_fds``: ``(data, descriptors)``.

    The descriptors (close-on-exec) are the caller's to close; more than
    ``maxfds`` arriving are closed, never leaked.  At EOF it returns
    ``(b"", [])`` (trio's ``receive_some`` convention).  ``msglen`` must be
    at least 1: descriptors always travel with a byte (anyio allows 0).  A
    checkpoint.  Cancelled, it either received nothing, or returns what it
    received (the cancellation is raised at the next checkpoint).  Raises
    ``trio.ClosedResourceError`` if the stream is closed meanwhile (what
    arrived is then closed).  ``msglen`` is clamped to 64 KiB and
    ``maxfds`` to :data:`MAX_RECEIVE_FDS` (what does not fit waits in the
    kernel for the next call).
    """
    if not isinstance(msglen, int) or msglen < 1:
        raise ValueError("msglen must be a positive integer (descriptors travel with a byte)")
    if not isinstance(maxfds, int) or maxfds < 1:
        raise ValueError("maxfds must be a positive integer")
    msglen = min(msglen, DEFAULT_RECEIVE_SIZE)
    maxfds = min(maxfds, MAX_RECEIVE_FDS)
    transit, _, stream = _descriptor_transits(target)
    if transit.polarity != Polarity.INPUT:
        raise ValueError("receive_fds() needs an input Descriptors transit")
    buffer = bytearray(msglen)
    numbers = array("i", bytes(4 * maxfds))
    if stream is not None:
        with claimed(stream, "_receiving", _busy_receive):
            if stream._closed:
                raise trio.ClosedResourceError("the stream is closed")
            done = await transfer(stream._delivery, transit, buffer, True, _REFUSALS, numbers)
            if stream._closed:
                _, outcome, _, _, _, descriptors = done
                if outcome == DONE:
                    for fd in numbers[:descriptors]:
                        os.close(fd)
                raise trio.ClosedResourceError("the stream was closed while receiving")
    else:
        done = await transfer(_in_run(transit), transit, buffer, True, _REFUSALS, numbers)
    _, outcome, _, transferred, _, descriptors = done
    if outcome == DONE:
        return bytes(buffer[:transferred]), numbers[:descriptors].tolist()
    _received(done)
    return b"", []


# Files


def _file_transits(target: Any, doing: str, polarity: Polarity) -> tuple[Octets, Any]:
    """The stream transit of ``target`` for ``polarity`` (a TrafficStream's
    sender or receiver, or an Octets/Descriptors transit), and the stream or None."""
    if isinstance(target, TrafficStream):
        transit = target._sender if polarity == Polarity.OUTPUT else target._receiver
        return transit, target
    if isinstance(target, Octets):
        if target.polarity != polarity:
            direction = "an output" if polarity == Polarity.OUTPUT else "an input"
            raise ValueError(f"{doing}() needs {direction} transit")
        return target, None
    raise TypeError(
        f"{doing}() needs a TrafficStream or an Octets transit, not {type(target).__name__}"
    )


@protected
async def send_file(
    target: Any, file: Any, *, offset: int | None = None, count: int | None = None
) -> int:
    """Send ``count`` bytes of ``file`` from ``offset`` over a stream (a
    :class:`TrafficStream` or an output Octets transit); return the bytes
    sent, which is ``count``.  The core sends them itself (``sendfile(2)``
    where the system has it): they never enter Python.

    ``file`` is a binary file object open for reading (also one wrapped by
    ``trio.wrap_file`` or ``anyio``), or a descriptor; it must be a
    regular file.  ``offset`` None starts at the file's position
    (``tell()``); ``count`` None sends to the end of the file as it is
    now.  Afterwards, in every outcome (cancellation and errors too), the
    file's position is just after the last byte sent: ``offset + sent``.

    A checkpoint.  Refused before anything is sent: ``ValueError`` for a
    negative ``offset``, ``count < 1`` or a region past the end of the
    file, and for a file that is not a regular one (``IsADirectoryError``
    for a directory); ``TypeError`` for a text file; ``ValueError`` for a
    closed one; ``io.UnsupportedOperation`` for one not open for reading.
    During the transfer: :class:`~traffic.errors.FileEndedError` (with
    ``sent``) if the file was truncated, ``OSError`` for a failure to read
    the file (the stream is intact), and what :meth:`TrafficStream.send_all`
    raises for the stream.  TLS streams are not supported: their bytes
    must be encrypted in Python.
    """
    transit, stream = _file_transits(target, "send_file", Polarity.OUTPUT)
    if stream is not None:
        sent: int = await stream.send_file(file, offset=offset, count=count)
        return sent
    region = _files.send_region(file, offset, count)
    return await _transfer_region(_in_run(transit), transit, region, sending=True)


@protected
async def receive_file(target: Any, file: Any, *, count: int | None = None) -> int:
    """Write what arrives on a stream (a :class:`TrafficStream` or an input
    Octets transit) to ``file``, from its position, until ``count`` bytes
    (None: until the peer ends the stream); return the bytes written (less
    than ``count`` if the stream ended first, 0 if it had ended).  The core
    writes them itself (``splice(2)`` on Linux): they never enter Python.

    ``file`` is a binary file object open for writing (a buffered one is
    flushed first; wrapped by ``trio.wrap_file`` or anyio too), or a
    descriptor, of a regular file; one opened for appending is written at
    its end.  Afterwards, in every outcome, the file's position is just
    after the last byte written.

    A checkpoint.  Refused before anything is received: ``ValueError`` for
    ``count < 1`` and a file that is not a regular one; ``TypeError`` for a
    text file; ``ValueError`` for a closed one; ``io.UnsupportedOperation``
    for one not open for writing.  A failure to write the file (``OSError``:
    ``ENOSPC``...) keeps the bytes it did not take in the stream: the next
    receive returns them first.  Else as :meth:`TrafficStream.receive_some`.
    """
    transit, stream = _file_transits(target, "receive_file", Polarity.INPUT)
    if stream is not None:
        written: int = await stream.receive_file(file, count=count)
        return written
    region = _files.receive_region(file, count)
    return await _transfer_region(_in_run(transit), transit, region, sending=False)
