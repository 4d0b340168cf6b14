"""``python -m traffic.bench``: traffic side by side with the I/O a trio or
anyio user already has (docs/benchmark.rst).

Method: every implementation faces the same C load generator in a separate
process; within each repeat every implementation runs once per case,
interleaved (the order rotates from one repeat to the next), so the drift of
a shared machine hits them alike; ratios to trio are taken within a repeat
and their median reported, beside the median and min-max of each metric.
Work per server CPU-second (all threads) stands beside raw rates, and a row
whose client used more than 0.8 of a core is marked client-bound.

The file workload (``--only file``) is one case per direction, socket family
and page-cache state (``--file-cases``, :data:`file_workloads.FILE_CASES`): a
download of one file to ``--file-connections`` connections, and an upload
of ``--upload-mib`` per connection into a tmpfs.  Its rows are those of
:data:`servers.FILE_SERVERS`, ``asyncio-sendfile`` and ``uvloop-streams``
among them (rows of this workload alone); each reports GB/s over the
transfer and GB per server CPU-second, both in the summary and the plot.

The http-client workload (``--only http-client``) is one case that measures
a client instead of a server: each row's HTTP client (``httpx.AsyncClient``
on each network backend, the floor, aiohttp; :mod:`.http_client`) against
one C responder (http_responder.c), ``--http-in-flight`` requests of 1 KiB
responses in flight, then ``--http-download-mib`` downloads.  It reports
requests and download bytes per client CPU-second (every thread of the
client process), both in the summary and the plot; the client takes the
server's CPU of the placement and the responder the client's.

The http-server workload (``--only http-server``) is one case whose rows
are HTTP servers (:data:`http_server.ROWS`: hypercorn's trio worker,
anycorn on each loop, traffic's adapters of both, a floor row per host,
uvicorn) serving one ASGI app (:mod:`.asgi_app`) to a C load generator
(http_load.c): ``--http-connections`` keep-alive connections asking for a
1 KiB response one request at a time each, then ``--http-file-mib``
downloads of Starlette's ``FileResponse`` on ``--http-file-connections``.
It reports requests and file bytes per server CPU-second (every thread),
both in the summary and the plot, as ratios to ``hypercorn-trio``, its
baseline; a row whose host broke off a download shows how far it got.
Its rows appear in its table alone, and the other workloads' rows not in
it.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import sys
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from ..libkqueue import backend, cycle_policy
from . import (
    build,
    file_workloads,
    http_client,
    http_server,
    http_workloads,
    report,
    servers,
    stream,
    workloads,
)
from .report import Case

WORKLOADS = ("echo", "accept", "stream", "idle", "file", "http-client", "http-server")

#: Default echo connection counts (the benchmark's workloads) and the --quick ones.
ECHO_CONNECTIONS = (1, 100, 1000)
QUICK_ECHO_CONNECTIONS = (1, 100)

#: Idle connections held in --quick (10,000 otherwise).
QUICK_IDLE_CONNECTIONS = 2000

#: The file workload in --quick: smaller files, TCP only (as the stream
#: workload drops its unpinned case).
QUICK_FILE_MIB = 64
QUICK_UPLOAD_MIB = 16
QUICK_FILE_CASES = ("download-tcp-warm", "download-tcp-cold", "upload-tcp")

#: Rows in table order.  c-epoll is the C reference server (epoll_server.c);
#: traffic-trio-normal and traffic-trio-idle are traffic-trio with its cycle
#: thread at SCHED_OTHER and SCHED_IDLE ($TRAFFIC_CYCLE_POLICY=normal, idle);
#: traffic-trio itself runs the default policy.  anyio-uvloop and
#: traffic-anyio-uvloop are anyio-asyncio and traffic-anyio-asyncio on
#: uvloop's event loop (servers.ANYIO_LOOPS).  asyncio-sendfile and
#: uvloop-streams are rows of the file workload alone (servers.FILE_SERVERS);
#: asyncio-floor, uvloop-floor, aiohttp-asyncio and aiohttp-uvloop rows of the
#: http-client workload alone (http_client.ROWS, where the rows named as
#: elsewhere are HTTP clients on that loop or layer).  The rows from
#: hypercorn-trio on are the http-server workload's (http_server.ROWS), and
#: its alone.
ALL_SERVERS = (
    workloads.C_SERVER,
    "traffic-trio",
    "traffic-trio-normal",
    "traffic-trio-idle",
    "trio",
    "trio-floor",
    "traffic-anyio-trio",
    "anyio-trio",
    "traffic-anyio-asyncio",
    "anyio-asyncio",
    "traffic-anyio-uvloop",
    "anyio-uvloop",
    "asyncio",
    "asyncio-floor",
    "asyncio-sendfile",
    "uvloop",
    "uvloop-floor",
    "uvloop-streams",
    "uvloop-protocol",
    "aiohttp-asyncio",
    "aiohttp-uvloop",
    *http_server.ROWS,
)

#: Rows left out (with a note) rather than shown as missing when a module
#: they need is absent: traffic's own layers that may not exist yet, and the
#: anyio rows on uvloop, variants of the asyncio rows that mean nothing
#: without uvloop (whose own rows then say "not installed").
OPTIONAL_SERVERS = (
    "traffic-anyio-trio",
    "traffic-anyio-asyncio",
    "traffic-anyio-uvloop",
    "anyio-uvloop",
    "traffic-hypercorn",
    "traffic-anycorn-trio",
    "traffic-anycorn-asyncio",
    "traffic-anycorn-uvloop",
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m traffic.bench",
        description="Benchmark traffic against trio, anyio, asyncio and uvloop.",
    )
    parser.add_argument(
        "--only",
        type=_names(WORKLOADS),
        help=f"workloads to run, comma-separated (default all: {','.join(WORKLOADS)})",
    )
    parser.add_argument(
        "--servers",
        type=_names(ALL_SERVERS),
        help="implementations, comma-separated (the baseline of each workload is always "
        "added: trio, and hypercorn-trio in the http-server workload); "
        f"default all of: {','.join(ALL_SERVERS)}",
    )
    parser.add_argument(
        "--pin",
        choices=["cross", "none", "same"],
        default="cross",
        help="cross: server on CPU 0, client on CPU 1 (default); same: both on CPU 0; "
        "none: unpinned.  The one-process stream runs on CPU 0 unless none.",
    )
    parser.add_argument(
        "--seconds",
        type=float,
        help="measured seconds per run (default 2; the file workload moves a set size instead)",
    )
    parser.add_argument(
        "--warmup", type=float, help="warm-up seconds per run (default 0.5; not the file workload)"
    )
    parser.add_argument("--repeat", type=int, help="repeats (default 3)")
    parser.add_argument(
        "--connections",
        type=_counts,
        help="echo connection counts, comma-separated (default 1,100,1000)",
    )
    parser.add_argument(
        "--idle-connections",
        type=int,
        help=f"connections held in the idle workload (default {workloads.IDLE_CONNECTIONS})",
    )
    parser.add_argument(
        "--file-cases",
        type=_names(file_workloads.FILE_CASES),
        help="file workload cases, comma-separated (default all: "
        f"{','.join(file_workloads.FILE_CASES)})",
    )
    parser.add_argument(
        "--file-mib",
        type=_positive,
        help=f"MiB of the file each download connection gets (default {file_workloads.FILE_MIB})",
    )
    parser.add_argument(
        "--upload-mib",
        type=_positive,
        help=f"MiB each upload connection sends (default {file_workloads.UPLOAD_MIB})",
    )
    parser.add_argument(
        "--file-connections",
        type=_positive,
        help=f"connections of each file transfer (default {file_workloads.FILE_CONNECTIONS})",
    )
    parser.add_argument(
        "--http-in-flight",
        type=_positive,
        default=http_workloads.HTTP_IN_FLIGHT,
        help="http-client workload: requests in flight, each on a kept-alive connection "
        f"(default {http_workloads.HTTP_IN_FLIGHT})",
    )
    parser.add_argument(
        "--http-download-mib",
        type=_positive,
        default=http_workloads.HTTP_DOWNLOAD_MIB,
        help="http-client workload: MiB of each download "
        f"(default {http_workloads.HTTP_DOWNLOAD_MIB})",
    )
    parser.add_argument(
        "--http-connections",
        type=_positive,
        default=http_workloads.HTTP_CONNECTIONS,
        help="http-server workload: keep-alive connections of the request phase, one request "
        f"in flight on each (default {http_workloads.HTTP_CONNECTIONS})",
    )
    parser.add_argument(
        "--http-file-mib",
        type=_positive,
        default=http_workloads.HTTP_FILE_MIB,
        help="http-server workload: MiB of the file served "
        f"(default {http_workloads.HTTP_FILE_MIB})",
    )
    parser.add_argument(
        "--http-file-connections",
        type=_positive,
        default=http_workloads.HTTP_FILE_CONNECTIONS,
        help="http-server workload: connections downloading the file at once "
        f"(default {http_workloads.HTTP_FILE_CONNECTIONS})",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="about a minute: 1 repeat, short runs, echo N=1,100, 2000 idle connections, "
        f"file {QUICK_FILE_MIB} MiB and upload {QUICK_UPLOAD_MIB} MiB over TCP only",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the results as JSON")
    parser.add_argument(
        "--plot", type=Path, metavar="FILE.png", help="bar chart of the ratios (matplotlib)"
    )
    args = parser.parse_args(argv)
    quick = args.quick
    if args.seconds is None:
        args.seconds = 0.5 if quick else 2.0
    if args.warmup is None:
        args.warmup = 0.2 if quick else 0.5
    if args.repeat is None:
        args.repeat = 1 if quick else 3
    if args.connections is None:
        args.connections = QUICK_ECHO_CONNECTIONS if quick else ECHO_CONNECTIONS
    if args.idle_connections is None:
        args.idle_connections = QUICK_IDLE_CONNECTIONS if quick else workloads.IDLE_CONNECTIONS
    if args.file_cases is None:
        args.file_cases = list(QUICK_FILE_CASES if quick else file_workloads.FILE_CASES)
    if args.file_mib is None:
        args.file_mib = QUICK_FILE_MIB if quick else file_workloads.FILE_MIB
    if args.upload_mib is None:
        args.upload_mib = QUICK_UPLOAD_MIB if quick else file_workloads.UPLOAD_MIB
    if args.file_connections is None:
        args.file_connections = file_workloads.FILE_CONNECTIONS
    if args.repeat < 1 or args.seconds <= 0:
        parser.error("--repeat must be >= 1 and --seconds > 0")
    return args


def _names(allowed: tuple[str, ...]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        names = [name.strip() for name in text.split(",") if name.strip()]
        unknown = [name for name in names if name not in allowed]
        if unknown:
            raise argparse.ArgumentTypeError(
                f"unknown: {', '.join(unknown)} (choose from {', '.join(allowed)})"
            )
        return names

    return parse


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return value


def _counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError("expected integers, e.g. 1,100") from None
    if any(count < 1 for count in counts):
        raise argparse.ArgumentTypeError("connection counts must be >= 1")
    return counts


def plan(args: argparse.Namespace, notes: list[str]) -> tuple[list[Case], list[str], list[str]]:
    """The cases, the servers to run, and those shown as not installed."""
    only = args.only or list(WORKLOADS)
    chosen = list(args.servers or ALL_SERVERS)
    for workload in only:
        if report.baseline(workload) not in chosen:
            chosen.append(report.baseline(workload))
    names = [name for name in ALL_SERVERS if name in chosen]
    runnable, missing = [], []
    for name in names:
        if name in http_server.ROWS:
            absent = http_server.missing_module(name)
        else:
            absent = servers.missing_module(workloads.base_name(name))
        if absent is None:
            runnable.append(name)
        elif name in OPTIONAL_SERVERS:
            notes.append(f"{name} skipped: {absent} is not importable")
        else:
            missing.append(name)

    cases = []
    for workload in WORKLOADS:
        if workload not in only:
            continue
        if workload == "echo":
            for n in args.connections:
                cases.append(Case("echo", n, f"echo N={n}", f"{workloads.ECHO_SIZE}-byte"))
        elif workload == "accept":
            cases.append(Case("accept", None, "accept", "accept and close"))
        elif workload == "stream":
            if args.pin == "none":
                cases.append(Case("stream", "unpinned", "stream", "AF_UNIX, one process"))
            else:
                cases.append(Case("stream", "pinned", "stream", "AF_UNIX, one process, one CPU"))
                if not args.quick:
                    cases.append(
                        Case("stream", "unpinned", "stream unpinned", "AF_UNIX, one process")
                    )
        elif workload == "idle":
            n = args.idle_connections
            case = Case("idle", n, f"idle {n:,} conns", "RSS growth per connection")
            needed = n + workloads.IDLE_WARM + 256
            if not workloads.file_limit_possible(needed):
                notes.append(f"idle skipped: cannot raise RLIMIT_NOFILE to {needed}")
                continue
            cases.append(case)
        elif workload == "file":
            for name in file_workloads.FILE_CASES:
                if name in args.file_cases:
                    cases.append(Case("file", name, name.replace("-", " "), _file_note(name, args)))
        elif workload == "http-client":
            note = (
                f"{args.http_in_flight} requests in flight, 1 KiB responses; "
                f"{args.http_download_mib} MiB downloads; the client is measured"
            )
            cases.append(Case("http-client", None, "http client", note))
        elif workload == "http-server":
            note = (
                f"{args.http_connections} keep-alive connections, 1 KiB responses; "
                f"a {args.http_file_mib} MiB FileResponse to {args.http_file_connections} "
                "connection(s); the server is measured"
            )
            cases.append(Case("http-server", None, "http server", note))
    return cases, runnable, missing


def _file_note(name: str, args: argparse.Namespace) -> str:
    direction, _, *cache = name.split("-")
    n = args.file_connections
    if direction == "upload":
        return f"{n} x {args.upload_mib} MiB to files in a tmpfs"
    return f"one {args.file_mib} MiB file to {n} connections, page cache {cache[0]}"


def run_one(
    case: Case,
    server: str,
    args: argparse.Namespace,
    placement: workloads.Placement,
    binaries: dict[str, Path],
    fixture: file_workloads.FileFixture | None = None,
    http_file: http_workloads.HttpFile | None = None,
) -> workloads.Measured:
    if case.workload == "http-server":
        assert http_file is not None
        return http_workloads.http_server(
            server,
            args.seconds,
            args.warmup,
            placement,
            binaries,
            http_file,
            args.http_connections,
            args.http_file_connections,
        )
    if case.workload == "file":
        assert fixture is not None
        return file_workloads.file_transfer(server, case.param, fixture, placement)
    if case.workload == "http-client":
        return http_workloads.http_client(
            server,
            args.seconds,
            args.warmup,
            placement,
            binaries,
            args.http_in_flight,
            args.http_download_mib << 20,
        )
    if case.workload == "echo":
        return workloads.echo(server, case.param, args.seconds, args.warmup, placement, binaries)
    if case.workload == "accept":
        return workloads.accept(server, args.seconds, args.warmup, placement, binaries)
    if case.workload == "stream":
        cpus = placement.server if case.param == "pinned" else None
        return workloads.stream(server, args.seconds, cpus)
    return workloads.idle(server, case.param, placement, binaries)


def supported(case: Case, server: str) -> bool:
    base = workloads.base_name(server)
    if case.workload == "stream":
        return base in stream.STREAMS
    if case.workload == "file":
        return base in servers.FILE_SERVERS
    if case.workload == "http-client":
        return base in http_client.ROWS
    if case.workload == "http-server":
        return server in http_server.ROWS
    return server == workloads.C_SERVER or base in servers.SERVERS


def shown(case: Case, server: str) -> bool:
    """Whether ``server`` has a row in ``case``'s table: every row the
    case supports, and "n/a" for the others, except between the
    http-server workload and the rest (servers of a different kind, which
    would only fill each other's tables with n/a)."""
    if supported(case, server):
        return True
    return (case.workload == "http-server") == (server in http_server.ROWS)


def _versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for name in (
        "traffic",
        "trio",
        "anyio",
        "uvloop",
        "httpx",
        "httpcore",
        "aiohttp",
        "hypercorn",
        "anycorn",
        "uvicorn",
        "httptools",
        "starlette",
    ):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    notes: list[str] = []
    try:
        placement = workloads.Placement.make(args.pin)
        binaries = build.build_all()
    except (build.BuildError, workloads.WorkloadError) as error:
        print(f"traffic.bench: {error}", file=sys.stderr)
        return 2
    cases, runnable, missing = plan(args, notes)
    # Per workload, the rows that cannot run it here (each with a note).
    lacking = {
        "file": _lacking_file_methods(cases, runnable, notes),
        "http-client": _lacking_http_modules(cases, runnable, notes),
    }
    for case in cases:
        for server in [*runnable, *missing]:
            if not shown(case, server):
                continue
            row = case.row(server)
            if not supported(case, server):
                row.status = "n/a"
            elif server in missing:
                row.status = "not installed"
            elif server in lacking.get(case.workload, ()):
                row.status = "skipped"

    steps = [
        (repeat, case, server)
        for repeat in range(args.repeat)
        for case in cases
        for server in _rotate(runnable, repeat)
        if server in case.rows and case.rows[server].status == "ok"
    ]
    progress = report.Progress(len(steps))
    with contextlib.ExitStack() as stack:
        fixture = None
        if any(case.workload == "file" for _, case, _ in steps):
            try:
                fixture = stack.enter_context(
                    file_workloads.FileFixture.made(
                        binaries["file_client"],
                        args.file_mib << 20,
                        args.upload_mib << 20,
                        args.file_connections,
                        notes,
                    )
                )
            except workloads.WorkloadError as error:
                print(f"traffic.bench: {error}", file=sys.stderr)
                return 2
        http_file = None
        if any(case.workload == "http-server" for _, case, _ in steps):
            http_file = stack.enter_context(http_workloads.HttpFile.made(args.http_file_mib << 20))
        for repeat, case, server in steps:
            progress.step(f"{case.label} | {server} | repeat {repeat + 1}/{args.repeat}")
            row = case.rows[server]
            try:
                measured = run_one(case, server, args, placement, binaries, fixture, http_file)
            except workloads.WorkloadError as error:
                row.runs.append(None)
                row.client_bound.append(False)
                row.errors.append(str(error))
            else:
                row.runs.append(measured.metrics)
                row.client_bound.append(measured.client_bound)
                if "error" in measured.details:  # a result, but one to explain
                    row.errors.append(measured.details["error"])
            progress.advance()
    progress.close()

    meta: dict[str, Any] = {
        "pin": args.pin,
        "repeat": args.repeat,
        "seconds": args.seconds,
        "warmup": args.warmup,
        "quick": args.quick,
        "file": {
            "mib": args.file_mib,
            "upload_mib": args.upload_mib,
            "connections": args.file_connections,
        },
        "http": {"in_flight": args.http_in_flight, "download_mib": args.http_download_mib},
        "http_server": {
            "connections": args.http_connections,
            "file_mib": args.http_file_mib,
            "file_connections": args.http_file_connections,
        },
        "cpus": sorted(os.sched_getaffinity(0)),
        "placement": {
            "server": sorted(placement.server) if placement.server else None,
            "client": sorted(placement.client) if placement.client else None,
        },
        "backend": backend,
        "cycle_policy": cycle_policy(),
        "client_bound_threshold": workloads.CLIENT_BOUND,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": _versions(),
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "notes": notes,
    }
    print(report.render(cases, meta))
    if args.json:
        report.write_json(args.json, cases, meta)
        print(f"\nJSON written to {args.json}")
    if args.plot:
        why = report.plot(args.plot, cases, meta)
        print(f"\nplot: {why}" if why else f"\nplot written to {args.plot}")
    return 0


def _lacking_file_methods(cases: list[Case], runnable: list[str], notes: list[str]) -> set[str]:
    """The traffic rows whose streams lack the file workload's methods (a
    traffic from before them), each with a note."""
    lacking = set()
    if any(case.workload == "file" for case in cases):
        for server in runnable:
            if workloads.base_name(server) not in servers.FILE_SERVERS:
                continue
            why = servers.file_methods_missing(server)
            if why is not None:
                lacking.add(server)
                notes.append(f"{server} skipped in the file workload: {why}")
    return lacking


def _lacking_http_modules(cases: list[Case], runnable: list[str], notes: list[str]) -> set[str]:
    """The rows whose HTTP client cannot run here (httpx, or traffic's
    transport, not importable), each with a note."""
    lacking = set()
    if any(case.workload == "http-client" for case in cases):
        for server in runnable:
            row = http_client.ROWS.get(workloads.base_name(server))
            if row is None:
                continue
            absent = http_client.missing_module(row)
            if absent is not None:
                lacking.add(server)
                notes.append(
                    f"{server} skipped in the http-client workload: {absent} is not importable"
                )
    return lacking


def _rotate(names: list[str], by: int) -> list[str]:
    if not names:
        return names
    by %= len(names)
    return names[by:] + names[:by]
