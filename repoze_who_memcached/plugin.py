"""The caching plugin: the whole per-request path, in this one file.

``CachingPlugin`` wraps an IAuthenticator and/or IMetadataProvider. For each call it derives
an HMAC key from the identity (``keys.py``), fetches the sealed entry together with the
user's and the namespace's generation tokens in one ``get_multi`` (``backends.py``), and
either restores the cached result or asks the wrapped plugin once, even when many requests
miss at the same moment, and seals the answer back (``sealing.py``).

Invalidation without giving up HMAC keys: every entry records the generation tokens that
were current when it was stored. Invalidating a user replaces that user's token; flushing
replaces the namespace token. Tokens are random and never reused, and an entry whose token
is gone (evicted, replaced) is never served, so an evicted token cannot bring back entries
from before an invalidation.

With ``local_ttl``, answers are also kept in process memory for that long (``nearcache.py``)
and a repeat is served without a round trip; invalidations then reach every process within
``local_check_interval`` instead of at once.

Everything that can be done once is done in ``__init__`` (option parsing, key derivation,
client set-up); the request path only hashes, fetches, opens and compares.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from repoze.who.interfaces import IAuthenticator, IMetadataProvider
from zope.interface import implementer

from .backends import BACKENDS, BackendSettings, CacheBackend, ServerAddress
from .counters import Counters, RateLimitedLog, register_prometheus
from .errors import BackendUnavailable, ConfigError
from .keys import KeyMaker, Unencodable, is_encodable, plugin_fingerprint
from .nearcache import Answer, NearCache, copy_if_mutable
from .options import Options, build_plugin
from .sealing import Sealer, Unsealable, tag_tuples

logger = logging.getLogger("repoze_who_memcached")

AUTHENTICATE = "authenticate"
ADD_METADATA = "add_metadata"
USERID = "repoze.who.userid"
# Entries repoze.who (or we) put into identities that say nothing about the credentials.
BOOKKEEPING_ITEMS = frozenset({"identifier", "authenticator", USERID})
ENVIRON_KEY = "repoze_who_memcached.cache"
"""``environ[ENVIRON_KEY]`` maps plugin name to ``{method: outcome}`` for this request,
outcome one of hit, negative_hit, local_hit, local_negative_hit (from the near cache), miss,
stale, error, uncached (the demo app shows it)."""

MIN_SECRET_BYTES = 16
_SIMPLE_TYPES = (str, bytes, int, float, bool, type(None))
_COALESCE_WAIT = 60.0  # a waiter never waits longer than this for another thread's call
_LOCK_POLL = 0.02

# Field names inside a sealed record (short: they are stored once per entry).
_USERID, _VALUES, _EXPIRES, _GENERATIONS, _POSITIVE = "u", "v", "x", "g", "p"


@dataclass
class _Outcome:
    """What one backend call produced, shared with threads that waited for it."""

    userid: Any = None
    values: dict[str, Any] | None = None
    failed: bool = False


@dataclass
class _Lookup:
    """One cached call in progress: what it asks, and where its keys live."""

    method: str
    call: Any  # the wrapped plugin's bound method
    entry_key: str
    route: str  # the key that picks the server (the user's generation key)
    generation_keys: list[str]
    generations: list[Any]  # the tokens as last read
    near_key: bytes | None = None  # where the near cache keeps the answer (None: it doesn't)
    near_flushes: int = 0  # the near cache's flush count before the first read


class _Flight:
    __slots__ = ("done", "outcome")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.outcome = _Outcome(failed=True)


@implementer(IAuthenticator, IMetadataProvider)
class CachingPlugin:
    """Caches a wrapped authenticator's and/or metadata provider's answers in memcached.

    Build it with :func:`make_plugin` from ini options; the constructor takes typed values.
    ``authenticator`` and ``mdprovider`` are plugin objects or ``module:object`` specs;
    ``name`` defaults to the name the plugin is registered under in repoze.who (the
    ``[plugin:NAME]`` section), found on the first request when no loader of ours said it.
    """

    def __init__(
        self,
        *,
        secret: str | bytes,
        backend: CacheBackend,
        authenticator: Any = None,
        mdprovider: Any = None,
        authenticator_name: str | None = None,
        mdprovider_name: str | None = None,
        key_items: Iterable[str] | None = None,
        value_items: Iterable[str] | None = None,
        ttl: int = 60,
        negative_ttl: int = 0,
        stale_ttl: int = 0,
        lock_timeout: int = 0,
        login_item: str = "login",
        key_prefix: str = "",
        name: str | None = None,
        stats_log_interval: float = 300.0,
        local_ttl: float = 0,
        local_max_entries: int = 10_000,
        local_check_interval: float = 1.0,
    ) -> None:
        if isinstance(secret, str):
            secret = secret.encode("utf-8")
        if len(secret) < MIN_SECRET_BYTES:
            raise ConfigError(f"at least {MIN_SECRET_BYTES} bytes", option="secret")
        self.name = name or "cache"
        self.name_is_fixed = name is not None  # else taken from repoze.who's registry
        self.backend = backend
        self._keys = KeyMaker(secret, key_prefix)
        self._entry_heads: dict[str, bytes] = {}
        self.authenticator = _as_plugin(authenticator, IAuthenticator, "authenticator")
        self.mdprovider = _as_plugin(mdprovider, IMetadataProvider, "mdprovider")
        self.authenticator_name = authenticator_name
        self.mdprovider_name = mdprovider_name
        self.key_items = tuple(key_items) if key_items else None
        if self.key_items and login_item not in self.key_items:
            # The login names the user whose entries an invalidation drops, and tells a
            # login from a cookie or REMOTE_USER identity (which are never cached).
            raise ConfigError(f"must include login_item ({login_item!r}), the item that "
                              "names the user; or set login_item", option="key_items")
        self.value_items = tuple(value_items) if value_items else None
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.stale_ttl = stale_ttl
        # One memcached expiry for every entry and user token, successes and denials alike:
        # a memcached reader must not tell them apart by it. Each record's own expiry
        # (sealed inside it) says when it stops being served.
        self.store_expiry = max(ttl + stale_ttl, negative_ttl)
        self.lock_timeout = lock_timeout
        self.login_item = login_item
        self.counters = Counters(self.name, logger, stats_log_interval)
        self._sealer = Sealer(secret)
        self._namespace_key = self._keys.namespace_generation_key()
        self._epoch_key = self._keys.invalidation_epoch_key()
        self._near = (
            NearCache(local_ttl, local_max_entries, local_check_interval,
                      (AUTHENTICATE, ADD_METADATA))
            if local_ttl
            else None
        )
        self._near_check_at = 0.0  # monotonic time of the next invalidation-epoch check
        self._near_epoch: bytes | None = None  # the epoch token as last read
        self._near_check_lock = threading.Lock()
        self._local_hits = self.counters.counter("local_hits")  # counted without a call
        self._debug_logging = logger.isEnabledFor(logging.DEBUG)
        self._flights: dict[str, _Flight] = {}
        self._lock_token = _new_token()  # marks the memcached locks this plugin takes
        self._flights_lock = threading.Lock()
        self._warn = RateLimitedLog(logger)
        # With neither a plugin nor a name to find one by, this plugin would silently do
        # nothing: refuse it at load time.
        if not (authenticator or mdprovider or authenticator_name or mdprovider_name):
            raise ConfigError(
                "set at least one of 'authenticator_name', 'mdprovider_name', "
                "'authenticator' or 'mdprovider' (the plugin(s) whose results are cached)"
            )

    def __repr__(self) -> str:
        return f"<CachingPlugin {self.name!r} at {id(self):#x}>"

    # The wrapped plugins are properties: setting one binds the cache's entry keys to it
    # (keys.plugin_fingerprint), once, instead of on every request.

    @property
    def authenticator(self) -> Any:
        return self._authenticator

    @authenticator.setter
    def authenticator(self, plugin: Any) -> None:
        self._authenticator = plugin
        self._entry_heads[AUTHENTICATE] = self._keys.entry_head(
            AUTHENTICATE, plugin_fingerprint(plugin) if plugin is not None else b"")

    @property
    def mdprovider(self) -> Any:
        return self._mdprovider

    @mdprovider.setter
    def mdprovider(self, plugin: Any) -> None:
        self._mdprovider = plugin
        self._entry_heads[ADD_METADATA] = self._keys.entry_head(
            ADD_METADATA, plugin_fingerprint(plugin) if plugin is not None else b"")

    def take_name(self, name: str) -> None:
        """Be known as ``name`` (logs, counters, Prometheus, the environ), unless a name
        was given: loaders call it with the plugin's section name."""
        if not self.name_is_fixed:
            self.name = self.counters.name = name
            self.name_is_fixed = True

    # ---------------------------------------------------------------- wiring (load time)

    def bind(self, plugins: Mapping[str, Any]) -> None:
        """Resolve ``authenticator_name``/``mdprovider_name`` against a config's plugins.

        Our loaders call this right after parsing, so a wrong name fails at load time. With
        a stock repoze.who loader the names are resolved on the first request instead.
        """
        for attr, name, iface in (
            ("authenticator", self.authenticator_name, IAuthenticator),
            ("mdprovider", self.mdprovider_name, IMetadataProvider),
        ):
            if name and getattr(self, attr) is None:
                if name not in plugins:
                    raise ConfigError(
                        f"no plugin named {name!r} "
                        f"(known: {', '.join(sorted(plugins)) or 'none'})", option=f"{attr}_name"
                    )
                plugin = plugins[name]
                if not iface.providedBy(plugin):
                    raise ConfigError(f"{name!r} does not provide {iface.__name__}",
                                      option=f"{attr}_name")
                setattr(self, attr, plugin)

    def _wrapped(self, environ: dict, attr: str) -> Any:
        """The plugin named by ``authenticator_name``/``mdprovider_name``, found in the
        request's repoze.who registry: the stock middleware's ``environ["repoze.who.plugins"]``
        or the API object's ``name_registry`` (``environ["repoze.who.api"]``, set by every
        ``APIFactory``: ``make_api_factory_with_config``, frameworks). Bound once found."""
        plugin = getattr(self, attr)
        if plugin is None:
            name = getattr(self, attr + "_name")
            if not name:
                return None
            registry = _registry(environ)
            plugin = registry.get(name)
            if plugin is None:
                self._warn.warning(
                    "unbound-" + attr, "cache %s: no plugin named %r to wrap as %s; list it in "
                    "the config (e.g. '%s;unused')", self.name, name, attr, name,
                )
                return None
            iface = IAuthenticator if attr == "authenticator" else IMetadataProvider
            if not iface.providedBy(plugin):
                self._warn.warning(
                    "unbound-" + attr, "cache %s: plugin %r does not provide %s; not wrapping "
                    "it", self.name, name, iface.__name__,
                )
                return None
            if not self.name_is_fixed:
                for registered, candidate in registry.items():
                    if candidate is self:
                        self.take_name(registered)
                        break
            setattr(self, attr, plugin)
        return plugin

    # ---------------------------------------------------------------- IAuthenticator

    def authenticate(self, environ: dict, identity: dict) -> Any:
        wrapped = self.authenticator or self._wrapped(environ, "authenticator")
        if wrapped is None:
            return None
        if identity.get(self.login_item) is None:
            # Not a login (an auth_tkt cookie, a REMOTE_USER identity): nothing to cache,
            # and no miss or denial to count; the wrapped plugin says what it makes of it.
            self._record(environ, AUTHENTICATE, "uncached")
            return self._call_backend(wrapped.authenticate, environ, identity).userid
        try:
            near_key = None
            if self._near is not None:
                # Keyed on the identity's items as they come (no sorting, no type checks:
                # marshal refuses what it can't encode): at worst a finer key than the
                # entry's, never a coarser one.
                near_items = (
                    [(n, v) for n, v in identity.items() if n not in BOOKKEEPING_ITEMS]
                    if self.key_items is None
                    else [(n, identity.get(n)) for n in self.key_items]
                )
                near_key, answer = self._near_lookup(AUTHENTICATE, near_items)
                if answer is not None:
                    return self._restore_near(environ, identity, AUTHENTICATE, answer)
            items = self._authenticate_items(identity)
            if items is not None:
                user_key = self._user_key("login", identity.get(self.login_item))
                return self._cached_call(environ, identity, AUTHENTICATE, wrapped.authenticate,
                                         items, user_key, near_key)
        except Exception:  # a bug of ours must not become a 500: answer uncached
            logger.exception("cache %s: internal error; asking the backend directly", self.name)
            return self._call_backend(wrapped.authenticate, environ, identity).userid
        self._record(environ, AUTHENTICATE, "uncached")
        return self._call_backend(wrapped.authenticate, environ, identity).userid

    # ---------------------------------------------------------------- IMetadataProvider

    def add_metadata(self, environ: dict, identity: dict) -> None:
        wrapped = self.mdprovider or self._wrapped(environ, "mdprovider")
        if wrapped is None:
            return
        userid = identity.get(USERID)
        items = [(USERID, userid)]
        if self.key_items:
            items += [(name, identity.get(name)) for name in self.key_items]
        if userid is None or not is_encodable(items):
            self._record(environ, ADD_METADATA, "uncached")
            self._call_backend(wrapped.add_metadata, environ, identity)
            return
        try:
            near_key = None
            if self._near is not None:
                near_key, answer = self._near_lookup(ADD_METADATA, items)
                if answer is not None:
                    self._restore_near(environ, identity, ADD_METADATA, answer)
                    return
            user_key = self._user_key("userid", userid)
            self._cached_call(
                environ, identity, ADD_METADATA, wrapped.add_metadata, items, user_key, near_key
            )
        except Exception:
            logger.exception("cache %s: internal error; asking the backend directly", self.name)
            self._call_backend(wrapped.add_metadata, environ, identity)

    def _user_key(self, kind: str, name: Any) -> str | None:
        if name is None:
            return None
        try:
            return self._keys.user_generation_key(kind, name)
        except (Unencodable, RecursionError, ValueError):
            return None

    # ---------------------------------------------------------------- the shared path

    def _authenticate_items(self, identity: dict) -> list[tuple[str, Any]] | None:
        """(name, value) pairs that key an authentication, or None if they can't be encoded.

        Fails closed: an item the key cannot encode (an object, a UUID, a non-str name, a
        list nested too deep) makes the call uncached. Leaving it out of the key instead
        would let any value of it, or none, reuse another's cached success.
        """
        if not self.key_items:
            # Default: every item but repoze.who's bookkeeping (plugin objects), sorted.
            items = []
            for name, value in identity.items():
                if name in BOOKKEEPING_ITEMS:
                    continue
                if type(name) is not str or not (
                    isinstance(value, _SIMPLE_TYPES) or is_encodable(value)
                ):
                    return None
                items.append((name, value))
            items.sort()  # names are unique: values are never compared
            return items
        items = [(name, identity.get(name)) for name in self.key_items]
        return items if is_encodable(items) else None

    def _cached_call(
        self,
        environ: dict,
        identity: dict,
        method: str,
        call: Any,
        items: list[tuple[str, Any]],
        user_key: str | None,
        near_key: bytes | None = None,
    ) -> Any:
        near_flushes = self._near.flushes if near_key is not None else 0
        entry_key = self._keys.entry_key(method, items, self._entry_heads[method])
        if user_key:
            generation_keys, route = [self._namespace_key, user_key], user_key
        else:
            generation_keys, route = [self._namespace_key], entry_key
        # All of a user's keys live on one server: one round trip, whatever the cluster.
        record, generations = self._fetch(entry_key, generation_keys, route)
        now = time.time()
        if record is not None and now < record[_EXPIRES]:
            positive = record[_POSITIVE]
            self.counters.incr("hits" if positive else "negative_hits")
            self._record(environ, method, "hit" if positive else "negative_hit")
            if near_key is not None:
                self._near.put(near_key, record.get(_USERID), record[_VALUES], positive,
                               record[_EXPIRES], near_flushes)
            return self._restore(identity, record)

        self.counters.incr("misses")
        lookup = _Lookup(method, call, entry_key, route, generation_keys, generations,
                         near_key, near_flushes)
        outcome = self._coalesced_backend_call(lookup, environ, identity)
        if outcome.failed:
            if (
                record is not None
                and record[_POSITIVE]
                and now < record[_EXPIRES] + self.stale_ttl
            ):
                self.counters.incr("stale_served")
                self._record(environ, method, "stale")
                self._warn.warning(
                    "stale-" + method, "cache %s: backend failed, serving an entry expired "
                    "%.0fs ago (stale_ttl=%ds)", self.name, now - record[_EXPIRES], self.stale_ttl,
                )
                return self._restore(identity, record)
            self._record(environ, method, "error")
            return None
        self._record(environ, method, "miss")
        if outcome.values:
            # Requests coalesced on this miss share one outcome: each gets its own copy of
            # anything it could change.
            identity.update(copy_if_mutable(outcome.values))
        return outcome.userid

    def _fetch(
        self, entry_key: str, generation_keys: list[str], route: str, *also: str
    ) -> tuple[dict | None, list[Any]]:
        """One round trip: the entry, its generation tokens (and the keys ``also`` asked
        for, returned as the tokens' tail). Returns the record (None unless it opens and its
        generations are current) and the tokens as read."""
        found = self.backend.get_multi([entry_key, *generation_keys, *also], route)
        generations = [found.get(k) for k in generation_keys]
        record = self._open(entry_key, found.get(entry_key), generations)
        return record, generations + [found.get(k) for k in also]

    def _fresh_outcome(self, lookup: _Lookup) -> _Outcome | None:
        """The answer another thread or process stored meanwhile, if any."""
        record, lookup.generations = self._fetch(
            lookup.entry_key, lookup.generation_keys, lookup.route
        )
        return _outcome_of(record)

    def _coalesced_backend_call(self, lookup: _Lookup, environ: dict, identity: dict) -> _Outcome:
        """Ask the wrapped plugin once for all threads missing on this key right now."""
        with self._flights_lock:
            flight = self._flights.get(lookup.entry_key)
            leader = flight is None
            if leader:
                flight = self._flights[lookup.entry_key] = _Flight()
        if not leader:
            self.counters.incr("coalesced")
            if flight.done.wait(_COALESCE_WAIT):
                return flight.outcome
            # The leader is stuck: go alone.
            return self._call_backend(lookup.call, environ, identity)
        try:
            flight.outcome = self._locked_backend_call(lookup, environ, identity)
            return flight.outcome
        finally:
            with self._flights_lock:
                del self._flights[lookup.entry_key]
            flight.done.set()

    def _locked_backend_call(self, lookup: _Lookup, environ: dict, identity: dict) -> _Outcome:
        """With ``lock_timeout``, one process in the cluster asks; the others wait for its entry.

        The lock is a memcached ``add`` that expires after ``lock_timeout`` seconds, so a
        holder that crashed blocks nobody longer than that.
        """
        lock_key = None
        if self.lock_timeout:
            lock_key = self._keys.lock_key(lookup.entry_key)
            if not self.backend.add(lock_key, self._lock_token, self.lock_timeout, lookup.route):
                holder = self.backend.get_multi([lock_key], lookup.route).get(lock_key)
                # Wait only for another process's lock. No lock to see means memcached is
                # failing (an add fails too); our own token means a lock whose release
                # failed (threads of this process take turns by flights, never by locks).
                if holder is not None and holder != self._lock_token:
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
            before = dict(identity)
            outcome = self._call_backend(lookup.call, environ, identity)
            if not outcome.failed:
                outcome.values = self._added_values(before, identity)
                record = self._store(lookup, outcome)
                if record is not None and lookup.near_key is not None:
                    self._near.put(lookup.near_key, outcome.userid, outcome.values,
                                   record[_POSITIVE], record[_EXPIRES], lookup.near_flushes)
            return outcome
        finally:
            if lock_key is not None:
                self.backend.delete(lock_key, lookup.route)

    def _wait_for_lock_holder(self, lookup: _Lookup, lock_key: str) -> _Outcome | None:
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

    def _call_backend(self, call: Any, environ: dict, identity: dict) -> _Outcome:
        """Call the wrapped plugin; an exception becomes a logged failure, never a 500."""
        self.counters.incr("backend_calls")
        try:
            return _Outcome(userid=call(environ, identity))
        except BackendUnavailable as exc:
            self.counters.incr("backend_errors")
            self._warn.warning("backend-unavailable", "cache %s: backend unavailable: %s",
                               self.name, exc)
        except Exception:
            self.counters.incr("backend_errors")
            logger.exception("cache %s: the wrapped plugin raised; answering None", self.name)
        return _Outcome(failed=True)

    def _added_values(self, before: dict, identity: dict) -> dict[str, Any]:
        if self.value_items is not None:
            return {k: identity[k] for k in self.value_items if k in identity}
        return {
            k: v
            for k, v in identity.items()
            if k not in BOOKKEEPING_ITEMS and (k not in before or before[k] is not v)
        }

    # ---------------------------------------------------------------- sealed entries

    def _open(self, entry_key: str, raw: Any, generations: list[Any]) -> dict | None:
        """The entry's record if it opens and belongs to the current generations."""
        if raw is None:
            return None
        try:
            record = self._sealer.open(entry_key, raw)
            stored = record[_GENERATIONS]
            if not isinstance(record[_EXPIRES], (int, float)):
                raise Unsealable("bad record")
        except (Unsealable, ValueError, KeyError, TypeError) as exc:
            self.counters.incr("bad_values")
            self._warn.warning("bad-value", "cache %s: ignoring a cached value that does not "
                               "open (%s): forged, corrupted or from another secret",
                               self.name, exc)
            return None
        if len(stored) != len(generations):
            return None
        for current, token in zip(generations, stored, strict=True):
            if type(current) is not bytes or not hmac.compare_digest(current, token.encode()):
                return None  # invalidated since it was stored
        return record

    def _restore(self, identity: dict, record: dict) -> Any:
        values = record[_VALUES]
        if values:
            identity.update(values)
        return record.get(_USERID)

    # ---------------------------------------------------------------- the near cache

    def _restore_near(self, environ: dict, identity: dict, method: str, answer: Answer) -> Any:
        userid, values, positive = answer
        next(self._local_hits)
        self._record(environ, method, "local_hit" if positive else "local_negative_hit",
                     self._debug_logging)
        if values:
            identity.update(values)
        return userid

    def _near_lookup(self, method: str, items: list) -> tuple[bytes | None, Answer | None]:
        """The near cache's key for these items, and its answer if it may serve one now."""
        if time.monotonic() < self._near_check_at or self._near_usable():
            return self._near.lookup(method, items)
        return self._near.key(method, items), None

    def _near_usable(self) -> bool:
        """True if the invalidation epoch was read less than local_check_interval ago, or
        is read now. While another thread reads it, this one skips the near cache rather
        than serve an answer that the read may revoke."""
        if time.monotonic() < self._near_check_at:
            return True
        if not self._near_check_lock.acquire(blocking=False):
            return False
        try:
            self._check_invalidation_epoch()
        finally:
            self._near_check_lock.release()
        return True

    def _check_invalidation_epoch(self) -> None:
        """Flush the near cache if an invalidation happened since the last read."""
        self.counters.log_if_due()  # local hits skip the schedule check; it is made here
        self._debug_logging = logger.isEnabledFor(logging.DEBUG)  # and this one (_record)
        started = time.monotonic()
        key = self._epoch_key
        epoch = self.backend.get_multi([key], key).get(key)
        if not _is_token(epoch):
            # Never written, evicted, memcached restarted or unreachable, or garbage: an
            # invalidation may have been lost with it, so drop everything, and start a token
            # that later invalidations replace (another process may have started one first).
            self._flush_near()
            new = _new_token()
            self._near_epoch = new if self.backend.add(key, new, 0, key) else None
        elif epoch != self._near_epoch:
            self._flush_near()
            self._near_epoch = epoch
        self._near_check_at = started + self._near.check_interval

    def _flush_near(self) -> None:
        if len(self._near):
            self.counters.incr("local_flushes")
        self._near.flush()

    def _store(self, lookup: _Lookup, outcome: _Outcome) -> dict | None:
        """Seal and store the outcome; returns the record if memcached took it."""
        positive = lookup.method == ADD_METADATA or outcome.userid is not None
        ttl = self.ttl if positive else self.negative_ttl
        if not ttl:
            return None
        values = outcome.values or {}
        unfit = [k for k, v in values.items() if not _cacheable(v)]
        if unfit or not _cacheable(outcome.userid):
            self._warn.warning(
                "uncacheable", "cache %s: not caching: item(s) %s hold values that are not "
                "plain data; set value_items to what should be cached",
                self.name, ", ".join(sorted(unfit)) or USERID,
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
            if _is_token(current):
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
            _EXPIRES: time.time() + ttl,
            _GENERATIONS: [t.decode("ascii") for t in tokens],
            _POSITIVE: positive,
        }
        try:
            sealed = self._sealer.seal(lookup.entry_key, record)
        except (TypeError, ValueError) as exc:  # _cacheable let through what JSON refuses
            self._warn.warning("uncacheable", "cache %s: not caching: %s", self.name, exc)
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
        token = _new_token()
        if current is not None:
            return token if self.backend.set(key, token, expire, route) else None
        return token if self.backend.add(key, token, expire, route) else None

    # ---------------------------------------------------------------- operations

    def invalidate_user(self, login: Any = None, userid: Any = None) -> list[str]:
        """Make every cached entry of this user unusable at once, on every server.

        ``login`` drops cached authentications (whatever passwords were used), ``userid``
        cached metadata. Either may be None. The new token goes to every memcached server
        (entries may have failed over to any of them). Returns the servers that could not
        be reached: their old entries come back if they do, so invalidate again then.
        """
        failed: set[str] = set()
        for kind, name in (("login", login), ("userid", userid)):
            if name is not None:
                key = self._keys.user_generation_key(kind, name)
                failed.update(self._replace_generation(key))
        failed.update(self._replace_generation(self._epoch_key))
        if self._near is not None:
            self._flush_near()  # this process at once; the others within check_interval
        self.counters.incr("invalidations")
        return sorted(failed)

    def invalidate_all(self) -> list[str]:
        """Drop everything this plugin cached (not other applications' data); returns the
        servers that could not be reached."""
        failed = set(self._replace_generation(self._namespace_key))
        failed.update(self._replace_generation(self._epoch_key))
        if self._near is not None:
            self._flush_near()
        self.counters.incr("invalidations")
        return sorted(failed)

    def _replace_generation(self, key: str) -> list[str]:
        failed = self.backend.set_everywhere(key, _new_token())
        if len(failed) == len(self.backend.settings.servers):
            raise RuntimeError(f"cache {self.name}: no memcached server could be reached "
                               f"({', '.join(failed)}); nothing was invalidated")
        return failed

    def _record(self, environ: dict, method: str, outcome: str, debug: bool | None = None
                ) -> None:
        """Tell the app (and the DEBUG log) what the cache did; never what the identity is.

        ``debug``: whether DEBUG is on, as last seen (the near cache's hits pass it: asking
        the logger costs them more than all their other bookkeeping). Every other call asks,
        and so does every invalidation-epoch check, so a change of log level reaches near-
        cache hits within ``local_check_interval``.
        """
        by_plugin = environ.get(ENVIRON_KEY)
        if by_plugin is None:  # the usual case, in one go (setdefault builds throwaway dicts)
            environ[ENVIRON_KEY] = {self.name: {method: outcome}}
        else:
            by_plugin.setdefault(self.name, {})[method] = outcome
        if debug is None:
            debug = self._debug_logging = logger.isEnabledFor(logging.DEBUG)
        if debug:
            logger.debug("cache %s: %s %s %s", self.name, method, outcome,
                         environ.get("PATH_INFO", ""))

    def _report_cache_error(self, server: str, message: str) -> None:
        self.counters.incr("cache_errors")
        self._warn.warning("cache-error-" + server, "cache %s: memcached %s: %s",
                           self.name, server, message)


