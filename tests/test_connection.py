"""Our hit-path connection (connection.py) against real memcached servers: hits, misses,
restarts, stopped and hung servers, dead marks and recovery, TLS, threads, fork; and the
backends' server choice agreeing with the libraries' stores."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from conftest import SECRET, run_at_once

from repoze_who_memcached import make_plugin
from repoze_who_memcached.backends import ServerAddress, _python_memcached_order, _route_hash
from repoze_who_memcached.connection import MemcachedConnection
from repoze_who_memcached.testing import MemcachedServer

CLIENTS = ["python-memcached", "pymemcache"]


class Reports:
    """Collects what the connection reports (it must report, never raise)."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, str]] = []

    def __call__(self, server: str, message: str) -> None:
        self.messages.append((server, message))


def connect_to(server: MemcachedServer | ServerAddress, reports: Reports, *,
               socket_timeout: float = 0.3, connect_timeout: float = 0.3,
               dead_retry: float = 30.0, tls_context: ssl.SSLContext | None = None
               ) -> MemcachedConnection:
    address = server if isinstance(server, ServerAddress) else ServerAddress.parse(server.url)
    return MemcachedConnection(address, connect_timeout=connect_timeout,
                               socket_timeout=socket_timeout, dead_retry=dead_retry,
                               report_error=reports, tls_context=tls_context)


def wait_until_alive(connection: MemcachedConnection, limit: float = 10.0) -> None:
    deadline = time.monotonic() + limit
    while not connection.alive:
        assert time.monotonic() < deadline, "the dead mark never expired"
        time.sleep(0.02)


def pause(server: MemcachedServer) -> None:
    """SIGSTOP, and wait until every thread of the server has stopped: the signal is
    delivered asynchronously, and a request sent at once may still be answered."""
    server.pause()
    tasks = Path(f"/proc/{server.process.pid}/task")
    deadline = time.monotonic() + 10
    while not all((task / "stat").read_text().rsplit(")", 1)[1].split()[0] in "tT"
                  for task in tasks.iterdir()):
        assert time.monotonic() < deadline, "memcached did not stop"
        time.sleep(0.005)


def test_hit_and_miss(memcached):
    memcached.set_raw("k1", b"one")
    memcached.set_raw("k2", b"\r\nEND\r\n" * 1000)
    reports = Reports()
    connection = connect_to(memcached, reports)
    assert connection.get_multi(["k1", "k2", "absent"]) == {"k1": b"one",
                                                           "k2": b"\r\nEND\r\n" * 1000}
    assert connection.get_multi(["absent"]) == {}
    sock = connection.thread_socket()
    assert connection.get_multi(["k1"]) == {"k1": b"one"}
    assert connection.thread_socket() is sock  # one socket per thread, reused
    assert reports.messages == [] and connection.alive
    connection.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_RCVTIMEO is used on Linux")
def test_a_worker_threads_plain_socket_is_bounded_by_the_kernel_not_by_poll(memcached):
    """No ``poll()`` before each send and recv (a Python socket timeout's) in a worker
    thread: the kernel bounds each call; the hung-server tests below show the bound holds.
    The main thread keeps Python's timeout (signals land there: see the signal test)."""
    connection = connect_to(memcached, Reports(), socket_timeout=0.25)

    def get_and_look() -> tuple[dict, float | None, list[tuple[int, int]]]:
        found = connection.get_multi(["absent"])
        sock = connection.thread_socket()
        assert sock is not None
        timevals = [struct.unpack("@ll", sock.getsockopt(
            socket.SOL_SOCKET, option, struct.calcsize("@ll")))
            for option in (socket.SO_RCVTIMEO, socket.SO_SNDTIMEO)]
        return found, sock.gettimeout(), timevals

    [(found, python_timeout, timevals)] = run_at_once(1, get_and_look)
    assert found == {} and python_timeout is None
    for seconds, microseconds in timevals:
        assert seconds == 0 and 250_000 <= microseconds <= 260_000  # rounded up to a tick
    assert connection.get_multi(["absent"]) == {}
    assert connection.thread_socket().gettimeout() == 0.25  # the main thread's: Python's
    connection.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_RCVTIMEO is used on Linux")
