"""Make the tests import the built traffic, never the bare checkout.

traffic's C core is compiled at install (``pip install .``) into
``site-packages/traffic/_traffic*.so``; the checkout's ``traffic/`` has no
compiled module unless it was built in place (``pip install -e .``, or
``python traffic/_ffi_build.py`` as the sanitizer run in ``.ci/run`` does).
But ``python -m pytest``, the README's test command, puts the current
directory first on ``sys.path``, so from the project root ``import traffic``
would find the unbuilt checkout and fail to import its core.

So, before any test module is imported: when the checkout holds no compiled
core, take the checkout off ``sys.path`` and import the installed traffic,
which then stays in ``sys.modules`` for every test. When the checkout was
built in place, it is what the tests use.
"""

from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.abspath(__file__))
CHECKOUT_PACKAGE = os.path.join(ROOT, "traffic")


def _built_in_place() -> bool:
    return any(
        name.startswith("_traffic.") and name.endswith((".so", ".pyd"))
        for name in os.listdir(CHECKOUT_PACKAGE)
    )


def _is_root(entry: str) -> bool:
    return os.path.abspath(entry or os.curdir) == ROOT


if not _built_in_place():
    sys.path[:] = [entry for entry in sys.path if not _is_root(entry)]
    for _name in [m for m in sys.modules if m == "traffic" or m.startswith("traffic.")]:
        del sys.modules[_name]
    try:
        import traffic
    except ImportError as exc:
        raise ImportError(
            "traffic is not built: the checkout has no compiled core and no installed "
            "traffic imports; run `pip install '.[test]'` (or `pip install -e '.[test]'`)"
        ) from exc
    if os.path.dirname(os.path.abspath(traffic.__file__ or "")) == CHECKOUT_PACKAGE:
        raise ImportError(f"tests would run against the unbuilt checkout {CHECKOUT_PACKAGE}")
