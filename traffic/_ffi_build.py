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
- Exactly one kernel event backend is compiled: by default ``epoll.c`` on
  Linux, which has no kqueue(2), and ``kqueue.c`` where ``<sys/event.h>``
  exists (the BSDs and macOS). Both implement the narrow interface in
  ``internal.h``. On Linux, ``kqueue.c`` can be built against libkqueue (a
  user-space kqueue over epoll), which is how its tests run there.
- libkqueue is linked statically, by the archive's path: its prefix also
  holds a ``libkqueue.so``, and a module linked against that (``-lkqueue``)
  would not import without ``LD_LIBRARY_PATH``.
- Paths are resolved against this file's directory, then made relative to
  the current directory when they lie under it: setuptools runs this script
  from the project root (``setup.py``'s ``cffi_modules``) and refuses
  absolute source paths there.
- A build follows its switches, not only its files' dates. setuptools
  skips an extension whose module is newer than its sources and depends,
  and the environment below changes the source list and the flags, not a
  file: a tree built once (its ``build/`` left by ``pip install .`` or
  ``-e .``) would keep its old core. So the switches are digested into a
  stamp (``STAMP``) written into cffi's generated source as a comment: cffi
  rewrites that file only when its text changes, and a changed stamp makes
  it newer than the module, so setuptools rebuilds. The same stamp is
  compiled in as ``TR_BUILD_STAMP`` and read back with
  ``lib.tr_build_stamp()``, so a test (and a person) can tell which
  switches the imported core was built with.

Environment (read at build time, for CI):

``TRAFFIC_CFLAGS``
    Extra compiler flags, split on whitespace: ``-Werror``, or
    ``-fsanitize=address,undefined -fno-omit-frame-pointer -g -O1``.
``TRAFFIC_LDFLAGS``
    Extra linker flags, e.g. ``-fsanitize=address,undefined``.
``TRAFFIC_BACKEND``
    ``epoll`` or ``kqueue``: the kernel event backend to compile instead of
    the platform's. ``traffic.backend`` says at run time which one was.
``TRAFFIC_LIBKQUEUE``
    A libkqueue installation prefix (``PREFIX/include/kqueue/sys/event.h``,
    ``PREFIX/lib/libkqueue.a``) to build the kqueue backend against; it
    implies ``TRAFFIC_BACKEND=kqueue``.

Run directly (``python traffic/_ffi_build.py``, from any directory) it
compiles the module in place, into ``traffic/`` beside this script, for a
sanitizer or debugging build.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Callable
from typing import NamedTuple

import cffi

MODULE = "traffic._traffic"

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
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


class _Backend(NamedTuple):
    """The kernel event backend to compile, and what building it takes."""

    name: str
    source: str
    include_dirs: list[str]
    extra_objects: list[str]
    libraries: list[str]


BACKENDS = ("epoll", "kqueue")


def _platform_backend() -> str:
    if sys.platform.startswith("linux"):
        return "epoll"
    if sys.platform.startswith(KQUEUE_PLATFORMS) or _has_header("sys/event.h"):
        return "kqueue"
    raise RuntimeError(
        f"traffic: no kernel event backend for platform {sys.platform!r}: "
        "the C core needs epoll(7) (Linux) or kqueue(2) (<sys/event.h>, "
        "BSD and macOS), and this platform has neither"
    )


def _libkqueue(prefix: str) -> tuple[str, str]:
    """The include directory and static archive of libkqueue under ``prefix``."""
    include = os.path.join(prefix, "include", "kqueue")
    archive = os.path.join(prefix, "lib", "libkqueue.a")
    for path in (os.path.join(include, "sys", "event.h"), archive):
        if not os.path.exists(path):
            raise RuntimeError(
                f"traffic: TRAFFIC_LIBKQUEUE={prefix!r} has no {path}: it names the "
                "prefix libkqueue was installed into (cmake --install)"
            )
    return os.path.abspath(include), os.path.abspath(archive)


def backend() -> _Backend:
    """The backend chosen by ``TRAFFIC_BACKEND`` and ``TRAFFIC_LIBKQUEUE``."""
    name = os.environ.get("TRAFFIC_BACKEND", "").strip()
    prefix = os.environ.get("TRAFFIC_LIBKQUEUE", "").strip()
    if name and name not in BACKENDS:
        raise RuntimeError(
            f"traffic: TRAFFIC_BACKEND={name!r} is not a backend: use one of {BACKENDS}"
        )
    if prefix and name == "epoll":
        raise RuntimeError("traffic: TRAFFIC_LIBKQUEUE builds the kqueue backend, not epoll")
    if not name:
        name = "kqueue" if prefix else _platform_backend()
    source = os.path.join(CORE, f"{name}.c")
    if name == "epoll":
        return _Backend(name, source, [], [], [])
    if prefix:
        include, archive = _libkqueue(prefix)
        # librt: libkqueue's Libs.private (pkg-config), for glibc before 2.34.
        return _Backend(name, source, [include], [archive], ["rt"])
    if not _has_header("sys/event.h"):
        raise RuntimeError(
            "traffic: TRAFFIC_BACKEND=kqueue, but the C compiler finds no <sys/event.h>; "
            "on Linux, set TRAFFIC_LIBKQUEUE to a libkqueue installation prefix"
        )
    return _Backend(name, source, [], [], [])


def _env_flags(name: str) -> list[str]:
    return os.environ.get(name, "").split()


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


BACKEND = backend()

#: The core by job (internal.h says what each holds), then one backend.
CORE_SOURCES = (
    "traffic.c",
    "transit.c",
    "life.c",
    "transfer.c",
    "readiness.c",
    "cycle.c",
    "request.c",
    "notify.c",
    "descriptors.c",
    "datagrams.c",
    "files.c",
)


def _sources(chosen: _Backend) -> list[str]:
    return [*(os.path.join(CORE, name) for name in CORE_SOURCES), chosen.source]


SOURCES = _sources(BACKEND)

for _source in (API_HEADER, *SOURCES):
    if not os.path.exists(_source):
        raise RuntimeError(f"traffic: C source {_source} is missing")


COMPILE_ARGS = CFLAGS + _env_flags("TRAFFIC_CFLAGS")
LINK_ARGS = LDFLAGS + _env_flags("TRAFFIC_LDFLAGS")


def _from_root(path: str) -> str:
    """``path`` relative to the project root when it lies under it.

    The stamp names the tree's own files this way, so that a copy of the
    tree built with the same switches gets the same stamp.
    """
    relative = os.path.relpath(path, ROOT)
    if relative == os.pardir or relative.startswith(os.pardir + os.sep):
        return path
    return relative


def build_stamp(chosen: _Backend, compile_args: list[str], link_args: list[str]) -> str:
    """A short digest of everything the switches decide about a build.

    The backend, the sources, the include directories, the objects and
    libraries linked, and the compiler's and linker's flags: two builds
    with the same stamp compile the same files the same way.
    """
    switches = {
        "backend": chosen.name,
        "sources": [_from_root(path) for path in _sources(chosen)],
        "include_dirs": [_from_root(path) for path in (CORE, *chosen.include_dirs)],
        "extra_objects": [_from_root(path) for path in chosen.extra_objects],
        "libraries": chosen.libraries,
        "cflags": compile_args,
        "ldflags": link_args,
    }
    encoded = json.dumps(switches, sort_keys=True).encode("utf-8")
    return hashlib.sha256(encoded).hexdigest()[:16]


#: The stamp of this build's switches (``lib.tr_build_stamp()`` in the module).
STAMP = build_stamp(BACKEND, COMPILE_ARGS, LINK_ARGS)


def _make_ffibuilder(place: Callable[[str], str]) -> cffi.FFI:
    """An FFI for the core, with every path passed through ``place``."""
    builder = cffi.FFI()
    builder.cdef(_read(API_HEADER))
    builder.set_source(
        MODULE,
        # The stamp in the generated source's text: its change is what makes
        # setuptools rebuild a module whose files are all older than it.
        f'/* traffic build stamp {STAMP} */\n#include "traffic.h"',
        sources=[place(source) for source in SOURCES],
        include_dirs=[place(CORE), *BACKEND.include_dirs],
        # The libkqueue archive too: one rebuilt under the same prefix
        # leaves the switches as they were, so only its date can say so.
        depends=[
            *(place(os.path.join(CORE, name)) for name in ("traffic.h", "internal.h")),
            *BACKEND.extra_objects,
        ],
        extra_objects=BACKEND.extra_objects,
        libraries=BACKEND.libraries,
        define_macros=[("TR_BUILD_STAMP", f'"{STAMP}"')],
        extra_compile_args=COMPILE_ARGS,
        extra_link_args=LINK_ARGS,
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
    print(f"built {build_in_place()} (backend: {BACKEND.name}, stamp: {STAMP})")
