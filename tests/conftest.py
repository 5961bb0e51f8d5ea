"""Shared fixtures: real memcached servers (Debian's package) on free loopback ports."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import waitress

from repoze_who_memcached.testing import MemcachedServer

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


@contextlib.contextmanager
def serving(app: Callable, threads: int = 2, **adjustments: Any) -> Iterator[int]:
    """``app`` served by a real waitress server on a free loopback port, in a thread; its port.

    It is stopped from inside its own event loop (waitress's trigger runs the stop there):
    its open connections and its socket are closed by the thread that polls them, so the
    loop ends by itself and no close races a poll (closing from this thread made the loop
    fail with EBADF now and then). Connections are closed as waitress closes a lost one
    (``handle_close``: it also wakes a worker waiting to write), and the worker threads are
    asked to stop (waitress waits up to 10 s for them, then only logs).
    """
    server = waitress.create_server(app, host="127.0.0.1", port=0, threads=threads,
                                    **adjustments)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()

    def stop() -> None:
        for channel in list(server.active_channels.values()):
            channel.handle_close()
        server.close()

    try:
        yield server.effective_port
    finally:
        server.trigger.pull_trigger(stop)
        thread.join(timeout=10)
        server.task_dispatcher.shutdown(timeout=10)
        assert not thread.is_alive(), "the waitress loop did not stop"


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
