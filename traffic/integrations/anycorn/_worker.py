"""anycorn's worker, serving through traffic's anyio listeners.

:func:`worker_serve` is ``anycorn.run.worker_serve`` with the listeners
and the connection handler swapped: anycorn's lifespan, worker context,
shutdown and graceful-timeout rules are kept, each connection is run by
anycorn's ``TCPServer`` (:mod:`._tcp_server`: its file bodies sent by the
core), and the listening sockets become traffic's
:class:`~traffic.anyio_backend.TrafficSocketListener`\\ s (``anyio``'s
``TLSListener`` over them for TLS), on asyncio, uvloop and trio alike.
"""

from __future__ import annotations

import signal
import socket
import sys
import warnings
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from functools import partial
from multiprocessing.synchronize import Event as EventType
from random import randint
from typing import Any

import anyio
import anyio.abc
import sniffio
from anycorn.config import Config, Sockets
from anycorn.datagram import wrap_datagram_socket
from anycorn.lifespan import Lifespan
from anycorn.statsd import StatsdLogger
from anycorn.typing import AppWrapper, ConnectionState, LifespanState
from anycorn.udp_server import UDPServer
from anycorn.utils import (
    ShutdownError,
    check_multiprocess_shutdown_event,
    load_application,
    raise_shutdown,
    repr_socket_addr,
)
from anycorn.worker_context import WorkerContext
from anyio.streams.tls import TLSListener

from ...anyio_backend import TrafficSocketListener
from ._tcp_server import tcp_server_handler

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup  # type: ignore[import-not-found, unused-ignore]

__all__ = ["KernelTLSWarning", "anyio_worker", "shutdown_signals", "worker_serve"]

_Trigger = Callable[..., Awaitable[None]]


class KernelTLSWarning(RuntimeWarning):
    """``use_ktls`` was set: traffic serves userspace TLS instead."""


_ktls_warned = False


def _warn_ktls() -> None:
    """Warn, once a process, that ``use_ktls`` is not honoured: kernel TLS
    would make the kernel encrypt on a socket the core owns, and no kernel
    here has it to test, so TLS stays userspace (anyio's ``TLSStream``
    over traffic's stream)."""
    global _ktls_warned
    if not _ktls_warned:
        _ktls_warned = True
        warnings.warn(
            "use_ktls is set, but traffic's anycorn serves userspace TLS "
            "(kernel TLS is not supported on traffic's streams)",
            KernelTLSWarning,
            stacklevel=3,
        )


