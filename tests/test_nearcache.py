"""The near cache (``local_ttl``): answers kept in process memory, against a real memcached.

What it promises (nearcache.py, plugin.py): repeats are served from memory for at most
``local_ttl`` (and never past the entry's own ``ttl``); an invalidation reaches every process
within ``local_check_interval``; a process that cannot read the invalidation epoch serves
nothing older from memory; keys hold no credentials; mutable values are copied.
"""

from __future__ import annotations

import collections
import copy
import itertools
import json
import logging
import random
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from backends_for_tests import CountingAuthenticator, CountingMetadata
from conftest import SECRET, run_at_once
from repoze.who.interfaces import IAuthenticator
from test_operations import TESTS, cli, write_app_ini
from test_plugin import login, plugin_for
from zope.interface import implementer

from repoze_who_memcached import ConfigError, make_plugin
from repoze_who_memcached.nearcache import NearCache
from repoze_who_memcached.plugin import ADD_METADATA, AUTHENTICATE, BOOKKEEPING_ITEMS, ENVIRON_KEY

pytestmark = pytest.mark.slow  # real servers, real time: ~20 s for the file

# Long enough that the few milliseconds a test takes between two requests stay inside it,
# short enough to wait out.
INTERVAL = 0.3


def near_plugin(memcached, authenticator=None, mdprovider=None, **options):
    """A plugin with the near cache on (and no epoch checks due unless the test asks)."""
    options.setdefault("local_ttl", "60")
    options.setdefault("local_check_interval", "60")
    return plugin_for(memcached, authenticator, mdprovider, **options)


def metadata_plugin(memcached, md, **options):
    return near_plugin(memcached, mdprovider=md, authenticator_name="", mdprovider_name="md",
                       **options)


def outcome(environ, method=AUTHENTICATE, name="cache"):
    return environ[ENVIRON_KEY][name][method]


def auth(plugin, user="alice", password="wonderland", **extra):  # noqa: S107
    """(userid, outcome) of one authentication."""
    userid, _, environ = login(plugin, user, password, **extra)
    return userid, outcome(environ)


def meta(plugin, userid="user:alice"):
    """(identity, outcome) of one add_metadata."""
    identity = {"repoze.who.userid": userid}
    environ: dict = {}
    plugin.add_metadata(environ, identity)
    return identity, outcome(environ, ADD_METADATA)


def wait_out(interval):
    time.sleep(interval + 0.05)


def delete_raw(memcached, key):
    assert memcached.raw_command(f"delete {key}\r\n".encode()) == b"DELETED\r\n"


# ------------------------------------------------------------------ hits from memory


def test_miss_then_local_hits_call_the_backend_once(memcached):
    backend = CountingAuthenticator()
    plugin = near_plugin(memcached, backend)
    seen = [login(plugin) for _ in range(4)]
    assert [userid for userid, _, _ in seen] == ["user:alice"] * 4
    # The miss keeps its answer in memory: every repeat is served from there.
    assert [outcome(environ) for _, _, environ in seen] == ["miss"] + ["local_hit"] * 3
    assert backend.calls == 1
    first = seen[0][1]
    assert first["email"] == "alice@example.org"
    assert all(identity == first for _, identity, _ in seen)
    counts = plugin.counters.snapshot()
    assert (counts["misses"], counts["hits"], counts["local_hits"]) == (1, 0, 3)
    assert counts["backend_calls"] == 1
    assert plugin.counters.hit_ratio() == 0.75


def test_an_identity_with_repoze_whos_bookkeeping_is_served_from_memory_too(memcached):
    """An authenticator after another that succeeded sees ``repoze.who.userid`` in the
    identity (stock repoze.who stamps it): its key leaves that item out, as the entry's does,
    and the dict of a plain login is not mistaken for it."""
    backend = CountingAuthenticator()
    plugin = near_plugin(memcached, backend)
    stamped = {"repoze.who.userid": "someone"}
    seen = [auth(plugin, **stamped), auth(plugin, **stamped), auth(plugin), auth(plugin)]
    assert seen == [("user:alice", "miss"), ("user:alice", "local_hit"),
                    ("user:alice", "hit"), ("user:alice", "local_hit")]
    assert backend.calls == 1
    assert auth(plugin, "alice", "wrong", **stamped)[0] is None


def test_a_login_with_another_item_is_not_served_the_plain_logins_answer(memcached):
    """A plain login (exactly a login and a password) is keyed as the pair; an identity with
    a third item, or with another item in the password's place, is keyed by all its items:
    never served the plain login's answer from memory."""
    backend = CountingAuthenticator()
    plugin = near_plugin(memcached, backend)

    def auth_as(credentials: dict) -> tuple:
        environ: dict = {}
        return plugin.authenticate(environ, credentials), outcome(environ)

    assert [auth_as({"login": "alice", "password": "wonderland"}) for _ in range(2)] == [
        ("user:alice", "miss"), ("user:alice", "local_hit")]
    # The same login and password beside a third item: keyed by all three, in memory as
    # in memcached (where every item keys an entry by default).
    third = {"login": "alice", "password": "wonderland", "realm": "x"}
    assert [auth_as(dict(third)) for _ in range(2)] == [
        ("user:alice", "miss"), ("user:alice", "local_hit")]
    # The password under another name: no password for the backend, not the pair's answer.
    assert auth_as({"login": "alice", "secret": "wonderland"})[1] != "local_hit"
    assert auth_as({"login": "alice", "password": "wrong"}) == (None, "miss")
    assert backend.calls == 4


def test_a_password_item_named_as_the_login_item_never_keys_a_pair(memcached):
    """With ``password_item`` the same item as ``login_item`` (a login-only identity, such
    as a client certificate's), the pair would be the login twice and leave the other item
    out of the key: such a plugin keys every identity by all its items."""
    backend = CountingAuthenticator()
    plugin = near_plugin(memcached, backend, password_item="login")

    def auth_as(credentials: dict) -> tuple:
        environ: dict = {}
        return plugin.authenticate(environ, credentials), outcome(environ)

    assert auth_as({"login": "alice", "password": "wonderland"})[0] == "user:alice"
    assert auth_as({"login": "alice", "password": "wonderland"})[1] == "local_hit"
    assert auth_as({"login": "alice", "password": "wrong"}) == (None, "miss")


