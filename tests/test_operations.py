"""Running it in production: invalidation, negative caching, coalescing, locks, stale entries,
counters and the CLI, against a real memcached (and several processes sharing it)."""

from __future__ import annotations

import itertools
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from backends_for_tests import CountingAuthenticator, CountingMetadata
from conftest import SECRET, run_at_once
from test_plugin import _entry_keys, login, plugin_for

from repoze_who_memcached import BackendUnavailable
from repoze_who_memcached.cli import main as cli_main
from repoze_who_memcached.plugin import ENVIRON_KEY

TESTS = Path(__file__).parent
WORKER = TESTS / "proc_worker.py"


def run_worker(memcached, *args: str, timeout: float = 30) -> dict:
    out = subprocess.run(
        [sys.executable, str(WORKER), memcached.url, SECRET, *args],
        capture_output=True, text=True, timeout=timeout, check=True,
    ).stdout.splitlines()
    return json.loads(out[-1])


# ------------------------------------------------------------------ invalidation


def test_invalidate_user_drops_every_password_variant(memcached):
    backend = CountingAuthenticator()
    plugin = plugin_for(memcached, backend, negative_ttl="60")
    login(plugin, "alice", "wonderland")
    login(plugin, "alice", "old-password")  # a cached denial
    login(plugin, "bob", "builder")
    assert backend.calls == 3
    plugin.invalidate_user(login="alice")
    login(plugin, "alice", "wonderland")
    login(plugin, "alice", "old-password")
    login(plugin, "bob", "builder")  # bob is untouched
    assert backend.calls == 5
    assert plugin.counters.snapshot()["invalidations"] == 1


def test_invalidation_ignores_login_case(memcached):
    backend = CountingAuthenticator(users={"Alice": "pw-secret", "alice": "pw-secret"})
    plugin = plugin_for(memcached, backend)
    login(plugin, "Alice", "pw-secret")
    plugin.invalidate_user(login="alice")
    login(plugin, "Alice", "pw-secret")
    assert backend.calls == 2


def test_invalidate_metadata_by_userid(memcached):
    md = CountingMetadata()
    plugin = plugin_for(memcached, mdprovider=md, authenticator_name="", mdprovider_name="md")
    plugin.add_metadata({}, {"repoze.who.userid": "u1"})
    plugin.add_metadata({}, {"repoze.who.userid": "u2"})
    plugin.invalidate_user(userid="u1")
    plugin.add_metadata({}, {"repoze.who.userid": "u1"})
    plugin.add_metadata({}, {"repoze.who.userid": "u2"})
    assert md.calls == 3


def test_invalidate_all_spares_other_applications(memcached):
    memcached.set_raw("other-app-key", b"precious")
    backend = CountingAuthenticator()
    plugin = plugin_for(memcached, backend)
    login(plugin, "alice", "wonderland")
    login(plugin, "bob", "builder")
    plugin.invalidate_all()
    login(plugin, "alice", "wonderland")
    login(plugin, "bob", "builder")
    assert backend.calls == 4
    assert memcached.get_raw("other-app-key") == b"precious"


def test_evicted_generation_cannot_resurrect_invalidated_entries(memcached):
    """Tokens are random and an entry needs its token present: eviction only costs misses."""
    backend = CountingAuthenticator()
    plugin = plugin_for(memcached, backend)
    login(plugin)
    entries = set(_entry_keys(memcached))
    generations = [k for k in memcached.stored_keys() if k not in entries]
    plugin.invalidate_user(login="alice")
    for key in generations:  # as if memcached evicted the generation tokens
        memcached.raw_command(f"delete {key}\r\n".encode())
    login(plugin)
    assert backend.calls == 2


def test_invalidation_reaches_other_processes(memcached):
    """Another app server stores alice; we use its entry; we invalidate; it misses again."""
    assert run_worker(memcached)["calls"] == 1
    backend = CountingAuthenticator()
    plugin = plugin_for(memcached, backend)
    assert login(plugin)[0] == "user:alice"
    assert backend.calls == 0  # the other process's entry
    plugin.invalidate_user(login="alice")
    assert run_worker(memcached)["calls"] == 1


