"""anycorn's connection handler, its file bodies sent by traffic's core.

anycorn's ``TCPServer`` hands the body of an ``http.response.pathsend``
or ``http.response.zerocopysend`` response (HTTP/1.1) to ``os.sendfile``
on the stream's raw socket, behind the stream's back.  On traffic's
stream that socket is the core's: :class:`TCPServer` sends the body with
the stream's own :meth:`~traffic.anyio_backend.TrafficSocketStream.send_file`
instead, so the core moves it by ``sendfile(2)`` and its bytes never
enter Python, over TCP and UNIX sockets alike.  Over TLS the body is read
and sent through the TLS stream in bounded chunks, as anycorn does.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any

from anycorn.config import Config
from anycorn.events import SendFile
from anycorn.tcp_server import TCPServer as HostTCPServer
from anycorn.typing import AppWrapper, LifespanState
from anycorn.worker_context import WorkerContext

from ...anyio_backend import TrafficSocketStream

__all__ = ["TCPServer", "tcp_server_handler"]


class TCPServer(HostTCPServer):
    """anycorn's ``TCPServer``; a file body goes by the stream's ``send_file``."""

    def _ktls_sendfile_socket(self) -> Any:
        # Kernel TLS is never set up here (the worker serves userspace TLS),
        # so a TLS stream never has a socket to send files on.
        return None

    async def _transmit_file(self, event: SendFile) -> None:
        if not isinstance(self.stream, TrafficSocketStream):
            await super()._transmit_file(event)  # TLS: read and sent through the stream
            return
        # anycorn's contract (os.sendfile with an offset) leaves the
        # descriptor's position alone; send_file leaves it after what was
        # sent, so it is put back.
        position = os.lseek(event.file, 0, os.SEEK_CUR)
        try:
            await self.stream.send_file(event.file, offset=event.offset, count=event.count)
        finally:
            os.lseek(event.file, position, os.SEEK_SET)


def tcp_server_handler(
    app: AppWrapper, config: Config, context: WorkerContext, state: LifespanState
) -> Callable[[Any], Awaitable[None]]:
    """anycorn's ``tcp_server_handler``, with :class:`TCPServer`."""

    async def handler(stream: Any) -> None:
        await TCPServer(app, config, context, state, stream).run()

    return handler