def test_hung_server_is_bounded_by_the_kernels_timeout_in_a_worker_thread(private_memcached):
    reports = Reports()
    connection = connect_to(private_memcached, reports, socket_timeout=0.2)
    private_memcached.set_raw("k", b"v")

    def hit_then_hang() -> float:
        assert connection.get_multi(["k"]) == {"k": b"v"}
        assert connection.thread_socket().gettimeout() is None  # the kernel's timeouts
        pause(private_memcached)
        started = time.monotonic()
        assert connection.get_multi(["k"]) == {}
        return time.monotonic() - started

    try:
        [elapsed] = run_at_once(1, hit_then_hang)
    finally:
        private_memcached.resume()
    assert not connection.alive
    assert len(reports.messages) == 1 and "TimeoutError" in reports.messages[0][1]
    assert elapsed < 2.0  # socket_timeout (0.2), with room for a busy machine
    connection.close()

def test_a_remembered_reply_never_outlives_a_change_of_the_values(memcached):
    """Replies are remembered by their bytes: the same request answered alike gets the
    same values (copies); a stored, replaced or deleted value is a new reply, read anew."""
    reports = Reports()
    connection = connect_to(memcached, reports)
    memcached.set_raw("rk1", b"one")
    memcached.set_raw("rk2", b"two")
    first = connection.get_multi(["rk1", "rk2", "rk-absent"])
    assert first == {"rk1": b"one", "rk2": b"two"}
    first["rk1"] = b"changed by the caller"
    assert connection.get_multi(["rk1", "rk2", "rk-absent"]) == {"rk1": b"one", "rk2": b"two"}
    memcached.set_raw("rk1", b"uno")  # the same length: only the bytes differ
    assert connection.get_multi(["rk1", "rk2", "rk-absent"]) == {"rk1": b"uno", "rk2": b"two"}
    memcached.set_raw("rk-absent", b"three")
    assert connection.get_multi(["rk1", "rk2", "rk-absent"]) == {
        "rk1": b"uno", "rk2": b"two", "rk-absent": b"three"}
    assert memcached.raw_command(b"delete rk2\r\n") == b"DELETED\r\n"
    assert connection.get_multi(["rk1", "rk2", "rk-absent"]) == {
        "rk1": b"uno", "rk-absent": b"three"}
    # The same reply to another request is no answer to it: the keys are part of the memo.
    assert connection.get_multi(["rk1"]) == {"rk1": b"uno"}
    assert reports.messages == []
    connection.close()


def test_remembered_replies_are_bounded_and_only_whole_ones(memcached, monkeypatch):
    from repoze_who_memcached import connection as module

    monkeypatch.setattr(module, "MAX_REPLIES", 4)
    connection = connect_to(memcached, Reports())
    for i in range(10):
        memcached.set_raw(f"bk{i}", b"v%d" % i)
        assert connection.get_multi([f"bk{i}"]) == {f"bk{i}": b"v%d" % i}
        assert len(connection._replies) <= 4
    connection._replies.clear()
    memcached.set_raw("big", b"x" * 200_000)  # read in several recvs: parsed each time
    for _ in range(2):
        assert connection.get_multi(["big"]) == {"big": b"x" * 200_000}
    assert connection._replies == {}
    connection.close()


def test_restarted_memcached_is_used_again_without_a_mark(private_memcached):
    reports = Reports()
    connection = connect_to(private_memcached, reports)
    private_memcached.set_raw("k", b"v")
    assert connection.get_multi(["k"]) == {"k": b"v"}
    old = connection.thread_socket()
    private_memcached.restart()  # same port, empty: our socket was closed by the old one
    private_memcached.set_raw("k", b"after")
    assert connection.get_multi(["k"]) == {"k": b"after"}
    assert connection.thread_socket() is not old
    assert reports.messages == [] and connection.alive
    assert connection.incidents == 1  # other sockets to it, as old, are suspect
    connection.close()


