"""Adopting a socket the caller made: anyio's ``from_socket``, once for every class.

The anyio layer's seven socket classes (two streams, two listeners, four
datagram sockets) take a socket object or descriptor from their caller as
anyio's do.  They differ only in what they ask of it (connected or bound,
of which kind and family: anyio's checks of the same ABC) and, for the
listener, in which class takes an ``AF_UNIX`` socket.  So there is one
``from_socket`` (:class:`FromSocket`, listed before the anyio ABC in each
class's bases), reading the class's checks as data (a
:class:`SocketChecks`), with a hook (``_adopt``) for the class it makes.

:func:`check_socket` asks anyio's questions in anyio's order and words, and
leaves a refused socket with its caller; :func:`_take` then takes the
descriptor out of a socket that passed.

Imports anyio, ``traffic._base._sockets``, ``traffic._base`` and
``traffic.errors``; nothing else of the anyio layer.
"""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, TypeVar

import anyio
import anyio.lowlevel

from .._base._checks import MAX_DESCRIPTOR
from .._base._sockets import socket_identity
from ..errors import OutOfRangeError

_Adopted = TypeVar("_Adopted", bound="FromSocket")


def _take(sock_or_fd: socket.socket | int) -> int:
    """The descriptor of a socket object (detached) or an integer."""
    if isinstance(sock_or_fd, int):
        return sock_or_fd
    if isinstance(sock_or_fd, socket.socket):
        if sock_or_fd.fileno() < 0:
            raise anyio.ClosedResourceError
        return sock_or_fd.detach()
    raise TypeError(f"expected an int or socket, got {type(sock_or_fd).__qualname__} instead")


def _identity_family(fd: int) -> socket.AddressFamily:
    return socket_identity(fd)[0]


def check_socket(
    sock_or_fd: socket.socket | int,
    kind: socket.SocketKind = socket.SOCK_STREAM,
    *,
    connected: bool = False,
    bound: bool = False,
    family: socket.AddressFamily = socket.AF_UNSPEC,
) -> None:
    """anyio's checks of a ``from_socket`` argument, in anyio's order and words.

    ``TypeError`` for neither an int nor a socket; ``ValueError`` for a
    descriptor that is not a socket (or, where the socket must be connected
    or bound, one that cannot be looked at, as a closed one), and for a
    socket that is not connected, not bound, or of another family or kind.
    :class:`~traffic.errors.OutOfRangeError` (a ``ValueError``, and the
    ``OverflowError`` anyio lets through) for a descriptor number beyond a
    C ``int``.  Leaves the socket non-blocking and with its caller.
    """
    if isinstance(sock_or_fd, int) and sock_or_fd > MAX_DESCRIPTOR:
        raise OutOfRangeError(f"{sock_or_fd} is beyond any descriptor number")
    if isinstance(sock_or_fd, int):
        try:
            sock = socket.socket(fileno=sock_or_fd)
        except OSError as exc:
            if exc.errno == errno.ENOTSOCK:
                raise ValueError("the file descriptor does not refer to a socket") from exc
            if connected:
                raise ValueError("the socket must be connected") from exc
            if bound:
                raise ValueError("the socket must be bound to a local address") from exc
            raise
    elif isinstance(sock_or_fd, socket.socket):
        sock = sock_or_fd
    else:
        raise TypeError(f"expected an int or socket, got {type(sock_or_fd).__qualname__} instead")
    try:
        if connected:
            try:
                sock.getpeername()
            except OSError as exc:
                raise ValueError("the socket must be connected") from exc
        if bound:
            try:
                name = sock.getsockname()
                bound_to = name[1] if sock.family in (socket.AF_INET, socket.AF_INET6) else name
            except OSError:
                bound_to = None
            if not bound_to:
                raise ValueError("the socket must be bound to a local address")
        if family != socket.AF_UNSPEC and sock.family != family:
            raise ValueError(
                f"address family mismatch: expected {family.name}, got {sock.family.name}"
            )
        if sock.type != kind:
            raise ValueError(f"socket type mismatch: expected {kind.name}, got {sock.type.name}")
        sock.setblocking(False)
    finally:
        if isinstance(sock_or_fd, int):
            sock.detach()


@dataclass(frozen=True)
class SocketChecks:
    """What a class's ``from_socket`` asks of a socket: :func:`check_socket`'s
    arguments, anyio's checks for the class's ABC."""

    kind: socket.SocketKind = socket.SOCK_STREAM
    connected: bool = False
    bound: bool = False
    family: socket.AddressFamily = socket.AF_UNSPEC


class FromSocket:
    """anyio's ``from_socket`` for a socket class of the anyio layer.

    Each class says what it takes in ``_socket_checks`` (and in its
    docstring); a class that makes another class's objects for some
    sockets overrides ``_adopt``.
    """

    #: What :meth:`from_socket` asks of a socket.
    _socket_checks: ClassVar[SocketChecks]

    if TYPE_CHECKING:

        def __init__(self, fd: int) -> None: ...

    @classmethod
    async def from_socket(cls: type[_Adopted], sock_or_fd: socket.socket | int) -> _Adopted:
        """Wrap a socket (or its descriptor) that passes the class's checks,
        taking ownership.

        The checks (``_socket_checks``: connected or bound, of which kind
        and family, as the class's docstring says) are anyio's, in its
        words (:func:`check_socket`): ``ValueError`` for a socket that
        fails one, ``TypeError`` for neither an int nor a socket; a refused
        socket is left with the caller.  A checkpoint once it passed.
        """
        checks = cls._socket_checks
        check_socket(
            sock_or_fd,
            checks.kind,
            connected=checks.connected,
            bound=checks.bound,
            family=checks.family,
        )
        await anyio.lowlevel.checkpoint()
        return cls._adopt(_take(sock_or_fd))

    @classmethod
    def _adopt(cls: type[_Adopted], fd: int) -> _Adopted:
        """The object owning ``fd``, a socket that passed the checks
        (``fd`` is closed if making it fails)."""
        return cls(fd)
