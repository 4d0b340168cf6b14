"""A helper module of the anyio tests (``test_anyio_*.py``, and the anyio
case of ``test_soak.py``); it holds no tests.

The event loops every anyio test runs on are listed here, once: asyncio,
asyncio on a uvloop loop (as anyio's own suite runs every asyncio case), and
trio.  Each test module feeds :data:`BACKENDS` to its ``anyio_backend``
fixture; a test that only means asyncio parametrizes ``anyio_backend`` with
:data:`ASYNCIO_BACKENDS`; a test that starts a run itself takes
:data:`RUN_BACKENDS` (``anyio.run``), :data:`ASYNCIO_RUNS` (``asyncio.run``
and ``uvloop.run``) or :data:`LOOP_FACTORIES` (a loop run and closed by
hand).

uvloop is optional: the ``test`` extra installs it only where it builds
(not on Windows, not on PyPy).  Without it the uvloop cases are skipped, with
the reason, and every asyncio and trio case still runs.

Not named ``test_*``, so pytest does not collect it; the tests import it as a
sibling top-level module (``from anyio_support import ...``), as they do
``conftest``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest

try:
    import uvloop
except ImportError:  # not installed here: the uvloop cases skip
    uvloop = None

T = TypeVar("T")

#: Whether the uvloop cases can run.
HAVE_UVLOOP = uvloop is not None

#: On every uvloop case: skipped, with the reason, where uvloop is missing.
needs_uvloop = pytest.mark.skipif(
    not HAVE_UVLOOP,
    reason="uvloop is not installed (the test extra installs it where it builds)",
)

#: anyio's pytest plugin takes a backend name or (name, options) as the
#: ``anyio_backend`` value; ``use_uvloop`` makes anyio's runner start a
#: uvloop loop.
UVLOOP_BACKEND: tuple[str, dict[str, Any]] = ("asyncio", {"use_uvloop": True})

#: asyncio, on its own loop and on uvloop's.
ASYNCIO_BACKENDS = [
    pytest.param("asyncio", id="asyncio"),
    pytest.param(UVLOOP_BACKEND, id="asyncio+uvloop", marks=needs_uvloop),
]

#: Every backend traffic's anyio layer runs on.
BACKENDS = [*ASYNCIO_BACKENDS, pytest.param("trio", id="trio")]


def backend_name(anyio_backend: str | tuple[str, dict[str, Any]]) -> str:
    """The backend's name (``"asyncio"``, ``"trio"``) of an ``anyio_backend`` value."""
    return anyio_backend if isinstance(anyio_backend, str) else anyio_backend[0]


def backend_options(anyio_backend: str | tuple[str, dict[str, Any]]) -> dict[str, Any]:
    """The ``backend_options`` of an ``anyio_backend`` value (``anyio.run``'s)."""
    return {} if isinstance(anyio_backend, str) else dict(anyio_backend[1])


#: The same backends as (name, options) pairs, for tests that call
#: ``anyio.run(..., backend=name, backend_options=options)`` themselves.
RUN_BACKENDS = [
    pytest.param(
        (backend_name(param.values[0]), backend_options(param.values[0])),
        id=param.id,
        marks=param.marks,
    )
    for param in BACKENDS
]


def new_uvloop() -> asyncio.AbstractEventLoop:
    """A new uvloop event loop (only called where uvloop is installed)."""
    assert uvloop is not None
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


#: Loop factories for the tests that run an asyncio loop by hand
#: (``run_until_complete`` then ``close``).
LOOP_FACTORIES: list[Any] = [
    pytest.param(asyncio.new_event_loop, id="asyncio"),
    pytest.param(new_uvloop, id="asyncio+uvloop", marks=needs_uvloop),
]

LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def uvloop_run(main: Coroutine[Any, Any, T]) -> T:
    """``uvloop.run(main)``: ``asyncio.run``'s sequence (cancel every task,
    shut down, close) on a uvloop loop (only called where uvloop is installed)."""
    assert uvloop is not None
    result: T = uvloop.run(main)
    return result


#: ``asyncio.run`` and its uvloop counterpart, for the tests that start a
#: run themselves.
ASYNCIO_RUNS: list[Any] = [
    pytest.param(asyncio.run, id="asyncio"),
    pytest.param(uvloop_run, id="asyncio+uvloop", marks=needs_uvloop),
]

AsyncioRun = Callable[[Coroutine[Any, Any, Any]], Any]


def on_uvloop() -> bool:
    """Whether the running asyncio loop is uvloop's."""
    return HAVE_UVLOOP and isinstance(asyncio.get_running_loop(), uvloop.Loop)
