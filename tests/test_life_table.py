"""A transit's life: every pair of state and event through ``tr_life_step()``.

``tests/fuzz/life_table.c`` holds the legal transitions written out on their
own and walks every (state, event, who ended it) through the core's table
in ``traffic/_core/life.c`` (see both files).  Built twice: a release build,
where a step outside the table is refused with ``TR_ETERMINATED`` and changes
nothing, and an AddressSanitizer + UndefinedBehaviorSanitizer build, where
the same step aborts the process (the core's sanitizer builds do so for a
step the core itself takes wrongly).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from test_fuzz_fds_parse import ENV, FLAGS, standalone_compiler

ROOT = Path(__file__).resolve().parent.parent
SOURCES = [ROOT / "tests" / "fuzz" / "life_table.c", ROOT / "traffic" / "_core" / "life.c"]


def build(out: Path, sanitize: bool) -> None:
    compiler = standalone_compiler()
    if compiler is None:
        pytest.skip("no C compiler (gcc, clang, cc) to build the life table's test")
    command = [compiler, *FLAGS]
    if sanitize:
        command.append("-fsanitize=address,undefined")
    command += [*map(str, SOURCES), "-o", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0 and sanitize and ("asan" in done.stderr or "ubsan" in done.stderr):
        pytest.skip(f"{compiler} cannot build with the sanitizers: {done.stderr[:500]}")
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    ("sanitize", "expect"), [(False, "lenient"), (True, "strict")], ids=["release", "sanitizers"]
)
def test_every_state_and_event_against_the_table(
    tmp_path: Path, sanitize: bool, expect: str
) -> None:
    binary = tmp_path / "life_table"
    build(binary, sanitize)
    done = subprocess.run(
        [str(binary), expect], capture_output=True, text=True, env=ENV, timeout=120, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # 3 states x 3 who-ended-it x 5 events; 9 legal pairs, 6 illegal, each
    # from every who-ended-it.
    assert f"45 pairs checked, 18 refused ({expect}): ok" in done.stdout, done.stdout


def test_the_release_build_has_no_abort_path(tmp_path: Path) -> None:
    """Without the sanitizers (and without -DTR_LIFE_STRICT) nothing aborts."""
    if shutil.which("nm") is None:
        pytest.skip("no nm to read the object's symbols")
    compiler = standalone_compiler()
    if compiler is None:
        pytest.skip("no C compiler")
    obj = tmp_path / "life.o"
    subprocess.run(
        [compiler, *FLAGS, "-c", str(SOURCES[1]), "-o", str(obj)], check=True, capture_output=True
    )
    symbols = subprocess.run(["nm", "-u", str(obj)], capture_output=True, text=True, check=True)
    assert "abort" not in symbols.stdout