def _as_an_authenticator_reads_it(value):
    """A value as a strict authenticator tells it apart: by type, bytes-like as bytes and a
    str subclass as str (as the memcached key does)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return ("bytes", bytes(value))
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, tuple(_as_an_authenticator_reads_it(v) for v in value))
    if isinstance(value, str):
        return ("str", str(value))
    return (type(value).__name__, value)


@implementer(IAuthenticator)
class EveryItemAuthenticator:
    """The strictest authenticator: its userid names every item of the identity (repoze.who's
    bookkeeping aside), so an answer served for any other identity shows."""

    def authenticate(self, environ: dict, identity: dict) -> str:
        return "user:" + repr(sorted((str(name), _as_an_authenticator_reads_it(value))
                                     for name, value in identity.items()
                                     if name not in BOOKKEEPING_ITEMS))


class _StrSubclass(str):
    pass


@pytest.mark.parametrize("options", [
    {}, {"password_item": "login"}, {"password_item": ""}, {"password_item": "realm"},
    {"login_item": "realm"}, {"password_item": "repoze.who.userid"},
    {"password_item": "identifier"},
], ids=repr)
def test_no_identity_is_served_another_identitys_answer(memcached, options):
    """Random identities (pairs, dicts, bookkeeping, None, non-str values and names) over
    every way the near key is made: each is answered as the backend answers it, from
    memory or not. (A key_prefix of each case's own: plugins of different settings share
    memcached entries when they share a secret and prefix.)"""
    rnd = random.Random(14)
    values = ["a", "b", b"a", bytearray(b"a"), 1, True, 1.0, None, 0, False, "", ("a",), ["a"],
              _StrSubclass("a"), "None"]
    names = ["login", "password", "realm", "identifier", "authenticator",
             "repoze.who.userid", _StrSubclass("password")]
    login_item = options.get("login_item", "login")
    plugin = near_plugin(memcached, EveryItemAuthenticator(),
                         key_prefix=f"rt{abs(hash(repr(options))) % 10**6}", **options)
    pool = []
    for _ in range(150):
        identity: dict = {login_item: rnd.choice(values[:8])}
        for name in rnd.sample(names, rnd.randrange(3)):
            identity[name] = rnd.choice(values)
        pool.append(identity)
    served = collections.Counter()
    for _ in range(1500):
        identity = rnd.choice(pool)
        environ: dict = {}
        userid = plugin.authenticate(environ, dict(identity))
        assert userid == EveryItemAuthenticator().authenticate({}, identity), identity
        served[outcome(environ)] += 1
    assert served["local_hit"] > 500  # the near cache was exercised, not skipped


class Credentials(dict):
    """An identifier's own dict type (repoze.who's ``Identity`` is one): as good a login."""


def test_an_identity_of_a_dict_subclass_is_served_from_memory_too(memcached):
    """marshal refuses dict subclasses: keyed on the dict itself, such an identity never
    reached the near cache (every repeat cost a memcached round trip). Its items key it,
    as they key the memcached entry."""
    backend = CountingAuthenticator()
    plugin = near_plugin(memcached, backend)

    def auth_as(credentials: dict) -> tuple:
        environ: dict = {}
        return plugin.authenticate(environ, credentials), outcome(environ)

    seen = [auth_as(Credentials(login="alice", password="wonderland")) for _ in range(2)]
    assert seen == [("user:alice", "miss"), ("user:alice", "local_hit")]
    # The same login as a plain dict: the same memcached entry (its near key is another).
    assert auth_as({"login": "alice", "password": "wonderland"}) == ("user:alice", "hit")
    assert auth_as(Credentials(login="alice", password="wrong")) == (None, "miss")
    assert backend.calls == 2


def test_memcached_hit_is_kept_in_memory_too(memcached):
    """Another process stored the answer: ours reads it once from memcached, then from memory."""
    assert auth(near_plugin(memcached, CountingAuthenticator())) == ("user:alice", "miss")
    backend = CountingAuthenticator()
    plugin = near_plugin(memcached, backend)
    assert [auth(plugin) for _ in range(3)] == [
        ("user:alice", "hit"), ("user:alice", "local_hit"), ("user:alice", "local_hit")
    ]
    assert backend.calls == 0
    counts = plugin.counters.snapshot()
    assert (counts["hits"], counts["local_hits"], counts["misses"]) == (1, 2, 0)


@pytest.mark.parametrize("options", [{}, {"local_ttl": "0"}], ids=["default", "zero"])
def test_near_cache_is_off_by_default(memcached, options):
    backend = CountingAuthenticator()
    plugin = plugin_for(memcached, backend, **options)
    assert plugin._near is None
    assert [auth(plugin)[1] for _ in range(4)] == ["miss", "hit", "hit", "hit"]
    assert backend.calls == 1
    counts = plugin.counters.snapshot()
    assert (counts["local_hits"], counts["hits"]) == (0, 3)


def test_metadata_from_memory_equals_metadata_from_memcached(memcached):
    md = CountingMetadata()
    plugin = metadata_plugin(memcached, md)
    first, first_outcome = meta(plugin)
    second, second_outcome = meta(plugin)
    other, other_outcome = meta(metadata_plugin(memcached, md))  # from memcached
    assert (first_outcome, second_outcome, other_outcome) == ("miss", "local_hit", "hit")
    assert md.calls == 1
    assert second == first == other
    # bytes and tuples come back as such, whichever way the answer came.
    assert second["photo"] == b"\x89PNG\x00\xff" and second["pair"] == ("a", 1)
    assert second["groups"] == ["staff", "group-of-user:alice"]
    # Another user is another key.
    bob, bob_outcome = meta(plugin, "user:bob")
    assert bob_outcome == "miss" and bob["groups"] == ["staff", "group-of-user:bob"]


# ------------------------------------------------------------------ never a wrong answer


def test_wrong_password_is_never_a_local_success(memcached):
    backend = CountingAuthenticator()
    plugin = near_plugin(memcached, backend)
    assert auth(plugin) == ("user:alice", "miss")
    assert auth(plugin) == ("user:alice", "local_hit")
    # Without negative_ttl a denial is kept nowhere: each wrong guess asks the backend.
    assert auth(plugin, password="wrong") == (None, "miss")
    assert auth(plugin, password="wrong") == (None, "miss")
    assert auth(plugin, "bob", "wonderland") == (None, "miss")
    assert auth(plugin, "alice", "wonderland ") == (None, "miss")
    assert backend.calls == 5
    assert len(plugin._near) == 1  # the one success
    assert auth(plugin) == ("user:alice", "local_hit")


def test_cached_denial_is_a_local_negative_hit(memcached):
    backend = CountingAuthenticator()
    plugin = near_plugin(memcached, backend, negative_ttl="60")
    assert auth(plugin, password="guess") == (None, "miss")
    userid, identity, environ = login(plugin, password="guess")
    assert userid is None
    assert outcome(environ) == "local_negative_hit"
    assert "email" not in identity and "dn" not in identity
    # The right password is another key, its own miss, then its own local hit.
    assert auth(plugin) == ("user:alice", "miss")
    assert auth(plugin) == ("user:alice", "local_hit")
    assert auth(plugin, password="guess") == (None, "local_negative_hit")
    assert backend.calls == 2
    counts = plugin.counters.snapshot()
    assert counts["local_hits"] == 3  # local_hits counts denials from memory too
    assert counts["negative_hits"] == 0  # none came from memcached


# ------------------------------------------------------------------ invalidation


def test_invalidate_user_elsewhere_reaches_memory_within_the_check_interval(memcached):
    backend = CountingAuthenticator()
    plugin = near_plugin(memcached, backend, local_check_interval=str(INTERVAL))
    other = plugin_for(memcached, CountingAuthenticator())  # another process
    for user, password in (("alice", "wonderland"), ("bob", "builder")):
        assert auth(plugin, user, password)[1] == "miss"
        assert auth(plugin, user, password)[1] == "local_hit"
    assert backend.calls == 2
    assert other.invalidate_user(login="alice") == []
    # Until the interval has passed this process may still answer from memory (documented).
    assert auth(plugin) == ("user:alice", "local_hit")
    wait_out(INTERVAL)
    # Then the next request sees the new epoch: alice asks the backend again...
    assert auth(plugin) == ("user:alice", "miss")
    assert backend.calls == 3
    # ...and memory was dropped as a whole, but bob's memcached entry is still good.
    assert auth(plugin, "bob", "builder") == ("user:bob", "hit")
    assert backend.calls == 3
    assert auth(plugin) == ("user:alice", "local_hit")
    assert plugin.counters.snapshot()["local_flushes"] == 1


def test_invalidate_all_elsewhere_reaches_memory_within_the_check_interval(memcached):
    backend = CountingAuthenticator()
    plugin = near_plugin(memcached, backend, local_check_interval=str(INTERVAL))
    other = plugin_for(memcached, CountingAuthenticator())
    auth(plugin)
    auth(plugin, "bob", "builder")
    assert auth(plugin, "bob", "builder") == ("user:bob", "local_hit")
    assert other.invalidate_all() == []
    assert auth(plugin, "bob", "builder") == ("user:bob", "local_hit")
    wait_out(INTERVAL)
    assert auth(plugin) == ("user:alice", "miss")
    assert auth(plugin, "bob", "builder") == ("user:bob", "miss")
    assert backend.calls == 4
    assert plugin.counters.snapshot()["local_flushes"] == 1


def test_metadata_invalidation_by_userid_reaches_memory(memcached):
    md = CountingMetadata()
    plugin = metadata_plugin(memcached, md, local_check_interval=str(INTERVAL))
    meta(plugin)
    assert meta(plugin)[1] == "local_hit"
    other = plugin_for(memcached, mdprovider=CountingMetadata(), authenticator_name="",
                       mdprovider_name="md")
    other.invalidate_user(userid="user:alice")
    wait_out(INTERVAL)
    assert meta(plugin)[1] == "miss"
    assert md.calls == 2


def test_invalidating_plugin_own_memory_also_obeys_the_interval(memcached):
    backend = CountingAuthenticator()
    plugin = near_plugin(memcached, backend, local_check_interval=str(INTERVAL))
    auth(plugin)
    plugin.invalidate_user(login="alice")
    wait_out(INTERVAL)
    assert auth(plugin) == ("user:alice", "miss")
    assert backend.calls == 2


def test_cli_invalidate_and_flush_in_another_process_reach_memory(tmp_path, memcached):
    backend = CountingAuthenticator()
    plugin = near_plugin(memcached, backend, local_check_interval="0.05")
    ini = write_app_ini(tmp_path, memcached.url)
    assert auth(plugin) == ("user:alice", "miss")
    assert auth(plugin) == ("user:alice", "local_hit")
    result = cli("invalidate", str(ini), "alice")
    assert result.returncode == 0, result.stderr
    wait_out(0.05)
    assert auth(plugin) == ("user:alice", "miss")
    assert auth(plugin) == ("user:alice", "local_hit")
    assert backend.calls == 2
    result = cli("flush", str(ini))
    assert result.returncode == 0, result.stderr
    wait_out(0.05)
    assert auth(plugin) == ("user:alice", "miss")
    assert backend.calls == 3


NEAR_WORKER = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, sys.argv[1])
    from backends_for_tests import CountingAuthenticator
    from repoze_who_memcached import make_plugin
    from repoze_who_memcached.plugin import ENVIRON_KEY
    backend = CountingAuthenticator()
    plugin = make_plugin(memcached_urls=sys.argv[2], secret=sys.argv[3],
                         authenticator_name="backend", local_ttl="60",
                         local_check_interval=sys.argv[4])
    plugin.bind({"backend": backend})
    print(json.dumps("ready"), flush=True)
    for line in sys.stdin:
        user, password = json.loads(line)
        environ = {}
        userid = plugin.authenticate(environ, {"login": user, "password": password})
        outcome = environ[ENVIRON_KEY]["cache"]["authenticate"]
        print(json.dumps([userid, outcome, backend.calls]), flush=True)
""")


