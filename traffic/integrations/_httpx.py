"""httpx's ``AsyncHTTPTransport`` with traffic's network backend, for any
host with httpx's interface (httpx, and its fork httpx2).

httpx's transport builds its connection pool inside its constructor, one
of three httpcore classes by the ``proxy`` given (a plain pool, an HTTP(S)
proxy, a SOCKS proxy), and offers no way to pass the pool a network
backend.  Every one of those classes keeps the backend it will open
connections with in the same attribute, read only when it connects: so
the drop-in lets httpx build its pool exactly as httpx does, then gives
it traffic's backend before any connection exists.  Nothing else of
httpx's transport changes: its request handling, its mapping of
httpcore's exceptions to httpx's, its keywords and their defaults.  The
supported versions are pinned by the extras; a pool without the attribute
(a host that changed) is refused with ``RuntimeError``, never served by
the host's own backend.
"""

from __future__ import annotations

from typing import Any

__all__ = ["use_backend"]


def use_backend(pool: Any, backend: Any, base: type[Any]) -> None:
    """Make ``backend`` the network backend of the httpcore ``pool`` that
    an httpx transport just built (``base``: the host's
    ``AsyncNetworkBackend``, which the pool's current backend must be)."""
    if not isinstance(getattr(pool, "_network_backend", None), base):
        raise RuntimeError(
            f"cannot give {type(pool).__name__} traffic's network backend: this version of "
            "httpx or httpcore is not one traffic supports (see the extras' pins)"
        )
    pool._network_backend = backend
