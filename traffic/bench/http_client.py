"""The http-client workload's client: the process it measures.

Run as ``python -m traffic.bench.http_client NAME PORT``: the HTTP client
of row ``NAME`` (:data:`ROWS`) against the C responder
(``http_responder.c``) on 127.0.0.1:PORT, in two phases, each reported on
stdout:

1. requests: ``--in-flight`` tasks (100) each send ``GET /`` over and over
   through one client (its pool keeps ``--in-flight`` connections alive)
   and check every answer (status 200, the 1 KiB body).  After
   ``--warmup`` seconds the client prints ``start requests``, counts the
   requests that complete in the next ``--seconds`` and prints them as a
   line of JSON.
2. download: ``GET /download`` (``--download-bytes``: 64 MiB from the
   driver) with the body read as it arrives and counted; one download to
   warm up, ``start download``, then downloads one after another on the
   same client until ``--seconds`` have passed (at least one), and a line
   of JSON.

Each JSON line carries the window's wall seconds and the CPU seconds of
the whole client process over it (:func:`time.process_time`, that is
``CLOCK_PROCESS_CPUTIME_ID``: every thread of the process, traffic's cycle
thread included), both read by the process itself at the window's two
ends.  The driver reads the responder's CPU when each line arrives.

The rows, each as its library's users write it (the clients are in
:mod:`.http_backends`, which needs httpx; this module does not):

- ``trio``, ``asyncio``, ``uvloop``: ``httpx.AsyncClient`` with httpx's own
  transport (``httpx.AsyncHTTPTransport``: httpcore's default network
  backend, trio's sockets on trio and anyio's streams on asyncio);
- ``traffic-anyio-trio``, ``traffic-anyio-asyncio``,
  ``traffic-anyio-uvloop``: the same client on
  :class:`traffic.integrations.httpx.AsyncHTTPTransport` (traffic's anyio
  streams on every loop);
- ``traffic-trio``: the same client on httpx's transport with
  :class:`.http_backends.TrioLayerBackend`, a network backend of the
  bench's on traffic's trio layer (:class:`traffic.TrafficStream`) written
  as httpcore's own trio backend is: the other of traffic's layers on
  trio, to say which of the two serves httpx better;
- ``trio-floor``, ``asyncio-floor``, ``uvloop-floor``: httpx's transport on
  :class:`.http_backends.FloorBackend`, an in-memory network whose reads
  and writes cost nothing: what httpx and httpcore cost alone, so the most
  any network backend can gain;
- ``aiohttp-asyncio``, ``aiohttp-uvloop``: ``aiohttp.ClientSession``.

Every httpx row has the same client and pool settings: only the network
backend differs.  ``--check`` (the tests) adds to the JSON every response's
(status, body size, CRC-32) and every download's, instead of checking each
small response against the body.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import importlib.util
import json
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

#: The small response's body size, and the workload's defaults.
SMALL_BYTES = 1024
IN_FLIGHT = 100
DOWNLOAD_MIB = 64

#: Byte i of every body the responder sends is i % PERIOD (http_responder.c).
PERIOD = 251


def body(size: int) -> bytes:
    """The responder's body of ``size`` bytes."""
    block = bytes(range(PERIOD))
    return (block * (size // PERIOD + 1))[:size]


def response(size: int) -> bytes:
    """The responder's whole response (head and body) for a body of ``size``
    bytes, byte for byte as http_responder.c sends it."""
    head = (
        "HTTP/1.1 200 OK\r\n"
        "Content-Type: application/octet-stream\r\n"
        f"Content-Length: {size}\r\n"
        "\r\n"
    )
    return head.encode() + body(size)


SMALL_BODY = body(SMALL_BYTES)


@dataclass(frozen=True)
class Row:
    """A row of the workload: the loop it runs on ("trio", "asyncio" or
    "uvloop"), the function of :mod:`.http_backends` that makes its client
    (inside the running loop), and the modules it needs."""

    loop: str
    make: str
    needs: tuple[str, ...]


_HTTPX = ("httpx", "httpcore")
_TRAFFIC = (*_HTTPX, "traffic.integrations.httpx")

#: Row name -> its client, in table order.  The names are the other
#: workloads' where they mean the same: ``trio``, ``asyncio``, ``uvloop``
#: what that loop's users already have (httpx's own transport),
#: ``traffic-*`` traffic's layer of that name, ``*-floor`` the floor.
ROWS: dict[str, Row] = {
    "traffic-trio": Row("trio", "httpx_trio_layer", _HTTPX),
    "trio": Row("trio", "httpx_default", _HTTPX),
    "trio-floor": Row("trio", "httpx_floor", _HTTPX),
    "traffic-anyio-trio": Row("trio", "httpx_traffic", _TRAFFIC),
    "traffic-anyio-asyncio": Row("asyncio", "httpx_traffic", _TRAFFIC),
    "traffic-anyio-uvloop": Row("uvloop", "httpx_traffic", (*_TRAFFIC, "uvloop")),
    "asyncio": Row("asyncio", "httpx_default", _HTTPX),
    "asyncio-floor": Row("asyncio", "httpx_floor", _HTTPX),
    "uvloop": Row("uvloop", "httpx_default", (*_HTTPX, "uvloop")),
    "uvloop-floor": Row("uvloop", "httpx_floor", (*_HTTPX, "uvloop")),
    "aiohttp-asyncio": Row("asyncio", "aiohttp_session", ("aiohttp",)),
    "aiohttp-uvloop": Row("uvloop", "aiohttp_session", ("aiohttp", "uvloop")),
}


def missing_module(row: Row) -> str | None:
    """The first module ``row`` needs that cannot be imported here, or None."""
    for module in row.needs:
        try:
            found = importlib.util.find_spec(module) is not None
        except ImportError:  # its parent package is absent
            found = False
        if not found:
            return module
    return None


class WrongResponse(RuntimeError):
    """A response that is not the responder's."""


@dataclass
class Options:
    port: int
    seconds: float
    warmup: float
    in_flight: int
    download_bytes: int
    check: bool

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def download_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/download"


@dataclass
class Tally:
    """The request phase so far: completions, and with ``--check`` each
    distinct (status, size, CRC-32) seen and its count."""

    count: int = 0
    stop: bool = False
    seen: collections.Counter[tuple[int, int, int]] = field(default_factory=collections.Counter)


class Client:
    """One HTTP client library, as the workload drives it."""

    async def small(self, options: Options, tally: Tally) -> None:
        """One ``GET /``, its answer checked (with ``--check``: tallied)."""
        raise NotImplementedError

    async def download(self, options: Options) -> tuple[int, int, int]:
        """One ``GET /download``: (status, bytes, CRC-32, 0 without ``--check``)."""
        raise NotImplementedError

    async def aclose(self) -> None:
        raise NotImplementedError


# --- the phases ---------------------------------------------------------------------


def _say(line: str) -> None:
    print(line, flush=True)


def _clocks() -> tuple[float, float]:
    """Wall time, and the CPU time of every thread of this process."""
    return time.perf_counter(), time.process_time()


async def _worker(client: Client, options: Options, tally: Tally) -> None:
    while not tally.stop:
        await client.small(options, tally)
        tally.count += 1


async def _window(
    options: Options, tally: Tally, sleep: Callable[[float], Awaitable[object]]
) -> None:
    """Time the request phase's window while the workers run, then stop them."""
    await sleep(options.warmup)
    count, (wall, cpu) = tally.count, _clocks()
    _say("start requests")
    await sleep(options.seconds)
    done, (wall_end, cpu_end) = tally.count, _clocks()
    tally.stop = True
    result: dict[str, Any] = {
        "phase": "requests",
        "requests": done - count,
        "seconds": wall_end - wall,
        "cpu": cpu_end - cpu,
    }
    if options.check:
        result["seen"] = [[*key, n] for key, n in sorted(tally.seen.items())]
    _say(json.dumps(result))


async def _downloads(client: Client, options: Options) -> None:
    seen = [await client.download(options)]  # the warm-up
    _say("start download")
    wall, cpu = _clocks()
    moved = 0
    while True:
        got = await client.download(options)
        if not options.check and (got[0] != 200 or got[1] != options.download_bytes):
            raise WrongResponse(f"GET /download: status {got[0]}, {got[1]} bytes")
        seen.append(got)
        moved += got[1]
        if time.perf_counter() - wall >= options.seconds:
            break
    wall_end, cpu_end = _clocks()
    result: dict[str, Any] = {
        "phase": "download",
        "bytes": moved,
        "downloads": len(seen) - 1,
        "seconds": wall_end - wall,
        "cpu": cpu_end - cpu,
    }
    if options.check:
        result["seen"] = [list(got) for got in seen]
    _say(json.dumps(result))


async def _asyncio_main(make: Callable[[Options], Client], options: Options) -> None:
    client = make(options)
    try:
        tally = Tally()
        workers = [_worker(client, options, tally) for _ in range(options.in_flight)]
        await asyncio.gather(_window(options, tally, asyncio.sleep), *workers)
        await _downloads(client, options)
    finally:
        await client.aclose()


async def _trio_main(make: Callable[[Options], Client], options: Options) -> None:
    import trio

    client = make(options)
    try:
        tally = Tally()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_window, options, tally, trio.sleep)
            for _ in range(options.in_flight):
                nursery.start_soon(_worker, client, options, tally)
        await _downloads(client, options)
    finally:
        await client.aclose()


def run(name: str, options: Options) -> None:
    """Both phases of row ``name`` on its loop."""
    from . import http_backends

    row = ROWS[name]
    make: Callable[[Options], Client] = getattr(http_backends, row.make)
    if row.loop == "trio":
        import trio

        trio.run(_trio_main, make, options)
    elif row.loop == "uvloop":
        import uvloop

        uvloop.run(_asyncio_main(make, options))
    else:
        asyncio.run(_asyncio_main(make, options))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m traffic.bench.http_client")
    parser.add_argument("name", choices=list(ROWS))
    parser.add_argument("port", type=int)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--in-flight", type=int, default=IN_FLIGHT)
    parser.add_argument("--download-bytes", type=int, default=DOWNLOAD_MIB << 20)
    parser.add_argument("--check", action="store_true", help="tally every response (tests)")
    args = parser.parse_args(argv)
    options = Options(
        args.port, args.seconds, args.warmup, args.in_flight, args.download_bytes, args.check
    )
    try:
        run(args.name, options)
    except KeyboardInterrupt:
        sys.exit(1)


if __name__ == "__main__":
    # Through the module's own name, so http_backends (which imports it)
    # and this run share one copy of it, not a second one named __main__.
    from traffic.bench.http_client import main as _main

    _main()
