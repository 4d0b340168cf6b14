"""A build follows its switches: changing one between two builds of the same
tree rebuilds the core.

setuptools skips an extension whose module is newer than its sources, and
``TRAFFIC_BACKEND``, ``TRAFFIC_LIBKQUEUE``, ``TRAFFIC_CFLAGS`` and
``TRAFFIC_LDFLAGS`` change the source list and the flags, not a file: a
tree built once kept its old core (``traffic/_ffi_build.py`` says how the
stamp of the switches prevents that). Each test copies the tree (``setup.py``
and ``traffic/``, without compiled modules), builds it twice in place with
different switches, ``build/`` left between the builds as ``pip install``
leaves it, and reads back from the built copy, in a subprocess, the stamp
compiled in and ``traffic.backend``.

The builds are setuptools' ``build_ext --inplace`` run by the copy's own
``setup.py``, as pip's build runs it, with this interpreter's setuptools:
the copy has no ``pyproject.toml``, whose metadata an older setuptools than
the one pip's isolated build brings cannot read, and which no build switch
depends on. The cffi in-place build (``python traffic/_ffi_build.py``) is
checked in the same tree.

- The flags half runs wherever setuptools is installed (the plain test run).
- The backend half needs a libkqueue prefix, ``TRAFFIC_TEST_LIBKQUEUE=PREFIX``
  (``.ci/run``'s kqueue step sets it, and runs only this half), and skips
  without one.
- ``TRAFFIC_BUILD_SWITCHES_REQUIRED=1`` turns every skip here into a failure.

Every build is ``-O0``: the builds are compared, never timed, and it
compiles the core in a third of the default's time.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple, NoReturn

import pytest

pytestmark = [pytest.mark.build_switches, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[1]
SWITCHES = ("TRAFFIC_BACKEND", "TRAFFIC_LIBKQUEUE", "TRAFFIC_CFLAGS", "TRAFFIC_LDFLAGS")
REQUIRED = os.environ.get("TRAFFIC_BUILD_SWITCHES_REQUIRED") == "1"
FAST = "-O0"
TEST_FLAG = "-DTR_TEST_FLAG=1"

# A compiler's command line for one C source, as setuptools prints it.
COMPILE_LINE = re.compile(r"\s-c\s+\S+\.c\s+-o\s")

PROBE = """
import json
import traffic
from traffic import _ffi_build
from traffic._traffic import ffi, lib
print(json.dumps({
    "module": traffic._traffic.__file__,
    "backend": traffic.backend,
    "stamp": ffi.string(lib.tr_build_stamp()).decode("ascii"),
    "expected": _ffi_build.STAMP,
}))
"""


class Built(NamedTuple):
    """What a built copy says of itself, and what its switches should give."""

    module: str
    backend: str
    stamp: str
    expected: str


def skip_or_fail(reason: str) -> NoReturn:
    if REQUIRED:
        pytest.fail(f"{reason} (TRAFFIC_BUILD_SWITCHES_REQUIRED=1)")
    pytest.skip(reason)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of what the build reads and the import needs, never built."""
    if importlib.util.find_spec("setuptools") is None:
        skip_or_fail("setuptools is not installed: the builds here are its build_ext")
    dest = tmp_path / "tree"
    dest.mkdir()
    shutil.copy2(ROOT / "setup.py", dest / "setup.py")
    shutil.copytree(
        ROOT / "traffic",
        dest / "traffic",
        ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.pyd", "*.o", "_traffic.c"),
    )
    return dest


def environment(tree: Path, switches: dict[str, str]) -> dict[str, str]:
    """This process's environment with exactly ``switches`` set."""
    env = {name: value for name, value in os.environ.items() if name not in SWITCHES}
    env.update(switches)
    env["PYTHONPATH"] = str(tree)
    return env


def run(tree: Path, args: list[str], switches: dict[str, str]) -> str:
    """``python ARGS`` in ``tree`` with ``switches``; its output."""
    result = subprocess.run(
        [sys.executable, *args],
        cwd=tree,
        env=environment(tree, switches),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        check=False,
    )
    assert result.returncode == 0, f"python {' '.join(args)} with {switches}:\n{result.stdout}"
    return result.stdout


