"""A caller's buffer that traffic pinned survives the collection of the
exception its operation ended in.

When a send or a receive raises, the traceback's frames hold the caller's
buffer and what traffic pinned of it.  With the exception in a reference
cycle, only the garbage collector frees them, in an order of its choosing:
if traffic's pin still holds an export of the caller's memoryview when the
collector clears that memoryview, CPython reports "memoryview has 1
exported buffer" and crashes (CPython gh-77894: a segmentation fault).

Each layer runs in a child process (``tests/pins_children.py``), so a crash
fails its test, not the session.  A child performs every way its layer's
operations end in an exception (the peer reset, a close from another task
while the operation is parked, cancellation at the checkpoint and while
parked, a refusal after the end of the transit, bad input), each time with
the caller's buffer a memoryview slice, the exception in a cycle and every
other reference dropped, then collects; it prints one line per case, and
checks that its descriptors and the core's live objects are back at their
baseline once it closed everything.

Which traffic the children import: ``PYTHONPATH`` as the session has it,
then the session's own package root.  Without ``PYTHONPATH`` that is the
session's traffic; ``PYTHONPATH=TREE python -m pytest
tests/test_pins_collected.py`` runs the children on the traffic of ``TREE``
(the session itself imports the checkout's: ``python -m`` puts the current
directory first).  Each child's first line says which it imported.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from typing import Any

import pytest
from anyio_support import RUN_BACKENDS

import traffic

TESTS = os.path.dirname(os.path.abspath(__file__))
CHILD = os.path.join(TESTS, "pins_children.py")

#: Bounds a hang of a child, never a pass (a child takes about two seconds).
TIMEOUT = 45

#: The cases of an operation that can park (``pins_children.cases``): the
#: exception each ends in, with trio's cancellation.
PARKING_CASES = {
    "reset": "BrokenResourceError",
    "closed while parked": "ClosedResourceError",
    "cancelled at checkpoint": "Cancelled",
    "cancelled while parked": "Cancelled",
    "ended": "ClosedResourceError",
}

#: ``send_fds``'s bad input (``pins_children.bad_input``).
BAD_INPUT_CASES = {
    "empty message": "ValueError",
    "str in fds": "TypeError",
}


def child_environment() -> dict[str, str]:
    """The children import what ``PYTHONPATH`` names, else the session's traffic."""
    env = dict(os.environ)
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(traffic.__file__)))
    inherited = env.get("PYTHONPATH")
    env["PYTHONPATH"] = inherited + os.pathsep + package_root if inherited else package_root
    return env


def ended_how(returncode: int) -> str:
    if returncode < 0:
        return f"killed by {signal.Signals(-returncode).name}"
    return f"exit status {returncode}"


def run_child(*arguments: str) -> list[str]:
    """Run a child program; its lines after the warm-up (it must exit 0)."""
    done = subprocess.run(
        # faulthandler: a crash prints the Python stack it happened in.
        [sys.executable, "-X", "faulthandler", CHILD, *arguments],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=TESTS,
        env=child_environment(),
    )
    assert done.returncode == 0, (
        f"the child ({' '.join(arguments)}) ended with {ended_how(done.returncode)}\n"
        f"--- stdout ---\n{done.stdout}--- stderr ---\n{done.stderr}"
    )
    lines = done.stdout.splitlines()
    assert "warm-up done" in lines, done.stdout
    return lines[lines.index("warm-up done") + 1 :]


def lines_of(prefix: str, cases: dict[str, str]) -> list[str]:
    return [f"{prefix} {case}: {exception}" for case, exception in cases.items()]


def assert_exercised(lines: list[str], expected: list[str]) -> None:
    """Every case ran, raised what it should, and survived its collection."""
    missing = [line for line in expected if line not in lines]
    assert not missing, "cases missing or raising something else:\n" + "\n".join(
        [*missing, "--- the child printed ---", *lines]
    )


def test_trio_stream_send_all() -> None:
    """``TrafficStream.send_all(view)`` raising on a peer reset, a close
    under it, cancellation (at its checkpoint, while parked) and after
    ``send_eof``: the collected exception takes the pin along, and nothing
    leaks."""
    lines = run_child("trio-stream")
    assert_exercised(lines, lines_of("trio-stream send_all", PARKING_CASES))


def test_trio_primitives() -> None:
    """``traffic.send_all`` and ``traffic.recv_into`` on bare transits, and
    ``traffic.send_fds`` on a Descriptors transit and on an AF_UNIX
    TrafficStream: every exception they end in (a terminated transit for
    the refusal; bad input for ``send_fds``) is collected safely with the
    caller's view, and nothing leaks."""
    lines = run_child("trio-primitives")
    expected = [
        *lines_of("trio-primitives send_all", PARKING_CASES),
        *lines_of("trio-primitives recv_into", PARKING_CASES),
    ]
    for target in ("transit", "stream"):
        prefix = f"trio-primitives send_fds({target})"
        expected += lines_of(prefix, {**PARKING_CASES, **BAD_INPUT_CASES})
    assert_exercised(lines, expected)


@pytest.mark.parametrize("backend", RUN_BACKENDS)
def test_anyio_streams(backend: tuple[str, dict[str, Any]]) -> None:
    """The anyio streams of ``traffic.anyio_backend`` (from ``connect_tcp``,
    a ``create_tcp_listener`` listener, ``connect_unix``): ``send(view)``
    and ``send_fds(view, fds)`` on every backend, in every way they raise,
    are collected safely, and the loop's Traffic leaves nothing behind."""
    name, options = backend
    lines = run_child("anyio", name, json.dumps(options))
    uvloop = " (uvloop)" if options.get("use_uvloop") else ""
    cancelled = "Cancelled" if name == "trio" else "CancelledError"
    parking = {
        case: cancelled if case.startswith("cancelled") else exception
        for case, exception in PARKING_CASES.items()
    }
    assert_exercised(
        lines,
        [
            f"anyio on {name}{uvloop}",
            *lines_of("anyio send(connect_tcp)", parking),
            *lines_of("anyio send(create_tcp_listener)", parking),
            *lines_of("anyio send_fds", {**parking, **BAD_INPUT_CASES}),
        ],
    )


def test_sync_traffic() -> None:
    """A synchronous Traffic's ``acquire(view)`` on Octets and Descriptors
    transits refused (a resource not yet exhausted, a terminated transit,
    one the peer reset, a descriptor that is not open, bad input), and a
    threaded Traffic's ``request`` and ``request_fds`` refused: each
    exception is collected safely with the caller's view, and nothing
    leaks."""
    lines = run_child("sync")
    assert_exercised(
        lines,
        lines_of(
            "sync",
            {
                "acquire refused (input)": "BufferError",
                "acquire refused (output)": "BufferError",
                "acquire terminated": "TransitClosedError",
                "acquire after reset": "TransitClosedError",
                "Descriptors.acquire refused (input)": "BufferError",
                "Descriptors.acquire descriptor not open": "TransitError",
                "Descriptors.acquire str in fds": "TypeError",
                "Descriptors.acquire empty message": "ValueError",
                "Descriptors.acquire refused (output)": "BufferError",
                "Descriptors.acquire terminated": "TransitClosedError",
                "request busy": "RuntimeError",
                "request terminated": "TransitClosedError",
                "request_fds descriptor not open": "TransitError",
                "request_fds str in fds": "TypeError",
                "request_fds empty message": "ValueError",
                "request_fds busy": "RuntimeError",
                "request_fds terminated": "TransitClosedError",
            },
        ),
    )
