"""The anyio layer, one job per module, published by :mod:`traffic.anyio_backend`.

What is where:

- ``_errors``: the core's refusals and outcomes as anyio's exceptions
  (``_REFUSALS``, ``_broken``, the busy errors).
- ``_asyncio_parking``: on asyncio, one Traffic per event loop, its
  completion descriptor read by the loop (``_AsyncioParking``); the face's
  ``CYCLE_POLICY`` reaches it through the hook ``policy`` the face installs.
- ``_parking``: what a parking answers (``_Parking``), the trio run's
  (``_TrioParking``), the choice of the running backend (``_parking``),
  ``current_traffic`` and ``close_traffic``.
- ``_adopt``: anyio's ``from_socket``, once for the seven socket classes
  (``FromSocket``, its checks as data in ``SocketChecks``), and anyio's
  checks of a socket (``check_socket``).
- ``_stream``: ``TrafficSocketStream`` (the hot path) and ``RawSocketView``.
- ``_unix_stream``: ``TrafficUNIXSocketStream``, descriptor passing.
- ``_listener``: ``TrafficSocketListener``, ``TrafficUNIXSocketListener``.
- ``_connect``: ``connect_tcp``, ``connect_unix``, ``resolve_port``.
- ``_listen``: ``create_tcp_listener``, ``create_unix_listener``,
  ``unix_local_socket``.

Each module imports anyio (and asyncio or sniffio where it says), the
modules above it in that list, and the layers below the anyio layer
(``traffic._base._requests``, ``traffic._base._sockets``, ``traffic._base._files``,
the rest of ``traffic._base``, ``traffic.errors``); never the face
(``traffic.anyio_backend``), nor anything of the trio layer
(``traffic.trio_integration``, ``traffic.trio_datagrams``, trio itself).
``traffic._trio_parking`` is imported only lazily, when a stream is made on
trio: an asyncio program never imports trio.  :mod:`traffic.anyio_datagrams`
builds on ``_adopt``, ``_parking``, ``_stream``, ``_connect`` and ``_listen``.
"""