def test_invalidation_reaches_another_process_memory(memcached):
    """A real second process with its own near cache; we invalidate from this one."""
    proc = subprocess.Popen(
        [sys.executable, "-c", NEAR_WORKER, str(TESTS), memcached.url, SECRET, str(INTERVAL)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert json.loads(proc.stdout.readline()) == "ready"

        def ask(user="alice", password="wonderland"):  # noqa: S107
            proc.stdin.write(json.dumps([user, password]) + "\n")
            proc.stdin.flush()
            return json.loads(proc.stdout.readline())

        assert ask() == ["user:alice", "miss", 1]
        assert ask() == ["user:alice", "local_hit", 1]
        assert ask(password="wrong") == [None, "miss", 2]
        plugin_for(memcached, CountingAuthenticator()).invalidate_user(login="alice")
        assert ask() == ["user:alice", "local_hit", 2]
        wait_out(INTERVAL)
        assert ask() == ["user:alice", "miss", 3]
        assert ask() == ["user:alice", "local_hit", 3]
    finally:
        proc.stdin.close()
        proc.wait(10)
    assert proc.returncode == 0


# ------------------------------------------------------------------ lifetimes


def test_entries_never_outlive_local_ttl(memcached):
    backend = CountingAuthenticator()
    plugin = near_plugin(memcached, backend, local_ttl="0.2")
    assert auth(plugin) == ("user:alice", "miss")
    assert auth(plugin) == ("user:alice", "local_hit")
    time.sleep(0.25)
    # Gone from memory, still in memcached (ttl is 60 s).
    assert auth(plugin) == ("user:alice", "hit")
    assert auth(plugin) == ("user:alice", "local_hit")
    assert backend.calls == 1


def test_entries_never_outlive_their_own_ttl(memcached):
    backend = CountingAuthenticator()
    plugin = near_plugin(memcached, backend, ttl="1", negative_ttl="1", local_ttl="3600")
    assert auth(plugin) == ("user:alice", "miss")
    assert auth(plugin, password="guess") == (None, "miss")
    assert auth(plugin) == ("user:alice", "local_hit")
    assert auth(plugin, password="guess") == (None, "local_negative_hit")
    time.sleep(1.05)
    assert auth(plugin) == ("user:alice", "miss")
    assert auth(plugin, password="guess") == (None, "miss")
    assert backend.calls == 4


def test_memcached_hit_is_kept_only_for_the_rest_of_the_entrys_ttl(memcached):
    """An entry read from memcached some time after it was stored is kept in memory only
    until its own expiry, not for a whole local_ttl from the read."""
    auth(near_plugin(memcached, CountingAuthenticator(), ttl="60"))
    time.sleep(0.3)
    plugin = near_plugin(memcached, CountingAuthenticator(), ttl="60", local_ttl="3600")
    assert auth(plugin) == ("user:alice", "hit")
    (entry,) = plugin._near._entries.values()
    remaining = entry[0] - time.monotonic()
    assert 50 < remaining <= 60 - 0.3


# ------------------------------------------------------------------ the epoch unreadable


def test_missing_epoch_flushes_memory_and_is_recreated(memcached):
    backend = CountingAuthenticator()
    plugin = near_plugin(memcached, backend, local_check_interval=str(INTERVAL))
    auth(plugin)
    assert auth(plugin)[1] == "local_hit"
    epoch = memcached.get_raw(plugin.region.epoch_key)
    assert epoch is not None and len(epoch) == 16  # the first check created it
    delete_raw(memcached, plugin.region.epoch_key)  # evicted, say
    wait_out(INTERVAL)
    # Nothing invalidated alice, but an invalidation may have been lost with the epoch.
    assert auth(plugin) == ("user:alice", "hit")
    assert plugin.counters.snapshot()["local_flushes"] == 1
    recreated = memcached.get_raw(plugin.region.epoch_key)
    assert recreated is not None and len(recreated) == 16 and recreated != epoch
    assert auth(plugin) == ("user:alice", "local_hit")
    wait_out(INTERVAL)
    # The recreated epoch is unchanged at the next check: memory is kept.
    assert auth(plugin) == ("user:alice", "local_hit")
    assert plugin.counters.snapshot()["local_flushes"] == 1
    assert backend.calls == 1


def test_memcached_flushed_flushes_memory(memcached):
    backend = CountingAuthenticator()
    plugin = near_plugin(memcached, backend, local_check_interval=str(INTERVAL))
    auth(plugin)
    assert auth(plugin)[1] == "local_hit"
    memcached.flush()
    wait_out(INTERVAL)
    assert auth(plugin) == ("user:alice", "miss")
    assert backend.calls == 2
    assert auth(plugin) == ("user:alice", "local_hit")


@pytest.mark.parametrize(
    ("value", "flags"),
    [
        pytest.param(b"garbage", 0, id="garbage"),
        pytest.param(b"!" * 16, 0, id="token-length-wrong-alphabet"),
        pytest.param(b"", 0, id="empty"),
        pytest.param(b"not-a-number", 2, id="integer-flag"),
        pytest.param(b"cos\nsystem\n(S'touch /tmp/rwm-near-pwned'\ntR.", 1, id="pickle-flag"),
    ],
)
def test_garbage_epoch_means_nothing_older_from_memory(memcached, value, flags):
    backend = CountingAuthenticator()
    interval = 0.15
    plugin = near_plugin(memcached, backend, local_check_interval=str(interval))
    auth(plugin)
    assert auth(plugin)[1] == "local_hit"
    memcached.set_raw(plugin.region.epoch_key, value, flags=flags)
    for flushes in (1, 2):
        wait_out(interval)
        # Every check that reads garbage drops what memory held; memcached still answers.
        assert auth(plugin) == ("user:alice", "hit")
        assert plugin.counters.snapshot()["local_flushes"] == flushes
        # What was fetched after that check may be served until the next one (no older).
        assert auth(plugin) == ("user:alice", "local_hit")
        assert auth(plugin, password="wrong") == (None, "miss")
    assert backend.calls == 3  # alice once, the two wrong guesses
    # Garbage is left in place (add does not overwrite it); an invalidation replaces it.
    assert memcached.get_raw(plugin.region.epoch_key) == value
    plugin.invalidate_user(login="nobody")
    wait_out(interval)
    assert auth(plugin) == ("user:alice", "hit")
    assert auth(plugin) == ("user:alice", "local_hit")
    wait_out(interval)
    assert auth(plugin) == ("user:alice", "local_hit")
    assert plugin.counters.snapshot()["local_flushes"] == 3


@pytest.mark.parametrize("client", ["python-memcached", "pymemcache"])
def test_memcached_stopped_nothing_from_memory(private_memcached, caplog, client):
    backend = CountingAuthenticator()
    plugin = near_plugin(private_memcached, backend, memcached_client=client,
                         local_check_interval=str(INTERVAL), dead_retry="0.5")
    assert auth(plugin) == ("user:alice", "miss")
    assert auth(plugin) == ("user:alice", "local_hit")
    private_memcached.stop()
    wait_out(INTERVAL)
    with caplog.at_level(logging.WARNING, "repoze_who_memcached"):
        for n in range(1, 6):
            # Answers stay right, from the backend; nothing is kept in memory meanwhile.
            assert auth(plugin) == ("user:alice", "miss")
            assert auth(plugin, password="wrong") == (None, "miss")
            assert backend.calls == 1 + 2 * n
            assert len(plugin._near) == 0
    assert "internal error" not in caplog.text
    counts = plugin.counters.snapshot()
    assert counts["local_flushes"] == 1 and counts["local_hits"] == 1
    private_memcached.start()
    time.sleep(0.6)  # dead_retry
    assert auth(plugin) == ("user:alice", "miss")  # a fresh memcached: empty
    assert auth(plugin) == ("user:alice", "local_hit")
    assert backend.calls == 12


def test_hung_memcached_nothing_from_memory(private_memcached):
    backend = CountingAuthenticator()
    plugin = near_plugin(private_memcached, backend, local_check_interval=str(INTERVAL),
                         socket_timeout="0.2", dead_retry="30")
    auth(plugin)
    assert auth(plugin)[1] == "local_hit"
    private_memcached.pause()
    try:
        wait_out(INTERVAL)
        for _ in range(3):
            assert auth(plugin) == ("user:alice", "miss")
            assert auth(plugin, password="wrong") == (None, "miss")
    finally:
        private_memcached.resume()
    assert backend.calls == 7
    assert plugin.counters.snapshot()["local_hits"] == 1


# ------------------------------------------------------------------ memory bounds


def test_local_max_entries_drops_the_oldest_first(memcached):
    backend = CountingAuthenticator()
    plugin = near_plugin(memcached, backend, local_max_entries="3")
    users = list(backend.users.items())  # four users
    for user, password in users:
        assert auth(plugin, user, password)[1] == "miss"
    assert len(plugin._near) == 3
    (first_user, first_pw), *rest = users
    for user, password in rest:  # reading does not reorder
        assert auth(plugin, user, password) == (f"user:{user}", "local_hit")
    # The oldest (first) went; it comes back from memcached and pushes out the next oldest.
    assert auth(plugin, first_user, first_pw) == (f"user:{first_user}", "hit")
    assert auth(plugin, first_user, first_pw)[1] == "local_hit"
    assert auth(plugin, *rest[0])[1] == "hit"
    assert len(plugin._near) == 3
    assert backend.calls == 4


# ------------------------------------------------------------------ mutable values


def test_mutating_metadata_cannot_change_later_answers(memcached):
    md = CountingMetadata()
    plugin = metadata_plugin(memcached, md)
    first, first_outcome = meta(plugin)
    expected = copy.deepcopy(first)
    first["groups"].append("admin")  # the app changes what the miss gave it
    second, second_outcome = meta(plugin)
    assert (first_outcome, second_outcome) == ("miss", "local_hit")
    assert second == expected
    second["groups"].append("root")  # ...and what a local hit gave it
    second["groups"][0] = "superuser"
    third, third_outcome = meta(plugin)
    assert third_outcome == "local_hit"
    assert third == expected
    assert third["groups"] is not second["groups"]
    # The same from a memcached hit (another process).
    other = metadata_plugin(memcached, md)
    fourth, fourth_outcome = meta(other)
    assert fourth_outcome == "hit"
    fourth["groups"].clear()
    fifth, fifth_outcome = meta(other)
    assert fifth_outcome == "local_hit" and fifth == expected
    assert md.calls == 1


class RolesAuthenticator(CountingAuthenticator):
    """Adds a mutable value (a list of roles) to the identities it accepts."""

    def authenticate(self, environ, identity):
        userid = super().authenticate(environ, identity)
        if userid is not None:
            identity["roles"] = ["reader", {"scope": ["docs"]}]
        return userid


def test_mutating_identity_after_authenticate_cannot_change_later_answers(memcached):
    backend = RolesAuthenticator()
    plugin = near_plugin(memcached, backend)
    userid, identity, environ = login(plugin)
    assert outcome(environ) == "miss"
    identity["roles"].append("admin")
    identity["roles"][1]["scope"].append("payroll")
    for _ in range(2):
        userid, identity, environ = login(plugin)
        assert (userid, outcome(environ)) == ("user:alice", "local_hit")
        assert identity["roles"] == ["reader", {"scope": ["docs"]}]
        identity["roles"][1]["scope"][0] = "everything"
    assert backend.calls == 1


class SlowMetadata(CountingMetadata):
    def add_metadata(self, environ, identity):
        time.sleep(0.3)
        super().add_metadata(environ, identity)


def test_coalesced_requests_share_mutable_values(memcached):
    md = SlowMetadata()
    plugin = metadata_plugin(memcached, md)
    identities = run_at_once(5, lambda: meta(plugin)[0])
    assert md.calls == 1 and plugin.counters.snapshot()["coalesced"] >= 1
    assert all(i["groups"] == ["staff", "group-of-user:alice"] for i in identities)
    identities[0]["groups"].append("admin")  # one request changes what it got
    assert [i["groups"] for i in identities[1:]] == [["staff", "group-of-user:alice"]] * 4


# ------------------------------------------------------------------ what stays out of memory


def test_identities_with_containers_of_exact_types_are_keyed_by_value(memcached):
    """Lists, tuples and dicts of exact built-in types are near-cached, each keyed by what
    it holds (and a list never shares a key with a tuple)."""
    backend = CountingAuthenticator()
    plugin = near_plugin(memcached, backend)
    assert auth(plugin, roles=["a", "b"]) == ("user:alice", "miss")
    assert auth(plugin, roles=["a", "b"]) == ("user:alice", "local_hit")
    assert auth(plugin, roles=["a"]) == ("user:alice", "miss")
    assert auth(plugin, roles=["a", "b", None]) == ("user:alice", "miss")
    # A tuple is keyed apart from the equal list, in memcached as in memory.
    assert auth(plugin, roles=("a", "b")) == ("user:alice", "miss")
    assert auth(plugin, roles=("a", "b")) == ("user:alice", "local_hit")
    assert auth(plugin, password="wrong", roles=["a", "b"]) == (None, "miss")
    assert backend.calls == 5
    assert len(plugin._near) == 4


class Text(str):
    pass


class Number(int):
    pass


class Bytes(bytes):
    pass


DIFFERENTIAL_USERS = {"alice": "wonderland", b"alice": b"wonderland", "zoë": "pässwörd",
                      "num": 1, "": ""}
DIFFERENTIAL_IDENTITIES = [
    ("alice", "wonderland"), ("alice", "wonderlanD"), ("ALICE", "wonderland"),
    ("alice", b"wonderland"), (b"alice", b"wonderland"), (b"alice", "wonderland"),
    (b"alice", bytearray(b"wonderland")), (b"alice", Bytes(b"wonderland")),
    (Text("alice"), "wonderland"), ("alice", Text("wonderland")), ("alice", None),
    ("alice", ""), ("alice", ["wonderland"]), ("zoë", "pässwörd"), ("zoe\u0308", "pässwörd"),
    ("zoë", "pässwörd".encode()), ("num", 1), ("num", True), ("num", 1.0), ("num", "1"),
    ("num", Number(1)), ("", ""), ("", None),
]


def test_answers_with_the_near_cache_are_the_backends_answers(memcached):
    """Whatever the identity's types, a plugin with the near cache answers as the backend
    itself and as a plugin without it would, first time and every time after."""
    truth = CountingAuthenticator(DIFFERENTIAL_USERS)
    plain = plugin_for(memcached, CountingAuthenticator(DIFFERENTIAL_USERS),
                       negative_ttl="60", key_prefix="plain:")
    near = near_plugin(memcached, CountingAuthenticator(DIFFERENTIAL_USERS),
                       negative_ttl="60", key_prefix="near:")
    for round_ in range(3):
        for user, password in DIFFERENTIAL_IDENTITIES:
            expected = truth.authenticate({}, {"login": user, "password": password})
            got = (auth(near, user, password)[0], auth(plain, user, password)[0])
            assert got == (expected, expected), (round_, user, password)
    assert near.counters.snapshot()["local_hits"] > 0


def test_list_and_tuple_identities_are_kept_apart(memcached):
    backend = CountingAuthenticator({"t": ("a",)})
    plugin = plugin_for(memcached, backend)
    assert auth(plugin, "t", ("a",)) == ("user:t", "miss")
    assert auth(plugin, "t", ["a"]) == (None, "miss")  # the backend says no to a list


def test_str_subclasses_skip_memory_but_are_cached(memcached):
    backend = CountingAuthenticator()
    plugin = near_plugin(memcached, backend)
    assert auth(plugin) == ("user:alice", "miss")
    assert auth(plugin) == ("user:alice", "local_hit")
    # Same value, so the same memcached entry; never the near cache.
    for _ in range(2):
        assert auth(plugin, Text("alice"), Text("wonderland")) == ("user:alice", "hit")
    assert auth(plugin, Text("alice"), Text("nope")) == (None, "miss")
    assert backend.calls == 2
    assert len(plugin._near) == 1


def test_a_lying_repr_cannot_borrow_anothers_local_answer(memcached):
    """Why only exact types: a subclass's repr could spell another identity's key."""

    class Masked(str):
        def __new__(cls, value, shown):
            obj = super().__new__(cls, value)
            obj.shown = shown
            return obj

        def __repr__(self):
            return repr(self.shown)

    backend = CountingAuthenticator()
    plugin = near_plugin(memcached, backend)
    assert auth(plugin) == ("user:alice", "miss")
    assert auth(plugin) == ("user:alice", "local_hit")
    user, password = Masked("mallory", "alice"), Masked("guess", "wonderland")
    assert repr(sorted({"login": user, "password": password}.items())) == repr(
        sorted({"login": "alice", "password": "wonderland"}.items())
    )
    assert auth(plugin, user, password) == (None, "miss")
    assert backend.calls == 2


def test_metadata_for_a_non_plain_userid_skips_memory(memcached):
    md = CountingMetadata()
    plugin = metadata_plugin(memcached, md)
    outcomes = [meta(plugin, Text("user:alice")) for _ in range(3)]
    assert [o for _, o in outcomes] == ["miss", "hit", "hit"]
    assert all(identity["groups"] == ["staff", "group-of-user:alice"]
               for identity, _ in outcomes)
    assert md.calls == 1
    assert len(plugin._near) == 0


# ------------------------------------------------------------------ keys


def test_near_keys_hold_no_credentials_and_differ_between_processes(memcached):
    one = near_plugin(memcached, CountingAuthenticator())
    two = near_plugin(memcached, CountingAuthenticator())  # same secret, same memcached
    assert auth(one, "zoë", "pässwörd") == ("user:zoë", "miss")
    assert auth(two, "zoë", "pässwörd") == ("user:zoë", "hit")
    (key_one,) = one._near._entries
    (key_two,) = two._near._entries
    assert isinstance(key_one, bytes) and len(key_one) == 16
    assert key_one != key_two  # a random key per process
    # Stable within the process: a plain login's key is its login and password's, as a pair.
    identity = {"login": "zoë", "password": "pässwörd"}
    assert one._near.key(AUTHENTICATE, ("zoë", "pässwörd")) == key_one
    assert one._near.key(AUTHENTICATE, ("zoë", "x")) != key_one
    assert one._near.key(AUTHENTICATE, identity) != key_one  # another type
    assert one._near.key(AUTHENTICATE, sorted(identity.items())) != key_one
    assert one._near.key(ADD_METADATA, ("zoë", "pässwörd")) != key_one
    for text in ("zoë", "pässwörd"):
        for encoding in ("utf-8", "latin-1", "utf-16-le"):
            assert text.encode(encoding) not in key_one
    # What memory holds beside the key is the answer, never the password.
    assert "pässwörd" not in repr(one._near._entries)
    assert "user:zoë" in repr(one._near._entries)


def test_memcached_still_reveals_nothing_with_the_near_cache(memcached):
    plugin = near_plugin(memcached, CountingAuthenticator())
    auth(plugin, "zoë", "pässwörd")
    plugin.invalidate_user(login="zoë")
    keys = memcached.stored_keys()
    assert plugin.region.epoch_key in keys
    dump = b"".join(memcached.get_raw(k) or b"" for k in keys) + " ".join(keys).encode()
    for secret_text in ("zoë", "pässwörd", "user:", "example.org", "uid="):
        assert secret_text.encode() not in dump


# ------------------------------------------------------------------ configuration


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("local_ttl", "-1", "'local_ttl': must be at least 0"),
        ("local_ttl", "abc", "'local_ttl': expected a number"),
        ("local_ttl", "nan", "'local_ttl': expected a finite number"),
        ("local_ttl", "3601", "'local_ttl': must be at most 3600"),
        ("local_max_entries", "0", "'local_max_entries': must be at least 1"),
        ("local_max_entries", "1.5", "'local_max_entries': expected a whole number"),
        ("local_check_interval", "0", "'local_check_interval': must be at least 0.01"),
        ("local_check_interval", "-1", "'local_check_interval': must be at least 0.01"),
        ("local_check_interval", "soon", "'local_check_interval': expected a number"),
    ],
)
def test_bad_near_cache_options_fail_at_load_naming_the_option(option, value, message):
    with pytest.raises(ConfigError, match=message):
        make_plugin(secret=SECRET, authenticator_name="x", **{option: value})


