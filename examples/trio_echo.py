"""An echo server on trio, with traffic performing the transfers.

Usage::

    python examples/trio_echo.py [PORT] [--host HOST]

``PORT`` defaults to 0 (the kernel picks one) and ``HOST`` to 127.0.0.1.
Once listening, the server prints ``listening on HOST:PORT`` (one line per
listener, flushed), so a script can start it and read the port.

Each connection is a :class:`traffic.TrafficStream` handed to ``echo`` by
:func:`traffic.serve_tcp`, which has ``trio.serve_tcp``'s semantics: the
handlers live in a nursery, running out of descriptors makes the server
back off and retry, and leaving the nursery closes every connection.  The
stream is closed when its handler returns.

Ctrl-C stops the server: every connection is closed and the process exits
with status 0 (a requested shutdown is not an error).
"""

from __future__ import annotations

import argparse
import sys
from functools import partial

import trio

import traffic


async def echo(stream: traffic.TrafficStream) -> None:
    """Send back whatever arrives, until the client shuts down its side."""
    try:
        while data := await stream.receive_some():
            await stream.send_all(data)
    except trio.BrokenResourceError:
        pass  # the client went away mid-echo: nothing to answer


async def serve(host: str, port: int) -> None:
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(traffic.serve_tcp, echo, port, host=host))
        for listener in listeners:
            address, bound = listener.socket.getsockname()[:2]
            print(f"listening on {address}:{bound}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("port", nargs="?", type=int, default=0, help="default 0: any free port")
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    try:
        trio.run(serve, args.host, args.port)
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