def test_stopped_server_is_a_reported_miss_then_skipped_until_dead_retry(private_memcached):
    reports = Reports()
    connection = connect_to(private_memcached, reports, dead_retry=0.3)
    private_memcached.set_raw("k", b"v")
    assert connection.get_multi(["k"]) == {"k": b"v"}
    private_memcached.stop()
    # The reused socket is found closed, the reconnect is refused: the server's fault.
    assert connection.get_multi(["k"]) == {}
    assert not connection.alive and connection.incidents == 2  # found closed, then refused
    assert len(reports.messages) == 1
    server, message = reports.messages[0]
    assert server == private_memcached.url and "ConnectionRefusedError" in message
    private_memcached.start()
    private_memcached.set_raw("k", b"back")
    wait_until_alive(connection)
    assert connection.get_multi(["k"]) == {"k": b"back"}
    assert len(reports.messages) == 1
    connection.close()


def test_a_dead_server_is_not_touched_while_marked(private_memcached):
    reports = Reports()
    connection = connect_to(private_memcached, reports, dead_retry=60)
    private_memcached.stop()
    assert connection.get_multi(["k"]) == {}
    private_memcached.start()
    private_memcached.set_raw("k", b"v")
    for _ in range(5):  # still marked: nothing is asked, nothing more is reported
        assert connection.get_multi(["k"]) == {}
    assert len(reports.messages) == 1
    assert connection.thread_socket() is None
    connection.close()


def test_hung_server_is_bounded_by_socket_timeout_then_skipped(private_memcached):
    reports = Reports()
    connection = connect_to(private_memcached, reports, socket_timeout=0.2)
    private_memcached.set_raw("k", b"v")
    assert connection.get_multi(["k"]) == {"k": b"v"}
    pause(private_memcached)  # SIGSTOP: the socket stays open, nothing answers
    try:
        started = time.monotonic()
        assert connection.get_multi(["k"]) == {}
        first = time.monotonic() - started
        started = time.monotonic()
        for _ in range(20):
            assert connection.get_multi(["k"]) == {}
        later = time.monotonic() - started
        assert not connection.alive
        # A new connection to the hung server (another thread) is bounded too, and the
        # mark is shared: that thread does not wait at all.
        other = run_at_once(1, lambda: connection.get_multi(["k"]))
        assert other == [{}]
    finally:
        private_memcached.resume()
    assert len(reports.messages) == 1 and "TimeoutError" in reports.messages[0][1]
    assert first < 2.0  # socket_timeout (0.2), with room for a busy machine
    assert later < 0.5  # twenty skips, no waiting
    connection.close()


@pytest.mark.skipif(not hasattr(signal, "pthread_kill"), reason="needs pthread_kill")
def test_signals_to_the_main_thread_do_not_stretch_a_hung_servers_wait(private_memcached):
    """Python retries a ``recv`` a signal interrupted (PEP 475). With a Python timeout the
    retry waits what is left of it; with the kernel's SO_RCVTIMEO it would wait the whole
    timeout again, so a process sent a signal more often than ``socket_timeout`` (a
    profiler's SIGPROF, a supervisor's SIGCHLD or SIGHUP: the kernel hands a process's
    signals to its main thread) would wait on a hung server for as long as they came."""
    reports = Reports()
    connection = connect_to(private_memcached, reports, socket_timeout=0.3)
    private_memcached.set_raw("k", b"v")
    assert connection.get_multi(["k"]) == {"k": b"v"}
    main = threading.get_ident()
    assert main == threading.main_thread().ident
    stop = threading.Event()
    signals_sent = []

    def signal_the_main_thread() -> None:  # for 4 seconds at most
        give_up = time.monotonic() + 4.0
        while not stop.wait(0.05) and time.monotonic() < give_up:
            signal.pthread_kill(main, signal.SIGUSR1)
            signals_sent.append(1)

    previous = signal.signal(signal.SIGUSR1, lambda *_: None)
    pause(private_memcached)
    sender = threading.Thread(target=signal_the_main_thread)
    try:
        sender.start()
        started = time.monotonic()
        assert connection.get_multi(["k"]) == {}
        elapsed = time.monotonic() - started
    finally:
        stop.set()
        sender.join()
        signal.signal(signal.SIGUSR1, previous)
        private_memcached.resume()
    assert signals_sent  # the wait was interrupted, again and again
    assert len(reports.messages) == 1 and "TimeoutError" in reports.messages[0][1]
    assert elapsed < 2.0  # socket_timeout (0.3), with room for a busy machine; not 4 s
    connection.close()


