"""An optional near cache: answers a process has just had from memcached, kept in its memory.

A memcached hit costs a network round trip, which on a loaded machine costs more than the
whole rest of the request. With ``local_ttl`` set, a process keeps each answer it fetched or
computed for at most that many seconds and serves repeats from memory.

What it gives up, and how little: an invalidation (``invalidate_user``, ``invalidate_all``)
also replaces an *invalidation epoch* token on every memcached server. Each process reads
that token at most every ``local_check_interval`` seconds, before serving from memory, and
drops everything it holds when the token changed, is missing or can't be read. So an
invalidation reaches every process within ``local_check_interval`` (not at once; the
process that invalidates drops its own at once), and a process that cannot read the token
drops its memory at every check: what it serves was read from memcached, generation tokens
checked, less than one interval before.

Keys never hold credentials: they are keyed BLAKE2s digests under a random per-process key
(the memcached keys need a shared secret; these don't, and are cheaper) of the items'
``marshal`` encoding. ``marshal`` is only ever written here, never read. It encodes
built-in scalars and containers unambiguously and refuses other objects, subclasses of str
and int included, so such an identity simply skips the near cache. It writes bytes-like
objects (bytearray, memoryview, bytes subclasses) as bytes, as the memcached key does.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import marshal
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

_IMMUTABLE_TYPES = (str, bytes, int, float, bool, type(None))

# Version 2: the newest without back-references and interning marks, so equal items encode
# alike whatever objects hold them (version 4 makes them depend on reference counts).
_MARSHAL_VERSION = 2


def is_mutable(values: dict[str, Any]) -> bool:
    """True if any value could be changed in place (a list, a dict...)."""
    for value in values.values():  # noqa: SIM110 - a loop, not a generator: every hit asks
        if not isinstance(value, _IMMUTABLE_TYPES):
            return True
    return False


def copy_if_mutable(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` itself if nothing in it can change, else a deep copy."""
    return copy.deepcopy(values) if is_mutable(values) else values


Answer = tuple[Any, dict[str, Any], bool]
"""What the near cache holds for an identity: (userid, values, positive)."""


def _cannot_revalidate() -> bool:
    return False  # a near cache of no region's: its answers are never trusted


class NearCache:
    """A bounded, thread-safe map from identity digest to a cached answer.

    Entries: ``(expires_monotonic, needs_copy, (userid, values, positive))``. Answers that
    hold mutable objects (lists, dicts) are deep-copied on the way in and out, so an
    application that changes its identity dict cannot change what later requests get.
    """

    def __init__(
        self, ttl: float, max_entries: int, check_interval: float, methods: Sequence[str]
    ) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self.check_interval = check_interval
        hash_key = os.urandom(32)
        # One keyed BLAKE2s state per method, its name already absorbed (BLAKE2s: a digest of
        # a short identity costs one compression of 64 bytes, a fifth less than BLAKE2b's).
        self._hashes = {}
        for method in methods:
            self._hashes[method] = hashlib.blake2s(key=hash_key, digest_size=16)
            self._hashes[method].update(method.encode() + b"\0")
        self._entries: dict[bytes, tuple[float, bool, Answer]] = {}
        self.trusted_until = 0.0
        """Monotonic time until which answers may be served: the invalidation epoch was read
        less than ``check_interval`` before it (kept by the cache region)."""
        self.revalidate: Callable[[], bool] = _cannot_revalidate
        """Called when ``trusted_until`` has passed: True if the epoch was read (and
        ``trusted_until`` moved on), False if answers may not be served now."""
        self._lock = threading.Lock()
        self.flushes = 0
        """Counts flushes: a store that began before a flush is dropped (see :meth:`put`)."""

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, method: str, items: Any) -> tuple[bytes | None, Answer | None]:
        """The key for these items (None when marshal can't encode one of them) and, if
        held, not expired and servable now (see :attr:`trusted_until`), the answer
        ``(userid, values, positive)``. The caller may change ``values``' contents (a copy
        if they could be changed) but not the dict."""
        try:
            encoded = marshal.dumps(items, _MARSHAL_VERSION)
        except ValueError:
            return None, None
        digest = self._hashes[method].copy()
        digest.update(encoded)
        key = digest.digest()
        now = time.monotonic()
        if now >= self.trusted_until:
            if not self.revalidate():
                return key, None
            now = time.monotonic()  # the read may have waited for memcached
        entry = self._entries.get(key)
        if entry is None or now >= entry[0]:
            return key, None
        return key, copy.deepcopy(entry[2]) if entry[1] else entry[2]

    def key(self, method: str, items: Any) -> bytes | None:
        """The key alone, as :meth:`lookup` computes it (for tests and tools; the request
        path takes key and answer from one lookup)."""
        return self.lookup(method, items)[0]

    def get(self, key: bytes) -> Answer | None:
        """The answer held under ``key`` (as :meth:`lookup` returns it), if any."""
        entry = self._entries.get(key)
        if entry is None or time.monotonic() >= entry[0]:
            return None
        return copy.deepcopy(entry[2]) if entry[1] else entry[2]

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
        needs_copy = not isinstance(userid, _IMMUTABLE_TYPES) or is_mutable(values)
        answer = (userid, values, positive)
        if needs_copy:
            answer = copy.deepcopy(answer)
        entry = (time.monotonic() + lifetime, needs_copy, answer)
        with self._lock:
            if flushes_seen != self.flushes:
                return
            entries = self._entries
            entries.pop(key, None)
            if len(entries) >= self.max_entries:
                # Drop the oldest tenth at once, into a new dict: popping a dict's first
                # entry one at a time is O(n) each (the holes before it are scanned), and
                # a rebuilt dict has no holes. Readers keep the old one until they finish.
                drop = max(1, len(entries) - self.max_entries + 1, self.max_entries // 10)
                entries = self._entries = dict(itertools.islice(entries.items(), drop, None))
            entries[key] = entry

    def flush(self) -> None:
        with self._lock:
            self._entries = {}
            self.flushes += 1
