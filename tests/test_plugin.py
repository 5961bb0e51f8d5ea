"""The caching plugin against a real memcached: hits, misses, keys, values, sealing, faults."""

from __future__ import annotations

import logging
import threading
import time

import pytest
from backends_for_tests import CountingAuthenticator, CountingMetadata
from conftest import SECRET
from repoze.who.interfaces import IAuthenticator, IMetadataProvider
from zope.interface.verify import verifyObject

from repoze_who_memcached import BackendUnavailable, CachingPlugin, ConfigError, make_plugin
from repoze_who_memcached.plugin import ENVIRON_KEY


def plugin_for(memcached, authenticator=None, mdprovider=None, **options):
    options.setdefault("secret", SECRET)
    options.setdefault("memcached_urls", memcached.url)
    options.setdefault("authenticator_name", "backend")
    plugin = make_plugin(**options)
    registry = {}
    if authenticator is not None:
        registry["backend"] = authenticator
    if mdprovider is not None:
        registry["md"] = mdprovider
    plugin.bind(registry)
    return plugin


def login(plugin, user="alice", password="wonderland", environ=None, **extra):  # noqa: S107
    identity = {"login": user, "password": password, **extra}
    environ = {} if environ is None else environ
    return plugin.authenticate(environ, identity), identity, environ


def test_interfaces_are_provided():
    plugin = make_plugin(secret=SECRET, authenticator_name="x")
    assert verifyObject(IAuthenticator, plugin)
    assert verifyObject(IMetadataProvider, plugin)


def test_miss_then_hit_calls_backend_once(memcached):
    backend = CountingAuthenticator()
    plugin = plugin_for(memcached, backend)
    userid, identity, environ = login(plugin)
    assert userid == "user:alice"
    assert environ[ENVIRON_KEY]["cache"]["authenticate"] == "miss"
    userid2, identity2, environ2 = login(plugin)
    assert userid2 == "user:alice"
    assert environ2[ENVIRON_KEY]["cache"]["authenticate"] == "hit"
    assert backend.calls == 1
    # A hit leaves the identity as the miss did.
    assert identity2 == identity
    assert identity2["email"] == "alice@example.org"
    counts = plugin.counters.snapshot()
    assert counts["hits"] == 1 and counts["misses"] == 1 and counts["backend_calls"] == 1


def test_wrong_password_is_not_cached_as_success(memcached):
    backend = CountingAuthenticator()
    plugin = plugin_for(memcached, backend)
    assert login(plugin)[0] == "user:alice"
    assert login(plugin, password="wrong")[0] is None
    assert login(plugin, password="wrong")[0] is None
    assert backend.calls == 3  # negative caching is off by default
    assert login(plugin)[0] == "user:alice"
    assert backend.calls == 3


def test_real_ttl_expiry(memcached):
    backend = CountingAuthenticator()
    plugin = plugin_for(memcached, backend, ttl="1")
    login(plugin)
    login(plugin)
    assert backend.calls == 1
    time.sleep(2.1)  # memcached's clock ticks in whole seconds
    assert login(plugin)[0] == "user:alice"
    assert backend.calls == 2


def test_key_items_limit_what_keys_the_entry(memcached):
    backend = CountingAuthenticator()
    plugin = plugin_for(memcached, backend, key_items="login password")
    assert login(plugin, noise="1")[0] == "user:alice"
    assert login(plugin, noise="2")[0] == "user:alice"
    assert backend.calls == 1
    # By default every data item keys the entry.
    default = plugin_for(memcached, backend, key_prefix="d")
    login(default, noise="1")
    login(default, noise="2")
    assert backend.calls == 3


def test_caches_keyed_on_different_items_share_no_entries(memcached):
    """Same secret, prefix, memcached and wrapped plugin, but other key_items: with key_items
    a missing item keys as None, which the default key tells apart (``{"login": x}`` and
    ``{"login": x, "password": None}`` may be answered differently): no entry is shared."""
    backend = CountingAuthenticator()
    by_items = plugin_for(memcached, backend, key_items="login password")
    default = plugin_for(memcached, backend)
    other_items = plugin_for(memcached, backend, key_items="login password email")
    assert login(by_items)[0] == "user:alice"
    assert login(default)[0] == "user:alice"
    assert login(other_items)[0] == "user:alice"
    assert backend.calls == 3
    # The same settings in another "process" do share them.
    again = plugin_for(memcached, backend, key_items="login password")
    assert login(again)[0] == "user:alice"
    assert backend.calls == 3


