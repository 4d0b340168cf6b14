"""A Starlette application served by hypercorn or anycorn through traffic.

Usage, with hypercorn's trio worker (hypercorn's own options)::

    python -m traffic.integrations.hypercorn --bind 127.0.0.1:8000 asgi_files:app

or with anycorn, on asyncio or trio (anycorn's own options)::

    python -m traffic.integrations.anycorn -k trio --bind 127.0.0.1:8000 asgi_files:app

run from ``examples/`` (or with it on ``PYTHONPATH``).  Or run this file,
which serves it with anycorn in this process (``--trio`` for trio,
asyncio by default) until Ctrl-C::

    python examples/asgi_files.py ROOT [--bind 127.0.0.1:8000] [--trio]

Routes: ``GET /`` a JSON index of the regular files in ``ROOT`` (the
directory ``$ASGI_FILES_ROOT`` names, for the commands), ``GET
/files/NAME`` one of them.  A file goes out as Starlette's
``FileResponse``: anycorn offers it the ``http.response.pathsend``
extension, and traffic's anycorn sends the body by ``send_file`` (the
core's ``sendfile(2)``: the file's bytes never enter Python); hypercorn,
which has no ``pathsend``, reads it and sends it through Python.  Range
requests are served by Starlette.  Once listening, the server prints
``Running on http://HOST:PORT`` (anycorn's log line).
"""

from __future__ import annotations

import argparse
import os
import signal
from functools import partial
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse
from starlette.routing import Route


def make_app(root: Path) -> Starlette:
    """The application serving the regular files directly in ``root``."""
    root = root.resolve()

    def regular_files() -> list[Path]:
        return sorted(p for p in root.iterdir() if p.is_file() and not p.is_symlink())

    async def index(request: Request) -> JSONResponse:
        return JSONResponse({p.name: p.stat().st_size for p in regular_files()})

    async def file(request: Request) -> FileResponse:
        name = request.path_params["name"]
        if name not in {p.name for p in regular_files()}:
            raise HTTPException(404)
        return FileResponse(root / name)

    return Starlette(routes=[Route("/", index), Route("/files/{name}", file)])


#: The application the commands load: ``$ASGI_FILES_ROOT`` (default: here).
app = make_app(Path(os.environ.get("ASGI_FILES_ROOT", ".")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="the directory whose files are served")
    parser.add_argument("--bind", default="127.0.0.1:8000", help="HOST:PORT or unix:PATH")
    parser.add_argument("--trio", action="store_true", help="run on trio (default: asyncio)")
    args = parser.parse_args()

    import anyio
    from anycorn import Config

    from traffic.integrations.anycorn import serve

    async def interrupted() -> None:
        # A graceful shutdown on Ctrl-C or SIGTERM, on trio as on asyncio
        # (left to itself, trio would raise KeyboardInterrupt wherever the
        # server happens to be).
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                return

    config = Config()
    config.bind = [args.bind]
    config.errorlog = "-"  # the "Running on" line, on stderr
    anyio.run(
        partial(serve, make_app(args.root), config, shutdown_trigger=interrupted),
        backend="trio" if args.trio else "asyncio",
    )


if __name__ == "__main__":
    main()
