"""traffic: event driven I/O where the light is always green.

traffic turns *can-transfer* events into *did-transfer* events: its C core
subscribes to kernel events and performs the transfer itself, then hands the
program completed transfers.
"""

from . import project
from .errors import TransitClosedError, TransitError
from .libkqueue import Completion, Octets, Polarity, Sockets, Traffic, Transit, live_objects

__version__ = project.version

__all__ = [
    "Completion",
    "Octets",
    "Polarity",
    "Sockets",
    "Traffic",
    "Transit",
    "TransitClosedError",
    "TransitError",
    "live_objects",
]
