"""After a deploy (issue 13), against real memcached and slapd: the latest password wins,
the lockout shield, refresh-ahead, secret rotation without a cold cache, jittered expiry."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from backends_for_tests import CountingAuthenticator
from conftest import SECRET
from ldap_fixtures import change_password, ldap_options
from test_plugin import login, plugin_for

from repoze_who_memcached import make_plugin
from repoze_who_memcached.ldap import make_authenticator
from repoze_who_memcached.plugin import ENVIRON_KEY

ALICE_DN = "uid=alice,ou=people,dc=example,dc=org"




def ldap_cache(slapd, memcached, **options):
    ldap = make_authenticator(**ldap_options(slapd))
    return make_plugin(authenticator=ldap, secret=SECRET, memcached_urls=memcached.url,
                       name="cache", **options)


def outcome(plugin, user: str, password: str) -> tuple[object, str]:
    environ: dict = {}
    userid = plugin.authenticate(environ, {"login": user, "password": password})
    return userid, environ[ENVIRON_KEY]["cache"]["authenticate"]


# -- 1. the latest password wins ----------------------------------------------------------

@pytest.mark.parametrize("near", [False, True])
def test_latest_password_wins_on_every_app_server(near, private_slapd, memcached):
    options = {"ttl": "300"}
    if near:
        options.update(local_ttl="60", local_check_interval="0.2")
    one = ldap_cache(private_slapd, memcached, **options)
    two = ldap_cache(private_slapd, memcached, **options)  # another app server
    assert outcome(one, "alice", "wonderland") == (ALICE_DN, "miss")
    assert outcome(two, "alice", "wonderland") == (ALICE_DN, "hit")
    change_password(private_slapd, ALICE_DN, "looking-glass")
    assert outcome(two, "alice", "looking-glass") == (ALICE_DN, "miss")  # the backend says yes
    if near:
        time.sleep(0.3)  # near caches drop what they hold within local_check_interval
    for server in (one, two):
        assert outcome(server, "alice", "wonderland")[0] is None  # no ttl wait, no invalidate
        assert outcome(server, "alice", "looking-glass")[0] == ALICE_DN
    assert two.counters.snapshot()["password_changes"] == 1


def test_the_same_password_again_changes_nothing(memcached):
    backend = CountingAuthenticator()
    plugin = plugin_for(memcached, backend, ttl="300")
    login(plugin, "alice", "wonderland", extra_item="a")
    login(plugin, "alice", "wonderland", extra_item="b")  # another entry, same password
    assert login(plugin, "alice", "wonderland", extra_item="a")[2][ENVIRON_KEY]["cache"][
        "authenticate"] == "hit"
    assert plugin.counters.snapshot()["password_changes"] == 0


def test_latest_password_wins_can_be_turned_off(memcached):
    users = {"alice": "old"}
    backend = CountingAuthenticator(users=users)
    plugin = plugin_for(memcached, backend, ttl="300", password_item="")
    login(plugin, "alice", "old")
    backend.users["alice"] = "new"
    login(plugin, "alice", "new")
    assert login(plugin, "alice", "old")[0] == "user:alice"  # still cached: off means off


# -- 2. the lockout shield ----------------------------------------------------------------

def test_lockout_shield_across_three_app_processes(private_slapd, memcached):
    """20 wrong passwords spread over 3 processes with max_failures = 5: at most 5 reach
    slapd, and the right password still gets in from the cache."""
    cache = ldap_cache(private_slapd, memcached, max_failures="5")
    assert outcome(cache, "alice", "wonderland") == (ALICE_DN, "miss")  # cached before
    binds_before = _alice_bind_attempts(private_slapd)
    start_at = time.time() + 1.0
    worker = Path(__file__).with_name("shield_worker.py")
    options = ldap_options(private_slapd)
    processes = [
        subprocess.Popen(
            [sys.executable, str(worker), memcached.url, SECRET, options["url"],
             options["base_dn"], options["bind_dn"], options["bind_password"], "alice",
             str(attempts), str(start_at)],
            stdout=subprocess.PIPE, text=True)
        for attempts in (7, 7, 6)
    ]
    results = [json.loads(p.communicate(timeout=60)[0]) for p in processes]
    answers = [a for r in results for a in r["answers"]]
    assert answers == [None] * 20  # never a wrong login
    reached = _alice_bind_attempts(private_slapd) - binds_before
    assert reached <= 5, reached
    assert sum(r["counters"]["shield_refusals"] for r in results) >= 15
    # The right password is still served from the cache: the shield cannot lock her out.
    assert outcome(cache, "alice", "wonderland") == (ALICE_DN, "hit")


def _alice_bind_attempts(slapd) -> int:
    slapd.bind_count()  # waits for a quiet log
    return sum(1 for line in slapd.read_log().splitlines()
               if f'BIND dn="{ALICE_DN}"' in line)


def test_a_right_password_at_the_backend_clears_the_count(memcached, caplog):
    backend = CountingAuthenticator()
    plugin = plugin_for(memcached, backend, max_failures="3", failure_window="60")
    for _ in range(2):
        assert login(plugin, "alice", "wrong")[0] is None
    assert login(plugin, "alice", "wonderland")[0] == "user:alice"  # clears the count
    for _ in range(3):
        login(plugin, "alice", f"wrong-{secrets.token_hex(4)}")
    calls = backend.calls
    assert login(plugin, "alice", "wrong-again")[2][ENVIRON_KEY]["cache"][
        "authenticate"] == "refused"
    assert backend.calls == calls  # refused without asking
    assert login(plugin, "alice", "wonderland")[0] == "user:alice"  # cached: still served
    assert login(plugin, "bob", "builder")[0] == "user:bob"  # other logins are not shielded
    warnings = [r for r in caplog.records if "denials within" in r.getMessage()]
    assert len(warnings) == 1  # once per login per window


class NamedDirectory(CountingAuthenticator):
    """A CountingAuthenticator that says which directory it is (its cache fingerprint)."""

    def __init__(self, directory: str) -> None:
        super().__init__()
        self.directory = directory

    def cache_fingerprint(self) -> str:
        return self.directory


def test_denials_at_one_directory_do_not_shield_another(memcached):
    """Two caches under one secret and key_prefix in front of two directories share no
    entries; nor may they share failure counts: denials of "alice" at one directory must not
    refuse the right password of another directory's "alice" without asking it."""
    one, two = NamedDirectory("ldap://one"), NamedDirectory("ldap://two")
    cache_one = plugin_for(memcached, one, max_failures="2", failure_window="60")
    cache_two = plugin_for(memcached, two, max_failures="2", failure_window="60")
    for _ in range(3):
        login(cache_one, "alice", f"wrong-{secrets.token_hex(4)}")
    assert login(cache_one, "alice", "wrong-again")[2][ENVIRON_KEY]["cache"][
        "authenticate"] == "refused"
    userid, _, environ = login(cache_two, "alice", "wonderland")
    assert environ[ENVIRON_KEY]["cache"]["authenticate"] == "miss"
    assert userid == "user:alice"
    assert two.calls == 1
    # The same directory in another "process" shares the count.
    again = plugin_for(memcached, NamedDirectory("ldap://one"), max_failures="2",
                       failure_window="60")
    assert login(again, "alice", "wrong-once-more")[2][ENVIRON_KEY]["cache"][
        "authenticate"] == "refused"


