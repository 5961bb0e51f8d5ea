# Everything a fresh Debian machine needs, from `make test` or `make serve` alone.
# Debian packages are installed with apt-get when missing (as root), else we say what to install.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The servers the tests and `make serve` run, and what pip needs to build python-ldap
# (ldap_library = python-ldap): a C compiler, libldap's and libsasl's headers, Python's.
DEBIAN_PACKAGES := memcached slapd ldap-utils libldap2-dev libsasl2-dev gcc python3-dev
# What those packages provide, checked by path (/usr/sbin is not on every PATH; the -dev
# packages have no program: their headers are checked, Python's for the $(PYTHON) in use).
PYTHON_H = $(shell $(PYTHON) -c 'import sysconfig; print(sysconfig.get_paths()["include"])')/Python.h
SYSTEM_PROGRAMS := /usr/bin/memcached /usr/sbin/slapd /usr/sbin/slapadd /usr/bin/ldapsearch \
                   /usr/include/ldap.h /usr/include/sasl/sasl.h /usr/bin/gcc $(PYTHON_H)

.PHONY: help venv system-deps test lint serve bench clean

help:
	@echo "make test   - set up everything, then run the test suite (real memcached and slapd)"
	@echo "make serve  - set up everything, then run the demo stack on http://127.0.0.1:6543/"
	@echo "              (other ports: make serve HTTP_PORT=N MEMCACHED_PORT=N SLAPD_PORT=N)"
	@echo "make bench  - run the benchmarks; writes benchmarks/results/latest.md"
	@echo "make lint   - ruff"

# system-deps first (order-only: it is phony, and must not force a reinstall): pip builds
# python-ldap against the Debian headers it installs.
$(STAMP): setup.py pyproject.toml | system-deps
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=23" "setuptools>=76,<81" wheel
	$(BIN)/python -m pip install --quiet -e ".[test,bench,paster,pymemcache,prometheus,python-ldap]"
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
	$(BIN)/python -m pytest

lint: venv
	$(BIN)/ruff check .

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
	rm -rf $(VENV) var build dist *.egg-info .pytest_cache .ruff_cache
