"""A WebSocket echo server: websockets' trio server on traffic's listeners.

Usage::

    python examples/websocket_echo.py [--port PORT] [--host HOST]

``PORT`` defaults to 8765 (0: the kernel picks one) and ``HOST`` to
127.0.0.1.  Once listening, the server prints ``listening on HOST:PORT`` (one
line per listener, flushed), so a script can start it and read the port.
Needs websockets 17 (``pip install websockets``).

``websockets.trio.server.serve`` is given traffic's listeners
(``listeners=``), so each connection is a :class:`traffic.TrafficStream`
and the core performs every transfer; websockets does the rest (handshake,
framing, compression, keepalive).  See docs/integrations-websockets.rst.

Ctrl-C stops the server: every connection is closed and the process exits
with status 0 (a requested shutdown is not an error).
"""

from __future__ import annotations

import argparse
import sys
from functools import partial

import trio
from websockets.exceptions import ConnectionClosedError
from websockets.trio.server import ServerConnection, serve

import traffic


async def echo(websocket: ServerConnection) -> None:
    """Send back every message, text as text and binary as binary."""
    try:
        async for message in websocket:
            await websocket.send(message)
    except ConnectionClosedError:
        pass  # the client went away without closing: nothing to answer


async def serve_echo(host: str, port: int) -> None:
    listeners = await traffic.open_tcp_listeners(port, host=host)
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(serve, echo, listeners=listeners))
        for listener in listeners:
            address, bound = listener.socket.getsockname()[:2]
            print(f"listening on {address}:{bound}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8765, help="default 8765; 0: any free port")
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    try:
        trio.run(serve_echo, args.host, args.port)
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
    return bool(children) and all(ctrl_c(child) for child in children)


if __name__ == "__main__":
    sys.exit(main())
