"""A static-file HTTP/1.1 server on trio, with traffic sending the files.

Usage::

    python examples/http_files.py ROOT [PORT] [--host HOST] [--idle-timeout SECONDS]

Serves the regular files under the directory ``ROOT``: ``GET /a/b.txt``
answers with ``ROOT/a/b.txt``.  ``PORT`` defaults to 0 (the kernel picks
one) and ``HOST`` to 127.0.0.1.  Once listening, the server prints
``listening on HOST:PORT`` (one line per listener, flushed), so a script can
start it and read the port.  Ctrl-C stops it: every connection is closed and
the process exits with status 0.

The protocol is `h11 <https://h11.readthedocs.io>`_'s (``pip install h11``),
which parses requests and frames responses and does no I/O; the bytes travel
over the :class:`traffic.TrafficStream`\\ s that :func:`traffic.serve_tcp`
hands to a task per connection.  A response's body never passes through
Python: :meth:`traffic.TrafficStream.send_file` has the core send the file's
region straight from the file to the socket (``sendfile(2)`` where the
system has it).

What it does:

* keep-alive: any number of requests per connection, one after the other
  (pipelined requests are answered in order); a connection waiting for a
  request longer than ``--idle-timeout`` (60 s) is closed;
* ``GET`` and ``HEAD`` (the headers of the ``GET``, no body), with
  ``Content-Length``, ``Content-Type`` (guessed from the name with
  :mod:`mimetypes`, else ``application/octet-stream``) and
  ``Accept-Ranges: bytes``; other methods get 405;
* one byte range per request: ``Range: bytes=a-b``, ``bytes=a-`` and the
  suffix ``bytes=-n`` are answered 206 with ``Content-Range``; a range that
  starts at or past the end of the file, or a zero-length suffix, 416 with
  ``Content-Range: bytes */SIZE``; anything else in ``Range`` (several
  ranges, another unit, bad syntax) is ignored and the whole file sent, as
  RFC 9110 allows;
* 404 for a path that names no regular file under ``ROOT``: missing files,
  directories, and every path that would leave ``ROOT`` (a ``..`` segment,
  percent-encoded or not, or a symbolic link that points outside); 403 for
  a file the server may not read.

What it does not: directory listings, conditional requests (it sends no
validators, so an ``If-Range`` always means the whole file), several ranges
in one response, compression, and a timeout on a client that stops reading
a body (its task waits for it until the server stops).
"""

from __future__ import annotations

import argparse
import email.utils
import errno
import mimetypes
import os
import re
import stat
import sys
import urllib.parse
from functools import partial
from http import HTTPStatus
from typing import BinaryIO, cast

import h11
import trio

import traffic

#: Seconds a connection may take to deliver its next request (head and body)
#: before the server closes it: an idle keep-alive connection is a task and
#: a descriptor.
IDLE_TIMEOUT = 60.0

#: Seconds a closing connection waits for the client's EOF (see
#: :func:`close_gracefully`).
CLOSE_TIMEOUT = 5.0

#: ``Range: bytes=first-last``, one range (RFC 9110 section 14.1.2: no spaces
#: inside; the unit is case-insensitive; h11 has stripped the value's ends).
_ONE_RANGE = re.compile(rb"bytes=([0-9]*)-([0-9]*)", re.IGNORECASE)

#: More digits than any file offset has: such a number stands for "past any
#: end" rather than being parsed (int() refuses strings of more than 4300
#: digits, and a header may be 16 KiB long).
_MAX_DIGITS = 20


class RangeNotSatisfiable(Exception):
    """The Range asked for bytes the file does not have: answer 416."""


class _FileRegion:
    """A body placeholder for h11: its length is the region's, its bytes are
    sent by :meth:`~traffic.TrafficStream.send_file`.

    h11 only takes ``len()`` of a body and hands the object back from
    ``send_with_data_passthrough`` (its documented support for sendfile).
    """

    __slots__ = ("count",)

    def __init__(self, count: int) -> None:
        self.count = count

    def __len__(self) -> int:
        return self.count


class _BodyCut(Exception):
    """The file could not supply the body announced (it shrank, or reading it
    failed) after the headers went out: the connection must be closed, so
    the client sees the response is incomplete."""


