"""The layer below both event-loop layers: the Python face of the compiled
core, written by job.

- ``_checks``: the core's limits and the checks of a caller's arguments.
- ``_transit``: the transits (``Transit``, ``Octets``, ``Sockets``).
- ``_descriptors``: the transits of descriptors and their checks.
- ``_file_region``: a file region as a synchronous transit's resource.
- ``_the_traffic``: the Traffic, its cycles, its requests, a fork.
- ``_requests``: the one way into a threaded Traffic's requests (submit,
  collect, pins), the owner of every export of a caller's memory.
- ``_files``: a file region for ``send_file`` and ``receive_file``.
- ``_sockets``: what the trio and anyio socket layers share (the socket
  view, the limits, the busy guard, the accept queue).

:mod:`traffic.libkqueue` publishes what the first five define.  No module
here imports trio, anyio or asyncio, nor any module above this folder; with
:mod:`traffic.errors`, :mod:`traffic.datagrams` and :mod:`traffic.libloop`
they are all that touches the compiled core, ``traffic._traffic``.
"""
