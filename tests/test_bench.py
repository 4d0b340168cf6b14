"""Smoke test of ``python -m traffic.bench``: its smallest configuration runs
end to end and writes JSON of the expected shape.  A benchmark is not a test
(issue 6): nothing here judges a number beyond "something was transferred".
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import traffic
from traffic.bench import build, driver, instructions, servers, stream, workloads

pytestmark = pytest.mark.skipif(build.compiler() is None, reason="no C compiler (gcc)")

ROOT = Path(__file__).resolve().parents[1]


def run_module(module: str, args: list[str], cache: Path) -> subprocess.CompletedProcess[str]:
    """``python -m module args`` from the checkout, its C programs built into ``cache``."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env=dict(os.environ, TRAFFIC_BENCH_CACHE=str(cache)),
        capture_output=True,
        text=True,
        timeout=50,
    )


def test_smallest_run_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    pin = "cross" if len(os.sched_getaffinity(0)) >= 2 else "same"
    done = run_module(
        "traffic.bench",
        [
            "--only", "echo",
            "--servers", "trio,traffic-trio,trio-floor",
            "--connections", "1",
            "--seconds", "0.5",
            "--warmup", "0.1",
            "--repeat", "1",
            "--pin", pin,
            "--json", str(out),
        ],
        tmp_path / "cache",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "echo N=1" in done.stdout
    assert f"({traffic.backend} backend)" in done.stdout

    results = json.loads(out.read_text())
    assert results["meta"]["repeat"] == 1
    assert results["meta"]["pin"] == pin
    assert results["meta"]["backend"] == traffic.backend
    [case] = results["cases"]
    assert (case["workload"], case["param"]) == ("echo", 1)
    assert set(case["results"]) == {"trio", "traffic-trio", "trio-floor"}
    for server, row in case["results"].items():
        assert row["status"] == "ok", (server, row)
        assert row["errors"] == [], (server, row["errors"])
        [run] = row["runs"]
        assert run["rate"] > 0
        assert run["per_cpu"] > 0
        assert run["p50_us"] >= 0
        assert row["summary"]["rate"]["median"] == run["rate"]
        assert isinstance(row["client_bound"][0], bool)
    assert case["results"]["trio"]["ratio_to_trio"]["rate"] == 1.0
    assert case["results"]["traffic-trio"]["ratio_to_trio"]["rate"] > 0


def has_uvloop() -> bool:
    return importlib.util.find_spec("uvloop") is not None


def test_every_row_runs_a_server() -> None:
    """Each row of the driver names a server (servers.py), each anyio server
    exists on every loop of ANYIO_LOOPS for anyio's streams and for
    traffic's, in the servers and in the stream workload, and is a row."""
    for name in driver.ALL_SERVERS:
        assert name == workloads.C_SERVER or workloads.base_name(name) in servers.SERVERS, name
    assert set(driver.OPTIONAL_SERVERS) <= set(driver.ALL_SERVERS)
    for loop in servers.ANYIO_LOOPS:
        for name in (f"anyio-{loop}", f"traffic-anyio-{loop}"):
            assert name in servers.SERVERS, name
            assert name in stream.STREAMS, name
            assert name in driver.ALL_SERVERS, name


@pytest.mark.parametrize("loop", sorted(servers.ANYIO_LOOPS))
def test_anyio_rows_run_on_their_loop(loop: str) -> None:
    """``anyio_run`` runs on the library and event loop its row names:
    the uvloop rows on uvloop's loop, not asyncio's.  In a child process, as
    the servers run (libuv keeps a pipe of its own from its first loop to
    the process's exit, which this process's leak checks would count)."""
    if loop == "uvloop" and not has_uvloop():
        pytest.skip("uvloop is not installed")
    probe = (
        "import asyncio, sniffio\n"
        "from traffic.bench.servers import anyio_run\n"
        "async def which():\n"
        "    if sniffio.current_async_library() == 'trio':\n"
        "        return 'trio'\n"
        "    return type(asyncio.get_running_loop()).__module__.split('.')[0]\n"
        f"print(anyio_run({loop!r}, which))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == loop


def test_uvloop_rows_skipped_without_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without uvloop the anyio rows on it are left out with a note naming
    it; uvloop's own rows stay, shown as not installed."""
    names = "anyio-asyncio,traffic-anyio-asyncio,anyio-uvloop,traffic-anyio-uvloop,uvloop"
    args = driver.parse_args(["--only", "echo", "--servers", names])
    monkeypatch.setitem(sys.modules, "uvloop", None)  # what find_spec takes for "absent"
    notes: list[str] = []
    _, runnable, missing = driver.plan(args, notes)
    assert runnable == ["trio", "traffic-anyio-asyncio", "anyio-asyncio"]
    assert missing == ["uvloop"]
    assert notes == [
        "traffic-anyio-uvloop skipped: uvloop is not importable",
        "anyio-uvloop skipped: uvloop is not importable",
    ]


@pytest.mark.skipif(not has_uvloop(), reason="uvloop is not installed")
def test_anyio_rows_on_uvloop_run(tmp_path: Path) -> None:
    """The anyio rows on uvloop run beside those on asyncio in the echo
    and stream workloads (servers.py and stream.py) and transfer data."""
    out = tmp_path / "out.json"
    rows = ["anyio-asyncio", "traffic-anyio-asyncio", "anyio-uvloop", "traffic-anyio-uvloop"]
    done = run_module(
        "traffic.bench",
        [
            "--only", "echo,stream",
            "--servers", ",".join(rows),
            "--connections", "1",
            "--seconds", "0.3",
            "--warmup", "0.1",
            "--repeat", "1",
            "--pin", "none",
            "--json", str(out),
        ],
        tmp_path / "cache",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    echo, pair = json.loads(out.read_text())["cases"]
    assert (echo["workload"], pair["workload"]) == ("echo", "stream")
    for case, metric in ((echo, "rate"), (pair, "gbps")):
        assert set(case["results"]) == {"trio", *rows}
        for server, row in case["results"].items():
            assert row["status"] == "ok", (server, row)
            assert row["errors"] == [], (server, row["errors"])
            [run] = row["runs"]
            assert run[metric] > 0, (server, run)


def test_threads_reports_the_cycle_thread(tmp_path: Path) -> None:
    """``python -m traffic.bench.threads`` names each server thread with its
    cost per round trip, or says it slept throughout (traffic's cycle thread
    may: a busy trio takes most data inline); traffic's server has its
    ``traffic-cycle`` thread."""
    done = run_module(
        "traffic.bench.threads",
        ["--connections", "4", "--seconds", "0.5", "--pin", "none", "traffic-trio-normal"],
        tmp_path / "cache",
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("traffic-trio-normal: ")
    [cycle] = [line for line in lines[1:] if line.split()[0] == "traffic-cycle"] or [done.stdout]
    assert "us/rt" in cycle or cycle.endswith("slept throughout")


@pytest.mark.parametrize("workload", instructions.WORKLOADS)
@pytest.mark.parametrize("name", instructions.IMPLEMENTATIONS)
def test_instruction_workloads_transfer_everything(name: str, workload: str) -> None:
    """Each workload of ``python -m traffic.bench.instructions`` runs on each
    implementation (its loops check that every byte arrived), and closes
    what it opened."""
    before = set(os.listdir("/proc/self/fd"))
    instructions.work(name, workload, 1)
    assert set(os.listdir("/proc/self/fd")) <= before


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="no valgrind")
def test_instructions_counts_under_valgrind(tmp_path: Path) -> None:
    """The counter runs its workers under valgrind and reports a positive
    count per operation, with the ratio to trio."""
    done = run_module(
        "traffic.bench.instructions",
        ["--only", "inline", "--implementations", "trio,trio-floor"],
        tmp_path / "cache",
    )
    assert done.returncode == 0, done.stderr
    rows = {
        cells[0]: cells[1:]
        for line in done.stdout.splitlines()
        if line.startswith("| ") and (cells := [c.strip() for c in line.strip("|").split("|")])
    }
    assert rows["trio"][1] == "1.00"
    floor = float(rows["trio-floor"][0].replace(",", ""))
    assert 0 < floor < float(rows["trio"][0].replace(",", ""))
