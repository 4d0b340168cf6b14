"""Datagram sockets for trio: UDP and AF_UNIX datagrams through traffic's core.

:class:`TrafficDatagramSocket` sends to and receives from any address;
:class:`TrafficConnectedDatagramSocket` talks to the one peer it is
connected to.  Both mirror anyio's ``UDPSocket`` and ``ConnectedUDPSocket``
(``send``/``receive``, ``aclose``), with trio's rules: every operation is a
checkpoint, one task at a time per direction (``trio.BusyResourceError``),
``trio.ClosedResourceError`` after ``aclose``.

Receiving is batched: a receive that has to wait asks the core for up to
:data:`RECEIVE_BATCH` datagrams at once (one ``recvmmsg``), hands out the
first and keeps the rest for the following receives.  Cancelled after its
datagrams arrived, a receive returns the first (the cancellation is raised
at the next checkpoint, trio's rule) and the rest stay queued: nothing
received is lost.  A cancelled send either sent its datagram or did not.

Errors that belong to one datagram (a refusal reported by ICMP to a
connected socket, ``EMSGSIZE``, an unreachable network) raise the
``OSError`` (``ConnectionRefusedError``...) and the socket goes on, as
with trio's own sockets.  A datagram longer than ``max_size`` raises
``OSError(EMSGSIZE)`` rather than arriving cut.

Memory: the receive array is ``RECEIVE_BATCH`` records of ``max_size``
bytes (512 KiB at the defaults), made at the first receive.
"""

from __future__ import annotations

import errno
import os
import socket as _stdlib_socket
from typing import Any

import trio

from ._base._requests import DONE, FAULT, TERMINATED, Result
from ._base._sockets import Guard, SocketView, socket_identity
from ._trio._primitives import _REFUSALS, _broken
from ._trio._stream import _detach
from ._trio_parking import delivery, transfer_pinned
from .datagrams import MAX_UDP_PAYLOAD, Datagrams, Inbox, is_numeric, outgoing, udp_socket

__all__ = [
    "TrafficConnectedDatagramSocket",
    "TrafficDatagramSocket",
    "open_connected_udp_socket",
    "open_udp_socket",
]

#: Datagrams one receive request may bring at most (one recvmmsg).
RECEIVE_BATCH = 8

#: The largest datagram a receive takes whole by default: every UDP datagram.
DEFAULT_MAX_SIZE = MAX_UDP_PAYLOAD


class _DatagramSocket(trio.abc.AsyncResource):
    """What both datagram sockets share: the transits, the guards, the inbox."""

    _connected: bool

    def __init__(self, socket: Any, *, max_size: int = DEFAULT_MAX_SIZE) -> None:
        """Take over a datagram socket (stdlib or trio; its descriptor is
        detached and owned by the core).  Must be called inside a trio run."""
        if not isinstance(max_size, int) or max_size < 1:
            raise ValueError("max_size must be a positive integer")
        fd = _detach(socket, type(self).__name__, kind=_stdlib_socket.SOCK_DGRAM)
        try:
            family, kind, proto = socket_identity(fd)
            if kind != _stdlib_socket.SOCK_DGRAM:
                raise TypeError(f"{type(self).__name__} needs a SOCK_DGRAM socket")
            receiver, sender = Datagrams._pair(fd)
        except BaseException:
            os.close(fd)
            raise
        receiver._family = sender._family = family
        run = delivery()
        run.traffic.acquire(receiver)
        run.traffic.acquire(sender)
        self._delivery = run
        self._receiver = receiver
        self._sender = sender
        self._family = family
        self._closed = False
        self._inbox = Inbox(RECEIVE_BATCH, max_size)
        self._send_guard = Guard(
            lambda: trio.BusyResourceError("another task is sending on this socket")
        )
        self._receive_guard = Guard(
            lambda: trio.BusyResourceError("another task is receiving on this socket")
        )
        #: A view of the socket: getsockname(), getsockopt()... (never closes it).
        self.socket = SocketView(receiver, family, kind, proto)

    async def _receive(self) -> tuple[bytes, Any]:
        with self._receive_guard:
            if self._closed:
                raise trio.ClosedResourceError("the socket is closed")
            inbox = self._inbox
            if not inbox:
                _, pin, size = inbox.memory()
                done = await transfer_pinned(
                    self._delivery, self._receiver, pin, size, inbox, _REFUSALS
                )
                if self._closed:
                    raise trio.ClosedResourceError("the socket was closed while receiving")
                _, outcome, _, transferred, _, _ = done
                if outcome == DONE:
                    inbox.deliver(transferred)
                else:
                    _failed(done, "receive")
            else:
                await trio.lowlevel.checkpoint()
                if self._closed:
                    raise trio.ClosedResourceError("the socket was closed while receiving")
            datagram = inbox.take()
            return datagram.payload, datagram.address

    async def _send(self, data: Any, address: Any) -> None:
        with self._send_guard:
            if self._closed:
                raise trio.ClosedResourceError("the socket is closed")
            if address is not None and not is_numeric(self._family, address):
                address = await _resolve(self._family, address)
            _, pin, size = outgoing(data, address, self._family)
            done = await transfer_pinned(self._delivery, self._sender, pin, size, pin, _REFUSALS)
            if done[1] != DONE:  # the outcome
                _failed(done, "send")

    async def aclose(self) -> None:
        """Close the socket: operations parked on it wake with
        ``trio.ClosedResourceError``; datagrams received and not yet handed
        out are dropped.  Idempotent; a checkpoint, and it closes even when
        cancelled."""
        if not self._closed:
            self._closed = True
            self._inbox.clear()
            fd = self._receiver.fileno()
            if fd >= 0:
                trio.lowlevel.notify_closing(fd)
            self._receiver.terminate()
            self._sender.terminate()
        await trio.lowlevel.checkpoint()

    @property
    def local_address(self) -> Any:
        """The socket's own address (``getsockname()``)."""
        return self.socket.getsockname()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"fd={self._receiver.fileno()}"
        return f"<traffic.{type(self).__name__} {state}>"


