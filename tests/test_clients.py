"""Both memcached clients: TLS, several servers, losing one, and a threaded WSGI server."""

from __future__ import annotations

import base64
import http.client
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from backends_for_tests import CountingAuthenticator
from conftest import SECRET, serving
from test_plugin import login, plugin_for

from repoze_who_memcached import ConfigError, make_plugin
from repoze_who_memcached.backends import ConsistentHashRing
from repoze_who_memcached.testing import MemcachedServer

CLIENTS = ["python-memcached", "pymemcache"]


@pytest.fixture(scope="module")
def tls_memcached():
    with MemcachedServer(tls=True) as server:
        yield server


def test_pymemcache_over_tls(tls_memcached):
    backend = CountingAuthenticator()
    plugin = plugin_for(tls_memcached, backend, memcached_client="pymemcache",
                        memcached_tls_ca_file=str(tls_memcached.ca_file))
    assert login(plugin)[0] == "user:alice"
    userid, _, environ = login(plugin)
    assert userid == "user:alice"
    assert environ["repoze_who_memcached.cache"]["cache"]["authenticate"] == "hit"
    assert backend.calls == 1
    reports = plugin.backend.probe()
    assert reports[0].ok and reports[0].version.startswith("1.")


def test_tls_with_an_untrusted_certificate_is_a_cache_error_not_a_login_error(tls_memcached):
    backend = CountingAuthenticator()
    # The system CAs do not trust the test certificate: every cache call fails the handshake.
    plugin = plugin_for(tls_memcached, backend, memcached_client="pymemcache",
                        memcached_tls_ca_file="/etc/ssl/certs/ca-certificates.crt")
    assert login(plugin)[0] == "user:alice"
    assert login(plugin)[0] == "user:alice"
    assert login(plugin, password="x")[0] is None
    assert backend.calls == 3
    assert plugin.counters.snapshot()["cache_errors"] >= 1


def test_tls_needs_pymemcache(tls_memcached):
    with pytest.raises(ConfigError, match="memcached_client"):
        make_plugin(secret=SECRET, authenticator_name="x", memcached_urls=tls_memcached.url,
                    memcached_tls_ca_file=str(tls_memcached.ca_file))




def _sealed_entries(server) -> int:
    return sum((server.get_raw(k) or b"")[:1] == b"\x01" for k in server.stored_keys())


@pytest.mark.parametrize("client", CLIENTS)
def test_several_servers_spread_keys_and_losing_one_costs_its_share(three_memcached, client):
    users = {f"user{n}": f"password-{n}" for n in range(60)}
    backend = CountingAuthenticator(users=users)
    urls = " ".join(s.url for s in three_memcached)
    plugin = make_plugin(secret=SECRET, memcached_urls=urls, authenticator_name="b",
                         memcached_client=client, dead_retry="60", socket_timeout="0.3")
    plugin.bind({"b": backend})
    for user, password in users.items():
        assert login(plugin, user, password)[0] == f"user:{user}"
    per_server = [_sealed_entries(s) for s in three_memcached]
    assert sum(per_server) == 120  # per user, an entry and its login's credential stamp
    assert all(count >= 5 for count in per_server), per_server  # spread, not piled up
    for user, password in users.items():  # all hits: one round trip each
        assert login(plugin, user, password)[0] == f"user:{user}"
    assert backend.calls == 60

    three_memcached[1].stop()
    for user, password in users.items():
        assert login(plugin, user, password)[0] == f"user:{user}"
        assert login(plugin, user, password + "!")[0] is None
    lost = per_server[1] // 2  # its users (each had an entry and a credential stamp)
    wrong_passwords = 60
    assert backend.calls == 60 + lost + wrong_passwords
    # The lost server's users are cached again, on the survivors.
    for user, password in users.items():
        assert login(plugin, user, password)[0] == f"user:{user}"
    assert backend.calls == 60 + lost + wrong_passwords