async def shutdown_signals() -> None:
    """Return on SIGINT or SIGTERM."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as received:
        async for _ in received:
            return


async def _listeners(
    sockets: Sockets, config: Config, stack: AsyncExitStack
) -> tuple[list[anyio.abc.Listener[Any]], list[str]]:
    """A listener for each TCP and UNIX socket (each closed by ``stack``),
    and the URLs served.  Every socket is taken, also when one fails."""
    listeners: list[anyio.abc.Listener[Any]] = []
    binds: list[str] = []
    every: list[socket.socket] = [*sockets.secure_sockets, *sockets.insecure_sockets]
    for sock in every:
        stack.callback(sock.close)  # a no-op once a listener took it
    ssl_context = config.create_ssl_context()  # a missing certificate fails here
    for secure, sock in [
        *((True, sock) for sock in sockets.secure_sockets),
        *((False, sock) for sock in sockets.insecure_sockets),
    ]:
        name = repr_socket_addr(sock.family, sock.getsockname())
        listener: anyio.abc.Listener[Any] = await TrafficSocketListener.from_socket(sock)
        if secure:
            assert ssl_context is not None  # anycorn makes secure sockets only with one
            listener = TLSListener(listener, ssl_context, True, config.ssl_handshake_timeout)
        listeners.append(await stack.enter_async_context(listener))
        url = f"{'https' if secure else 'http'}://{name}"
        binds.append(url)
        await config.log.info("Running on %s (CTRL + C to quit)", url)
    return listeners, binds


async def worker_serve(
    app: AppWrapper,
    config: Config,
    *,
    sockets: Sockets | None = None,
    shutdown_trigger: _Trigger | None = None,
    task_status: anyio.abc.TaskStatus[list[str]] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` (wrapped) on ``sockets`` (None: made from ``config``)
    until ``shutdown_trigger`` returns (on asyncio without one: SIGINT or
    SIGTERM, as anycorn); ``task_status.started`` gets the URLs served.
    On shutdown the listeners stop accepting at once, and the connections
    have ``config.graceful_timeout`` seconds to finish."""
    config.set_statsd_logger_class(StatsdLogger)
    if shutdown_trigger is None and sniffio.current_async_library() == "asyncio":
        # anycorn's rule: on asyncio, SIGINT and SIGTERM shut down gracefully.
        shutdown_trigger = shutdown_signals
    if config.use_ktls:
        _warn_ktls()

    lifespan_state: LifespanState = {}
    lifespan = Lifespan(app, config, lifespan_state)
    max_requests = None
    if config.max_requests is not None:
        max_requests = config.max_requests + randint(0, config.max_requests_jitter)
    context = WorkerContext(max_requests)

    async with config.log, anyio.create_task_group() as lifespan_tg:
        await lifespan_tg.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()

        async with anyio.create_task_group() as server_tg, AsyncExitStack() as stack:
            if sockets is None:
                sockets = config.create_sockets()
                for sock in [*sockets.secure_sockets, *sockets.insecure_sockets]:
                    sock.listen(config.backlog)
            listeners, binds = await _listeners(sockets, config, stack)

            udp_servers = []
            for sock in sockets.quic_sockets:
                # QUIC (HTTP/3) stays anycorn's own datagram server, unchanged.
                udp_socket = await wrap_datagram_socket(sock)
                stack.push_async_callback(udp_socket.aclose)
                state = lifespan_state.copy()
                udp_servers.append(UDPServer(app, config, context, state, udp_socket))
                url = f"https://{repr_socket_addr(sock.family, sock.getsockname())}"
                binds.append(url)
                await config.log.info("Running on %s (QUIC, CTRL + C to quit)", url)

            handler = tcp_server_handler(
                app, config, context, ConnectionState(lifespan_state.copy())
            )
            task_status.started(binds)
            try:
                async with anyio.create_task_group() as tg:
                    if shutdown_trigger is not None:
                        tg.start_soon(raise_shutdown, shutdown_trigger, context.terminated.set)
                    tg.start_soon(raise_shutdown, context.terminate.wait, context.terminated.set)
                    for udp_server in udp_servers:
                        await tg.start(udp_server.run)
                    # Connections run in server_tg, which outlives tg: shutdown
                    # stops the accepting at once, and the requests in flight
                    # get the graceful timeout set on server_tg below.
                    for listener in listeners:
                        tg.start_soon(partial(listener.serve, handler, task_group=server_tg))
                    await anyio.Event().wait()
            except BaseExceptionGroup as error:
                _, other_errors = error.split((ShutdownError, KeyboardInterrupt))
                if other_errors is not None:
                    raise other_errors from error
            finally:
                await context.terminated.set()
                server_tg.cancel_scope.deadline = anyio.current_time() + config.graceful_timeout

        await lifespan.wait_for_shutdown()
        lifespan_tg.cancel_scope.cancel()


def anyio_worker(
    config: Config, sockets: Sockets | None = None, shutdown_event: EventType | None = None
) -> None:
    """The command's worker: anycorn's ``anyio_worker`` on traffic's
    listeners, on ``config.worker_class`` (asyncio, uvloop or trio).  It
    stops when ``shutdown_event`` is set (a worker process) or on SIGINT
    or SIGTERM (in the command's own process)."""
    if sockets is not None:
        for sock in [*sockets.secure_sockets, *sockets.insecure_sockets]:
            sock.listen(config.backlog)
    app = load_application(config.application_path, config.wsgi_max_body_size)

    shutdown_trigger: _Trigger
    if shutdown_event is not None:
        shutdown_trigger = partial(check_multiprocess_shutdown_event, shutdown_event, anyio.sleep)
    else:
        shutdown_trigger = shutdown_signals
    backend, options = _backend(config.worker_class)
    anyio.run(
        partial(worker_serve, app, config, sockets=sockets, shutdown_trigger=shutdown_trigger),
        backend=backend,
        backend_options=options,
    )


def _backend(worker_class: str) -> tuple[str, dict[str, Any]]:
    """anyio's backend and its options for anycorn's ``worker_class``."""
    if worker_class == "uvloop":
        import uvloop

        return "asyncio", {"loop_factory": uvloop.new_event_loop}
    return worker_class, {}