def test_caches_keeping_different_value_items_share_no_entries(memcached):
    """Same secret, prefix, memcached and wrapped plugins, but other value_items: a cache
    that keeps only ``email`` must not answer a cache that keeps everything (its hits would
    lack ``dn``, the metadata hits ``groups``), nor the other way round."""
    backend = CountingAuthenticator()
    narrow = plugin_for(memcached, backend, value_items="email")
    full = plugin_for(memcached, backend)
    assert login(narrow)[0] == "user:alice"
    userid, identity, _ = login(full)
    assert userid == "user:alice"
    assert identity["dn"] == "uid=alice,ou=people,dc=example,dc=org"
    assert backend.calls == 2

    md = CountingMetadata()
    options = dict(authenticator_name="", mdprovider_name="md")
    narrow_md = plugin_for(memcached, mdprovider=md, value_items="display", **options)
    full_md = plugin_for(memcached, mdprovider=md, **options)
    narrow_md.add_metadata({}, {"repoze.who.userid": "user:alice"})
    identity = {"repoze.who.userid": "user:alice"}
    full_md.add_metadata({}, identity)
    assert identity["groups"] == ["staff", "group-of-user:alice"]
    assert md.calls == 2
    # The same settings in another "process" do share them.
    again = plugin_for(memcached, mdprovider=md, value_items="display", **options)
    again.add_metadata({}, {"repoze.who.userid": "user:alice"})
    assert md.calls == 2


def test_default_key_ignores_plugin_objects(memcached):
    """The 2011 default keyed str() of plugin objects: keys differed between processes."""
    backend = CountingAuthenticator()
    one = plugin_for(memcached, backend)
    two = plugin_for(memcached, backend)  # another "process": same secret, same memcached
    login(one, identifier=object(), authenticator=object())
    assert login(two, identifier=object(), authenticator=object())[0] == "user:alice"
    assert backend.calls == 1


def test_value_items_choose_what_is_cached(memcached):
    backend = CountingAuthenticator()
    plugin = plugin_for(memcached, backend, value_items="email")
    login(plugin)
    userid, identity, _ = login(plugin)
    assert userid == "user:alice"
    assert identity["email"] == "alice@example.org"
    assert "dn" not in identity


@pytest.mark.parametrize(
    "user",
    ["zoë", "Ünï çødé"],
)
def test_unicode_identities(memcached, user):
    backend = CountingAuthenticator()
    plugin = plugin_for(memcached, backend)
    password = backend.users[user]
    assert login(plugin, user, password)[0] == f"user:{user}"
    assert login(plugin, user, password)[0] == f"user:{user}"
    assert backend.calls == 1
    assert login(plugin, user, password + "x")[0] is None


def test_bytes_identities_are_keyed_apart_from_str(memcached):
    backend = CountingAuthenticator(users={"alice": "wonderland", b"alice": b"wonderland"})
    plugin = plugin_for(memcached, backend)
    assert login(plugin, b"alice", b"wonderland")[0] == "user:b'alice'"
    assert login(plugin, "alice", "wonderland")[0] == "user:alice"
    assert backend.calls == 2


def test_one_identity_never_gets_anothers_result(memcached):
    """The 2011 plugin memoised the key per request: bob could get alice's entry."""
    backend = CountingAuthenticator()
    plugin = plugin_for(memcached, backend)
    environ: dict = {}
    assert login(plugin, "alice", "wonderland", environ)[0] == "user:alice"
    assert login(plugin, "bob", "builder", environ)[0] == "user:bob"
    assert login(plugin, "bob", "wonderland", environ)[0] is None
    assert login(plugin, "alice", "builder", environ)[0] is None


def test_keys_are_fixed_length_ascii_and_prefixed(memcached):
    plugin = plugin_for(memcached, CountingAuthenticator(), key_prefix="myapp:")
    login(plugin, "zoë", "pässwörd")
    keys = memcached.stored_keys()
    assert keys and all(k.startswith("myapp:") for k in keys)
    assert {len(k) for k in keys} == {len("myapp:") + 43}
    assert all(k.isascii() and " " not in k for k in keys)


