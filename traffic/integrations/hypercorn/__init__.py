"""hypercorn's trio worker serving through traffic's listeners.

A drop-in for ``hypercorn.trio.serve``::

    import trio
    from hypercorn.config import Config
    from traffic.integrations.hypercorn import serve

    config = Config()
    config.bind = ["127.0.0.1:8000"]
    trio.run(serve, app, config)

Every binding of ``config`` (``host:port``, ``unix:PATH``, ``fd://N``;
``certfile``/``keyfile`` for TLS, with ``insecure_bind`` beside it) is
served through traffic's listeners, and every connection is handled by
hypercorn's own code (its HTTP/1.1, HTTP/2 and WebSocket protocols, its
lifespan, timeouts and graceful shutdown).  ``quic_bind`` (HTTP/3) is
served by hypercorn's own UDP server, unchanged.

The command ``python -m traffic.integrations.hypercorn [hypercorn's
options] MODULE:APP`` runs the same with hypercorn's options, ``--workers``
included (see :mod:`traffic.integrations.hypercorn.__main__`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Literal

import trio

try:
    from hypercorn.config import Config
    from hypercorn.utils import wrap_app
except ImportError as exc:  # pragma: no cover (the test extra installs it)
    raise ImportError(
        "traffic.integrations.hypercorn needs hypercorn: pip install 'traffic[hypercorn]'"
    ) from exc

from ... import _faces
from .._workers import warn_process_options
from ._worker import worker_serve

__all__ = ["serve"]


async def serve(
    app: Any,
    config: Config,
    *,
    shutdown_trigger: Callable[..., Awaitable[None]] | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
    mode: Literal["asgi", "wsgi"] | None = None,
) -> None:
    """Serve the ASGI application ``app`` as ``config`` says, until
    ``shutdown_trigger`` returns (None: until cancelled).

    ``hypercorn.trio.serve``'s contract: ``await nursery.start(serve, app,
    config)`` returns the URLs served; on shutdown the listeners close
    and the requests in flight have ``config.graceful_timeout`` seconds to
    finish; the ASGI lifespan runs around it all.  As there, options about
    processes (``workers``, ``debug``) have no effect here (a warning
    says so), and hypercorn's own errors are raised for bad input (an
    unparsable bind, a missing certificate, a lifespan failure).
    ``mode="wsgi"``, or a WSGI application, fails as it does in
    hypercorn's trio worker: WSGI is not served.
    """
    warn_process_options(config)
    await worker_serve(
        wrap_app(app, config.wsgi_max_body_size, mode),
        config,
        shutdown_trigger=shutdown_trigger,
        task_status=task_status,
    )


_faces.publish(__name__, globals())
