"""Refresh-ahead (``refresh_ahead``): mixed into the region.

A positive hit near the end of its entry's life is answered at once and re-checked in the
background: two threads per process, once per entry in the process, once in the cluster (a
memcached lock). The request's environ and identity are copied for the call and live only
for it. A success re-stores, a denial drops the entry, a failure keeps it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from .records import Lookup as _Lookup
from .records import Outcome

logger = logging.getLogger("repoze_who_memcached")

_MAX_PENDING_REFRESHES = 256  # refresh-ahead calls queued at once; more are skipped


def _copy_dicts(args: tuple) -> tuple:
    """A refresh runs after its request is answered: it gets its own environ and identity
    (shallow copies), so neither side sees the other's changes."""
    return tuple(dict(a) if isinstance(a, dict) else a for a in args)


class RefreshAhead:
    """The region's refresh-ahead half (``CacheRegion`` mixes it in)."""

    def _refresh_soon(self, lookup: _Lookup, create: Callable[..., Outcome],
                      args: tuple) -> None:
        """Refresh-ahead: re-check an entry near its end in the background, once per
        process (a set of keys) and once in the cluster (the memcached lock)."""
        with self._flights_lock:
            if lookup.entry_key in self._refreshing or (
                    len(self._refreshing) >= _MAX_PENDING_REFRESHES):
                return
            self._refreshing.add(lookup.entry_key)
            if self._refresher is None:
                self._refresher = ThreadPoolExecutor(
                    max_workers=2, thread_name_prefix="repoze_who_memcached-refresh")
        try:
            self._refresher.submit(self._refresh, lookup, create, _copy_dicts(args))
        except RuntimeError:  # interpreter shutting down
            with self._flights_lock:
                self._refreshing.discard(lookup.entry_key)

    def _refresh(self, lookup: _Lookup, create: Callable[..., Outcome], args: tuple) -> None:
        lock_key = self.keys.lock_key(lookup.entry_key)
        try:
            if not self.backend.add(lock_key, self.lock_token, max(self.lock_timeout, 10),
                                    lookup.route):
                return  # another process refreshes it (or memcached fails)
            try:
                outcome = create(*args)
                if outcome.failed or outcome.refused:
                    return  # the entry stays until its own expiry
                self.counters.incr("refreshes")
                if outcome.positive:
                    if lookup.credential is not None and not self._remember_credential(
                            lookup, outcome, refreshing=True):
                        # The login's password changed since this entry was stored: a late
                        # "yes" for the old one must not undo that; drop the entry instead.
                        self.backend.delete(lookup.entry_key, lookup.route)
                        return
                    self._store(lookup, outcome)
                else:  # the backend says no now: drop the entry at once, near caches too
                    self.backend.delete(lookup.entry_key, lookup.route)
                    self._replace_epoch()
            finally:
                self.backend.delete(lock_key, lookup.route)
        except Exception:  # a background thread: log, never raise into the pool
            logger.exception("cache %s: refresh-ahead failed", self.name)
        finally:
            with self._flights_lock:
                self._refreshing.discard(lookup.entry_key)