# -- 3. refresh-ahead ---------------------------------------------------------------------

def test_refresh_ahead_keeps_hot_users_warm(memcached):
    backend = CountingAuthenticator()
    ttl = 3
    plugin = plugin_for(memcached, backend, ttl=str(ttl), refresh_ahead="0.25",
                        ttl_jitter="0")
    users = ["alice", "bob", "zoë"]
    passwords = {"alice": "wonderland", "bob": "builder", "zoë": "pässwörd"}
    for user in users:
        assert login(plugin, user, passwords[user])[2][ENVIRON_KEY]["cache"][
            "authenticate"] == "miss"
    outcomes = []
    started = time.monotonic()
    duration = 2.2 * ttl  # across two ttl periods
    while time.monotonic() - started < duration:
        for user in users:
            userid, _, environ = login(plugin, user, passwords[user])
            assert userid == f"user:{user}"
            outcomes.append(environ[ENVIRON_KEY]["cache"]["authenticate"])
        time.sleep(0.05)
    assert set(outcomes) == {"hit"}, {o: outcomes.count(o) for o in set(outcomes)}
    assert plugin.counters.snapshot()["refreshes"] >= len(users) * 2
    # About once per user per ttl: the first call, then one refresh per 0.75 * ttl.
    assert backend.calls <= len(users) * (1 + duration / (0.75 * ttl) + 1)


