"""httpcore's network backend on traffic's streams, for any host with
httpcore's interface.

Every request of an ``httpx.AsyncClient`` ends in httpcore's *network
backend*: it opens the connections (``connect_tcp``,
``connect_unix_socket``) and reads and writes them through its streams
(``read``, ``write``, ``start_tls``, ``get_extra_info``).  Here they are
traffic's anyio streams (:mod:`traffic.anyio_backend`), which serve
asyncio, asyncio on uvloop and trio with one code path; TLS is anyio's
``TLSStream`` over them, with the ``ssl_context`` httpcore made (its ALPN
protocols included, so ``http2=True`` negotiates HTTP/2).

The logic is written once, here, for every host: httpcore and its fork
httpcore2 (the same interface with its own exception classes).  The host
modules (:mod:`traffic.integrations.httpcore`,
:mod:`traffic.integrations.httpcore2`) bind it to their host's base classes
and exceptions (:class:`HostErrors`), so a program gets the host's
exceptions exactly where the host's own backends raise them:

- connecting: ``ConnectTimeout`` for the timeout, ``ConnectError`` for an
  ``OSError`` (refused, unreachable, a socket option the kernel refuses);
- reading: ``ReadTimeout``, ``ReadError`` for a broken or closed stream,
  and ``b""`` at the end of the stream;
- writing: ``WriteTimeout``, ``WriteError``;
- ``start_tls``: ``ConnectTimeout``, ``ConnectError`` (a broken stream, the
  peer's end, an ``ssl.SSLError``), the stream closed first.

Each host exception is made from the original, and chained to it, as the
host's ``map_exceptions`` does.  A ``timeout`` bounds what waits: on
traffic's stream only a read or write that has to wait for the peer gets
a deadline (one that completes at once costs no cancel scope); over TLS
the whole call is bounded, as the host's backends bound it.  A timeout of
None costs no cancel scope anywhere.
"""

from __future__ import annotations

import select
import ssl
from collections.abc import Coroutine, Iterable
from typing import Any, ClassVar, NamedTuple

import anyio
import sniffio
from anyio.abc import SocketAttribute
from anyio.streams.tls import TLSAttribute, TLSStream

from .. import anyio_backend
from .._base._sockets import SocketView
from ..anyio_backend import TrafficSocketStream

__all__ = ["HostErrors", "NetworkBackend", "NetworkStream"]


class HostErrors(NamedTuple):
    """The host's exception classes that its network backends raise."""

    connect_timeout: type[Exception]
    connect_error: type[Exception]
    read_timeout: type[Exception]
    read_error: type[Exception]
    write_timeout: type[Exception]
    write_error: type[Exception]

    @classmethod
    def of(cls, host: Any) -> HostErrors:
        """The exceptions of the host module ``host`` (httpcore, httpcore2)."""
        return cls(
            host.ConnectTimeout,
            host.ConnectError,
            host.ReadTimeout,
            host.ReadError,
            host.WriteTimeout,
            host.WriteError,
        )


#: What a closed or broken traffic stream raises, for reads and writes.
_BROKEN = (anyio.BrokenResourceError, anyio.ClosedResourceError)


