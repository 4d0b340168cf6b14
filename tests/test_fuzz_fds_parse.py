"""Fuzzing the core's control-message parser, ``tr_fds_parse()``.

``tests/fuzz/fds_parse_fuzz.c`` feeds arbitrary control buffers to the
parser and checks its invariants (see the file).  Two builds, each with
AddressSanitizer and UndefinedBehaviorSanitizer, ``-fno-sanitize-recover``:

- *standalone* (any C compiler with the sanitizers: gcc here): its own
  deterministic mutation loop (seeded xorshift) over valid SCM_RIGHTS /
  SCM_CREDENTIALS buffers built with the CMSG_* macros;
- *libFuzzer* (clang with ``-fsanitize=fuzzer``), coverage-guided.

The tests run a bounded number of inputs (about a second each); CI's
``fuzz`` step runs this file as a script for longer:
``python tests/test_fuzz_fds_parse.py SECONDS``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HARNESS = ROOT / "tests" / "fuzz" / "fds_parse_fuzz.c"
SOURCES = [HARNESS, ROOT / "traffic" / "_core" / "descriptors.c"]
FLAGS = [
    "-std=gnu11",
    "-Wall",
    "-Wextra",
    "-Werror",
    "-g",
    "-O1",
    "-fno-omit-frame-pointer",
    "-fno-sanitize-recover=all",
    "-I",
    str(ROOT / "traffic" / "_core"),
]
#: The sanitizers abort at the first report; leaks are not the question here.
ENV = {
    **os.environ,
    "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=1",
    "UBSAN_OPTIONS": "print_stacktrace=1",
}
#: Bounds a hang, never decides a pass.
TIMEOUT = 600


def build(compiler: str, out: Path, libfuzzer: bool) -> str | None:
    """Compile the harness; None on success, else the compiler's complaint."""
    sanitizers = "fuzzer,address,undefined" if libfuzzer else "address,undefined"
    command = [compiler, *FLAGS, f"-fsanitize={sanitizers}"]
    if libfuzzer:
        command.append("-DTR_FUZZ_LIBFUZZER")
    command += [*map(str, SOURCES), "-o", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    return None if done.returncode == 0 else (done.stderr or done.stdout)


def standalone_compiler() -> str | None:
    for name in (os.environ.get("CC"), "gcc", "clang", "cc"):
        if name and shutil.which(name):
            return name
    return None


def run_standalone(binary: Path, iterations: int, seed: int, seconds: float = 0) -> str:
    done = subprocess.run(
        [str(binary), str(iterations), str(seed), str(seconds)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert ": ok" in done.stdout, done.stdout
    return done.stdout.strip()


def run_libfuzzer(binary: Path, workdir: Path, runs: int, seconds: float = 0) -> str:
    corpus = workdir / "corpus"
    corpus.mkdir(exist_ok=True)
    limit = [f"-max_total_time={int(seconds)}"] if seconds else [f"-runs={runs}"]
    done = subprocess.run(
        [
            str(binary),
            *limit,
            "-seed=1",
            "-max_len=4096",
            f"-artifact_prefix={workdir}/",
            str(corpus),
        ],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    lines = [line for line in done.stderr.splitlines() if line.startswith("Done ")]
    assert lines, done.stderr[-4000:]
    return lines[-1]


def test_fds_parse_standalone(tmp_path: Path) -> None:
    compiler = standalone_compiler()
    if compiler is None:
        pytest.skip("no C compiler (gcc, clang, cc) to build the fuzz harness")
    binary = tmp_path / "fds_parse_fuzz"
    failure = build(compiler, binary, libfuzzer=False)
    if failure is not None and ("asan" in failure or "ubsan" in failure):
        pytest.skip(f"{compiler} cannot build with the sanitizers: {failure[:500]}")
    assert failure is None, failure
    for seed in (1, 2, 3):
        run_standalone(binary, 20_000, seed)


def test_fds_parse_libfuzzer(tmp_path: Path) -> None:
    if shutil.which("clang") is None:
        pytest.skip("no clang: libFuzzer needs it (the standalone build covers gcc)")
    binary = tmp_path / "fds_parse_libfuzzer"
    failure = build("clang", binary, libfuzzer=True)
    if failure is not None:
        pytest.skip(f"clang cannot link libFuzzer (-fsanitize=fuzzer): {failure[:500]}")
    run_libfuzzer(binary, tmp_path, runs=50_000)


def main(seconds: float) -> int:
    """CI's long run: each build for ``seconds``."""
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        compiler = standalone_compiler()
        if compiler is None:
            print("no C compiler: the fuzz harness cannot be built", file=sys.stderr)
            return 1
        failure = build(compiler, work / "standalone", libfuzzer=False)
        if failure is not None:
            print(failure, file=sys.stderr)
            return 1
        print(f"standalone ({compiler}):", run_standalone(work / "standalone", 2**62, 1, seconds))
        if shutil.which("clang") is None:
            print("libFuzzer: skipped (no clang)")
            return 0
        failure = build("clang", work / "libfuzzer", libfuzzer=True)
        if failure is not None:
            print(f"libFuzzer: skipped (clang cannot link it: {failure[:300]})")
            return 0
        print("libFuzzer (clang):", run_libfuzzer(work / "libfuzzer", work, 0, seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main(float(sys.argv[1]) if len(sys.argv) > 1 else 30))
