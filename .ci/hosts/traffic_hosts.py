"""pytest plugin (``-p traffic_hosts``): a host suite's defaults on traffic, connections counted.

Loaded by ``run.py`` on the traffic run of httpcore's and httpx's own test
suites (after ``-p host_suite``). At configure time, and undone at
unconfigure:

* traffic's backend becomes httpcore's default. httpcore's async classes
  that take a ``network_backend`` (``AsyncConnectionPool``,
  ``AsyncHTTPConnection``, ``AsyncSOCKSProxy``'s connection) build
  ``AutoBackend()`` when given none; the name ``AutoBackend`` in each of
  those modules (found by walking ``httpcore._async``, not listed) is bound to
  ``traffic.integrations.httpcore.TrafficBackend`` instead. Nothing else of
  httpcore changes: ``httpcore._backends.auto.AutoBackend`` itself, the
  backends a test passes explicitly (the mocks) and the sync classes are
  left alone.
* traffic's drop-in becomes httpx's default transport: ``httpx.AsyncClient``
  builds its transport and its proxies' transports with the name
  ``AsyncHTTPTransport`` of ``httpx._client``, which is bound to
  ``traffic.integrations.httpx.AsyncHTTPTransport``. The public
  ``httpx.AsyncHTTPTransport`` stays httpx's (a test that builds one
  explicitly still gets traffic's backend through httpcore's default).
* ``TrafficBackend.connect_tcp`` and ``connect_unix_socket`` are wrapped to
  count, per test, the connections asked of traffic and those it opened. The
  wrapper also refuses (``OSError``, recorded) a TCP host that is not
  loopback, before traffic sees it: traffic's core connects its sockets
  itself, past the socket-level guard of ``host_suite``.
* A self-check records what a default ``httpcore.AsyncConnectionPool()`` and
  ``httpx.AsyncClient()`` are now built with.

``--traffic-report PATH`` writes all of it as JSON.
"""

from __future__ import annotations

import functools
import importlib
import ipaddress
import pkgutil
from collections.abc import Generator
from typing import Any

import pytest
from traffic_record import Record

_record = Record()


def _is_loopback(host: object) -> bool:
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    if not isinstance(host, str):
        return False
    host = host.strip("[]").lower()
    if host in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def _counting(kind: str, original: Any) -> Any:
    @functools.wraps(original)
    async def connect(self: Any, *args: Any, **kwargs: Any) -> Any:
        _record.count(f"{kind}_asked")
        # httpcore passes everything by keyword (host=, port= / path=).
        where = args[0] if args else kwargs.get("host" if kind == "tcp" else "path")
        if kind == "tcp" and not _is_loopback(where):
            _record.refuse(f"connect_tcp({where!r})")
            raise OSError(f"host suites: no connect_tcp to {where!r} (not loopback)")
        stream = await original(self, *args, **kwargs)
        _record.count(f"{kind}_opened")
        return stream

    connect.__traffic_hosts_counting__ = True  # type: ignore[attr-defined]
    return connect


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("traffic_hosts", "host suites run on traffic (.ci/hosts)")
    group.addoption("--traffic-report", help="write the per-test connection counts here (JSON)")


def pytest_configure(config: pytest.Config) -> None:
    try:
        import httpcore
        import httpcore._async
        import httpcore._backends.auto
        import httpx
        import httpx._client
        import httpx._transports.default

        from traffic.integrations.httpcore import TrafficBackend
        from traffic.integrations.httpx import AsyncHTTPTransport
    except ImportError as exc:
        raise pytest.UsageError(f"traffic_hosts: cannot import what it patches: {exc!r}") from exc

    # httpcore's default async backend.
    auto = httpcore._backends.auto.AutoBackend
    patched = []
    for module_info in pkgutil.iter_modules(httpcore._async.__path__, "httpcore._async."):
        module = importlib.import_module(module_info.name)
        if getattr(module, "AutoBackend", None) is auto:
            _record.patch(module, "AutoBackend", TrafficBackend)
            patched.append(f"{module.__name__}.AutoBackend")
    if not patched:
        raise pytest.UsageError("traffic_hosts: no httpcore._async module builds AutoBackend()")

    # httpx's default transport (the client's own and its proxies').
    if httpx._client.AsyncHTTPTransport is not httpx._transports.default.AsyncHTTPTransport:
        raise pytest.UsageError("traffic_hosts: httpx._client.AsyncHTTPTransport is not httpx's")
    _record.patch(httpx._client, "AsyncHTTPTransport", AsyncHTTPTransport)
    patched.append("httpx._client.AsyncHTTPTransport")

    # The counters, on traffic's backend class and on any subclass of it that
    # overrides the two (the drop-in transport's backend, if it has its own).
    classes, pending = [], [TrafficBackend]
    while pending:
        cls = pending.pop()
        classes.append(cls)
        pending.extend(cls.__subclasses__())
    for kind, name in (("tcp", "connect_tcp"), ("unix", "connect_unix_socket")):
        for cls in classes:
            if cls is TrafficBackend or name in vars(cls):
                _record.patch(cls, name, _counting(kind, getattr(cls, name)))

    # What the defaults are now.
    pool = httpcore.AsyncConnectionPool()
    client = httpx.AsyncClient()
    transport = client._transport
    transport_backend = getattr(getattr(transport, "_pool", None), "_network_backend", None)
    _record.info.update(
        patched=patched,
        traffic_backend=f"{TrafficBackend.__module__}.{TrafficBackend.__qualname__}",
        pool_backend=type(pool._network_backend).__qualname__,
        pool_backend_is_traffic=isinstance(pool._network_backend, TrafficBackend),
        client_transport=f"{type(transport).__module__}.{type(transport).__qualname__}",
        client_transport_is_traffic=isinstance(transport, AsyncHTTPTransport),
        client_transport_backend=type(transport_backend).__qualname__,
        client_transport_backend_is_traffic=isinstance(transport_backend, TrafficBackend),
        client_transport_backend_counted=all(
            hasattr(getattr(type(transport_backend), name, None), "__traffic_hosts_counting__")
            for name in ("connect_tcp", "connect_unix_socket")
        ),
    )


def pytest_unconfigure(config: pytest.Config) -> None:
    _record.restore()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None]:
    with _record.running(item.nodeid):
        return (yield)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    path = session.config.getoption("traffic_report")
    if path:
        _record.write(path)
