"""anyio datagram sockets whose transfers traffic's core performs, on trio and asyncio.

The swap, as for streams (:mod:`traffic.anyio_backend`)::

    from traffic.anyio_datagrams import create_udp_socket   # was: from anyio import ...

:func:`create_udp_socket`, :func:`create_connected_udp_socket`,
:func:`create_unix_datagram_socket` and
:func:`create_connected_unix_datagram_socket` have anyio's signatures and
return subclasses of ``anyio.abc.UDPSocket``, ``ConnectedUDPSocket``,
``UNIXDatagramSocket`` and ``ConnectedUNIXDatagramSocket``.

Receiving is batched (one ``recvmmsg`` brings up to :data:`RECEIVE_BATCH`
datagrams; the rest wait for the next receives), and a receive cancelled
after its datagrams arrived keeps them for the next receive: nothing
received is lost.  Errors follow anyio's trio backend: an ``OSError`` the
kernel gives for one datagram (a refusal reported by ICMP, ``EMSGSIZE``)
raises ``anyio.BrokenResourceError`` chained to it, and the socket goes
on; ``anyio.ClosedResourceError`` after ``aclose``.  A datagram longer
than the receive room (65,527 bytes, every UDP datagram fits) raises
``BrokenResourceError`` from ``OSError(EMSGSIZE)`` instead of arriving cut.
Addresses are anyio's: ``(host, port)`` for IPv4 and IPv6 alike.
"""

from __future__ import annotations

import os
import socket
from os import PathLike
from typing import Any

import anyio
import anyio.abc

from ._anyio._adopt import FromSocket, SocketChecks, _take
from ._anyio._connect import resolve_port
from ._anyio._listen import unix_local_socket
from ._anyio._parking import _Parking, _parking
from ._anyio._stream import RawSocketView
from ._base._requests import DONE, FAULT, TERMINATED, Result
from ._base._sockets import socket_identity
from .datagrams import MAX_UDP_PAYLOAD, Datagrams, Inbox, is_numeric, outgoing, udp_socket

__all__ = [
    "TrafficConnectedUDPSocket",
    "TrafficConnectedUNIXDatagramSocket",
    "TrafficUDPSocket",
    "TrafficUNIXDatagramSocket",
    "create_connected_udp_socket",
    "create_connected_unix_datagram_socket",
    "create_udp_socket",
    "create_unix_datagram_socket",
]

#: Datagrams one receive request may bring at most (one recvmmsg).
RECEIVE_BATCH = 8


class _Datagrams(FromSocket):
    """What the four socket classes share: the transits, guards and inbox,
    and anyio's ``from_socket`` (what each takes is its ``_socket_checks``)."""

    _parking: _Parking

    def __init__(self, fd: int) -> None:
        """Take ownership of the datagram socket ``fd`` (also on failure)."""
        try:
            family, kind, proto = socket_identity(fd)
            if kind != socket.SOCK_DGRAM:
                raise ValueError(f"socket type mismatch: expected SOCK_DGRAM, got {kind.name}")
            parking = _parking()
            receiver, sender = Datagrams._pair(fd)
        except BaseException:
            os.close(fd)
            raise
        receiver._family = sender._family = family
        parking.traffic.acquire(receiver)
        parking.traffic.acquire(sender)
        self._parking = parking
        self._receiver = receiver
        self._sender = sender
        self._family = family
        self._view = RawSocketView(receiver, family, kind, proto)
        self._closed = False
        self._inbox = Inbox(RECEIVE_BATCH, MAX_UDP_PAYLOAD)
        self._receive_guard = anyio.ResourceGuard("reading from")
        self._send_guard = anyio.ResourceGuard("writing to")

    @property
    def _raw_socket(self) -> socket.socket:
        return self._view  # type: ignore[return-value]  # a view; see RawSocketView

    def _stash(self, done: Result) -> None:
        """Keep the datagrams of a receive that was cancelled after they arrived."""
        _, outcome, _, transferred, _, _ = done
        if outcome == DONE and not self._closed:
            self._inbox.deliver(transferred)

    async def _receive(self) -> tuple[bytes, Any]:
        with self._receive_guard:
            if self._closed:
                raise anyio.ClosedResourceError
            inbox = self._inbox
            if self._parking.late:
                # A cancelled receive's datagrams may still be on their way.
                await self._parking.settle(self._receiver)
            if inbox:
                await anyio.lowlevel.checkpoint()
            else:
                _, pin, size = inbox.memory()
                done = await self._parking.transfer_pinned(
                    self._receiver, pin, size, inbox, self._stash
                )
                _, outcome, _, transferred, _, _ = done
                if outcome == DONE and not self._closed:
                    inbox.deliver(transferred)
                elif not self._closed:
                    _failed(done)
            if self._closed:
                raise anyio.ClosedResourceError
            try:
                datagram = inbox.take()
            except OSError as exc:
                raise anyio.BrokenResourceError from exc
            return datagram.payload, _anyio_address(datagram.address)

    async def _send(self, data: Any, address: Any) -> None:
        with self._send_guard:
            if self._closed:
                raise anyio.ClosedResourceError
            if address is not None and not is_numeric(self._family, address):
                infos = await anyio.getaddrinfo(
                    address[0], address[1], family=self._family, type=socket.SOCK_DGRAM
                )
                address = infos[0][4]
            _, pin, size = outgoing(data, address, self._family)
            done = await self._parking.transfer_pinned(self._sender, pin, size, pin, _ignore)
            if self._closed:
                raise anyio.ClosedResourceError
            if done[1] != DONE:  # the outcome
                _failed(done)

    async def aclose(self) -> None:
        """Close the socket; operations waiting on it raise
        ``anyio.ClosedResourceError``.  Idempotent; closes even when cancelled."""
        if not self._closed:
            self._closed = True
            self._inbox.clear()
            self._receiver.terminate()
            self._sender.terminate()
            self._parking.wake(self._receiver)
            self._parking.wake(self._sender)
        await anyio.lowlevel.checkpoint()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"fd={self._receiver.fileno()}"
        return f"<traffic.anyio_datagrams.{type(self).__name__} {state}>"


