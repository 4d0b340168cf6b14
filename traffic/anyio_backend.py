"""anyio streams whose transfers traffic's core performs, on trio and on asyncio.

The swap
--------
anyio takes no third-party backends, so traffic ships its own
implementations of anyio's socket classes and the functions that make them,
with anyio's signatures and semantics::

    from traffic.anyio_backend import connect_tcp   # was: from anyio import connect_tcp

    async with await connect_tcp("example.com", 80) as stream:
        await stream.send(b"...")
        reply = await stream.receive()

:func:`connect_tcp`, :func:`create_tcp_listener`, :func:`connect_unix` and
:func:`create_unix_listener` return :class:`TrafficSocketStream`,
:class:`TrafficUNIXSocketStream`, :class:`TrafficSocketListener` and
:class:`TrafficUNIXSocketListener`: subclasses of ``anyio.abc.SocketStream``,
``UNIXSocketStream`` and ``SocketListener`` (TCP listeners come in anyio's
own ``MultiListener``, TLS in anyio's own ``TLSStream``, exactly as anyio
does it).  Everything else (task groups, ``Listener.serve``, ``TLSStream``,
``BufferedByteReceiveStream``, cancel scopes) is anyio's own and works on
them unchanged.

Which event loop
----------------
The backend is chosen when a stream is made, with
``sniffio.current_async_library()``; a stream stays with that run.

- **trio**: the per-run Traffic and parking the trio layer uses are reused
  (:mod:`traffic._trio_parking`, imported only when a stream is made on
  trio: an asyncio program never imports trio): one pump task per run
  reschedules the
  tasks whose transfers completed, a withdrawn request that lost the race
  against the system call still delivers its data, and the run's end
  closes the Traffic.  A stream made with this module and a
  ``TrafficStream`` of the same run share one cycle thread.
- **asyncio**: one threaded Traffic per event loop (kept in a
  ``WeakKeyDictionary`` keyed by the loop).  Its completion descriptor is
  registered once with ``loop.add_reader``; the reader callback collects
  every waiting completion in one C call and resolves the futures of the
  tasks waiting on them.  No ``call_soon_threadsafe`` per completion: the
  cycle thread never takes the GIL to wake the loop, it writes the
  completion descriptor, once per batch.  asyncio's own loop and uvloop's
  (``anyio.run(..., backend_options={"use_uvloop": True})``) are served
  alike: the parking uses no more of a loop than ``add_reader``,
  ``remove_reader``, ``create_future``, ``create_task`` and ``is_closed``.

Closing the asyncio Traffic with its loop.  asyncio has no loop-close hook,
so two mechanisms cover the ways loops end:

1. A *keeper* task, made with the Traffic, awaits a future that is never
   resolved.  ``asyncio.run``, ``asyncio.Runner``, ``anyio.run`` and anyio's
   pytest plugin all cancel every remaining task before they close the
   loop; the keeper's ``finally`` then removes the reader, wakes any task
   still waiting (with ``ClosedResourceError``), and closes the Traffic:
   the cycle thread is joined and every descriptor it owns is closed
   before ``loop.close()`` runs.
2. A loop managed by hand (``run_until_complete`` then ``close``, no task
   cancelled): closing the loop drops its reader (asyncio's selector,
   uvloop's libuv poll handles), the only strong path to the loop's
   Traffic (the registry of loops holds weak references), so the
   Traffic's own finalizer closes it at the next garbage collection;
   ``libkqueue``'s exit hook closes it at the latest when the interpreter
   exits.  Such programs can call :func:`close_traffic` before
   ``loop.close()`` to have it closed at once.  A uvloop loop that has run
   and is dropped *without* ``close()`` is never collected (libuv's active
   handles hold it, and its own descriptors stay open), so its Traffic
   lives as long: close such loops, or call :func:`close_traffic`.

Cancellation loses nothing
--------------------------
A transfer is first tried inline, in the event loop's thread (non-blocking).
Only if the kernel has nothing (or no room) does the request stay in the
core, and the task waits.

On asyncio a cancelled wait withdraws the request.  If the withdrawal wins
(every state but "the cycle thread is inside the system call"), nothing was
transferred (a send reports how much went out, as anyio's own cancelled
send may have sent part of its data) and the ``CancelledError`` propagates.
If the transfer already happened, or is happening, the buffer stays pinned
until the core reports the final state, the bytes received are kept in the
stream (the next :meth:`~TrafficSocketStream.receive` returns them first;
the connections a listener accepted are kept for its next
:meth:`~TrafficSocketListener.accept`) and the ``CancelledError`` still
propagates at once.  The same holds when the cancellation hits the
checkpoint after an inline transfer.

On trio the trio layer's rule holds: a receive whose transfer already
happened returns its data, and the cancellation is delivered at the task's
next checkpoint.  On both backends no received byte is dropped.

Errors cross once
-----------------
The core's :class:`~traffic.errors.TransitClosedError`, a transit terminated
by its owner (``aclose()``, ``send_eof()``) and the trio layer's
``trio.ClosedResourceError`` become ``anyio.ClosedResourceError``; a
transit the kernel terminated with an errno (``ECONNRESET``, ``EPIPE``...)
becomes ``anyio.BrokenResourceError`` chained to the ``OSError``; EOF
becomes ``anyio.EndOfStream``; a second task using one direction gets
``anyio.BusyResourceError``, as from anyio's ``ResourceGuard``.

Sockets and ownership
---------------------
The core owns every descriptor it transfers on.  ``SocketAttribute.raw_socket``
is therefore a :class:`RawSocketView`, not a ``socket.socket``: it answers
what anyio's tests and users ask of the raw socket (``getsockname``,
``getpeername``, ``getsockopt``, ``setsockopt``, ``family``, ``type``,
``proto``, ``fileno``, ``gettimeout``, ``getblocking``), never closes the
descriptor, and raises ``OSError(EBADF)`` once the core has closed it (a
recycled descriptor number is never touched).  Every other
``SocketAttribute`` anyio's own streams answer (``family``,
``local_address``, ``remote_address``, and ``local_port``/``remote_port``
for IP sockets) is answered the same way, by anyio's own code.

Descriptor passing: :meth:`TrafficUNIXSocketStream.send_fds` and
:meth:`~TrafficUNIXSocketStream.receive_fds` work on both backends, with
anyio's argument checks (one deviation: ``msglen`` must be at least 1).
An AF_UNIX stream's transits are a ``Descriptors`` pair, used for bytes and
descriptors alike.  ``SOCK_SEQPACKET`` UNIX sockets are refused (the core's
byte transits would merge records).
"""

