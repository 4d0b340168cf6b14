"""httpx2's client (Pydantic's fork of httpx) with every request through traffic's core.

Pass the transport to the client::

    import httpx2
    from traffic.integrations.httpx2 import AsyncHTTPTransport

    async with httpx2.AsyncClient(transport=AsyncHTTPTransport()) as client:
        response = await client.get("https://example.org")

:class:`AsyncHTTPTransport` takes ``httpx2.AsyncHTTPTransport``'s keywords
(``verify``, ``cert``, ``trust_env``, ``http1``, ``http2``, ``limits``,
``proxy``, ``uds``, ``local_address``, ``retries``, ``socket_options``)
with the same defaults and meaning, and raises httpx2's exceptions.  Every
branch (no proxy, an HTTP(S) proxy, a SOCKS proxy, ``uds``) opens its
connections through :class:`traffic.integrations.httpcore2.TrafficBackend`,
on asyncio, asyncio on uvloop and trio.
"""

from __future__ import annotations

from typing import Any

try:
    import httpcore2
    import httpx2
except ImportError as exc:  # pragma: no cover (the test extra installs them)
    raise ImportError(
        "traffic.integrations.httpx2 needs httpx2 and httpcore2: pip install 'traffic[httpx2]'"
    ) from exc

from ._httpx import use_backend
from .httpcore2 import TrafficBackend

__all__ = ["AsyncHTTPTransport"]


class AsyncHTTPTransport(httpx2.AsyncHTTPTransport):
    """``httpx2.AsyncHTTPTransport``, its connections traffic's streams.

    Takes httpx2's keywords; see the module text.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        use_backend(self._pool, TrafficBackend(), httpcore2.AsyncNetworkBackend)
