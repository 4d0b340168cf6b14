"""The trio layer's servers: :func:`serve_listeners`, :func:`serve_tcp`,
:func:`serve_unix`, with trio's contract and a checkpoint per batch of
accepted connections.

Imports trio, ``traffic._trio._stream``, ``traffic._trio._listener``,
``traffic._trio._open`` and ``traffic._base._sockets``.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import NoReturn

import trio

from .._base._sockets import ACCEPT_BACKOFF, accept_backoff
from ._listener import TrafficListener
from ._open import open_tcp_listeners, open_unix_listener
from ._stream import TrafficStream

_Handler = Callable[[TrafficStream], Awaitable[object]]


async def _run_handler(stream: TrafficStream, handler: _Handler) -> None:
    try:
        await handler(stream)
    finally:
        # trio's aclose_forcefully without its cancel scope and checkpoint:
        # closing a TrafficStream never blocks, and the task is ending.
        stream._close()


def _start_handlers(
    handler_nursery: trio.Nursery, handler: _Handler, streams: list[TrafficStream]
) -> None:
    """A handler task per stream; the list is emptied.  The serving loop
    holds no stream while it waits for the next batch: a stream it held
    would outlive its handler (its transits alive, if closed) for as long
    as no connection comes."""
    for stream in streams:
        handler_nursery.start_soon(_run_handler, stream, handler)
    streams.clear()


async def _serve_one_listener(
    listener: TrafficListener, handler_nursery: trio.Nursery, handler: _Handler
) -> NoReturn:
    async with listener:
        while True:
            try:
                streams = await listener._accept_all()
            except OSError as exc:
                if not accept_backoff(exc):
                    raise
                await trio.sleep(ACCEPT_BACKOFF)
                continue
            _start_handlers(handler_nursery, handler, streams)


async def serve_listeners(
    handler: _Handler,
    listeners: list[TrafficListener],
    *,
    handler_nursery: trio.Nursery | None = None,
    task_status: trio.TaskStatus[list[TrafficListener]] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """``trio.serve_listeners`` for :class:`TrafficListener`\\ s: run
    ``handler(stream)`` in a new task per connection; never returns.

    The same contract as trio's (listeners closed when it ends, handlers in
    ``handler_nursery`` or an internal nursery, a stream closed when its
    handler returns, EMFILE, ENFILE, ENOMEM and ENOBUFS logged at ERROR to
    the ``traffic.serve_listeners`` logger and retried after 100 ms), with
    less work per connection: each batch of connections the core accepted
    costs one checkpoint, and a stream is closed at once when its handler
    returns, without a cancel scope.  ``TypeError`` for a listener that is
    not a :class:`TrafficListener` (use ``trio.serve_listeners`` for those).
    """
    for listener in listeners:
        if not isinstance(listener, TrafficListener):
            raise TypeError(
                f"serve_listeners() takes TrafficListeners, not {type(listener).__name__}"
            )
    async with trio.open_nursery() as nursery:
        if handler_nursery is None:
            handler_nursery = nursery
        for listener in listeners:
            nursery.start_soon(_serve_one_listener, listener, handler_nursery, handler)
        task_status.started(listeners)
    raise AssertionError("_serve_one_listener never returns")  # pragma: no cover


async def serve_tcp(
    handler: _Handler,
    port: int,
    *,
    host: str | bytes | None = None,
    backlog: int | None = None,
    handler_nursery: trio.Nursery | None = None,
    task_status: trio.TaskStatus[list[TrafficListener]] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Serve TCP with ``handler(stream)`` per connection, as ``trio.serve_tcp``.

    ``await nursery.start(traffic.serve_tcp, handler, 0)`` returns the
    listeners.  Handlers run in ``handler_nursery`` (default: an internal
    one); a stream is closed when its handler returns.  On EMFILE, ENFILE,
    ENOMEM, ENOBUFS the server sleeps 100 ms and retries (trio's
    ``serve_listeners`` does it).  Cancelling closes every connection.
    """
    listeners = await open_tcp_listeners(port, host=host, backlog=backlog)
    await serve_listeners(
        handler, listeners, handler_nursery=handler_nursery, task_status=task_status
    )


async def serve_unix(
    handler: _Handler,
    path: str | bytes | os.PathLike[str],
    *,
    backlog: int | None = None,
    handler_nursery: trio.Nursery | None = None,
    task_status: trio.TaskStatus[list[TrafficListener]] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """:func:`serve_tcp` for an AF_UNIX path."""
    listener = await open_unix_listener(path, backlog=backlog)
    await serve_listeners(
        handler, [listener], handler_nursery=handler_nursery, task_status=task_status
    )
