"""The http-server workload's servers: one ASGI app (:mod:`.asgi_app`)
served by each row's HTTP server.

Run as ``python -m traffic.bench.http_server NAME --file PATH``: serves
the app (``/small``, and PATH at ``/file``) on 127.0.0.1, prints the port
on its first line, and serves until killed.  One process, one worker, one
event loop: the driver reads the CPU of all of its threads.

The rows (:data:`ROWS`), each started the way its users start it from
Python:

- ``hypercorn-trio``: ``hypercorn.trio.serve`` (hypercorn's trio worker);
  ``traffic-hypercorn``: ``traffic.integrations.hypercorn.serve``, the same
  signature;
- ``anycorn-asyncio``, ``anycorn-uvloop``, ``anycorn-trio``:
  ``anycorn.serve`` under ``anyio.run`` on that loop
  (:data:`.servers.ANYIO_LOOPS`); ``traffic-anycorn-*``:
  ``traffic.integrations.anycorn.serve`` on the same loops;
- ``hypercorn-floor`` and ``anycorn-floor``: the host's own connection
  handler (``hypercorn.trio.tcp_server.TCPServer``, anycorn's
  ``TCPServer``), with its config, app wrapper and worker context, on
  connections a plain accept loop takes from a raw listening socket, each
  wrapped in the benchmark's floor stream (:class:`.floor.FloorStream`,
  :class:`.floor.AnyioFloorStream`; anycorn's on anyio's trio backend):
  what any transport under that handler can reach.  No lifespan (the app
  keeps no state);
- ``uvicorn``: ``uvicorn.Server`` with uvloop and httptools, one worker:
  what users run for speed.

Every row gets the same settings where the host has them: a backlog of
1,024, no access log, errors to stderr.  No row installs a signal handler
of its own to shut down gracefully (a ``shutdown_trigger`` that never
fires), except uvicorn, which always does: the driver ends every server
with SIGTERM.
"""

from __future__ import annotations

import argparse
import importlib.util
import socket
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, cast

from .asgi_app import App, make_app
from .servers import HOST, anyio_run

#: The listen backlog of every row (hypercorn's and anycorn's default is 100).
BACKLOG = 1024


@dataclass(frozen=True)
class Row:
    """A row of the workload: the function of this module that serves it
    (given the app), the loop it runs on, and the modules it needs."""

    serve: str
    loop: str
    needs: tuple[str, ...]


_HYPERCORN = ("hypercorn", "starlette")
_ANYCORN = ("anycorn", "starlette")

#: Row name -> its server, in table order: each host's own worker, traffic's
#: adapter of it, and its floor.
ROWS: dict[str, Row] = {
    "hypercorn-trio": Row("hypercorn_trio", "trio", _HYPERCORN),
    "traffic-hypercorn": Row(
        "traffic_hypercorn", "trio", (*_HYPERCORN, "traffic.integrations.hypercorn")
    ),
    "hypercorn-floor": Row("hypercorn_floor", "trio", _HYPERCORN),
    "anycorn-trio": Row("anycorn", "trio", _ANYCORN),
    "traffic-anycorn-trio": Row(
        "traffic_anycorn", "trio", (*_ANYCORN, "traffic.integrations.anycorn")
    ),
    "anycorn-floor": Row("anycorn_floor", "trio", _ANYCORN),
    "anycorn-asyncio": Row("anycorn", "asyncio", _ANYCORN),
    "traffic-anycorn-asyncio": Row(
        "traffic_anycorn", "asyncio", (*_ANYCORN, "traffic.integrations.anycorn")
    ),
    "anycorn-uvloop": Row("anycorn", "uvloop", (*_ANYCORN, "uvloop")),
    "traffic-anycorn-uvloop": Row(
        "traffic_anycorn", "uvloop", (*_ANYCORN, "traffic.integrations.anycorn", "uvloop")
    ),
    "uvicorn": Row("uvicorn", "uvloop", ("uvicorn", "uvloop", "httptools", "starlette")),
}


def missing_module(name: str) -> str | None:
    """The first module row ``name`` needs that cannot be imported here, or None."""
    for module in ROWS[name].needs:
        try:
            found = importlib.util.find_spec(module) is not None
        except ImportError:  # its parent package is absent
            found = False
        if not found:
            return module
    return None


def _announce(port: int) -> None:
    print(port, flush=True)


def _port(binds: list[str]) -> int:
    """The port of the first of the URLs a host's ``serve`` says it bound."""
    return int(binds[0].rsplit(":", 1)[1].rstrip("/"))


def _listener() -> socket.socket:
    sock = socket.create_server((HOST, 0), backlog=BACKLOG)
    sock.setblocking(False)
    return sock


