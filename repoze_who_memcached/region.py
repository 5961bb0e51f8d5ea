"""The cache core: "these keyed items, this call" in, an answer out. No repoze.who here.

A :class:`CacheRegion` keeps answers in memcached under HMAC keys (``keys.py``), sealed and
bound to their key (``sealing.py``), and valid only while the generation tokens they were
stored under are current (``generations.py``). On a miss it asks the caller's ``create``
once per key in this process (single flight), once in the cluster with ``lock_timeout``
(a memcached lock), may serve a recently expired answer while ``create`` fails
(``stale_ttl``), and keeps answers in process memory with ``local_ttl`` (``nearcache.py``).

Callers (the repoze.who adapter in ``plugin.py``) say which items key a call, which user
owns it (for invalidation), and how to compute the answer; they get back what to tell
their caller. Everything that can be done once is done in ``__init__``.
"""

from __future__ import annotations

import copy
import hmac
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .backends import CacheBackend
from .counters import Counters, RateLimitedLog
from .credentials import LatestCredentialWins
from .generations import is_token, new_token
from .keys import KeyMaker, Unencodable
from .nearcache import NearCache, copy_if_mutable, is_mutable
from .records import EXPIRES as _EXPIRES
from .records import GENERATIONS as _GENERATIONS
from .records import POSITIVE as _POSITIVE
from .records import USERID as _USERID
from .records import VALUES as _VALUES
from .records import Lookup as _Lookup
from .records import Outcome, Result
from .records import SecretKeys as _SecretKeys
from .records import cacheable as _cacheable
from .records import outcome_of as _outcome_of
from .refresh import RefreshAhead
from .rotation import SecretRotation
from .sealing import Sealer, Unsealable, tag_tuples

logger = logging.getLogger("repoze_who_memcached")

_EXPIRY_MARGIN = 2  # seconds (see store_expiry)
_COALESCE_WAIT = 60.0  # a waiter never waits longer than this for another thread's call
_LOCK_POLL = 0.02

def _copy(values: dict[str, Any]) -> dict[str, Any]:
    """A record's values for the caller to keep and change (records are shared)."""
    return dict(values) if not values or not is_mutable(values) else copy.deepcopy(values)


class _Flight:
    __slots__ = ("done", "outcome")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.outcome = Outcome(failed=True)


