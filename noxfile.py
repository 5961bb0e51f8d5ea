"""The test suite on every CPython we claim (setup.py's python_requires and classifiers).

    make test-all              # the tests sessions: the full suite on 3.10 to 3.13
    make test-all-fast         # the fast subset (-m "not slow") on each version but the venv's

Run by hand: ``.venv/bin/nox -s tests-3.12 -- tests/test_pyramid.py -x``. Each session's
venv is made from the interpreter pyenv keeps in ``~/.pyenv/versions/3.X.Y`` (put first on
PATH here), else from ``python3.X`` on PATH; nox never downloads an interpreter. Packages
come from the package index pip is configured with, as for ``make venv``.
"""

from __future__ import annotations

import os
from pathlib import Path

import nox

# Keep in step with setup.py (python_requires, classifiers) and the README.
PYTHONS = ["3.10", "3.11", "3.12", "3.13"]
# The fast subset: everything but the tests marked slow (subprocesses, wheels, real time).
FAST = ["-m", "not slow"]

nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True
nox.options.download_python = "never"
nox.options.error_on_missing_interpreters = True


def _pyenv_first_on_path() -> None:
    """Put each supported version's pyenv ``bin`` first on PATH (newest patch release)."""
    versions = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    found = []
    for minor in PYTHONS:
        candidates = sorted(
            (p for p in versions.glob(f"{minor}.*") if (p / "bin" / f"python{minor}").exists()),
            key=lambda p: tuple(int(n) for n in p.name.split(".") if n.isdigit()),
        )
        if candidates:
            found.append(str(candidates[-1] / "bin"))
    if found:
        os.environ["PATH"] = os.pathsep.join([*found, os.environ.get("PATH", "")])


_pyenv_first_on_path()


def _install(session: nox.Session) -> None:
    # As the Makefile's venv: paster needs setuptools<81 (pkg_resources), and the scaffold
    # tests build our wheel without isolation (setuptools and wheel must be there).
    session.install("pip>=23", "setuptools>=76,<81", "wheel")
    session.install("-e", ".[test]")


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """The whole suite (or the pytest arguments after ``--``)."""
    _install(session)
    session.run("python", "-m", "pytest", *(session.posargs or []))


@nox.session(python=PYTHONS)
def fast(session: nox.Session) -> None:
    """The fast subset: ``pytest -m "not slow"`` (or the pytest arguments after ``--``)."""
    _install(session)
    session.run("python", "-m", "pytest", *(session.posargs or FAST))
