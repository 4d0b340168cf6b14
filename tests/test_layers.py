"""The package's layering, as docs/architecture.rst draws it.

- Only the core's faces (``libkqueue``, ``_requests``, ``datagrams``,
  ``libloop``, ``errors``) touch the compiled core: the trio, anyio and
  datagram layers go through the request module, so neither ``lib.`` nor
  ``ffi.`` nor an import of ``traffic._traffic`` appears in them.  A layer
  is its faces and the private folder behind them: the trio layer
  ``trio_integration.py``, ``trio_datagrams.py`` and ``_trio/``; the anyio
  layer ``anyio_backend.py``, ``anyio_datagrams.py`` and ``_anyio/``.
- The anyio layer imports nothing of the trio layer (nor the trio layer
  anything of the anyio layer), and an asyncio program that uses it never
  imports trio at all.
- No import circle among traffic's modules: what each imports when it is
  imported (its top level, not under ``if TYPE_CHECKING:``, not inside a
  function) never leads back to it.
- What is protected from KeyboardInterrupt before trio is imported is
  protected once it is.
- The integrations (``traffic.integrations``) are optional: ``import
  traffic`` imports none of their hosts, one imported without its host
  names the extra to install, and httpx's transport refuses an event loop
  traffic does not serve rather than fall back.
"""

from __future__ import annotations

import ast
import itertools
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
from test_core_sync import run_python

import traffic

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "traffic"


def layer(*faces: str, folder: str) -> list[str]:
    """A layer's files, relative to the package: its faces, and every module
    under its private folder (none while the folder does not exist)."""
    behind = sorted(
        path.relative_to(PACKAGE).as_posix() for path in (PACKAGE / folder).rglob("*.py")
    )
    return [*faces, *behind]


#: The layers above the request module.
TRIO_FILES = layer("trio_integration.py", "trio_datagrams.py", folder="_trio")
ANYIO_FILES = layer("anyio_backend.py", "anyio_datagrams.py", folder="_anyio")
LAYERS = (*TRIO_FILES, *ANYIO_FILES)

#: The compiled core.
CORE = "traffic._traffic"


def in_layer(module: str, faces: Iterable[str], folder: str) -> bool:
    """Whether ``module`` (absolute) is one of a layer's faces or under its
    folder; ``traffic.NAME`` counts as the module the package resolves NAME
    from (``traffic.TrafficStream``: the trio layer's)."""
    package, _, name = module.partition(".")
    if package == "traffic" and name in traffic._TRIO_LAYER:
        module = f"traffic.{traffic._TRIO_LAYER[name]}"
    return module in faces or module == folder or module.startswith(folder + ".")


def in_trio_layer(module: str) -> bool:
    return in_layer(module, ("traffic.trio_integration", "traffic.trio_datagrams"), "traffic._trio")


def in_anyio_layer(module: str) -> bool:
    return in_layer(module, ("traffic.anyio_backend", "traffic.anyio_datagrams"), "traffic._anyio")


def tree(name: str) -> ast.Module:
    return ast.parse((PACKAGE / name).read_text(), filename=name)


