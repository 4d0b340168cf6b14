"""The http-server workload's application: one ASGI app every row serves.

``GET /small`` is answered by the app itself, raw ASGI (a start message
with a Content-Length, then the 1 KiB body: byte i is i % 251, as
:func:`.http_client.body`), so the app's share of each request is small
and the same on every row; ``GET /file`` is Starlette's ``FileResponse``
of the file the server was started with, so each server's own way of
sending a file is what is measured: ``http.response.pathsend`` where the
server offers it (Starlette then hands the server the path), else
Starlette's 64 KiB chunks read in a worker thread and sent as body
messages.  Anything else gets 404.  The lifespan protocol is answered, so
every host starts without a warning.

Starlette is imported when the app is made, not with this module.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from .http_client import body

#: The small response's body.
SMALL_BYTES = 1024
SMALL_BODY = body(SMALL_BYTES)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

_SMALL_HEADERS = [
    (b"content-type", b"application/octet-stream"),
    (b"content-length", str(SMALL_BYTES).encode()),
]


def make_app(file_path: str) -> App:
    """The app, serving ``file_path`` at ``/file``."""
    from starlette.responses import FileResponse  # type: ignore[import-not-found,unused-ignore]

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            path = scope["path"]
            if path == "/small":
                await send(
                    {"type": "http.response.start", "status": 200, "headers": _SMALL_HEADERS}
                )
                await send({"type": "http.response.body", "body": SMALL_BODY})
            elif path == "/file":
                await FileResponse(file_path)(scope, receive, send)
            else:
                await send({"type": "http.response.start", "status": 404, "headers": []})
                await send({"type": "http.response.body", "body": b""})
        elif kind == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return

    return app