# ------------------------------------------------------------------ negative caching


def test_negative_caching(memcached):
    backend = CountingAuthenticator()
    plugin = plugin_for(memcached, backend, negative_ttl="1")
    for _ in range(5):
        userid, _, environ = login(plugin, "alice", "guess")
        assert userid is None
    assert backend.calls == 1
    assert environ[ENVIRON_KEY]["cache"]["authenticate"] == "negative_hit"
    assert plugin.counters.snapshot()["negative_hits"] == 4
    assert login(plugin)[0] == "user:alice"  # the right password is another key
    time.sleep(2.1)
    login(plugin, "alice", "guess")
    assert backend.calls == 3


def test_backend_error_is_never_cached_as_denial(memcached):
    backend = CountingAuthenticator()
    plugin = plugin_for(memcached, backend, negative_ttl="60")
    backend.fail_with = BackendUnavailable("ldap down")
    assert login(plugin)[0] is None
    backend.fail_with = None
    assert login(plugin)[0] == "user:alice"
    assert backend.calls == 2


# ------------------------------------------------------------------ one call for many misses


def test_fifty_threads_missing_at_once_make_one_backend_call(memcached):
    backend = CountingAuthenticator(delay=0.3)
    plugin = plugin_for(memcached, backend)
    answers = run_at_once(50, lambda: login(plugin)[:2])
    results = [userid for userid, _ in answers]
    identities = [identity for _, identity in answers]
    assert backend.calls == 1
    assert results == ["user:alice"] * 50
    assert all(i["email"] == "alice@example.org" for i in identities)
    assert plugin.counters.snapshot()["coalesced"] >= 1


def test_coalesced_failure_is_shared_not_cached(memcached):
    backend = CountingAuthenticator(delay=0.3)
    backend.fail_with = BackendUnavailable("down")
    plugin = plugin_for(memcached, backend)
    results: list = []
    threads = [threading.Thread(target=lambda: results.append(login(plugin)[0]))
               for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [None] * 10
    assert backend.calls < 10
    backend.fail_with = None
    assert login(plugin)[0] == "user:alice"


def test_lock_makes_one_backend_call_across_processes(memcached):
    start_at = f"{time.time() + 2.0:.3f}"
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), memcached.url, SECRET, "--threads", "10",
             "--start-at", start_at, "--delay", "0.5", "--lock-timeout", "5"],
            stdout=subprocess.PIPE, text=True,
        )
        for _ in range(3)
    ]
    outputs = [json.loads(p.communicate(timeout=30)[0].splitlines()[-1]) for p in procs]
    assert sum(o["calls"] for o in outputs) == 1
    assert all(o["results"] == ["user:alice"] * 10 for o in outputs)


def test_without_lock_each_process_calls_once(memcached):
    start_at = f"{time.time() + 2.0:.3f}"
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), memcached.url, SECRET, "--threads", "10",
             "--start-at", start_at, "--delay", "0.5"],
            stdout=subprocess.PIPE, text=True,
        )
        for _ in range(2)
    ]
    outputs = [json.loads(p.communicate(timeout=30)[0].splitlines()[-1]) for p in procs]
    assert [o["calls"] for o in outputs] == [1, 1]


