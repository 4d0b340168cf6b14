"""Smoke test of ``python -m traffic.bench``: its smallest configuration runs
end to end and writes JSON of the expected shape.  A benchmark is not a test
(issue 6): nothing here judges a number beyond "something was transferred".
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import traffic
from traffic.bench import (
    build,
    driver,
    file_workloads,
    http_client,
    http_server,
    http_workloads,
    instructions,
    report,
    servers,
    stream,
    workloads,
)

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


@pytest.mark.parametrize("name", build.PROGRAMS)
def test_programs_compile_without_warnings(name: str, tmp_path: Path) -> None:
    """Each C program compiles with the benchmark's flags and -Werror."""
    cc = build.compiler()
    assert cc is not None
    source = build.HERE / f"{name}.c"
    done = subprocess.run(
        [cc, *build.CFLAGS, "-Werror", "-o", tmp_path / name, source],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


def has_uvloop() -> bool:
    return importlib.util.find_spec("uvloop") is not None


def test_every_row_runs_a_server() -> None:
    """Each row of the driver names a server (servers.py) or an HTTP client
    (http_client.py), each anyio server exists on every loop of ANYIO_LOOPS
    for anyio's streams and for traffic's, in the servers and in the stream
    workload, and is a row."""
    for name in driver.ALL_SERVERS:
        base = workloads.base_name(name)
        known = {*servers.SERVERS, *servers.FILE_SERVERS, *http_client.ROWS, *http_server.ROWS}
        assert name == workloads.C_SERVER or base in known
    assert set(driver.OPTIONAL_SERVERS) <= set(driver.ALL_SERVERS)
    assert set(servers.FILE_SERVERS) <= set(driver.ALL_SERVERS)
    for loop in servers.ANYIO_LOOPS:
        for name in (f"anyio-{loop}", f"traffic-anyio-{loop}"):
            assert name in servers.SERVERS, name
            assert name in stream.STREAMS, name
            assert name in servers.FILE_SERVERS, name
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


# --- the file workload --------------------------------------------------------------

#: Small transfers for the tests: 2 connections, unaligned sizes (the client's
#: check has a path for bytes that do not fill a word).
FILE_BYTES = (1 << 20) + 3
UPLOAD_BYTES = (1 << 19) + 5
FILE_CONNECTIONS = 2


def file_row_unavailable(name: str) -> str | None:
    """Why the file row ``name`` cannot run here, or None."""
    absent = servers.missing_module(name)
    if absent is not None:
        return f"{absent} is not importable"
    return servers.file_methods_missing(name)


@pytest.fixture(scope="module")
def file_client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRAFFIC_BENCH_CACHE", str(tmp_path_factory.mktemp("cache")))
        return build.build("file_client")


@pytest.fixture(scope="module")
def file_fixture(file_client: Path) -> Iterator[file_workloads.FileFixture]:
    notes: list[str] = []
    with file_workloads.FileFixture.made(
        file_client, FILE_BYTES, UPLOAD_BYTES, FILE_CONNECTIONS, notes
    ) as fixture:
        yield fixture


def test_file_client_checks_files(file_fixture: file_workloads.FileFixture, tmp_path: Path) -> None:
    """``file_client verify`` takes the pattern file it made, and refuses one
    byte changed, one missing or one too many."""
    client, made = file_fixture.client, file_fixture.download
    assert made.stat().st_size == FILE_BYTES

    def verify(path: Path, size: int = FILE_BYTES) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [client, "verify", path, str(size)], capture_output=True, text=True, timeout=30
        )

    assert verify(made).returncode == 0
    content = made.read_bytes()
    assert len(set(content[i : i + 8] for i in range(0, 1 << 16, 8))) == 1 << 13  # no repeats
    wrong = tmp_path / "wrong"
    wrong.write_bytes(content[:1001] + bytes([content[1001] ^ 1]) + content[1002:])
    done = verify(wrong)
    assert done.returncode == 1 and "offset 1001" in done.stderr
    wrong.write_bytes(content[:-1])
    assert verify(wrong).returncode == 1
    wrong.write_bytes(content + content[:1])
    assert verify(wrong).returncode == 1
    assert verify(made, FILE_BYTES - 1).returncode == 1


