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

The file workload's servers (:data:`FILE_SERVERS`) run as ``python -m
traffic.bench.servers NAME --download FILE`` or ``--upload DIRECTORY``, on
127.0.0.1 or, with ``--unix PATH``, on an AF_UNIX socket at PATH (first line:
the port, or the path).  A download connection sends one byte (the request)
and gets the whole FILE, then the server closes it; an upload connection's
bytes, up to its EOF, go to a new file in DIRECTORY, closed before the
connection is.  Each row moves the file the way its library's users do:
trio's and anyio's own streams read the file in chunks and send each,
``asyncio-sendfile`` uses ``loop.sendfile``, ``uvloop-streams`` (uvloop has
no sendfile) writes chunks to the stream, and traffic's streams call their
``send_file`` and ``receive_file``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import socket
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import IO, Any, TypeVar, cast

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


# --- the file workload ----------------------------------------------------------

#: Bytes one read of the file asks for in the chunked loops: what
#: ``shutil.copyfileobj`` reads at a time on Linux (``shutil.COPY_BUFSIZE``).
FILE_CHUNK = 65536


@dataclass(frozen=True)
class FileJob:
    """What a file server serves: ``path`` (the file) to every download
    connection, or every upload connection into a new file in ``path`` (a
    directory); on TCP, or on the AF_UNIX socket ``unix`` if set."""

    direction: str  # "download" or "upload"
    path: str
    unix: str | None = None


def _file_size(file: IO[bytes]) -> int:
    return os.fstat(file.fileno()).st_size


@contextlib.contextmanager
def _upload_file(directory: str) -> Iterator[IO[bytes]]:
    """A new file in ``directory`` for one upload connection."""
    fd, _ = tempfile.mkstemp(dir=directory, prefix="upload-")
    with open(fd, "wb") as file:
        yield file


def _trio_file_handler(
    job: FileJob,
    send: Callable[[Any, IO[bytes]], Awaitable[object]],
    receive: Callable[[Any, IO[bytes]], Awaitable[object]],
) -> Callable[[Any], Awaitable[None]]:
    """The per-connection handler of a trio stream (trio's or traffic's)."""

    async def download(stream: Any) -> None:
        await stream.receive_some(1)  # the request
        with open(job.path, "rb") as file:
            await send(stream, file)

    async def upload(stream: Any) -> None:
        with _upload_file(job.path) as file:
            await receive(stream, file)

    return download if job.direction == "download" else upload


async def _trio_send_chunks(stream: Any, file: IO[bytes]) -> None:
    while chunk := file.read(FILE_CHUNK):
        await stream.send_all(chunk)


async def _trio_receive_chunks(stream: Any, file: IO[bytes]) -> None:
    while data := await stream.receive_some():
        file.write(data)


async def _traffic_send_file(stream: Any, file: IO[bytes]) -> None:
    """traffic's streams, trio's layer and anyio's alike."""
    await stream.send_file(file, offset=0, count=_file_size(file))


async def _traffic_receive_file(stream: Any, file: IO[bytes]) -> None:
    await stream.receive_file(file)


def trio_file(job: FileJob) -> None:
    import trio

    handler = _trio_file_handler(job, _trio_send_chunks, _trio_receive_chunks)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            if job.unix is None:
                listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host=HOST))
                _announce(listeners[0].socket.getsockname()[1])
                return
            # trio has no AF_UNIX listener helper: the socket, then serve_listeners.
            sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            await sock.bind(job.unix)
            sock.listen()
            await nursery.start(trio.serve_listeners, handler, [trio.SocketListener(sock)])
            _announce_path(job.unix)

    trio.run(main)


def traffic_trio_file(job: FileJob) -> None:
    import trio

    import traffic

    handler = _trio_file_handler(job, _traffic_send_file, _traffic_receive_file)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            if job.unix is None:
                listeners = await nursery.start(partial(traffic.serve_tcp, handler, 0, host=HOST))
                _announce(listeners[0].socket.getsockname()[1])
            else:
                await nursery.start(traffic.serve_unix, handler, job.unix)
                _announce_path(job.unix)

    trio.run(main)