def test_memcached_reveals_nothing(memcached):
    plugin = plugin_for(memcached, CountingAuthenticator())
    login(plugin, "zoë", "pässwörd")
    dump = b"".join(memcached.get_raw(k) or b"" for k in memcached.stored_keys())
    dump += " ".join(memcached.stored_keys()).encode()
    for secret_text in ("zoë", "pässwörd", "user:", "example.org", "uid="):
        assert secret_text.encode() not in dump


def _entry_keys(memcached):
    """Keys that hold sealed entries (generation tokens are short ASCII tokens; the sealed
    credential stamps of the logins these tests use are left out)."""
    from backends_for_tests import USERS

    from repoze_who_memcached.keys import KeyMaker

    maker = KeyMaker(SECRET.encode())
    stamps = {maker.login_key("credential-stamp", login) for login in USERS}
    return [k for k in memcached.stored_keys()
            if (memcached.get_raw(k) or b"")[:1] == b"\x01" and k not in stamps]


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda raw: b"garbage", id="garbage"),
        pytest.param(lambda raw: raw[: len(raw) // 2], id="truncated"),
        pytest.param(lambda raw: raw[:-1] + bytes([raw[-1] ^ 1]), id="bitflip"),
        pytest.param(lambda raw: b"", id="empty"),
        pytest.param(
            lambda raw: b'\x01{"u":"user:mallory","v":{},"x":9e12,"g":[],"p":true}', id="forged"
        ),
    ],
)
def test_tampered_values_are_misses(memcached, caplog, tamper):
    backend = CountingAuthenticator()
    plugin = plugin_for(memcached, backend)
    login(plugin)
    (key,) = _entry_keys(memcached)
    memcached.set_raw(key, tamper(memcached.get_raw(key)))
    with caplog.at_level(logging.WARNING, "repoze_who_memcached"):
        assert login(plugin)[0] == "user:alice"
    assert backend.calls == 2
    if tamper(b"\x01" * 40) != b"":
        assert plugin.counters.snapshot()["bad_values"] >= 1  # each read of it counts
        assert "does not open" in caplog.text
    # Wrong password with a tampered entry in place: still no.
    memcached.set_raw(key, tamper(memcached.get_raw(key)))
    assert login(plugin, password="nope")[0] is None


def test_pickled_value_is_never_unpickled(memcached):
    backend = CountingAuthenticator()
    plugin = plugin_for(memcached, backend)
    login(plugin)
    (key,) = _entry_keys(memcached)
    # flags=1 is python-memcached's "pickled" flag: this pickle would run os.system.
    payload = b"cos\nsystem\n(S'touch /tmp/rwm-pwned'\ntR."
    memcached.set_raw(key, payload, flags=1)
    assert login(plugin)[0] == "user:alice"
    import os

    assert not os.path.exists("/tmp/rwm-pwned")


def test_moved_value_does_not_open(memcached):
    """Copying bob's valid entry over alice-with-a-wrong-password's key gets nothing."""
    backend = CountingAuthenticator()
    plugin = plugin_for(memcached, backend, negative_ttl="60")
    login(plugin, "bob", "builder")
    (bob_key,) = _entry_keys(memcached)
    login(plugin, "alice", "wrong")
    (alice_key,) = [k for k in _entry_keys(memcached) if k != bob_key]
    memcached.set_raw(alice_key, memcached.get_raw(bob_key))
    assert login(plugin, "alice", "wrong")[0] is None
    assert plugin.counters.snapshot()["bad_values"] >= 1  # each read of it counts


def test_a_value_opened_before_does_not_open_under_another_key(memcached):
    """Sealed values are remembered once opened (no decryption on the next hit), by their
    bytes and the key they opened under: moved to another key, they still do not open."""
    backend = CountingAuthenticator()
    plugin = plugin_for(memcached, backend, negative_ttl="60")
    login(plugin, "bob", "builder")
    assert login(plugin, "bob", "builder")[2][ENVIRON_KEY]["cache"]["authenticate"] == "hit"
    (bob_key,) = _entry_keys(memcached)
    login(plugin, "alice", "wrong")
    (alice_key,) = [k for k in _entry_keys(memcached) if k != bob_key]
    memcached.set_raw(alice_key, memcached.get_raw(bob_key))
    assert login(plugin, "alice", "wrong")[0] is None
    assert plugin.counters.snapshot()["bad_values"] >= 1


