"""Servers, one per implementation, each written the way a competent user of
that library writes one.

Run as ``python -m traffic.bench.servers NAME [--accept]``: prints the port
on its first line, then serves on 127.0.0.1 until killed.  By default it is
an echo server (the echo and idle workloads); with ``--accept`` every
connection is closed as soon as it is accepted (the accept workload).

``traffic-trio`` reads ``$TRAFFIC_CYCLE_POLICY`` ("batch", "normal" or
"idle") as the trio layer does; the driver's ``traffic-trio-normal`` and
``traffic-trio-idle`` rows are this server with the variable set.

anyio's streams and traffic's have one server body between them
(``_anyio_main``), run on each loop of :data:`ANYIO_LOOPS`: ``anyio-uvloop``
is ``anyio-asyncio`` on uvloop's event loop, nothing else changed.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import sys
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, TypeVar, cast

HOST = "127.0.0.1"

T = TypeVar("T")

#: Bytes one receive asks for: trio's DEFAULT_RECEIVE_SIZE, anyio's default.
RECEIVE_SIZE = 65536


def _announce(port: int) -> None:
    print(port, flush=True)


# --- trio -------------------------------------------------------------------


def traffic_trio(accept_only: bool) -> None:
    import trio

    import traffic

    async def echo(stream: traffic.TrafficStream) -> None:
        while data := await stream.receive_some():
            await stream.send_all(data)

    async def close(stream: traffic.TrafficStream) -> None:
        await stream.aclose()

    async def main() -> None:
        handler = close if accept_only else echo
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(partial(traffic.serve_tcp, handler, 0, host=HOST))
            _announce(listeners[0].socket.getsockname()[1])

    trio.run(main)


def trio_native(accept_only: bool) -> None:
    import trio

    async def echo(stream: trio.SocketStream) -> None:
        while data := await stream.receive_some():
            await stream.send_all(data)

    async def close(stream: trio.SocketStream) -> None:
        await stream.aclose()

    async def main() -> None:
        handler = close if accept_only else echo
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host=HOST))
            _announce(listeners[0].socket.getsockname()[1])

    trio.run(main)


def trio_floor(accept_only: bool) -> None:
    """No stream layer (:mod:`traffic.bench.floor`): how far trio's scheduler
    lets one go.  Connections come from a raw listening socket."""
    import socket

    import trio

    from .floor import FloorStream

    async def echo(stream: FloorStream) -> None:
        async with stream:
            with contextlib.suppress(ConnectionError):
                while data := await stream.receive_some():
                    await stream.send_all(data)

    async def close(stream: FloorStream) -> None:
        await stream.aclose()

    async def main() -> None:
        handler = close if accept_only else echo
        listener = socket.create_server((HOST, 0), backlog=1024)
        listener.setblocking(False)
        _announce(listener.getsockname()[1])
        async with trio.open_nursery() as nursery:
            while True:
                await trio.lowlevel.wait_readable(listener)
                try:
                    sock, _ = listener.accept()
                except BlockingIOError:
                    continue
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                nursery.start_soon(handler, FloorStream(sock))

    trio.run(main)


# --- asyncio and uvloop -----------------------------------------------------


async def _asyncio_streams_main(accept_only: bool) -> None:
    import asyncio

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(RECEIVE_SIZE):
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    async def close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(close if accept_only else echo, HOST, 0)
    _announce(server.sockets[0].getsockname()[1])
    await server.serve_forever()


def asyncio_streams(accept_only: bool) -> None:
    import asyncio

    asyncio.run(_asyncio_streams_main(accept_only))


def uvloop_streams(accept_only: bool) -> None:
    import uvloop

    uvloop.run(_asyncio_streams_main(accept_only))


def uvloop_protocol(accept_only: bool) -> None:
    import asyncio

    import uvloop

    class Echo(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = cast(asyncio.Transport, transport)  # uvloop's: no subclass
            if accept_only:
                transport.close()

        def data_received(self, data: bytes) -> None:
            self.transport.write(data)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Echo, HOST, 0)
        _announce(server.sockets[0].getsockname()[1])
        await server.serve_forever()

    uvloop.run(main())


# --- anyio --------------------------------------------------------------------


async def _anyio_main(create_tcp_listener: Callable[..., Any], accept_only: bool) -> None:
    from anyio.abc import SocketAttribute, SocketStream

    async def echo(client: SocketStream) -> None:
        async with client:
            async for chunk in client:
                await client.send(chunk)

    async def close(client: SocketStream) -> None:
        await client.aclose()

    listener = await create_tcp_listener(local_host=HOST, local_port=0)
    _announce(listener.extra(SocketAttribute.local_port))
    await listener.serve(close if accept_only else echo)


#: The event loops the anyio rows run on: row suffix -> ``anyio.run``'s
#: ``backend`` and ``backend_options``.  "uvloop" is anyio's asyncio backend
#: on uvloop's loop, so ``anyio-uvloop`` differs from ``anyio-asyncio`` in the
#: loop alone.
ANYIO_LOOPS: dict[str, tuple[str, dict[str, Any]]] = {
    "trio": ("trio", {}),
    "asyncio": ("asyncio", {}),
    "uvloop": ("asyncio", {"use_uvloop": True}),
}


def anyio_run(loop: str, func: Callable[..., Awaitable[T]], *args: Any) -> T:
    """``anyio.run(func, *args)`` on ``loop``, a key of :data:`ANYIO_LOOPS`.

    Shared with the stream workload (stream.py), so a row name means the same
    loop in every workload."""
    import anyio

    backend, options = ANYIO_LOOPS[loop]
    return anyio.run(func, *args, backend=backend, backend_options=options)


def _anyio_run(loop: str, accept_only: bool) -> None:
    import anyio

    anyio_run(loop, _anyio_main, anyio.create_tcp_listener, accept_only)


def _traffic_anyio_run(loop: str, accept_only: bool) -> None:
    from traffic import anyio_backend  # type: ignore[attr-defined,unused-ignore]

    anyio_run(loop, _anyio_main, anyio_backend.create_tcp_listener, accept_only)


#: Modules a server needs beyond trio and anyio (traffic's own dependencies):
#: uvloop is an optional peer (the [bench] extra), traffic.anyio_backend a
#: layer that may not exist yet.
NEEDS: dict[str, tuple[str, ...]] = {
    "uvloop": ("uvloop",),
    "uvloop-protocol": ("uvloop",),
    "anyio-uvloop": ("uvloop",),
    "traffic-anyio-trio": ("traffic.anyio_backend",),
    "traffic-anyio-asyncio": ("traffic.anyio_backend",),
    "traffic-anyio-uvloop": ("traffic.anyio_backend", "uvloop"),
}


def missing_module(name: str) -> str | None:
    """The first module server ``name`` needs (:data:`NEEDS`) that cannot be
    imported here, or None if it has them all."""
    for module in NEEDS.get(name, ()):
        try:
            found = importlib.util.find_spec(module) is not None
        except ImportError:  # its parent package is absent
            found = False
        if not found:
            return module
    return None


#: Server name -> function(accept_only).  ``traffic-trio-normal`` and
#: ``traffic-trio-idle`` are the driver's names for ``traffic-trio`` under
#: another TRAFFIC_CYCLE_POLICY.
SERVERS: dict[str, Callable[[bool], None]] = {
    "traffic-trio": traffic_trio,
    "trio": trio_native,
    "trio-floor": trio_floor,
    "asyncio": asyncio_streams,
    "uvloop": uvloop_streams,
    "uvloop-protocol": uvloop_protocol,
    "anyio-trio": partial(_anyio_run, "trio"),
    "anyio-asyncio": partial(_anyio_run, "asyncio"),
    "anyio-uvloop": partial(_anyio_run, "uvloop"),
    "traffic-anyio-trio": partial(_traffic_anyio_run, "trio"),
    "traffic-anyio-asyncio": partial(_traffic_anyio_run, "asyncio"),
    "traffic-anyio-uvloop": partial(_traffic_anyio_run, "uvloop"),
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m traffic.bench.servers")
    parser.add_argument("name", choices=sorted(SERVERS))
    parser.add_argument("--accept", action="store_true", help="close each connection at once")
    parser.add_argument(
        "--cycle-policy", choices=["normal", "idle", "batch"], help="traffic's cycle thread"
    )
    args = parser.parse_args(argv)
    if args.cycle_policy:
        os.environ["TRAFFIC_CYCLE_POLICY"] = args.cycle_policy
    try:
        SERVERS[args.name](args.accept)
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