def test_killed_lock_holder_blocks_nobody_past_lock_timeout(memcached):
    holder = subprocess.Popen(
        [sys.executable, str(WORKER), memcached.url, SECRET, "--delay", "60",
         "--lock-timeout", "2"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 15
        while not memcached.stored_keys():  # the holder's lock (and generations) appear
            assert time.monotonic() < deadline, "the holder never took the lock"
            time.sleep(0.05)
        time.sleep(0.2)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    backend = CountingAuthenticator()
    plugin = plugin_for(memcached, backend, lock_timeout="2")
    started = time.monotonic()
    assert login(plugin)[0] == "user:alice"
    waited = time.monotonic() - started
    assert backend.calls == 1
    assert waited < 4.5  # at most lock_timeout, plus memcached's whole-second clock
    assert plugin.counters.snapshot()["lock_waits"] == 1


# ------------------------------------------------------------------ stale entries


def test_stale_entry_served_while_backend_down(memcached, caplog):
    backend = CountingAuthenticator()
    plugin = plugin_for(memcached, backend, ttl="1", stale_ttl="30")
    login(plugin)
    time.sleep(1.2)
    backend.fail_with = BackendUnavailable("ldap down")
    with caplog.at_level(logging.WARNING, "repoze_who_memcached"):
        userid, identity, environ = login(plugin)
    assert userid == "user:alice"
    assert identity["email"] == "alice@example.org"
    assert environ[ENVIRON_KEY]["cache"]["authenticate"] == "stale"
    assert "serving an entry expired" in caplog.text
    assert plugin.counters.snapshot()["stale_served"] == 1
    # Never a wrong password, never a denial turned into a login.
    assert login(plugin, password="wrong")[0] is None
    # Never an invalidated user.
    plugin.invalidate_user(login="alice")
    assert login(plugin)[0] is None


def test_stale_off_by_default(memcached):
    backend = CountingAuthenticator()
    plugin = plugin_for(memcached, backend, ttl="1")
    login(plugin)
    time.sleep(1.2)
    backend.fail_with = BackendUnavailable("ldap down")
    assert login(plugin)[0] is None


def test_stale_never_for_a_cached_denial(memcached):
    backend = CountingAuthenticator()
    plugin = plugin_for(memcached, backend, negative_ttl="1", stale_ttl="60")
    login(plugin, password="wrong")
    time.sleep(1.2)
    backend.fail_with = BackendUnavailable("ldap down")
    assert login(plugin, password="wrong")[0] is None


# ------------------------------------------------------------------ counters


def test_counters_logged_periodically(memcached, caplog):
    plugin = plugin_for(memcached, CountingAuthenticator(), stats_log_interval="0.2")
    with caplog.at_level(logging.INFO, "repoze_who_memcached"):
        login(plugin)
        time.sleep(0.25)
        login(plugin)
    assert "cache cache counters: hits=1 misses=1" in caplog.text


def test_counters_are_exact_under_threads_and_snapshots():
    from repoze_who_memcached.counters import Counters

    counters = Counters("exact", logging.getLogger("test"), 0)
    hits = counters.counter("local_hits")
    seen: list[dict] = []

    def count() -> None:
        for _ in range(20_000):
            counters.incr("hits")
            next(hits)

    def watch() -> None:
        for _ in range(200):
            seen.append(counters.snapshot())

    threads = [threading.Thread(target=count) for _ in range(8)]
    threads.append(threading.Thread(target=watch))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    final = counters.snapshot()
    assert final["hits"] == final["local_hits"] == 8 * 20_000
    assert final["misses"] == 0
    # Reading never counts: snapshots only grow, and never past the truth.
    assert all(a["hits"] <= b["hits"] <= final["hits"] for a, b in itertools.pairwise(seen))
    assert counters.snapshot() == final


def test_near_cache_hits_are_in_the_periodic_summary(memcached, caplog):
    plugin = plugin_for(memcached, CountingAuthenticator(), stats_log_interval="0.2",
                        local_ttl="60", local_check_interval="0.1")
    with caplog.at_level(logging.INFO, "repoze_who_memcached"):
        login(plugin)
        login(plugin)
        time.sleep(0.25)
        login(plugin)  # its epoch check finds the summary due
    assert "misses=1" in caplog.text and "local_hits=1" in caplog.text


def test_prometheus_export(memcached):
    from prometheus_client import REGISTRY, generate_latest

    plugin = plugin_for(memcached, CountingAuthenticator(), prometheus="true", name="promtest")
    login(plugin)
    login(plugin)
    text = generate_latest(REGISTRY).decode()
    assert 'repoze_who_memcached_hits_total{plugin="promtest"} 1.0' in text
    assert 'repoze_who_memcached_misses_total{plugin="promtest"} 1.0' in text


# ------------------------------------------------------------------ CLI


def write_app_ini(tmp_path: Path, url: str, extra: str = "") -> Path:
    path = tmp_path / "app.ini"
    path.write_text(textwrap.dedent(f"""
        [app:demo]
        use = egg:repoze_who_memcached#demo

        [filter:auth]
        use = egg:repoze_who_memcached
        authenticator = backends_for_tests:make_authenticator
        memcached_urls = {url}
        secret = {SECRET}
        {extra}

        [pipeline:main]
        pipeline = auth demo
    """))
    return path


def cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(TESTS))
    script = Path(sys.executable).parent / "repoze-who-memcached"
    return subprocess.run([str(script), *args], capture_output=True, text=True, env=env,
                          timeout=60)


def test_cli_help():
    result = cli("--help")
    assert result.returncode == 0
    for command in ("check", "invalidate", "flush", "stats"):
        assert command in result.stdout
    assert "FILE#SECTION" in result.stdout


def test_cli_check_reports_servers_and_weak_settings(tmp_path, memcached, private_memcached):
    private_memcached.stop()
    ini = write_app_ini(tmp_path, f"{memcached.url} {private_memcached.url}")
    result = cli("check", str(ini))
    assert result.returncode == 1, result.stderr
    assert f"ok    {memcached.url}  memcached 1." in result.stdout
    assert f"DOWN  {private_memcached.url}" in result.stdout
    assert "prefer secret_file" in result.stdout
    ok = cli("check", f"{write_app_ini(tmp_path, memcached.url)}#auth")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "key_items" not in ok.stdout
    risky = cli("check", str(write_app_ini(tmp_path, memcached.url, "key_items = login")))
    assert "the password does not key cached logins" in risky.stdout


def test_cli_errors_are_one_clear_line(tmp_path):
    missing = cli("check", str(tmp_path / "nope.ini"))
    assert missing.returncode == 2
    assert missing.stderr.strip().count("\n") == 0
    assert "no such file" in missing.stderr
    bad = write_app_ini(tmp_path, "127.0.0.1:1", "ttl = forever")
    result = cli("check", str(bad))
    assert result.returncode == 2
    assert "'ttl'" in result.stderr and result.stderr.strip().count("\n") == 0
    section = cli("check", f"{bad}#nosuch")
    assert section.returncode == 2 and "nosuch" in section.stderr


def test_cli_invalidate_and_flush_reach_the_running_app(tmp_path, memcached):
    ini = write_app_ini(tmp_path, memcached.url)
    from paste.deploy import loadapp
    from test_pipeline import basic
    from webtest import TestApp

    app = TestApp(loadapp(f"config:{ini}"))

    def outcome():
        body = app.get("/?format=json", headers=basic("alice", "wonderland")).json
        return body["cache"]["cache"]["authenticate"]

    assert outcome() == "miss"
    assert outcome() == "hit"
    result = cli("invalidate", str(ini), "alice")
    assert result.returncode == 0, result.stderr
    assert "invalidated login 'alice'" in result.stdout
    assert outcome() == "miss"
    assert outcome() == "hit"
    assert cli("flush", str(ini)).returncode == 0
    assert outcome() == "miss"


def test_cli_stats(tmp_path, memcached):
    ini = write_app_ini(tmp_path, memcached.url)
    result = cli("stats", str(ini))
    assert result.returncode == 0, result.stderr
    assert "curr_items" in result.stdout and "version" in result.stdout


def test_cli_in_process_for_who_ini(tmp_path, memcached, capsys):
    who = tmp_path / "who.ini"
    who.write_text(textwrap.dedent(f"""
        [plugin:basicauth]
        use = repoze.who.plugins.basicauth:make_plugin
        realm = r

        [plugin:backend]
        use = backends_for_tests:make_authenticator

        [plugin:cached]
        use = repoze_who_memcached:make_plugin
        authenticator_name = backend
        memcached_urls = {memcached.url}
        secret = {SECRET}

        [identifiers]
        plugins = basicauth

        [authenticators]
        plugins = cached

        [challengers]
        plugins = basicauth
    """))
    assert cli_main(["invalidate", f"{who}#cached", "alice"]) == 0
    assert "cache 'cached': invalidated login 'alice'" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [[], ["bogus"]])
