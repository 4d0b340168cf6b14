"""httpcore's network I/O through traffic's core.

Use it as the pool's backend::

    import httpcore
    from traffic.integrations.httpcore import TrafficBackend

    pool = httpcore.AsyncConnectionPool(network_backend=TrafficBackend())

Every connection the pool opens is one of traffic's streams, on asyncio,
asyncio on uvloop and trio alike (:mod:`traffic.anyio_backend`), raising
httpcore's exceptions where httpcore's own backends raise them (see
:mod:`traffic.integrations._httpcore`).  On another event loop the backend
raises ``RuntimeError``: it never falls back to httpcore's own.  httpx
users take :mod:`traffic.integrations.httpx` instead.
"""

from __future__ import annotations

try:
    import httpcore
except ImportError as exc:  # pragma: no cover (the test extra installs it)
    raise ImportError(
        "traffic.integrations.httpcore needs httpcore: pip install 'traffic[httpx]'"
    ) from exc

from ._httpcore import HostErrors, NetworkBackend, NetworkStream

__all__ = ["TrafficBackend", "TrafficNetworkStream"]


class TrafficNetworkStream(NetworkStream, httpcore.AsyncNetworkStream):
    """A connection of :class:`TrafficBackend`: ``httpcore.AsyncNetworkStream``
    over traffic's stream (or anyio's TLS stream over it)."""

    _errors = HostErrors.of(httpcore)


class TrafficBackend(NetworkBackend, httpcore.AsyncNetworkBackend):
    """``httpcore.AsyncNetworkBackend`` whose connections are traffic's
    streams: the core performs every read and write."""

    _errors = HostErrors.of(httpcore)
    _stream_class = TrafficNetworkStream
