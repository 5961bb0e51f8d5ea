"""What an attacker with scripts found in the cache core (issue 11), against real memcached:
keys that fail closed, entries bound to the backend they cache, one normal form for logins,
nothing stored that never expires, bounded reads of a hostile server, and a memcached
reader who cannot tell successes from denials by size or expiry."""

from __future__ import annotations

import datetime
import socket
import threading
import time
import unicodedata
import uuid

import pytest
from backends_for_tests import CountingAuthenticator, CountingMetadata
from conftest import SECRET
from repoze.who.interfaces import IAuthenticator
from test_plugin import login, plugin_for
from zope.interface import implementer

from repoze_who_memcached import make_plugin
from repoze_who_memcached.keys import KeyMaker, ldap_normal_form
from repoze_who_memcached.sealing import PAD_BLOCK, Sealer


@implementer(IAuthenticator)
class TokenAuthenticator:
    """Accepts alice when her ``token`` item (not a str: the key cannot encode it) is right."""

    def __init__(self, token):
        self.token = token
        self.calls = 0

    def authenticate(self, environ, identity):
        self.calls += 1
        return "alice" if identity.get("token") == self.token else None


class Opaque:
    pass


GOOD = uuid.UUID(int=1)
CREDENTIALS = [
    (GOOD, uuid.UUID(int=2)),
    (datetime.datetime(2026, 1, 1), datetime.datetime(2026, 1, 2)),
    (opaque := Opaque(), Opaque()),
]


@pytest.mark.parametrize(("good", "bad"), CREDENTIALS)
def test_an_item_the_key_cannot_encode_makes_the_call_uncached(good, bad, memcached):
    backend = TokenAuthenticator(good)
    plugin = plugin_for(memcached, backend)
    for _ in range(2):
        assert login(plugin, token=good)[0] == "alice"
    assert login(plugin, token=bad)[0] is None  # never a shorter key's cached success
    assert login(plugin, password="other", token=bad)[0] is None
    assert backend.calls == 4  # every call asked the backend
    assert memcached.stored_keys() == []


def test_non_str_names_and_deep_nesting_are_uncached(memcached):
    backend = CountingAuthenticator()
    plugin = plugin_for(memcached, backend)
    deep: list = []
    for _ in range(5000):
        deep = [deep]
    for extra in ({1: "x"}, {"nested": deep}):
        identity = {"login": "alice", "password": "wonderland", **extra}
        environ: dict = {}
        assert plugin.authenticate(environ, identity) == "user:alice"
        assert environ["repoze_who_memcached.cache"]["cache"]["authenticate"] == "uncached"
    assert memcached.stored_keys() == []


@implementer(IAuthenticator)
class Directory:
    """A directory at ``url`` with its own passwords (only the URL tells two apart)."""

    def __init__(self, url, users):
        self.url = url
        self._users = users
        self.calls = 0

    def authenticate(self, environ, identity):
        self.calls += 1
        login = identity.get("login")
        return login if self._users.get(login) == identity.get("password") else None


def test_caches_in_front_of_different_backends_never_share_entries(memcached):
    a = Directory("ldap://a.example", {"alice": "only-in-a"})
    b = Directory("ldap://b.example", {"alice": "only-in-b"})
    cache_a, cache_b = plugin_for(memcached, a), plugin_for(memcached, b)
    assert login(cache_a, password="only-in-a")[0] == "alice"
    assert login(cache_b, password="only-in-a")[0] is None  # B's own answer, not A's entry
    assert b.calls == 1
    # Another app server with A's configuration shares A's entries.
    twin = plugin_for(memcached, Directory("ldap://a.example", {}))
    assert login(twin, password="only-in-a")[0] == "alice"
    assert twin.authenticator.calls == 0


def test_changing_the_backend_configuration_leaves_old_entries_unused(memcached):
    old = Directory("ldap://old.example", {"alice": "pw"})
    assert login(plugin_for(memcached, old), password="pw")[0] == "alice"
    moved = Directory("ldap://new.example", {})
    assert login(plugin_for(memcached, moved), password="pw")[0] is None
    assert moved.calls == 1


SPELLINGS = [" alice", "alice ", "ALICE", "alice\u00a0", "\uff41\uff4c\uff49\uff43\uff45",
             "a\u00adlice", "Alice\t"]


def test_ldap_normal_form_of_equivalent_spellings():
    for spelling in SPELLINGS:
        assert ldap_normal_form(spelling) == "alice", spelling
    nfd = unicodedata.normalize("NFD", "zoë")
    assert ldap_normal_form(nfd) == ldap_normal_form("ZOË") == "zoë"
    assert ldap_normal_form("a  b") == "a b"
    assert ldap_normal_form("alice") != ldap_normal_form("alicia")


def test_invalidating_a_login_drops_every_equivalent_spelling(memcached):
    """The directory treats these spellings as alice: after a password change and
    ``invalidate alice``, the old password must not log in through any of them."""

    @implementer(IAuthenticator)
    class NormalisingDirectory:
        password = "old"
        calls = 0

        def authenticate(self, environ, identity):
            self.calls += 1
            same = ldap_normal_form(identity["login"]) == "alice"
            return "alice" if same and identity["password"] == self.password else None

    directory = NormalisingDirectory()
    plugin = plugin_for(memcached, directory)
    for spelling in SPELLINGS:
        assert login(plugin, spelling, "old")[0] == "alice"
    directory.password = "new"
    plugin.invalidate_user(login="alice")
    for spelling in SPELLINGS:
        assert login(plugin, spelling, "old")[0] is None, spelling


