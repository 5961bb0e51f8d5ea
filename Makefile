# Everything a fresh Debian machine needs, from `make test` or `make serve` alone.
# Debian packages are installed with apt-get when missing (as root), else we say what to install.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The servers the tests and `make serve` run (twemproxy is nutcracker), and what pip needs to
# build python-ldap (ldap_library = python-ldap): a C compiler, libldap's, libsasl's and
# Python's headers.
DEBIAN_PACKAGES := memcached slapd ldap-utils nutcracker libldap2-dev libsasl2-dev gcc python3-dev
# What those packages provide, checked by path (/usr/sbin is not on every PATH; the -dev
# packages have no program: their headers are checked, Python's for the $(PYTHON) in use).
PYTHON_H = $(shell $(PYTHON) -c 'import sysconfig; print(sysconfig.get_paths()["include"])')/Python.h
SYSTEM_PROGRAMS := /usr/bin/memcached /usr/sbin/slapd /usr/sbin/slapadd /usr/bin/ldapsearch \
                   /usr/sbin/nutcracker /usr/include/ldap.h /usr/include/sasl/sasl.h /usr/bin/gcc \
                   $(PYTHON_H)

.PHONY: help venv system-deps test test-all test-all-fast lint docs serve bench clean

help:
	@echo "make test   - set up everything, then run the test suite (real memcached and slapd)"
	@echo "make serve  - set up everything, then run the demo stack on http://127.0.0.1:6543/"
	@echo "              (other ports: make serve HTTP_PORT=N MEMCACHED_PORT=N SLAPD_PORT=N)"
	@echo "make bench  - run the benchmarks; writes benchmarks/results/latest.md"
	@echo "make test-all      - the whole suite on every supported CPython (3.10 to 3.13, nox)"
	@echo "make test-all-fast - the fast subset (pytest -m 'not slow') on each but the venv's"
	@echo "make lint   - ruff"
	@echo "make docs   - the manual (Sphinx, warnings are errors): docs/_build/html/index.html"

# system-deps first (order-only: it is phony, and must not force a reinstall): pip builds
# python-ldap against the Debian headers it installs.
$(STAMP): setup.py pyproject.toml | system-deps
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=23" "setuptools>=76,<81" wheel
	$(BIN)/python -m pip install --quiet -e ".[test,bench,paster,pymemcache,prometheus,python-ldap,docs]"
	touch $@

venv: $(STAMP)

system-deps:
	@missing=""; for p in $(SYSTEM_PROGRAMS); do [ -e "$$p" ] || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages: $(DEBIAN_PACKAGES) (missing:$$missing)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(DEBIAN_PACKAGES) >/dev/null; \
	  else \
	    echo "missing:$$missing"; \
	    echo "run as root: apt-get update && apt-get install -y $(DEBIAN_PACKAGES)"; exit 1; \
	  fi; \
	fi

test: venv system-deps
	$(BIN)/ruff check .
	$(BIN)/python -m sphinx -W --keep-going -q -b html docs docs/_build/html
	$(BIN)/python -m pytest

# Every CPython we claim (noxfile.py: PYTHONS; setup.py's classifiers say the same). nox
# makes one venv per version from ~/.pyenv/versions/3.X.Y (or python3.X on PATH) and never
# downloads an interpreter; it is installed into the project venv from the package index.
NOX := $(BIN)/nox
# The same list as noxfile.py's PYTHONS and setup.py's classifiers (tests/test_packaging.py).
SUPPORTED_PYTHONS := 3.10 3.11 3.12 3.13
# The venv's own version: `make test` runs the whole suite on it already.
VENV_PYTHON = $(shell $(BIN)/python -c 'import sys; print("%d.%d" % sys.version_info[:2])')

$(NOX): $(STAMP)
	$(BIN)/python -m pip install --quiet "nox>=2024.4.15"
	touch $@

test-all: venv system-deps $(NOX)
	$(NOX) --session tests

# A quicker check after `make test`: the fast subset on every other supported version.
test-all-fast: venv system-deps $(NOX)
	$(NOX) --session fast --python $(filter-out $(VENV_PYTHON),$(SUPPORTED_PYTHONS))

lint: venv
	$(BIN)/ruff check .

docs: venv
	$(BIN)/python -m sphinx -W --keep-going -q -b html docs docs/_build/html
	@echo "the manual: docs/_build/html/index.html"

# The ports of `make serve`; choose others with `make serve MEMCACHED_PORT=N ...` (or in the
# environment). A taken port stops it with a message naming the port.
MEMCACHED_PORT ?= 22122
SLAPD_PORT     ?= 3890
HTTP_PORT      ?= 6543
# Where `make serve` keeps the servers' state (the users, the cache secret).
SERVE_VAR      ?= var

serve: venv system-deps
	$(BIN)/python -m repoze_who_memcached.devstack --var $(SERVE_VAR) --serve development.ini \
	    --memcached-port $(MEMCACHED_PORT) --slapd-port $(SLAPD_PORT) --http-port $(HTTP_PORT)

bench: venv system-deps
	$(BIN)/python -m benchmarks.run

clean:
	rm -rf $(VENV) var build dist *.egg-info .pytest_cache .ruff_cache docs/_build .nox
