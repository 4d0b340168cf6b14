"""hypercorn's trio worker, serving through traffic's listeners.

:func:`worker_serve` is ``hypercorn.trio.run.worker_serve`` with the
listeners swapped: it keeps hypercorn's lifespan, worker context,
shutdown and graceful-timeout rules and runs hypercorn's own
``TCPServer`` for every connection (and ``UDPServer`` for QUIC), so the
connections behave as hypercorn's; only the listening sockets become
traffic's :class:`~traffic.TrafficListener`\\ s.  Plaintext listeners are
served by :func:`traffic.serve_listeners` (the core accepts whole
batches); TLS listeners are ``trio.SSLListener``\\ s over traffic's
listeners, served by ``trio.serve_listeners``, each connection a
``trio.SSLStream`` over a :class:`~traffic.TrafficStream` (ALPN from
hypercorn's ``ssl_context``, so HTTP/2 is negotiated as in hypercorn).
"""

from __future__ import annotations

import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from functools import partial
from multiprocessing.synchronize import Event as EventType
from random import randint
from typing import Any

import trio
from hypercorn.config import Config, Sockets
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.statsd import StatsdLogger
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.udp_server import UDPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import AppWrapper, ConnectionState, LifespanState
from hypercorn.utils import (
    ShutdownError,
    check_multiprocess_shutdown_event,
    load_application,
    raise_shutdown,
    repr_socket_addr,
)

from ...trio_integration import TrafficListener, TrafficStream, serve_listeners

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup  # type: ignore[import-not-found, unused-ignore]

__all__ = ["shutdown_signals", "trio_worker", "worker_serve"]

_Trigger = Callable[..., Awaitable[None]]


class _Listeners:
    """The listeners of one worker: plaintext ones (served by traffic's
    ``serve_listeners``), TLS ones (``trio.SSLListener``) and the URLs
    they serve, in hypercorn's order and words."""

    def __init__(self) -> None:
        self.plain: list[TrafficListener] = []
        self.secure: list[trio.SSLListener[TrafficStream]] = []
        self.binds: list[str] = []

    async def open(self, sockets: Sockets, config: Config) -> None:
        """A listener for each of ``sockets``' TCP and UNIX sockets (every
        socket is taken, also when one fails: closed by :meth:`close`)."""
        taken: list[socket.socket] = [*sockets.secure_sockets, *sockets.insecure_sockets]
        try:
            ssl_context = config.create_ssl_context()  # a missing certificate fails here
            for sock in sockets.secure_sockets:
                assert ssl_context is not None  # hypercorn makes secure sockets only with one
                name = repr_socket_addr(sock.family, sock.getsockname())
                listener = TrafficListener(sock)
                self.secure.append(trio.SSLListener(listener, ssl_context, https_compatible=True))
                self.binds.append(f"https://{name}")
                await config.log.info(f"Running on https://{name} (CTRL + C to quit)")
            for sock in sockets.insecure_sockets:
                name = repr_socket_addr(sock.family, sock.getsockname())
                self.plain.append(TrafficListener(sock))
                self.binds.append(f"http://{name}")
                await config.log.info(f"Running on http://{name} (CTRL + C to quit)")
        except BaseException:
            for sock in taken:
                sock.close()  # those not taken by a listener yet (a detached one: a no-op)
            await self.close()
            raise

    async def close(self) -> None:
        for listener in [*self.plain, *self.secure]:
            await trio.aclose_forcefully(listener)


async def worker_serve(
    app: AppWrapper,
    config: Config,
    *,
    sockets: Sockets | None = None,
    shutdown_trigger: _Trigger | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` (wrapped) on ``sockets`` (None: made from ``config``)
    until ``shutdown_trigger`` returns (or hypercorn's worker context asks
    to stop: ``max_requests``); ``task_status.started`` gets the URLs
    served.  On shutdown the listeners close at once, and the connections
    have ``config.graceful_timeout`` seconds to finish."""
    config.set_statsd_logger_class(StatsdLogger)

    lifespan_state: LifespanState = {}
    lifespan = Lifespan(app, config, lifespan_state)
    max_requests = None
    if config.max_requests is not None:
        max_requests = config.max_requests + randint(0, config.max_requests_jitter)
    context = WorkerContext(max_requests)

    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()

        async with trio.open_nursery() as server_nursery:
            if sockets is None:
                sockets = config.create_sockets()
                for sock in [*sockets.secure_sockets, *sockets.insecure_sockets]:
                    sock.listen(config.backlog)
            listeners = _Listeners()
            await listeners.open(sockets, config)
            binds = listeners.binds

            for sock in sockets.quic_sockets:
                # QUIC (HTTP/3) stays hypercorn's own: a datagram server,
                # unchanged (traffic's listeners are for streams).
                state = ConnectionState(lifespan_state.copy())
                await server_nursery.start(UDPServer(app, config, context, state, sock).run)
                name = repr_socket_addr(sock.family, sock.getsockname())
                await config.log.info(f"Running on https://{name} (QUIC) (CTRL + C to quit)")

            handler: Any = partial(
                TCPServer, app, config, context, ConnectionState(lifespan_state.copy())
            )
            task_status.started(binds)
            try:
                async with trio.open_nursery(strict_exception_groups=True) as nursery:
                    if shutdown_trigger is not None:
                        nursery.start_soon(raise_shutdown, shutdown_trigger)
                    nursery.start_soon(raise_shutdown, context.terminate.wait)
                    if listeners.plain:
                        nursery.start_soon(
                            partial(
                                serve_listeners,
                                handler,
                                listeners.plain,
                                handler_nursery=server_nursery,
                            )
                        )
                    if listeners.secure:
                        nursery.start_soon(
                            partial(
                                trio.serve_listeners,
                                handler,
                                listeners.secure,
                                handler_nursery=server_nursery,
                            )
                        )
                    await trio.sleep_forever()
            except BaseExceptionGroup as error:
                _, other_errors = error.split((ShutdownError, KeyboardInterrupt))
                if other_errors is not None:
                    raise other_errors from None
            finally:
                await listeners.close()  # already, unless serving never began
                await context.terminated.set()
                server_nursery.cancel_scope.deadline = trio.current_time() + config.graceful_timeout

        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()


async def shutdown_signals() -> None:
    """Return on SIGINT or SIGTERM: the shutdown trigger of a worker that
    runs in the command's own process."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as received:
        async for _ in received:
            return


def trio_worker(
    config: Config, sockets: Sockets | None = None, shutdown_event: EventType | None = None
) -> None:
    """The command's worker: hypercorn's ``trio_worker`` on traffic's
    listeners.  It stops when ``shutdown_event`` is set (a worker process)
    or on SIGINT or SIGTERM (in the command's own process)."""
    if sockets is not None:
        for sock in [*sockets.secure_sockets, *sockets.insecure_sockets]:
            sock.listen(config.backlog)
    app = load_application(config.application_path, config.wsgi_max_body_size)

    shutdown_trigger: _Trigger
    if shutdown_event is not None:
        shutdown_trigger = partial(check_multiprocess_shutdown_event, shutdown_event, trio.sleep)
    else:
        shutdown_trigger = shutdown_signals
    trio.run(partial(worker_serve, app, config, sockets=sockets, shutdown_trigger=shutdown_trigger))
