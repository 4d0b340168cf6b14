"""Echo servers, one per implementation, each written the way a competent
user of that library writes one.  Run as ``python -m traffic.bench.servers
NAME``: prints the port on its first line, serves until killed."""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import partial


def traffic_trio() -> None:
    import trio

    import traffic

    async def echo(stream: traffic.TrafficStream) -> None:
        while data := await stream.receive_some():
            await stream.send_all(data)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(partial(traffic.serve_tcp, echo, 0, host="127.0.0.1"))
            _announce(listeners[0].socket.getsockname()[1])

    trio.run(main)


def trio_native() -> None:
    import trio

    async def echo(stream: trio.SocketStream) -> None:
        while data := await stream.receive_some():
            await stream.send_all(data)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(partial(trio.serve_tcp, echo, 0, host="127.0.0.1"))
            _announce(listeners[0].socket.getsockname()[1])

    trio.run(main)


def asyncio_streams() -> None:
    import asyncio

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    async def main() -> None:
        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        _announce(server.sockets[0].getsockname()[1])
        await server.serve_forever()

    asyncio.run(main())


def _announce(port: int) -> None:
    print(port, flush=True)


SERVERS: dict[str, Callable[[], None]] = {
    "traffic-trio": traffic_trio,
    "trio": trio_native,
    "asyncio": asyncio_streams,
}

if __name__ == "__main__":
    SERVERS[sys.argv[1]]()
