"""The trio layer's openers, mirroring trio's: trio (or the stdlib, for an
AF_UNIX listener) makes the socket, then traffic takes it.

Imports trio, ``traffic._trio._stream``, ``traffic._trio._listener`` and
``traffic._base``.
"""

from __future__ import annotations

import os
import socket as _stdlib_socket
from typing import Any

import trio

from .._base._checks import check_port
from ._listener import TrafficListener
from ._stream import TrafficStream


async def open_tcp_stream(host: str | bytes, port: int, **kwargs: Any) -> TrafficStream:
    """Connect to ``host``:``port`` as ``trio.open_tcp_stream`` does (happy
    eyeballs included: trio makes the connection), then hand the socket to
    traffic.  ``ValueError`` for a port outside 0-65535."""
    check_port(port)
    stream = await trio.open_tcp_stream(host, port, **kwargs)
    return TrafficStream(stream.socket)


async def open_unix_stream(path: str | bytes | os.PathLike[str]) -> TrafficStream:
    """Connect to the AF_UNIX stream socket at ``path``."""
    stream = await trio.open_unix_socket(path)
    return TrafficStream(stream.socket)


async def open_tcp_listeners(
    port: int, *, host: str | bytes | None = None, backlog: int | None = None
) -> list[TrafficListener]:
    """Listen on ``port`` as ``trio.open_tcp_listeners`` does (one listener
    per address family of ``host``).  ``TypeError`` for a port that is not
    an int, ``ValueError`` outside 0-65535 (the resolver would wrap it)."""
    check_port(port)
    listeners = await trio.open_tcp_listeners(port, host=host, backlog=backlog)
    return [TrafficListener(listener.socket) for listener in listeners]


async def open_unix_listener(
    path: str | bytes | os.PathLike[str], *, backlog: int | None = None
) -> TrafficListener:
    """Listen on the AF_UNIX path ``path`` (which must not exist yet)."""
    sock = _stdlib_socket.socket(_stdlib_socket.AF_UNIX, _stdlib_socket.SOCK_STREAM)
    try:
        sock.bind(os.fspath(path))
        sock.listen(backlog if backlog is not None else _stdlib_socket.SOMAXCONN)
        listener = TrafficListener(sock)
    except BaseException:
        sock.close()
        raise
    await trio.lowlevel.checkpoint()
    return listener
