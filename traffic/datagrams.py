"""Datagrams: UDP (IPv4, IPv6) and AF_UNIX datagrams, each with its address.

A :class:`Datagrams` transit transfers whole datagrams, many per system
call where the kernel batches them (``recvmmsg``/``sendmmsg``).  Its
resource is a :class:`DatagramArray`: a run of records in one buffer, each
a fixed header (capacity, length, flags, address) followed by room for the
payload.  For input, make one with :meth:`DatagramArray.receiving` (how
many datagrams, how large each may be); for output, with
:meth:`DatagramArray.sending` from ``(payload, address)`` pairs.

Nothing is cut silently: a datagram longer than its record's capacity is
delivered with ``truncated`` set and its real ``length``.  Errors that
belong to one datagram (a refusal reported by ICMP, EMSGSIZE, an
unreachable address) are *faults*, as for accept: the transit carries on,
the resource is released, and an output's refused datagram is the first
one after those transferred.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import sys
from collections import deque
from collections.abc import Iterable
from typing import Any, NamedTuple

from ._base._checks import Polarity
from ._base._transit import Transit, wrap_socketpair
from ._traffic import ffi, lib
from .errors import TransitClosedError, TransitError

__all__ = [
    "Datagram",
    "DatagramArray",
    "Datagrams",
    "Inbox",
    "decode_address",
    "encode_address",
]

#: The header of every record (``tr_datagram`` in traffic.h).
HEADER = int(ffi.sizeof("tr_datagram"))
#: Room for an address in a record: a ``struct sockaddr_storage``.
ADDRESS_SIZE = int(lib.TR_DG_ADDRESS)
_ALIGN = int(lib.TR_DG_ALIGN)
_FIELDS = struct.Struct("=IIII")  # capacity, length, flags, addrlen
_ADDRESS_AT = _FIELDS.size

#: The largest payload a UDP datagram can carry (IPv6 without jumbograms;
#: IPv4's is 65,507).  AF_UNIX datagrams may be larger.
MAX_UDP_PAYLOAD = 65527

# The BSDs (and macOS) lead every sockaddr with a length byte and a one-byte
# family; Linux with a two-byte family.  Only the Linux layout is tested here.
_BSD_SOCKADDR = sys.platform.startswith(("darwin", "freebsd", "netbsd", "openbsd", "dragonfly"))
_SUN_PATH = 104 if _BSD_SOCKADDR else 108


def _record_length(capacity: int) -> int:
    return HEADER + (capacity + _ALIGN - 1) // _ALIGN * _ALIGN


def _family_prefix(family: int, length: int) -> bytes:
    if _BSD_SOCKADDR:
        return struct.pack("BB", length, family)
    return struct.pack("=H", family)


def encode_address(family: int, address: Any) -> bytes:
    """A ``struct sockaddr`` for ``address`` in ``family``.

    ``(host, port)`` or ``(host, port, flowinfo, scope_id)`` with a numeric
    host for AF_INET and AF_INET6 (names are resolved by the layers above,
    never here: resolution may block); a path (str or bytes; a leading NUL
    for Linux's abstract namespace) for AF_UNIX.  Raises ``ValueError`` or
    ``TypeError`` for an address that cannot be one of ``family``.
    """
    if family == socket.AF_INET:
        host, port = _host_port(address, 2)
        try:
            packed = socket.inet_pton(socket.AF_INET, host)
        except OSError:
            raise ValueError(f"{host!r} is not a numeric IPv4 address") from None
        return _family_prefix(family, 16) + struct.pack("!H", port) + packed + bytes(8)
    if family == socket.AF_INET6:
        host, port = _host_port(address, 4)
        flowinfo = int(address[2]) if len(address) > 2 else 0
        scope_id = int(address[3]) if len(address) > 3 else 0
        if "%" in host:
            host, _, scope = host.partition("%")
            scope_id = int(scope) if scope.isdigit() else socket.if_nametoindex(scope)
        try:
            packed = socket.inet_pton(socket.AF_INET6, host)
        except OSError:
            raise ValueError(f"{host!r} is not a numeric IPv6 address") from None
        return (
            _family_prefix(family, 28)
            + struct.pack("!HI", port, flowinfo)
            + packed
            + struct.pack("=I", scope_id)
        )
    if family == socket.AF_UNIX:
        if not isinstance(address, (str, bytes, os.PathLike)):
            raise TypeError(f"an AF_UNIX address is a path, not {type(address).__name__}")
        path = os.fsencode(address)
        if not path.startswith(b"\0"):
            path += b"\0"
        if len(path) > _SUN_PATH:
            raise ValueError(f"AF_UNIX path too long ({len(path)} bytes, at most {_SUN_PATH})")
        prefix = 2
        return _family_prefix(family, prefix + len(path)) + path
    raise ValueError(f"datagrams travel over AF_INET, AF_INET6 or AF_UNIX, not family {family}")


def _host_port(address: Any, most: int) -> tuple[str, int]:
    if not isinstance(address, tuple) or not 2 <= len(address) <= most:
        raise TypeError(f"an IP address is a (host, port) tuple, not {address!r}")
    host, port = address[0], address[1]
    if isinstance(host, bytes):
        host = host.decode("ascii")
    if not isinstance(host, str):
        raise TypeError(f"a host is a str, not {type(host).__name__}")
    if not isinstance(port, int) or not 0 <= port <= 0xFFFF:
        raise ValueError(f"a port is an int from 0 to 65535, not {port!r}")
    return host, port


def decode_address(raw: bytes) -> Any:
    """The Python form of a ``struct sockaddr``, as the socket module gives it.

    ``(host, port)`` for AF_INET, ``(host, port, flowinfo, scope_id)`` for
    AF_INET6, a path for AF_UNIX (``str``; ``bytes`` for Linux's abstract
    namespace; ``""`` for an unbound sender), ``None`` for no address.
    """
    if len(raw) < 2:
        return None
    family = raw[1] if _BSD_SOCKADDR else struct.unpack_from("=H", raw)[0]
    if family == socket.AF_INET and len(raw) >= 8:
        (port,) = struct.unpack_from("!H", raw, 2)
        return socket.inet_ntop(socket.AF_INET, raw[4:8]), port
    if family == socket.AF_INET6 and len(raw) >= 28:
        port, flowinfo = struct.unpack_from("!HI", raw, 2)
        (scope_id,) = struct.unpack_from("=I", raw, 24)
        return socket.inet_ntop(socket.AF_INET6, raw[8:24]), port, flowinfo, scope_id
    if family == socket.AF_UNIX:
        path = raw[2:]
        if path.startswith(b"\0"):
            return bytes(path)
        return os.fsdecode(path.split(b"\0", 1)[0])
    return bytes(raw)  # a family we do not know: the raw address


class Datagram(NamedTuple):
    """One datagram: its payload, its address, and its real length.

    ``length`` is more than ``len(payload)`` when the datagram did not fit
    its record and was truncated: see :attr:`truncated`.
    """

    payload: bytes
    address: Any
    length: int

    @property
    def truncated(self) -> bool:
        """Whether the datagram was longer than the room it was received into."""
        return self.length > len(self.payload)


class DatagramArray:
    """A transfer resource of datagram records (the layout is ``tr_datagram``
    in traffic.h).  ``buffer`` is the memory the core transfers with."""

    __slots__ = ("_offsets", "buffer", "family")

    buffer: bytearray
    family: int
    _offsets: list[int]

    def __init__(self, buffer: bytearray, offsets: list[int], family: int) -> None:
        self.buffer = buffer
        self._offsets = offsets
        self.family = family

    @classmethod
    def receiving(
        cls, count: int, capacity: int = MAX_UDP_PAYLOAD, family: int = socket.AF_UNSPEC
    ) -> DatagramArray:
        """Room for ``count`` datagrams of up to ``capacity`` bytes each."""
        if not isinstance(count, int) or not isinstance(capacity, int):
            raise TypeError("count and capacity are ints")
        if count < 1:
            raise ValueError(f"count must be >= 1, not {count}")
        if not 0 <= capacity <= 0xFFFFFFFF - _ALIGN:
            raise ValueError(f"capacity must be from 0 to 2**32 - 9, not {capacity}")
        stride = _record_length(capacity)
        buffer = bytearray(stride * count)
        head = _FIELDS.pack(capacity, 0, 0, 0)
        offsets = list(range(0, stride * count, stride))
        for at in offsets:
            buffer[at : at + _FIELDS.size] = head
        return cls(buffer, offsets, family)

    @classmethod
    def sending(cls, datagrams: Iterable[tuple[Any, Any]], family: int) -> DatagramArray:
        """Records for ``(payload, address)`` pairs; ``address`` None sends
        to a connected socket's peer.  See :func:`encode_address`."""
        parts: list[bytearray] = []
        offsets: list[int] = []
        at = 0
        for item in datagrams:
            if not (isinstance(item, tuple) and len(item) == 2):
                raise TypeError(f"a datagram to send is a (payload, address) pair, not {item!r}")
            payload, address = item
            try:
                data = memoryview(payload).cast("B")
            except TypeError:
                raise TypeError(
                    f"a datagram's payload is bytes-like, not {type(payload).__name__}"
                ) from None
            raw = b"" if address is None else encode_address(family, address)
            size = data.nbytes
            record = bytearray(_record_length(size))
            record[: _FIELDS.size] = _FIELDS.pack(size, size, 0, len(raw))
            record[_ADDRESS_AT : _ADDRESS_AT + len(raw)] = raw
            record[HEADER : HEADER + size] = data
            parts.append(record)
            offsets.append(at)
            at += len(record)
        return cls(bytearray(b"".join(parts)), offsets, family)

    def __len__(self) -> int:
        return len(self._offsets)

    def __getitem__(self, index: int) -> Datagram:
        return self._read(self._offsets[index])

    def _read(self, at: int) -> Datagram:
        capacity, length, _, addrlen = _FIELDS.unpack_from(self.buffer, at)
        start = at + HEADER
        payload = bytes(self.buffer[start : start + min(capacity, length)])
        raw = bytes(self.buffer[at + _ADDRESS_AT : at + _ADDRESS_AT + min(addrlen, ADDRESS_SIZE)])
        return Datagram(payload, decode_address(raw) if raw else None, length)

    def between(self, start: int, stop: int) -> list[Datagram]:
        """The datagrams whose records lie in bytes ``[start, stop)``: a
        transfer's slice, as a cycle's report or a request's count gives it."""
        return [self._read(at) for at in self._offsets if start <= at < stop]

    def __repr__(self) -> str:
        return f"<DatagramArray of {len(self)} records, {len(self.buffer)} bytes>"


class Datagrams(Transit):
    """A transit of datagrams over a SOCK_DGRAM socket (UDP or AF_UNIX).

    Its resource is a :class:`DatagramArray`.  An input transit receives
    whole datagrams into its records, with each sender's address; an output
    transit sends its records, each to its address (or the connected peer).
    In a synchronous cycle :meth:`datagrams` lists what moved; in a
    threaded Traffic, :meth:`Traffic.request` returns (or completes with)
    the bytes of whole records transferred: ``array.between(0, n)``.
    """

    __slots__ = ("_dgview", "_family", "_polarity")

    _type = lib.TR_DATAGRAMS
    _family: int
    _dgview: list[Datagram]

    @classmethod
    def _create(cls, fd: int, polarity: int, sibling: Transit | None = None) -> Datagrams:
        try:
            transit = super()._create(fd, polarity, sibling)
        except TransitError as exc:
            reasons = {
                errno.ENOTSOCK: "it is not a socket",
                errno.EPROTOTYPE: "it is not a SOCK_DGRAM socket",
            }
            if exc.errno in reasons:
                raise TransitError(
                    exc.errno,
                    f"a Datagrams transit needs a datagram socket: descriptor {fd} "
                    f"cannot be one, {reasons[exc.errno]}",
                ) from None
            raise
        transit._dgview = []
        transit._family = socket.AF_UNSPEC
        return transit

    @classmethod
    def from_fd(cls, fd: int, polarity: Polarity | int) -> Datagrams:
        """A transit over a datagram socket's descriptor.  Takes ownership."""
        transit = cls._create(fd, int(polarity))
        transit._polarity = int(polarity)
        transit._family = _family_of(fd)
        return transit

    @classmethod
    def wrap(cls, sock: socket.socket) -> tuple[Datagrams, Datagrams]:
        """(input, output) transits over a datagram socket, which is detached."""
        if not isinstance(sock, socket.socket):
            raise TypeError(f"wrap() takes a socket.socket, not {type(sock).__name__}")
        if sock.fileno() < 0:
            raise TransitClosedError("the socket is closed")
        family = sock.family
        receiver, sender = cls._pair(sock.fileno())
        sock.detach()
        receiver._family = sender._family = family
        return receiver, sender

    @classmethod
    def bind(
        cls, address: Any, family: int | None = None
    ) -> tuple[tuple[Datagrams, Datagrams], Any]:
        """A datagram socket bound to ``address`` (a numeric ``(host, port)``,
        port 0 for any, or an AF_UNIX path): ((input, output), bound address)."""
        if family is None:
            if isinstance(address, (str, bytes, os.PathLike)):
                family = socket.AF_UNIX
            else:
                family = socket.AF_INET6 if ":" in str(address[0]) else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.bind(address)
            bound = sock.getsockname()
            return cls.wrap(sock), bound
        except BaseException:
            sock.close()
            raise

    @classmethod
    def socketpair(
        cls,
    ) -> tuple[tuple[Datagrams, Datagrams], tuple[Datagrams, Datagrams]]:
        """A connected AF_UNIX datagram pair: ((input, output), (input, output))."""
        return wrap_socketpair(cls.wrap, *socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM))

    @property
    def family(self) -> int:
        """The socket's address family (``socket.AF_INET``, ``AF_INET6``, ``AF_UNIX``)."""
        return self._family

    def datagrams(self) -> list[Datagram]:
        """The datagrams that moved in this cycle."""
        return list(self._dgview)

    def _buffer(self, resource: object) -> tuple[memoryview, int]:
        if not isinstance(resource, DatagramArray):
            raise TypeError(
                "a Datagrams transit's resource is a DatagramArray "
                "(DatagramArray.receiving() or DatagramArray.sending())"
            )
        memory, size = super()._buffer(resource.buffer)
        records = ffi.from_buffer(resource.buffer)
        damaged = lib.tr_datagrams_check(records, size, self._polarity) < 0
        ffi.release(records)  # before anything raises: see traffic._base._requests
        if damaged:
            raise ValueError("the DatagramArray's records are damaged")
        return memory, size

    def _pinned(self, resource: object) -> object:
        assert isinstance(resource, DatagramArray)
        return resource.buffer

    def _take_report(self, report: Any, events: int) -> None:
        resource = self._resource
        if events & lib.TR_EV_TRANSFER and isinstance(resource, DatagramArray):
            self._dgview = resource.between(report.start, report.stop)
        else:
            self._dgview = []

    def _forget_report(self) -> None:
        self._dgview = []