def test_near_cache_options_are_taken():
    plugin = make_plugin(secret=SECRET, authenticator_name="x", local_ttl=" 2.5 ",
                         local_max_entries="7", local_check_interval="0.25")
    assert plugin._near is not None
    assert (plugin._near.ttl, plugin._near.max_entries, plugin._near.check_interval) == (
        2.5, 7, 0.25
    )


# ------------------------------------------------------------------ flushes racing stores


def new_near(ttl=60.0, max_entries=10):
    return NearCache(ttl, max_entries, 1.0, (AUTHENTICATE, ADD_METADATA))


def test_store_begun_before_a_flush_is_dropped():
    near = new_near()
    key = near.key(AUTHENTICATE, [("login", "alice"), ("password", "wonderland")])
    assert key is not None
    seen = near.flushes
    near.flush()  # an invalidation was seen while the answer was being fetched
    near.put(key, "user:alice", {"email": "a@example.org"}, True, time.time() + 60, seen)
    assert near.get(key) is None and len(near) == 0
    near.put(key, "user:alice", {"email": "a@example.org"}, True, time.time() + 60,
             near.flushes)
    assert near.get(key) == ("user:alice", {"email": "a@example.org"}, True)


def test_near_cache_unit_lifetimes_bounds_and_keys():
    near = new_near(ttl=0.1, max_entries=2)
    keys = [near.key(AUTHENTICATE, [("n", n)]) for n in range(3)]
    assert len(set(keys)) == 3
    near.put(keys[0], "u0", None, True, time.time() - 1, near.flushes)  # already expired
    assert len(near) == 0
    for n, key in enumerate(keys):
        near.put(key, f"u{n}", None, n != 1, time.time() + 60, near.flushes)
    assert len(near) == 2 and near.get(keys[0]) is None
    assert near.get(keys[1]) == ("u1", {}, False)
    time.sleep(0.15)  # local ttl 0.1
    assert near.get(keys[2]) is None
    # Exact built-in types only, each kept apart from its look-alikes.
    for odd in (Text("x"), Number(1), object()):
        assert near.key(AUTHENTICATE, [("n", odd)]) is None
    distinct = ["1", 1, 1.0, True, b"1", None, [1], (1,), {"1": 1}, -0.0, 0.0]
    assert len({near.key(AUTHENTICATE, [("n", v)]) for v in distinct}) == len(distinct)
    assert near.key(AUTHENTICATE, [("n", "x")]) != near.key(ADD_METADATA, [("n", "x")])
    assert near.key(AUTHENTICATE, [("ab", "c")]) != near.key(AUTHENTICATE, [("a", "bc")])