def test_refresh_ahead_drops_an_entry_the_backend_now_denies(memcached):
    backend = CountingAuthenticator()
    plugin = plugin_for(memcached, backend, ttl="2", refresh_ahead="0.9", ttl_jitter="0")
    login(plugin)
    backend.users["alice"] = "changed"
    login(plugin)  # a hit in the refresh window: answered, and re-checked in the background
    deadline = time.monotonic() + 5
    while plugin.counters.snapshot()["refreshes"] == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.1)
    assert login(plugin)[0] is None  # the entry was dropped: asked, and denied


def test_refresh_keeps_the_entry_when_the_backend_fails(memcached):
    backend = CountingAuthenticator()
    plugin = plugin_for(memcached, backend, ttl="3", refresh_ahead="0.9", ttl_jitter="0")
    login(plugin)
    backend.fail_with = RuntimeError("directory down")
    login(plugin)
    time.sleep(0.3)
    assert login(plugin)[2][ENVIRON_KEY]["cache"]["authenticate"] == "hit"


# -- 4. secret rotation -------------------------------------------------------------------

def test_rotating_the_secret_keeps_the_cache_warm(memcached):
    old = "rotated-out-" + secrets.token_urlsafe(32)
    new = "rotated-in-" + secrets.token_urlsafe(32)
    backend = CountingAuthenticator()
    before = plugin_for(memcached, backend, secret=old)
    for user, password in (("alice", "wonderland"), ("bob", "builder")):
        login(before, user, password)
    calls = backend.calls
    during = plugin_for(memcached, backend, secret=new, previous_secrets=old)
    for _ in range(2):  # found under the old secret, then under the new one
        assert login(during, "alice", "wonderland")[2][ENVIRON_KEY]["cache"][
            "authenticate"] == "hit"
    assert backend.calls == calls  # no login reached the backend
    assert during.counters.snapshot()["rotated_hits"] == 1
    after = plugin_for(memcached, backend, secret=new)  # the previous secret dropped
    assert login(after, "alice", "wonderland")[2][ENVIRON_KEY]["cache"]["authenticate"] == "hit"
    assert login(after, "bob", "builder")[2][ENVIRON_KEY]["cache"]["authenticate"] == "miss"


def test_invalidation_acts_under_every_listed_secret(memcached):
    old = "rotated-out-" + secrets.token_urlsafe(32)
    backend = CountingAuthenticator()
    login(plugin_for(memcached, backend, secret=old))
    during = plugin_for(memcached, backend, previous_secrets=old)
    during.invalidate_user(login="alice")
    assert login(during)[2][ENVIRON_KEY]["cache"]["authenticate"] == "miss"


def test_previous_secret_files(tmp_path, memcached):
    path = tmp_path / "old-secret"
    path.write_text("rotated-out-" + secrets.token_urlsafe(32) + "\n")
    plugin = make_plugin(secret=SECRET, memcached_urls=memcached.url,
                         authenticator=CountingAuthenticator(),
                         previous_secret_files=str(path))
    assert len(plugin.region.previous) == 1


# -- 5. jittered expiry -------------------------------------------------------------------

