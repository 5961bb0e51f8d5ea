"""Sphinx configuration for the repoze_who_memcached manual (``make docs``)."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

# Pyramid 2.1 (the API reference imports repoze_who_memcached.pyramid) imports pkg_resources.
warnings.filterwarnings("ignore", "pkg_resources is deprecated", UserWarning)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from repoze_who_memcached import __version__  # noqa: E402

project = "repoze_who_memcached"
author = "the repoze_who_memcached developers"
copyright = "the repoze_who_memcached developers; MPL-2.0"
version = release = __version__

extensions = ["sphinx.ext.autodoc", "sphinx.ext.viewcode"]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": False}
exclude_patterns = ["_build"]
html_theme = "alabaster"
html_static_path: list[str] = []
nitpicky = False
suppress_warnings: list[str] = []
