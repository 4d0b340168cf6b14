"""pytest plugin for both runs of a host suite (``-p host_suite``): what runs, what it reached.

Loaded by ``run.py`` into httpcore's, httpx's and hypercorn's own test
suites, on the baseline run and on the traffic run alike, so the two runs select the same
tests and are recorded the same way:

* Only the suite's async tests run (coroutine test functions: anyio's
  ``@pytest.mark.anyio``, parametrized by anyio over asyncio and trio, and
  pytest-trio's ``@pytest.mark.trio``); the synchronous ones never touch an
  async network backend. ``--host-deselect FILE`` deselects more by node id
  (every parametrization of an id), each with its reason; an entry that
  matches nothing is reported, so the list cannot go stale.
* The loopback guard: for the whole session, a name lookup
  (``socket.getaddrinfo``) of anything but a loopback name or a numeric
  address, and a ``connect`` of an IPv4/IPv6 socket to anything but a
  loopback address, is refused (``socket.gaierror`` / ``OSError``) before it
  leaves the process, and recorded against the running test (an
  unspecified address counts as loopback: hypercorn's e2e tests bind
  0.0.0.0 and connect to it). The runner fails on any: such a test belongs
  in the deselect list, never in a run. traffic's core connects its sockets
  itself, so the traffic plugin (``traffic_hosts``) guards its backend's
  ``connect_tcp`` too (``traffic_hypercorn``'s traffic connects nothing:
  its listeners accept, its stream pairs come from ``socketpair()``).
* ``--host-report PATH``: a JSON report of every selected test's backend and
  outcome (with the failure's text), the guard's refusals and the versions
  of the host libraries imported.
"""

from __future__ import annotations

import inspect
import ipaddress
import json
import socket
import sys
from collections.abc import Generator
from typing import Any

import pytest

_current: list[str] = ["<session>"]
_violations: list[dict[str, str]] = []
_saved: dict[str, Any] = {}

LOOPBACK_NAMES = frozenset({"localhost", "localhost.", "ip6-localhost", "ip6-loopback"})


def is_loopback_host(host: object) -> bool:
    """True for a loopback name or a loopback (or unspecified) address."""
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    if not isinstance(host, str):
        return False
    host = host.strip("[]").lower()
    if host in LOOPBACK_NAMES:
        return True
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified


def _is_numeric(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return False
    return True


def record_violation(what: str) -> None:
    _violations.append({"nodeid": _current[0], "what": what})


def _guarded_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
    name = host.decode("ascii", "replace") if isinstance(host, bytes) else host
    if name not in (None, "") and not (is_loopback_host(name) or _is_numeric(str(name))):
        record_violation(f"getaddrinfo({name!r})")
        raise socket.gaierror(socket.EAI_NONAME, f"host suites: no lookup of {name!r}")
    return _saved["getaddrinfo"](host, *args, **kwargs)


def _check_address(sock: socket.socket, address: Any, call: str) -> None:
    inet = sock.family in (socket.AF_INET, socket.AF_INET6) and isinstance(address, tuple)
    if inet and not is_loopback_host(address[0]):
        record_violation(f"{call}({address!r})")
        raise OSError(f"host suites: no {call} to {address!r} (not loopback)")


def _guarded_connect(self: socket.socket, address: Any) -> None:
    _check_address(self, address, "connect")
    return _saved["connect"](self, address)


def _guarded_connect_ex(self: socket.socket, address: Any) -> int:
    _check_address(self, address, "connect_ex")
    return _saved["connect_ex"](self, address)  # type: ignore[no-any-return]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("host_suite", "host suites run on traffic (.ci/hosts)")
    group.addoption("--host-report", help="write the run's JSON report here")
    group.addoption("--host-suite", default="", help="the suite's name, for --host-deselect")
    group.addoption("--host-deselect", help="file of 'SUITE NODEID  # reason' lines to deselect")


def pytest_configure(config: pytest.Config) -> None:
    # httpx registers the marker it puts on tests that reach outside hosts;
    # httpcore has none (and --strict-markers), yet runs with the same -m.
    config.addinivalue_line("markers", "network: reaches a host outside this machine")
    _saved["getaddrinfo"] = socket.getaddrinfo
    _saved["connect"] = socket.socket.connect
    _saved["connect_ex"] = socket.socket.connect_ex
    socket.getaddrinfo = _guarded_getaddrinfo
    socket.socket.connect = _guarded_connect  # type: ignore[method-assign]
    socket.socket.connect_ex = _guarded_connect_ex  # type: ignore[method-assign]
    _state[:] = [_State(config)]


def pytest_unconfigure(config: pytest.Config) -> None:
    if _saved:
        socket.getaddrinfo = _saved.pop("getaddrinfo")
        socket.socket.connect = _saved.pop("connect")  # type: ignore[method-assign]
        socket.socket.connect_ex = _saved.pop("connect_ex")  # type: ignore[method-assign]


class _State:
    def __init__(self, config: pytest.Config) -> None:
        self.deselect: dict[str, str] = {}  # node id -> reason
        self.matched: set[str] = set()
        self.selected: dict[str, str] = {}  # node id -> backend
        self.outcomes: dict[str, dict[str, Any]] = {}
        self.collection_errors: list[str] = []
        path = config.getoption("host_deselect")
        suite = config.getoption("host_suite")
        if path:
            with open(path, encoding="utf-8") as f:
                for line in f:
                    entry, _, reason = line.partition("#")
                    fields = entry.split()
                    if not fields:
                        continue
                    if len(fields) != 2:
                        raise pytest.UsageError(f"{path}: not 'SUITE NODEID  # reason': {line!r}")
                    if not reason.strip():
                        raise pytest.UsageError(f"{path}: {fields[1]} deselected for no reason")
                    if fields[0] == suite:
                        self.deselect[fields[1]] = reason.strip()


_state: list[_State] = []  # this session's, once configured


def _deselected_by(state: _State, nodeid: str) -> str | None:
    for entry in state.deselect:
        if nodeid == entry or nodeid.startswith(entry + "["):
            return entry
    return None


def backend_of(item: pytest.Item) -> str:
    callspec = getattr(item, "callspec", None)
    if callspec is not None and "anyio_backend" in callspec.params:
        backend = callspec.params["anyio_backend"]
        return str(backend[0] if isinstance(backend, tuple) else backend)
    if item.get_closest_marker("trio") is not None:
        return "trio"
    return "unknown"


def _is_async_test(item: pytest.Item) -> bool:
    function = getattr(item, "function", None)
    inner = getattr(getattr(function, "hypothesis", None), "inner_test", function)
    return inspect.iscoroutinefunction(inner)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    state = _state[0]
    kept, dropped = [], []
    for item in items:
        entry = _deselected_by(state, item.nodeid)
        if entry is not None:
            state.matched.add(entry)
            dropped.append(item)
        elif _is_async_test(item):
            kept.append(item)
        else:
            dropped.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session: pytest.Session) -> None:
    state = _state[0]
    for item in session.items:
        state.selected[item.nodeid] = backend_of(item)


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if report.failed and _state:
        _state[0].collection_errors.append(f"{report.nodeid}: {report.longreprtext}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None]:
    _current[0] = item.nodeid
    try:
        return (yield)
    finally:
        _current[0] = "<session>"


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if not _state:
        return
    state = _state[0]
    record = state.outcomes.setdefault(report.nodeid, {"outcome": "passed", "duration": 0.0})
    record["duration"] += report.duration
    xfail = hasattr(report, "wasxfail")
    outcome = None
    if report.when == "call":
        if report.passed:
            outcome = "xpassed" if xfail else "passed"
        elif report.skipped:
            outcome = "xfailed" if xfail else "skipped"
        else:
            outcome = "failed"
    elif report.failed:
        outcome = "error"
    elif report.skipped and report.when == "setup":
        outcome = "xfailed" if xfail else "skipped"
    if outcome is not None and record["outcome"] not in ("failed", "error"):
        record["outcome"] = outcome
    if report.failed:
        record.setdefault("longrepr", []).append(f"[{report.when}] {report.longreprtext}")


def _versions() -> dict[str, dict[str, str]]:
    found = {}
    for name in ("httpcore", "httpx", "hypercorn", "anyio", "trio", "sniffio", "pytest", "traffic"):
        module = sys.modules.get(name)
        if module is not None:
            found[name] = {
                "version": str(getattr(module, "__version__", "?")),
                "file": str(getattr(module, "__file__", "?")),
            }
    return found


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    state = _state[0]
    path = session.config.getoption("host_report")
    if not path:
        return
    report = {
        "exitstatus": int(exitstatus),
        "selected": state.selected,
        "outcomes": {
            nodeid: record for nodeid, record in state.outcomes.items() if nodeid in state.selected
        },
        "violations": _violations,
        "deselect_unmatched": sorted(set(state.deselect) - state.matched),
        "collection_errors": state.collection_errors,
        "versions": _versions(),
    }
    with open(path, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1, sort_keys=True)