def test_hung_server_bounds_a_new_connection_too(private_memcached):
    reports = Reports()
    connection = connect_to(private_memcached, reports, socket_timeout=0.2)
    pause(private_memcached)  # the kernel still accepts the connection; no reply comes
    try:
        started = time.monotonic()
        assert connection.get_multi(["k"]) == {}
        elapsed = time.monotonic() - started
    finally:
        private_memcached.resume()
    assert not connection.alive and "TimeoutError" in reports.messages[0][1]
    assert elapsed < 2.0
    connection.close()


def test_client_error_is_not_the_servers_fault(memcached):
    reports = Reports()
    connection = connect_to(memcached, reports)
    assert connection.get_multi(["x" * 300]) == {}  # memcached refuses a key over 250 bytes
    assert connection.alive
    assert "CLIENT_ERROR" in reports.messages[0][1]
    memcached.set_raw("k", b"v")
    assert connection.get_multi(["k"]) == {"k": b"v"}  # a clean socket again
    connection.close()


def test_out_of_step_reply_drops_the_socket(memcached):
    reports = Reports()
    connection = connect_to(memcached, reports, dead_retry=0)
    memcached.set_raw("a", b"1")
    memcached.set_raw("b", b"2")
    assert connection.get_multi(["a"]) == {"a": b"1"}
    connection.thread_socket().sendall(b"get a\r\n")  # a reply nobody will read
    assert connection.get_multi(["b"]) == {}  # "a" answered: refused, socket dropped
    assert "not asked for" in reports.messages[0][1]
    assert connection.get_multi(["b"]) == {"b": b"2"}
    connection.close()


def test_close_closes_every_threads_socket_and_gets_go_on(memcached):
    reports = Reports()
    connection = connect_to(memcached, reports)
    memcached.set_raw("k", b"v")
    sockets = run_at_once(4, lambda: (connection.get_multi(["k"]), connection.thread_socket()))
    assert [found for found, _ in sockets] == [{"k": b"v"}] * 4
    assert len({id(sock) for _, sock in sockets}) == 4  # a socket per thread
    assert connection.get_multi(["k"]) == {"k": b"v"}
    connection.close()
    assert all(sock.fileno() == -1 for _, sock in sockets)
    assert connection.get_multi(["k"]) == {"k": b"v"}  # reconnects: close() is no failure
    assert reports.messages == [] and connection.alive
    connection.close()


