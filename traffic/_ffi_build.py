"""Build the C core into ``traffic._traffic`` with cffi in API mode.

Why it looks like this:

- The C lives in real files under ``traffic/_core/`` so it can be read,
  compiled with warnings as errors and run under sanitizers on its own
  (``.ci/run`` does all three). No C lives in a Python string here beyond
  one ``#include``.
- The cdef is ``traffic/_core/traffic.h`` read from disk: that header is
  written in cdef's subset (no preprocessor lines, opaque structures, enums
  for constants), and the C sources include the very same file, so the
  declarations Python sees and the ones C compiles cannot drift apart.
- Exactly one kernel event backend is compiled: ``epoll.c`` on Linux, which
  has no kqueue(2); ``kqueue.c`` where ``<sys/event.h>`` exists (the BSDs and
  macOS). Both implement the narrow interface in ``internal.h``.
- Paths are resolved against this file's directory, then made relative to
  the current directory when they lie under it: setuptools runs this script
  from the project root (``setup.py``'s ``cffi_modules``) and refuses
  absolute source paths there.

Environment (read at build time, for CI):

``TRAFFIC_CFLAGS``
    Extra compiler flags, split on whitespace: ``-Werror``, or
    ``-fsanitize=address,undefined -fno-omit-frame-pointer -g -O1``.
``TRAFFIC_LDFLAGS``
    Extra linker flags, e.g. ``-fsanitize=address,undefined``.

Run directly (``python traffic/_ffi_build.py``, from any directory) it
compiles the module in place, into ``traffic/`` beside this script, for a
sanitizer or debugging build.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Callable

import cffi

MODULE = "traffic._traffic"

HERE = os.path.dirname(os.path.abspath(__file__))
CORE = os.path.join(HERE, "_core")
API_HEADER = os.path.join(CORE, "traffic.h")

CFLAGS = ["-std=gnu11", "-Wall", "-Wextra", "-pthread"]
LDFLAGS = ["-pthread"]

# Platforms known to provide kqueue(2) and <sys/event.h>; others are probed.
KQUEUE_PLATFORMS = ("darwin", "freebsd", "openbsd", "netbsd", "dragonfly")


def _relative(path: str) -> str:
    """``path`` relative to the current directory when it lies under it.

    setuptools warns about (and mishandles object paths for) absolute source
    paths, so sources under the project root are given relative to it.
    """
    relative = os.path.relpath(path)
    if relative == os.pardir or relative.startswith(os.pardir + os.sep):
        return path
    return relative


def _has_header(header: str) -> bool:
    """Whether the C compiler finds ``header`` (preprocessing one include)."""
    cc = (sysconfig.get_config_var("CC") or "cc").split()
    with tempfile.TemporaryDirectory() as tmp:
        probe = os.path.join(tmp, "probe.c")
        with open(probe, "w") as f:
            f.write(f"#include <{header}>\n")
        try:
            result = subprocess.run(
                [*cc, "-E", probe],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                check=False,
            )
        except OSError:
            return False
    return result.returncode == 0


def backend_source() -> str:
    """The kernel event backend for this platform: epoll.c or kqueue.c."""
    if sys.platform.startswith("linux"):
        return os.path.join(CORE, "epoll.c")
    if sys.platform.startswith(KQUEUE_PLATFORMS) or _has_header("sys/event.h"):
        return os.path.join(CORE, "kqueue.c")
    raise RuntimeError(
        f"traffic: no kernel event backend for platform {sys.platform!r}: "
        "the C core needs epoll(7) (Linux) or kqueue(2) (<sys/event.h>, "
        "BSD and macOS), and this platform has neither"
    )


def _env_flags(name: str) -> list[str]:
    return os.environ.get(name, "").split()


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


SOURCES = [
    os.path.join(CORE, "core.c"),
    os.path.join(CORE, "descriptors.c"),
    os.path.join(CORE, "datagrams.c"),
    backend_source(),
]

for _source in (API_HEADER, *SOURCES):
    if not os.path.exists(_source):
        raise RuntimeError(f"traffic: C source {_source} is missing")


def _make_ffibuilder(place: Callable[[str], str]) -> cffi.FFI:
    """An FFI for the core, with every path passed through ``place``."""
    builder = cffi.FFI()
    builder.cdef(_read(API_HEADER))
    builder.set_source(
        MODULE,
        '#include "traffic.h"',
        sources=[place(source) for source in SOURCES],
        include_dirs=[place(CORE)],
        depends=[place(os.path.join(CORE, name)) for name in ("traffic.h", "internal.h")],
        extra_compile_args=CFLAGS + _env_flags("TRAFFIC_CFLAGS"),
        extra_link_args=LDFLAGS + _env_flags("TRAFFIC_LDFLAGS"),
    )
    return builder


# What setup.py's cffi_modules builds (setuptools runs this from the project root).
ffibuilder = _make_ffibuilder(_relative)


def build_in_place() -> str:
    """Compile the module into ``traffic/`` beside this file; return its path.

    For sanitizer and debugging builds (``python traffic/_ffi_build.py``).
    cffi compiles from its own work directory, ``build/ffi-inplace`` in the
    project root, so that setuptools finds no ``pyproject.toml`` there to
    validate (an old setuptools in the running environment cannot read this
    project's); hence absolute paths. Other in-place builds of the module
    are removed so that this one is what ``import traffic._traffic`` loads.
    """
    builder = _make_ffibuilder(os.path.abspath)
    workdir = os.path.join(os.path.dirname(HERE), "build", "ffi-inplace")
    os.makedirs(workdir, exist_ok=True)
    built = builder.compile(tmpdir=workdir, verbose=True)
    target = os.path.join(HERE, os.path.basename(built))
    for name in os.listdir(HERE):
        if name.startswith("_traffic.") and name.endswith((".so", ".pyd")):
            os.remove(os.path.join(HERE, name))
    shutil.copyfile(built, target)
    return target


if __name__ == "__main__":
    print(f"built {build_in_place()}")