class CacheRegion(SecretRotation, RefreshAhead, LatestCredentialWins):
    """Get-or-create of sealed, generation-checked answers in memcached (see module doc)."""

    def __init__(
        self,
        *,
        secret: bytes,
        backend: CacheBackend,
        counters: Counters,
        ttl: int = 60,
        negative_ttl: int = 0,
        stale_ttl: int = 0,
        lock_timeout: int = 0,
        key_prefix: str = "",
        near: NearCache | None = None,
        ttl_jitter: float = 0.0,
        refresh_ahead: float = 0.0,
        previous_secrets: Iterable[bytes] = (),
    ) -> None:
        self.backend = backend
        self.counters = counters
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.stale_ttl = stale_ttl
        # One memcached expiry for every entry and user token, successes and denials alike:
        # a memcached reader must not tell them apart by it. Each record's own expiry
        # (sealed inside it) says when it stops being served.
        # memcached counts expiry in whole seconds of a clock of its own, which can end an
        # item up to two seconds early: the margin keeps items past their record's expiry.
        self.store_expiry = max(ttl + stale_ttl, negative_ttl) + _EXPIRY_MARGIN
        self.lock_timeout = lock_timeout
        self.ttl_jitter = ttl_jitter
        # A positive hit with less than this many seconds left is re-checked in the
        # background (refresh-ahead), answered from the cache meanwhile.
        self.refresh_window = refresh_ahead * ttl
        self._refreshing: set[str] = set()
        self._refresher: ThreadPoolExecutor | None = None
        # Behind a proxy (twemproxy) keys carry hash tags: a user's keys on one backend.
        self.proxied = bool(backend.settings.proxy)
        self.keys = KeyMaker(secret, key_prefix, hash_tags=self.proxied)
        self.sealer = Sealer(secret)
        self.namespace_key = self.keys.namespace_generation_key()  # without a proxy
        self.epoch_key = self.keys.invalidation_epoch_key()
        self.near = near
        if near is not None:
            near.revalidate = self._near_usable  # at most every local_check_interval
        self._near_epoch: bytes | None = None  # the epoch token as last read
        self._near_check_lock = threading.Lock()
        self._flights: dict[str, _Flight] = {}
        self._flights_lock = threading.Lock()
        self._routes: dict[str, str] = {}  # route_for's memo (rotation.py)
        self.lock_token = new_token()  # marks the memcached locks this region takes
        self.warn = RateLimitedLog(logger)
        # The hit path counts on the raw counters (no lookup by name).
        self._hits = counters.counter("hits")
        self._negative_hits = counters.counter("negative_hits")
        self.epoch_checked: Callable[[], None] = lambda: None  # called at each epoch check
        self.previous = [
            _SecretKeys(maker, Sealer(old), maker.namespace_generation_key())
            for old in previous_secrets
            for maker in [KeyMaker(old, key_prefix, hash_tags=self.proxied)]
        ]

    @property
    def name(self) -> str:
        return self.counters.name

    def user_key(self, kind: str, name: Any, keys: KeyMaker | None = None) -> str | None:
        """The generation key of the user ``name`` (None: no user, or not encodable)."""
        if name is None:
            return None
        try:
            return (keys or self.keys).user_generation_key(kind, name)
        except (Unencodable, RecursionError, ValueError):
            return None

    # ---------------------------------------------------------------- get or create

    def get_or_create(
        self,
        head: bytes,
        items: Sequence[tuple[str, Any]],
        user: tuple[str, Any] | None,
        near_key: bytes | None,
        create: Callable[..., Outcome],
        *args: Any,
        credential: Any = None,
    ) -> Result:
        """The answer for ``items`` (keyed under ``head``, from ``KeyMaker.entry_head``):
        from memcached if a current one is there, else ``create(*args)``, stored.

        ``user``: (kind, name) of the user the answer belongs to, for invalidation (None:
        only a flush drops it). ``credential`` (with a ``login`` user): what the user proved
        with; when a success arrives with another credential than the last one stored, the
        user's other entries stop being used (the latest password wins).
        """
        near = self.near if near_key is not None else None
        near_flushes = near.flushes if near is not None else 0
        user_key = self.user_key(*user) if user is not None else None
        keys = self.keys
        proxied = self.proxied
        entry_key = keys.entry_key("", items, head, keys.tag_of(user_key) if proxied else "")
        if user_key:
            route = self.route_for(user) or user_key
            generation_keys = [keys.namespace_key_for(user_key) if proxied
                               else self.namespace_key, user_key]
        else:
            route = entry_key
            generation_keys = [keys.namespace_key_for(route) if proxied
                               else self.namespace_key]
        rotated = None
        if self.previous:
            # The keys of the entry under each previous secret ride along (secret rotation).
            rotated = self._previous_keys(items, head, user, route)
            also = [k for _, entry, olds in rotated for k in (entry, *olds)]
            # All of a user's keys live on one server: one round trip, whatever the cluster.
            record, generations = self._fetch(entry_key, generation_keys, route, *also)
            generations, found_also = generations[:len(generation_keys)], generations[
                len(generation_keys):]
        else:
            record, generations = self._fetch(entry_key, generation_keys, route)
        # The Lookup is made only when needed: a plain hit does without.
        lookup_fields = (entry_key, route, generation_keys, generations, near_key, near_flushes,
                         user, credential)
        lookup = None
        if record is None and rotated:
            lookup = _Lookup(*lookup_fields)
            record = self._rotated(lookup, rotated, dict(zip(also, found_also, strict=True)))
        now = time.time()
        if record is not None and now < record[_EXPIRES]:
            positive = record[_POSITIVE]
            next(self._hits if positive else self._negative_hits)
            self.counters.log_if_due()
            if near is not None:
                near.put(near_key, record.get(_USERID), record[_VALUES], positive,
                         record[_EXPIRES], near_flushes)
            if positive and record[_EXPIRES] - now < self.refresh_window:
                self._refresh_soon(lookup or _Lookup(*lookup_fields), create, args)
            # The record is the sealer's, shared with other hits: the caller gets a copy.
            return ("hit" if positive else "negative_hit"), record.get(_USERID), _copy(
                record[_VALUES])

        lookup = lookup or _Lookup(*lookup_fields)
        self.counters.incr("misses")
        outcome = self._coalesced_call(lookup, create, args)
        if outcome.refused:
            return "refused", None, None
        if outcome.failed:
            if record is not None and record[_POSITIVE] and now < record[_EXPIRES] + self.stale_ttl:
                self.counters.incr("stale_served")
                self.warn.warning(
                    "stale", "cache %s: backend failed, serving an entry expired %.0fs ago "
                    "(stale_ttl=%ds)", self.name, now - record[_EXPIRES], self.stale_ttl,
                )
                return "stale", record.get(_USERID), _copy(record[_VALUES])
            return "error", None, None
        # Requests coalesced on this miss share one outcome: each gets its own copy of
        # anything it could change.
        values = copy_if_mutable(outcome.values) if outcome.values else outcome.values
        return "miss", outcome.userid, values

    def _fetch(
        self, entry_key: str, generation_keys: list[str], route: str, *also: str
    ) -> tuple[dict | None, list[Any]]:
        """One round trip: the entry, its generation tokens (and the keys ``also`` asked
        for, returned as the tokens' tail). Returns the record (None unless it opens and its
        generations are current) and the tokens as read."""
        found = self.backend.get_multi([entry_key, *generation_keys, *also], route)
        get = found.get
        generations = list(map(get, generation_keys))
        record = self._open(entry_key, get(entry_key), generations)
        return record, generations + list(map(get, also)) if also else generations

    def _fresh_outcome(self, lookup: _Lookup) -> Outcome | None:
        """The answer another thread or process stored meanwhile, if any."""
        record, lookup.generations = self._fetch(
            lookup.entry_key, lookup.generation_keys, lookup.route
        )
        return _outcome_of(record)

    # ---------------------------------------------------------------- single flight, locks

    def _coalesced_call(self, lookup: _Lookup, create: Callable[..., Outcome],
                        args: tuple) -> Outcome:
        """Call ``create`` once for all threads missing on this key right now."""
        with self._flights_lock:
            flight = self._flights.get(lookup.entry_key)
            leader = flight is None
            if leader:
                flight = self._flights[lookup.entry_key] = _Flight()
        if not leader:
            self.counters.incr("coalesced")
            if flight.done.wait(_COALESCE_WAIT):
                return flight.outcome
            return create(*args)  # the leader is stuck: go alone
        try:
            flight.outcome = self._locked_call(lookup, create, args)
            return flight.outcome
        finally:
            with self._flights_lock:
                del self._flights[lookup.entry_key]
            flight.done.set()

    def _locked_call(self, lookup: _Lookup, create: Callable[..., Outcome],
                     args: tuple) -> Outcome:
        """With ``lock_timeout``, one process in the cluster asks; the others wait for its entry.

        The lock is a memcached ``add`` that expires after ``lock_timeout`` seconds, so a
        holder that crashed blocks nobody longer than that.
        """
        lock_key = None
        if self.lock_timeout:
            lock_key = self.keys.lock_key(lookup.entry_key)
            if not self.backend.add(lock_key, self.lock_token, self.lock_timeout, lookup.route):
                holder = self.backend.get_multi([lock_key], lookup.route).get(lock_key)
                # Wait only for another process's lock. No lock to see means memcached is
                # failing (an add fails too); our own token means a lock whose release
                # failed (threads of this process take turns by flights, never by locks).
                if holder is not None and holder != self.lock_token:
                    outcome = self._wait_for_lock_holder(lookup, lock_key)
                    if outcome is not None:
                        return outcome
                lock_key = None  # no holder delivered: ask ourselves, lock-free
        try:
            # Look once more: a thread or process that got here first may have stored the
            # answer between our miss and our turn (it released its flight or lock since).
            outcome = self._fresh_outcome(lookup)
            if outcome is not None:
                self.counters.incr("coalesced")
                return outcome
            outcome = create(*args)
            if not outcome.failed and not outcome.refused:
                if lookup.credential is not None:
                    self._remember_credential(lookup, outcome)
                record = self._store(lookup, outcome)
                if record is not None and lookup.near_key is not None and self.near is not None:
                    self.near.put(lookup.near_key, outcome.userid, outcome.values or {},
                                  record[_POSITIVE], record[_EXPIRES], lookup.near_flushes)
            return outcome
        finally:
            if lock_key is not None:
                self.backend.delete(lock_key, lookup.route)

    def _wait_for_lock_holder(self, lookup: _Lookup, lock_key: str) -> Outcome | None:
        """Poll for the holder's answer until it is stored, the lock is gone (the holder
        stored nothing: a denial without negative_ttl, or an error), or lock_timeout."""
        self.counters.incr("lock_waits")
        deadline = time.monotonic() + self.lock_timeout
        while time.monotonic() < deadline:
            time.sleep(_LOCK_POLL)
            record, tokens = self._fetch(
                lookup.entry_key, lookup.generation_keys, lookup.route, lock_key
            )
            lookup.generations = tokens[:-1]
            outcome = _outcome_of(record)
            if outcome is not None or tokens[-1] is None:
                return outcome
        return None

    # ---------------------------------------------------------------- sealed entries

    def _open(self, entry_key: str, raw: Any, generations: list[Any],
              sealer: Sealer | None = None) -> dict | None:
        """The entry's record if it opens and belongs to the current generations."""
        if raw is None:
            return None
        try:
            record = (sealer or self.sealer).open(entry_key, raw)
            stored = record[_GENERATIONS]
            if not isinstance(record[_EXPIRES], (int, float)):
                raise Unsealable("bad record")
        except (Unsealable, ValueError, KeyError, TypeError) as exc:
            self.counters.incr("bad_values")
            self.warn.warning("bad-value", "cache %s: ignoring a cached value that does not "
                              "open (%s): forged, corrupted or from another secret",
                              self.name, exc)
            return None
        if len(stored) != len(generations):
            return None
        # One comparison of all the tokens: the stored ones never hold NUL (only is_token's
        # alphabet is stored, _store), so equal joins of as many tokens mean equal tokens;
        # a missing token (None) cannot be joined.
        try:
            current = b"\0".join(generations)
        except TypeError:
            return None
        if not hmac.compare_digest(current, "\0".join(stored).encode()):
            return None  # invalidated since it was stored
        return record

    def _store(self, lookup: _Lookup, outcome: Outcome, expires: float | None = None
               ) -> dict | None:
        """Seal and store the outcome; returns the record if memcached took it.

        The record lives ``ttl`` less a random part of ``ttl_jitter`` of it (entries stored
        together do not expire together), or until ``expires`` when one is given.
        """
        positive = outcome.positive
        ttl = self.ttl if positive else self.negative_ttl
        if not ttl:
            return None
        if expires is None:
            expires = time.time() + ttl * (1 - self.ttl_jitter * random.random())
        values = outcome.values or {}
        unfit = [k for k, v in values.items() if not _cacheable(v)]
        if unfit or not _cacheable(outcome.userid):
            self.warn.warning(
                "uncacheable", "cache %s: not caching: item(s) %s hold values that are not "
                "plain data; set value_items to what should be cached",
                self.name, ", ".join(sorted(unfit)) or "repoze.who.userid",
            )
            return None
        # The namespace token (the first) lives until replaced; a user's token as long as
        # the entries under it and no longer, so a flood of random denied logins leaves
        # nothing behind that never expires.
        tokens, kept = [], []
        for index, (key, current) in enumerate(
            zip(lookup.generation_keys, lookup.generations, strict=True)
        ):
            expire = self.store_expiry if index else 0
            if is_token(current):
                tokens.append(current)
                if expire:
                    kept.append(key)
            else:
                tokens.append(self._create_generation(key, lookup.route, current, expire))
        if any(t is None for t in tokens):
            return None  # memcached is unreachable: nothing to store into
        record = {
            _USERID: outcome.userid,
            _VALUES: tag_tuples(values),
            _EXPIRES: expires,
            _GENERATIONS: [t.decode("ascii") for t in tokens],
            _POSITIVE: positive,
        }
        try:
            sealed = self.sealer.seal(lookup.entry_key, record)
        except (TypeError, ValueError) as exc:  # _cacheable let through what JSON refuses
            self.warn.warning("uncacheable", "cache %s: not caching: %s", self.name, exc)
            return None
        if not self.backend.set(lookup.entry_key, sealed, self.store_expiry, lookup.route):
            self.counters.incr("cache_errors")
            return None
        for key in kept:  # the token must outlive the entry just stored under it
            self.backend.touch(key, self.store_expiry, lookup.route)
        return record

    def _create_generation(self, key: str, route: str, current: Any, expire: int
                           ) -> bytes | None:
        """First use of a generation: create its token; None if another one appeared.

        A token that appeared since our read may be an invalidation's, made while our
        backend call ran: adopting it would store a pre-invalidation answer as current. So
        a lost race stores nothing (the next miss stores under the winner's token). A token
        that is not one of ours (garbage written into memcached) is replaced: that only
        invalidates what was stored under it.
        """
        token = new_token()
        if current is not None:
            return token if self.backend.set(key, token, expire, route) else None
        return token if self.backend.add(key, token, expire, route) else None

    # ---------------------------------------------------------------- the near cache

    def _near_usable(self) -> bool:
        """True if the invalidation epoch was read less than local_check_interval ago, or
        is read now. While another thread reads it, this one skips the near cache rather
        than serve an answer that the read may revoke."""
        assert self.near is not None
        if time.monotonic() < self.near.trusted_until:
            return True  # read by another thread a moment ago
        if not self._near_check_lock.acquire(blocking=False):
            return False
        try:
            self.check_invalidation_epoch()
        finally:
            self._near_check_lock.release()
        return True

    def check_invalidation_epoch(self) -> None:
        """Flush the near cache if an invalidation happened since the last read."""
        assert self.near is not None
        self.counters.log_if_due()  # local hits skip the schedule check; it is made here
        self.epoch_checked()
        started = time.monotonic()
        key = self.epoch_key
        epoch = self.backend.get_multi([key], key).get(key)
        if not is_token(epoch):
            # Never written, evicted, memcached restarted or unreachable, or garbage: an
            # invalidation may have been lost with it, so drop everything, and start a token
            # that later invalidations replace (another process may have started one first).
            self._flush_near()
            new = new_token()
            self._near_epoch = new if self.backend.add(key, new, 0, key) else None
        elif epoch != self._near_epoch:
            self._flush_near()
            self._near_epoch = epoch
        self.near.trusted_until = started + self.near.check_interval

    def _flush_near(self) -> None:
        if self.near is not None:
            if len(self.near):
                self.counters.incr("local_flushes")
            self.near.flush()

    # ---------------------------------------------------------------- invalidation

    def invalidate_user(self, login: Any = None, userid: Any = None) -> list[str]:
        """Make every cached entry of this user unusable at once, on every server.

        ``login`` drops cached authentications (whatever passwords were used), ``userid``
        cached metadata. Either may be None. The new token goes to every memcached server
        (entries may have failed over to any of them). Returns the servers that could not
        be reached: their old entries come back if they do, so invalidate again then.
        """
        failed: set[str] = set()
        for keys in [self.keys, *(old.keys for old in self.previous)]:
            for kind, name in (("login", login), ("userid", userid)):
                if name is not None:
                    key = keys.user_generation_key(kind, name)
                    if self.proxied:
                        failed.update(self._replace_behind_proxy(keys, key))
                    else:
                        failed.update(self._replace_generation(key))
        failed.update(self._replace_epoch())
        self.counters.incr("invalidations")
        return sorted(failed)

    def _replace_behind_proxy(self, keys: KeyMaker, user_key: str) -> list[str]:
        """Replace a user's token through the proxy; if the backend that holds it cannot
        be reached, replace the namespace copy the user's entries are stored under instead.

        A user's token is one key on one backend (twemproxy picks it by the user's tag).
        When that backend is down, its old token and entries survive there; were it to come
        back as it was (a network partition, a paused process), they would be used again.
        Replacing the user's copy of the namespace token (on another backend, usually)
        makes them unusable all the same, at the cost of one miss for the users sharing that
        copy. Only when both keys are unreachable is the invalidation reported as failed.
        """
        if not self.backend.set_everywhere(user_key, new_token()):
            return []
        self.counters.incr("invalidation_fallbacks")
        self.warn.warning("proxy-fallback", "cache %s: a user's token could not be written "
                          "through the proxy; replacing their copy of the namespace token "
                          "instead", self.name)
        namespace_key = keys.namespace_key_for(user_key)
        return self.backend.set_everywhere(namespace_key, new_token())

    def _replace_epoch(self) -> list[str]:
        """Tell every near cache to drop what it holds (within its check interval), and
        drop this process's own at once."""
        failed = self.backend.set_everywhere(self.epoch_key, new_token())
        self._flush_near()
        return failed

    def invalidate_all(self) -> list[str]:
        """Drop everything this region cached (not other applications' data); returns the
        servers that could not be reached."""
        failed: set[str] = set()
        if self.proxied:
            # Every copy of the namespace token, through the proxy: a copy that could not be
            # written is reported (its users' old entries come back with its backend).
            keys = [k for maker in [self.keys, *(old.keys for old in self.previous)]
                    for k in maker.namespace_keys()]
            missed = [k for k in keys if self.backend.set_everywhere(k, new_token())]
            if len(missed) == len(keys):
                names = ", ".join(str(s) for s in self.backend.settings.servers)
                raise RuntimeError(f"cache {self.name}: no namespace token could be written "
                                   f"through the proxy ({names}); nothing was invalidated")
            if missed:
                failed.update(f"{server} (a backend behind it: {len(missed)} of {len(keys)} "
                              "namespace copies)" for server in self.backend.settings.servers)
        else:
            for namespace_key in [self.namespace_key,
                                  *(old.namespace_key for old in self.previous)]:
                failed.update(self._replace_generation(namespace_key))
        failed.update(self._replace_epoch())
        self.counters.incr("invalidations")
        return sorted(failed)

    def _replace_generation(self, key: str) -> list[str]:
        failed = self.backend.set_everywhere(key, new_token())
        if len(failed) == len(self.backend.settings.servers):
            raise RuntimeError(f"cache {self.name}: no memcached server could be reached "
                               f"({', '.join(failed)}); nothing was invalidated")
        return failed
