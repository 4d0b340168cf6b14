"""The package's layering, as docs/architecture.rst draws it.

- Only the core's faces (``libkqueue``, ``_requests``, ``datagrams``,
  ``libloop``, ``errors``) touch the compiled core: the trio, anyio and
  datagram layers go through the request module, so neither ``lib.`` nor
  ``ffi.`` nor an import of ``._traffic`` appears in them.
- The anyio layer imports nothing of the trio layer, and an asyncio program
  that uses it never imports trio at all.
- What is protected from KeyboardInterrupt before trio is imported is
  protected once it is.
- The integrations (``traffic.integrations``) are optional: ``import
  traffic`` imports none of their hosts, one imported without its host
  names the extra to install, and httpx's transport refuses an event loop
  traffic does not serve rather than fall back.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from test_core_sync import run_python

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "traffic"

#: The layers above the request module.
LAYERS = ("trio_integration.py", "anyio_backend.py", "trio_datagrams.py", "anyio_datagrams.py")

#: The trio layer's modules, which the anyio layer must not import.
TRIO_LAYER = {"trio_integration", "trio_datagrams"}


def tree(name: str) -> ast.Module:
    return ast.parse((PACKAGE / name).read_text(), filename=name)


def imported_modules(module: ast.Module) -> list[tuple[str, int]]:
    """(module, line) of every import, relative ones as written (``._traffic``)."""
    found = []
    for node in ast.walk(module):
        if isinstance(node, ast.ImportFrom):
            found.append(("." * node.level + (node.module or ""), node.lineno))
            if node.level and not node.module:  # from . import x
                found.extend(("." + alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.Import):
            found.extend((alias.name, node.lineno) for alias in node.names)
    return found


@pytest.mark.parametrize("name", LAYERS)
def test_a_layer_reaches_the_core_only_through_the_request_module(name: str) -> None:
    module = tree(name)
    core = [
        (where, line)
        for where, line in imported_modules(module)
        if where in ("._traffic", "traffic._traffic")
    ]
    assert core == [], f"{name} imports the compiled core: {core}"
    uses = [
        f"{node.value.id}.{node.attr} (line {node.lineno})"
        for node in ast.walk(module)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id in ("lib", "ffi")
    ]
    assert uses == [], f"{name} calls the core directly: {uses}"


@pytest.mark.parametrize("name", ["anyio_backend.py", "anyio_datagrams.py"])
def test_the_anyio_layer_imports_nothing_of_the_trio_layer(name: str) -> None:
    trio_layer = [
        (where, line)
        for where, line in imported_modules(tree(name))
        if where.lstrip(".").removeprefix("traffic.") in TRIO_LAYER
    ]
    assert trio_layer == [], f"{name} imports the trio layer: {trio_layer}"


ASYNCIO_ECHO = """
import sys

import anyio

import traffic
from traffic.anyio_backend import connect_tcp, create_tcp_listener


async def main():
    listener = await create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)

    async def echo(stream):
        async with stream:
            async for chunk in stream:
                await stream.send(chunk)

    async with anyio.create_task_group() as group:
        group.start_soon(listener.serve, echo)
        async with await connect_tcp("127.0.0.1", port) as client:
            await client.send(b"ping")
            assert await client.receive() == b"ping"
        group.cancel_scope.cancel()
    await listener.aclose()


anyio.run(main, backend="asyncio")
print(sorted(name for name in sys.modules if name == "trio" or name.startswith("trio.")))
"""


def test_an_asyncio_program_never_imports_trio() -> None:
    result = run_python(ASYNCIO_ECHO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["[]"]


KI_MARKED_LATER = """
import sys

from traffic._requests import protected


@protected
def probe():
    import trio

    return trio.lowlevel.currently_ki_protected()


def bare():
    import trio

    return trio.lowlevel.currently_ki_protected()


assert "trio" not in sys.modules
import trio

import traffic._trio_parking  # what the anyio layer imports on trio


async def main():
    return probe(), bare()


print(*trio.run(main))
"""


def test_what_was_protected_before_trio_came_is_protected_once_it_does() -> None:
    result = run_python(KI_MARKED_LATER)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "False"]


# The integrations: optional, never imported by traffic itself

IMPORT_TRAFFIC = """
import sys

import traffic
import traffic.anyio_backend
import traffic.trio_integration

hosts = ("httpx", "httpcore", "httpx2", "httpcore2", "hypercorn", "anycorn")
print(sorted(name for name in sys.modules if name.split(".")[0] in hosts))
"""


def test_import_traffic_imports_no_integration_host() -> None:
    """``import traffic`` (and its layers) imports no host of an integration
    (httpx, httpcore, their forks, hypercorn, anycorn): the integrations
    are optional extras."""
    result = run_python(IMPORT_TRAFFIC)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["[]"]


WITHOUT_HOST = """
import sys

sys.modules[{host!r}] = None  # as if it were not installed
try:
    import traffic.integrations.{module}
except ImportError as exc:
    print(exc)
"""


@pytest.mark.parametrize(
    ("module", "host", "extra"),
    [
        ("httpcore", "httpcore", "traffic[httpx]"),
        ("httpx", "httpx", "traffic[httpx]"),
        ("httpcore2", "httpcore2", "traffic[httpx2]"),
        ("httpx2", "httpx2", "traffic[httpx2]"),
        ("hypercorn", "hypercorn", "traffic[hypercorn]"),
        ("anycorn", "anycorn", "traffic[anycorn]"),
    ],
)
def test_an_integration_without_its_host_names_the_extra(
    module: str, host: str, extra: str
) -> None:
    result = run_python(WITHOUT_HOST.format(host=host, module=module))
    assert result.returncode == 0, result.stderr
    assert f"pip install '{extra}'" in result.stdout, result.stdout


ANOTHER_LOOP = """
import asyncio

import httpcore
import httpx
import sniffio

from traffic.integrations.httpcore import TrafficBackend
from traffic.integrations.httpx import AsyncHTTPTransport


async def attempt(what, call):
    # What an event loop traffic does not serve looks like to it.
    token = sniffio.current_async_library_cvar.set("curio")
    try:
        await call()
    except (httpx.ConnectError, httpcore.ConnectError) as exc:  # a connection was tried
        print(what, "connected:", type(exc).__name__, exc)
    except Exception as exc:
        print(what, "refused:", type(exc).__name__, exc)
    else:
        print(what, "connected")
    finally:
        sniffio.current_async_library_cvar.reset(token)


async def main():
    await attempt("backend", lambda: TrafficBackend().connect_tcp("127.0.0.1", 9))
    async with httpx.AsyncClient(transport=AsyncHTTPTransport()) as client:
        await attempt("transport", lambda: client.get("http://127.0.0.1:9/"))


asyncio.run(main())
"""


def test_the_httpx_integration_refuses_a_loop_traffic_does_not_serve() -> None:
    """On an event loop other than asyncio or trio (the port is closed: a
    connection attempt would be a ``ConnectError``) neither the backend nor a
    client on the transport tries to connect: each raises before anything
    falls back to httpcore's own backends (anyio, on which traffic's streams
    run, and httpcore's pool refuse such a loop first)."""
    result = run_python(ANOTHER_LOOP)
    assert result.returncode == 0, result.stderr
    backend, transport = result.stdout.splitlines()
    assert backend.startswith("backend refused:"), backend
    assert transport.startswith("transport refused:"), transport