def module_name(name: str) -> str:
    """The module of the file ``name`` (relative to the package)."""
    parts = ["traffic", *Path(name).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def absolute(name: str, level: int, module: str | None) -> str:
    """What ``from {"." * level}{module} import ...`` in the file ``name``
    names, as an absolute module (``.._trio._stream``: ``traffic._trio._stream``)."""
    if not level:
        return module or ""
    package = module_name(name)
    if not name.endswith("__init__.py"):
        package = package.rpartition(".")[0]
    package = package.rsplit(".", level - 1)[0]
    return f"{package}.{module}" if module else package


def imported_modules(name: str, nodes: Iterable[ast.AST] | None = None) -> list[tuple[str, int]]:
    """(module, line) of every import in the file ``name`` (or in ``nodes``
    of it), each absolute; ``from M import x`` counts ``M`` and ``M.x``
    (``x`` may be a module: ``from traffic import _traffic``)."""
    found = []
    for node in ast.walk(tree(name)) if nodes is None else nodes:
        if isinstance(node, ast.ImportFrom):
            where = absolute(name, node.level, node.module)
            found.append((where, node.lineno))
            found.extend((f"{where}.{alias.name}", node.lineno) for alias in node.names)
        elif isinstance(node, ast.Import):
            found.extend((alias.name, node.lineno) for alias in node.names)
    return found


@pytest.mark.parametrize("name", LAYERS)
def test_a_layer_reaches_the_core_only_through_the_request_module(name: str) -> None:
    module = tree(name)
    core = [(where, line) for where, line in imported_modules(name) if where == CORE]
    assert core == [], f"{name} imports the compiled core: {core}"
    uses = [
        f"{node.value.id}.{node.attr} (line {node.lineno})"
        for node in ast.walk(module)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id in ("lib", "ffi")
    ]
    assert uses == [], f"{name} calls the core directly: {uses}"


@pytest.mark.parametrize("name", ANYIO_FILES)
def test_the_anyio_layer_imports_nothing_of_the_trio_layer(name: str) -> None:
    trio_layer = [(where, line) for where, line in imported_modules(name) if in_trio_layer(where)]
    assert trio_layer == [], f"{name} imports the trio layer: {trio_layer}"


@pytest.mark.parametrize("name", TRIO_FILES)
def test_the_trio_layer_imports_nothing_of_the_anyio_layer(name: str) -> None:
    anyio_layer = [(where, line) for where, line in imported_modules(name) if in_anyio_layer(where)]
    assert anyio_layer == [], f"{name} imports the anyio layer: {anyio_layer}"


def test_the_layer_rules_resolve_relative_imports() -> None:
    """What the rules above compare: absolute names, from the folders too."""
    assert absolute("trio_integration.py", 1, "_traffic") == CORE
    assert absolute("_trio/_stream.py", 2, "_traffic") == CORE
    assert absolute("_trio/_stream.py", 1, "_open") == "traffic._trio._open"
    assert absolute("_trio/__init__.py", 1, "_open") == "traffic._trio._open"
    assert absolute("_anyio/_x/_y.py", 3, None) == "traffic"
    assert in_trio_layer(absolute("_anyio/_stream.py", 2, "_trio._stream"))
    assert in_trio_layer("traffic.TrafficStream")
    assert not in_trio_layer("traffic._trio_parking")
    assert in_trio_layer("traffic.SocketView")  # resolved from traffic.trio_integration
    assert in_anyio_layer(absolute("_trio/_stream.py", 2, "anyio_backend"))


# No import circle


#: The modules checked for circles: the package's, but the benchmark's and
#: the integrations' (nothing of traffic imports them).
MODULES = sorted(
    path.relative_to(PACKAGE).as_posix()
    for path in PACKAGE.rglob("*.py")
    if path.relative_to(PACKAGE).parts[0] not in ("bench", "integrations")
)


def type_checking(test: ast.expr) -> bool:
    return ast.unparse(test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")


def at_import(nodes: Iterable[ast.AST]) -> Iterator[ast.AST]:
    """The nodes run when the module is imported: not in a function's
    body, nor under ``if TYPE_CHECKING:`` (its ``else`` runs)."""
    for node in nodes:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        yield node
        if isinstance(node, ast.If) and type_checking(node.test):
            yield from at_import(node.orelse)
        else:
            yield from at_import(ast.iter_child_nodes(node))


def runs(target: str, importer: str, modules: Iterable[str]) -> Iterator[str]:
    """The modules an import of ``target`` in ``importer`` runs: ``target``
    and, first, each package above it, but ``importer``'s own packages
    (running already)."""
    parts = target.split(".")
    for end in range(1, len(parts) + 1):
        module = ".".join(parts[:end])
        if module in modules and module != importer and not importer.startswith(module + "."):
            yield module


def imports_at_import(name: str, modules: Iterable[str]) -> Iterator[tuple[str, int]]:
    """(module, line) of what the file ``name`` runs when it is imported.

    ``from P import x`` runs ``P.x`` if it is a module; else ``x`` is a name
    ``P`` must have bound already, even where ``P`` is a package above the
    importer (``from traffic import Traffic`` in ``traffic.libkqueue``)."""
    importer = module_name(name)
    for node in at_import(tree(name).body):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            where = absolute(name, node.level, node.module)
            submodules = [f"{where}.{alias.name}" for alias in node.names]
            targets = [where, *(module for module in submodules if module in modules)]
            if where in modules and where != importer and set(submodules) - set(modules):
                yield where, node.lineno
        else:
            continue
        for target in targets:
            for module in runs(target, importer, modules):
                yield module, node.lineno


def import_graph() -> dict[str, dict[str, int]]:
    """module -> {module it runs when imported: line}, among MODULES."""
    modules = {module_name(name): name for name in MODULES}
    graph: dict[str, dict[str, int]] = {}
    for importer, name in modules.items():
        edges = graph.setdefault(importer, {})
        for module, line in imports_at_import(name, modules):
            edges.setdefault(module, line)
    return graph


def circle(graph: dict[str, dict[str, int]]) -> list[str]:
    """A circle of ``graph`` (``a (line 3) -> b (line 9) -> a``), or []."""
    done: set[str] = set()
    path: list[str] = []

    def visit(module: str) -> list[str]:
        if module in path:
            ring = [*path[path.index(module) :], module]
            return [f"{a} (line {graph[a][b]})" for a, b in itertools.pairwise(ring)] + [module]
        if module in done:
            return []
        path.append(module)
        for target in graph[module]:
            if found := visit(target):
                return found
        path.pop()
        done.add(module)
        return []

    for module in sorted(graph):
        if found := visit(module):
            return found
    return []


def test_no_import_circle() -> None:
    graph = import_graph()
    assert "traffic.libkqueue" in graph["traffic"]  # the graph is read at all
    found = circle(graph)
    assert found == [], "an import circle: " + " -> ".join(found)


def test_a_circle_is_found() -> None:
    """The check above can fail: a circle made by hand, and one through a
    package's name."""
    graph = {"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3}, "d": {}}
    assert circle(graph) == ["a (line 1)", "b (line 2)", "c (line 3)", "a"]
    assert circle({"a": {"b": 1}, "b": {}}) == []


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

from traffic._base._requests import protected


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
