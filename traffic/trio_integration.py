"""trio on top of traffic: completed transfers delivered to trio tasks.

How a transfer reaches a task
-----------------------------
Each trio run has one threaded :class:`~traffic.libkqueue.Traffic`, started
lazily, whose ``traffic-cycle`` thread waits on the kernel and performs the
transfers.  A task that wants to transfer:

1. checks for cancellation (``checkpoint_if_cancelled``);
2. asks the core for the transfer, which first tries it *inline*, in the
   task's own thread, without blocking.  If that finished the job, the task
   takes a ``cancel_shielded_checkpoint`` and returns: trio's checkpoint
   rule holds and no other thread was involved;
3. otherwise the request stays in the core, and the task parks with
   ``wait_task_rescheduled`` until the cycle thread has performed it.

How the completion comes back (an instrument after each of trio's I/O
waits, and a system task that wakes a sleeping trio) is
:mod:`traffic._trio_parking`, shared with the anyio layer on trio; how a
request enters the core is :mod:`traffic._base._requests`.

A parked ``receive_some`` holds no buffer: it asks the core to allocate the
memory when data arrives, and the bytes come back with the completion.  Ten
thousand idle connections cost no receive buffers.

Cancellation
------------
A parked task's abort function withdraws its request from the core.  That
succeeds in every state except while the cycle thread is inside the system
call for it: then the abort answers ``Abort.FAILED`` and the completion
arrives promptly (the core finishes a withdrawn request as soon as its
system call returns, without waiting on the peer), carrying the data, which
is not lost: the receive returns it and the cancellation is delivered at the
task's next checkpoint.  A cancelled :func:`send_all` may have sent part of
its data, as trio's own ``SocketStream.send_all``; the stream is then in an
unknown state, and the right thing is to close it.

Errors cross once: the core's refusals map to trio's exceptions in one
table (``_REFUSALS``), and a completion's outcome in one place per kind of
operation: a transit its owner terminated becomes
``trio.ClosedResourceError``; a transit the kernel terminated with an errno
becomes ``trio.BrokenResourceError`` chained to the ``OSError``.

Descriptors
-----------
:func:`send_fds` and :func:`receive_fds` pass descriptors over AF_UNIX
stream sockets, with anyio's ``UNIXSocketStream`` signatures.  They take a
:class:`~traffic.libkqueue.Descriptors` transit or a :class:`TrafficStream`.
A kernel point carries at most one transit per polarity, so an AF_UNIX
``TrafficStream`` is made of a Descriptors pair from the start and uses it
for everything: bytes travel with zero descriptors (descriptors that arrive
during a ``receive_some`` are closed, never leaked), and ``send_fds`` /
``receive_fds`` use the same transits under the stream's send and receive
guards.  Other streams (TCP) keep an Octets pair and refuse descriptors.
Cancellation follows the rule above: a withdrawn request sent or received
nothing; one whose system call already happened returns its result, and
the received descriptors are the caller's.

Lifetime
--------
When the run ends the pump is cancelled last (system tasks outlive the main
task), and closes the Traffic: the cycle thread is joined and every
descriptor the run's transits own is closed.  ``trio.run`` can be called
any number of times; each run gets its own Traffic.
"""

from __future__ import annotations

# The layer lives in traffic._trio, one job per module; this face names it.
from . import _faces, _trio_parking
from ._base._sockets import ACCEPT_BATCH, DEFAULT_RECEIVE_SIZE, MAX_RECEIVE_FDS, SocketView
from ._trio._fds_files import receive_fds, receive_file, send_fds, send_file
from ._trio._listener import TrafficListener
from ._trio._open import open_tcp_listeners, open_tcp_stream, open_unix_listener, open_unix_stream
from ._trio._primitives import accept, current_traffic, recv_into, send_all
from ._trio._serve import serve_listeners, serve_tcp, serve_unix
from ._trio._stream import TrafficStream

__all__ = [
    "ACCEPT_BATCH",
    "DEFAULT_RECEIVE_SIZE",
    "MAX_RECEIVE_FDS",
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
]

#: Scheduling of each run's cycle thread (see ``Traffic.start``): None
#: takes ``$TRAFFIC_CYCLE_POLICY``, else ``"batch"``.  Set it before the run;
#: it applies to the anyio layer's streams on trio too (they share the run's
#: Traffic).
CYCLE_POLICY: str | None = None


def _cycle_policy() -> str | None:
    return CYCLE_POLICY


_trio_parking.policy = _cycle_policy

_faces.publish(__name__, globals())