def _fake_download(
    client: Path, send: bytes, expect: int, pieces: list[int]
) -> subprocess.CompletedProcess[str]:
    """``file_client download`` against a server sending ``send`` to each of
    two connections, in pieces of the sizes in ``pieces`` (cycled)."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        # A client that refuses a connection exits: the sends then fail.
        with listener, contextlib.suppress(OSError):
            for _ in range(2):
                conn, _ = listener.accept()
                with conn:
                    assert conn.recv(1) == b"g"
                    at, i = 0, 0
                    while at < len(send):
                        size = pieces[i % len(pieces)]
                        conn.sendall(send[at : at + size])
                        at, i = at + size, i + 1

    done = None
    with subprocess.Popen(
        [client, "download", f"127.0.0.1:{port}", "2", str(expect)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        assert process.stdout is not None
        assert process.stdout.readline() == "ready\n"
        # One connection at a time: the client connected both, the second waits
        # in the listen queue until the first is served.
        server = threading.Thread(target=serve)
        server.start()
        out, err = process.communicate("go\n", timeout=30)
        server.join(30)
        done = subprocess.CompletedProcess(process.args, process.returncode, out, err)
    return done


def test_file_client_checks_every_byte_downloaded(file_fixture: file_workloads.FileFixture) -> None:
    """The download client checks each byte against the pattern wherever the
    receives split it, and refuses a connection that brings a wrong byte,
    fewer bytes or more than expected."""
    client = file_fixture.client
    content = file_fixture.download.read_bytes()
    pieces = [1, 3, 7, 8, 4093, 65537]

    done = _fake_download(client, content, FILE_BYTES, pieces)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["bytes"] == 2 * FILE_BYTES
    assert result["connections"] == 2

    bad = bytearray(content)
    bad[777_777] ^= 0x40
    done = _fake_download(client, bytes(bad), FILE_BYTES, pieces)
    assert done.returncode == 1 and "wrong byte at offset 777777" in done.stderr
    done = _fake_download(client, content[:-2], FILE_BYTES, pieces)
    assert done.returncode == 1 and "closed after" in done.stderr
    done = _fake_download(client, content, FILE_BYTES - 1, pieces)
    assert done.returncode == 1 and "more than" in done.stderr


@pytest.mark.parametrize("case", ["download-unix-cold", "upload-tcp"])
@pytest.mark.parametrize("name", sorted(servers.FILE_SERVERS))
def test_file_servers_transfer_everything(
    name: str, case: str, file_fixture: file_workloads.FileFixture
) -> None:
    """Every file row serves a download (over AF_UNIX, the file's pages
    dropped first) and an upload (over TCP): every byte arrives, as the
    client checked, and every uploaded file is whole (checked after)."""
    why = file_row_unavailable(name)
    if why is not None:
        pytest.skip(why)
    measured = file_workloads.file_transfer(
        name, case, file_fixture, workloads.Placement.make("none")
    )
    each = UPLOAD_BYTES if case.startswith("upload") else FILE_BYTES
    assert measured.metrics["bytes"] == FILE_CONNECTIONS * each
    assert measured.metrics["gbps"] > 0
    assert measured.metrics["per_cpu"] > 0
    assert measured.metrics["server_cores"] >= 0
    assert not list(file_fixture.upload_root.iterdir())  # each run's uploads removed


def test_file_cases_planned() -> None:
    """``--only file`` plans one case per direction, family and cache state,
    ``--file-cases`` a subset; its rows of its own are n/a elsewhere, the
    rows without a file server n/a in it."""
    notes: list[str] = []
    cases, _, _ = driver.plan(driver.parse_args(["--only", "file"]), notes)
    assert [c.param for c in cases] == list(file_workloads.FILE_CASES)
    assert [c.label for c in cases][:2] == ["download tcp warm", "download tcp cold"]
    assert "256 MiB" in cases[0].note and "warm" in cases[0].note
    args = driver.parse_args(["--only", "file", "--file-cases", "upload-unix,download-unix-cold"])
    cases, _, _ = driver.plan(args, notes)
    assert [c.param for c in cases] == ["download-unix-cold", "upload-unix"]
    quick = driver.parse_args(["--only", "file", "--quick"])
    assert quick.file_cases == list(driver.QUICK_FILE_CASES)
    assert (quick.file_mib, quick.upload_mib) == (driver.QUICK_FILE_MIB, driver.QUICK_UPLOAD_MIB)
    with pytest.raises(SystemExit):
        driver.parse_args(["--file-cases", "download-sideways"])
    [file_case] = driver.plan(
        driver.parse_args(["--only", "file", "--file-cases", "upload-tcp"]), notes
    )[0]
    [echo] = driver.plan(driver.parse_args(["--only", "echo", "--connections", "1"]), notes)[0]
    for name in ("asyncio-sendfile", "uvloop-streams"):
        assert driver.supported(file_case, name) and not driver.supported(echo, name)
    for name in (workloads.C_SERVER, "trio-floor", "asyncio", "uvloop", "uvloop-protocol"):
        assert driver.supported(echo, name) and not driver.supported(file_case, name)
    assert driver.supported(file_case, "traffic-trio-idle")  # traffic-trio's server
    assert notes == []


def test_file_workload_end_to_end(tmp_path: Path) -> None:
    """``--only file`` runs every case, reports GB/s and GB per server
    CPU-second for each row, in the tables, the summary (both), the JSON
    and the plot; traffic's row runs if its streams have the file methods,
    else is skipped with a note."""
    out, plot = tmp_path / "out.json", tmp_path / "out.png"
    rows = ["trio", "asyncio-sendfile", "traffic-trio"]
    done = run_module(
        "traffic.bench",
        [
            "--only", "file",
            "--servers", ",".join(rows),
            "--file-mib", "2",
            "--upload-mib", "1",
            "--file-connections", "2",
            "--repeat", "1",
            "--pin", "none",
            "--json", str(out),
            "--plot", str(plot),
        ],
        tmp_path / "cache",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "download tcp warm: GB/s" in done.stdout
    assert "download tcp warm: per CPU-s" in done.stdout
    assert "GB per server CPU-s" in done.stdout
    results = json.loads(out.read_text())
    assert results["meta"]["file"] == {"mib": 2, "upload_mib": 1, "connections": 2}
    cases = results["cases"]
    assert [c["param"] for c in cases] == list(file_workloads.FILE_CASES)
    lacking = servers.file_methods_missing("traffic-trio")
    for case in cases:
        assert case["workload"] == "file"
        assert case["headlines"] == ["gbps", "per_cpu"]
        each = (1 if case["param"].startswith("upload") else 2) << 20
        assert set(case["results"]) == set(rows)
        for server, row in case["results"].items():
            if server == "traffic-trio" and lacking:
                assert row["status"] == "skipped" and row["runs"] == []
                continue
            assert row["status"] == "ok", (server, row)
            assert row["errors"] == [], (server, row["errors"])
            [run] = row["runs"]
            assert run["bytes"] == 2 * each, (server, run)
            assert run["gbps"] > 0 and run["per_cpu"] > 0, (server, run)
        assert case["results"]["trio"]["ratio_to_trio"]["gbps"] == 1.0
    if lacking:
        assert f"traffic-trio skipped in the file workload: {lacking}" in done.stdout
    if importlib.util.find_spec("matplotlib") is not None:
        assert plot.stat().st_size > 0


# --- the http-client workload ---------------------------------------------------------

#: A small download for the tests, not a multiple of the body's period or of
#: a read.
HTTP_DOWNLOAD_BYTES = (1 << 20) + 3


@pytest.fixture(scope="module")
def http_binaries(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRAFFIC_BENCH_CACHE", str(tmp_path_factory.mktemp("cache")))
        return {"http_responder": build.build("http_responder")}


@contextlib.contextmanager
def http_responder(binaries: dict[str, Path], download_bytes: int) -> Iterator[int]:
    """The responder's port, for the block."""
    command = [str(binaries["http_responder"]), str(download_bytes)]
    placement = workloads.Placement.make("none")
    with workloads.running_server("http_responder", placement, binaries, command=command) as peer:
        yield peer.port