class TrafficDatagramSocket(_DatagramSocket):
    """An unconnected datagram socket (UDP or AF_UNIX) served by traffic's core.

    ``TrafficDatagramSocket(sock)`` takes over a bound (or unbound)
    ``SOCK_DGRAM`` socket; :func:`open_udp_socket` makes one.
    """

    async def receive(self) -> tuple[bytes, Any]:
        """The next datagram and its sender's address (as the socket module
        gives addresses).  A checkpoint; see the module text for errors."""
        return await self._receive()

    async def send(self, data: Any, address: Any) -> None:
        """Send ``data`` (bytes-like) as one datagram to ``address`` (a
        ``(host, port)``, resolved if it is a name; an AF_UNIX path).  A
        checkpoint.  Raises the ``OSError`` the kernel gives for this
        datagram (``EMSGSIZE``...); the socket goes on."""
        if address is None:
            raise TypeError("send() needs an address; a connected socket sends without one")
        await self._send(data, address)


class TrafficConnectedDatagramSocket(_DatagramSocket):
    """A datagram socket connected to one peer, served by traffic's core.

    ``TrafficConnectedDatagramSocket(sock)`` takes over a connected
    ``SOCK_DGRAM`` socket; :func:`open_connected_udp_socket` makes one.
    """

    async def receive(self) -> bytes:
        """The next datagram from the peer.  A checkpoint.  Raises
        ``ConnectionRefusedError`` when the kernel learnt (ICMP) that
        nothing listens at the peer's address; the socket goes on."""
        payload, _ = await self._receive()
        return payload

    async def send(self, data: Any) -> None:
        """Send ``data`` (bytes-like) as one datagram to the peer.  A checkpoint."""
        await self._send(data, None)

    @property
    def remote_address(self) -> Any:
        """The peer's address (``getpeername()``)."""
        return self.socket.getpeername()


def _failed(done: Result, doing: str) -> None:
    """Raise for a request that did not transfer."""
    _, outcome, error, _, _, _ = done
    if outcome == FAULT:
        raise OSError(error, f"{doing}: {os.strerror(error)}")
    if outcome == TERMINATED and error:
        raise _broken(error, doing)
    raise trio.ClosedResourceError(f"the socket was closed during the {doing}")


async def _resolve(family: int, address: Any, passive: bool = False) -> Any:
    """The first numeric address ``getaddrinfo`` gives for ``(host, port)``."""
    if not isinstance(address, tuple) or len(address) < 2:
        raise TypeError(f"an IP address is a (host, port) tuple, not {address!r}")
    flags = _stdlib_socket.AI_PASSIVE if passive else 0
    infos = await trio.socket.getaddrinfo(
        address[0], address[1], family, _stdlib_socket.SOCK_DGRAM, flags=flags
    )
    if not infos:
        raise OSError(errno.EADDRNOTAVAIL, f"no address for {address!r}")
    return infos[0][4]


async def _udp_socket(
    family: int,
    local_host: str | None,
    local_port: int,
    reuse_port: bool,
    remote: tuple[str, int] | None,
) -> _stdlib_socket.socket:
    """A bound (and, with ``remote``, connected) non-blocking UDP socket."""
    remote_address = None
    if remote is not None:
        remote_address = await _resolve(family, remote)
        family = _family_of(remote_address)
    local_address = None
    if local_host is not None:
        local_address = await _resolve(family, (local_host, local_port), passive=True)
        family = _family_of(local_address)
    elif family == _stdlib_socket.AF_UNSPEC:
        raise ValueError("either the address family or local_host must be given")
    elif remote_address is None or local_port:
        any_host = "::" if family == _stdlib_socket.AF_INET6 else "0.0.0.0"
        local_address = (any_host, local_port)
    return udp_socket(family, local_address, remote_address, reuse_port)


def _family_of(address: Any) -> int:
    return _stdlib_socket.AF_INET6 if len(address) == 4 else _stdlib_socket.AF_INET


async def open_udp_socket(
    local_host: str | None = None,
    local_port: int = 0,
    *,
    family: int = _stdlib_socket.AF_UNSPEC,
    reuse_port: bool = False,
    max_size: int = DEFAULT_MAX_SIZE,
) -> TrafficDatagramSocket:
    """A UDP socket bound to ``local_host``:``local_port`` (anyio's
    ``create_udp_socket``): the family comes from ``local_host`` or
    ``family``, one of which must be given."""
    sock = await _udp_socket(family, local_host, local_port, reuse_port, None)
    return TrafficDatagramSocket(sock, max_size=max_size)


async def open_connected_udp_socket(
    remote_host: str,
    remote_port: int,
    *,
    family: int = _stdlib_socket.AF_UNSPEC,
    local_host: str | None = None,
    local_port: int = 0,
    reuse_port: bool = False,
    max_size: int = DEFAULT_MAX_SIZE,
) -> TrafficConnectedDatagramSocket:
    """A UDP socket connected to ``remote_host``:``remote_port`` (anyio's
    ``create_connected_udp_socket``)."""
    sock = await _udp_socket(family, local_host, local_port, reuse_port, (remote_host, remote_port))
    return TrafficConnectedDatagramSocket(sock, max_size=max_size)
