"""The trio layer, one job per module, published by :mod:`traffic.trio_integration`.

What is where:

- ``_primitives``: the run's delivery and its Traffic (``current_traffic``),
  the refusal table, what a completion means (``_broken``, ``_received``,
  ``_sent``, ``_accepted``), and the primitives on transits: ``recv_into``,
  ``send_all``, ``accept``, and a file region moved by the core
  (``_transfer_region``).
- ``_stream``: ``TrafficStream``, its busy errors, and ``_detach`` (a
  descriptor taken out of a socket object).
- ``_fds_files``: ``send_fds``, ``receive_fds``, ``send_file`` and
  ``receive_file``, which take a ``TrafficStream`` or a transit.
- ``_listener``: ``TrafficListener``.
- ``_open``: the openers, mirroring trio's (``open_tcp_stream``, ...).
- ``_serve``: ``serve_listeners``, ``serve_tcp``, ``serve_unix``.

Each module imports trio, modules listed before it here, and the
layers below the trio layer (``traffic._trio_parking``,
``traffic._base._sockets``, ``traffic._base._requests``, ``traffic._base._files``,
the rest of ``traffic._base``, ``traffic.errors``); never the face
(``traffic.trio_integration``), nor anyio or asyncio.  The face's knob
``CYCLE_POLICY`` reaches the run through the hook the face installs in
``traffic._trio_parking``.
"""