def _ttl(memcached, key: str) -> int:
    """Seconds ``key`` has left in memcached (-1: never expires), by the meta get."""
    # (a plain get after it ends the reply where raw_command knows to stop reading)
    reply = memcached.raw_command(f"mg {key} t\r\nget -\r\n".encode()).decode()
    assert reply.startswith("HD"), reply
    return int(reply.split(" t", 1)[1].split()[0])


def test_negative_caching_stores_nothing_that_never_expires(memcached):
    backend = CountingAuthenticator()
    plugin = plugin_for(memcached, backend, negative_ttl="30", ttl="60")
    for n in range(20):
        assert login(plugin, f"random-{n}", "guess")[0] is None
    namespace = plugin.region.keys.namespace_generation_key()
    forever = [k for k in memcached.stored_keys() if _ttl(memcached, k) == -1]
    assert forever == [namespace]  # one key for the whole cache, not one per guess


def test_successes_and_denials_look_alike_in_memcached(memcached):
    """Same size, same expiry: a memcached reader cannot tell which logins succeeded."""
    backend = CountingAuthenticator()
    plugin = plugin_for(memcached, backend, negative_ttl="60", ttl="60")
    login(plugin, "alice", "wonderland")
    first = set(memcached.stored_keys())
    login(plugin, "bob", "not-his-password")
    # Each login wrote its entry and its sealed credential stamp, all of one size.
    entries = [k for k in memcached.stored_keys() if len(memcached.get_raw(k) or b"") > 16]
    assert len(entries) == 4
    sizes = {len(memcached.get_raw(k)) for k in entries}
    assert len(sizes) == 1
    ttls = [_ttl(memcached, k) for k in memcached.stored_keys()
            if k != plugin.region.keys.namespace_generation_key()]
    assert max(ttls) - min(ttls) <= 1, ttls
    assert first  # alice's entry and token were stored


def test_padding_hides_the_size_of_small_records():
    sealer = Sealer(SECRET.encode())
    denial = sealer.seal("k", {"u": None, "v": {}, "x": 1.0, "g": ["a" * 16], "p": False})
    success = sealer.seal("k", {"u": "uid=someone,ou=people", "v": {"email": "a@b.c"},
                                "x": 1.0, "g": ["a" * 16, "b" * 16], "p": True})
    assert len(denial) == len(success)
    assert sealer.open("k", success)["v"] == {"email": "a@b.c"}
    assert (len(success) - 29) % PAD_BLOCK == 0


def test_a_huge_numeric_userid_is_handled_like_any_other(memcached):
    md = CountingMetadata()
    plugin = plugin_for(memcached, None, md, authenticator_name=None, mdprovider_name="md")
    userid = 7 ** 6000  # over 4300 digits: str() of it raises by default
    identity = {"repoze.who.userid": userid}
    plugin.add_metadata({}, identity)  # must not raise (it was a 500)
    assert md.calls == 1
    maker = KeyMaker(SECRET.encode())
    assert maker.user_generation_key("userid", userid) != maker.user_generation_key(
        "userid", userid + 1)


class HostileMemcached:
    """A server that answers every ``get`` with ``reply`` sent in pieces, ``pause`` apart:
    the attacker who can stand in for memcached (a fake is the point of this test)."""

    def __init__(self, reply_head: bytes, piece: bytes, pause: float, pieces: int):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.reply_head, self.piece, self.pause, self.pieces = reply_head, piece, pause, pieces
        self.stopped = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        self.listener.settimeout(0.2)
        while not self.stopped.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                continue
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            try:
                while not self.stopped.is_set():
                    if not conn.recv(65536):
                        return
                    conn.sendall(self.reply_head)
                    for _ in range(self.pieces):
                        if self.stopped.wait(self.pause):
                            return
                        conn.sendall(self.piece)
            except OSError:
                return

    def close(self) -> None:
        self.stopped.set()
        self.listener.close()


@pytest.mark.parametrize("client", ["python-memcached", "pymemcache"])
@pytest.mark.parametrize(("head", "piece", "pause"), [
    (b"VALUE k 0 48000000\r\n", b"x" * 65536, 0.0),  # announces 48 MB, sends it fast
    (b"VALUE k 0 1000\r\n", b"x", 0.05),  # a valid size, one byte every 50 ms
    (b"VALUE k 0 10", b"0", 0.05),  # a header line that never ends
])
def test_a_hostile_memcached_cannot_hold_a_request(client, head, piece, pause):
    server = HostileMemcached(head, piece, pause, pieces=2000)
    try:
        backend = CountingAuthenticator()
        plugin = make_plugin(secret=SECRET, memcached_urls=f"127.0.0.1:{server.port}",
                             memcached_client=client, socket_timeout="0.5",
                             authenticator=backend)
        started = time.monotonic()
        assert login(plugin)[0] == "user:alice"  # answered by the backend
        assert time.monotonic() - started < 5  # bounded (it was ~25 s for 48 MB)
        plugin.backend.close()
    finally:
        server.close()