def _ignore(done: Result) -> None:
    """A cancelled send's completion: the datagram went, or did not."""


def _failed(done: Result) -> None:
    _, outcome, error, _, _, _ = done
    if outcome in (FAULT, TERMINATED) and error:
        raise anyio.BrokenResourceError from OSError(error, os.strerror(error))
    raise anyio.ClosedResourceError


def _anyio_address(address: Any) -> Any:
    """anyio's form: IPv6 as ``(host, port)``, the scope id after a ``%``."""
    if isinstance(address, tuple) and len(address) == 4:
        host, port, _, scope_id = address
        return (f"{host}%{scope_id}", port) if scope_id else (host, port)
    return address


class TrafficUDPSocket(_Datagrams, anyio.abc.UDPSocket):
    """anyio's ``UDPSocket``, served by traffic's core.

    :meth:`from_socket` takes a bound UDP socket.
    """

    _socket_checks = SocketChecks(socket.SOCK_DGRAM, bound=True)

    async def receive(self) -> tuple[bytes, tuple[str, int]]:
        """The next datagram and its sender's ``(host, port)``."""
        return await self._receive()

    async def send(self, item: tuple[bytes, tuple[str, int]]) -> None:
        """Send ``(data, (host, port))`` as one datagram."""
        data, address = item
        await self._send(data, address)


class TrafficConnectedUDPSocket(_Datagrams, anyio.abc.ConnectedUDPSocket):
    """anyio's ``ConnectedUDPSocket``, served by traffic's core.

    :meth:`from_socket` takes a connected UDP socket.
    """

    _socket_checks = SocketChecks(socket.SOCK_DGRAM, connected=True)

    async def receive(self) -> bytes:
        """The next datagram from the peer."""
        payload, _ = await self._receive()
        return payload

    async def send(self, item: bytes) -> None:
        """Send ``item`` as one datagram to the peer."""
        await self._send(item, None)


class TrafficUNIXDatagramSocket(_Datagrams, anyio.abc.UNIXDatagramSocket):
    """anyio's ``UNIXDatagramSocket``, served by traffic's core.

    :meth:`from_socket` takes an ``AF_UNIX`` datagram socket.
    """

    _socket_checks = SocketChecks(socket.SOCK_DGRAM, family=socket.AF_UNIX)

    async def receive(self) -> tuple[bytes, str]:
        """The next datagram and its sender's path."""
        return await self._receive()

    async def send(self, item: tuple[bytes, str]) -> None:
        """Send ``(data, path)`` as one datagram."""
        data, path = item
        await self._send(data, path)


