"""Builds the benchmark's C programs (the load generators) with the system C
compiler into a cache directory, once per source version.

A binary's file name carries a hash of its source and the compiler command,
so an edited source or another compiler gets a fresh build and a stale one is
never run.  The cache is ``$TRAFFIC_BENCH_CACHE``, else
``$XDG_CACHE_HOME/traffic-bench``, else ``~/.cache/traffic-bench``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent

#: The C programs, by name: each is ``NAME.c`` beside this file.
PROGRAMS = (
    "echo_client",
    "accept_client",
    "idle_client",
    "epoll_server",
    "file_client",
    "http_responder",
    "http_load",
)

#: Flags for every program: optimised, warnings on (they are all small).
CFLAGS = ("-O2", "-Wall", "-Wextra", "-std=gnu11")


class BuildError(RuntimeError):
    """No C compiler, or a program did not compile."""


def compiler() -> str | None:
    """The C compiler to use ($CC, else gcc, else cc), or None."""
    for candidate in (os.environ.get("CC"), "gcc", "cc"):
        if candidate and shutil.which(candidate):
            return candidate
    return None


def cache_dir() -> Path:
    explicit = os.environ.get("TRAFFIC_BENCH_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "traffic-bench"


def build(name: str) -> Path:
    """Path of program ``name``'s binary, compiling it if the cache lacks it."""
    cc = compiler()
    if cc is None:
        raise BuildError("no C compiler found (install gcc, or set $CC)")
    source = HERE / f"{name}.c"
    command = [cc, *CFLAGS]
    digest = hashlib.sha256(source.read_bytes())
    for header in sorted(HERE.glob("*.h")):  # included by the programs: part of the key
        digest.update(header.read_bytes())
    digest.update("\0".join(command).encode())
    directory = cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"{name}-{digest.hexdigest()[:16]}"
    if target.exists():
        return target
    # Build beside the target and rename: a concurrent run never sees half a file.
    fd, temporary = tempfile.mkstemp(prefix=f".{name}-", dir=directory)
    os.close(fd)
    try:
        done = subprocess.run(
            [*command, "-o", temporary, str(source)], capture_output=True, text=True
        )
        if done.returncode != 0:
            raise BuildError(f"{cc} failed on {source.name}:\n{done.stderr}")
        os.replace(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return target


def build_all() -> dict[str, Path]:
    return {name: build(name) for name in PROGRAMS}