_TOKEN_BYTES = 16
_TOKEN_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def _outcome_of(record: dict | None) -> _Outcome | None:
    """A fresh record as the outcome of a backend call (None if there is none)."""
    if record is None or time.time() >= record[_EXPIRES]:
        return None
    return _Outcome(userid=record.get(_USERID), values=dict(record[_VALUES]))


def _new_token() -> bytes:
    return secrets.token_urlsafe(12).encode("ascii")  # 16 characters


def _is_token(value: Any) -> bool:
    return (
        isinstance(value, bytes)
        and len(value) == _TOKEN_BYTES
        and not value.translate(None, _TOKEN_ALPHABET)  # nothing left but our alphabet
    )


def _as_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8", "replace")
    return repr(value).encode()


def _cacheable(value: Any) -> bool:
    """Plain data that survives sealing unchanged (dict keys must be str for JSON)."""
    if isinstance(value, _SIMPLE_TYPES):
        return not isinstance(value, float) or value == value
    if isinstance(value, (list, tuple)):
        return all(_cacheable(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _cacheable(v) for k, v in value.items())
    return False


# -------------------------------------------------------------------- the ini factory

CLIENT_CHOICES = tuple(BACKENDS)


def make_plugin(**options: Any) -> CachingPlugin:
    """Build a :class:`CachingPlugin` from ini-style string options (see README.rst).

    Options of the 2011 plugin keep their names and meaning: ``memcached_urls``,
    ``authenticator_name``, ``mdprovider_name``, ``key_items``, ``value_items``, ``secret``,
    ``ttl``. Every value is checked here, so a bad config fails when it is loaded.
    """
    given_name = options.get("name")
    opts = Options(options, f"[plugin:{given_name}]" if isinstance(given_name, str) else None)
    try:
        return _make_plugin(opts)
    except ConfigError as exc:
        # Say the section where we know it (``name`` given); our loaders add it otherwise.
        raise (exc.in_section(opts.section) if opts.section and not exc.section
               else exc) from None


def _make_plugin(opts: Options) -> CachingPlugin:
    name = opts.str("name") or None
    secret = opts.secret("secret", "secret_file", min_bytes=MIN_SECRET_BYTES)
    urls = opts.list("memcached_urls", ["127.0.0.1:11211"]) or []
    if not urls:
        raise opts.error("memcached_urls", "needs at least one host:port")
    socket_timeout = opts.float("socket_timeout", 0.5, minimum=0.001, maximum=60)
    settings = BackendSettings(
        servers=tuple(ServerAddress.parse(u) for u in urls),
        socket_timeout=socket_timeout,
        connect_timeout=opts.float("connect_timeout", socket_timeout, minimum=0.001, maximum=60),
        dead_retry=opts.float("dead_retry", 10.0, minimum=0, maximum=3600),
        tls_ca_file=_existing_file(opts, "memcached_tls_ca_file"),
        tls_cert_file=_existing_file(opts, "memcached_tls_cert_file"),
        tls_key_file=_existing_file(opts, "memcached_tls_key_file"),
        tls_verify=opts.bool("memcached_tls_verify", True),
    )
    client = opts.choice("memcached_client", "python-memcached", CLIENT_CHOICES)
    if settings.tls and client != "pymemcache":
        raise opts.error("memcached_client", "TLS to memcached needs memcached_client = pymemcache")
    if settings.tls_key_file and not settings.tls_cert_file:
        raise opts.error("memcached_tls_key_file", "needs memcached_tls_cert_file")

    authenticator = _inline_plugin(opts, "authenticator")
    mdprovider = _inline_plugin(opts, "mdprovider")
    prometheus = opts.bool("prometheus", False)
    kwargs: dict[str, Any] = dict(
        secret=secret,
        authenticator=authenticator,
        mdprovider=mdprovider,
        authenticator_name=opts.str("authenticator_name") or None,
        mdprovider_name=opts.str("mdprovider_name") or None,
        key_items=opts.list("key_items"),
        value_items=opts.list("value_items"),
        ttl=opts.int("ttl", 60, minimum=1, maximum=365 * 24 * 3600),
        negative_ttl=opts.int("negative_ttl", 0, minimum=0, maximum=24 * 3600),
        stale_ttl=opts.int("stale_ttl", 0, minimum=0, maximum=30 * 24 * 3600),
        lock_timeout=opts.int("lock_timeout", 0, minimum=0, maximum=600),
        login_item=opts.str("login_item", "login") or "login",
        key_prefix=opts.str("key_prefix", "") or "",
        name=name,
        stats_log_interval=opts.float("stats_log_interval", 300.0, minimum=0),
        local_ttl=opts.float("local_ttl", 0, minimum=0, maximum=3600),
        local_max_entries=opts.int("local_max_entries", 10_000, minimum=1, maximum=10_000_000),
        local_check_interval=opts.float("local_check_interval", 1.0, minimum=0.01,
                                        maximum=3600),
    )
    if authenticator is not None and kwargs["authenticator_name"]:
        raise opts.error("authenticator", "give 'authenticator' or 'authenticator_name', not both")
    if mdprovider is not None and kwargs["mdprovider_name"]:
        raise opts.error("mdprovider", "give 'mdprovider' or 'mdprovider_name', not both")
    opts.finish()

    holder: list[CachingPlugin] = []

    def report(server: str, message: str) -> None:
        if holder:
            holder[0]._report_cache_error(server, message)

    backend = BACKENDS[client](settings, report)
    plugin = CachingPlugin(backend=backend, **kwargs)
    holder.append(plugin)
    if prometheus and not register_prometheus(plugin.counters):
        raise opts.error("prometheus", "prometheus_client is not installed")
    return plugin


def _registry(environ: dict) -> Mapping[str, Any]:
    """repoze.who's plugins by name for this request, under any way repoze.who is driven."""
    registry = environ.get("repoze.who.plugins")  # the stock middleware (only it sets this)
    if registry:
        return registry
    api = environ.get("repoze.who.api")  # every APIFactory: ours, stock, frameworks'
    return getattr(api, "name_registry", None) or {}


def _as_plugin(plugin: Any, iface: Any, option: str) -> Any:
    """A plugin object as given, or the object a ``module:object`` spec names."""
    if isinstance(plugin, str):
        plugin = build_plugin(plugin, {}, option) if plugin.strip() else None
    if plugin is not None and not iface.providedBy(plugin):
        raise ConfigError(f"{plugin!r} does not provide {iface.__name__}", option=option)
    return plugin


def _inline_plugin(opts: Options, option: str) -> Any:
    """``authenticator = module:factory`` plus ``authenticator.OPTION = value`` lines, or
    (configured from Python) a plugin object, or a factory to call with the sub-options."""
    spec = opts.pop_raw(option)
    sub_options = opts.pop_prefixed(option)
    iface = IAuthenticator if option == "authenticator" else IMetadataProvider
    if spec is not None and not isinstance(spec, str):
        if iface.providedBy(spec):
            if sub_options:
                raise opts.error(f"{option}.{next(iter(sub_options))}",
                                 f"given with a plugin object as '{option}'")
            return spec
        if not callable(spec):
            raise opts.error(option, f"{spec!r} is neither a plugin providing "
                             f"{iface.__name__}, a factory, nor a 'module:factory' spec")
        try:
            spec = spec(**sub_options)
        except ConfigError as exc:
            raise exc.under(option) from None
        if not iface.providedBy(spec):
            raise opts.error(option, f"the factory made {spec!r}, which does not provide "
                             f"{iface.__name__}")
        return spec
    spec = spec.strip() if spec else spec
    if not spec:
        if sub_options:
            raise opts.error(f"{option}.{next(iter(sub_options))}", f"given without '{option}'")
        return None
    plugin = build_plugin(spec, sub_options, option)
    if not iface.providedBy(plugin):
        raise opts.error(option, f"{spec!r} made {plugin!r}, which does not provide "
                         f"{iface.__name__}")
    return plugin


def _existing_file(opts: Options, name: str) -> str | None:
    path = opts.str(name)
    if path and not os.path.isfile(path):
        raise opts.error(name, f"no such file {path!r}")
    return path or None
