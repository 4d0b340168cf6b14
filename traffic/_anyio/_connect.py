"""Connecting: ``connect_tcp`` and ``connect_unix``, with anyio's signatures.

The connection is made with a plain non-blocking socket and anyio's
``wait_writable`` (happy eyeballs as anyio's), then handed to a stream;
:func:`resolve_port` turns a port as anyio's factories take it into an int
in 0-65535 (the datagram factories use it too).

Imports anyio, ``traffic._anyio._stream`` and ``_unix_stream`` and
``traffic._base``; ``exceptiongroup`` before Python 3.11.
"""

from __future__ import annotations

import os
import socket
import ssl
import sys
from ipaddress import IPv6Address, ip_address
from typing import TYPE_CHECKING, Any, Literal

import anyio
import anyio.abc
import anyio.lowlevel
from anyio.streams.tls import TLSStream

from .._base._checks import check_port
from ._stream import TrafficSocketStream
from ._unix_stream import TrafficUNIXSocketStream

if sys.version_info < (3, 11):
    from exceptiongroup import ExceptionGroup  # type: ignore[import-not-found, unused-ignore]

if TYPE_CHECKING:
    from anyio.abc import IPAddressType, IPSockAddrType


async def resolve_port(port: object, kind: int = socket.SOCK_STREAM) -> int:
    """A port as anyio's factories take it, as an int in 0-65535.

    An int is checked (``TypeError`` for another type,
    :class:`~traffic.errors.OutOfRangeError` outside the range); a ``str``
    is a port number or a service name, which the resolver turns into a
    port, as it does for anyio (``socket.gaierror`` for an unknown name).
    A number outside the range is refused as a str too: the resolver would
    wrap it to the port modulo 65536, a connection to the wrong port.
    """
    if isinstance(port, str):
        if port.isascii() and port.isdigit():  # int() takes every such string
            return check_port(int(port))
        infos = await anyio.getaddrinfo(None, port, type=kind)
        return int(infos[0][4][1])
    return check_port(port)


