"""examples/http_files.py, run as a user runs it: a subprocess serving a
directory, with curl and the standard library's http.client as clients.

The server's first line of output is ``listening on HOST:PORT``.  Every body
is compared, by SHA-256 or outright, with the bytes of the file it came
from: a 64 MiB file of seeded random bytes and a few small ones.  While a
test's own requests run, other connections are open on the same server
(:func:`other_connections`): idle ones, one holding half a request, and a
download of the large file stalled mid-body, its task waiting in
``send_file`` on a full socket; they are served to the end afterwards, so
every answer came from a server busy with several connections at once.

The curl tests skip only where curl is not installed (CI installs it).
Timeouts bound a hang, never decide a pass.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import random
import shutil
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from examples_support import example, listening, reap, run_example, start_example

pytest.importorskip(
    "h11", reason="examples/http_files.py speaks HTTP with h11 (pip install h11; the [test] extra)"
)
import h11  # after the skip: the module is optional

EXAMPLE = example("http_files.py")
CURL = shutil.which("curl")
needs_curl = pytest.mark.skipif(CURL is None, reason="curl is not installed (apt-get install curl)")

#: Bounds a hang of a subprocess or a socket, never a pass.
TIMEOUT = 60
pytestmark = pytest.mark.timeout(3 * TIMEOUT)

BIG_SIZE = 64 * 2**20
SEED = 20261202
HELLO = b"hello, world\n"
SECRET = b"outside the root: never served\n"


@dataclass(frozen=True)
class Site:
    """The served directory, and the large file's bytes."""

    root: Path
    big: bytes

    def url(self, port: int, path: str) -> str:
        return f"http://127.0.0.1:{port}{path}"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    """``root/``: big.bin (64 MiB, random), hello.txt, empty, sub/page.html,
    sub/naïve file.txt, link-in (to hello.txt), link-out (to ../secret.txt,
    beside root), pipe (a FIFO)."""
    base = tmp_path_factory.mktemp("http_files")
    root = base / "root"
    (root / "sub").mkdir(parents=True)
    big = random.Random(SEED).randbytes(BIG_SIZE)
    (root / "big.bin").write_bytes(big)
    (root / "hello.txt").write_bytes(HELLO)
    (root / "empty").write_bytes(b"")
    (root / "sub" / "page.html").write_bytes(b"<p>page</p>\n")
    (root / "sub" / "naïve file.txt").write_bytes(b"unicode and a space\n")
    (base / "secret.txt").write_bytes(SECRET)
    (root / "link-in").symlink_to("hello.txt")
    (root / "link-out").symlink_to(base / "secret.txt")
    os.mkfifo(root / "pipe")
    return Site(root, big)


@contextlib.contextmanager
def running(root: Path, *args: str) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """The example serving ``root`` on an ephemeral port, and the port; killed
    at the end if it is still running."""
    process = start_example(EXAMPLE, str(root), "0", *args)
    try:
        _, port = listening(process, TIMEOUT, host="127.0.0.1")
        yield process, port
    finally:
        err = reap(process, TIMEOUT)
    # Reached only when the block passed: a server that crashed meanwhile
    # fails it too.
    assert "Traceback" not in (err or ""), err


@pytest.fixture
def server(site: Site) -> Iterator[tuple[subprocess.Popen[str], int]]:
    with running(site.root) as served:
        yield served


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(2**20):
            digest.update(chunk)
    return digest.hexdigest()


def read_responses(sock: socket.socket, methods: list[bytes]) -> list[tuple[h11.Response, bytes]]:
    """The responses to requests already sent on ``sock`` with ``methods``
    (HEAD responses have no body), parsed in order by an h11 client."""
    client = h11.Connection(h11.CLIENT)
    responses = []
    for method in methods:
        # The requests' bytes went out already (raw, maybe all at once): the
        # client is told of each only so that it frames the response.
        client.send(h11.Request(method=method, target="/", headers=[("Host", "test")]))
        client.send(h11.EndOfMessage())
        response, body = None, bytearray()
        while True:
            event = client.next_event()
            if event is h11.NEED_DATA:
                client.receive_data(sock.recv(2**16))
            elif isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
            else:
                raise AssertionError(f"unexpected {event!r}")
        assert response is not None
        responses.append((response, bytes(body)))
        if client.our_state is h11.MUST_CLOSE or client.their_state is h11.MUST_CLOSE:
            break
        client.start_next_cycle()
    return responses


