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
  the same for Pydantic's fork of both.

Each is an optional extra (``pip install 'traffic[httpx]'``,
``'traffic[httpx2]'``); ``import traffic`` imports none of them, and
importing one without its host raises an ``ImportError`` that names the
extra.
"""
