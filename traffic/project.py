"""Project description; name, version, release date.

Read by the build without importing the package (pyproject.toml's
``[tool.setuptools.dynamic]`` takes ``version`` from here), so this module
imports nothing from traffic and nothing compiled: only :mod:`typing`.
"""

from typing import Final

name: Final[str] = "traffic"
version: Final[str] = "0.1.0"
release_date: Final[str] = "2026-11-25"  # ISO 8601

abstract: Final[str] = (
    "Event driven I/O where the light is always green: a C core that performs the transfers."
)