def header(response: h11.Response, name: bytes) -> bytes | None:
    values = [value for key, value in response.headers if key == name]
    assert len(values) <= 1, (name, values)
    return values[0] if values else None


@contextlib.contextmanager
def other_connections(site: Site, port: int) -> Iterator[None]:
    """Connections open on the server for the duration of the block: two
    idle, one holding half a request, and a GET of big.bin that reads its
    first 64 KiB and then stalls until the block ends (the server's task is
    then in ``send_file``, the socket full).  At the end they are served
    and checked: the stalled download to its end, by SHA-256; the half
    request completed and answered; a request on an idle one answered."""
    idle = [socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) for _ in range(3)]
    resume = threading.Event()
    started = threading.Event()
    result: dict[str, object] = {}

    def stalled_download() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
        try:
            connection.request("GET", "/big.bin")
            response = connection.getresponse()
            result["status"] = response.status
            digest = hashlib.sha256(first := response.read(2**16))
            count = len(first)
            started.set()
            resume.wait(TIMEOUT)
            while chunk := response.read(2**20):
                digest.update(chunk)
                count += len(chunk)
            result["count"], result["sha256"] = count, digest.hexdigest()
            response.close()
        except BaseException as error:
            result["error"] = error
        finally:
            started.set()
            connection.close()

    thread = threading.Thread(target=stalled_download)
    try:
        idle[0].sendall(b"GET /hello.txt HTTP/1.1\r\nHost: test\r\n")  # half a request
        thread.start()
        assert started.wait(TIMEOUT), "the download did not start"
        assert "error" not in result, result
        yield
        resume.set()
        thread.join(TIMEOUT)
        assert not thread.is_alive(), "the stalled download did not finish"
        assert "error" not in result, result
        assert (result["status"], result["count"]) == (200, BIG_SIZE)
        assert result["sha256"] == sha256(site.big)
        idle[0].sendall(b"\r\n")  # the rest of the half request
        idle[1].sendall(b"GET /sub/page.html HTTP/1.1\r\nHost: test\r\n\r\n")
        [(response, body)] = read_responses(idle[0], [b"GET"])
        assert (response.status_code, body) == (200, HELLO)
        [(response, body)] = read_responses(idle[1], [b"GET"])
        assert (response.status_code, body) == (200, b"<p>page</p>\n")
    finally:
        resume.set()
        if thread.ident is not None:
            thread.join(TIMEOUT)
        for sock in idle:
            sock.close()


