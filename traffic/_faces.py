"""Where a public name says it lives: the face it is documented in.

The layers are written in private modules (``traffic._trio._stream``,
``traffic._anyio._listener``, ...) and published by the design card's
faces (``traffic.trio_integration``, ``traffic.anyio_backend``,
``traffic.libkqueue``, ...), which import them and list them in
``__all__``.  :func:`publish` then sets each such name's ``__module__`` to
its face, as trio's ``fixup_module_metadata`` does, so that reprs,
tracebacks, pickling and the API docs name the place a user imports it
from, never a private path that may move.

Imports nothing of traffic: every face may call it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["is_private", "publish"]


def is_private(module: str) -> bool:
    """Whether ``module`` is one of traffic's private modules."""
    parts = module.split(".")
    return parts[0] == "traffic" and any(part.startswith("_") for part in parts[1:])


def publish(face: str, namespace: dict[str, Any]) -> None:
    """Set ``__module__`` to ``face`` for every name of ``namespace``'s
    ``__all__`` defined in a private module of traffic, and for the methods
    and nested classes those classes define.  A name another face publishes
    (``traffic.Traffic`` is :mod:`traffic.libkqueue`'s) keeps its face."""
    seen: set[int] = set()

    def fix(obj: Any, qualname: str) -> None:
        if id(obj) in seen:
            return
        seen.add(id(obj))
        module = getattr(obj, "__module__", None)
        if not isinstance(module, str) or not is_private(module):
            return
        try:
            obj.__module__ = face
        except (AttributeError, TypeError):  # a builtin's or a slot's
            return
        if isinstance(obj, type):
            for name, member in vars(obj).items():
                # The function under a classmethod, staticmethod or property:
                # the wrapper's own __module__ is a copy nobody reads.
                if isinstance(member, (classmethod, staticmethod)):
                    member = member.__func__
                elif isinstance(member, property):
                    member = member.fget
                # Only what the class itself defines, under its own name.
                if getattr(member, "__qualname__", None) == f"{qualname}.{name}":
                    fix(member, f"{qualname}.{name}")

    for name in namespace["__all__"]:
        obj = namespace[name]
        fix(obj, getattr(obj, "__qualname__", name))
