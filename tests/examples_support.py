"""A helper module of the tests that run ``examples/`` as a user runs them
(``test_*example*.py``, and the example tests of the integrations); it
holds no tests.

Each example runs in a subprocess of this Python that imports the same
traffic as the tests (:func:`environment`), from the repository's root
unless a test says otherwise.  A server example's first line of output is
``listening on HOST:PORT`` (:func:`listening`).  Whatever a test does, a
subprocess it launched is killed if still running and reaped at the end
(:func:`launched`, :func:`reap`).  Timeouts bound a hang, never decide a
pass: each test module passes its own.

Imports traffic (to find it) and pytest; not named ``test_*``, so pytest
does not collect it: the tests import it as a sibling top-level module
(``from examples_support import ...``), as they do ``conftest``.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
from collections.abc import Iterator

import pytest

import traffic

#: The repository: the examples are in ``ROOT/examples``.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def example(name: str) -> str:
    """The path of ``examples/name``."""
    return os.path.join(ROOT, "examples", name)


def environment() -> dict[str, str]:
    """The subprocess imports the same traffic as these tests."""
    env = dict(os.environ)
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(traffic.__file__)))
    env["PYTHONPATH"] = package_root + os.pathsep + env.get("PYTHONPATH", "")
    return env


def start_example(
    script: str | os.PathLike[str],
    *args: str,
    cwd: str | os.PathLike[str] = ROOT,
    stderr: int = subprocess.PIPE,
) -> subprocess.Popen[str]:
    """``script`` run with ``args`` by this Python, its output piped as text."""
    return subprocess.Popen(
        [sys.executable, os.fspath(script), *args],
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        env=environment(),
        cwd=cwd,
    )


def reap(process: subprocess.Popen[str], timeout: float) -> str | None:
    """Kill ``process`` if it still runs, and reap it: the rest of its
    stderr (None if it was read already or not piped)."""
    if process.poll() is None:
        process.kill()
    return process.communicate(timeout=timeout)[1]


@contextlib.contextmanager
def launched(
    script: str | os.PathLike[str],
    *args: str,
    timeout: float,
    cwd: str | os.PathLike[str] = ROOT,
) -> Iterator[subprocess.Popen[str]]:
    """:func:`start_example`, then :func:`reap` whatever the block does."""
    process = start_example(script, *args, cwd=cwd)
    try:
        yield process
    finally:
        reap(process, timeout)


def listening(
    process: subprocess.Popen[str], timeout: float, host: str | None = None
) -> tuple[str, int]:
    """The address of a server's first line, ``listening on HOST:PORT``
    (the host ``host`` if given); a first line of another form fails the
    test with it and the server's stderr."""
    assert process.stdout is not None
    line = process.stdout.readline()
    pattern = r"\S+" if host is None else re.escape(host)
    match = re.fullmatch(rf"listening on ({pattern}):(\d+)\n", line)
    if match is None:
        err = reap(process, timeout)
        pytest.fail(f"first line: {line!r}; stderr: {err}")
    return match[1], int(match[2])


def run_example(
    script: str | os.PathLike[str], *args: str, timeout: float
) -> subprocess.CompletedProcess[str]:
    """``script`` run to its end with ``args``, its output captured as text."""
    return subprocess.run(
        [sys.executable, os.fspath(script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=environment(),
        cwd=ROOT,
    )