async def _connect(family: int, address: Any, local_address: Any = None) -> socket.socket:
    """A connected non-blocking socket; the caller owns it."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        if family != socket.AF_UNIX:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if local_address:
            sock.bind(local_address)
        while True:
            try:
                sock.connect(address)
            except BlockingIOError:
                # TCP: in progress; AF_UNIX: the listener's backlog is full.
                await anyio.wait_writable(sock)
                if family == socket.AF_UNIX:
                    continue
                error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if error:
                    raise OSError(error, f"Connect call failed {address!r}") from None
            break
    except BaseException:
        sock.close()
        raise
    return sock


async def _connect_stream(
    family: int, address: Any, local_address: Any = None
) -> TrafficSocketStream:
    sock = await _connect(family, address, local_address)
    fd = sock.detach()
    if family == socket.AF_UNIX:
        return TrafficUNIXSocketStream(fd)
    return TrafficSocketStream(fd)


async def connect_tcp(
    remote_host: IPAddressType,
    remote_port: int,
    *,
    local_host: IPAddressType | None = None,
    local_port: int | None = None,
    tls: bool = False,
    ssl_context: ssl.SSLContext | None = None,
    tls_standard_compatible: bool = True,
    tls_hostname: str | None = None,
    happy_eyeballs_delay: float = 0.25,
) -> anyio.abc.SocketStream | TLSStream:
    """Connect to a host using TCP: ``anyio.connect_tcp``, with traffic's stream.

    Happy eyeballs as anyio's (RFC 6555, stateless: an IPv6 address first
    if there is one, the next attempt started after
    ``happy_eyeballs_delay`` seconds).  With ``tls``, ``ssl_context`` or
    ``tls_hostname``, the stream is wrapped in anyio's ``TLSStream`` after
    the handshake, as anyio does.

    Raises ``OSError("All connection attempts failed")`` chained to the
    attempts' error(s) (an ``ExceptionGroup`` for several), the
    resolver's ``socket.gaierror``, ``ssl.SSLError`` if the handshake
    fails.  Ports are ints or, as for anyio, strs the resolver turns into
    ports (:func:`resolve_port`); one outside 0-65535 raises
    :class:`~traffic.errors.OutOfRangeError` (a ``ValueError`` and an
    ``OverflowError``) before any attempt, where anyio's attempts raise
    ``OverflowError`` or, on uvloop, connect to the port modulo 65536.
    """
    remote_port = await resolve_port(remote_port)
    if local_port is not None:
        local_port = await resolve_port(local_port)
    connected: TrafficSocketStream | None = None
    oserrors: list[OSError] = []

    async def try_connect(family: int, host: str, event: anyio.Event) -> None:
        nonlocal connected
        try:
            stream = await _connect_stream(family, (host, remote_port), local_address)
        except OSError as exc:
            oserrors.append(exc)
            return
        else:
            if connected is None:
                connected = stream
                tg.cancel_scope.cancel()
            else:
                await stream.aclose()
        finally:
            event.set()

    local_address: IPSockAddrType | None = None
    family: int = socket.AF_UNSPEC
    if local_host:
        gai_res = await anyio.getaddrinfo(str(local_host), local_port)
        family, *_, local_address = gai_res[0]

    target_host = str(remote_host)
    try:
        addr_obj = ip_address(remote_host)
    except ValueError:
        addr_obj = None

    target_addrs: list[tuple[int, str]]
    if addr_obj is not None:
        if isinstance(addr_obj, IPv6Address):
            target_addrs = [(socket.AF_INET6, addr_obj.compressed)]
        else:
            target_addrs = [(socket.AF_INET, addr_obj.compressed)]
    else:
        gai_res = await anyio.getaddrinfo(
            target_host, remote_port, family=family, type=socket.SOCK_STREAM
        )
        # The first address an IPv6 one (if any), the second an IPv4 one.
        v6_found = v4_found = False
        target_addrs = []
        for af, *_, sa in gai_res:
            if af == socket.AF_INET6 and not v6_found:
                v6_found = True
                target_addrs.insert(0, (af, sa[0]))
            elif af == socket.AF_INET and not v4_found and v6_found:
                v4_found = True
                target_addrs.insert(1, (af, sa[0]))
            else:
                target_addrs.append((af, sa[0]))

    try:
        async with anyio.create_task_group() as tg:
            for target_family, addr in target_addrs:
                event = anyio.Event()
                tg.start_soon(try_connect, target_family, addr, event)
                with anyio.move_on_after(happy_eyeballs_delay):
                    await event.wait()

        if connected is None:
            cause = (
                oserrors[0]
                if len(oserrors) == 1
                else ExceptionGroup("multiple connection attempts failed", oserrors)
            )
            raise OSError("All connection attempts failed") from cause
    except BaseException:
        if connected is not None:
            await anyio.aclose_forcefully(connected)
        raise
    finally:
        oserrors.clear()

    if tls or tls_hostname or ssl_context:
        try:
            return await TLSStream.wrap(
                connected,
                server_side=False,
                hostname=tls_hostname or str(remote_host),
                ssl_context=ssl_context,
                standard_compatible=tls_standard_compatible,
            )
        except BaseException:
            await anyio.aclose_forcefully(connected)
            raise

    return connected


async def connect_unix(
    path: str | bytes | os.PathLike[Any],
    kind: Literal[socket.SocketKind.SOCK_STREAM] = socket.SOCK_STREAM,
) -> TrafficUNIXSocketStream:
    """Connect to the UNIX stream socket at ``path``: ``anyio.connect_unix``.

    Raises ``OSError`` (``FileNotFoundError``, ``ConnectionRefusedError``...)
    if the connection fails, ``NotImplementedError`` for ``SOCK_SEQPACKET``.
    """
    if kind != socket.SOCK_STREAM:
        raise NotImplementedError("traffic's streams are SOCK_STREAM only")
    await anyio.lowlevel.checkpoint()
    stream = await _connect_stream(socket.AF_UNIX, os.fspath(path))
    assert isinstance(stream, TrafficUNIXSocketStream)
    return stream