class TrafficConnectedUNIXDatagramSocket(_Datagrams, anyio.abc.ConnectedUNIXDatagramSocket):
    """anyio's ``ConnectedUNIXDatagramSocket``, served by traffic's core.

    :meth:`from_socket` takes a connected ``AF_UNIX`` datagram socket.
    """

    _socket_checks = SocketChecks(socket.SOCK_DGRAM, connected=True, family=socket.AF_UNIX)

    async def receive(self) -> bytes:
        """The next datagram from the peer."""
        payload, _ = await self._receive()
        return payload

    async def send(self, item: bytes) -> None:
        """Send ``item`` as one datagram to the peer."""
        await self._send(item, None)


# Making them, with anyio's signatures


async def _local(family: int, local_host: Any, local_port: int) -> tuple[int, Any]:
    infos = await anyio.getaddrinfo(
        str(local_host),
        local_port,
        family=family,
        type=socket.SOCK_DGRAM,
        flags=socket.AI_PASSIVE | socket.AI_ADDRCONFIG,
    )
    return infos[0][0], infos[0][-1]


async def create_udp_socket(
    family: int = socket.AF_UNSPEC,
    *,
    local_host: str | None = None,
    local_port: int = 0,
    reuse_port: bool = False,
) -> TrafficUDPSocket:
    """A UDP socket, as ``anyio.create_udp_socket``.

    A port outside 0-65535 raises :class:`~traffic.errors.OutOfRangeError`
    where anyio's resolver wraps it to the port modulo 65536.
    """
    local_port = await resolve_port(local_port, socket.SOCK_DGRAM)
    if family == socket.AF_UNSPEC and not local_host:
        raise ValueError('Either "family" or "local_host" must be given')
    if local_host:
        family, local_address = await _local(family, local_host, local_port)
    elif family == socket.AF_INET6:
        local_address = ("::", local_port)
    else:
        local_address = ("0.0.0.0", local_port)
    sock = udp_socket(family, local_address, None, reuse_port)
    return TrafficUDPSocket(_take(sock))


async def create_connected_udp_socket(
    remote_host: str,
    remote_port: int,
    *,
    family: int = socket.AF_UNSPEC,
    local_host: str | None = None,
    local_port: int = 0,
    reuse_port: bool = False,
) -> TrafficConnectedUDPSocket:
    """A connected UDP socket, as ``anyio.create_connected_udp_socket``.

    Ports as for :func:`create_udp_socket`.
    """
    remote_port = await resolve_port(remote_port, socket.SOCK_DGRAM)
    local_port = await resolve_port(local_port, socket.SOCK_DGRAM)
    local_address = None
    if local_host:
        family, local_address = await _local(family, local_host, local_port)
    infos = await anyio.getaddrinfo(
        str(remote_host),
        remote_port,
        family=family,
        type=socket.SOCK_DGRAM,
    )
    family, remote_address = infos[0][0], infos[0][-1]
    if local_address is None and local_port:
        local_address = ("::" if family == socket.AF_INET6 else "0.0.0.0", local_port)
    sock = udp_socket(family, local_address, remote_address, reuse_port)
    return TrafficConnectedUDPSocket(_take(sock))


async def _unix(local_path: Any, local_mode: int | None, remote_path: Any) -> socket.socket:
    """An AF_UNIX datagram socket: bound as anyio binds it, then connected.

    An AF_UNIX datagram ``connect()`` never waits (it names the peer, or
    fails at once: ``FileNotFoundError``, ``ConnectionRefusedError`` for an
    abstract name nobody holds).
    """
    if remote_path is not None:
        remote_path = os.fspath(remote_path)
    sock = await unix_local_socket(local_path, local_mode, socket.SOCK_DGRAM)
    try:
        if remote_path is not None:
            sock.connect(remote_path)
    except BaseException:
        sock.close()
        raise
    await anyio.lowlevel.checkpoint()
    return sock


async def create_unix_datagram_socket(
    *, local_path: str | bytes | PathLike[Any] | None = None, local_mode: int | None = None
) -> TrafficUNIXDatagramSocket:
    """An AF_UNIX datagram socket, as ``anyio.create_unix_datagram_socket``."""
    sock = await _unix(local_path, local_mode, None)
    return TrafficUNIXDatagramSocket(_take(sock))


async def create_connected_unix_datagram_socket(
    remote_path: str | bytes | PathLike[Any],
    *,
    local_path: str | bytes | PathLike[Any] | None = None,
    local_mode: int | None = None,
) -> TrafficConnectedUNIXDatagramSocket:
    """A connected AF_UNIX datagram socket, as
    ``anyio.create_connected_unix_datagram_socket``."""
    sock = await _unix(local_path, local_mode, remote_path)
    return TrafficConnectedUNIXDatagramSocket(_take(sock))
