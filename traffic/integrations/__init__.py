"""Real programs on traffic: adapters for the libraries users run.

Each adapter implements its host library's own public extension point and
reuses the host's code for everything else, so a program switches with one
import or one argument and keeps the host's exceptions and behaviour:

- :mod:`traffic.integrations.httpcore`: httpcore's network backend
  (``httpcore.AsyncConnectionPool(network_backend=TrafficBackend())``);
- :mod:`traffic.integrations.httpx`: a drop-in for
  ``httpx.AsyncHTTPTransport``
  (``httpx.AsyncClient(transport=AsyncHTTPTransport())``);
- :mod:`traffic.integrations.httpcore2` and :mod:`traffic.integrations.httpx2`:
  the same for Pydantic's fork of both;
- :mod:`traffic.integrations.hypercorn`: a drop-in for ``hypercorn.trio.serve``
  (hypercorn's trio worker on traffic's listeners), and its command;
- :mod:`traffic.integrations.anycorn`: a drop-in for ``anycorn.serve``
  (asyncio, uvloop, trio), file responses sent by the core, and its command.

Each is an optional extra (``pip install 'traffic[httpx]'``,
``'traffic[httpx2]'``, ``'traffic[hypercorn]'``, ``'traffic[anycorn]'``);
``import traffic`` imports none of them, and importing one without its
host raises an ``ImportError`` that names the extra.
"""