def _family_of(fd: int) -> int:
    probe = socket.socket(fileno=fd)
    try:
        return int(probe.family)
    finally:
        probe.detach()


class Inbox:
    """Datagrams received in batches and handed out one at a time: the
    receiving half of the trio and anyio datagram sockets.

    One :class:`DatagramArray` of ``count`` records, made at the first
    receive and reused: a request fills some of its records, :meth:`deliver`
    copies them out, and :meth:`take` hands them out in order.  Datagrams
    whose receive was cancelled after they arrived stay here for the next
    receive: nothing received is dropped until the socket closes.
    """

    __slots__ = ("array", "capacity", "count", "pin", "queue")

    def __init__(self, count: int, capacity: int) -> None:
        self.count = count
        self.capacity = capacity
        self.array: DatagramArray | None = None
        self.pin: Any = None
        self.queue: deque[Datagram] = deque()

    def memory(self) -> tuple[DatagramArray, Any, int]:
        """The array to receive into, a cffi pin of its buffer, and its size."""
        if self.array is None:
            self.array = DatagramArray.receiving(self.count, self.capacity)
            # Never released: a bytearray, which the collector does not track.
            self.pin = ffi.from_buffer(self.array.buffer, require_writable=True)
        return self.array, self.pin, len(self.array.buffer)

    def deliver(self, transferred: int) -> None:
        """Queue the datagrams of a request that transferred ``transferred`` bytes."""
        if self.array is not None and transferred > 0:
            self.queue.extend(self.array.between(0, transferred))

    def take(self) -> Datagram:
        """The oldest datagram received; raises ``OSError(EMSGSIZE)`` for
        one that did not fit (its first ``capacity`` bytes are dropped with
        it: a datagram is delivered whole or not at all)."""
        datagram = self.queue.popleft()
        if datagram.truncated:
            raise OSError(
                errno.EMSGSIZE,
                f"a datagram of {datagram.length} bytes from {datagram.address!r} did not "
                f"fit in {len(datagram.payload)} bytes (the socket's max_size)",
            )
        return datagram

    def clear(self) -> None:
        self.queue.clear()

    def __bool__(self) -> bool:
        return bool(self.queue)


