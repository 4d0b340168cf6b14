"""The Traffic interface: a Traffic owns a cycle, transits transfer.

The seed's model, kept:

- A :class:`Transit` transfers in one direction (its :class:`Polarity`)
  over one kernel point (a descriptor).  :class:`Octets` moves bytes,
  :class:`Sockets` moves the descriptors of accepted connections,
  :class:`Descriptors` passes descriptors (with bytes) over AF_UNIX sockets.
- A transit is *acquired* into a :class:`Traffic`; then a *transfer
  resource* (a buffer; writable for input) is acquired into the transit.
  The core transfers into or out of it whenever the kernel allows.
- A stream's transit can take a region of a regular file instead
  (:class:`FileRegion`): the core moves the bytes between the socket and
  the file itself.
- ``with traffic:`` opens a *cycle*: a window in which :meth:`Traffic.transfers`
  yields the transits with events.  Each reports what it transferred
  (:meth:`Transit.transfer`, a memoryview slice of its resource, or for a
  file region the range of file offsets that moved), whether it
  is :attr:`~Transit.exhausted` (the resource is used up: flow control by
  starvation) and whether it is :attr:`~Transit.terminated`.  When the cycle
  closes, the event state is reset.  If the body raises before visiting
  every transit, the unvisited events carry over to the next cycle:
  Transfer-Loss is never silent.

Ownership.  Creating a transit from a descriptor or a socket hands the
descriptor to the core (sockets are ``detach()``-ed); only the core closes
it, when the last transit on it terminates.  A resource stays referenced by
the Traffic for as long as the core may touch it.  A transit dropped while
in traffic is terminated, never freed under the core.

Threads.  A Traffic is synchronous (its cycles run by the calling thread)
or threaded (:meth:`Traffic.start`: the core's ``traffic-cycle`` thread
runs the cycle, the owner submits requests and collects completions; this
is what the trio and anyio layers use).  Mixing the two raises
``RuntimeError``, as does running one Traffic's cycles from two threads at
once.  :meth:`Traffic.wake` is safe from any thread.

Fork.  After ``fork()`` the child cannot use the parent's Traffics: every
operation on them raises ``RuntimeError``; the child's copies of their
descriptors are closed without shutdown, so the parent's connections stay
intact.  Create a new Traffic in the child.
"""

from __future__ import annotations

from . import _faces
from ._base._checks import DEFAULT_BACKLOG as DEFAULT_BACKLOG
from ._base._checks import MAX_DESCRIPTOR as MAX_DESCRIPTOR
from ._base._checks import MAX_RECEIVE as MAX_RECEIVE
from ._base._checks import MAX_TIMEOUT as MAX_TIMEOUT
from ._base._checks import Polarity, backend, live_objects
from ._base._checks import check_port as check_port
from ._base._descriptors import FDS_PER_MESSAGE as FDS_PER_MESSAGE
from ._base._descriptors import Descriptors
from ._base._descriptors import check_descriptor_message as check_descriptor_message
from ._base._descriptors import descriptor_array as descriptor_array
from ._base._file_region import FileRegion
from ._base._requests import Completion
from ._base._the_traffic import DEFAULT_CYCLE_POLICY as DEFAULT_CYCLE_POLICY
from ._base._the_traffic import Traffic
from ._base._the_traffic import cycle_policy as cycle_policy
from ._base._transit import Octets, Sockets, Transit
from ._base._transit import wrap_socketpair as wrap_socketpair
from ._traffic import ffi as ffi
from ._traffic import lib as lib

__all__ = [
    "Completion",
    "Descriptors",
    "FileRegion",
    "Octets",
    "Polarity",
    "Sockets",
    "Traffic",
    "Transit",
    "backend",
    "live_objects",
]

# Outside __all__ (``as`` re-exports them) but imported from here by the
# other faces and the layers, and documented with this module: the limits,
# the checks the layers share, the cycle thread's policy.  (``lib`` and
# ``ffi`` stay here for the tests.)
_SHARED = [
    "DEFAULT_BACKLOG",
    "DEFAULT_CYCLE_POLICY",
    "FDS_PER_MESSAGE",
    "MAX_DESCRIPTOR",
    "MAX_RECEIVE",
    "MAX_TIMEOUT",
    "check_descriptor_message",
    "check_port",
    "cycle_policy",
    "descriptor_array",
    "wrap_socketpair",
]

_faces.publish(__name__, {**globals(), "__all__": _SHARED})
_faces.publish(__name__, globals())
