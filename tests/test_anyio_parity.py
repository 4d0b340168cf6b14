"""traffic's anyio factories against anyio's own, argument by argument.

Each case runs the same scenario with anyio's factory and with traffic's
(``traffic.anyio_backend``, ``traffic.anyio_datagrams``) and compares what
a user sees: the typed attributes (``local_address``, ``remote_address``),
the data and its sender, or the exception's type.  The differences traffic
keeps on purpose are tested as such, each with the reason (and listed in
docs/anyio.rst): a port outside 0-65535 is refused before any socket is
made, and ``SOCK_SEQPACKET`` is not a byte stream.

Linux abstract addresses (a leading NUL) are bound and connected as ``str``
and as ``bytes``; the kernel hands them back as ``bytes`` whichever was
given, and an unbound AF_UNIX socket's name is ``''``.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import socket
import stat
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import anyio.abc
import pytest
from anyio.abc import SocketAttribute
from anyio_support import BACKENDS

import traffic
import traffic.anyio_backend as tab
import traffic.anyio_datagrams as tad

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(
        not sys.platform.startswith("linux"), reason="abstract addresses are Linux's"
    ),
]

#: (module of the stream factories, module of the datagram factories)
IMPLEMENTATIONS = {"anyio": (anyio, anyio), "traffic": (tab, tad)}


@pytest.fixture(params=BACKENDS)
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    return request.param


Scenario = Callable[[ModuleType, ModuleType, str], Awaitable[Any]]


async def outcome(scenario: Scenario, implementation: str, tag: str) -> Any:
    """What the scenario gives with one implementation: its result, or the
    exception's type.  ``tag`` makes the scenario's names unique (abstract
    names are the whole machine's): the process, the implementation."""
    streams, datagrams = IMPLEMENTATIONS[implementation]
    unique = f"traffic-parity-{os.getpid()}-{tag}-{implementation}"
    try:
        with anyio.fail_after(10):
            return ("ok", await scenario(streams, datagrams, unique))
    except Exception as exc:
        return ("raised", type(exc))


async def assert_same(scenario: Scenario, tag: str) -> Any:
    theirs = await outcome(scenario, "anyio", tag)
    ours = await outcome(scenario, "traffic", tag)
    assert ours == theirs
    return ours


def strip(address: Any, tag: str) -> Any:
    """An address with the scenario's unique part taken out, for comparing."""
    if isinstance(address, bytes):
        return address.replace(os.fsencode(tag), b"<tag>")
    if isinstance(address, str):
        return address.replace(tag, "<tag>")
    return address


def addresses(obj: anyio.TypedAttributeProvider, tag: str) -> dict[str, Any]:
    found = {}
    for name in ("local_address", "remote_address"):
        with contextlib.suppress(anyio.TypedAttributeLookupError):
            found[name] = strip(obj.extra(getattr(SocketAttribute, name)), tag)
    return found


def abstract(tag: str, as_bytes: bool) -> str | bytes:
    """The abstract address named ``tag``, as ``str`` or as ``bytes``."""
    name = f"\0{tag}"
    return os.fsencode(name) if as_bytes else name


# UNIX streams


@pytest.mark.parametrize("as_bytes", [False, True], ids=["str", "bytes"])
@pytest.mark.parametrize("connect_as_bytes", [False, True], ids=["connect-str", "connect-bytes"])
async def test_unix_stream_on_an_abstract_address(as_bytes: bool, connect_as_bytes: bool) -> None:
    async def scenario(streams: ModuleType, _: ModuleType, tag: str) -> Any:
        async with (
            await streams.create_unix_listener(abstract(tag, as_bytes)) as listener,
            await streams.connect_unix(abstract(tag, connect_as_bytes)) as client,
            await listener.accept() as server,
        ):
            await client.send(b"ping")
            assert await server.receive() == b"ping"
            return addresses(listener, tag), addresses(client, tag), addresses(server, tag)

    result = await assert_same(scenario, "stream")
    listener, client, server = result[1]
    # The kernel names an abstract socket in bytes, whatever it was bound with.
    assert listener == {"local_address": b"\0<tag>"}
    assert client == {"local_address": "", "remote_address": b"\0<tag>"}
    assert server == {"local_address": b"\0<tag>", "remote_address": ""}


async def test_connecting_to_an_abstract_name_nobody_holds_is_refused() -> None:
    async def scenario(streams: ModuleType, _: ModuleType, tag: str) -> Any:
        await streams.connect_unix(f"\0{tag}-nobody")

    assert await assert_same(scenario, "nobody") == ("raised", ConnectionRefusedError)


async def test_listener_mode_on_an_abstract_address_is_refused_as_anyio_refuses_it() -> None:
    # anyio gives the mode to os.chmod(), which refuses a path with a NUL.
    async def scenario(streams: ModuleType, _: ModuleType, tag: str) -> Any:
        async with await streams.create_unix_listener(f"\0{tag}", mode=0o600):
            pass

    assert await assert_same(scenario, "mode") == ("raised", ValueError)


@pytest.mark.parametrize("form", ["str", "bytes", "PathLike"])
async def test_unix_listener_paths_and_mode(tmp_path: Path, form: str) -> None:
    async def scenario(streams: ModuleType, _: ModuleType, tag: str) -> Any:
        path = tmp_path / tag
        given: Any = {"str": str(path), "bytes": os.fsencode(path), "PathLike": path}[form]
        async with (
            await streams.create_unix_listener(given, mode=0o600) as listener,
            await streams.connect_unix(given) as client,
        ):
            mode = stat.S_IMODE(os.stat(path).st_mode)
            return addresses(listener, tag), addresses(client, tag), mode

    listener, client, mode = (await assert_same(scenario, form))[1]
    assert mode == 0o600
    # A filesystem name comes back as str, also when it was given as bytes.
    assert listener == {"local_address": f"{tmp_path}/<tag>"}
    assert client == {"local_address": "", "remote_address": f"{tmp_path}/<tag>"}


async def test_a_socket_left_at_the_path_is_replaced_and_a_file_is_not(tmp_path: Path) -> None:
    async def leftover(streams: ModuleType, _: ModuleType, tag: str) -> Any:
        path = str(tmp_path / tag)
        with socket.socket(socket.AF_UNIX) as old:
            old.bind(path)
        async with await streams.create_unix_listener(path) as listener:
            return strip(listener.extra(SocketAttribute.local_address), tag)

    async def regular_file(streams: ModuleType, _: ModuleType, tag: str) -> Any:
        path = tmp_path / tag
        path.write_text("not a socket")
        try:
            await streams.create_unix_listener(str(path))
        finally:
            assert path.read_text() == "not a socket"

    assert (await assert_same(leftover, "leftover"))[0] == "ok"
    assert await assert_same(regular_file, "file") == ("raised", OSError)


@pytest.mark.parametrize("factory", ["connect_unix", "create_unix_listener"])
async def test_seqpacket_stays_a_documented_refusal(tmp_path: Path, factory: str) -> None:
    """traffic's transits are byte streams: they would merge SOCK_SEQPACKET's records."""
    with pytest.raises(NotImplementedError):
        await getattr(tab, factory)(str(tmp_path / "s"), kind=socket.SOCK_SEQPACKET)


# UNIX datagrams


@pytest.mark.parametrize("as_bytes", [False, True], ids=["str", "bytes"])
@pytest.mark.parametrize("send_as_bytes", [False, True], ids=["send-str", "send-bytes"])
async def test_unix_datagrams_on_abstract_addresses(as_bytes: bool, send_as_bytes: bool) -> None:
    async def scenario(_: ModuleType, datagrams: ModuleType, tag: str) -> Any:
        target = abstract(tag, send_as_bytes)
        sender_name = abstract(f"{tag}-sender", as_bytes)
        async with await datagrams.create_unix_datagram_socket(
            local_path=abstract(tag, as_bytes)
        ) as receiver:
            async with await datagrams.create_unix_datagram_socket() as unbound:
                await unbound.sendto(b"one", target)
                first = await receiver.receive()
                unbound_name = addresses(unbound, tag)
            async with await datagrams.create_connected_unix_datagram_socket(
                target, local_path=sender_name
            ) as connected:
                await connected.send(b"two")
                data, sender = await receiver.receive()
                return (
                    addresses(receiver, tag),
                    unbound_name,
                    first,
                    addresses(connected, tag),
                    (data, strip(sender, tag)),
                )

    receiver, unbound, first, connected, second = (await assert_same(scenario, "dgram"))[1]
    assert receiver == {"local_address": b"\0<tag>"}
    assert unbound == {"local_address": ""}
    # A datagram from an unbound socket has no sender name at all.
    assert first == (b"one", None)
    assert connected == {"local_address": b"\0<tag>-sender", "remote_address": b"\0<tag>"}
    assert second == (b"two", b"\0<tag>-sender")


async def test_datagram_mode_on_an_abstract_address_is_refused_as_anyio_refuses_it() -> None:
    async def scenario(_: ModuleType, datagrams: ModuleType, tag: str) -> Any:
        async with await datagrams.create_unix_datagram_socket(
            local_path=f"\0{tag}", local_mode=0o600
        ):
            pass

    assert await assert_same(scenario, "dmode") == ("raised", ValueError)


# anyio's trio backend leaves the socket of a failed connect to the garbage
# collector (its asyncio backend closes it); traffic's descriptors are
# still checked by the leak check after the test.
@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_connected_datagram_socket_to_an_abstract_name_nobody_holds() -> None:
    async def scenario(_: ModuleType, datagrams: ModuleType, tag: str) -> Any:
        await datagrams.create_connected_unix_datagram_socket(f"\0{tag}-nobody")

    assert await assert_same(scenario, "dnobody") == ("raised", ConnectionRefusedError)


@pytest.mark.parametrize("form", ["str", "bytes", "PathLike"])
async def test_datagram_paths_mode_and_leftover_socket(tmp_path: Path, form: str) -> None:
    async def scenario(_: ModuleType, datagrams: ModuleType, tag: str) -> Any:
        path = tmp_path / tag
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as old:
            old.bind(str(path))  # left behind: the factory removes it
        given: Any = {"str": str(path), "bytes": os.fsencode(path), "PathLike": path}[form]
        async with (
            await datagrams.create_unix_datagram_socket(
                local_path=given, local_mode=0o640
            ) as receiver,
            await datagrams.create_connected_unix_datagram_socket(given) as sender,
        ):
            await sender.send(b"x")
            data, _ = await receiver.receive()
            return data, stat.S_IMODE(os.stat(path).st_mode)

    assert (await assert_same(scenario, form))[1] == (b"x", 0o640)


# Ports


@pytest.mark.parametrize("port", [70000, -1])
async def test_a_port_out_of_range_is_refused_before_any_socket(port: int) -> None:
    """anyio lets ``OverflowError`` out of a connection attempt (in a group)
    or, on uvloop and for UDP, uses the port modulo 65536; traffic refuses
    the port at once, with an error that is both a ``ValueError`` and the
    ``OverflowError`` the socket module raises."""
    calls: list[Callable[[], Awaitable[Any]]] = [
        lambda: tab.connect_tcp("127.0.0.1", port),
        lambda: tab.connect_tcp("127.0.0.1", 80, local_host="127.0.0.1", local_port=port),
        lambda: tab.create_tcp_listener(local_host="127.0.0.1", local_port=port),
        lambda: tad.create_udp_socket(local_host="127.0.0.1", local_port=port),
        lambda: tad.create_connected_udp_socket("127.0.0.1", port),
        lambda: tad.create_connected_udp_socket("127.0.0.1", 53, local_port=port),
    ]
    for call in calls:
        with pytest.raises(traffic.OutOfRangeError) as caught:
            await call()
        assert isinstance(caught.value, ValueError)
        assert isinstance(caught.value, OverflowError)


async def test_a_port_given_as_a_string_is_resolved_as_anyio_resolves_it() -> None:
    async def scenario(streams: ModuleType, _: ModuleType, tag: str) -> Any:
        listeners = await streams.create_tcp_listener(local_host="127.0.0.1")
        async with listeners:
            port = listeners.extra(SocketAttribute.local_port)
            async with await streams.connect_tcp("127.0.0.1", str(port)) as client:
                return client.extra(SocketAttribute.remote_port) == port

    assert await assert_same(scenario, "strport") == ("ok", True)
    with pytest.raises(traffic.OutOfRangeError):
        await tab.connect_tcp("127.0.0.1", "70000")
    with pytest.raises(socket.gaierror):
        await tab.connect_tcp("127.0.0.1", "no-such-service")


# Hosts and the listener's arguments


@pytest.mark.parametrize(
    "host", [ipaddress.IPv4Address("127.0.0.1"), ipaddress.IPv6Address("::1")], ids=str
)
async def test_ip_address_objects_as_hosts(host: Any) -> None:
    async def scenario(streams: ModuleType, datagrams: ModuleType, tag: str) -> Any:
        listeners = await streams.create_tcp_listener(local_host=host, backlog=10**9)
        async with listeners:
            port = listeners.extra(SocketAttribute.local_port)
            async with await streams.connect_tcp(host, port, local_host=host) as client:
                stream_ok = client.extra(SocketAttribute.remote_address)[0] == str(host)
        async with await datagrams.create_udp_socket(local_host=host) as receiver:
            port = receiver.extra(SocketAttribute.local_port)
            async with await datagrams.create_connected_udp_socket(
                host, port, local_host=host
            ) as sender:
                await sender.send(b"d")
                data, (sender_host, _) = await receiver.receive()
        return stream_ok, data, sender_host == str(host)

    assert await assert_same(scenario, "hosts") == ("ok", (True, b"d", True))


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6], ids=["inet", "inet6"])
async def test_listener_family_and_reuse_port(family: socket.AddressFamily) -> None:
    async def scenario(streams: ModuleType, _: ModuleType, tag: str) -> Any:
        first = await streams.create_tcp_listener(family=family, reuse_port=True)
        async with first:
            port = first.extra(SocketAttribute.local_port)
            second = await streams.create_tcp_listener(
                family=family, local_port=port, reuse_port=True
            )
            async with second:
                return [
                    (
                        listener.extra(SocketAttribute.family),
                        listener.extra(SocketAttribute.local_port) == port,
                    )
                    for listener in second.listeners
                ]

    outcome = await assert_same(scenario, "reuse")
    assert outcome[0] == "ok" and outcome[1] and all(outcome[1])