def outgoing(data: Any, address: Any, family: int) -> tuple[DatagramArray, Any, int]:
    """A one-record array for ``data`` to ``address`` (numeric; None: the
    connected peer), a cffi pin of its buffer, and its size."""
    array = DatagramArray.sending([(data, address)], family)
    # Not released: a bytearray of its own, which the collector does not track.
    return array, ffi.from_buffer(array.buffer), len(array.buffer)


def udp_socket(
    family: int, local_address: Any, remote_address: Any, reuse_port: bool
) -> socket.socket:
    """A non-blocking UDP socket, bound to ``local_address`` and connected to
    ``remote_address`` where given (both numeric: the layers resolve)."""
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if local_address is not None:
            sock.bind(local_address)
        if remote_address is not None:
            sock.connect(remote_address)
    except BaseException:
        sock.close()
        raise
    return sock


def is_numeric(family: int, address: Any) -> bool:
    """Whether ``address`` needs no name resolution to be sent to."""
    if family not in (socket.AF_INET, socket.AF_INET6) or not isinstance(address, tuple):
        return True
    host = address[0] if address else None
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    if not isinstance(host, str):
        return True  # encode_address() says what is wrong with it
    try:
        socket.inet_pton(family, host.partition("%")[0])
    except OSError:
        return False
    return True