class NetworkStream:
    """A host's ``AsyncNetworkStream`` over one of traffic's anyio streams.

    ``stream`` is what is read and written: traffic's socket stream, or
    anyio's ``TLSStream`` over it after :meth:`start_tls`; ``raw`` is
    traffic's socket stream in both cases (the connection's own state).
    """

    #: Bound by the host module.
    _errors: ClassVar[HostErrors]

    def __init__(self, stream: anyio.abc.ByteStream, raw: TrafficSocketStream) -> None:
        self._stream = stream
        self._raw = raw

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        stream = self._stream
        try:
            if stream is self._raw:
                # traffic's own stream bounds only a read that has to wait:
                # one that finds its bytes at once (most, under load) costs
                # no cancel scope.
                return await self._raw._receive(max_bytes, anyio.EndOfStream, timeout)
            if timeout is None:
                return await stream.receive(max_bytes)
            with anyio.fail_after(timeout):
                return await stream.receive(max_bytes)
        except anyio.EndOfStream:
            return b""
        except TimeoutError as exc:
            raise self._errors.read_timeout(exc) from exc
        except _BROKEN as exc:
            raise self._errors.read_error(exc) from exc

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        stream = self._stream
        try:
            if stream is self._raw:
                await self._raw._send(buffer, timeout)  # bounded only if it waits
            elif timeout is None:
                await stream.send(buffer)
            else:
                with anyio.fail_after(timeout):
                    await stream.send(buffer)
        except TimeoutError as exc:
            raise self._errors.write_timeout(exc) from exc
        except _BROKEN as exc:
            raise self._errors.write_error(exc) from exc

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> Any:  # the host's AsyncNetworkStream (this class, bound)
        """The stream wrapped in TLS (anyio's ``TLSStream``, not standard
        compatible: an HTTP peer may end without ``close_notify``, as
        httpcore's own backends allow).  On failure the stream is closed."""
        try:
            with anyio.fail_after(timeout):
                tls = await TLSStream.wrap(
                    self._stream,
                    server_side=False,
                    hostname=server_hostname,
                    ssl_context=ssl_context,
                    standard_compatible=False,
                )
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                await self.aclose()
            if isinstance(exc, TimeoutError):
                raise self._errors.connect_timeout(exc) from exc
            if isinstance(exc, (anyio.BrokenResourceError, anyio.EndOfStream, ssl.SSLError)):
                raise self._errors.connect_error(exc) from exc
            raise
        return type(self)(tls, self._raw)

    def get_extra_info(self, info: str) -> Any:
        """``"ssl_object"``, ``"client_addr"``, ``"server_addr"``,
        ``"socket"`` (a view of traffic's socket: it never closes it) and
        ``"is_readable"``; None for anything else."""
        if info == "is_readable":
            return self._is_readable()
        if info == "ssl_object":
            return self._stream.extra(TLSAttribute.ssl_object, None)
        if info == "client_addr":
            return self._stream.extra(SocketAttribute.local_address, None)
        if info == "server_addr":
            return self._stream.extra(SocketAttribute.remote_address, None)
        if info == "socket":
            return self._stream.extra(SocketAttribute.raw_socket, None)
        return None

    def _is_readable(self) -> bool:
        """Whether the connection has something to read (for an idle
        connection in the pool: its end, or bytes it should not have).

        httpcore asks it of every idle connection whenever the pool
        assigns a request.  What traffic knows answers without a system
        call (bytes kept from a cancelled receive, an end already seen, a
        closed stream); otherwise the kernel is asked, as httpcore's own
        backends ask it (a poll of the descriptor that does not wait).
        """
        known = self._raw._known_readable()
        if known is not None:
            return known
        fd = self._raw._raw_socket.fileno()
        if fd < 0:
            return True
        poll = select.poll()
        poll.register(fd, select.POLLIN)
        return bool(poll.poll(0))


class NetworkBackend:
    """A host's ``AsyncNetworkBackend`` opening traffic's streams."""

    #: Bound by the host module.
    _errors: ClassVar[HostErrors]
    _stream_class: ClassVar[type[NetworkStream]]

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> Any:  # the host's AsyncNetworkStream
        """A TCP connection to ``host``:``port`` (happy eyeballs, as anyio's
        ``connect_tcp``), from ``local_address`` if given; the
        ``socket_options`` (``setsockopt`` arguments) set once connected,
        as httpcore's own backends set them.  traffic's streams set
        ``TCP_NODELAY`` themselves."""
        opening = anyio_backend.connect_tcp(host, port, local_host=local_address)
        return await self._connect(opening, timeout, socket_options)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> Any:  # the host's AsyncNetworkStream
        """A connection to the UNIX stream socket at ``path``."""
        return await self._connect(anyio_backend.connect_unix(path), timeout, socket_options)

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(seconds)

    async def _connect(
        self,
        opening: Coroutine[Any, Any, Any],
        timeout: float | None,
        socket_options: Iterable[Any] | None,
    ) -> NetworkStream:
        """Await ``opening`` (one of traffic's connect functions), within
        ``timeout``, with the host's connect exceptions; then its options."""
        try:
            if timeout is None:
                stream = await opening
            else:
                with anyio.fail_after(timeout):
                    stream = await opening
        except TimeoutError as exc:
            raise self._errors.connect_timeout(exc) from exc
        except (OSError, anyio.BrokenResourceError) as exc:
            raise self._errors.connect_error(exc) from exc
        assert isinstance(stream, TrafficSocketStream)  # no TLS asked of it
        return await self._connected(stream, socket_options)

    async def _connected(
        self, stream: TrafficSocketStream, socket_options: Iterable[Any] | None
    ) -> NetworkStream:
        """The host's stream of a new connection, its options set.  An
        option the kernel refuses is the host's ``ConnectError``, a
        malformed one a ``TypeError``, as with the host's own backends;
        either way the connection is closed, not left behind.

        The host's backends set them with trio's ``setsockopt`` on trio (a
        length of None is no length) and with ``socket.socket``'s
        elsewhere: so do these, so that the same options are refused."""
        try:
            if socket_options is not None:
                raw = stream._raw_socket
                if sniffio.current_async_library() == "trio":
                    for option in socket_options:
                        SocketView.setsockopt(raw, *option)  # type: ignore[arg-type]
                else:
                    for option in socket_options:
                        raw.setsockopt(*option)
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                await stream.aclose()
            if isinstance(exc, OSError):
                raise self._errors.connect_error(exc) from exc
            raise
        return self._stream_class(stream, stream)