def _announce_path(path: str) -> None:
    print(path, flush=True)


async def _anyio_file_main(
    create_tcp_listener: Callable[..., Any],
    create_unix_listener: Callable[..., Any],
    send: Callable[[Any, IO[bytes]], Awaitable[object]],
    receive: Callable[[Any, IO[bytes]], Awaitable[object]],
    job: FileJob,
) -> None:
    from anyio.abc import SocketAttribute, SocketStream

    async def download(client: SocketStream) -> None:
        async with client:
            await client.receive(1)  # the request
            with open(job.path, "rb") as file:
                await send(client, file)

    async def upload(client: SocketStream) -> None:
        async with client:
            with _upload_file(job.path) as file:
                await receive(client, file)

    if job.unix is None:
        listener = await create_tcp_listener(local_host=HOST, local_port=0)
        _announce(listener.extra(SocketAttribute.local_port))
    else:
        listener = await create_unix_listener(job.unix)
        _announce_path(job.unix)
    await listener.serve(download if job.direction == "download" else upload)


async def _anyio_send_chunks(client: Any, file: IO[bytes]) -> None:
    while chunk := file.read(FILE_CHUNK):
        await client.send(chunk)


async def _anyio_receive_chunks(client: Any, file: IO[bytes]) -> None:
    async for chunk in client:
        file.write(chunk)


def _anyio_file_run(loop: str, job: FileJob) -> None:
    import anyio

    anyio_run(
        loop,
        _anyio_file_main,
        anyio.create_tcp_listener,
        anyio.create_unix_listener,
        _anyio_send_chunks,
        _anyio_receive_chunks,
        job,
    )


def _traffic_anyio_file_run(loop: str, job: FileJob) -> None:
    from traffic import anyio_backend  # type: ignore[attr-defined,unused-ignore]

    anyio_run(
        loop,
        _anyio_file_main,
        anyio_backend.create_tcp_listener,
        anyio_backend.create_unix_listener,
        _traffic_send_file,
        _traffic_receive_file,
        job,
    )