def _http_exchange(port: int, requests: list[bytes], expect: int) -> bytes:
    """Send ``requests`` on one connection, one after the other (each once the
    answer before it is in), and return the ``expect`` bytes that came back."""
    got = b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        for request in requests:
            conn.sendall(request)
        while len(got) < expect:
            data = conn.recv(1 << 20)
            assert data, f"closed after {len(got)} of {expect} bytes"
            got += data
        conn.settimeout(0.1)
        with contextlib.suppress(TimeoutError):
            assert conn.recv(1) == b"", "more than the responses"
    return got


def test_http_responder_answers_as_the_floor(http_binaries: dict[str, Path]) -> None:
    """The C responder sends, byte for byte, the responses the floor backend
    replays (http_client.response): 1 KiB for any path, the download for
    /download, on one kept-alive connection, a request's Content-Length body
    read and dropped, a request that arrives in pieces answered once whole."""
    small = http_client.response(http_client.SMALL_BYTES)
    download = http_client.response(HTTP_DOWNLOAD_BYTES)
    assert small.endswith(http_client.SMALL_BODY)
    assert small.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\nContent-Length: 1024\r\n" in small
    get = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    post = b"POST /upload HTTP/1.1\r\nHost: x\r\ncontent-LENGTH: 5\r\n\r\nhello"
    with http_responder(http_binaries, HTTP_DOWNLOAD_BYTES) as port:
        assert _http_exchange(port, [get], len(small)) == small
        requests = [post, b"GET /download HTTP/1.1\r\n", b"Host: x\r\n\r\n", get]
        got = _http_exchange(port, requests, 2 * len(small) + len(download))
        assert got == small + download + small


