"""An attacker with write access to memcached, and fuzzed identities: no exception escapes,
nobody is ever logged in as someone else or with a wrong password."""

from __future__ import annotations

import os
import random

import pytest
from backends_for_tests import CountingAuthenticator
from conftest import SECRET
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_plugin import login, plugin_for

USERS = {"alice": "wonderland", "bob": "builder", "zoë": "pässwörd", "mallory": "evil-pw"}


def expected(user, password):
    return f"user:{user}" if USERS.get(user) == password and password is not None else None


def tamperings(rng: random.Random):
    """Ways to rewrite one stored value, given every stored value (for swaps)."""
    return [
        ("forged", lambda raw, others: b'\x01{"u":"user:mallory","p":true}' + bytes(40)),
        ("random", lambda raw, others: os.urandom(rng.randint(0, 300))),
        ("truncated", lambda raw, others: raw[: rng.randint(0, max(0, len(raw) - 1))]),
        ("swapped", lambda raw, others: rng.choice(others)),
        ("bitflip", lambda raw, others: _flip(raw, rng)),
        ("empty", lambda raw, others: b""),
        ("token", lambda raw, others: b"AAAAAAAAAAAAAAAA"),
    ]


def _flip(raw: bytes, rng: random.Random) -> bytes:
    if not raw:
        return b"x"
    i = rng.randrange(len(raw))
    return raw[:i] + bytes([raw[i] ^ (1 << rng.randrange(8))]) + raw[i + 1 :]


NEAR_CACHE = {"local_ttl": "60", "local_check_interval": "0.01"}


@pytest.mark.parametrize("near", [False, True], ids=["", "near-cache"])
@pytest.mark.parametrize("client", ["python-memcached", "pymemcache"])
def test_attacker_rewriting_every_value(memcached, client, near):
    """With the near cache on, the invalidation epoch is one more value to rewrite; what the
    process holds in memory must not let a rewritten memcached log anyone in wrongly."""
    rng = random.Random(1234)
    backend = CountingAuthenticator(users=USERS)
    plugin = plugin_for(memcached, backend, negative_ttl="60", memcached_client=client,
                        **(NEAR_CACHE if near else {}))
    attempts = [(u, p) for u, p in USERS.items()] + [(u, "wrong") for u in USERS]
    attempts += [("alice", USERS["bob"]), ("mallory", USERS["alice"])]
    for _ in range(3):
        for user, password in attempts:
            assert login(plugin, user, password)[0] == expected(user, password)
        keys = memcached.stored_keys()
        values = {k: memcached.get_raw(k) or b"" for k in keys}
        for name, tamper in tamperings(rng):
            for key in keys:
                forged = tamper(values[key], list(values.values()))
                memcached.set_raw(key, forged, flags=rng.choice([0, 0, 0, 1, 2, 8, 16]))
            for user, password in attempts:
                got = login(plugin, user, password)[0]
                assert got == expected(user, password), (name, user, password, got)
        memcached.flush()


identity_values = st.one_of(
    st.text(max_size=50),
    st.text(min_size=5000, max_size=20000),
    st.binary(max_size=100),
    st.integers(),
    st.none(),
    st.lists(st.text(max_size=5), max_size=3),
    st.floats(allow_nan=True),
)


fuzzed_identities = given(
    login_=st.one_of(st.sampled_from(list(USERS)), st.text(), st.binary(), st.none()),
    password=st.one_of(st.sampled_from(list(USERS.values())), st.text(), st.binary(), st.none()),
    extra=st.dictionaries(st.text(max_size=20), identity_values, max_size=4),
    drop=st.sampled_from(["", "login", "password"]),
)
fuzz_settings = settings(
    max_examples=150, deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def identity_and_answer(login_, password, extra, drop) -> tuple[dict, str | None]:
    """The fuzzed identity, and the only right answer for it."""
    identity = {**extra, "login": login_, "password": password}
    if drop:
        del identity[drop]
    right = drop == "" and isinstance(login_, str) and password is not None \
        and USERS.get(login_) == password
    return identity, f"user:{login_}" if right else None


@fuzz_settings
@fuzzed_identities
def test_fuzzed_identities(memcached, login_, password, extra, drop):
    backend = CountingAuthenticator(users=USERS)
    plugin = plugin_for(memcached, backend, negative_ttl="5", key_prefix="fz")
    identity, want = identity_and_answer(login_, password, extra, drop)
    for _ in range(2):  # the miss, then the hit (or negative hit)
        assert plugin.authenticate({}, dict(identity)) == want


_near_plugins: dict[str, object] = {}


@fuzz_settings
@fuzzed_identities
def test_fuzzed_identities_through_the_near_cache(memcached, login_, password, extra, drop):
    """One plugin for every example, so each identity meets what all the earlier ones left
    in the near cache: a key shared by two different identities would answer wrongly."""
    plugin = _near_plugins.get(memcached.url)
    if plugin is None:
        plugin = _near_plugins[memcached.url] = plugin_for(
            memcached, CountingAuthenticator(users=USERS), negative_ttl="5", key_prefix="nz",
            local_ttl="60", local_check_interval="60")
    identity, want = identity_and_answer(login_, password, extra, drop)
    for _ in range(3):  # the miss (or a hit), then answers from memory where they can be
        assert plugin.authenticate({}, dict(identity)) == want


def test_identity_with_unencodable_key_items_still_answers(memcached):
    backend = CountingAuthenticator(users=USERS)
    plugin = plugin_for(memcached, backend, key_items="login password session")
    assert login(plugin, session=object())[0] == "user:alice"
    assert login(plugin, session=object())[0] == "user:alice"
    assert backend.calls == 2  # not cacheable, but never wrong


def test_secret_is_not_in_memcached(memcached):
    plugin = plugin_for(memcached, CountingAuthenticator(users=USERS))
    login(plugin)
    for key in memcached.stored_keys():
        assert SECRET.encode() not in (memcached.get_raw(key) or b"")
        assert SECRET not in key
