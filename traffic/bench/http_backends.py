"""The http-client workload's clients (:mod:`traffic.bench.http_client`):
httpx on each network backend, aiohttp, and the two network backends of
the bench's own: the floor (:class:`FloorBackend`) and traffic's trio layer
under httpcore (:class:`TrioLayerBackend`).

Imported by the client process only (it needs httpx and httpcore, the
[bench] extra's): the driver knows the rows from :mod:`.http_client`.
"""

from __future__ import annotations

import collections
import select
import ssl
import zlib
from collections.abc import Iterable
from typing import Any

import httpcore
import httpx

from .http_client import SMALL_BODY, SMALL_BYTES, Client, Options, Tally, WrongResponse, response

#: Bytes one floor read hands over at most: httpcore's own read size
#: (``AsyncHTTP11Connection.READ_NUM_BYTES``), so each read is one object.
FLOOR_CHUNK = 64 * 1024


def _tally(options: Options, tally: Tally, status: int, content: bytes) -> None:
    if options.check:
        tally.seen[(status, len(content), zlib.crc32(content))] += 1
    elif status != 200 or content != SMALL_BODY:
        raise WrongResponse(f"GET /: status {status}, {len(content)} bytes")


def limits(options: Options) -> httpx.Limits:
    """The pool of every httpx row: a connection per request in flight, all
    kept alive (httpx's default keeps 20)."""
    return httpx.Limits(
        max_connections=options.in_flight, max_keepalive_connections=options.in_flight
    )


class HttpxClient(Client):
    """``httpx.AsyncClient`` on ``transport``: ``get`` for a request,
    ``stream`` + ``aiter_bytes`` for a download."""

    def __init__(self, transport: httpx.AsyncBaseTransport) -> None:
        self.client = httpx.AsyncClient(transport=transport)

    async def small(self, options: Options, tally: Tally) -> None:
        got = await self.client.get(options.url)
        _tally(options, tally, got.status_code, got.content)

    async def download(self, options: Options) -> tuple[int, int, int]:
        size = crc = 0
        async with self.client.stream("GET", options.download_url) as got:
            async for chunk in got.aiter_bytes():
                size += len(chunk)
                if options.check:
                    crc = zlib.crc32(chunk, crc)
        return got.status_code, size, crc

    async def aclose(self) -> None:
        await self.client.aclose()


class AiohttpClient(Client):
    """``aiohttp.ClientSession`` (a ``TCPConnector`` of ``--in-flight``
    connections): ``get`` + ``read`` for a request, ``content.iter_any``
    (what has arrived, as httpx's ``aiter_bytes``) for a download."""

    def __init__(self, options: Options) -> None:
        import aiohttp  # type: ignore[import-not-found,unused-ignore]

        connector = aiohttp.TCPConnector(limit=options.in_flight)
        self.session = aiohttp.ClientSession(connector=connector)

    async def small(self, options: Options, tally: Tally) -> None:
        async with self.session.get(options.url) as got:
            content = await got.read()
        _tally(options, tally, got.status, content)

    async def download(self, options: Options) -> tuple[int, int, int]:
        size = crc = 0
        async with self.session.get(options.download_url) as got:
            async for chunk in got.content.iter_any():
                size += len(chunk)
                if options.check:
                    crc = zlib.crc32(chunk, crc)
        return got.status, size, crc

    async def aclose(self) -> None:
        await self.session.close()


# --- the floor: a network backend whose reads and writes cost nothing ----------------


class FloorStream(httpcore.AsyncNetworkStream):
    """A connection to an in-memory responder: each write (httpcore writes a
    request's head in one) queues the responder's response to it, made in
    advance and cut in :data:`FLOOR_CHUNK` pieces; each read hands over the
    next piece.  Nothing is copied, no system call is made, nothing waits."""

    def __init__(self, small: tuple[bytes, ...], download: tuple[bytes, ...]) -> None:
        self._small = small
        self._download = download
        self._queue: collections.deque[bytes] = collections.deque()

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        if not self._queue:
            return b""  # nothing was asked: the peer's end, as a real one would say
        piece = self._queue.popleft()
        if len(piece) > max_bytes:
            self._queue.appendleft(piece[max_bytes:])
            piece = piece[:max_bytes]
        return piece

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if buffer:
            download = buffer.startswith(b"GET /download ")
            self._queue.extend(self._download if download else self._small)

    async def aclose(self) -> None:
        self._queue.clear()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("the floor speaks plain HTTP only")

    def get_extra_info(self, info: str) -> Any:
        return False if info == "is_readable" else None