def setuptools_build(tree: Path, **switches: str) -> str:
    """pip's build of the core, into ``traffic/`` of ``tree``; its log.

    A rebuild starts in a later second than the module it may replace:
    setuptools before 69 (this environment's may be one) compares dates in
    whole seconds, so a source rewritten in the second the module was
    written is not newer than it. pip's build brings setuptools 77 or
    later, which compares them exactly; no user rebuilds that fast.
    """
    built = [path.stat().st_mtime for path in (tree / "traffic").glob("_traffic.*.so")]
    if built:
        time.sleep(max(0.0, math.floor(max(built)) + 1 - time.time()))
    return run(tree, ["setup.py", "build_ext", "--inplace"], switches)


def cffi_build(tree: Path, **switches: str) -> str:
    """The in-place build, ``python traffic/_ffi_build.py``; its log."""
    return run(tree, ["traffic/_ffi_build.py"], switches)


def compiles(log: str) -> list[str]:
    return [line for line in log.splitlines() if COMPILE_LINE.search(line)]


def probe(tree: Path, **switches: str) -> Built:
    """The built copy's own word, read in a subprocess importing it."""
    lines = run(tree, ["-c", PROBE], switches).splitlines()
    built = Built(**json.loads(lines[-1]))
    assert Path(built.module).resolve().is_relative_to(tree.resolve()), built.module
    return built


def test_changed_flags_rebuild_the_core(tree: Path) -> None:
    setuptools_build(tree, TRAFFIC_CFLAGS=FAST)
    plain = probe(tree, TRAFFIC_CFLAGS=FAST)
    log = setuptools_build(tree, TRAFFIC_CFLAGS=f"{FAST} {TEST_FLAG}")
    flagged = probe(tree, TRAFFIC_CFLAGS=f"{FAST} {TEST_FLAG}")
    assert plain.stamp == plain.expected
    assert flagged.stamp == flagged.expected
    assert flagged.stamp != plain.stamp
    assert compiles(log), f"the changed flags compiled nothing:\n{log}"
    assert all(TEST_FLAG in line for line in compiles(log)), log

    # The same switches again: the stamp does not defeat setuptools' reuse.
    log = setuptools_build(tree, TRAFFIC_CFLAGS=f"{FAST} {TEST_FLAG}")
    assert compiles(log) == [], log

    # The in-place build in the same tree: the same switches, the same stamp.
    cffi_build(tree, TRAFFIC_CFLAGS=FAST)
    assert probe(tree, TRAFFIC_CFLAGS=FAST).stamp == plain.stamp
    log = cffi_build(tree, TRAFFIC_CFLAGS=f"{FAST} {TEST_FLAG}")
    assert all(TEST_FLAG in line for line in compiles(log)), log
    assert probe(tree, TRAFFIC_CFLAGS=f"{FAST} {TEST_FLAG}").stamp == flagged.stamp


def test_changed_backend_rebuilds_the_core(tree: Path) -> None:
    if not sys.platform.startswith("linux"):
        skip_or_fail("the epoll backend is Linux's")
    prefix = os.environ.get("TRAFFIC_TEST_LIBKQUEUE", "").strip()
    if not prefix:
        skip_or_fail(
            "no libkqueue prefix: TRAFFIC_TEST_LIBKQUEUE=PREFIX names one "
            "(.ci/run's kqueue step sets it)"
        )
    setuptools_build(tree, TRAFFIC_BACKEND="epoll", TRAFFIC_CFLAGS=FAST)
    epoll = probe(tree, TRAFFIC_BACKEND="epoll", TRAFFIC_CFLAGS=FAST)
    setuptools_build(tree, TRAFFIC_LIBKQUEUE=prefix, TRAFFIC_CFLAGS=FAST)
    kqueue = probe(tree, TRAFFIC_LIBKQUEUE=prefix, TRAFFIC_CFLAGS=FAST)
    assert (epoll.backend, kqueue.backend) == ("epoll", "kqueue")
    assert epoll.stamp == epoll.expected
    assert kqueue.stamp == kqueue.expected
    assert kqueue.stamp != epoll.stamp