async def _asyncio_file_main(job: FileJob, sendfile: bool) -> None:
    """asyncio's streams; the download by ``loop.sendfile`` if ``sendfile``,
    else by writing chunks."""
    import asyncio

    loop = asyncio.get_running_loop()

    async def download(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readexactly(1)  # the request
            with open(job.path, "rb") as file:
                if sendfile:
                    # No fallback: a read-and-write loop would not be this row.
                    await loop.sendfile(writer.transport, file, 0, _file_size(file), fallback=False)
                else:
                    while chunk := file.read(FILE_CHUNK):
                        writer.write(chunk)
                        await writer.drain()
        finally:
            writer.close()

    async def upload(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            with _upload_file(job.path) as file:
                while data := await reader.read(RECEIVE_SIZE):
                    file.write(data)
        finally:
            writer.close()

    handler = download if job.direction == "download" else upload
    if job.unix is None:
        server = await asyncio.start_server(handler, HOST, 0)
        _announce(server.sockets[0].getsockname()[1])
    else:
        server = await asyncio.start_unix_server(handler, job.unix)
        _announce_path(job.unix)
    await server.serve_forever()


def asyncio_sendfile(job: FileJob) -> None:
    import asyncio

    asyncio.run(_asyncio_file_main(job, sendfile=True))


def uvloop_streams_file(job: FileJob) -> None:
    import uvloop

    uvloop.run(_asyncio_file_main(job, sendfile=False))


#: Row name -> the file workload's server.  ``asyncio-sendfile`` and
#: ``uvloop-streams`` are rows of this workload alone; the others are the
#: same rows as in the other workloads.
FILE_SERVERS: dict[str, Callable[[FileJob], None]] = {
    "traffic-trio": traffic_trio_file,
    "trio": trio_file,
    "traffic-anyio-trio": partial(_traffic_anyio_file_run, "trio"),
    "anyio-trio": partial(_anyio_file_run, "trio"),
    "traffic-anyio-asyncio": partial(_traffic_anyio_file_run, "asyncio"),
    "anyio-asyncio": partial(_anyio_file_run, "asyncio"),
    "traffic-anyio-uvloop": partial(_traffic_anyio_file_run, "uvloop"),
    "anyio-uvloop": partial(_anyio_file_run, "uvloop"),
    "asyncio-sendfile": asyncio_sendfile,
    "uvloop-streams": uvloop_streams_file,
}


def file_methods_missing(name: str) -> str | None:
    """For a traffic row of the file workload, what it needs that this
    traffic lacks (its streams' ``send_file`` and ``receive_file``), or None."""
    if not name.startswith("traffic"):
        return None
    stream: type
    try:
        if name.startswith("traffic-anyio"):
            from traffic import anyio_backend  # type: ignore[attr-defined,unused-ignore]

            stream = anyio_backend.TrafficSocketStream
        else:
            import traffic

            stream = traffic.TrafficStream
    except ImportError as error:
        return str(error)
    absent = [m for m in ("send_file", "receive_file") if not hasattr(stream, m)]
    if absent:
        return f"{stream.__module__}.{stream.__qualname__} has no {' or '.join(absent)}"
    return None


#: Modules a server needs beyond trio and anyio (traffic's own dependencies):
#: uvloop is an optional peer (the [bench] extra), traffic.anyio_backend a
#: layer that may not exist yet.
NEEDS: dict[str, tuple[str, ...]] = {
    "uvloop": ("uvloop",),
    "uvloop-protocol": ("uvloop",),
    "uvloop-streams": ("uvloop",),
    "anyio-uvloop": ("uvloop",),
    "traffic-anyio-trio": ("traffic.anyio_backend",),
    "traffic-anyio-asyncio": ("traffic.anyio_backend",),
    "traffic-anyio-uvloop": ("traffic.anyio_backend", "uvloop"),
    # Rows of the http-client workload alone (http_client.ROWS): they need
    # what their client needs.
    "asyncio-floor": ("httpx", "httpcore"),
    "uvloop-floor": ("httpx", "httpcore", "uvloop"),
    "aiohttp-asyncio": ("aiohttp",),
    "aiohttp-uvloop": ("aiohttp", "uvloop"),
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
    parser.add_argument("name", choices=sorted({*SERVERS, *FILE_SERVERS}))
    parser.add_argument("--accept", action="store_true", help="close each connection at once")
    parser.add_argument(
        "--cycle-policy", choices=["normal", "idle", "batch"], help="traffic's cycle thread"
    )
    transfer = parser.add_mutually_exclusive_group()
    transfer.add_argument("--download", metavar="FILE", help="file workload: send FILE")
    transfer.add_argument(
        "--upload", metavar="DIRECTORY", help="file workload: write uploads into DIRECTORY"
    )
    parser.add_argument(
        "--unix", metavar="PATH", help="file workload: listen on this AF_UNIX path, not TCP"
    )
    args = parser.parse_args(argv)
    if args.cycle_policy:
        os.environ["TRAFFIC_CYCLE_POLICY"] = args.cycle_policy
    serve: Callable[[], None]
    if args.download or args.upload:
        if args.name not in FILE_SERVERS:
            parser.error(f"{args.name} has no file server (choose from {', '.join(FILE_SERVERS)})")
        direction = "download" if args.download else "upload"
        job = FileJob(direction, args.download or args.upload, args.unix)
        serve = partial(FILE_SERVERS[args.name], job)
    elif args.name in SERVERS and args.unix is None:
        serve = partial(SERVERS[args.name], args.accept)
    else:
        parser.error(f"{args.name}: --unix and this server need --download or --upload")
    try:
        serve()
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