def test_cli_usage_errors(argv):
    with pytest.raises(SystemExit) as exc:
        cli_main(argv)
    assert exc.value.code == 2


def test_late_leader_looks_again_before_calling_the_backend(memcached, monkeypatch):
    """A request that missed just before another server stored the answer, and becomes
    leader just after, uses that answer instead of asking the backend again."""
    CountingAuthenticator()
    first_backend, second_backend = CountingAuthenticator(), CountingAuthenticator()
    first = plugin_for(memcached, first_backend)
    second = plugin_for(memcached, second_backend)
    real_get_multi = second.backend.get_multi
    reads = []

    def get_multi_racing(keys, route):
        reads.append(keys)
        if len(reads) == 1:  # our first read happens before the other server stores...
            found = real_get_multi(keys, route)
            login(first)  # ...which it does right now
            return {k: v for k, v in found.items() if k != keys[0]}
        return real_get_multi(keys, route)

    monkeypatch.setattr(second.backend, "get_multi", get_multi_racing)
    userid, identity, _ = login(second)
    assert userid == "user:alice" and identity["email"] == "alice@example.org"
    assert (first_backend.calls, second_backend.calls) == (1, 0)


def test_lock_timeout_adds_no_wait_when_memcached_is_down(private_memcached):
    backend = CountingAuthenticator()
    plugin = plugin_for(private_memcached, backend, lock_timeout="5", dead_retry="0")
    private_memcached.stop()
    started = time.monotonic()
    for _ in range(3):
        assert login(plugin)[0] == "user:alice"
    assert time.monotonic() - started < 3  # not 3 x lock_timeout
    assert plugin.counters.snapshot()["lock_waits"] == 0