def test_near_cache_copies_mutable_answers_both_ways():
    near = new_near()
    key = near.key(ADD_METADATA, [("repoze.who.userid", "u")])
    values = {"groups": ["staff"], "nested": {"a": [1]}}
    near.put(key, "u", values, True, time.time() + 60, near.flushes)
    values["groups"].append("admin")  # the caller's objects are not what is kept
    first = near.get(key)
    assert first == ("u", {"groups": ["staff"], "nested": {"a": [1]}}, True)
    first[1]["groups"].clear()
    first[1]["nested"]["a"].append(2)
    assert near.get(key) == ("u", {"groups": ["staff"], "nested": {"a": [1]}}, True)


def test_memcached_answer_read_before_an_invalidation_is_not_kept(memcached, monkeypatch):
    """Our read of alice's entry, then an invalidation, then (another thread's) epoch check
    flushes memory, then our store into memory: it must be dropped."""
    store_first = near_plugin(memcached, CountingAuthenticator())
    auth(store_first)
    backend = CountingAuthenticator()
    plugin = near_plugin(memcached, backend)
    real_get_multi = plugin.backend.get_multi
    raced: list = []

    def get_multi_racing(keys, route):
        found = real_get_multi(keys, route)
        if len(keys) > 1 and not raced:  # the entry read (an epoch check reads one key)
            raced.append(keys)
            store_first.invalidate_user(login="alice")
            plugin.region.check_invalidation_epoch()
        return found

    monkeypatch.setattr(plugin.backend, "get_multi", get_multi_racing)
    assert auth(plugin) == ("user:alice", "hit")  # read before the invalidation
    assert raced and len(plugin._near) == 0  # ...but not kept
    assert auth(plugin) == ("user:alice", "miss")
    assert backend.calls == 1
    assert auth(plugin) == ("user:alice", "local_hit")


