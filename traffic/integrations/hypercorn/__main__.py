"""``python -m traffic.integrations.hypercorn [hypercorn's options] MODULE:APP``.

hypercorn's own command line (its parser, its options and its config
files), served by hypercorn's trio worker on traffic's listeners
(:mod:`traffic.integrations.hypercorn`).  ``--workers N`` runs N worker
processes as hypercorn does (:mod:`traffic.integrations._workers`);
SIGINT or SIGTERM shuts down gracefully and the command exits 0 once the
requests in flight finished (or ``--graceful-timeout`` passed).  The
worker is trio's: ``-k trio`` is accepted, another ``--worker-class`` is
refused (``python -m traffic.integrations.anycorn`` serves asyncio and
uvloop).
"""

from __future__ import annotations

import sys
from typing import Any

import hypercorn.__main__
import hypercorn.utils

from .._workers import run
from ._worker import trio_worker

__all__ = ["main"]

_WORKER_CLASS_OPTIONS = ("-k", "--worker-class")


def _refuse_other_workers(args: list[str]) -> None:
    """Refuse ``-k``/``--worker-class`` with anything but trio: hypercorn
    defaults to asyncio, so only a class given outright is refused."""
    for index, arg in enumerate(args):
        name, _, value = arg.partition("=")
        if name not in _WORKER_CLASS_OPTIONS:
            continue
        if not value and index + 1 < len(args):
            value = args[index + 1]
        if value != "trio":
            raise SystemExit(
                f"traffic.integrations.hypercorn serves hypercorn's trio worker, not {value!r}"
                " (python -m traffic.integrations.anycorn serves asyncio and uvloop)"
            )


def _run(config: Any) -> int:
    config.worker_class = "trio"
    return run(config, trio_worker, hypercorn.utils)


def main(args: list[str] | None = None) -> int:
    """Parse hypercorn's options and serve; return the exit code."""
    args = sys.argv[1:] if args is None else args
    _refuse_other_workers(args)
    # hypercorn's main() builds its parser and config inside, then calls its
    # module's run(): that is the one hook it has.
    host: Any = hypercorn.__main__
    saved = host.run
    host.run = _run
    try:
        return int(host.main(args))
    finally:
        host.run = saved


if __name__ == "__main__":
    sys.exit(main())