def resolve(root: str, target: bytes) -> str | None:
    """The path under ``root`` that the request-target ``target`` names, or
    None if it names nothing under ``root``.

    ``root`` must be a real path (no symbolic links: ``os.path.realpath``).
    The target is an origin-form (``/a/b?query``) or absolute-form
    (``http://host/a/b``) URI; its path is percent-decoded as UTF-8.  None
    for any other form, for a path that does not decode, holds a NUL or a
    ``..`` segment, and for one that leaves ``root`` through a symbolic
    link.  The path returned is real, but may name nothing or a directory.
    """
    path = target.partition(b"?")[0]
    if not path.startswith(b"/"):
        if not re.match(rb"https?://", path, re.IGNORECASE):
            return None  # "*" or an authority: no file
        # Not urlsplit on the whole target: it would read an origin-form
        # "//a/b" as host "a".
        path = urllib.parse.urlsplit(path).path or b"/"
    try:
        # h11 lets only visible ASCII through in a request-target.
        text = urllib.parse.unquote(path.decode("ascii"), errors="strict")
    except UnicodeDecodeError:
        return None
    segments = text.split("/")
    # Refused, not resolved: a client resolves dot segments before sending
    # (RFC 3986 section 5.2.4), so one that arrives is an attempt to climb.
    if ".." in segments or "\0" in text:
        return None
    candidate = os.path.join(root, *(s for s in segments if s not in ("", ".")))
    real = os.path.realpath(candidate)
    if os.path.commonpath([root, real]) != root:
        return None  # a symbolic link that leads out of root
    return real


def requested_range(value: bytes, size: int) -> tuple[int, int] | None:
    """``(offset, count)`` of the bytes a ``Range`` header value asks for in
    a file of ``size`` bytes, or None to send the whole file.

    One range, in any of the three forms (``bytes=a-b``, ``bytes=a-``,
    ``bytes=-n``); ``b`` past the end means the end, a suffix longer than
    the file the whole file.  None (ignore the header, RFC 9110 section
    14.2) for anything else, and for a suffix on an empty file (all of
    nothing is the whole file).  Raises :class:`RangeNotSatisfiable` for a
    range that starts at or past the end, or a zero-length suffix.
    """
    match = _ONE_RANGE.fullmatch(value)
    if match is None:
        return None
    first, last = (_position(digits) if digits else None for digits in match.groups())
    if first is None:
        if last is None:
            return None  # "bytes=-"
        if last == 0:
            raise RangeNotSatisfiable
        if size == 0:
            return None
        count = min(last, size)
        return size - count, count
    if last is not None and last < first:
        return None  # invalid (RFC 9110 section 14.1.1): ignored
    if first >= size:
        raise RangeNotSatisfiable
    end = size if last is None else min(last + 1, size)
    return first, end - first


def _position(digits: bytes) -> int:
    """The number ``digits`` spell; a number too long for any file is 10**20."""
    digits = digits.lstrip(b"0") or b"0"
    return int(digits) if len(digits) <= _MAX_DIGITS else 10**_MAX_DIGITS


def content_type(path: str) -> bytes:
    """The Content-Type for the file at ``path``, guessed from its name.

    A compressed file (``.gz``, ``.bz2``...) is octets: its bytes are sent
    as they are, and a ``Content-Encoding`` would have clients decompress it.
    """
    kind, encoding = mimetypes.guess_type(path, strict=False)
    if kind is None or encoding is not None:
        return b"application/octet-stream"
    return kind.encode("ascii")