def _pieces(data: bytes) -> tuple[bytes, ...]:
    return tuple(data[i : i + FLOOR_CHUNK] for i in range(0, len(data), FLOOR_CHUNK))


class FloorBackend(httpcore.AsyncNetworkBackend):
    """Connections to the in-memory responder (:class:`FloorStream`): the
    responses of http_responder.c, made once."""

    def __init__(self, download_bytes: int) -> None:
        self._small = _pieces(response(SMALL_BYTES))
        self._download = _pieces(response(download_bytes))

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        return FloorStream(self._small, self._download)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        return FloorStream(self._small, self._download)

    async def sleep(self, seconds: float) -> None:
        import anyio

        await anyio.sleep(seconds)


# --- traffic's trio layer under httpcore ------------------------------------------


class TrioLayerStream(httpcore.AsyncNetworkStream):
    """httpcore's ``AsyncNetworkStream`` on :class:`traffic.TrafficStream`,
    written as httpcore's own trio backend (``TrioStream``) is: a
    ``trio.fail_after`` around each read and write, trio's exceptions
    mapped to httpcore's."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        import trio

        try:
            with trio.fail_after(float("inf") if timeout is None else timeout):
                data: bytes = await self._stream.receive_some(max_bytes)
                return data
        except trio.TooSlowError as exc:
            raise httpcore.ReadTimeout(exc) from exc
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise httpcore.ReadError(exc) from exc

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        import trio

        if not buffer:
            return
        try:
            with trio.fail_after(float("inf") if timeout is None else timeout):
                await self._stream.send_all(buffer)
        except trio.TooSlowError as exc:
            raise httpcore.WriteTimeout(exc) from exc
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise httpcore.WriteError(exc) from exc

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("the bench's trio-layer backend speaks plain HTTP only")

    def get_extra_info(self, info: str) -> Any:
        if info != "is_readable":
            return None
        # As httpcore's own backends answer it: a poll that does not wait.
        poll = select.poll()
        poll.register(self._stream.socket.fileno(), select.POLLIN)
        return bool(poll.poll(0))


class TrioLayerBackend(httpcore.AsyncNetworkBackend):
    """Connections through :func:`traffic.open_tcp_stream` (trio only)."""

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        import trio

        import traffic

        try:
            with trio.fail_after(float("inf") if timeout is None else timeout):
                stream = await traffic.open_tcp_stream(host, port)
        except trio.TooSlowError as exc:
            raise httpcore.ConnectTimeout(exc) from exc
        except OSError as exc:
            raise httpcore.ConnectError(exc) from exc
        return TrioLayerStream(stream)

    async def sleep(self, seconds: float) -> None:
        import trio

        await trio.sleep(seconds)


# --- the clients of the rows (http_client.ROWS) -------------------------------------


def _with_backend(options: Options, backend: httpcore.AsyncNetworkBackend) -> Client:
    """httpx's own transport, its pool given ``backend`` before any
    connection exists (the pool's one attribute for it, the way
    traffic.integrations.httpx gives it traffic's)."""
    transport = httpx.AsyncHTTPTransport(limits=limits(options))
    pool = transport._pool
    assert isinstance(pool._network_backend, httpcore.AsyncNetworkBackend)
    pool._network_backend = backend
    return HttpxClient(transport)


def httpx_default(options: Options) -> Client:
    return HttpxClient(httpx.AsyncHTTPTransport(limits=limits(options)))


def httpx_floor(options: Options) -> Client:
    return _with_backend(options, FloorBackend(options.download_bytes))


def httpx_trio_layer(options: Options) -> Client:
    return _with_backend(options, TrioLayerBackend())


def httpx_traffic(options: Options) -> Client:
    from traffic.integrations.httpx import AsyncHTTPTransport

    return HttpxClient(AsyncHTTPTransport(limits=limits(options)))


def aiohttp_session(options: Options) -> Client:
    return AiohttpClient(options)
