"""Run httpcore's, httpx's and hypercorn's own test suites on traffic, and compare.

CI's ``hosts`` step (``.ci/run``)::

    python .ci/hosts/run.py --python .venv/bin/python --scratch DIR

1. ``pip download --no-binary :all: --no-deps --require-hashes`` the sdists
   pinned in ``sdists.txt`` (httpcore 1.0.9, httpx 0.28.1, hypercorn 0.18.0:
   they ship their tests) and unpack them into the scratch directory;
2. ``pip install`` ``requirements.txt`` (the suites' test dependencies,
   pinned) into the venv;
3. run each suite's async tests (``host_suite`` selects them: anyio's, on
   asyncio and on trio, and pytest-trio's) with ``-m 'not network'``,
   ``--timeout`` and ``deselected.txt``, from the unpacked source (the
   sdist's own httpcore, httpx and hypercorn are imported, never an
   installed one), twice: the baseline on the hosts' own backends, then
   with the suite's traffic plugin:

   * httpcore and httpx (all their async tests), ``-p traffic_hosts``:
     traffic's backend httpcore's default, traffic's drop-in httpx's
     default transport, connections asked of traffic counted per test;
   * hypercorn (``tests/e2e`` and ``tests/trio`` only: its asyncio tests
     never meet traffic), ``-p traffic_hypercorn``: ``hypercorn.trio.serve``
     is traffic's drop-in (the e2e tests serve through traffic's listeners),
     and the connection tests' ``trio.testing.memory_stream_pair()`` a
     connected pair of traffic streams (hypercorn's ``TCPServer`` on one
     end, the test's client on the other); traffic's streams and listeners
     counted per test;
4. compare: per suite and backend "N of M host tests reached traffic", the
   tests that failed on both runs (not traffic's), the ones that failed on
   the baseline only, and the ones that failed only on traffic, which fail
   the step unless ``known_failures.txt`` lists them with a reason. So does
   anything that makes the comparison meaningless: a run that did not
   finish (pytest's exit status beyond 1), a collection error, runs that did
   not select the same tests, a test with no outcome, a lookup or connection
   beyond loopback, a stale deselect entry, a host imported from anywhere
   but its sdist, traffic's defaults not in place or never reached.

``--no-download DIR`` takes the unpacked sdists from DIR instead,
``--no-install`` skips the pip install and ``--suite NAME`` (repeatable)
runs only that suite (all for local iteration).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import subprocess
import sys
import tarfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
TIMEOUT = 30  # seconds per test (pytest-timeout): a hang fails fast
RUNS = ("baseline", "traffic")
FAILED = ("failed", "error")
# The exception line of a traceback printed in an exception group's frame.
RAISED = re.compile(r"^[ |+]*[A-Za-z_][\w.]*(Error|Exception|Warning|Exit|Interrupt): ")


@dataclass(frozen=True)
class Suite:
    """How a host's suite runs on traffic, and what counts as reaching it."""

    plugin: str  # the traffic run's plugin (in this directory)
    backends: tuple[str, ...]  # the async backends its selected tests run on
    self_checks: tuple[str, ...]  # the plugin's record of what is patched
    reached: tuple[str, ...]  # per-test counts: any nonzero, the test reached traffic
    tallies: tuple[tuple[str, tuple[str, ...]], ...]  # (label, counts summed)
    path: tuple[str, ...] = ()  # sys.path before the others' sdists ("src" layout)
    others: tuple[str, ...] = ()  # the other sdists it imports (run from theirs too)
    folders: tuple[str, ...] = ("tests",)  # where its test modules are taken
    pytest_args: tuple[str, ...] = ()


def _http_suite(other: str) -> Suite:
    return Suite(
        plugin="traffic_hosts",
        backends=("asyncio", "trio"),
        # traffic_hosts's record of what the defaults are on the traffic run.
        self_checks=(
            "pool_backend_is_traffic",
            "client_transport_is_traffic",
            "client_transport_backend_is_traffic",
            "client_transport_backend_counted",
        ),
        reached=("tcp_asked", "unix_asked"),
        tallies=(("connections opened by traffic", ("tcp_opened", "unix_opened")),),
        others=(other,),
    )