def open_regular(path: str) -> BinaryIO | None:
    """The regular file at ``path``, open for reading; None if ``path`` is
    something else (a directory, a FIFO, a device).

    Opened without blocking, so that a FIFO in the tree cannot hang the
    server waiting for a writer; for a regular file O_NONBLOCK means
    nothing.  Raises ``OSError`` as ``os.open`` does.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            return open(fd, "rb")  # the file object owns fd from here
    except BaseException:
        os.close(fd)
        raise
    os.close(fd)
    return None


class FileServer:
    """Serves the files under ``root`` (a real path) to each connection
    handed to :meth:`handle`; closes a connection that takes more than
    ``idle_timeout`` seconds to deliver a request."""

    def __init__(self, root: str, idle_timeout: float = IDLE_TIMEOUT) -> None:
        self.root = root
        self.idle_timeout = idle_timeout

    async def handle(self, stream: traffic.TrafficStream) -> None:
        """Answer the requests arriving on ``stream`` until the client closes,
        either side asks to close, the client idles too long or breaks the
        protocol (answered 400, or what h11 suggests, when it still can be).
        """
        connection = h11.Connection(h11.SERVER)
        try:
            try:
                await self.serve_requests(stream, connection)
            except h11.RemoteProtocolError as exc:
                if connection.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                    status = exc.error_status_hint
                    await send_error(stream, connection, None, status)
                await close_gracefully(stream)
        except (trio.BrokenResourceError, _BodyCut):
            pass  # the client went away, or the body cannot be finished

    async def serve_requests(
        self, stream: traffic.TrafficStream, connection: h11.Connection
    ) -> None:
        """Answer requests, one after the other, until the connection must
        close.  Raises what :func:`receive_request` raises, and
        :class:`_BodyCut`."""
        while True:
            request = None
            # The timeout covers the wait for a request, never a response:
            # a large file takes a slow client as long as it takes.
            with trio.move_on_after(self.idle_timeout):
                request = await receive_request(stream, connection)
            if request is None:
                return  # the client closed between requests, or idled too long
            await self.respond(stream, connection, request)
            if connection.our_state is h11.MUST_CLOSE:
                await close_gracefully(stream)
                return
            connection.start_next_cycle()

    async def respond(
        self, stream: traffic.TrafficStream, connection: h11.Connection, request: h11.Request
    ) -> None:
        """Send the response to ``request``, whose body has been read."""
        if request.method not in (b"GET", b"HEAD"):
            await send_error(stream, connection, request, 405, [(b"allow", b"GET, HEAD")])
            return
        path = resolve(self.root, request.target)
        if path is None:
            await send_error(stream, connection, request, 404)
            return
        try:
            # open() and fstat() in the trio thread: metadata, normally
            # cached; a server of a cold disk would open in a worker thread.
            file = open_regular(path)
        except PermissionError:
            await send_error(stream, connection, request, 403)
            return
        except OSError as exc:
            # ENOENT, ENOTDIR, ELOOP, ENAMETOOLONG...: nothing to serve.
            # Out of descriptors is the server's trouble, for now.
            busy = exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOMEM)
            await send_error(stream, connection, request, 503 if busy else 404)
            return
        if file is None:
            await send_error(stream, connection, request, 404)
            return
        with file:
            await self.send_file(stream, connection, request, file, content_type(path))

    async def send_file(
        self,
        stream: traffic.TrafficStream,
        connection: h11.Connection,
        request: h11.Request,
        file: BinaryIO,
        kind: bytes,
    ) -> None:
        """Send ``file`` (open, regular) as the response to ``request``: whole,
        or the part its ``Range`` asks for."""
        size = os.fstat(file.fileno()).st_size
        offset, count, status = 0, size, 200
        ranges = [value for name, value in request.headers if name == b"range"]
        # Several Range fields are not a range; If-Range names a validator,
        # and this server sends none, so none can match (RFC 9110 section
        # 13.1.5: then the Range is ignored).
        conditional = any(name == b"if-range" for name, _ in request.headers)
        if len(ranges) == 1 and not conditional:
            try:
                selected = requested_range(ranges[0], size)
            except RangeNotSatisfiable:
                await send_error(
                    stream, connection, request, 416, [(b"content-range", b"bytes */%d" % size)]
                )
                return
            if selected is not None:
                (offset, count), status = selected, 206
        headers = [
            (b"content-type", kind),
            (b"content-length", b"%d" % count),
            (b"accept-ranges", b"bytes"),
        ]
        if status == 206:
            headers.append(
                (b"content-range", b"bytes %d-%d/%d" % (offset, offset + count - 1, size))
            )
        await send_head(stream, connection, status, headers)
        if request.method == b"GET" and count:
            region = cast(bytes, _FileRegion(count))  # h11's Data wants bytes; see _FileRegion
            for piece in connection.send_with_data_passthrough(h11.Data(data=region)) or ():
                if piece is not region:
                    await stream.send_all(piece)  # framing (none, with a Content-Length)
                    continue
                try:
                    sent = await stream.send_file(file, offset=offset, count=count)
                except (ValueError, traffic.FileEndedError, OSError) as exc:
                    # The file shrank since the fstat (ValueError: before
                    # anything was sent; FileEndedError: during), or could
                    # not be read: the announced body cannot be finished.
                    raise _BodyCut from exc
                if sent != count:
                    raise _BodyCut
        await send_end(stream, connection)


async def receive_request(
    stream: traffic.TrafficStream, connection: h11.Connection
) -> h11.Request | None:
    """The next request on ``stream``, its body (if any) read and dropped: a
    file server has no use for it, and h11 starts the next cycle only when
    the request is complete.  None if the client closed before one began.

    Raises ``h11.RemoteProtocolError`` for a malformed request (or a
    connection closed in the middle of one) and what
    :meth:`~traffic.TrafficStream.receive_some` raises.
    """
    request = None
    while True:
        event = connection.next_event()
        if event is h11.NEED_DATA:
            connection.receive_data(await stream.receive_some())
        elif isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.EndOfMessage):
            return request
        elif isinstance(event, h11.ConnectionClosed):
            return None
        elif event is h11.PAUSED:
            # Only after an EndOfMessage, until the response is sent: here
            # it would be a loop that never reads.
            raise AssertionError("h11 paused before the request was complete")
        # h11.Data: the request's body, dropped.


async def send_head(
    stream: traffic.TrafficStream,
    connection: h11.Connection,
    status: int,
    headers: list[tuple[bytes, bytes]],
) -> None:
    """Send a response's status line and headers (with a Date, which an
    origin server with a clock must send: RFC 9110 section 6.6.1)."""
    headers = [(b"date", email.utils.formatdate(usegmt=True).encode("ascii")), *headers]
    reason = HTTPStatus(status).phrase.encode("ascii")
    await stream.send_all(
        connection.send(h11.Response(status_code=status, headers=headers, reason=reason))
    )


async def send_end(stream: traffic.TrafficStream, connection: h11.Connection) -> None:
    """End the response (no bytes with a Content-Length, the last chunk
    without one)."""
    data = connection.send(h11.EndOfMessage())
    if data:
        await stream.send_all(data)


async def send_error(
    stream: traffic.TrafficStream,
    connection: h11.Connection,
    request: h11.Request | None,
    status: int,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    """Send a short text response with ``status`` to ``request``: the
    status again as its body, but for a HEAD.

    ``request`` None is a request h11 could not parse: the response has no
    body (h11 may have taken it for a HEAD) and closes the connection.
    """
    body = b"%d %s\n" % (status, HTTPStatus(status).phrase.encode("ascii"))
    if request is None or request.method == b"HEAD":
        body = b""
    all_headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", b"%d" % len(body)),
        *(headers or []),
    ]
    if request is None:
        all_headers.append((b"connection", b"close"))
    await send_head(stream, connection, status, all_headers)
    if body:
        await stream.send_all(connection.send(h11.Data(data=body)))
    await send_end(stream, connection)


async def close_gracefully(stream: traffic.TrafficStream) -> None:
    """Shut down the sending side and wait (at most :data:`CLOSE_TIMEOUT`)
    for the client's EOF, dropping what it still sends.

    Closing a socket that has unread bytes resets the connection, and a
    reset can destroy the response still in flight to the client; so the
    server reads until the client has seen the end and closed too.
    """
    with trio.move_on_after(CLOSE_TIMEOUT):
        try:
            await stream.send_eof()
            while await stream.receive_some():
                pass
        except trio.BrokenResourceError:
            pass


async def serve(root: str, host: str, port: int, idle_timeout: float) -> None:
    server = FileServer(root, idle_timeout)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(traffic.serve_tcp, server.handle, port, host=host))
        for listener in listeners:
            address, bound = listener.socket.getsockname()[:2]
            print(f"listening on {address}:{bound}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", help="the directory whose files are served")
    parser.add_argument("port", nargs="?", type=int, default=0, help="default 0: any free port")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument(
        "--idle-timeout",
        type=float,
        default=IDLE_TIMEOUT,
        metavar="SECONDS",
        help=f"close a connection that sends no request for this long (default {IDLE_TIMEOUT:g})",
    )
    args = parser.parse_args(argv)
    root = os.path.realpath(args.root)
    if not os.path.isdir(root):
        parser.error(f"{args.root} is not a directory")
    if not args.idle_timeout > 0:
        parser.error("--idle-timeout must be positive")
    mimetypes.init()  # reads the system's tables now, not at the first request
    try:
        trio.run(serve, root, args.host, args.port, args.idle_timeout)
    except BaseException as exc:
        if not ctrl_c(exc):
            raise
        print("stopped", file=sys.stderr, flush=True)
    return 0


def ctrl_c(exc: BaseException) -> bool:
    """Whether ``exc`` is Ctrl-C: trio raises it bare or in an exception
    group, depending on where the signal found the tasks."""
    if isinstance(exc, KeyboardInterrupt):
        return True
    children = getattr(exc, "exceptions", None)  # a (Base)ExceptionGroup
    if not children:
        return False
    return all(ctrl_c(child) for child in children)


if __name__ == "__main__":
    sys.exit(main())
