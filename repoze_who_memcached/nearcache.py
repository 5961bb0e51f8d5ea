"""An optional near cache: answers a process has just had from memcached, kept in its memory.

A memcached hit costs a network round trip, which on a loaded machine costs more than the
whole rest of the request. With ``local_ttl`` set, a process keeps each answer it fetched or
computed for at most that many seconds and serves repeats from memory.

What it gives up, and how little: an invalidation (``invalidate_user``, ``invalidate_all``)
also replaces an *invalidation epoch* token on every memcached server. Each process reads
that token at most every ``local_check_interval`` seconds, before serving from memory, and
drops everything it holds when the token changed, is missing or can't be read. So an
invalidation reaches every process within ``local_check_interval`` (not at once), and a
process that cannot reach memcached serves nothing from memory.

Keys never hold credentials: they are keyed BLAKE2b digests under a random per-process key
(the memcached keys need a shared secret; these don't, and are cheaper). Only identities
whose items are plain str, bytes, int, float, bool or None use the near cache: their
``repr`` is an unambiguous encoding, which keeps the key cheap.
"""

from __future__ import annotations

import copy
import hashlib
import os
import threading
import time
from collections.abc import Sequence
from typing import Any

# Exact types only: a subclass could override __repr__ and make two identities collide.
_PLAIN_TYPES = frozenset({str, bytes, int, float, bool, type(None)})
_IMMUTABLE_TYPES = (str, bytes, int, float, bool, type(None))


class NearCache:
    """A bounded, thread-safe map from identity digest to a cached answer.

    Entries: ``(expires_monotonic, userid, values, positive, needs_copy)``. ``values`` that
    hold mutable objects (lists, dicts) are deep-copied on the way out, so an application
    that changes its identity dict cannot change what later requests get.
    """

    def __init__(self, ttl: float, max_entries: int, check_interval: float) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self.check_interval = check_interval
        self._hash = hashlib.blake2b(key=os.urandom(32), digest_size=16)
        self._entries: dict[bytes, tuple[float, Any, dict[str, Any], bool, bool]] = {}
        self._lock = threading.Lock()
        self.flushes = 0
        """Counts flushes: a store that began before a flush is dropped (see :meth:`put`)."""

    def __len__(self) -> int:
        return len(self._entries)

    def key(self, method: str, items: Sequence[tuple[str, Any]]) -> bytes | None:
        """The digest for these items, or None when a value is not a plain scalar."""
        for name, value in items:
            if type(value) not in _PLAIN_TYPES or type(name) is not str:
                return None
        digest = self._hash.copy()
        digest.update(repr((method, items)).encode("utf-8", "surrogatepass"))
        return digest.digest()

    def get(self, key: bytes) -> tuple[float, Any, dict[str, Any], bool, bool] | None:
        entry = self._entries.get(key)
        if entry is None or time.monotonic() >= entry[0]:
            return None
        return entry

    @staticmethod
    def restore(entry: tuple[float, Any, dict[str, Any], bool, bool]) -> tuple[Any, dict]:
        """(userid, values) of an entry, copied if they could be mutated."""
        _, userid, values, _, needs_copy = entry
        if needs_copy:
            return copy.deepcopy(userid), copy.deepcopy(values)
        return userid, values

    def put(
        self,
        key: bytes,
        userid: Any,
        values: dict[str, Any] | None,
        positive: bool,
        expires_at: float,
        flushes_seen: int,
    ) -> None:
        """Keep an answer until ``min(local ttl, its own expiry)`` (``expires_at`` is wall
        clock, as stored in memcached). ``flushes_seen`` is :attr:`flushes` as read before
        the answer was fetched: if a flush happened since, the answer may predate an
        invalidation and is not kept."""
        lifetime = min(self.ttl, expires_at - time.time())
        if lifetime <= 0:
            return
        values = values or {}
        needs_copy = not isinstance(userid, _IMMUTABLE_TYPES) or not all(
            isinstance(v, _IMMUTABLE_TYPES) for v in values.values()
        )
        if needs_copy:
            userid, values = copy.deepcopy(userid), copy.deepcopy(values)
        entry = (time.monotonic() + lifetime, userid, values, positive, needs_copy)
        with self._lock:
            if flushes_seen != self.flushes:
                return
            entries = self._entries
            entries.pop(key, None)
            while len(entries) >= self.max_entries:
                del entries[next(iter(entries))]  # oldest first
            entries[key] = entry

    def flush(self) -> None:
        with self._lock:
            self._entries = {}
            self.flushes += 1
