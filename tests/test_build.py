"""The build switch: which kernel event backend ``traffic/_ffi_build.py``
compiles, and how it links libkqueue (``TRAFFIC_BACKEND``,
``TRAFFIC_LIBKQUEUE``; see docs/platforms.rst), and the stamp of the
switches compiled into the core (tests/test_build_switches.py rebuilds
copies of the tree with it)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

import traffic
from traffic import _ffi_build


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.delenv("TRAFFIC_BACKEND", raising=False)
    monkeypatch.delenv("TRAFFIC_LIBKQUEUE", raising=False)
    return monkeypatch


def libkqueue_prefix(root: Path) -> Path:
    """A prefix laid out as ``cmake --install`` leaves libkqueue's."""
    (root / "include" / "kqueue" / "sys").mkdir(parents=True)
    (root / "include" / "kqueue" / "sys" / "event.h").write_text("/* kqueue(2) */\n")
    (root / "lib").mkdir()
    for name in ("libkqueue.a", "libkqueue.so", "libkqueue.so.0"):
        (root / "lib" / name).write_bytes(b"")
    return root


def test_the_compiled_backend_is_named() -> None:
    assert traffic.backend in _ffi_build.BACKENDS


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux's default")
def test_the_default_on_linux_is_epoll(clean_env: pytest.MonkeyPatch) -> None:
    chosen = _ffi_build.backend()
    assert chosen.name == "epoll"
    assert chosen.source.endswith("epoll.c")
    assert chosen.extra_objects == []


def test_a_libkqueue_prefix_builds_kqueue_and_links_its_archive_by_path(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    prefix = libkqueue_prefix(tmp_path)
    clean_env.setenv("TRAFFIC_LIBKQUEUE", str(prefix))
    chosen = _ffi_build.backend()
    assert chosen.name == "kqueue"
    assert chosen.source.endswith("kqueue.c")
    assert chosen.include_dirs == [str(prefix / "include" / "kqueue")]
    # The archive itself: a -lkqueue would find libkqueue.so beside it, and
    # the module would not import without LD_LIBRARY_PATH.
    assert chosen.extra_objects == [str(prefix / "lib" / "libkqueue.a")]
    assert "kqueue" not in chosen.libraries


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TRAFFIC_BACKEND": "select"}, "is not a backend"),
        ({"TRAFFIC_BACKEND": "epoll", "TRAFFIC_LIBKQUEUE": "{prefix}"}, "not epoll"),
        ({"TRAFFIC_LIBKQUEUE": "{prefix}/elsewhere"}, "has no"),
    ],
)
def test_a_choice_that_cannot_be_built_is_refused_before_compiling(
    clean_env: pytest.MonkeyPatch, tmp_path: Path, env: dict[str, str], message: str
) -> None:
    prefix = libkqueue_prefix(tmp_path)
    for name, value in env.items():
        clean_env.setenv(name, value.format(prefix=prefix))
    with pytest.raises(RuntimeError, match=message):
        _ffi_build.backend()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_the_core_loads_no_shared_libkqueue() -> None:
    with open("/proc/self/maps") as maps:
        assert "libkqueue.so" not in maps.read()


def test_the_core_carries_a_build_stamp() -> None:
    from traffic._traffic import ffi, lib

    stamp = ffi.string(lib.tr_build_stamp()).decode("ascii")
    assert re.fullmatch(r"[0-9a-f]{16}", stamp), stamp


def test_the_stamp_follows_every_switch(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cflags, ldflags = _ffi_build.CFLAGS, _ffi_build.LDFLAGS
    default = _ffi_build.backend()
    stamps = {
        _ffi_build.build_stamp(default, cflags, ldflags),
        _ffi_build.build_stamp(default, [*cflags, "-DTR_TEST_FLAG=1"], ldflags),
        _ffi_build.build_stamp(default, cflags, [*ldflags, "-Wl,-O1"]),
    }
    for where in ("one", "other"):
        clean_env.setenv("TRAFFIC_LIBKQUEUE", str(libkqueue_prefix(tmp_path / where)))
        stamps.add(_ffi_build.build_stamp(_ffi_build.backend(), cflags, ldflags))
    assert len(stamps) == 5
    clean_env.delenv("TRAFFIC_LIBKQUEUE")
    assert _ffi_build.build_stamp(_ffi_build.backend(), cflags, ldflags) == (
        _ffi_build.build_stamp(default, cflags, ldflags)
    )
