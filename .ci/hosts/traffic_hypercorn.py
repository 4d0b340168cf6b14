"""pytest plugin (``-p traffic_hypercorn``): hypercorn's own trio tests served by traffic.

Loaded by ``run.py`` on the traffic run of hypercorn's ``tests/e2e`` and
``tests/trio`` (after ``-p host_suite``). At configure time, and undone at
unconfigure:

* ``hypercorn.trio.serve`` is bound to ``traffic.integrations.hypercorn.serve``
  (its drop-in: every binding served through traffic's listeners). The e2e
  tests call ``hypercorn.trio.serve(app, config, shutdown_trigger=...)`` by
  that attribute, and reach the server with httpx's default transport (the
  host's own backend: only the server is traffic's here; httpx on traffic is
  the httpx suite's business).
* ``trio.testing.memory_stream_pair`` is bound to :func:`traffic_stream_pair`:
  a connected pair of ``traffic.TrafficStream`` made from
  ``socket.socketpair()`` (AF_UNIX), instead of two memory streams. The
  connection tests call ``trio.testing.memory_stream_pair()`` and hand one
  end to hypercorn's ``TCPServer``, which now reads and writes a traffic
  stream, and so does the test's client end. AF_UNIX rather than a TCP pair:
  the tests put a ``MockSocket`` (family, addresses) on the server end, so
  the server never looks at the real socket, and a write to a peer that
  closed fails at once with EPIPE on AF_UNIX, as a memory stream's does
  (``test_http1_keep_alive_pre_request`` checks exactly that; on TCP the
  first write after the peer's close still succeeds).

  The tests set attributes on the server end (``.socket = MockSocket()``;
  for h2, ``.transport_stream``, ``.do_handshake`` and
  ``.selected_alpn_protocol``, to look like an ``SSLStream``). A
  ``TrafficStream`` has ``__slots__`` and a read-only ``socket`` property,
  so the pair is made of :class:`HostTestStream`, the thinnest subclass
  that lets them be set: an instance dict, and a ``socket`` property with a
  setter (the assigned object is what ``.socket`` answers; traffic's own
  socket view is still made first, so the stream's close notifies trio as
  usual). Every transfer is ``TrafficStream``'s own; nothing else changes.
* ``TrafficStream._setup`` (every stream: made from a socket, or accepted by
  a listener) and ``TrafficListener.__init__`` are wrapped to count, per
  test, the streams and listeners traffic made: a test "reached traffic"
  when it made at least one.
* A self-check, in a trio run of its own: what the two names are now bound
  to, and that a pair made by the replacement is two counted traffic
  streams that carry bytes both ways and take ``.socket`` assignments.

``--traffic-report PATH`` writes all of it as JSON (``connections``: per
test ``{"streams": n, "listeners": n}``).
"""

from __future__ import annotations

import socket
from collections.abc import Generator
from typing import Any

import pytest
from traffic_record import Record

_record = Record()
_SELF_CHECK = "<self-check>"


def _stream_class() -> type:
    from traffic import TrafficStream

    class HostTestStream(TrafficStream):  # no __slots__: an instance dict
        """A ``TrafficStream`` that takes the attributes hypercorn's tests
        set on a memory stream (``socket``, and ``SSLStream``'s names)."""

        @property
        def socket(self) -> Any:
            view = TrafficStream.socket.fget(self)  # type: ignore[attr-defined]
            return self.__dict__.get("socket", view)

        @socket.setter
        def socket(self, value: Any) -> None:
            self.__dict__["socket"] = value

    HostTestStream.__qualname__ = HostTestStream.__name__
    return HostTestStream


_streams: list[type] = []  # HostTestStream, once configured


def traffic_stream_pair() -> tuple[Any, Any]:
    """``trio.testing.memory_stream_pair``'s stand-in: two connected traffic
    streams over ``socket.socketpair()``. Inside a trio run, as traffic's
    streams must be made (the tests call it from trio tests and fixtures)."""
    (cls,) = _streams
    left, right = socket.socketpair()
    try:
        first = cls(left)
    except BaseException:
        left.close()
        right.close()
        raise
    try:
        second = cls(right)
    except BaseException:
        right.close()
        first._close()
        raise
    return first, second


async def _self_check() -> dict[str, Any]:
    import trio
    import trio.testing

    client, server = trio.testing.memory_stream_pair()
    try:
        server.socket = marker = object()
        server.do_handshake = None  # what the h2 tests set, to look like SSLStream
        await client.send_all(b"ping")
        got_ping = await server.receive_some(16)
        await server.send_all(b"pong")
        got_pong = await client.receive_some(16)
        return {
            "pair_types": [type(client).__qualname__, type(server).__qualname__],
            "pair_carries_bytes": got_ping == b"ping" and got_pong == b"pong",
            "pair_takes_socket": server.socket is marker,
        }
    finally:
        await client.aclose()
        await server.aclose()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("traffic_hypercorn", "hypercorn's tests on traffic (.ci/hosts)")
    group.addoption("--traffic-report", help="write the per-test stream counts here (JSON)")


def pytest_configure(config: pytest.Config) -> None:
    try:
        import hypercorn.trio
        import trio
        import trio.testing

        from traffic import TrafficListener, TrafficStream
        from traffic.integrations.hypercorn import serve
    except ImportError as exc:
        raise pytest.UsageError(
            f"traffic_hypercorn: cannot import what it patches: {exc!r}"
        ) from exc

    original_serve = hypercorn.trio.serve
    _record.patch(hypercorn.trio, "serve", serve)
    _record.patch(trio.testing, "memory_stream_pair", traffic_stream_pair)
    _streams[:] = [_stream_class()]
    for target, name, key in (
        (TrafficStream, "_setup", "streams"),
        (TrafficListener, "__init__", "listeners"),
    ):
        original = getattr(target, name)
        _record.patch(
            target, name, _record.counting(key, original, "__traffic_hypercorn_counting__")
        )
    patched = ["hypercorn.trio.serve", "trio.testing.memory_stream_pair"]

    with _record.running(_SELF_CHECK):
        check = trio.run(_self_check)
    counted = _record.connections.pop(_SELF_CHECK, {})
    (cls,) = _streams
    _record.info.update(
        patched=patched,
        serve=f"{serve.__module__}.{serve.__qualname__}",
        serve_is_traffic=hypercorn.trio.serve is serve and serve is not original_serve,
        stream_pair_is_traffic=trio.testing.memory_stream_pair is traffic_stream_pair
        and issubclass(cls, TrafficStream)
        and check["pair_types"] == [cls.__qualname__] * 2,
        stream_pair_works=check["pair_carries_bytes"] and check["pair_takes_socket"],
        streams_counted=counted.get("streams") == 2,
        **check,
    )


def pytest_unconfigure(config: pytest.Config) -> None:
    _record.restore()
    _streams.clear()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None]:
    with _record.running(item.nodeid):
        return (yield)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    path = session.config.getoption("traffic_report")
    if path:
        _record.write(path)
