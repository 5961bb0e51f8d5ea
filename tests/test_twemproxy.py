"""Behind twemproxy (``memcached_proxy = twemproxy``): a real nutcracker in front of three
real memcached, the stack of test_faults.py (LDAP authenticator and metadata, waitress).

What must hold: all of one user's keys on one backend (the hash tag), logins and hits
through the proxy, invalidation and flush through it, ``check``/``stats`` saying in one line
what they cannot do, and one backend lost under load (killed, or paused and resumed with its
old data) costing only cache hits: only 200/401, no wrong login, no invalidation lost.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from conftest import SECRET
from test_faults import (
    ALICE,
    BOB,
    CAROL,
    CLIENTS,
    GOOD,
    HOLD,
    ZOE,
    Cred,
    Run,
    check_cache_recovered,
    check_invariants,
    connect,
    kill,
    memcached_servers,
    run_scenario,
    send,
    served,
)

from repoze_who_memcached import ConfigError, cli, make_plugin
from repoze_who_memcached.keys import HASH_TAG_CHARS, TAGGED_MAX_PREFIX_CHARS, KeyMaker
from repoze_who_memcached.testing import MemcachedServer, NutcrackerServer

# twemproxy's own limit on a backend call, well under our socket_timeout: a backend that
# fails is answered for by the proxy (SERVER_ERROR) before our client gives up on the proxy.
PROXY_TIMEOUT_MS = 100
PROXIED = {"memcached_proxy": "twemproxy", "socket_timeout": 0.6, "connect_timeout": 0.6}
# After the backend is back, a request sent this much later is served by it again.
GRACE = 0.5
TAG = re.compile(r"\{[A-Za-z0-9_-]{" + str(HASH_TAG_CHARS) + r"}\}")


# ------------------------------------------------------------------ keys (pure logic)


def test_every_key_of_a_user_carries_the_users_tag():
    keys = KeyMaker(SECRET.encode(), "app:", hash_tags=True)
    user = keys.user_generation_key("login", "alice")
    tag = keys.tag_of(user)
    assert TAG.fullmatch(tag) and user.startswith("app:" + tag)
    entry = keys.entry_key("authenticate", [("login", "alice"), ("password", "pw")], None, tag)
    related = [entry, keys.lock_key(entry), keys.login_key("credential-stamp", "alice"),
               keys.login_key("failures", "Alice"),  # the login's normal form: same user
               keys.user_generation_key("login", "ALICE")]
    assert {keys.tag_of(k) for k in related} == {tag}
    # The tag is HMAC output: nothing of the login, and another user's differs.
    assert "alice" not in tag.lower()
    assert keys.tag_of(keys.user_generation_key("login", "bob")) != tag
    # Keys without a user: tags of their own, and the namespace token in copies that spread.
    spread = {keys.tag_of(k) for k in keys.namespace_keys()}
    assert len(spread) == len(keys.namespace_keys()) > 1
    assert keys.namespace_key_for(user) in keys.namespace_keys()
    assert TAG.fullmatch(keys.tag_of(keys.invalidation_epoch_key()))


def test_without_a_proxy_keys_carry_no_tag():
    keys = KeyMaker(SECRET.encode())
    assert "{" not in keys.user_generation_key("login", "alice")
    assert keys.namespace_keys() == [keys.namespace_generation_key()]
    assert keys.tag_of(keys.user_generation_key("login", "alice")) == ""


def test_tagged_keys_fit_memcached_with_the_longest_prefix():
    keys = KeyMaker(SECRET.encode(), "p" * TAGGED_MAX_PREFIX_CHARS, hash_tags=True)
    user = keys.user_generation_key("login", "x" * 10_000)
    entry = keys.entry_key("authenticate", [("login", "x" * 10_000)], None, keys.tag_of(user))
    assert max(len(k) for k in (user, entry, keys.lock_key(entry),
                                keys.login_key("failures", "x"))) <= 250


@pytest.mark.parametrize(("prefix", "why"), [
    ("p" * (TAGGED_MAX_PREFIX_CHARS + 1), "at most 193"),
    ("app{1}:", "no '{' or '}'"),
])
def test_a_prefix_unfit_for_hash_tags_fails_at_load(prefix, why):
    with pytest.raises(ConfigError, match=re.escape(why)) as caught:
        make_plugin(secret=SECRET, authenticator_name="x", memcached_proxy="twemproxy",
                    key_prefix=prefix)
    assert caught.value.option == "key_prefix"


def test_the_proxy_option_is_checked_at_load():
    with pytest.raises(ConfigError, match="expected one of none, twemproxy") as caught:
        make_plugin(secret=SECRET, authenticator_name="x", memcached_proxy="mcrouter")
    assert caught.value.option == "memcached_proxy"


# ------------------------------------------------------------------ a real nutcracker


@contextmanager
def proxied_pool(**options) -> Iterator[tuple[NutcrackerServer, list[MemcachedServer]]]:
    with memcached_servers(3) as backends, NutcrackerServer(
            [b.url for b in backends], timeout_ms=PROXY_TIMEOUT_MS, **options) as proxy:
        yield proxy, backends


@pytest.fixture
def pool():
    with proxied_pool() as found:
        yield found


def login(stack, cred: Cred):
    conn = connect(stack.port)
    try:
        return send(conn, cred)
    finally:
        conn.close()


def holder(proxy: NutcrackerServer, backends: list[MemcachedServer], key: str
           ) -> MemcachedServer:
    found = proxy.backend_for(key, backends)
    assert found is not None, f"{key!r} is on no backend, or on more than one"
    return found


@pytest.mark.parametrize("client", CLIENTS)
def test_logins_hits_invalidation_and_flush_through_nutcracker(
        tmp_path, slapd, pool, client, capsys):
    proxy, backends = pool
    with served(tmp_path, slapd, [proxy], client, PROXIED) as stack:
        for cred in GOOD:
            first, second = login(stack, cred), login(stack, cred)
            assert (first.status, first.userid, first.auth) == (200, cred.userid, "miss")
            assert (second.status, second.userid, second.auth) == (200, cred.userid, "hit")
        wrong = login(stack, Cred("alice, wrong", "alice", "wonderland!"))
        assert wrong.status == 401

        # All of a user's keys on one backend: everything stored with the user's tag.
        region = stack.cache.region
        stored = {b.port: set(b.stored_keys()) for b in backends}
        assert sum(bool(keys) for keys in stored.values()) >= 2, "keys not spread"
        for cred in GOOD:
            tag = region.keys.tag_of(region.user_key("login", cred.login))
            where = {port for port, keys in stored.items() if any(tag in k for k in keys)}
            assert len(where) == 1, f"{cred.label}'s keys on {len(where)} backends"
            tagged = [k for keys in stored.values() for k in keys if tag in k]
            assert len(tagged) >= 3  # its token, its entry, its credential stamp
        assert all(TAG.search(k) for keys in stored.values() for k in keys)

        # Invalidation through the proxy (the CLI, as an operator would).
        assert cli.main(["invalidate", f"{stack.ini}#auth", "alice"]) == 0
        assert login(stack, ALICE).auth == "miss"
        assert login(stack, ALICE).auth == "hit"
        assert login(stack, BOB).auth == "hit"
        # Flush through the proxy: every copy of the namespace token is replaced.
        assert cli.main(["flush", f"{stack.ini}#auth"]) == 0
        for cred in GOOD:
            assert login(stack, cred).auth == "miss"
        capsys.readouterr()

        # check and stats: one line saying what cannot be done behind the proxy, no failure.
        assert cli.main(["check", f"{stack.ini}#auth"]) == 0
        out = capsys.readouterr().out
        line = next(x for x in out.splitlines() if proxy.url in x)
        assert line.split()[0] == "ok" and "twemproxy" in line and "cannot be checked" in line
        assert cli.main(["stats", f"{stack.ini}#auth"]) == 0
        out = capsys.readouterr().out
        assert f"{proxy.url}: behind twemproxy, memcached stats cannot be read" in out
        # The proxy kept every connection: it drops one on stats, and nothing sent one.
        assert proxy.stats()["pool"]["client_err"] == 0


def owned_elsewhere(stack, proxy, backends) -> tuple[Cred, MemcachedServer]:
    """A user and the backend holding their keys, where their copy of the namespace token
    and the near caches' invalidation epoch are on other backends (keys are HMACs of fixed
    data, twemproxy's ring is by backend name: the choice is the same on every run)."""
    region = stack.cache.region
    assert stack.cache.invalidate_user(login="nobody") == []  # writes the epoch
    epoch = holder(proxy, backends, region.epoch_key)
    for cred in (ALICE, BOB, ZOE, CAROL):
        user_key = region.user_key("login", cred.login)
        own = holder(proxy, backends, user_key)
        copy = proxy.backend_for(region.keys.namespace_key_for(user_key), backends)
        if copy is not None and own is not copy and own is not epoch:
            return cred, own
    raise AssertionError("no user whose namespace copy and epoch are on other backends")


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("fault", ["killed", "paused"])
def test_one_backend_lost_under_load(tmp_path, slapd, pool, client, fault):
    """One of three backends fails while users log in through the proxy; a user whose keys
    it holds is invalidated meanwhile. Killed: it comes back empty. Paused (a partition):
    it comes back with the user's old token and entries, which must not be used again."""
    proxy, backends = pool
    chosen: dict[str, object] = {}
    invalidated: dict[str, object] = {}

    def choose_victim() -> None:
        chosen["cred"], chosen["victim"] = owned_elsewhere(stack, proxy, backends)

    def inject() -> None:
        victim = chosen["victim"]
        kill(victim) if fault == "killed" else victim.pause()
        cred = chosen["cred"]
        invalidated["failed"] = stack.cache.invalidate_user(login=cred.login)
        invalidated["counters"] = stack.cache.counters.snapshot()

    def lift() -> None:
        victim = chosen["victim"]
        victim.start() if fault == "killed" else victim.resume()

    with served(tmp_path, slapd, [proxy], client, PROXIED) as stack:
        run = run_scenario(stack, inject, lift, hold=HOLD, after=GRACE + 1.0,
                           before_fault=choose_victim)
        cred = chosen["cred"]
    check_invariants(run, GRACE)
    # The user's token could not be replaced on its backend: their namespace copy was.
    assert invalidated["failed"] == [], invalidated
    assert invalidated["counters"]["invalidation_fallbacks"] >= 1
    check_no_invalidated_hit(run, cred)
    check_cache_recovered(run, GRACE)
    assert proxy.stats()["pool"]["server_ejects"] == 0


