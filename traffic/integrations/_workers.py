"""Worker processes for the ASGI servers' commands, as their hosts run them.

hypercorn's and anycorn's ``run(config)`` choose the worker function
themselves (by ``config.worker_class``) and offer no hook for another, so
the commands of :mod:`traffic.integrations.hypercorn` and
:mod:`traffic.integrations.anycorn` run their workers here, with the
hosts' process semantics:

- ``config.workers == 0``: the worker runs in this process; SIGINT and
  SIGTERM start a graceful shutdown (hypercorn's trio worker leaves
  SIGTERM to kill the process; here it shuts down as SIGINT does);
- otherwise ``config.workers`` processes are spawned (the ``spawn``
  start method, as the hosts: the sockets are made once, here, and
  every worker serves the same listening sockets), SIGINT is ignored in
  them (inherited), SIGINT and SIGTERM here set the shared shutdown event
  each worker polls, SIGHUP restarts the workers (a reload), and the
  reloader (``--reload``) restarts them when a source file changes; a
  worker that exits (``max_requests`` reached) is replaced;
- on shutdown each worker has ``graceful_timeout`` (and a few seconds) to
  finish its requests in flight and exit before it is sent SIGTERM (the
  hosts send it at once, cutting the other workers' requests short);
- the exit code is the first non-zero exit code of a worker, else 0.
"""

from __future__ import annotations

import signal
import time
import warnings
from multiprocessing import get_context
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event as EventType
from pickle import PicklingError
from types import ModuleType
from typing import Any, Protocol

__all__ = ["Worker", "run", "warn_process_options"]

#: Seconds a worker has to exit after its graceful timeout, before SIGTERM.
EXIT_MARGIN = 5.0


class Worker(Protocol):
    """A worker function: serve ``config`` on ``sockets`` (made by the
    parent; None: make them) until ``shutdown_event`` is set (None: until
    a signal)."""

    def __call__(
        self, config: Any, sockets: Any = None, shutdown_event: EventType | None = None
    ) -> None: ...


def warn_process_options(config: Any) -> None:
    """Warn, as the hosts' ``serve`` does, that the options about processes
    (``debug``, ``workers``) mean nothing to a ``serve`` call: it runs in
    the caller's process."""
    if config.debug:
        warnings.warn("The config `debug` has no affect when using serve", Warning, stacklevel=3)
    if config.workers != 1:
        warnings.warn("The config `workers` has no affect when using serve", Warning, stacklevel=3)


def run(
    config: Any,
    worker: Worker,
    utils: ModuleType,
) -> int:
    """Serve ``config`` with ``worker`` in ``config.workers`` processes
    (or this one); return the exit code.  ``utils`` is the host's own
    ``utils`` module: its application loader, pid file and reloader
    functions, so that each host's behaviour stays its own."""
    if config.pid_path is not None:
        utils.write_pid_file(config.pid_path)
    if config.use_reloader and config.workers == 0:
        raise RuntimeError("Cannot reload without workers")

    sockets = config.create_sockets()
    try:
        if config.workers == 0:
            worker(config, sockets)
            return 0
        if config.use_reloader:
            # Imported here so that the reloader watches the application's files.
            utils.load_application(config.application_path, config.wsgi_max_body_size)
        return _supervise(config, worker, sockets, utils)
    finally:
        for sock in (*sockets.secure_sockets, *sockets.insecure_sockets, *sockets.quic_sockets):
            sock.close()


def _supervise(
    config: Any,
    worker: Worker,
    sockets: Any,
    utils: ModuleType,
) -> int:
    context = get_context("spawn")
    shutdown_event = context.Event()
    processes: list[BaseProcess] = []
    active = True

    def shutdown(*_: object) -> None:
        nonlocal active
        active = False
        shutdown_event.set()

    def reload(*_: object) -> None:
        shutdown_event.set()
        for process in processes:
            process.join()
        shutdown_event.clear()

    exitcode = 0
    try:
        while active:
            # The workers inherit SIGINT ignored: a terminal's Ctrl-C reaches
            # the whole process group, and only this process decides.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            for _ in range(config.workers - len(processes)):
                processes.append(_start(context, worker, config, sockets, shutdown_event))
            signal.signal(signal.SIGINT, shutdown)
            signal.signal(signal.SIGTERM, shutdown)
            signal.signal(signal.SIGHUP, reload)

            if config.use_reloader:
                files = utils.files_to_watch()
                while not wait([p.sentinel for p in processes], timeout=1):
                    if utils.check_for_updates(files):
                        reload()
                        break
            else:
                wait([p.sentinel for p in processes])

            exitcode = _join_exited(processes)
            if exitcode != 0:
                shutdown_event.set()
                active = False
        # Every worker saw the event and is finishing its requests in flight:
        # each has its graceful timeout, and a little more to exit.
        deadline = time.monotonic() + config.graceful_timeout + EXIT_MARGIN
        for process in processes:
            process.join(max(0.0, deadline - time.monotonic()))
    finally:
        for process in processes:
            if process.exitcode is None:
                process.terminate()
            process.join()
            if exitcode == 0 and process.exitcode:
                exitcode = process.exitcode
    return exitcode


def _start(
    context: Any, worker: Worker, config: Any, sockets: Any, shutdown_event: EventType
) -> BaseProcess:
    process: BaseProcess = context.Process(
        target=worker,
        kwargs={"config": config, "sockets": sockets, "shutdown_event": shutdown_event},
    )
    process.daemon = config.daemon
    try:
        process.start()
    except PicklingError as error:
        raise RuntimeError(
            "Cannot pickle the config, see "
            "https://docs.python.org/3/library/pickle.html#pickle-picklable"
        ) from error
    return process


def _join_exited(processes: list[BaseProcess]) -> int:
    """Join the workers that exited and remove them from ``processes``;
    the first non-zero exit code among them, else 0."""
    exitcode = 0
    for index in reversed(range(len(processes))):
        process = processes[index]
        if process.exitcode is not None:
            process.join()
            if exitcode == 0:
                exitcode = process.exitcode
            del processes[index]
    return exitcode