def test_hits_get_values_of_their_own(memcached):
    """A hit's values are the caller's to change: the next hit of the same entry (the same
    sealed bytes, opened once) is not affected."""
    md = CountingMetadata()
    plugin = plugin_for(memcached, CountingAuthenticator(), mdprovider=md, mdprovider_name="md")
    first = {"repoze.who.userid": "user:alice"}
    plugin.add_metadata({}, first)
    for _ in range(2):
        identity = {"repoze.who.userid": "user:alice"}
        environ: dict = {}
        plugin.add_metadata(environ, identity)
        assert environ[ENVIRON_KEY]["cache"]["add_metadata"] == "hit"
        assert identity["groups"] == ["staff", "group-of-user:alice"]
        identity["groups"].append("admin")  # what an app might do to its identity
    assert md.calls == 1


def test_another_secret_cannot_read_entries(memcached):
    backend = CountingAuthenticator()
    login(plugin_for(memcached, backend))
    other = plugin_for(memcached, backend, secret="iK3bzLxOzuwPlcKarS2sv3eUQ5aJmkzLJ05ub8P-U7U")
    assert login(other)[0] == "user:alice"
    assert backend.calls == 2


def test_wrapped_plugin_raising_answers_none_and_caches_nothing(memcached, caplog):
    backend = CountingAuthenticator()
    plugin = plugin_for(memcached, backend)
    backend.fail_with = RuntimeError("directory exploded")
    with caplog.at_level(logging.ERROR, "repoze_who_memcached"):
        assert login(plugin)[0] is None
    assert "directory exploded" in caplog.text
    assert "wonderland" not in caplog.text
    assert _entry_keys(memcached) == []
    backend.fail_with = BackendUnavailable("ldap down")
    assert login(plugin)[0] is None
    backend.fail_with = None
    assert login(plugin)[0] == "user:alice"
    assert plugin.counters.snapshot()["backend_errors"] == 2


def test_memcached_stopped_then_started(private_memcached, caplog):
    backend = CountingAuthenticator()
    plugin = plugin_for(private_memcached, backend, dead_retry="0.5")
    login(plugin)
    private_memcached.stop()
    with caplog.at_level(logging.WARNING, "repoze_who_memcached"):
        for _ in range(20):
            assert login(plugin)[0] == "user:alice"
            assert login(plugin, password="bad")[0] is None
    assert plugin.counters.snapshot()["cache_errors"] >= 1
    # Warnings are rate limited: 40 failing requests, a handful of lines at most.
    assert 1 <= caplog.text.count("memcached") <= 5
    private_memcached.start()
    time.sleep(0.6)  # dead_retry
    calls = backend.calls
    login(plugin)
    login(plugin)
    assert backend.calls == calls + 1  # caching again


def test_hung_memcached_is_bounded_by_socket_timeout(private_memcached):
    backend = CountingAuthenticator()
    plugin = plugin_for(private_memcached, backend, socket_timeout="0.2", dead_retry="30")
    login(plugin)
    private_memcached.pause()
    try:
        started = time.monotonic()
        assert login(plugin)[0] == "user:alice"
        first = time.monotonic() - started
        started = time.monotonic()
        for _ in range(5):
            assert login(plugin)[0] == "user:alice"
        later = time.monotonic() - started
    finally:
        private_memcached.resume()
    # Bounded: a couple of timeouts for the first request, then the server is skipped.
    assert first < 2.0
    assert later < 1.0


def test_memcached_returning_garbage(memcached):
    """A value with python-memcached's integer flag makes the client parse garbage."""
    backend = CountingAuthenticator()
    plugin = plugin_for(memcached, backend)
    login(plugin)
    (key,) = _entry_keys(memcached)
    memcached.set_raw(key, b"not-a-number", flags=2)
    assert login(plugin)[0] == "user:alice"
    memcached.set_raw(key, b"\x00\x01", flags=1 << 9)  # unknown flag
    assert login(plugin)[0] == "user:alice"