def test_many_threads_get_their_own_answers(memcached):
    reports = Reports()
    connection = connect_to(memcached, reports)
    for n in range(16):
        memcached.set_raw(f"key-{n}", f"value-{n}".encode() * (n * 500 + 1))

    def work() -> list[bool]:
        name = threading.current_thread().name
        seen = []
        for n in [*range(16)] * 5:
            found = connection.get_multi([f"key-{n}", f"absent-{name}"])
            seen.append(found == {f"key-{n}": f"value-{n}".encode() * (n * 500 + 1)})
        return seen

    results = run_at_once(8, work)
    assert all(all(seen) for seen in results)
    assert reports.messages == []
    connection.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_connects_again(memcached):
    reports = Reports()
    connection = connect_to(memcached, reports)
    memcached.set_raw("k", b"v")
    assert connection.get_multi(["k"]) == {"k": b"v"}
    parent_socket = connection.thread_socket()
    pid = os.fork()
    if pid == 0:  # the child: a fresh socket, the right answer; then out at once
        ok = connection.thread_socket() is None and connection.get_multi(["k"]) == {"k": b"v"}
        os._exit(0 if ok and not reports.messages else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert connection.thread_socket() is parent_socket
    assert connection.get_multi(["k"]) == {"k": b"v"}  # the parent's socket is untouched
    connection.close()


def _total_connections(server: MemcachedServer) -> int:
    """memcached's count of connections accepted so far (this one included)."""
    for line in server.raw_command(b"stats\r\n").decode("ascii").splitlines():
        if line.startswith("STAT total_connections "):
            return int(line.split()[2])
    raise AssertionError("no total_connections in stats")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.parametrize("client", CLIENTS)
def test_a_forked_child_stores_on_a_socket_of_its_own(memcached, client):
    """The libraries' sockets too: a child forked after the parent stored (a preloading
    master) must not write on the parent's socket (two processes reading one stream get
    each other's replies). The parent's socket is left open, and goes on working."""
    plugin = make_plugin(secret=SECRET, authenticator_name="x", memcached_client=client,
                         memcached_urls=memcached.url)
    backend = plugin.backend
    assert backend.set("parent", b"1", 60, "route")  # this thread's library socket is open
    before = _total_connections(memcached)
    pid = os.fork()
    if pid == 0:  # the child: one store, then out at once
        os._exit(0 if backend.set("child", b"2", 60, "route") else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert _total_connections(memcached) == before + 2  # this stats read, the child's own
    assert backend.set("parent-again", b"3", 60, "route")
    assert _total_connections(memcached) == before + 3  # the parent reused its socket
    assert backend.get_multi(["child", "parent-again"], "route") == {"child": b"2",
                                                                    "parent-again": b"3"}
    backend.close()


def test_unix_socket_server():
    program = shutil.which("memcached") or "/usr/bin/memcached"
    workdir = Path(tempfile.mkdtemp(prefix="rwm-unix-"))
    path = workdir / "memcached.sock"
    command = [program, "-s", str(path), "-U", "0", "-m", "16"]
    if os.geteuid() == 0:
        command += ["-u", "root"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not path.exists():
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
        with socket.socket(socket.AF_UNIX) as raw:
            raw.settimeout(5)
            raw.connect(str(path))
            raw.sendall(b"set k 0 0 1\r\nv\r\n")
            assert raw.recv(100) == b"STORED\r\n"
        reports = Reports()
        connection = connect_to(ServerAddress.parse(f"unix:{path}"), reports)
        assert connection.get_multi(["k", "absent"]) == {"k": b"v"}
        assert reports.messages == []
        connection.close()
    finally:
        os.kill(process.pid, signal.SIGTERM)
        process.wait(5)
        shutil.rmtree(workdir, ignore_errors=True)


# ------------------------------------------------------------------ TLS


@pytest.fixture(scope="module")
def tls_memcached():
    with MemcachedServer(tls=True) as server:
        yield server


def _store_over_tls(server: MemcachedServer, key: str, value: bytes) -> None:
    from pymemcache.client.base import Client

    context = ssl.create_default_context(cafile=str(server.ca_file))
    client = Client((server.host, server.port), tls_context=context, timeout=5)
    try:
        assert client.set(key, value, noreply=False)
    finally:
        client.close()


def test_tls_hit_and_miss(tls_memcached):
    _store_over_tls(tls_memcached, "tls-k", b"sealed")
    reports = Reports()
    context = ssl.create_default_context(cafile=str(tls_memcached.ca_file))
    connection = connect_to(tls_memcached, reports, tls_context=context)
    assert connection.get_multi(["tls-k", "absent"]) == {"tls-k": b"sealed"}
    assert isinstance(connection.thread_socket(), ssl.SSLSocket)
    assert connection.thread_socket().gettimeout() == 0.3  # Python's: ssl retries EAGAIN
    assert connection.get_multi(["absent"]) == {}
    assert reports.messages == []
    connection.close()


def test_tls_untrusted_certificate_is_a_reported_miss(tls_memcached):
    reports = Reports()
    context = ssl.create_default_context()  # the system CAs: the test certificate is not one
    connection = connect_to(tls_memcached, reports, tls_context=context)
    assert connection.get_multi(["tls-k"]) == {}
    assert not connection.alive
    assert "SSLCertVerificationError" in reports.messages[0][1]
    connection.close()


def test_tls_handshake_with_a_hung_server_is_bounded_by_connect_timeout():
    with MemcachedServer(tls=True) as server:
        reports = Reports()
        context = ssl.create_default_context(cafile=str(server.ca_file))
        connection = connect_to(server, reports, connect_timeout=0.2, tls_context=context)
        pause(server)  # accepted by the kernel; no handshake answer ever comes
        try:
            started = time.monotonic()
            assert connection.get_multi(["k"]) == {}
            elapsed = time.monotonic() - started
        finally:
            server.resume()
        assert not connection.alive
        assert "TLS handshake not complete" in reports.messages[0][1]
        assert elapsed < 2.0
        connection.close()


def test_plain_connection_to_a_tls_server_fails_closed(tls_memcached):
    reports = Reports()
    connection = connect_to(tls_memcached, reports)
    assert connection.get_multi(["tls-k"]) == {}
    assert reports.messages and not connection.alive
    connection.close()


def test_repr_names_the_server_and_nothing_else(memcached):
    connection = connect_to(memcached, Reports())
    assert repr(connection) == f"<MemcachedConnection {memcached.url}>"


# ------------------------------------------------------------------ the backends' routing


def test_python_memcached_failover_order_is_the_librarys():
    """Our failover sequence is python-memcached's, computed from its public hash function:
    processes of an older release (which let the library choose) agree with us."""
    import memcache

    for route in ("a", "route-1", "jqEoJzXClkbgidUHwdqdjPdct01xBfqmZAMHqGvv7To"):
        where = _route_hash(route)
        expected, serverhash = [], where
        for attempt in range(10):
            expected.append(serverhash % 5)
            serverhash = memcache.cmemcache_hash(f"{serverhash}{attempt}".encode("ascii"))
        assert list(_python_memcached_order(where, 5)) == expected




def _holder(servers: list[MemcachedServer], key: str) -> int:
    (index,) = [n for n, s in enumerate(servers) if s.get_raw(key) is not None]
    return index


@pytest.mark.parametrize("client", CLIENTS)
def test_the_get_asks_the_server_the_store_wrote_to(three_memcached, client):
    plugin = make_plugin(secret=SECRET, authenticator_name="x", memcached_client=client,
                         memcached_urls=" ".join(s.url for s in three_memcached),
                         dead_retry="60", socket_timeout="0.3")
    backend = plugin.backend
    routes = [f"route-{n}" for n in range(30)]
    for route in routes:
        assert backend.set(f"k-{route}", route.encode(), 60, route)
    holders = {route: _holder(three_memcached, f"k-{route}") for route in routes}
    assert len(set(holders.values())) == 3  # spread over all three
    for route in routes:
        assert backend.get_multi([f"k-{route}"], route) == {f"k-{route}": route.encode()}
    if client == "python-memcached":  # python-memcached's own choice: crc32 % servers
        assert all(holders[r] == _route_hash(r) % 3 for r in routes)
    # One server stops: a store to it fails, marks it dead for the hit path too, and the
    # route's store and get both move to the same survivor.
    three_memcached[1].stop()
    lost = [r for r in routes if holders[r] == 1]
    for route in lost:
        backend.set(f"k-{route}", b"moved", 60, route)  # the first one finds the server dead
    assert not backend._connections[1].alive
    for route in lost:
        assert backend.set(f"k-{route}", b"moved", 60, route)
        assert backend.get_multi([f"k-{route}"], route) == {f"k-{route}": b"moved"}
    backend.close()


def test_python_memcached_failover_on_connect_lands_where_the_get_looks(three_memcached):
    """A store to a server found dead on connecting is moved by python-memcached itself, in
    the same call, along its own failover sequence: the get that follows looks there too."""
    plugin = make_plugin(secret=SECRET, authenticator_name="x",
                         memcached_urls=" ".join(s.url for s in three_memcached),
                         dead_retry="60", socket_timeout="0.3")
    backend = plugin.backend
    three_memcached[0].stop()  # before the library ever connected to it
    routes = [r for r in (f"route-{n}" for n in range(60)) if _route_hash(r) % 3 == 0]
    assert len(routes) >= 5
    for route in routes:
        assert backend.set(f"k-{route}", b"v", 60, route)  # stored on a survivor
        assert backend.get_multi([f"k-{route}"], route) == {f"k-{route}": b"v"}
    assert not backend._connections[0].alive
    backend.close()
