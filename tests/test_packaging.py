"""What the package claims matches what is tested: the supported CPythons (setup.py's
classifiers and python_requires, noxfile.py, the Makefile, the README) and the optional
framework extras (the core install pulls no framework)."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parent.parent
FRAMEWORKS = {"pyramid", "turbogears2"}


def nox_pythons() -> list[str]:
    """noxfile.py's PYTHONS, read as text (importing it needs nox)."""
    text = (REPO / "noxfile.py").read_text()
    (listed,) = re.findall(r"^PYTHONS = \[(.*)\]$", text, re.M)
    return re.findall(r'"(3\.\d+)"', listed)


def test_every_list_of_supported_pythons_agrees():
    tested = nox_pythons()
    assert tested == ["3.10", "3.11", "3.12", "3.13"]
    makefile = (REPO / "Makefile").read_text()
    (make_list,) = re.findall(r"^SUPPORTED_PYTHONS := (.*)$", makefile, re.M)
    assert make_list.split() == tested
    meta = importlib.metadata.metadata("repoze_who_memcached")
    classified = [c.rsplit(" :: ", 1)[1] for c in meta.get_all("Classifier")
                  if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)]
    assert classified == tested
    assert meta["Requires-Python"] == f">={tested[0]}"
    readme = (REPO / "README.rst").read_text(encoding="utf-8")
    assert f"CPython {tested[0]} to {tested[-1]}" in readme


def test_the_core_install_pulls_no_framework():
    requirements = [Requirement(r) for r in importlib.metadata.requires("repoze_who_memcached")]
    core = {r.name.lower() for r in requirements if r.marker is None}
    assert core and not core & FRAMEWORKS
    def in_extra(name: str) -> set[str]:
        return {extra for r in requirements if r.name.lower() == name and r.marker
                for extra in ("pyramid", "turbogears", "test")
                if r.marker.evaluate({"extra": extra})}

    assert in_extra("pyramid") == {"pyramid", "test"}
    assert in_extra("turbogears2") == {"turbogears", "test"}
    # Importing the package, its filter and CLI loads no framework either.
    code = ("import sys, repoze_who_memcached, repoze_who_memcached.pipeline, "
            "repoze_who_memcached.cli; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pyramid', 'tg')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    assert out.strip() == "[]"