def test_sixteen_threads_hammering_one_plugin(memcached):
    backend = CountingAuthenticator()
    plugin = plugin_for(memcached, backend)
    users = list(backend.users.items())
    errors: list[str] = []

    def worker(n):
        for i in range(60):
            user, password = users[(n + i) % len(users)]
            wrong = i % 3 == 0
            userid = login(plugin, user, password + ("x" if wrong else ""))[0]
            expected = None if wrong else f"user:{user}"
            if userid != expected:
                errors.append(f"{user} wrong={wrong}: {userid}")

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    counts = plugin.counters.snapshot()
    assert counts["hits"] > 0
    assert counts["hits"] + counts["misses"] == 16 * 60


def test_metadata_cached_by_userid(memcached):
    md = CountingMetadata()
    plugin = plugin_for(memcached, mdprovider=md, authenticator_name="", mdprovider_name="md")
    first = {"repoze.who.userid": "user:alice"}
    plugin.add_metadata({}, first)
    second = {"repoze.who.userid": "user:alice"}
    environ: dict = {}
    plugin.add_metadata(environ, second)
    assert md.calls == 1
    assert environ[ENVIRON_KEY]["cache"]["add_metadata"] == "hit"
    assert second == first
    assert second["photo"] == b"\x89PNG\x00\xff" and second["pair"] == ("a", 1)
    other = {"repoze.who.userid": "user:bob"}
    plugin.add_metadata({}, other)
    assert other["groups"] == ["staff", "group-of-user:bob"]
    assert md.calls == 2


def test_metadata_provider_raising_adds_nothing(memcached):
    md = CountingMetadata()
    md.fail_with = BackendUnavailable("down")
    plugin = plugin_for(memcached, mdprovider=md, authenticator_name="", mdprovider_name="md")
    identity = {"repoze.who.userid": "user:alice"}
    plugin.add_metadata({}, identity)
    assert identity == {"repoze.who.userid": "user:alice"}


def test_uncacheable_values_are_not_cached_but_answer(memcached):
    class Weird(CountingAuthenticator):
        def authenticate(self, environ, identity):
            userid = super().authenticate(environ, identity)
            identity["connection"] = object()
            return userid

    backend = Weird()
    plugin = plugin_for(memcached, backend)
    assert login(plugin)[0] == "user:alice"
    assert login(plugin)[0] == "user:alice"
    assert backend.calls == 2


# ------------------------------------------------------------------ configuration


def test_secret_is_required():
    with pytest.raises(ConfigError, match="'secret': is required"):
        make_plugin(authenticator_name="x")
    with pytest.raises(ConfigError, match="'secret': is required"):
        make_plugin(authenticator_name="x", secret="   ")
    with pytest.raises(ConfigError, match="too short"):
        make_plugin(authenticator_name="x", secret="short")


def test_secret_file(tmp_path):
    path = tmp_path / "secret"
    path.write_text(SECRET + "\n")
    assert isinstance(make_plugin(authenticator_name="x", secret_file=str(path)), CachingPlugin)
    with pytest.raises(ConfigError, match="secret_file.*cannot read"):
        make_plugin(authenticator_name="x", secret_file=str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="not both"):
        make_plugin(authenticator_name="x", secret_file=str(path), secret=SECRET)


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("ttl", "abc", "'ttl': expected a whole number"),
        ("ttl", "-5", "'ttl': must be at least 1"),
        ("ttl", "0", "'ttl': must be at least 1"),
        ("negative_ttl", "1.5", "'negative_ttl': expected a whole number"),
        ("socket_timeout", "soon", "'socket_timeout': expected a number"),
        ("dead_retry", "-1", "'dead_retry': must be at least 0"),
        ("memcached_urls", "host:notaport", "'memcached_urls': bad port"),
        ("memcached_client", "pylibmc", "'memcached_client': expected one of"),
        ("key_prefix", "has space", "'key_prefix'"),
        ("prometheus", "perhaps", "'prometheus': expected true or false"),
        ("ttll", "60", "unknown option 'ttll'"),
        ("memcached_tls_ca_file", "/nonexistent.pem", "'memcached_tls_ca_file': no such file"),
    ],
)
def test_bad_options_fail_at_load_naming_the_option(option, value, message):
    with pytest.raises(ConfigError, match=message):
        make_plugin(secret=SECRET, authenticator_name="x", **{option: value})


