"""Sphinx configuration: API pages from the docstrings, the tutorials rendered (not run)."""

from __future__ import annotations

import shutil
from pathlib import Path

import armed_bio

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent

project = "armed_bio"
author = "the armed_bio developers"
release = armed_bio.__version__
version = release

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
]
autosummary_generate = True
autodoc_default_options = {"members": True, "show-inheritance": False}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autoclass_content = "class"
# Overrides of scvi-tools / Lightning methods would show their parents' docstrings (other markup).
autodoc_inherit_docstrings = False
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
myst_enable_extensions = ["colon_fence", "dollarmath"]
myst_heading_anchors = 3
# The notebooks are committed without outputs and run by the test suite, not by the build.
nb_execution_mode = "off"
html_theme = "furo"
html_title = f"armed_bio {release}"
templates_path = ["_templates"]
exclude_patterns = ["_build", "figures", "make_figures.py", "**.ipynb_checkpoints"]
# Offline: no intersphinx, nothing fetched.
suppress_warnings = ["myst.header"]


def _copy_tutorials(app) -> None:
    """The notebooks live in tutorials/ (where users run them); render copies of them."""
    target = DOCS / "tutorials"
    target.mkdir(exist_ok=True)
    for notebook in sorted((ROOT / "tutorials").glob("*.ipynb")):
        shutil.copy2(notebook, target / notebook.name)


def setup(app) -> None:
    app.connect("builder-inited", _copy_tutorials)