@pytest.mark.parametrize("client", ["python-memcached", "pymemcache"])
def test_many_threads_no_cache_errors(memcached, client):
    """More threads than any pool: no client-side limit shows up as a cache error, and a
    lost add race (a held lock) is not an error either."""
    backend = CountingAuthenticator(delay=0.2)
    plugin = plugin_for(memcached, backend, memcached_client=client, lock_timeout="5")
    results = run_at_once(64, lambda: login(plugin)[0])
    assert results == ["user:alice"] * 64
    assert backend.calls == 1
    assert plugin.counters.snapshot()["cache_errors"] == 0


def _lock_key_for(plugin, user, password):
    items = sorted({"login": user, "password": password}.items())
    head = plugin._entry_heads["authenticate"]
    entry_key = plugin.region.keys.entry_key("authenticate", items, head)
    route = plugin.region.route_for(("login", user))
    return plugin.region.keys.lock_key(entry_key), route


def test_waiter_stops_when_the_holder_releases_without_storing(memcached):
    """Another process holds the lock and stores nothing (a denial without negative_ttl):
    our waiter goes ahead once the lock is gone, not after lock_timeout."""
    backend = CountingAuthenticator()
    plugin = plugin_for(memcached, backend, lock_timeout="10")
    lock_key, route = _lock_key_for(plugin, "alice", "wrong")
    assert plugin.backend.add(lock_key, b"another-process!", 10, route)
    threading.Timer(0.5, lambda: plugin.backend.delete(lock_key, route)).start()
    started = time.monotonic()
    assert login(plugin, "alice", "wrong")[0] is None
    assert time.monotonic() - started < 3
    assert plugin.counters.snapshot()["lock_waits"] == 1


def test_a_lock_this_process_failed_to_release_is_not_waited_for(memcached):
    backend = CountingAuthenticator()
    plugin = plugin_for(memcached, backend, lock_timeout="10")
    lock_key, route = _lock_key_for(plugin, "alice", "wonderland")
    assert plugin.backend.add(lock_key, plugin.region.lock_token, 10, route)  # left behind
    started = time.monotonic()
    assert login(plugin)[0] == "user:alice"
    assert time.monotonic() - started < 2
    assert plugin.counters.snapshot()["lock_waits"] == 0
