"""Shared fixtures: real memcached servers (Debian's package) on free loopback ports."""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Callable
from typing import Any

import pytest

from repoze_who_memcached.testing import MemcachedServer

if importlib.util.find_spec("ldap_fixtures"):  # TEMP until the LDAP fixtures land
    pytest_plugins = ["ldap_fixtures"]

# Public test data: random (secrets.token_urlsafe(32)) so it passes check_secret_strength.
SECRET = "IobSBXZHmgvdPg3f2ffxsLHkCFkwV77iBDYVJh7dsXU"


def run_at_once(count: int, work: Callable[[], Any]) -> list[Any]:
    """``work()`` in ``count`` threads released together; their results, in finishing order."""
    barrier = threading.Barrier(count)
    results: list[Any] = []

    def run() -> None:
        barrier.wait()
        results.append(work())

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


@pytest.fixture(scope="session")
def memcached_session():
    with MemcachedServer() as server:
        yield server


@pytest.fixture
def memcached(memcached_session):
    """The session's memcached, emptied for each test."""
    if not memcached_session.running:
        memcached_session.start()
    memcached_session.flush()
    return memcached_session


@pytest.fixture
def private_memcached():
    """A memcached of this test's own, for tests that stop, pause or restart it."""
    with MemcachedServer() as server:
        yield server


@pytest.fixture
def three_memcached():
    """Three memcached servers of this test's own (a cluster; tests may stop one)."""
    servers = [MemcachedServer() for _ in range(3)]
    for server in servers:
        server.prepare()
        server.start()
    yield servers
    for server in servers:
        server.close()