def test_something_to_wrap_is_required():
    with pytest.raises(ConfigError, match="at least one of"):
        make_plugin(secret=SECRET)


def test_bind_names_a_missing_plugin():
    plugin = make_plugin(secret=SECRET, authenticator_name="ldap")
    with pytest.raises(ConfigError, match="no plugin named 'ldap'"):
        plugin.bind({"other": CountingAuthenticator()})


def test_inline_authenticator_with_options(memcached):
    plugin = make_plugin(
        secret=SECRET,
        memcached_urls=memcached.url,
        authenticator="backends_for_tests:make_authenticator",
        **{"authenticator.users": "carol:secret1 dave:secret2"},
    )
    assert login(plugin, "carol", "secret1")[0] == "user:carol"
    assert login(plugin, "carol", "secret1")[0] == "user:carol"
    assert plugin.authenticator.calls == 1


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"authenticator": "no.such.module:factory"}, "'authenticator': cannot find"),
        ({"authenticator": "backends_for_tests:nothing"}, "'authenticator': cannot find"),
        ({"authenticator.users": "a:b"}, "'authenticator.users': given without"),
        (
            {"authenticator": "backends_for_tests:make_authenticator", "authenticator.bogus": "1"},
            "unexpected options",
        ),
        ({"mdprovider": "backends_for_tests:make_authenticator"}, "does not provide"),
    ],
)
def test_inline_plugin_errors(options, message):
    with pytest.raises(ConfigError, match=message):
        make_plugin(secret=SECRET, **options)


def test_an_internal_error_answers_from_the_backend(memcached, caplog, monkeypatch):
    """Defence in depth: even a bug of ours on the cache path is not a 500."""
    backend = CountingAuthenticator()
    plugin = plugin_for(memcached, backend)
    login(plugin)

    def broken(*args):
        raise RuntimeError("bug")

    monkeypatch.setattr(plugin.region.sealer, "open", broken)
    with caplog.at_level(logging.ERROR, "repoze_who_memcached"):
        assert login(plugin)[0] == "user:alice"
        assert login(plugin, password="no")[0] is None
    assert "internal error" in caplog.text


def test_key_mac_is_standard_hmac_sha256():
    import hashlib
    import hmac

    from repoze_who_memcached.keys import KeyMaker, derive_subkey

    maker = KeyMaker(SECRET.encode())
    for payload in (b"", b"x", b"entry\0" * 100):
        expected = hmac.new(derive_subkey(SECRET.encode(), "cache-key"), payload,
                            hashlib.sha256).digest()
        assert maker.mac(payload) == expected


def test_remembered_user_keys_equal_computed_ones_and_never_mix_types(monkeypatch):
    from repoze_who_memcached import keys

    monkeypatch.setattr(keys, "USER_KEY_MEMO_SIZE", 3)
    maker = keys.KeyMaker(SECRET.encode())
    fresh = keys.KeyMaker(SECRET.encode())
    names = ["alice", "Alice", "zoë", "bob", "carol", 1, True, 1.0, b"alice", "1", "True"]
    for _ in range(2):  # the second pass reads what the first remembered (and evicted)
        for kind in ("login", "userid"):
            for name in names:
                # Remembered or not, the key is the one computed from scratch...
                fresh._user_keys.clear()
                assert maker.user_generation_key(kind, name) == fresh.user_generation_key(
                    kind, name)
    assert len(maker._user_keys) <= 3
    # ...logins differing only in case share a key (invalidation ignores case), and equal
    # values of other types (1, True, 1.0, b"alice") never borrow a str's key.
    assert maker.user_generation_key("login", "Alice") == maker.user_generation_key(
        "login", "alice")
    distinct = {maker.user_generation_key("login", n) for n in (1, True, 1.0, "1", "True")}
    assert len(distinct) == 5
    assert maker.user_generation_key("login", "x") != maker.user_generation_key("userid", "x")


