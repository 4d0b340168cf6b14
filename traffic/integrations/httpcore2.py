"""httpcore2's network I/O (Pydantic's fork of httpcore) through traffic's core.

Use it as the pool's backend::

    import httpcore2
    from traffic.integrations.httpcore2 import TrafficBackend

    pool = httpcore2.AsyncConnectionPool(network_backend=TrafficBackend())

Every connection the pool opens is one of traffic's streams, on asyncio,
asyncio on uvloop and trio alike (:mod:`traffic.anyio_backend`), raising
httpcore2's exceptions where httpcore2's own backends raise them (see
:mod:`traffic.integrations._httpcore`).  On another event loop the backend
raises ``RuntimeError``: it never falls back to httpcore2's own.  httpx
users take :mod:`traffic.integrations.httpx2` instead.
"""

from __future__ import annotations

try:
    import httpcore2
except ImportError as exc:  # pragma: no cover (the test extra installs it)
    raise ImportError(
        "traffic.integrations.httpcore2 needs httpcore2: pip install 'traffic[httpx2]'"
    ) from exc

from ._httpcore import HostErrors, NetworkBackend, NetworkStream

__all__ = ["TrafficBackend", "TrafficNetworkStream"]


class TrafficNetworkStream(NetworkStream, httpcore2.AsyncNetworkStream):
    """A connection of :class:`TrafficBackend`: ``httpcore2.AsyncNetworkStream``
    over traffic's stream (or anyio's TLS stream over it)."""

    _errors = HostErrors.of(httpcore2)


class TrafficBackend(NetworkBackend, httpcore2.AsyncNetworkBackend):
    """``httpcore2.AsyncNetworkBackend`` whose connections are traffic's
    streams: the core performs every read and write."""

    _errors = HostErrors.of(httpcore2)
    _stream_class = TrafficNetworkStream
