"""The fault suite's pytest wiring.

- The suite runs when ``tests/faults`` (or a file in it) is named on the
  command line: ``python -m pytest tests/faults``.  A plain
  ``python -m pytest`` (the README's) deselects it: it needs root for most
  of its scenarios and about a minute and a half.
- ``TRAFFIC_FAULTS_REQUIRED=1`` (CI sets it) turns every skip of the suite
  into a failure: a run that skipped a fault is not green.
- The ``faults_quick`` marker names the quick scenarios (a ThreadSanitizer
  run takes ``-m faults_quick``).
- At the session's end nothing of the suite may be left: no namespace, no
  cgroup, the root namespace's qdiscs, nftables ruleset and sysctls as
  they were.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from . import support

HERE = Path(__file__).resolve().parent


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "faults_quick: a quick fault scenario (the ThreadSanitizer run takes these)"
    )


def _named(config: pytest.Config) -> bool:
    """Whether the command line named the suite (or something in it)."""
    base = Path(config.invocation_params.dir)
    for arg in config.args:
        path = (base / arg.split("::", 1)[0]).resolve()
        if path == HERE or HERE in path.parents:
            return True
    return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _named(config) or os.environ.get("TRAFFIC_FAULTS") == "1":
        return
    ours = [item for item in items if HERE in Path(str(item.path)).parents]
    if ours:
        config.hook.pytest_deselected(items=ours)
        items[:] = [item for item in items if item not in ours]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if support.REQUIRED and report.skipped and HERE in Path(str(item.path)).parents:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"TRAFFIC_FAULTS_REQUIRED=1, but the scenario was skipped: {reason}"


@pytest.fixture(scope="session", autouse=True)
def _nothing_left_behind() -> Iterator[None]:
    before = support.root_state()
    yield
    left = support.leftovers()
    assert not left, f"the fault suite left behind: {left}"
    after = support.root_state()
    changed = sorted(key for key in before if before[key] != after.get(key))
    assert not changed, f"the fault suite changed the root namespace's {changed}"
