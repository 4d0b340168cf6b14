"""Every public name says where to import it from.

The layers are written in private modules and published by faces (the
package ``traffic`` and its public modules, docs/architecture.rst).  For
each face, and each name of its ``__all__`` (its public names where it has
none):

- the name is importable from the face;
- a class or function of traffic's has a ``__module__`` that is a public
  module (no part after ``traffic`` starting with ``_``), and that module's
  attribute of its ``__qualname__`` is the very same object, so that a repr,
  a pickle and the API docs lead a user to a place to import it from; the
  methods a class defines itself have the class's ``__module__``.

What the host libraries define (a named tuple's generated methods,
``collections``'; an enum's, ``enum``'s) is theirs, not checked here.  The
integrations run where their host is installed and are skipped, with the
reason, where it is not.

And the ``traffic`` package's trio-layer names, resolved on first use
(PEP 562), are listed once, in ``_TRIO_LAYER``: its ``TYPE_CHECKING``
imports re-export the same names from the same modules, each is that
module's own, and ``__all__`` lists every name once.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import pkgutil
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import traffic
import traffic.integrations

PACKAGE = Path(traffic.__file__).resolve().parent

#: The faces of the layers, as docs/architecture.rst names them.
FACES = [
    "traffic",
    "traffic.libkqueue",
    "traffic.datagrams",
    "traffic.errors",
    "traffic.trio_integration",
    "traffic.trio_datagrams",
    "traffic.anyio_backend",
    "traffic.anyio_datagrams",
    "traffic.libloop",
    "traffic.project",
]

#: One face per integration (``traffic.integrations.httpx``, ...), named
#: after its host.
INTEGRATIONS = sorted(
    f"traffic.integrations.{info.name}"
    for info in pkgutil.iter_modules(traffic.integrations.__path__)
    if not info.name.startswith("_")
)


def import_face(face: str) -> ModuleType:
    """The face; an integration whose host is missing skips the test with
    the face's own ImportError, which names the extra to install."""
    host = face.removeprefix("traffic.integrations.")
    if host != face and importlib.util.find_spec(host) is None:
        try:
            return importlib.import_module(face)
        except ImportError as exc:
            pytest.skip(f"{face}: {exc}")
    return importlib.import_module(face)


def is_private(module: str) -> bool:
    """Whether ``module`` is one of traffic's private modules."""
    parts = module.split(".")
    return any(part.startswith("_") for part in parts[1:])


def is_traffics(module: object) -> bool:
    """Whether ``module`` (a ``__module__``) is one of traffic's modules."""
    return isinstance(module, str) and module.split(".")[0] == "traffic"


def resolve(module: str, qualname: str) -> object:
    """What ``module``'s ``qualname`` is, as pickle finds it."""
    found: object = importlib.import_module(module)
    for part in qualname.split("."):
        found = getattr(found, part)
    return found


def own_methods(cls: type) -> Iterator[tuple[str, Any]]:
    """(name, function) of the methods, property accessors and nested
    classes ``cls`` defines itself, under its own name."""
    for name, member in vars(cls).items():
        if isinstance(member, (staticmethod, classmethod)):
            functions = [member.__func__]
        elif isinstance(member, property):
            functions = [f for f in (member.fget, member.fset, member.fdel) if f is not None]
        elif inspect.isfunction(member) or inspect.isclass(member):
            functions = [member]
        else:
            continue
        for function in functions:
            if getattr(function, "__qualname__", None) == f"{cls.__qualname__}.{name}":
                yield name, function


def misplaced(name: str, obj: object) -> list[str]:
    """What is wrong with where ``obj`` (exported as ``name``) says it lives."""
    if not (inspect.isclass(obj) or inspect.isfunction(obj)):
        return []
    module = obj.__module__
    if not is_traffics(module):
        return []  # the host's
    qualname = obj.__qualname__
    if is_private(module):
        return [f"{name}: __module__ is the private {module}"]
    try:
        found = resolve(module, qualname)
    except AttributeError:
        return [f"{name}: {module} has no {qualname}"]
    if found is not obj:
        return [f"{name}: {module}.{qualname} is another object ({found!r})"]
    problems = []
    if inspect.isclass(obj):
        for method, function in own_methods(obj):
            if is_traffics(function.__module__) and function.__module__ != module:
                problems.append(f"{name}.{method}: __module__ is {function.__module__}")
            if inspect.isclass(function):
                problems += misplaced(f"{name}.{method}", function)
    return problems


@pytest.mark.parametrize("face", FACES + INTEGRATIONS)
def test_each_public_name_says_where_to_import_it_from(face: str) -> None:
    module = import_face(face)
    names = getattr(module, "__all__", None)
    if names is None:
        names = [name for name in vars(module) if not name.startswith("_")]
        names = [name for name in names if not inspect.ismodule(getattr(module, name))]
    missing = [name for name in names if not hasattr(module, name)]
    assert missing == [], f"{face} does not have {missing}"
    # Every name first (the package's imports the trio layer), then where
    # each says it lives.
    exported = {name: getattr(module, name) for name in names}
    problems = [problem for name, obj in exported.items() for problem in misplaced(name, obj)]
    assert problems == [], f"{face}: " + "; ".join(problems)


# The package's trio-layer names


def type_checking_imports() -> tuple[dict[str, str], list[str]]:
    """traffic/__init__.py's imports under ``if TYPE_CHECKING:``: exported
    name -> module (relative to the package, as ``_TRIO_LAYER`` has it), and
    those not in the re-export form ``name as name``."""
    source = PACKAGE / "__init__.py"
    module = ast.parse(source.read_text(), filename=str(source))
    imported: dict[str, str] = {}
    implicit: list[str] = []
    for node in module.body:
        if not (
            isinstance(node, ast.If)
            and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
        ):
            continue
        for statement in node.body:
            if not isinstance(statement, ast.ImportFrom):
                continue
            assert statement.level == 1 and statement.module, ast.unparse(statement)
            for alias in statement.names:
                if alias.asname != alias.name:
                    implicit.append(ast.unparse(statement))
                imported[alias.asname or alias.name] = statement.module
    return imported, implicit


def test_the_type_checking_imports_are_the_trio_layer() -> None:
    imported, implicit = type_checking_imports()
    assert imported == traffic._TRIO_LAYER
    # mypy --strict sees a name the package re-exports only in this form:
    # __all__ is not a list of literal strings.
    assert implicit == []


@pytest.mark.parametrize("name", sorted(traffic._TRIO_LAYER))
def test_a_trio_layer_name_is_its_modules(name: str) -> None:
    module = importlib.import_module(f"traffic.{traffic._TRIO_LAYER[name]}")
    assert name in module.__all__
    assert getattr(traffic, name) is getattr(module, name)


def test_all_of_traffic_lists_each_name_once_and_each_resolves() -> None:
    duplicates = sorted({name for name in traffic.__all__ if traffic.__all__.count(name) > 1})
    assert duplicates == []
    assert set(traffic._TRIO_LAYER) <= set(traffic.__all__)
    unresolved = [name for name in traffic.__all__ if not hasattr(traffic, name)]
    assert unresolved == []
    assert set(traffic.__all__) <= set(dir(traffic))