SUITES = {
    # httpx imports httpcore, and traffic_hosts imports both.
    "httpcore": _http_suite("httpx"),
    "httpx": _http_suite("httpcore"),
    "hypercorn": Suite(
        plugin="traffic_hypercorn",
        backends=("trio",),
        self_checks=(
            "serve_is_traffic",
            "stream_pair_is_traffic",
            "stream_pair_works",
            "streams_counted",
        ),
        reached=("streams", "listeners"),
        tallies=(("listeners", ("listeners",)), ("streams", ("streams",))),
        path=("src",),
        others=("httpcore", "httpx"),  # the e2e tests' client
        folders=("tests/e2e", "tests/trio"),
        # Its pyproject's addopts name pytest-cov's --no-cov-on-fail (not
        # installed: coverage is not the point here) and --showlocals.
        pytest_args=("-o", "addopts=--strict-markers"),
    ),
}


def log(message: str = "") -> None:
    print(message, flush=True)


def sh(command: list[str], **kwargs: object) -> None:
    log("+ " + " ".join(command))
    subprocess.run(command, check=True, **kwargs)  # type: ignore[call-overload]


def read_listing(path: Path) -> dict[tuple[str, str], str]:
    """``SUITE NODEID  # reason`` lines: {(suite, nodeid): reason}."""
    entries = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        entry, _, reason = line.partition("#")
        fields = entry.split()
        if not fields:
            continue
        if len(fields) != 2 or fields[0] not in SUITES or not reason.strip():
            sys.exit(f"{path}:{number}: expected 'SUITE NODEID  # reason', got {line!r}")
        entries[fields[0], fields[1]] = reason.strip()
    return entries


def listed(entries: dict[tuple[str, str], str], suite: str, nodeid: str) -> str | None:
    for (entry_suite, entry), reason in entries.items():
        if entry_suite == suite and (nodeid == entry or nodeid.startswith(entry + "[")):
            return reason
    return None


def fetch(python: str, scratch: Path) -> dict[str, Path]:
    """Download the pinned sdists and unpack them: {suite: source directory}."""
    downloads = scratch / "sdists"
    download = [python, "-m", "pip", "download", "--quiet", "--no-binary", ":all:", "--no-deps"]
    sh([*download, "--require-hashes", "-r", str(HERE / "sdists.txt"), "-d", str(downloads)])
    sources = {}
    for suite in SUITES:
        (archive,) = downloads.glob(f"{suite}-*.tar.gz")
        with tarfile.open(archive) as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(scratch, filter="data")
            else:  # pragma: no cover (Python before 3.11.4)
                tar.extractall(scratch)
        sources[suite] = scratch / archive.name.removesuffix(".tar.gz")
    return sources