def check_no_invalidated_hit(run: Run, cred: Cred) -> None:
    """The user's first answer after the fault was asked of LDAP: nothing stored before the
    invalidation was used (a "hit" first would be the old entry, from the old token)."""
    t = run.timeline
    after = run.select(lambda r: r.cred == cred and r.sent >= t.fault_on and r.status == 200)
    assert after, run.describe(f"no login of {cred.label} after the fault", run.results)
    assert after[0].auth == "miss", run.describe(
        f"{cred.label}'s first login after the invalidation was a {after[0].auth}", after)
    before_back = [r for r in after if r.done <= t.lift_begin]
    assert all(r.auth != "hit" for r in before_back), run.describe(
        "a cache hit for the invalidated user while their backend was down", before_back)


def test_the_templates_sample_nutcracker_yml_is_valid_and_safe():
    """The template's nutcracker.yml: nutcracker accepts it, and it has the settings this
    module's tests depend on (hash tags, a backend timeout, no ejection)."""
    import subprocess
    from pathlib import Path

    import repoze_who_memcached.paster_templates as templates

    sample = Path(templates.__file__).parent / "repoze_who_memcached_ldap" / "nutcracker.yml"
    checked = subprocess.run(["/usr/sbin/nutcracker", "-t", "-c", str(sample)],
                             capture_output=True, text=True, timeout=10)
    assert "syntax is ok" in checked.stdout + checked.stderr
    text = sample.read_text()
    for line in ('hash_tag: "{}"', "auto_eject_hosts: false", "timeout: 400"):
        assert f"\n  {line}\n" in text
