"""traffic: event driven I/O where the light is always green.

traffic turns *can-transfer* events into *did-transfer* events: its C core
subscribes to kernel events and performs the transfer itself, then hands the
program completed transfers.
"""

from . import project
from .datagrams import Datagram, DatagramArray, Datagrams
from .errors import TransitClosedError, TransitError
from .libkqueue import (
    Completion,
    Descriptors,
    Octets,
    Polarity,
    Sockets,
    Traffic,
    Transit,
    backend,
    live_objects,
)
from .trio_datagrams import (
    TrafficConnectedDatagramSocket,
    TrafficDatagramSocket,
    open_connected_udp_socket,
    open_udp_socket,
)
from .trio_integration import (
    SocketView,
    TrafficListener,
    TrafficStream,
    accept,
    current_traffic,
    open_tcp_listeners,
    open_tcp_stream,
    open_unix_listener,
    open_unix_stream,
    receive_fds,
    recv_into,
    send_all,
    send_fds,
    serve_listeners,
    serve_tcp,
    serve_unix,
)

__version__ = project.version

__all__ = [
    "Completion",
    "Datagram",
    "DatagramArray",
    "Datagrams",
    "Descriptors",
    "Octets",
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
    "recv_into",
    "send_all",
    "send_fds",
    "serve_listeners",
    "serve_tcp",
    "serve_unix",
]