def curl(*args: str) -> list[str]:
    """Run curl with ``args`` (quiet, errors shown); the lines it wrote to
    stdout (its ``-w`` output)."""
    assert CURL is not None
    # Not the code under test: a sanitizer runtime preloaded for the server
    # (CI's sanitize steps) makes curl hang, so curl runs without it.
    env = {name: value for name, value in os.environ.items() if name != "LD_PRELOAD"}
    done = subprocess.run(
        [CURL, "--silent", "--show-error", "--max-time", str(TIMEOUT), *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


@needs_curl
def test_curl_downloads_the_large_file(
    site: Site, server: tuple[subprocess.Popen[str], int], tmp_path: Path
) -> None:
    _, port = server
    out = tmp_path / "big.out"
    with other_connections(site, port):
        [written] = curl(
            "-o", str(out), "-w", "%{http_code} %{size_download}", site.url(port, "/big.bin")
        )
        assert written == f"200 {BIG_SIZE}"
        assert file_sha256(out) == sha256(site.big)
        # Two more at once: one in a thread, one here.
        second = tmp_path / "second.out"
        errors: list[BaseException] = []

        def download() -> None:
            try:
                curl("-o", str(second), site.url(port, "/big.bin"))
            except BaseException as error:
                errors.append(error)

        thread = threading.Thread(target=download)
        thread.start()
        try:
            out.unlink()
            curl("-o", str(out), site.url(port, "/big.bin"))
        finally:
            thread.join(TIMEOUT)
        assert not errors, errors
        assert file_sha256(out) == file_sha256(second) == sha256(site.big)


@needs_curl
def test_curl_ranges_on_one_connection(
    site: Site, server: tuple[subprocess.Popen[str], int], tmp_path: Path
) -> None:
    """Ranges of every form, and a 416 and a 404 between them, in one curl
    run: curl reuses its connection (``num_connects`` 0 after the first)."""
    _, port = server
    size = BIG_SIZE
    middle = 16 * 2**20
    cases = [
        # (curl -r, expected status, expected slice of big)
        ("0-99", 206, slice(0, 100)),
        (f"{middle}-{2 * middle - 1}", 206, slice(middle, 2 * middle)),  # 16 MiB
        ("1000-", 206, slice(1000, size)),
        ("-4096", 206, slice(size - 4096, size)),
        (f"{size - 10}-{size + 10**6}", 206, slice(size - 10, size)),  # last past the end
        (f"-{size * 2}", 206, slice(0, size)),  # a suffix longer than the file
        (f"{size}-", 416, slice(0, 0)),
    ]
    args: list[str] = []
    for number, (spec, _, _) in enumerate(cases):
        args += ["-r", spec, "-o", str(tmp_path / f"{number}.out")]
        args += ["-D", str(tmp_path / f"{number}.head")]
        args += ["-w", "%{http_code} %{num_connects}\n", site.url(port, "/big.bin"), "--next"]
    args += ["-o", str(tmp_path / "missing.out"), "-w", "%{http_code} %{num_connects}\n"]
    args += [site.url(port, "/missing")]
    with other_connections(site, port):
        written = curl(*args)
    assert written[0] == f"{cases[0][1]} 1"
    assert written[1:] == [f"{status} 0" for _, status, _ in cases[1:]] + ["404 0"]
    for number, (spec, status, part) in enumerate(cases):
        output = tmp_path / f"{number}.out"
        body = output.read_bytes() if output.exists() else b""  # none for an empty body
        head = (tmp_path / f"{number}.head").read_text().lower()
        if status == 206:
            assert sha256(body) == sha256(site.big[part]), spec
            content_range = f"content-range: bytes {part.start}-{part.stop - 1}/{size}"
            assert content_range in head.splitlines(), (spec, head)
            assert f"content-length: {part.stop - part.start}" in head.splitlines()
        else:
            assert body.startswith(b"416 "), body
            assert f"content-range: bytes */{size}" in head.splitlines(), head


def test_one_keep_alive_connection(site: Site, server: tuple[subprocess.Popen[str], int]) -> None:
    """GET, HEAD, ranges, 404s, 405, 416 and a 64 MiB GET, all on one
    http.client connection, which stays the same socket throughout."""
    _, port = server
    big = site.big
    size = BIG_SIZE
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    with other_connections(site, port), contextlib.closing(connection):
        connection.connect()
        sock = connection.sock
        where = sock.getsockname()

        def request(
            method: str, target: str, headers: dict[str, str] | None = None, body: bytes = b""
        ) -> tuple[http.client.HTTPResponse, bytes]:
            connection.request(method, target, body=body or None, headers=headers or {})
            response = connection.getresponse()
            data = response.read()
            assert not response.will_close, (method, target)
            assert connection.sock is sock and sock.getsockname() == where
            return response, data

        response, body = request("GET", "/hello.txt")
        assert (response.status, body) == (200, HELLO)
        assert response.getheader("Content-Type") == "text/plain"
        assert response.getheader("Content-Length") == str(len(HELLO))
        assert response.getheader("Accept-Ranges") == "bytes"
        assert response.getheader("Date")

        response, body = request("HEAD", "/big.bin")
        assert (response.status, body) == (200, b"")
        assert response.getheader("Content-Length") == str(size)
        assert response.getheader("Content-Type") == "application/octet-stream"

        ranges = {
            "bytes=1000-1999": (1000, 2000),
            "bytes=67108000-": (67108000, size),
            "bytes=-100": (size - 100, size),
            f"bytes=-{size + 1}": (0, size),
            "BYTES=5-5": (5, 6),  # the unit is case-insensitive
        }
        for spec, (start, stop) in ranges.items():
            response, body = request("GET", "/big.bin", {"Range": spec})
            assert response.status == 206, spec
            assert response.getheader("Content-Range") == f"bytes {start}-{stop - 1}/{size}"
            assert response.getheader("Content-Length") == str(stop - start)
            assert sha256(body) == sha256(big[start:stop]), spec

        response, body = request("HEAD", "/big.bin", {"Range": "bytes=10-19"})
        assert (response.status, body) == (206, b"")
        assert response.getheader("Content-Range") == f"bytes 10-19/{size}"
        assert response.getheader("Content-Length") == "10"

        for spec in (f"bytes={size}-", f"bytes={size}-{size + 5}", "bytes=-0", f"bytes={10**30}-"):
            response, body = request("GET", "/big.bin", {"Range": spec})
            assert response.status == 416, spec
            assert response.getheader("Content-Range") == f"bytes */{size}"
            assert b"big" not in body

        # Ignored, as RFC 9110 allows: the whole file, 200.
        for headers in (
            {"Range": "bytes=5-2"},  # last before first: invalid
            {"Range": "bytes=0-1,5-6"},  # several ranges
            {"Range": "lines=0-1"},  # another unit
            {"Range": "bytes=-"},
            {"Range": "bytes=0-1", "If-Range": '"an-etag"'},  # no validator can match
        ):
            response, body = request("GET", "/hello.txt", headers)
            assert (response.status, body) == (200, HELLO), headers
            assert response.getheader("Content-Range") is None

        response, body = request("GET", "/empty")
        assert (response.status, body) == (200, b"")
        assert response.getheader("Content-Length") == "0"
        assert response.getheader("Content-Type") == "application/octet-stream"
        response, body = request("GET", "/empty", {"Range": "bytes=-5"})
        assert (response.status, body) == (200, b"")
        response, body = request("GET", "/empty", {"Range": "bytes=0-"})
        assert response.status == 416
        assert response.getheader("Content-Range") == "bytes */0"

        for target, content in (
            ("/sub/page.html", b"<p>page</p>\n"),
            ("/sub/na%C3%AFve%20file.txt", b"unicode and a space\n"),
            ("/hello.txt?query=1", HELLO),
            ("//hello.txt", HELLO),
            ("/./sub/./page.html", b"<p>page</p>\n"),
            ("/link-in", HELLO),  # a symbolic link inside the root
            (f"http://127.0.0.1:{port}/hello.txt", HELLO),  # absolute-form
        ):
            response, body = request("GET", target)
            assert (response.status, body) == (200, content), target
        assert response.getheader("Content-Type") == "text/plain"
        response, _ = request("GET", "/sub/page.html")
        assert response.getheader("Content-Type") == "text/html"

        for target in (
            "/missing",
            "/sub/missing.txt",
            "/hello.txt/more",
            "/",
            "/sub",
            "/sub/",
            "/pipe",  # a FIFO: opened without waiting for a writer
            "/../secret.txt",
            "/%2e%2e/secret.txt",
            "/sub/../../secret.txt",
            "/sub/%2E%2E/%2e%2e/secret.txt",
            "/..%2fsecret.txt",
            "/link-out",  # a symbolic link out of the root
            "/%ff",  # not UTF-8
            "/hello.txt%00",
            "*",
        ):
            response, body = request("GET", target)
            assert response.status == 404, target
            assert body == b"404 Not Found\n"
            assert SECRET not in body
        response, body = request("HEAD", "/missing")
        assert (response.status, body) == (404, b"")

        response, body = request("POST", "/hello.txt", body=b"x" * 100_000)
        assert response.status == 405
        assert response.getheader("Allow") == "GET, HEAD"

        # The whole large file on the same connection, read in pieces.
        connection.request("GET", "/big.bin")
        response = connection.getresponse()
        assert response.status == 200
        assert response.getheader("Content-Length") == str(size)
        digest = hashlib.sha256()
        count = 0
        while chunk := response.read(2**20):
            digest.update(chunk)
            count += len(chunk)
        assert (count, digest.hexdigest()) == (size, sha256(big))
        assert connection.sock is sock

        response, body = request("GET", "/hello.txt")
        assert (response.status, body) == (200, HELLO)


def test_pipelined_requests_and_a_bad_one(
    site: Site, server: tuple[subprocess.Popen[str], int]
) -> None:
    """Requests sent all at once are answered in order; a request h11 cannot
    parse gets a 400, with ``Connection: close``, and the server closes."""
    _, port = server
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(
            b"GET /hello.txt HTTP/1.1\r\nHost: test\r\n\r\n"
            b"HEAD /big.bin HTTP/1.1\r\nHost: test\r\n\r\n"
            b"GET /big.bin HTTP/1.1\r\nHost: test\r\nRange: bytes=-3\r\n\r\n"
            b"GET /missing HTTP/1.1\r\nHost: test\r\n\r\n"
            b"GET /hello.txt HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
        )
        responses = read_responses(sock, [b"GET", b"HEAD", b"GET", b"GET", b"GET"])
        assert [(r.status_code, body) for r, body in responses] == [
            (200, HELLO),
            (200, b""),
            (206, site.big[-3:]),
            (404, b"404 Not Found\n"),
            (200, HELLO),
        ]
        assert header(responses[1][0], b"content-length") == b"%d" % BIG_SIZE
        assert header(responses[4][0], b"connection") == b"close"
        assert sock.recv(1) == b""  # the server closed, as asked

    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        data = b""
        while chunk := sock.recv(2**16):
            data += chunk
        head = data.decode("ascii").lower()
        assert head.startswith("http/1.1 400 bad request\r\n"), head
        assert "\r\nconnection: close\r\n" in head, head

    # The server serves on, after both.
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(b"GET /hello.txt HTTP/1.0\r\n\r\n")  # HTTP/1.0: closed after
        [(response, body)] = read_responses(sock, [b"GET"])
        assert (response.status_code, body) == (200, HELLO)


def test_idle_connections_are_closed(site: Site) -> None:
    """With ``--idle-timeout``, a connection that sends no request that long
    is closed; one answered in time is kept until it idles too."""
    with running(site.root, "--idle-timeout", "0.5") as (_, port):
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as idle:
            assert idle.recv(1) == b""  # closed by the server
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as busy:
            for _ in range(3):
                busy.sendall(b"GET /hello.txt HTTP/1.1\r\nHost: test\r\n\r\n")
                [(response, body)] = read_responses(busy, [b"GET"])
                assert (response.status_code, body) == (200, HELLO)
            assert busy.recv(1) == b""


def test_ctrl_c_stops_the_server_mid_download(site: Site) -> None:
    """Ctrl-C with a download under way and an idle connection: the server
    closes both, exits 0 and says ``stopped``."""
    with running(site.root) as (process, port):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
        idle = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        with contextlib.closing(connection), idle:
            connection.request("GET", "/big.bin")
            response = connection.getresponse()
            assert response.status == 200
            assert response.read(2**16) == site.big[: 2**16]
            process.send_signal(signal.SIGINT)
            _, err = process.communicate(timeout=TIMEOUT)
            assert process.returncode == 0, err
            assert err.strip() == "stopped"
            # What the kernel had buffered arrives, then the end: never the
            # whole body.
            with pytest.raises((http.client.IncompleteRead, ConnectionResetError)):
                response.read()
            response.close()
            with contextlib.suppress(ConnectionResetError):
                assert idle.recv(1) == b""


def test_refuses_a_root_that_is_not_a_directory(site: Site) -> None:
    done = run_example(EXAMPLE, str(site.root / "hello.txt"), timeout=TIMEOUT)
    assert done.returncode == 2
    assert "is not a directory" in done.stderr
