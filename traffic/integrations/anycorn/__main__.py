"""``python -m traffic.integrations.anycorn [anycorn's options] MODULE:APP``.

anycorn's own command line (its parser, options and config files), its
worker on traffic's listeners (:mod:`traffic.integrations.anycorn`), on
the ``--worker-class`` anycorn takes (asyncio or trio).  ``--workers N``
runs N worker processes as anycorn does
(:mod:`traffic.integrations._workers`); SIGINT or SIGTERM shuts down
gracefully.
"""

from __future__ import annotations

import sys
from typing import Any

import anycorn.__main__
import anycorn.utils

from .._workers import run
from ._worker import anyio_worker

__all__ = ["main"]

_PROG = "python -m traffic.integrations.anycorn"


def _run(config: Any) -> int:
    return run(config, anyio_worker, anycorn.utils)


def main(args: list[str] | None = None) -> int:
    """Parse anycorn's options and serve; return the exit code."""
    # anycorn's main() (a click command) builds the config inside, then
    # calls its module's run(): that is the one hook it has.
    host: Any = anycorn.__main__
    saved = host.run
    host.run = _run
    try:
        host.main.main(args=sys.argv[1:] if args is None else args, prog_name=_PROG)
    except SystemExit as exit:  # click's standalone mode always exits
        return exit.code if isinstance(exit.code, int) else 1 if exit.code else 0
    finally:
        host.run = saved
    return 0


if __name__ == "__main__":
    sys.exit(main())