# from_socket


def _bound_udp() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    return sock


FROM_SOCKET = {
    "UDPSocket": (tad.TrafficUDPSocket, "unbound udp"),
    "ConnectedUDPSocket": (tad.TrafficConnectedUDPSocket, "unconnected udp"),
    "UNIXDatagramSocket": (tad.TrafficUNIXDatagramSocket, "udp for unix"),
    "ConnectedUNIXDatagramSocket": (tad.TrafficConnectedUNIXDatagramSocket, "unconnected unix"),
}


def _wrong_socket(case: str) -> socket.socket:
    if case == "unbound udp":
        return socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if case in ("unconnected udp", "udp for unix"):
        return _bound_udp()
    return socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)


@pytest.mark.parametrize("name", sorted(FROM_SOCKET))
async def test_datagram_from_socket_checks_as_anyio_checks(name: str) -> None:
    ours, case = FROM_SOCKET[name]
    theirs = getattr(anyio.abc, name)
    for cls in (theirs, ours):
        with _wrong_socket(case) as sock:
            with pytest.raises(ValueError):
                await cls.from_socket(sock)
            assert sock.fileno() >= 0  # refused: still the caller's
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as stream, pytest.raises(ValueError):
            await cls.from_socket(stream)


@pytest.mark.parametrize("unix", [False, True], ids=["SocketStream", "UNIXSocketStream"])
async def test_stream_from_a_descriptor(unix: bool) -> None:
    a, b = socket.socketpair()
    with b:
        cls = tab.TrafficUNIXSocketStream if unix else tab.TrafficSocketStream
        async with await cls.from_socket(a.detach()) as stream:
            await stream.send(b"fd")
            assert b.recv(2) == b"fd"


@pytest.mark.parametrize("fd", [-1, 10**6], ids=["negative", "not open"])
async def test_from_socket_of_a_bad_descriptor(fd: int) -> None:
    for cls in (anyio.abc.SocketStream, tab.TrafficSocketStream):
        with pytest.raises(ValueError):
            await cls.from_socket(fd)


async def test_a_refused_connection_says_what_asyncio_says() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(OSError, match="All connection attempts failed") as caught:
        await tab.connect_tcp("127.0.0.1", port)
    cause = caught.value.__cause__
    assert isinstance(cause, ConnectionRefusedError)
    assert cause.errno == errno.ECONNREFUSED
    assert str(cause) == f"[Errno {errno.ECONNREFUSED}] Connect call failed ('127.0.0.1', {port})"
