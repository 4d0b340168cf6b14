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
    # What _TRIO_LAYER resolves on first use, for type checkers.  The
    # ``name as name`` form re-exports each name: mypy reads only the
    # literal strings of __all__, not its ``*_TRIO_LAYER``.
    # tests/test_faces.py checks these imports against _TRIO_LAYER.
    from .trio_datagrams import TrafficConnectedDatagramSocket as TrafficConnectedDatagramSocket
    from .trio_datagrams import TrafficDatagramSocket as TrafficDatagramSocket
    from .trio_datagrams import open_connected_udp_socket as open_connected_udp_socket
    from .trio_datagrams import open_udp_socket as open_udp_socket
    from .trio_integration import SocketView as SocketView
    from .trio_integration import TrafficListener as TrafficListener
    from .trio_integration import TrafficStream as TrafficStream
    from .trio_integration import accept as accept
    from .trio_integration import current_traffic as current_traffic
    from .trio_integration import open_tcp_listeners as open_tcp_listeners
    from .trio_integration import open_tcp_stream as open_tcp_stream
    from .trio_integration import open_unix_listener as open_unix_listener
    from .trio_integration import open_unix_stream as open_unix_stream
    from .trio_integration import receive_fds as receive_fds
    from .trio_integration import receive_file as receive_file
    from .trio_integration import recv_into as recv_into
    from .trio_integration import send_all as send_all
    from .trio_integration import send_fds as send_fds
    from .trio_integration import send_file as send_file
    from .trio_integration import serve_listeners as serve_listeners
    from .trio_integration import serve_tcp as serve_tcp
    from .trio_integration import serve_unix as serve_unix

# The trio layer's names, imported on first use (PEP 562): a program that
# uses only the synchronous cycle or the anyio streams on asyncio never
# imports trio.  The one list of them: __all__ and __dir__ take it from here.
_TRIO_LAYER = {
    "TrafficConnectedDatagramSocket": "trio_datagrams",
    "TrafficDatagramSocket": "trio_datagrams",
    "open_connected_udp_socket": "trio_datagrams",
    "open_udp_socket": "trio_datagrams",
    **dict.fromkeys(
        [
            "SocketView",
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
    "Sockets",
    "Traffic",
    "Transit",
    "TransitClosedError",
    "TransitError",
    "backend",
    "live_objects",
    *_TRIO_LAYER,
]
