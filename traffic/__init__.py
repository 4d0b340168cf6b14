"""traffic: event driven I/O where the light is always green.

traffic turns *can-transfer* events into *did-transfer* events: its C core
subscribes to kernel events and performs the transfer itself, then hands the
program completed transfers.
"""

import importlib
from typing import TYPE_CHECKING, Any

from . import project
from .datagrams import Datagram, DatagramArray, Datagrams
from .errors import FileEndedError, OutOfRangeError, TransitClosedError, TransitError
from .libkqueue import (
    Completion,
    Descriptors,
    FileRegion,
    Octets,
    Polarity,
    Sockets,
    Traffic,
    Transit,
    backend,
    live_objects,
)

if TYPE_CHECKING:
    from ._sockets import SocketView
    from .trio_datagrams import (
        TrafficConnectedDatagramSocket,
        TrafficDatagramSocket,
        open_connected_udp_socket,
        open_udp_socket,
    )
    from .trio_integration import (
        TrafficListener,
        TrafficStream,
        accept,
        current_traffic,
        open_tcp_listeners,
        open_tcp_stream,
        open_unix_listener,
        open_unix_stream,
        receive_fds,
        receive_file,
        recv_into,
        send_all,
        send_fds,
        send_file,
        serve_listeners,
        serve_tcp,
        serve_unix,
    )

# The trio layer's names, imported on first use (PEP 562): a program that
# uses only the synchronous cycle or the anyio streams on asyncio never
# imports trio.
_TRIO_LAYER = {
    "SocketView": "_sockets",
    "TrafficConnectedDatagramSocket": "trio_datagrams",
    "TrafficDatagramSocket": "trio_datagrams",
    "open_connected_udp_socket": "trio_datagrams",
    "open_udp_socket": "trio_datagrams",
    **dict.fromkeys(
        [
            "TrafficListener",
            "TrafficStream",
            "accept",
            "current_traffic",
            "open_tcp_listeners",
            "open_tcp_stream",
            "open_unix_listener",
            "open_unix_stream",
            "receive_fds",
            "receive_file",
            "recv_into",
            "send_all",
            "send_fds",
            "send_file",
            "serve_listeners",
            "serve_tcp",
            "serve_unix",
        ],
        "trio_integration",
    ),
}


def __getattr__(name: str) -> Any:
    module = _TRIO_LAYER.get(name)
    if module is None:
        raise AttributeError(f"module 'traffic' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # found directly from now on
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_TRIO_LAYER])


__version__ = project.version

__all__ = [
    "Completion",
    "Datagram",
    "DatagramArray",
    "Datagrams",
    "Descriptors",
    "FileEndedError",
    "FileRegion",
    "Octets",
    "OutOfRangeError",
    "Polarity",
    "SocketView",
    "Sockets",
    "Traffic",
    "TrafficConnectedDatagramSocket",
    "TrafficDatagramSocket",
    "TrafficListener",
    "TrafficStream",
    "Transit",
    "TransitClosedError",
    "TransitError",
    "accept",
    "backend",
    "current_traffic",
    "live_objects",
    "open_connected_udp_socket",
    "open_tcp_listeners",
    "open_tcp_stream",
    "open_udp_socket",
    "open_unix_listener",
    "open_unix_stream",
    "receive_fds",
    "receive_file",
    "recv_into",
    "send_all",
    "send_fds",
    "send_file",
    "serve_listeners",
    "serve_tcp",
    "serve_unix",
]