class _Text(str):
    """A str subclass: encoded as str by the key, refused by marshal (never remembered)."""


def test_remembered_entry_keys_equal_computed_ones_and_never_mix_types(monkeypatch):
    from repoze_who_memcached import keys

    monkeypatch.setattr(keys, "ENTRY_KEY_MEMO_SIZE", 5)
    maker = keys.KeyMaker(SECRET.encode())
    head = maker.entry_head("authenticate", b"scope")
    values = ["pw", _Text("pw"), b"pw", bytearray(b"pw"), memoryview(b"pw"), 1, True, 1.0,
              "1", None, [1, "a"], (1, "a"), {"a": 1}, {"a": True}, [[b"\xff"]], 2**80]
    for _ in range(2):  # the second pass reads what the first remembered (and evicted)
        for value in values:
            for tag in ("", "{abc}"):
                items = [("login", "alice"), ("password", value)]
                for call in (("authenticate", items, head, tag), ("add_metadata", items)):
                    # a maker that remembers nothing yet computes the key from scratch
                    fresh = keys.KeyMaker(SECRET.encode())
                    assert maker.entry_key(*call) == fresh.entry_key(*call)
                    assert maker.entry_key(*call) == fresh.entry_key(*call)  # remembered
    assert len(maker._entry_keys) <= 5
    key = {repr(v): maker.entry_key("authenticate", [("password", v)], head) for v in values}
    # What the encoding tells apart stays apart (1, True, 1.0, "1"; lists and tuples)...
    assert len({key[r] for r in ("1", "True", "1.0", "'1'", "None")}) == 5
    assert key["[1, 'a']"] != key["(1, 'a')"] and key["{'a': 1}"] != key["{'a': True}"]
    # ...and what it writes alike shares one key: bytes-like values, a str and its subclass.
    assert len({maker.entry_key("authenticate", [("password", v)], head)
                for v in values[:5] if not isinstance(v, str)}) == 1
    assert maker.entry_key("authenticate", [("password", _Text("pw"))], head) == key["'pw'"]


def test_remembered_entry_keys_hold_no_credential():
    """The memo is keyed by a digest under a random key of the process: nothing reachable
    from the key maker holds the password (or its bytes)."""
    import gc

    from repoze_who_memcached.keys import KeyMaker

    maker = KeyMaker(SECRET.encode())
    password = "correct horse " + "battery staple"  # made at run time: no shared constant
    maker.entry_key("authenticate", [("login", "alice"), ("password", password)])
    seen: set[int] = set()
    pending: list[object] = [maker]
    while pending:
        obj = pending.pop()
        if id(obj) in seen or isinstance(obj, type):
            continue
        seen.add(id(obj))
        if isinstance(obj, (str, bytes)):
            assert password not in (obj if isinstance(obj, str) else obj.decode("latin-1"))
            continue
        pending.extend(gc.get_referents(obj))


def test_entry_key_is_the_documented_hmac_of_the_documented_encoding():
    """keys.py's format, rebuilt by hand: a change of format (every cache cold at the next
    deploy, two versions missing each other's entries) must be deliberate."""
    import base64
    import hashlib
    import hmac

    from repoze_who_memcached.keys import KeyMaker, derive_subkey

    secret = SECRET.encode()
    maker = KeyMaker(secret, "pfx:")
    mac_key = derive_subkey(secret, "cache-key")

    def expected(payload: bytes) -> str:
        digest = hmac.new(mac_key, payload, hashlib.sha256).digest()
        return "pfx:" + base64.urlsafe_b64encode(digest).decode()[:43]

    assert maker.entry_key("authenticate", [("login", "zoë"), ("password", "pw")]) == expected(
        b"entry\0s12:authenticates5:logins4:zo\xc3\xabs8:passwords2:pw")
    assert maker.entry_key("add_metadata", [("repoze.who.userid", 7), ("k", [b"\xff", None])]) \
        == expected(b"entry\0s12:add_metadatas17:repoze.who.useridi7;s1:kl2:b1:\xffN")
    assert maker.user_generation_key("login", "Zoë") == expected(
        b"usergen\0s5:logins4:zo\xc3\xab")
