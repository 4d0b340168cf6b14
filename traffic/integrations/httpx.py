"""httpx's client with every request through traffic's core.

Pass the transport to the client::

    import httpx
    from traffic.integrations.httpx import AsyncHTTPTransport

    async with httpx.AsyncClient(transport=AsyncHTTPTransport()) as client:
        response = await client.get("https://example.org")

:class:`AsyncHTTPTransport` takes ``httpx.AsyncHTTPTransport``'s keywords
(``verify``, ``cert``, ``trust_env``, ``http1``, ``http2``, ``limits``,
``proxy``, ``uds``, ``local_address``, ``retries``, ``socket_options``)
with the same defaults and meaning, and raises httpx's exceptions.  Every
branch (no proxy, an HTTP(S) proxy, a SOCKS proxy, ``uds``) opens its
connections through :class:`traffic.integrations.httpcore.TrafficBackend`,
on asyncio, asyncio on uvloop and trio.
"""

from __future__ import annotations

from typing import Any

try:
    import httpcore
    import httpx
except ImportError as exc:  # pragma: no cover (the test extra installs them)
    raise ImportError(
        "traffic.integrations.httpx needs httpx and httpcore: pip install 'traffic[httpx]'"
    ) from exc

from ._httpx import use_backend
from .httpcore import TrafficBackend

__all__ = ["AsyncHTTPTransport"]


class AsyncHTTPTransport(httpx.AsyncHTTPTransport):
    """``httpx.AsyncHTTPTransport``, its connections traffic's streams.

    Takes httpx's keywords; see the module text.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        use_backend(self._pool, TrafficBackend(), httpcore.AsyncNetworkBackend)