def http_row_unavailable(name: str) -> str | None:
    absent = http_client.missing_module(http_client.ROWS[name])
    return None if absent is None else f"{absent} is not importable"


def test_http_client_rows_get_every_response(http_binaries: dict[str, Path]) -> None:
    """Every row of the http-client workload runs a little of both phases
    (4 requests in flight, a 1 MiB download) against the responder, and
    every response it got was the responder's: status 200, the body's size
    and CRC-32, for each request and each download.  The rows run side by
    side (each is a process of its own)."""
    rows = [name for name in http_client.ROWS if http_row_unavailable(name) is None]
    assert {"trio", "asyncio", "trio-floor", "asyncio-floor", "traffic-trio"} <= set(rows)
    placement = workloads.Placement.make("none")

    def run(name: str) -> workloads.Measured:
        return http_workloads.http_client(
            name, 0.1, 0.1, placement, http_binaries, 4, HTTP_DOWNLOAD_BYTES, check=True
        )

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        measured = dict(zip(rows, pool.map(run, rows), strict=True))
    small = [200, http_client.SMALL_BYTES, zlib.crc32(http_client.SMALL_BODY)]
    download = [200, HTTP_DOWNLOAD_BYTES, zlib.crc32(http_client.body(HTTP_DOWNLOAD_BYTES))]
    for name, got in measured.items():
        [[*kind, count]] = got.details["requests"]
        assert kind == small and count >= 1, (name, got.details)
        assert got.details["downloads"] == [download] * (got.metrics["downloads"] + 1), name
        assert got.metrics["req_per_cpu"] > 0 and got.metrics["dl_per_cpu"] > 0, name
        assert 0 < got.metrics["client_cores"] <= 1.5, (name, got.metrics)


def test_http_client_planned(monkeypatch: pytest.MonkeyPatch) -> None:
    """``--only http-client`` plans one case; its rows of its own are n/a in
    the other workloads and the servers without a client n/a in it; a row
    whose client's modules are absent is skipped with a note."""
    notes: list[str] = []
    args = driver.parse_args(["--only", "http-client", "--http-in-flight", "7"])
    [case], _, _ = driver.plan(args, notes)
    assert (case.workload, case.label) == ("http-client", "http client")
    assert "7 requests in flight" in case.note and "64 MiB" in case.note
    [echo] = driver.plan(driver.parse_args(["--only", "echo", "--connections", "1"]), notes)[0]
    for name in ("asyncio-floor", "uvloop-floor", "aiohttp-asyncio", "aiohttp-uvloop"):
        assert name in driver.ALL_SERVERS and name in servers.NEEDS
        assert set(servers.NEEDS[name]) <= set(http_client.ROWS[name].needs)
        assert driver.supported(case, name) and not driver.supported(echo, name)
    for name in (workloads.C_SERVER, "anyio-trio", "uvloop-protocol", "asyncio-sendfile"):
        assert not driver.supported(case, name)
    assert driver.supported(case, "traffic-trio-idle")  # traffic-trio's client
    assert notes == []
    monkeypatch.setitem(sys.modules, "traffic.integrations.httpx", None)
    lacking = driver._lacking_http_modules([case], ["trio", "traffic-anyio-asyncio"], notes)
    assert lacking == {"traffic-anyio-asyncio"}
    assert notes == [
        "traffic-anyio-asyncio skipped in the http-client workload: "
        "traffic.integrations.httpx is not importable"
    ]