def test_entries_stored_together_do_not_expire_together(memcached):
    backend = CountingAuthenticator(users={f"u{n}": "pw" for n in range(40)})
    plugin = plugin_for(memcached, backend, ttl="100", ttl_jitter="0.1")
    stored_at = time.time()
    for n in range(40):
        login(plugin, f"u{n}", "pw")
    expiries = []
    for key in memcached.stored_keys():
        raw = memcached.get_raw(key)
        try:
            record = plugin.region.sealer.open(key, raw)
        except ValueError:
            continue
        if "x" in record:
            expiries.append(record["x"] - stored_at)
    assert len(expiries) == 40
    assert all(89 <= e <= 100.5 for e in expiries), (min(expiries), max(expiries))
    assert max(expiries) - min(expiries) > 1  # spread out, never longer than ttl


@pytest.mark.parametrize("client", ["python-memcached", "pymemcache"])
def test_concurrent_logins_with_the_shield_are_bounded(client, memcached):
    """Many threads at once, all wrong: still at most max_failures reach the backend."""
    backend = CountingAuthenticator()
    plugin = plugin_for(memcached, backend, max_failures="4", memcached_client=client)
    barrier = threading.Barrier(16)

    def attempt(n: int) -> None:
        barrier.wait()
        assert login(plugin, "alice", f"wrong-{n}")[0] is None

    threads = [threading.Thread(target=attempt, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert backend.calls <= 4


# -- 6. check: the summary says each setting; settings that defeat each other -------------

def test_check_summary_and_conflicting_settings(tmp_path, memcached, capsys):
    from repoze_who_memcached.cli import conflicting_settings, main

    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET)
    secret_file.chmod(0o600)
    ini = tmp_path / "who.ini"
    ini.write_text(f"""
[plugin:cached]
use = repoze_who_memcached:make_plugin
memcached_urls = {memcached.url}
secret_file = {secret_file}
authenticator = backends_for_tests:make_authenticator
ttl = 60
refresh_ahead = 0.2
local_ttl = 55
stale_ttl = 30
password_item =
max_failures = 5
failure_window = 120

[identifiers]
plugins = basicauth
[authenticators]
plugins = cached
[plugin:basicauth]
use = repoze_who_memcached.basicauth:make_plugin
""")
    assert main(["check", str(ini)]) == 0
    out = capsys.readouterr().out
    for setting in ("ttl_jitter=0.1", "refresh_ahead=0.2", "password_item=off",
                    "max_failures=5", "failure_window=120s", "local_ttl=55s",
                    "previous_secrets=0"):
        assert setting in out, setting
    assert "refresh_ahead rarely sees one" in out
    assert "old password is served stale" in out
    quiet = plugin_for(memcached, CountingAuthenticator(), refresh_ahead="0.2")
    assert conflicting_settings(quiet) == []


def test_rotation_across_servers_reads_both_secrets_in_one_round_trip(three_memcached):
    """A user's keys are routed the same under every secret, so the old entry is on the server
    the new lookup asks, in the same get; no login reaches the backend."""
    old = "rotated-out-" + secrets.token_urlsafe(32)
    urls = " ".join(s.url for s in three_memcached)
    users = {f"user{n}": f"pw-{n}" for n in range(30)}
    backend = CountingAuthenticator(users=users)
    before = make_plugin(secret=old, memcached_urls=urls, authenticator=backend)
    for user, password in users.items():
        login(before, user, password)
    calls = backend.calls
    during = make_plugin(secret=SECRET, memcached_urls=urls, authenticator=backend,
                         previous_secrets=old)
    gets = []
    real_get_multi = during.backend.get_multi

    def counting_get_multi(keys, route):
        gets.append(len(keys))
        return real_get_multi(keys, route)

    during.backend.get_multi = counting_get_multi
    for user, password in users.items():
        gets.clear()
        environ = login(during, user, password)[2]
        assert environ[ENVIRON_KEY]["cache"]["authenticate"] == "hit", user
        assert len(gets) == 1, gets  # one round trip, old secret included
    assert backend.calls == calls
    assert during.counters.snapshot()["rotated_hits"] == len(users)
