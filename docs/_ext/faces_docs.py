"""The faces' API docs from the private modules that define their names.

``traffic._faces.publish`` sets the published names' ``__module__`` to the
face, so autodoc documents them there; but autodoc reads a module's ``#:``
comments, instance attributes and source order from the source of
``__module__``, the face, where they are not.  This lends each face's
analyzer what the defining modules' analyzers found for the names the face
publishes, sends viewcode's source links to the defining module, and
leaves traffic's private mixins out of a class's bases.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType
from typing import Any

from sphinx.pycode import ModuleAnalyzer

from traffic._faces import is_private

FACES = (
    "traffic.libkqueue",
    "traffic.datagrams",
    "traffic.errors",
    "traffic.libloop",
    "traffic.trio_integration",
    "traffic.trio_datagrams",
    "traffic.anyio_backend",
    "traffic.anyio_datagrams",
)


def _defining(face: ModuleType, name: str) -> str | None:
    """The private module of traffic whose source defines the face's ``name``."""
    value = getattr(face, name, None)
    for modname, module in list(sys.modules.items()):
        if not is_private(modname) or vars(module).get(name, face) is not value:
            continue
        try:
            analyzer = ModuleAnalyzer.for_module(modname)
            analyzer.analyze()
        except Exception:
            continue
        if name in analyzer.tagorder:
            return modname
    return None


def _lend(face_name: str) -> None:
    face = importlib.import_module(face_name)
    analyzer = ModuleAnalyzer.for_module(face_name)
    analyzer.analyze()
    # The lenders in the order they were imported: dependencies first, as
    # the one module they were cut from had them.
    ranks = {modname: rank for rank, modname in enumerate(sys.modules, 1)}
    for name in dir(face):
        source = _defining(face, name)
        if source is None or source == face_name:
            continue
        rank = ranks[source]
        lender = ModuleAnalyzer.for_module(source)
        for (scope, attr), doc in lender.attr_docs.items():
            if (scope == "" and attr == name) or scope.split(".")[0] == name:
                analyzer.attr_docs.setdefault((scope, attr), doc)
        for (scope, attr), annotation in lender.annotations.items():
            if (scope == "" and attr == name) or scope.split(".")[0] == name:
                analyzer.annotations.setdefault((scope, attr), annotation)
        for tag, order in lender.tagorder.items():
            if tag.split(".")[0] == name:
                analyzer.tagorder[tag] = rank * 1_000_000 + order  # over the import's


def _follow(app: Any, modname: str, fullname: str) -> str | None:
    if modname not in FACES:
        return None
    return _defining(importlib.import_module(modname), fullname.split(".")[0])


def _public_bases(app: Any, name: str, obj: Any, options: Any, bases: list[type]) -> None:
    """Leave traffic's private mixins (``FromSocket``) out of "Bases:": what
    they give is documented on the class, and their path may move."""
    bases[:] = [base for base in bases if not is_private(base.__module__)]


def _lend_all(app: Any) -> None:
    for face in FACES:
        _lend(face)


def setup(app: Any) -> dict[str, Any]:
    app.connect("builder-inited", _lend_all)
    app.connect("viewcode-follow-imported", _follow)
    app.connect("autodoc-process-bases", _public_bases)
    return {"parallel_read_safe": True}