@pytest.mark.parametrize("client", CLIENTS)
def test_invalidation_reaches_every_server(three_memcached, client):
    backend = CountingAuthenticator()
    urls = " ".join(s.url for s in three_memcached)
    plugin = make_plugin(secret=SECRET, memcached_urls=urls, authenticator_name="b",
                         memcached_client=client)
    plugin.bind({"b": backend})
    login(plugin)
    assert plugin.invalidate_user(login="alice") == []
    login(plugin)
    assert backend.calls == 2
    three_memcached[2].stop()
    failed = plugin.invalidate_all()
    assert failed == [three_memcached[2].url]


def test_ring_spreads_and_moves_only_the_lost_servers_keys():
    ring = ConsistentHashRing(3)
    keys = [f"key-{n}" for n in range(3000)]
    first = [next(iter(ring.owners(k))) for k in keys]
    shares = [first.count(i) for i in range(3)]
    assert all(700 < share < 1300 for share in shares), shares
    # Preference order: a key whose first choice is server 1 fails over elsewhere; others stay.
    for key, owner in zip(keys, first, strict=True):
        order = list(ring.owners(key))
        assert order[0] == owner and sorted(order) == [0, 1, 2]
        assert ring.first(key) == owner
    assert ConsistentHashRing(1).first("any") == 0


# ------------------------------------------------------------------ under waitress