def test_http_client_workload_end_to_end(tmp_path: Path) -> None:
    """``--only http-client`` reports requests and download bytes per client
    CPU-second for each row, with their ratios to trio (httpx on trio here),
    in the table, the summary, the JSON and the plot."""
    out, plot = tmp_path / "out.json", tmp_path / "out.png"
    rows = ["trio", "asyncio-floor"]
    done = run_module(
        "traffic.bench",
        [
            "--only", "http-client",
            "--servers", ",".join(rows),
            "--seconds", "0.1",
            "--warmup", "0.05",
            "--http-in-flight", "4",
            "--http-download-mib", "1",
            "--repeat", "1",
            "--pin", "none",
            "--json", str(out),
            "--plot", str(plot),
        ],
        tmp_path / "cache",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "http client: requests per client CPU-s" in done.stdout
    assert "http client: download per client CPU-s" in done.stdout
    results = json.loads(out.read_text())
    assert results["meta"]["http"] == {"in_flight": 4, "download_mib": 1}
    [case] = results["cases"]
    assert case["headlines"] == ["req_per_cpu", "dl_per_cpu"]
    assert set(case["results"]) == set(rows)
    for server, row in case["results"].items():
        assert row["status"] == "ok" and row["errors"] == [], (server, row)
        [run] = row["runs"]
        assert run["req_per_cpu"] > 0 and run["dl_per_cpu"] > 0, (server, run)
        assert run["downloads"] >= 1
    assert case["results"]["trio"]["ratio_to_trio"]["req_per_cpu"] == 1.0
    assert case["results"]["asyncio-floor"]["ratio_to_trio"]["dl_per_cpu"] > 0
    if importlib.util.find_spec("matplotlib") is not None:
        assert plot.stat().st_size > 0


# --- the http-server workload ---------------------------------------------------------

#: A small file for the tests, not a multiple of a read or of a CRC step.
HTTP_FILE_BYTES = (1 << 20) + 3


@pytest.fixture(scope="module")
def http_load(tmp_path_factory: pytest.TempPathFactory) -> Path:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRAFFIC_BENCH_CACHE", str(tmp_path_factory.mktemp("cache")))
        return build.build("http_load")


@pytest.fixture(scope="module")
def http_file() -> Iterator[http_workloads.HttpFile]:
    with http_workloads.HttpFile.made(HTTP_FILE_BYTES) as made:
        yield made


def _fake_http_server(answer: Callable[[int, bytes], tuple[bytes, bool]]) -> int:
    """A server on a port of its own: the n-th request of the run (counted
    from 0 over every connection) gets the bytes of ``answer(n, request)``,
    and the connection is closed after them if it says so; each connection
    in a thread of its own.  It stops accepting after a second without a
    connection."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(1.0)
    served = iter(range(1 << 30))

    def connection(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            data = b""
            while True:
                while b"\r\n\r\n" not in data:
                    more = conn.recv(65536)
                    if not more:
                        return
                    data += more
                request, _, data = data.partition(b"\r\n\r\n")
                reply, close = answer(next(served), request)
                conn.sendall(reply)
                if close:
                    return

    def accept() -> None:
        with listener, contextlib.suppress(OSError):
            while True:
                conn, _ = listener.accept()
                threading.Thread(target=connection, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return int(listener.getsockname()[1])


def _http_load(binary: Path, args: list[object]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([binary, *map(str, args)], capture_output=True, text=True, timeout=30)


def _response(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n" % (len(body), extra) + body


def test_http_load_checks_every_response(
    http_load: Path, http_file: http_workloads.HttpFile
) -> None:
    """The load generator counts whole responses, opens a new connection
    where the server says it closes one, refuses a wrong byte or checksum,
    and reports a download that breaks off, with how far it got."""
    small = http_client.body(1024)

    def requests(n: int, request: bytes) -> tuple[bytes, bool]:
        assert request.startswith(b"GET /small HTTP/1.1\r\n")
        if n % 3 == 2:
            return _response(small, b"Connection: close\r\n"), True
        return _response(small), False

    port = _fake_http_server(requests)
    done = _http_load(http_load, ["requests", f"127.0.0.1:{port}", 2, 0.3, 0.1, 1024])
    assert done.returncode == 0, done.stderr
    start, line = done.stdout.splitlines()
    result = json.loads(line)
    assert start == "start" and result["requests"] > 0 and result["reconnects"] > 0

    port = _fake_http_server(lambda n, _: (_response(small[:-1] + b"?"), False))
    done = _http_load(http_load, ["requests", f"127.0.0.1:{port}", 2, 0.3, 0.1, 1024])
    assert done.returncode == 1 and "a wrong byte" in done.stderr

    content = http_file.path.read_bytes()
    whole = _response(content)
    port = _fake_http_server(lambda n, _: (whole, False))
    args: list[object] = ["file", f"127.0.0.1:{port}", 2, 0.2, HTTP_FILE_BYTES, http_file.crc]
    done = _http_load(http_load, args)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[1])
    assert result["broken"] is None and result["downloads"] >= 2
    assert result["bytes"] == result["downloads"] * HTTP_FILE_BYTES

    port = _fake_http_server(lambda n, _: (whole, False) if n < 2 else (whole[:-1000], True))
    done = _http_load(
        http_load, ["file", f"127.0.0.1:{port}", 2, 5, HTTP_FILE_BYTES, http_file.crc]
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[1])
    assert result["broken"] == "closed" and result["broken_at"] == HTTP_FILE_BYTES - 1000

    port = _fake_http_server(lambda n, _: (whole, False))
    done = _http_load(http_load, ["file", f"127.0.0.1:{port}", 1, 0.2, HTTP_FILE_BYTES, 1])
    assert done.returncode == 1 and "CRC-32" in done.stderr


def http_server_unavailable(name: str) -> str | None:
    absent = http_server.missing_module(name)
    return None if absent is None else f"{absent} is not importable"


#: The rows whose host breaks a pathsend off (anycorn's own on asyncio and
#: uvloop: ``anyio.wait_writable`` on a socket its transport owns) once the
#: socket's buffer is full, which a small file may never fill.
MAY_BREAK = {"anycorn-asyncio", "anycorn-uvloop"}


def test_http_server_rows_serve(tmp_path: Path, http_file: http_workloads.HttpFile) -> None:
    """Every row of the http-server workload installed here serves both
    phases (4 connections, a 1 MiB file) to the load generator, which
    checked every response; the rows run side by side (a process each)."""
    rows = [name for name in http_server.ROWS if http_server_unavailable(name) is None]
    if not rows:
        pytest.skip("no host of the http-server workload is installed")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRAFFIC_BENCH_CACHE", str(tmp_path / "cache"))
        binaries = {"http_load": build.build("http_load")}
    placement = workloads.Placement.make("none")

    def run(name: str) -> workloads.Measured:
        return http_workloads.http_server(name, 0.2, 0.1, placement, binaries, http_file, 4, 1)

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        measured = dict(zip(rows, pool.map(run, rows), strict=True))
    for name, got in measured.items():
        assert got.metrics["rate"] > 0 and got.metrics["req_per_cpu"] > 0, (name, got.metrics)
        if "file_broken_mb" in got.metrics:
            assert name in MAY_BREAK, (name, got.details)
            assert "broke off" in got.details["error"]
            continue
        assert got.metrics["downloads"] >= 1, (name, got.metrics)
        assert got.metrics["file_per_cpu"] > 0 and got.metrics["file_gbps"] > 0, name


def test_http_server_planned(monkeypatch: pytest.MonkeyPatch) -> None:
    """``--only http-server`` plans one case with its own baseline
    (hypercorn-trio, added as trio is elsewhere, and trio not); its rows
    are its alone, and traffic's adapters are left out with a note where
    they cannot be imported."""
    notes: list[str] = []
    args = driver.parse_args(["--only", "http-server", "--servers", "uvicorn"])
    [case], runnable, missing = driver.plan(args, notes)
    assert (case.workload, case.label) == ("http-server", "http server")
    assert "100 keep-alive connections" in case.note and "64 MiB" in case.note
    assert set(runnable + missing) == {"hypercorn-trio", "uvicorn"}
    assert report.baseline("http-server") == "hypercorn-trio" == report.baseline(case.workload)
    [echo] = driver.plan(driver.parse_args(["--only", "echo", "--connections", "1"]), notes)[0]
    for name in http_server.ROWS:
        assert name in driver.ALL_SERVERS
        assert driver.supported(case, name) and not driver.supported(echo, name)
        assert driver.shown(case, name) and not driver.shown(echo, name)
    for name in ("trio", workloads.C_SERVER, "asyncio-floor"):
        assert not driver.shown(case, name) and driver.shown(echo, name)
    monkeypatch.setitem(sys.modules, "traffic.integrations.hypercorn", None)
    notes.clear()
    args = driver.parse_args(["--only", "http-server", "--servers", "traffic-hypercorn"])
    _, runnable, _ = driver.plan(args, notes)
    assert "traffic-hypercorn" not in runnable
    assert notes == ["traffic-hypercorn skipped: traffic.integrations.hypercorn is not importable"]


def test_http_server_broken_row_reported() -> None:
    """A row whose host broke off the download shows how far it got in
    place of the file's figures, and no ratio."""
    case = report.Case("http-server", None, "http server")
    base = {"rate": 10.0, "req_per_cpu": 20.0, "file_gbps": 1.0, "file_per_cpu": 2.0}
    case.row("hypercorn-trio").runs = [base]
    case.row("hypercorn-trio").client_bound = [False]
    case.row("anycorn-asyncio").runs = [{"rate": 5.0, "req_per_cpu": 40.0, "file_broken_mb": 4.2}]
    case.row("anycorn-asyncio").client_bound = [False]
    table = report.case_table(case)
    assert "x hypercorn-trio" in table
    [line] = [line for line in table.splitlines() if line.startswith("| anycorn-asyncio")]
    assert line.count("broken at 4.2 MB") == 2 and "broken 1/1" in line
    assert report.median_ratio(case, "anycorn-asyncio", "req_per_cpu") == 2.0
    assert report.median_ratio(case, "anycorn-asyncio", "file_per_cpu") is None
    summary = report.summary_table([case])
    assert "requests per server CPU-s (higher better, x hypercorn-trio)" in summary
    [line] = [line for line in summary.splitlines() if line.startswith("| anycorn-asyncio")]
    assert [cell.strip() for cell in line.strip("|").split("|")][1:] == ["2.00", "broken"]


def test_http_server_workload_end_to_end(tmp_path: Path) -> None:
    """``--only http-server`` reports requests and file bytes per server
    CPU-second for each row, with their ratios to hypercorn-trio, in the
    table, the summary, the JSON and the plot."""
    rows = ["hypercorn-trio", "hypercorn-floor"]
    for name in rows:
        if (why := http_server_unavailable(name)) is not None:
            pytest.skip(why)
    out, plot = tmp_path / "out.json", tmp_path / "out.png"
    done = run_module(
        "traffic.bench",
        [
            "--only", "http-server",
            "--servers", ",".join(rows),
            "--seconds", "0.2",
            "--warmup", "0.1",
            "--http-connections", "4",
            "--http-file-mib", "1",
            "--repeat", "1",
            "--pin", "none",
            "--json", str(out),
            "--plot", str(plot),
        ],
        tmp_path / "cache",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "http server: requests per server CPU-s" in done.stdout
    assert "http server: file per server CPU-s" in done.stdout
    results = json.loads(out.read_text())
    assert results["meta"]["http_server"] == {
        "connections": 4,
        "file_mib": 1,
        "file_connections": 1,
    }
    [case] = results["cases"]
    assert case["headlines"] == ["req_per_cpu", "file_per_cpu"]
    assert case["baseline"] == "hypercorn-trio"
    assert set(case["results"]) == set(rows)
    for server, row in case["results"].items():
        assert row["status"] == "ok" and row["errors"] == [], (server, row)
        [run] = row["runs"]
        assert run["req_per_cpu"] > 0 and run["file_per_cpu"] > 0, (server, run)
    assert case["results"]["hypercorn-trio"]["ratio_to_baseline"]["req_per_cpu"] == 1.0
    assert case["results"]["hypercorn-floor"]["ratio_to_baseline"]["file_per_cpu"] > 0
    if importlib.util.find_spec("matplotlib") is not None:
        assert plot.stat().st_size > 0