def test_backend_answer_begun_before_an_invalidation_is_not_kept(memcached):
    class InvalidatedMeanwhile(CountingAuthenticator):
        def authenticate(self, environ, identity):
            userid = super().authenticate(environ, identity)
            if self.calls == 1:
                plugin_for(memcached, CountingAuthenticator()).invalidate_user(login="alice")
                plugin.region.check_invalidation_epoch()  # another thread's check
            return userid

    backend = InvalidatedMeanwhile(users={"alice": "wonderland", "bob": "builder"})
    plugin = near_plugin(memcached, backend, negative_ttl="60")
    # alice's generation exists already (see test_first_lookup_racing_an_invalidation_...).
    assert auth(plugin, "alice", "old-password") == (None, "miss")
    backend.calls = 0
    assert auth(plugin) == ("user:alice", "miss")
    assert len(plugin._near) == 0
    # Its memcached entry carries the old generation too: the backend is asked again.
    assert auth(plugin) == ("user:alice", "miss")
    assert auth(plugin) == ("user:alice", "local_hit")
    assert backend.calls == 2


def test_first_lookup_racing_an_invalidation_is_not_served_after_it(memcached):
    class InvalidatedMeanwhile(CountingAuthenticator):
        def authenticate(self, environ, identity):
            userid = super().authenticate(environ, identity)
            if self.calls == 1:  # an admin disables alice while her first lookup runs
                plugin_for(memcached, CountingAuthenticator()).invalidate_user(login="alice")
            return userid

    backend = InvalidatedMeanwhile()
    plugin = plugin_for(memcached, backend)  # no near cache: memcached alone
    assert auth(plugin) == ("user:alice", "miss")
    assert auth(plugin) == ("user:alice", "miss")  # the answer from before is not used


