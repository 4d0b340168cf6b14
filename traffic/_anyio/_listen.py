"""Listening: ``create_tcp_listener`` and ``create_unix_listener``, with anyio's signatures.

The sockets are made, bound and set listening as anyio makes them (one
dual-stack IPv6 socket where the system has them, a consistent port across
families, a socket file removed first) and handed to the anyio layer's
listeners; TCP ones come in anyio's own ``MultiListener``.
:func:`unix_local_socket` binds an ``AF_UNIX`` socket of either kind (the
datagram factories use it too).

Imports anyio, ``traffic._anyio._listener`` and ``traffic._base``;
``exceptiongroup`` before Python 3.11.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
import sys
from typing import TYPE_CHECKING, Any, Literal

import anyio
import anyio.abc
import anyio.to_thread
from anyio.streams.stapled import MultiListener

from .._base._checks import check_port
from ._listener import TrafficSocketListener, TrafficUNIXSocketListener

if sys.version_info < (3, 11):
    from exceptiongroup import ExceptionGroup  # type: ignore[import-not-found, unused-ignore]

if TYPE_CHECKING:
    from anyio.abc import IPAddressType

IPPROTO_IPV6 = getattr(socket, "IPPROTO_IPV6", 41)


async def create_tcp_listener(
    *,
    local_host: IPAddressType | None = None,
    local_port: int = 0,
    family: Literal[
        socket.AddressFamily.AF_UNSPEC,
        socket.AddressFamily.AF_INET,
        socket.AddressFamily.AF_INET6,
    ] = socket.AddressFamily.AF_UNSPEC,
    backlog: int = 65536,
    reuse_port: bool = False,
) -> MultiListener[anyio.abc.SocketStream]:
    """Create TCP listeners: ``anyio.create_tcp_listener``, with traffic's listeners.

    Without ``local_host``, one dual-stack IPv6 socket where the system has
    them, else one listener per address family; with port 0 all listeners
    share the port chosen.  Returns anyio's ``MultiListener``.

    Raises ``OSError`` if creating or binding a socket fails, ``TypeError``
    for a port that is not an int, ``ValueError`` for one outside 0-65535.
    """
    check_port(local_port)
    backlog = min(backlog, 65536)
    host = str(local_host) if local_host is not None else None

    def setup_raw_socket(
        fam: socket.AddressFamily, bind_addr: tuple[Any, ...], *, v6only: bool = True
    ) -> socket.socket:
        sock = socket.socket(fam)
        try:
            sock.setblocking(False)
            if fam == socket.AF_INET6:
                sock.setsockopt(IPPROTO_IPV6, socket.IPV6_V6ONLY, v6only)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if fam == socket.AF_INET6 and "%" in bind_addr[0]:
                addr, scope_id = bind_addr[0].split("%", 1)
                bind_addr = (addr, bind_addr[1], 0, int(scope_id))
            sock.bind(bind_addr)
            sock.listen(backlog)
        except BaseException:
            sock.close()
            raise
        return sock

    def listener(sock: socket.socket) -> TrafficSocketListener:
        return TrafficSocketListener(sock.detach())

    gai_res = await anyio.getaddrinfo(
        host, local_port, family=family, type=0, flags=socket.AI_PASSIVE | socket.AI_ADDRCONFIG
    )
    sockaddrs = sorted({res for res in gai_res if res[1] == socket.SOCK_STREAM})

    if (
        host is None
        and family == socket.AF_UNSPEC
        and socket.has_dualstack_ipv6()
        and any(fam == socket.AF_INET6 for fam, *_ in gai_res)
    ):
        sock = setup_raw_socket(socket.AF_INET6, ("::", local_port), v6only=False)
        return MultiListener([listener(sock)])

    errors: list[OSError] = []
    try:
        for _ in range(10):  # enough to absorb ephemeral port collisions
            listeners: list[anyio.abc.SocketListener] = []
            bound_port = local_port
            try:
                for fam, *_, sockaddr in sockaddrs:
                    sockaddr = (sockaddr[0], bound_port, *sockaddr[2:])
                    sock = setup_raw_socket(fam, sockaddr)
                    if local_port == 0 and len(gai_res) > 1:
                        bound_port = sock.getsockname()[1]
                    listeners.append(listener(sock))
            except BaseException as exc:
                for made in listeners:
                    await made.aclose()
                if (
                    isinstance(exc, OSError)
                    and exc.errno == errno.EADDRINUSE
                    and local_port == 0
                    and bound_port
                ):
                    errors.append(exc)
                    sockaddrs.append(sockaddrs.pop(0))
                    continue
                raise
            return MultiListener(listeners)

        raise OSError(
            f"Could not create {len(sockaddrs)} listeners with a consistent port"
        ) from ExceptionGroup("Several bind attempts failed", errors)
    finally:
        del errors


async def create_unix_listener(
    path: str | bytes | os.PathLike[Any],
    *,
    mode: int | None = None,
    backlog: int = 65536,
    kind: Literal[socket.SocketKind.SOCK_STREAM] = socket.SOCK_STREAM,
) -> TrafficUNIXSocketListener:
    """Listen on the UNIX socket ``path``: ``anyio.create_unix_listener``.

    A socket already at ``path`` is removed first (as anyio does); ``mode``
    sets its permissions.  Raises ``OSError`` if binding fails,
    ``NotImplementedError`` for ``SOCK_SEQPACKET``.
    """
    if kind != socket.SOCK_STREAM:
        raise NotImplementedError("traffic's streams are SOCK_STREAM only")
    backlog = min(backlog, 65536)
    sock = await unix_local_socket(path, mode, socket.SOCK_STREAM)
    try:
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return TrafficUNIXSocketListener(sock.detach())


async def unix_local_socket(
    path: str | bytes | os.PathLike[Any] | None, mode: int | None, kind: int
) -> socket.socket:
    """A non-blocking AF_UNIX socket of ``kind``, bound to ``path`` unless None.

    As anyio's factories make theirs: a socket already at a filesystem path
    is removed first (and nothing else is); a Linux abstract address (a
    leading NUL, ``str`` or ``bytes``) has no file, so nothing is looked up
    for it.  ``mode`` is given to ``os.chmod`` on the path, which refuses an
    abstract address as it does for anyio (``ValueError``).  ``bind`` and
    ``chmod`` run in a worker thread: on a slow filesystem they block.
    Raises ``OSError`` from ``bind``, ``TypeError`` for a path that is not a
    path; the socket is closed on any failure.
    """
    name = os.fsdecode(path) if path is not None else None
    if name is not None and not name.startswith("\0"):
        try:
            if stat.S_ISSOCK(os.stat(name).st_mode):
                os.unlink(name)
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENOTDIR, errno.EBADF, errno.ELOOP):
                raise
    sock = socket.socket(socket.AF_UNIX, kind)
    try:
        sock.setblocking(False)
        if name is not None:
            await anyio.to_thread.run_sync(sock.bind, name, abandon_on_cancel=True)
            if mode is not None:
                await anyio.to_thread.run_sync(os.chmod, name, mode, abandon_on_cancel=True)
    except BaseException:
        sock.close()
        raise
    return sock
