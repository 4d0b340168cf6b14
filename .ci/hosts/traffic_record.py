"""What a traffic plugin of the host suites records, once for both plugins.

``traffic_hosts`` (httpcore's and httpx's suites) and ``traffic_hypercorn``
(hypercorn's) each patch the host for traffic at configure time, count per
test what reached traffic, and write a JSON report at the end. A
:class:`Record` holds that state for one pytest process: the test that is
running, the counts per test, the patches to undo, the self-check's
findings and the refusals. It is a plain module on ``run.py``'s
``PYTHONPATH``, not a plugin: each plugin makes one and calls it from its
own hooks.
"""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import Callable, Iterator
from typing import Any

SESSION = "<session>"


class Record:
    """One traffic run's record: counts per test, patches, findings."""

    def __init__(self) -> None:
        self.current = SESSION
        self.connections: dict[str, dict[str, int]] = {}
        self.violations: list[dict[str, str]] = []
        self.info: dict[str, Any] = {}
        self._undo: list[Callable[[], None]] = []

    def count(self, key: str) -> None:
        """One more ``key`` for the test that is running."""
        counts = self.connections.setdefault(self.current, {})
        counts[key] = counts.get(key, 0) + 1

    def refuse(self, what: str) -> None:
        """Record a refusal against the test that is running."""
        self.violations.append({"nodeid": self.current, "what": what})

    def patch(self, target: Any, name: str, value: Any) -> None:
        """``setattr``, undone by :meth:`restore` (an inherited attribute by
        deleting the override)."""
        if name in vars(target):
            old = vars(target)[name]
            self._undo.append(lambda: setattr(target, name, old))
        else:
            self._undo.append(lambda: delattr(target, name))
        setattr(target, name, value)

    def counting(self, key: str, original: Callable[..., Any], marker: str) -> Callable[..., Any]:
        """``original`` (a method), counting ``key`` each time it returns;
        the wrapper carries the attribute ``marker`` for the self-checks."""

        @functools.wraps(original)
        def made(obj: Any, *args: Any, **kwargs: Any) -> Any:
            result = original(obj, *args, **kwargs)
            self.count(key)  # counted once made: a refused one is not traffic's
            return result

        setattr(made, marker, True)
        return made

    def restore(self) -> None:
        """Undo every patch, the last first."""
        while self._undo:
            self._undo.pop()()

    @contextlib.contextmanager
    def running(self, nodeid: str) -> Iterator[None]:
        """Count against ``nodeid`` for the block."""
        self.current = nodeid
        try:
            yield
        finally:
            self.current = SESSION

    def write(self, path: str) -> None:
        report = {"info": self.info, "connections": self.connections, "violations": self.violations}
        with open(path, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=1, sort_keys=True)