# ------------------------------------------------------------------ concurrency


# Each worker makes at least this many logins, and goes on until the near cache has been
# emptied by an invalidation while it ran (bounded by RACE_DEADLINE seconds).
RACE_LOGINS = 40
RACE_DEADLINE = 20.0


@pytest.mark.parametrize("client", ["python-memcached", "pymemcache"])
def test_twenty_threads_with_invalidations_racing(memcached, caplog, client):
    """Twenty threads log in (a third of them with a wrong password) and read metadata while
    another "process" invalidates users and everything: every answer is right, whatever the
    interleaving. The race must have happened: the workers go on past RACE_LOGINS until an
    invalidation has emptied the near cache mid-run. (With a fixed count they could all be
    done, on a loaded machine, before the invalidator's first write: only 6 to 13
    invalidations land in a usual run, the first ~0.1 s in, and the invalidator's thread
    waits for the GIL behind twenty busy ones at each of its socket calls.)"""
    backend = CountingAuthenticator()
    md = CountingMetadata()
    plugin = plugin_for(memcached, backend, md, mdprovider_name="md", memcached_client=client,
                        negative_ttl="60", local_ttl="60", local_check_interval="0.01")
    other = plugin_for(memcached, CountingAuthenticator())  # invalidates, as another process
    users = list(backend.users.items())
    errors: list[str] = []
    metadata_calls = [0]
    logins = [0]
    lock = threading.Lock()
    stop = threading.Event()
    start = threading.Barrier(21)
    deadline = time.monotonic() + RACE_DEADLINE

    def raced() -> bool:
        """An invalidation emptied the near cache while the workers ran."""
        return plugin.counters.snapshot()["local_flushes"] > 0

    def invalidator():
        start.wait()
        n = 0
        while not stop.is_set():
            user = users[n % len(users)][0]
            if n % 5 == 4:
                other.invalidate_all()
            else:
                other.invalidate_user(login=user, userid=f"user:{user}")
            n += 1
            time.sleep(0.005)

    def worker(n):
        start.wait()
        i = 0
        try:
            for i in itertools.count():  # at the break, i logins were made
                if i >= RACE_LOGINS and (raced() or time.monotonic() > deadline):
                    break
                user, password = users[(n + i // 4) % len(users)]
                wrong = (n + i) % 3 == 0
                userid, identity, environ = login(plugin, user, password + "x" * wrong, environ={})
                expected = None if wrong else f"user:{user}"
                if userid != expected:
                    errors.append(f"{user} wrong={wrong}: {userid} ({outcome(environ)})")
                    continue
                if wrong:
                    if "email" in identity:
                        errors.append(f"{user}: a denial added {identity}")
                    continue
                if identity.get("email") != f"{user}@example.org":
                    errors.append(f"{user}: email {identity.get('email')}")
                identity["repoze.who.userid"] = userid
                plugin.add_metadata(environ, identity)
                with lock:
                    metadata_calls[0] += 1
                if identity.get("groups") != ["staff", f"group-of-{userid}"]:
                    errors.append(f"{user}: groups {identity.get('groups')}")
                if outcome(environ, ADD_METADATA) == "local_hit":
                    # A copy of its own: changing it must not leak into other answers. (Not
                    # after a miss: see test_coalesced_requests_share_mutable_values.)
                    identity["groups"].append("mutated")
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(repr(exc))
        with lock:
            logins[0] += i

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(20)]
    threads.append(threading.Thread(target=invalidator))
    with caplog.at_level(logging.WARNING, "repoze_who_memcached"):
        for t in threads:
            t.start()
        for t in threads[:-1]:
            t.join()
        stop.set()
        threads[-1].join()
    assert errors == []
    assert "internal error" not in caplog.text
    counts = plugin.counters.snapshot()
    # Every lookup was answered exactly one way.
    answered = counts["hits"] + counts["negative_hits"] + counts["local_hits"] + counts["misses"]
    assert logins[0] >= 20 * RACE_LOGINS
    assert answered == logins[0] + metadata_calls[0]
    assert counts["local_hits"] > 0
    assert counts["local_flushes"] > 0, f"no invalidation was seen in {RACE_DEADLINE}s of racing"
    assert other.counters.snapshot()["invalidations"] > 0
    # Quiet again: one more invalidation is seen once the interval has passed.
    assert auth(plugin)[0] == "user:alice"
    other.invalidate_user(login="alice")
    wait_out(0.01)
    calls = backend.calls
    assert auth(plugin) == ("user:alice", "miss")
    assert backend.calls == calls + 1


def test_the_invalidating_process_drops_its_own_near_cache_at_once(memcached):
    backend = CountingAuthenticator()
    plugin = near_plugin(memcached, backend)  # epoch checks not due for a minute
    auth(plugin)
    assert auth(plugin) == ("user:alice", "local_hit")
    plugin.invalidate_user(login="alice")
    assert auth(plugin) == ("user:alice", "miss")
    assert auth(plugin) == ("user:alice", "local_hit")
    plugin.invalidate_all()
    assert auth(plugin) == ("user:alice", "miss")
    assert backend.calls == 3


def test_a_full_near_cache_drops_its_oldest_tenth():
    near = new_near(max_entries=100)
    keys = []
    for i in range(1000):
        key = near.key(AUTHENTICATE, [("login", f"user{i}"), ("password", "pw")])
        keys.append(key)
        near.put(key, f"user{i}", {}, True, time.time() + 60, near.flushes)
        assert len(near) <= 100
        # The newest 90 are always there; what went was the oldest.
        assert all(near.get(k) is not None for k in keys[-90:])
    held = [k for k in keys if near.get(k) is not None]
    assert held == keys[-len(held):] and len(held) >= 90


def test_near_hits_of_two_caches_in_one_request_are_all_recorded(memcached):
    """Each near-cache hit adds its outcome to what the request already holds (another
    cache's, or the app's), as a hit from memcached does."""
    caches = [near_plugin(memcached, CountingAuthenticator(), CountingMetadata(), name=name,
                          key_prefix=name, mdprovider_name="md", negative_ttl="60")
              for name in ("outer", "inner")]

    def request(password: str, before: dict | None = None) -> dict:
        environ = {} if before is None else {ENVIRON_KEY: before}
        identity = {"login": "alice", "password": password}
        for cache in caches:
            userid = cache.authenticate(environ, identity)
            if userid is not None:
                identity["repoze.who.userid"] = userid
                cache.add_metadata(environ, identity)
        return environ[ENVIRON_KEY]

    every = {AUTHENTICATE: "miss", ADD_METADATA: "miss"}
    assert request("wonderland") == {"outer": every, "inner": every}
    assert request("wrong") == {"outer": {AUTHENTICATE: "miss"}, "inner": {AUTHENTICATE: "miss"}}
    near = {AUTHENTICATE: "local_hit", ADD_METADATA: "local_hit"}
    assert request("wonderland") == {"outer": near, "inner": near}
    assert request("wonderland", {"app": {"x": "y"}}) == {
        "app": {"x": "y"}, "outer": near, "inner": near}
    denied = {AUTHENTICATE: "local_negative_hit"}
    assert request("wrong") == {"outer": denied, "inner": denied}


def test_debug_log_of_near_hits_follows_the_log_level(memcached, caplog):
    plugin = near_plugin(memcached, CountingAuthenticator(), local_check_interval=str(INTERVAL))
    auth(plugin)
    auth(plugin)  # a local hit while DEBUG is off: nothing logged
    with caplog.at_level(logging.DEBUG, "repoze_who_memcached"):
        wait_out(INTERVAL)  # the next epoch check sees the new level
        assert auth(plugin) == ("user:alice", "local_hit")
    assert "authenticate local_hit" in caplog.text
    assert "wonderland" not in caplog.text
