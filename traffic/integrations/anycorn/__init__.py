"""anycorn (hypercorn on anyio) serving through traffic's listeners.

A drop-in for ``anycorn.serve``, on asyncio, asyncio with uvloop and trio::

    import anyio
    from anycorn import Config
    from traffic.integrations.anycorn import serve

    config = Config()
    config.bind = ["127.0.0.1:8000"]
    anyio.run(serve, app, config)

Every binding of ``config`` (``host:port``, ``unix:PATH``, ``fd://N``;
TLS with ``certfile``/``keyfile``) is served through traffic's listeners
and streams, every connection by anycorn's own code.  A file body
(``http.response.pathsend``, which Starlette's ``FileResponse`` uses, and
``http.response.zerocopysend``) on HTTP/1.1 goes by the stream's
``send_file``: the core moves it by ``sendfile(2)`` and its bytes never
enter Python; over TLS it is read and sent through the TLS stream in
bounded chunks.  ``use_ktls`` is not honoured: TLS stays userspace, with
a :class:`KernelTLSWarning` once a process.  ``quic_bind`` (HTTP/3) is
served by anycorn's own UDP server, unchanged.

The command ``python -m traffic.integrations.anycorn [anycorn's options]
MODULE:APP`` runs the same with anycorn's options, ``--workers`` included.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Literal

import anyio
import anyio.abc

try:
    from anycorn.config import Config
    from anycorn.utils import wrap_app
except ImportError as exc:  # pragma: no cover (the test extra installs it)
    raise ImportError(
        "traffic.integrations.anycorn needs anycorn: pip install 'traffic[anycorn]'"
    ) from exc

from ... import _faces
from .._workers import warn_process_options
from ._worker import KernelTLSWarning, worker_serve

__all__ = ["KernelTLSWarning", "serve"]


async def serve(
    app: Any,
    config: Config,
    *,
    shutdown_trigger: Callable[..., Awaitable[None]] | None = None,
    task_status: anyio.abc.TaskStatus[list[str]] = anyio.TASK_STATUS_IGNORED,
    mode: Literal["asgi", "wsgi"] | None = None,
) -> None:
    """Serve the ASGI application ``app`` as ``config`` says, until
    ``shutdown_trigger`` returns (on asyncio without one: until SIGINT or
    SIGTERM, as anycorn; otherwise until cancelled).

    ``anycorn.serve``'s contract: ``await task_group.start(serve, app,
    config)`` returns the URLs served; on shutdown the listeners stop and
    the requests in flight have ``config.graceful_timeout`` seconds to
    finish; the ASGI lifespan runs around it all; ``workers`` and
    ``debug`` have no effect here (a warning says so); anycorn's own
    errors for bad input.  ``mode="wsgi"`` (or a WSGI application) is
    served as anycorn serves it.
    """
    warn_process_options(config)
    await worker_serve(
        wrap_app(app, config.wsgi_max_body_size, mode),
        config,
        shutdown_trigger=shutdown_trigger,
        task_status=task_status,
    )


_faces.publish(__name__, globals())
