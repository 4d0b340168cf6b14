"""A helper module of the ASGI server tests (``test_asgi_servers.py``); it
holds no tests.

- :func:`make_app`: a Starlette application with the routes a deployed one
  has (JSON, a streaming body, a whole-file ``FileResponse``, a WebSocket
  route, a slow route for graceful shutdown, a route that raises) and a
  raw ASGI ``zerocopysend`` route; it records its lifespan.
- :class:`Connections`: what each adapter's connection handler saw, by
  wrapping the host's ``TCPServer``: the stream type under each
  connection (so a test can tell it is traffic's, under TLS too), the
  bytes that went through the stream's ``send`` and those that went as a
  file body.
- :func:`serving`: an adapter's ``serve`` started in a task group and
  shut down by its trigger at the end.

Also the module the command's tests load (``asgi_support:app``) in the
server's worker processes: its ``/whoami`` route says which process
answered and whether traffic's cycle thread runs there.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

#: The streaming route's body: chunks of this size, this many.
STREAM_CHUNK = 64 * 1024
STREAM_CHUNKS = 40


def pseudorandom(size: int, seed: int) -> bytes:
    """``size`` reproducible bytes (cheap: a hash chain stretched)."""
    block = hashlib.sha256(seed.to_bytes(8, "big")).digest() * 2048  # 64 KiB
    whole, rest = divmod(size, len(block))
    return block * whole + block[:rest]


def stream_body() -> bytes:
    return b"".join(pseudorandom(STREAM_CHUNK, i) for i in range(STREAM_CHUNKS))


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def traffic_cycle_running() -> bool:
    """Whether a thread named traffic-cycle runs in this process."""
    for task in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError), open(f"/proc/self/task/{task}/comm") as f:
            if f.read().strip() == "traffic-cycle":
                return True
    return False


@dataclass
class Lifespan:
    events: list[str] = field(default_factory=list)


def make_app(file_path: str | None = None, lifespan: Lifespan | None = None) -> Any:
    """The application: Starlette's routes, and ``/zerocopy`` raw."""
    record = lifespan if lifespan is not None else Lifespan()

    @contextlib.asynccontextmanager
    async def lifespan_context(app: Starlette) -> AsyncIterator[None]:
        record.events.append("startup")
        yield
        record.events.append("shutdown")

    async def hello(request: Request) -> JSONResponse:
        return JSONResponse({"hello": "world", "path": request.url.path})

    async def echo(request: Request) -> JSONResponse:
        body = await request.body()
        return JSONResponse({"length": len(body), "sha256": digest(body)})

    async def streamed(request: Request) -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            for i in range(STREAM_CHUNKS):
                yield pseudorandom(STREAM_CHUNK, i)
                await anyio.lowlevel.checkpoint()

        return StreamingResponse(chunks(), media_type="application/octet-stream")

    async def file(request: Request) -> Response:
        assert file_path is not None, "no file to serve"
        return FileResponse(file_path)

    async def slow(request: Request) -> JSONResponse:
        seconds = float(request.query_params["seconds"])
        record.events.append(f"sleeping {seconds}")
        await anyio.sleep(seconds)
        return JSONResponse({"slept": seconds})

    async def fails(request: Request) -> Response:
        raise RuntimeError("the application failed")

    async def whoami(request: Request) -> JSONResponse:
        return JSONResponse({"pid": os.getpid(), "traffic": traffic_cycle_running()})

    async def ws_echo(websocket: WebSocket) -> None:
        await websocket.accept()
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("bytes") is not None:
                await websocket.send_bytes(message["bytes"])
            else:
                await websocket.send_text(message["text"])

    starlette = Starlette(
        routes=[
            Route("/json", hello),
            Route("/echo", echo, methods=["POST"]),
            Route("/stream", streamed),
            Route("/file", file),
            Route("/slow", slow),
            Route("/fails", fails),
            Route("/whoami", whoami),
            WebSocketRoute("/ws", ws_echo),
        ],
        lifespan=lifespan_context,
    )

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/zerocopy":
            await zerocopy(scope, receive, send)
        else:
            await starlette(scope, receive, send)

    async def zerocopy(scope: dict[str, Any], receive: Any, send: Any) -> None:
        """The file's second half by ``zerocopysend`` (without an offset:
        from the descriptor's position), then report the position the
        server left in a trailing header-less JSON request's answer."""
        assert file_path is not None
        offered = "http.response.zerocopysend" in scope.get("extensions", {})
        with open(file_path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            f.seek(size // 2)
            count = size - size // 2
            headers = [
                (b"content-length", str(count).encode()),
                (b"x-zerocopy", b"1" if offered else b"0"),
            ]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            if offered:
                await send({"type": "http.response.zerocopysend", "file": f, "count": count})
            else:
                await send({"type": "http.response.body", "body": f.read(count)})
            ZEROCOPY_POSITIONS.append(f.tell())

    return app


#: The descriptor position ``/zerocopy`` saw after its body was sent.
ZEROCOPY_POSITIONS: list[int] = []


#: The application the command's tests serve (``asgi_support:app``).
app = make_app(os.environ.get("ASGI_SUPPORT_FILE"))


@dataclass
class Connection:
    """One connection's handler: the stream types (outermost first), the
    bytes sent through ``send`` (the protocol's), as file bodies, and of
    those the bytes traffic's stream sent by ``send_file``."""

    streams: list[str]
    sent: int = 0
    file_bytes: int = 0
    by_send_file: int = 0


class Connections:
    """Wraps a host's ``TCPServer`` (by subclassing it) to record every
    connection it handles."""

    def __init__(self) -> None:
        self.seen: list[Connection] = []
        self._by_stream: dict[int, Connection] = {}

    def counting(self, send_file: Callable[..., Awaitable[int]]) -> Callable[..., Awaitable[int]]:
        """``send_file`` of traffic's stream class, counting per connection."""
        by_stream = self._by_stream

        async def counted(stream: Any, *args: Any, **kwargs: Any) -> int:
            sent = await send_file(stream, *args, **kwargs)
            if stream_id := by_stream.get(id(stream)):
                stream_id.by_send_file += sent
            return sent

        return counted

    def recording(self, host_server: type) -> type:
        seen, by_stream = self.seen, self._by_stream

        class Recording(host_server):  # type: ignore[misc, valid-type]
            def __init__(self, *args: Any) -> None:
                super().__init__(*args)
                self._record = Connection(stream_types(self.stream))
                seen.append(self._record)
                by_stream[id(innermost(self.stream))] = self._record

            async def protocol_send(self, event: Any) -> None:
                if type(event).__name__ == "RawData":
                    self._record.sent += len(event.data)
                await super().protocol_send(event)

            async def _transmit_file(self, event: Any) -> None:
                self._record.file_bytes += event.count
                await super()._transmit_file(event)

        return Recording

    def all_traffic(self) -> bool:
        return bool(self.seen) and all(
            c.streams[-1] in ("TrafficStream", "TrafficSocketStream", "TrafficUNIXSocketStream")
            for c in self.seen
        )


def innermost(stream: Any) -> Any:
    while (inner := getattr(stream, "transport_stream", None)) is not None:
        stream = inner
    return stream


def stream_types(stream: Any) -> list[str]:
    """The stream's type, and those of the streams under it (TLS)."""
    types = [type(stream).__name__]
    while (inner := getattr(stream, "transport_stream", None)) is not None:
        types.append(type(inner).__name__)
        stream = inner
    return types


@contextlib.asynccontextmanager
async def serving(
    serve: Callable[..., Awaitable[None]], app: Any, config: Any, **options: Any
) -> AsyncIterator[list[str]]:
    """Serve ``app`` with ``serve`` (an adapter's or a host's; ``options``
    passed on) inside the block; yield the URLs it serves; shut it down
    gracefully after."""
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        binds = await tg.start(
            lambda task_status: serve(
                app, config, shutdown_trigger=stop.wait, task_status=task_status, **options
            )
        )
        try:
            yield binds
        finally:
            stop.set()


def url(binds: list[str], scheme: str = "http") -> str:
    """The first bind of ``scheme``, with 0.0.0.0 made 127.0.0.1."""
    for bind in binds:
        if bind.startswith(f"{scheme}://"):
            return bind.replace("0.0.0.0", "127.0.0.1")
    raise LookupError(f"no {scheme} bind in {binds}")