from __future__ import annotations

from . import _faces
from ._anyio import _asyncio_parking
from ._anyio._connect import connect_tcp, connect_unix
from ._anyio._listen import create_tcp_listener, create_unix_listener
from ._anyio._listener import TrafficSocketListener, TrafficUNIXSocketListener
from ._anyio._parking import close_traffic, current_traffic
from ._anyio._stream import RawSocketView, TrafficSocketStream
from ._anyio._unix_stream import TrafficUNIXSocketStream
from ._base._sockets import ACCEPT_BATCH, DEFAULT_RECEIVE_SIZE, MAX_RECEIVE_FDS

__all__ = [
    "ACCEPT_BATCH",
    "DEFAULT_RECEIVE_SIZE",
    "MAX_RECEIVE_FDS",
    "RawSocketView",
    "TrafficSocketListener",
    "TrafficSocketStream",
    "TrafficUNIXSocketListener",
    "TrafficUNIXSocketStream",
    "close_traffic",
    "connect_tcp",
    "connect_unix",
    "create_tcp_listener",
    "create_unix_listener",
    "current_traffic",
]
# The helpers imported above with ``as`` (check_socket, resolve_port,
# unix_local_socket, _take, _parking, _Parking, _AsyncioParking) are not
# public, and stay importable here as they were before the layer moved to
# traffic._anyio (tests/faults/server.py reaches _AsyncioParking so).

#: Scheduling of each asyncio loop's cycle thread (see ``Traffic.start``):
#: None takes ``$TRAFFIC_CYCLE_POLICY``, else ``"batch"``.  On trio the
#: trio layer's ``CYCLE_POLICY`` applies.
CYCLE_POLICY: str | None = None


def _cycle_policy() -> str | None:
    return CYCLE_POLICY


_asyncio_parking.policy = _cycle_policy

_faces.publish(__name__, globals())