@pytest.mark.parametrize("client", CLIENTS)
def test_threaded_waitress_with_each_client(tmp_path, memcached, client):
    from paste.deploy import loadapp

    ini = tmp_path / "app.ini"
    ini.write_text(textwrap.dedent(f"""
        [app:demo]
        use = egg:repoze_who_memcached#demo

        [filter:auth]
        use = egg:repoze_who_memcached
        authenticator = backends_for_tests:make_authenticator
        authenticator.users = alice:wonderland bob:builder carol:c4rol dave:d4ve
        memcached_urls = {memcached.url}
        memcached_client = {client}
        secret = {SECRET}

        [pipeline:main]
        pipeline = auth demo
    """))
    app = loadapp(f"config:{ini}")
    users = [("alice", "wonderland"), ("bob", "builder"), ("carol", "c4rol"), ("dave", "d4ve")]
    problems: list[str] = []

    def hammer(port: int, n: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        for i in range(40):
            user, password = users[(n + i) % 4]
            wrong = i % 5 == 0
            token = base64.b64encode(f"{user}:{password}{'x' if wrong else ''}".encode())
            headers = {"Authorization": f"Basic {token.decode()}"}
            conn.request("GET", "/?format=json", headers=headers)
            response = conn.getresponse()
            body = response.read()
            expected = 401 if wrong else 200
            if response.status != expected:
                problems.append(f"{user} wrong={wrong}: {response.status}")
            elif not wrong and f'"userid": "user:{user}"'.encode() not in body:
                problems.append(f"{user}: {body[:100]!r}")
        conn.close()

    with serving(app, threads=8) as port:
        clients = [threading.Thread(target=hammer, args=(port, n)) for n in range(8)]
        for c in clients:
            c.start()
        for c in clients:
            c.join()
    assert problems == []
    (cache,) = app.cache_plugins
    counts = cache.counters.snapshot()
    assert counts["hits"] > 100
    assert counts["backend_calls"] < 8 * 40 - 100


# ------------------------------------------------------------------ our get reader


class ScriptedSocket:
    """Replays a reply in the chunks given (pure protocol logic: no server needed)."""

    def __init__(self, *chunks: bytes) -> None:
        self.chunks = list(chunks)
        self.sent = b""

    def sendall(self, data: bytes) -> None:
        self.sent += data

    def recv(self, size: int) -> bytes:
        return self.chunks.pop(0) if self.chunks else b""


REPLY = (b"VALUE k1 0 5\r\nEND\r\n\r\n"  # a value that contains the terminator itself
         b"VALUE k2 7 0\r\n\r\n"
         b"VALUE k3 0 3 1234\r\nabc\r\n"  # with a cas unique
         b"END\r\n")


@pytest.mark.parametrize("split", [None, 1, 2, 3, 7])
def test_get_reader_parses_replies_whatever_the_chunks(split):
    from repoze_who_memcached.backends import fetch_values

    chunks = [REPLY] if split is None else [REPLY[i:i + split]
                                            for i in range(0, len(REPLY), split)]
    sock = ScriptedSocket(*chunks)
    assert fetch_values(sock, ["k1", "k2", "k3", "k4"]) == {
        "k1": b"END\r\n", "k2": b"", "k3": b"abc"}
    assert sock.sent == b"get k1 k2 k3 k4\r\n"


@pytest.mark.parametrize(("reply", "error"), [
    (b"", ConnectionResetError),  # closed before answering
    (b"VALUE k1 0 5\r\nEN", ConnectionResetError),  # closed mid-value
    (b"VALUE k1 0 2\r\nabcd\r\nEND\r\n", "longer than announced"),
    (b"END\r\nVALUE k1 0 1\r\na\r\n", "data after END"),
    (b"SERVER_ERROR out of memory\r\n", "SERVER_ERROR"),
    (b"ERROR\r\n", "ERROR"),
    (b"VALUE k1 0 x\r\n", "VALUE k1 0 x"),
    (b"HTTP/1.1 400 Bad Request\r\n", "HTTP"),
    (b"VALUE other 0 1\r\na\r\nEND\r\n", "not asked for"),
])
def test_get_reader_refuses_what_a_get_never_answers(reply, error):
    from repoze_who_memcached.backends import ProtocolError, fetch_values

    if isinstance(error, str):
        with pytest.raises(ProtocolError, match=error):
            fetch_values(ScriptedSocket(reply), ["k1"])
        assert issubclass(ProtocolError, OSError)  # the server's fault: it is skipped
    else:
        with pytest.raises(error):
            fetch_values(ScriptedSocket(reply), ["k1"])


def test_get_reader_client_error_is_not_the_servers_fault():
    from repoze_who_memcached.backends import fetch_values

    with pytest.raises(ValueError, match="CLIENT_ERROR bad command line format"):
        fetch_values(ScriptedSocket(b"CLIENT_ERROR bad command line format\r\n"), ["k1"])


def test_pymemcache_backend_reads_real_replies_and_recovers_after_garbage(memcached):
    """Against a real memcached: values of every size, and a reply out of step (a value
    announced longer than it is) drops the connection, so the next get is right again."""
    plugin = make_plugin(secret=SECRET, authenticator_name="x", memcached_urls=memcached.url,
                         memcached_client="pymemcache", dead_retry="0")
    backend = plugin.backend
    sizes = {f"size-{n}": bytes(range(256)) * (n // 256) + b"\r\nEND\r\n"[: n % 256]
             for n in (0, 1, 5, 255, 4096, 70_000, 500_000)}
    for key, value in sizes.items():
        assert backend.set(key, value, 60, "route")
    assert backend.get_multi([*sizes, "absent"], "route") == sizes
    # Out of step: a reply nobody read is waiting on the hit path's connection.
    (connection,) = backend._connections
    connection.thread_socket().sendall(b"get size-1\r\n")
    assert backend.get_multi(["size-5"], "route") == {}  # refused, connection dropped
    assert plugin.counters.snapshot()["cache_errors"] == 1
    assert backend.get_multi(["size-5"], "route") == {"size-5": sizes["size-5"]}
    backend.close()


@pytest.mark.parametrize("client", CLIENTS)
def test_a_restarted_memcached_is_used_again_at_once(private_memcached, client):
    """Each thread's connection to a memcached that restarted is closed: the next get
    notices, reconnects once and goes on, instead of skipping the server for dead_retry."""
    plugin = make_plugin(secret=SECRET, authenticator_name="x", memcached_client=client,
                         memcached_urls=private_memcached.url, dead_retry="30")
    backend = plugin.backend
    assert backend.set("before", b"1", 60, "route")
    assert backend.get_multi(["before"], "route") == {"before": b"1"}
    private_memcached.restart()  # same port, empty
    assert backend.get_multi(["before"], "route") == {}  # gone with the restart, no error
    assert backend.set("after", b"2", 60, "route")  # not skipped as dead
    assert backend.get_multi(["after"], "route") == {"after": b"2"}
    assert plugin.counters.snapshot()["cache_errors"] == 0
    backend.close()


class OtherThread:
    """Runs calls in one thread of its own (a waitress worker, say): its sockets are its own."""

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1)

    def __call__(self, call, *args):
        return self._executor.submit(call, *args).result(timeout=30)

    def close(self) -> None:
        self._executor.shutdown(wait=True)


def _both_threads_connected(backend, other: OtherThread) -> None:
    """A store and a get in this thread and in ``other``: each holds its own sockets."""
    for key, run in (("here", lambda call, *a: call(*a)), ("there", other)):
        assert run(backend.set, key, b"1", 60, "route")
        assert run(backend.get_multi, [key], "route") == {key: b"1"}


@pytest.mark.parametrize("client", CLIENTS)
def test_a_restart_noticed_by_one_thread_costs_the_others_nothing(private_memcached, client):
    """memcached restarts while the site is quiet; one thread's get notices (its socket was
    closed) and reconnects. Another thread's first call afterwards is a store, on the
    library's socket of that thread, closed by the restart too: it must reconnect, not mark
    the server dead (python-memcached's own reconnect-once is defeated by its dead mark)."""
    plugin = make_plugin(secret=SECRET, authenticator_name="x", memcached_client=client,
                         memcached_urls=private_memcached.url, dead_retry="30")
    backend = plugin.backend
    other = OtherThread()
    try:
        _both_threads_connected(backend, other)
        private_memcached.restart()  # same port, empty
        assert backend.get_multi(["here"], "route") == {}  # noticed here, no error
        assert other(backend.set, "after", b"2", 60, "route")  # a store first, there
        assert backend.get_multi(["after"], "route") == {"after": b"2"}
        assert plugin.counters.snapshot()["cache_errors"] == 0
    finally:
        other.close()
        backend.close()


@pytest.mark.parametrize("client", CLIENTS)
def test_after_a_dead_mark_expires_no_older_socket_marks_the_server_dead_again(
        private_memcached, client):
    """memcached is killed: one thread's get finds it gone and marks it dead. It comes back
    (empty) and the mark expires. A thread that made no call meanwhile, or whose get was
    skipped by the mark, still holds a library socket from before: its first store must
    reconnect. (It used to fail and mark the server dead for another dead_retry; with
    waitress's 8 threads, one after another, a restart cost up to 8 x dead_retry of misses:
    the python-memcached recovery flake of test_faults and test_latency_faults.)"""
    plugin = make_plugin(secret=SECRET, authenticator_name="x", memcached_client=client,
                         memcached_urls=private_memcached.url, dead_retry="0.2")
    backend = plugin.backend
    (connection,) = backend._connections
    other = OtherThread()
    try:
        _both_threads_connected(backend, other)
        private_memcached.process.kill()  # SIGKILL: gone at once, its sockets reset
        private_memcached.process.wait(5)
        private_memcached.stop()  # bookkeeping only
        assert backend.get_multi(["here"], "route") == {}  # refused: marked dead
        assert not connection.alive
        errors = plugin.counters.snapshot()["cache_errors"]
        assert errors == 1
        private_memcached.start()  # same port, empty
        deadline = time.monotonic() + 10
        while not connection.alive:  # the mark lasts dead_retry
            assert time.monotonic() < deadline, "the dead mark never expired"
            time.sleep(0.02)
        assert other(backend.set, "after", b"2", 60, "route")  # there: its old socket
        assert connection.alive
        assert backend.get_multi(["after"], "route") == {"after": b"2"}
        assert other(backend.get_multi, ["after"], "route") == {"after": b"2"}
        assert plugin.counters.snapshot()["cache_errors"] == errors
    finally:
        other.close()
        backend.close()