async def _floor_accepts(handle: Callable[[socket.socket], Awaitable[None]]) -> None:
    """The floor rows' server: a plain accept loop on a raw listening
    socket (announced), ``handle(sock)`` in a task per connection."""
    import trio

    listener = _listener()
    _announce(listener.getsockname()[1])
    async with trio.open_nursery() as nursery:
        while True:
            await trio.lowlevel.wait_readable(listener)
            try:
                sock, _ = listener.accept()
            except BlockingIOError:
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            nursery.start_soon(handle, sock)


# --- hypercorn ------------------------------------------------------------------


def _hypercorn_config() -> Any:
    from hypercorn.config import Config

    config = Config()
    config.bind = [f"{HOST}:0"]
    config.backlog = BACKLOG
    return config


def _hypercorn_run(serve: Callable[..., Any], app: App, loop: str) -> None:
    import trio

    async def never() -> None:
        await trio.sleep_forever()

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            bound = partial(serve, app, _hypercorn_config(), shutdown_trigger=never)
            _announce(_port(await nursery.start(bound)))

    trio.run(main)


def hypercorn_trio(app: App, loop: str) -> None:
    from hypercorn.trio import serve

    _hypercorn_run(serve, app, loop)


def traffic_hypercorn(app: App, loop: str) -> None:
    from traffic.integrations.hypercorn import (  # type: ignore[import-not-found,unused-ignore]
        serve,
    )

    _hypercorn_run(serve, app, loop)


def hypercorn_floor(app: App, loop: str) -> None:
    import trio
    from hypercorn.trio.tcp_server import TCPServer
    from hypercorn.trio.worker_context import WorkerContext
    from hypercorn.typing import ConnectionState
    from hypercorn.utils import wrap_app

    from .floor import FloorStream

    class Stream(FloorStream):
        """The floor with the ``socket`` hypercorn's handler reads its
        addresses from."""

        @property
        def socket(self) -> socket.socket:
            return self._sock

    config = _hypercorn_config()
    wrapped = wrap_app(cast(Any, app), config.wsgi_max_body_size, "asgi")
    context = WorkerContext(None)
    state = ConnectionState({})

    async def handle(sock: socket.socket) -> None:
        stream: Any = Stream(sock)
        await TCPServer(wrapped, config, context, state, stream).run()

    async def main() -> None:
        await _floor_accepts(handle)

    trio.run(main)


# --- anycorn --------------------------------------------------------------------


def _anycorn_config() -> Any:
    from anycorn import Config  # type: ignore[import-not-found,unused-ignore]

    config = Config()
    config.bind = [f"{HOST}:0"]
    config.backlog = BACKLOG
    return config


async def _anycorn_main(serve: Callable[..., Any], app: App) -> None:
    import anyio

    async def never() -> None:
        await anyio.sleep_forever()

    async with anyio.create_task_group() as group:
        bound = partial(serve, app, _anycorn_config(), shutdown_trigger=never)
        _announce(_port(await group.start(bound)))


def anycorn(app: App, loop: str) -> None:
    from anycorn import serve  # type: ignore[import-not-found,unused-ignore]

    anyio_run(loop, _anycorn_main, serve, app)


def traffic_anycorn(app: App, loop: str) -> None:
    from traffic.integrations.anycorn import (  # type: ignore[import-not-found,unused-ignore]
        serve,
    )

    anyio_run(loop, _anycorn_main, serve, app)


def anycorn_floor(app: App, loop: str) -> None:
    from anycorn.tcp_server import TCPServer  # type: ignore[import-not-found,unused-ignore]
    from anycorn.typing import ConnectionState  # type: ignore[import-not-found,unused-ignore]
    from anycorn.utils import wrap_app  # type: ignore[import-not-found,unused-ignore]
    from anycorn.worker_context import (  # type: ignore[import-not-found,unused-ignore]
        WorkerContext,
    )

    from .floor import AnyioFloorStream

    config = _anycorn_config()
    wrapped = wrap_app(cast(Any, app), config.wsgi_max_body_size, "asgi")
    context = WorkerContext(None)
    state = ConnectionState({})

    async def handle(sock: socket.socket) -> None:
        await TCPServer(wrapped, config, context, state, AnyioFloorStream(sock)).run()

    async def main() -> None:
        await _floor_accepts(handle)

    # anyio's trio backend, as anycorn-trio: anycorn's code calls anyio.
    anyio_run(loop, main)


# --- uvicorn --------------------------------------------------------------------


def uvicorn(app: App, loop: str) -> None:
    import uvicorn as host

    config = host.Config(
        app,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_level="warning",
        backlog=BACKLOG,
        workers=1,
    )
    listener = _listener()
    _announce(listener.getsockname()[1])
    host.Server(config).run(sockets=[listener])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m traffic.bench.http_server")
    parser.add_argument("name", choices=list(ROWS))
    parser.add_argument("--file", required=True, help="the file served at /file")
    args = parser.parse_args(argv)
    row = ROWS[args.name]
    serve: Callable[[App, str], None] = globals()[row.serve]
    try:
        serve(make_app(args.file), row.loop)
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
