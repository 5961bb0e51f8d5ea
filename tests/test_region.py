"""The cache core on its own, against a real memcached: no repoze.who anywhere."""

from __future__ import annotations

import ast
import logging
import threading
import time
from pathlib import Path

from conftest import SECRET, run_at_once

from repoze_who_memcached.backends import BACKENDS, BackendSettings, ServerAddress
from repoze_who_memcached.counters import Counters
from repoze_who_memcached.region import CacheRegion, Outcome

PACKAGE = Path(__file__).parent.parent / "repoze_who_memcached"


def region_for(memcached, secret: str = SECRET, **options) -> CacheRegion:
    settings = BackendSettings(servers=(ServerAddress.parse(memcached.url),))
    backend = BACKENDS["python-memcached"](settings, lambda server, message: None)
    counters = Counters("region", logging.getLogger("test"))
    return CacheRegion(secret=secret.encode(), backend=backend, counters=counters, **options)


class Creator:
    """The caller's ``create``: counts its calls, answers what it is told."""

    def __init__(self, answer: Outcome, delay: float = 0.0):
        self.answer = answer
        self.delay = delay
        self.calls = 0
        self._lock = threading.Lock()

    def __call__(self) -> Outcome:
        with self._lock:
            self.calls += 1
        if self.delay:
            time.sleep(self.delay)
        return Outcome(self.answer.userid, dict(self.answer.values or {}), self.answer.failed,
                       self.answer.positive)


def ask(region: CacheRegion, create, items=(("login", "alice"), ("password", "pw"))):
    head = region.keys.entry_head("authenticate", b"backend")
    return region.get_or_create(head, list(items), ("login", "alice"), None,
                                create)


def test_miss_then_hit(memcached):
    region = region_for(memcached)
    create = Creator(Outcome("alice", {"groups": ["staff"]}, positive=True))
    assert ask(region, create) == ("miss", "alice", {"groups": ["staff"]})
    assert ask(region, create) == ("hit", "alice", {"groups": ["staff"]})
    assert create.calls == 1


def test_denials_are_cached_only_with_negative_ttl(memcached):
    create = Creator(Outcome(None, positive=False))
    region = region_for(memcached)
    assert ask(region, create)[0] == ask(region, create)[0] == "miss"
    region = region_for(memcached, negative_ttl=60)
    assert [ask(region, create)[0] for _ in range(2)] == ["miss", "negative_hit"]


def test_invalidating_a_user_and_everything(memcached):
    region = region_for(memcached)
    create = Creator(Outcome("alice", positive=True))
    ask(region, create)
    region.invalidate_user(login="ALICE")  # any spelling of the login
    assert ask(region, create)[0] == "miss"
    region.invalidate_all()
    assert ask(region, create)[0] == "miss"
    assert create.calls == 3


def test_stale_answer_while_create_fails(memcached):
    region = region_for(memcached, ttl=1, stale_ttl=60)
    ask(region, Creator(Outcome("alice", positive=True)))
    time.sleep(1.1)
    assert ask(region, Creator(Outcome(failed=True)))[:2] == ("stale", "alice")
    # Without stale_ttl the same failure is an error, not the expired answer.
    assert ask(region_for(memcached, ttl=1), Creator(Outcome(failed=True)))[0] == "error"


def test_single_flight(memcached):
    region = region_for(memcached)
    create = Creator(Outcome("alice", positive=True), delay=0.2)
    outcomes = run_at_once(16, lambda: ask(region, create)[:2])
    assert {userid for _, userid in outcomes} == {"alice"}
    assert create.calls == 1


def test_different_heads_never_share_entries(memcached):
    region = region_for(memcached)
    create = Creator(Outcome("alice", positive=True))
    items = [("login", "alice"), ("password", "pw")]
    for scope in (b"directory-a", b"directory-b"):
        head = region.keys.entry_head("authenticate", scope)
        assert region.get_or_create(head, items, None, None, create)[0] == "miss"
    assert create.calls == 2


def test_a_rotated_hit_leaves_the_shared_record_as_sealed(memcached):
    """The sealer hands every opener of the same bytes one shared record. A hit on an entry
    of a previous secret is re-stored with an expiry within the current ttl: that must not
    be written into the shared record, or the old entry's bytes open to another expiry than
    they hold."""
    old_secret = "rotated-out-" + "o" * 32
    items = [("login", "alice"), ("password", "pw")]
    before = region_for(memcached, secret=old_secret, ttl=3600)
    ask(before, Creator(Outcome("alice", positive=True)), items)
    old_key = before.keys.entry_key("", items, before.keys.entry_head("authenticate", b"backend"),
                                    "")
    raw = memcached.get_raw(old_key)
    sealed_expiry = before.sealer.open(old_key, raw)["x"]
    after = region_for(memcached, ttl=60, previous_secrets=[old_secret.encode()])
    create = Creator(Outcome("alice", positive=True))
    assert ask(after, create, items) == ("hit", "alice", {})
    assert create.calls == 0 and after.counters.snapshot()["rotated_hits"] == 1
    assert sealed_expiry > time.time() + 3000
    assert after.previous[0].sealer.open(old_key, raw)["x"] == sealed_expiry


def _local_imports(module: str) -> set[str]:
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
            found.add(node.module)
    return found


def _all_imports(module: str) -> set[str]:
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_the_core_imports_nothing_of_repoze_who():
    seen, todo = set(), ["region"]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        todo.extend(_local_imports(module))
        outside = {n for n in _all_imports(module) if n.startswith(("repoze.who", "zope"))}
        assert not outside, f"{module}.py imports {outside}"
    assert {"region", "keys", "sealing", "generations", "nearcache", "backends"} <= seen
