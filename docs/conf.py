"""Sphinx configuration for traffic's documentation.

Built with ``sphinx-build -W -b html docs docs/_build/html`` after the
package is installed (``pip install -e '.[docs]'``): the API reference is
generated from the docstrings by autodoc, which imports the compiled core.
No extension fetches anything over the network (no intersphinx).
"""

from __future__ import annotations

import os
import sys

# The checkout, for a build run without installing (the compiled core must
# then have been built in place).
sys.path.insert(0, os.path.abspath(".."))
# traffic's own extension (faces_docs: the faces' members documented from
# the private modules that define them).
sys.path.insert(0, os.path.abspath("_ext"))

import traffic.project as _project

project = _project.name
author = "traffic contributors"
copyright = f"{_project.release_date[:4]}, {author}"
release = _project.version
version = release
today = _project.release_date

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.viewcode",
    "faces_docs",
]

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {
    "members": True,
    "show-inheritance": True,
    "undoc-members": True,
    # Every public name the module defines, not only those in __all__
    # (traffic re-exports trio_integration.SocketView, for one).
    "ignore-module-all": True,
}

exclude_patterns = ["_build"]
html_theme = "alabaster"
html_title = f"traffic {release}"
