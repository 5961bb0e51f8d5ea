"""The private servers of ``repoze_who_memcached.testing`` never report a start that is not
theirs: on a port another process listens on, they fail naming the port and leave nothing
running (issue 17, point 7)."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from repoze_who_memcached.testing import (
    MemcachedServer,
    PortInUseError,
    SlapdServer,
    free_port,
    listener_pids,
    listens_on,
    port_is_free,
)


@pytest.fixture(params=["127.0.0.1", "0.0.0.0"], ids=["same-address", "wildcard"])  # noqa: S104
def taken_port(request) -> Iterator[tuple[int, socket.socket]]:
    """A port a plain socket listens on (on our loopback address, or on every address)."""
    port = free_port()
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((request.param, port))
    listener.listen()
    try:
        yield port, listener
    finally:
        listener.close()


def processes_with_arg(*args: str) -> list[int]:
    """Processes whose command line holds every one of ``args`` (to prove nothing is left)."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                argv = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
            except OSError:
                continue
            if all(a in argv for a in args):
                found.append(int(proc.name))
    return found


def test_port_checks_see_a_plain_listener(taken_port):
    port, _ = taken_port
    assert not port_is_free("127.0.0.1", port)
    assert port_is_free("127.0.0.1", free_port())
    assert os.getpid() in listener_pids(port)
    assert listens_on(os.getpid(), port)


def _assert_refused(server, port: int, info: pytest.ExceptionInfo) -> None:
    message = str(info.value)
    assert f"port {port}" in message
    assert "port=" in message  # how to choose another
    assert "already in use" in message
    assert info.value.port == port
    assert server.process is None and not server.running


class _NoPreCheck:
    """Skip the bind test before the start, as when another process takes the port between
    our check and the server's bind: the check after the start must catch it."""

    def check_port_free(self) -> None:
        pass


class _MemcachedRacing(_NoPreCheck, MemcachedServer):
    pass


class _SlapdRacing(_NoPreCheck, SlapdServer):
    pass


@pytest.mark.parametrize("server_class", [MemcachedServer, _MemcachedRacing],
                         ids=["checked-before", "taken-meanwhile"])
def test_memcached_on_a_taken_port_fails_and_leaves_nothing(taken_port, server_class):
    port, _ = taken_port
    server = server_class(port=port)
    try:
        server.prepare()
        with pytest.raises(PortInUseError) as info:
            server.start()
        _assert_refused(server, port, info)
        assert not processes_with_arg("-p", str(port))
        assert listener_pids(port) == [os.getpid()]  # the plain listener, still alone
    finally:
        server.close()


@pytest.mark.parametrize("server_class", [SlapdServer, _SlapdRacing],
                         ids=["checked-before", "taken-meanwhile"])
def test_slapd_on_a_taken_port_fails_and_leaves_nothing(taken_port, server_class):
    port, _ = taken_port
    server = server_class(port=port)
    try:
        with pytest.raises(PortInUseError) as info:
            server.start()
        _assert_refused(server, port, info)
        assert not processes_with_arg("-f", str(server.config_file))
        assert listener_pids(port) == [os.getpid()]
    finally:
        server.close()


def test_a_context_manager_on_a_taken_port_raises_before_the_body(taken_port):
    port, _ = taken_port
    entered = False
    with pytest.raises(PortInUseError, match=f"port {port}"), MemcachedServer(port=port):
        entered = True
    assert not entered


def test_a_free_port_starts_and_the_listener_is_the_server():
    with MemcachedServer() as server:
        assert server.running
        assert listens_on(server.process.pid, server.port)
        server.set_raw("k", b"v")
        assert server.get_raw("k") == b"v"
        port = server.port
        server.stop()
        server.start()  # the same port again (TIME_WAIT counts as free, as for memcached)
        assert listens_on(server.process.pid, port)