def test_files(source: Path, folders: tuple[str, ...]) -> list[str]:
    """The suite's test modules that define an async test (the only ones run)."""
    found = []
    for path in sorted(p for folder in folders for p in (source / folder).rglob("test_*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        if any(
            isinstance(node, ast.AsyncFunctionDef) and node.name.startswith("test")
            for node in ast.walk(tree)
        ):
            found.append(str(path.relative_to(source)))
    return found


def run_suite(
    python: str, suite: str, run: str, sources: dict[str, Path], reports: Path
) -> tuple[dict, dict | None, float]:
    spec, source = SUITES[suite], sources[suite]
    host_report = reports / f"{suite}-{run}.json"
    traffic_report = reports / f"{suite}-{run}-counts.json"
    # The suite's own configuration, named (-c): pytest looks for it from its
    # path arguments, and takes the plugins' options for paths too unless
    # they are written --option=VALUE (deselected.txt's would find this
    # checkout's pyproject.toml, and traffic's pytest configuration).
    command = [python, "-m", "pytest", "-q", "-c", "pyproject.toml", "-p", "no:cacheprovider"]
    command += ["-p", "host_suite"]
    if run == "traffic":
        command += ["-p", spec.plugin, f"--traffic-report={traffic_report}"]
    command += ["-m", "not network", f"--timeout={TIMEOUT}", f"--host-suite={suite}"]
    command += [*spec.pytest_args, f"--host-deselect={HERE / 'deselected.txt'}"]
    command += [f"--host-report={host_report}", *test_files(source, spec.folders)]
    # `python -m pytest` from the unpacked sdist: its package comes first on
    # sys.path (or its src/ directory), the other sdists it imports after it.
    path = [str(source / entry) for entry in spec.path]
    path += [str(HERE), *(str(sources[other]) for other in spec.others)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(path), PYTHONDONTWRITEBYTECODE="1")
    output = reports / f"{suite}-{run}.log"
    log(f"+ (cd {source.name} && {' '.join(command[:14])} ... ) > {output.name}")
    started = time.monotonic()
    with open(output, "w", encoding="utf-8") as out:
        status = subprocess.run(command, cwd=source, env=env, stdout=out, stderr=subprocess.STDOUT)
    took = time.monotonic() - started
    lines = output.read_text(encoding="utf-8", errors="replace").splitlines()
    closing = next((line for line in reversed(lines) if line.strip()), "")
    log(f"  {suite} {run}: {closing.strip('= ')}  (exit {status.returncode}, {took:.1f}s)")
    if status.returncode not in (0, 1) or not host_report.exists():
        log("\n".join(lines[-40:]))
        sys.exit(f"{suite} {run}: pytest did not finish its run (exit {status.returncode})")
    report = json.loads(host_report.read_text(encoding="utf-8"))
    counts = json.loads(traffic_report.read_text(encoding="utf-8")) if run == "traffic" else None
    return report, counts, took


def key_lines(longrepr: list[str], limit: int = 14) -> list[str]:
    """A failure's gist: its ``E`` lines and where it was raised."""
    picked = []
    for text in longrepr:
        lines = text.splitlines()
        picked.append(lines[0][:200] if lines else "")
        errors = [line for line in lines if line.startswith("E ")]
        if not errors:  # an exception group's traceback: its exceptions' lines
            errors = [line for line in lines if RAISED.match(line)]
        where = [
            line
            for line in lines
            if ":" in line and not line.startswith(" ") and line.split(":", 1)[0].endswith(".py")
        ]
        picked += [line[:200] for line in errors[:limit]] + where[-2:]
    return picked[: limit + 6]


def compare(
    suite: str, results: dict[str, dict], known: dict[tuple[str, str], str], source: Path
) -> list[str]:
    """Print the comparison of a suite's two runs; return what fails the step."""
    spec = SUITES[suite]
    problems = []
    base, on_traffic = results["baseline"], results["traffic"]
    counts = results["counts"]
    selected = base["selected"]
    if selected != on_traffic["selected"]:
        only = sorted(set(selected) ^ set(on_traffic["selected"]))
        problems.append(f"{suite}: the two runs selected different tests: {only[:10]}")
    for run in RUNS:
        report = results[run]
        missing = sorted(set(report["selected"]) - set(report["outcomes"]))
        if missing:
            problems.append(f"{suite} {run}: no outcome for {len(missing)} tests: {missing[:5]}")
        if report["collection_errors"]:
            problems.append(f"{suite} {run}: collection errors: {report['collection_errors']}")
        if report["deselect_unmatched"]:
            stale = report["deselect_unmatched"]
            problems.append(f"{suite}: deselected.txt entries match nothing: {stale}")
        for violation in report["violations"]:
            nodeid, what = violation["nodeid"], violation["what"]
            problems.append(
                f"{suite} {run}: {nodeid} reached beyond loopback: {what} (deselect it)"
            )
        unknown = sorted(n for n, b in report["selected"].items() if b not in spec.backends)
        if unknown:
            problems.append(f"{suite} {run}: tests on no known backend: {unknown[:5]}")
        imported = report["versions"].get(suite, {}).get("file", "?")
        if not Path(imported).resolve().is_relative_to(source.resolve()):
            problems.append(f"{suite} {run}: {suite} imported from {imported}, not its sdist")
    for violation in counts["violations"]:
        nodeid, what = violation["nodeid"], violation["what"]
        problems.append(f"{suite} traffic: {nodeid} asked traffic for {what} (deselect it)")
    info = counts["info"]
    for check in spec.self_checks:
        if not info.get(check):
            problems.append(f"{suite} traffic: self-check {check} is false: {info}")

    def outcome(report: dict, nodeid: str) -> str:
        return report["outcomes"].get(nodeid, {}).get("outcome", "missing")

    log()
    log(
        f"{suite}: {len(selected)} async host tests; defaults on the traffic run: "
        f"{', '.join(info.get('patched', []))}"
    )
    versions = on_traffic["versions"]
    log(
        "  imported: "
        + ", ".join(
            f"{n} {versions[n]['version']} ({versions[n]['file']})".replace(" ? ", " ")
            for n in (suite, *spec.others)
            if n in versions
        )
    )
    connections = counts["connections"]

    def tally(nodeid: str, keys: tuple[str, ...]) -> int:
        record = connections.get(nodeid, {})
        return sum(int(record.get(key, 0)) for key in keys)

    for backend in spec.backends:
        tests = [n for n, b in selected.items() if b == backend]
        reached = [n for n in tests if tally(n, spec.reached)]
        made = ", ".join(
            f"{sum(tally(n, keys) for n in tests)} {label}" for label, keys in spec.tallies
        )
        outcomes = {run: Counter(outcome(results[run], n) for n in tests) for run in RUNS}
        log(
            f"  {suite} {backend}: {len(reached)} of {len(tests)} host tests reached traffic "
            f"({made})"
        )
        for run in RUNS:
            log(f"    {run}: " + ", ".join(f"{k} {v}" for k, v in sorted(outcomes[run].items())))
        if not tests:
            problems.append(f"{suite}: no test ran on {backend}")
        elif not reached:
            problems.append(f"{suite} {backend}: no host test reached traffic")
    reached_all = [n for n in selected if tally(n, spec.reached)]
    log(f"  {suite}: {len(reached_all)} of {len(selected)} host tests reached traffic")
    outside = sorted(set(connections) - set(selected))
    if outside:
        log(f"  (connections outside any selected test: {outside})")

    both, traffic_only, baseline_only = [], [], []
    for nodeid in selected:
        failed_base = outcome(base, nodeid) in FAILED
        failed_traffic = outcome(on_traffic, nodeid) in FAILED
        if failed_base and failed_traffic:
            both.append(nodeid)
        elif failed_traffic:
            traffic_only.append(nodeid)
        elif failed_base:
            baseline_only.append(nodeid)
    log(f"  failed on both runs (not traffic's): {len(both)}")
    for nodeid in sorted(both):
        log(f"    {nodeid}")
        for line in key_lines(on_traffic["outcomes"][nodeid].get("longrepr", []), 4):
            log(f"        {line}")
    log(f"  failed on the baseline only: {len(baseline_only)}")
    for nodeid in sorted(baseline_only):
        log(f"    {nodeid}")
        for line in key_lines(base["outcomes"][nodeid].get("longrepr", []), 4):
            log(f"        {line}")
    log(f"  failed only on traffic: {len(traffic_only)}")
    for nodeid in sorted(traffic_only):
        reason = listed(known, suite, nodeid)
        log(f"    {nodeid}" + (f"  (known: {reason})" if reason else ""))
        for line in key_lines(on_traffic["outcomes"][nodeid].get("longrepr", [])):
            log(f"        {line}")
        if reason is None:
            problems.append(f"{suite}: {nodeid} failed only on traffic")
    for (entry_suite, entry), reason in known.items():
        if entry_suite == suite and not any(
            n == entry or n.startswith(entry + "[") for n in traffic_only
        ):
            log(f"  known_failures.txt: {entry} did not fail only on traffic: remove it ({reason})")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--python", required=True, help="the venv's python (traffic installed)")
    parser.add_argument("--scratch", required=True, type=Path, help="an empty scratch directory")
    parser.add_argument("--no-download", type=Path, metavar="DIR", help="unpacked sdists in DIR")
    parser.add_argument("--no-install", action="store_true", help="no pip install")
    parser.add_argument("--suite", action="append", choices=list(SUITES), help="only this suite")
    args = parser.parse_args()
    args.python = os.path.abspath(args.python)  # the runs change directory; a venv's link stays
    started = time.monotonic()
    args.scratch.mkdir(parents=True, exist_ok=True)
    reports = args.scratch / "reports"
    reports.mkdir(exist_ok=True)

    if args.no_download:
        sources = {}
        for suite in SUITES:
            (sources[suite],) = (p for p in args.no_download.glob(f"{suite}-*") if p.is_dir())
    else:
        sources = fetch(args.python, args.scratch)
    if not args.no_install:
        sh([args.python, "-m", "pip", "install", "--quiet", "-r", str(HERE / "requirements.txt")])
    known = read_listing(HERE / "known_failures.txt")
    read_listing(HERE / "deselected.txt")  # well-formed (host_suite applies it)

    problems = []
    timings = []
    for suite in args.suite or SUITES:
        results: dict[str, dict] = {}
        for run in RUNS:
            report, counts, took = run_suite(args.python, suite, run, sources, reports)
            results[run] = report
            if counts is not None:
                results["counts"] = counts
            timings.append(f"{suite} {run} {took:.1f}s")
        problems += compare(suite, results, known, sources[suite])

    log()
    log(
        f"host suites: {', '.join(timings)}; {time.monotonic() - started:.0f}s in all "
        f"(logs and reports: {reports})"
    )
    if problems:
        log(f"host suites FAILED ({len(problems)}):")
        for problem in problems:
            log(f"  {problem}")
        sys.exit(1)
    log("host suites: no test failed only on traffic")


if __name__ == "__main__":
    main()
