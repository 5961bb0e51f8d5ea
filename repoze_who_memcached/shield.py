"""The lockout shield: after ``max_failures`` denials for one login within
``failure_window`` seconds, further logins of it are refused without asking the backend.

Why: a client that keeps retrying a stale password (a phone's mail app after a password
change) would otherwise walk the account into the directory's own lockout (Active
Directory's lockout threshold), and a script guessing passwords would reach the directory
at full speed. The count is cluster-wide: a memcached counter under an HMAC key of the
login's normal form and of the directory (the wrapped plugin's fingerprint), so every app
server sees the same count, equivalent spellings of a login share it, and denials at one
directory never refuse logins to another cached under the same secret and key_prefix.

What it never does: refuse a cached success. The shield sits in front of the backend only,
on the miss path; a right password whose answer is cached is served as before, so someone
who does not know it cannot lock the user out of the cache. A right password at the backend
clears the count. Attempts are counted before the backend is asked (an ``incr``), so however
many app servers race, at most ``max_failures`` attempts per window reach it.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from .backends import CacheBackend
from .counters import Counters
from .keys import KeyMaker
from .memos import remember

logger = logging.getLogger("repoze_who_memcached")

_WARNED_MEMO = 10_000  # logins remembered for "warn once per window" (emptied when full)


class LockoutShield:
    def __init__(self, keys: KeyMaker, backend: CacheBackend, counters: Counters,
                 max_failures: int, failure_window: int) -> None:
        self.keys = keys
        self.backend = backend
        self.counters = counters
        self.max_failures = max_failures
        self.failure_window = failure_window
        self._warned: dict[str, float] = {}  # counter key -> when its window's warning went
        self.scope = b""
        """The wrapped authenticator's :func:`~.keys.scope_digest` (set by the plugin when it
        is bound; b"" for none): counts are per login and directory, so denials at one
        directory never refuse logins to another cached under the same secret and prefix."""
        self._lock = threading.Lock()

    def admit(self, login: Any, route: str) -> str | None:
        """Count one attempt for ``login``; its counter key if it may go to the backend,
        None if it is refused. A memcached that cannot count admits (it fails open for
        availability; the directory's own lockout still stands behind it)."""
        key = self.keys.login_key("failures", login, self.scope)
        count = self.backend.incr(key, 1, route)
        if count is None:  # no counter yet in this window (or memcached trouble)
            if self.backend.add(key, b"1", self.failure_window, route):
                count = 1
            else:
                count = self.backend.incr(key, 1, route)  # another process just made it
        if count is not None and count > self.max_failures:
            self.counters.incr("shield_refusals")
            self._warn_once(key, login)
            return None
        return key

    def answered(self, key: str, route: str, success: bool | None) -> None:
        """After the backend answered: a success clears the count; a failure to answer
        (``None``) gives the attempt back; a denial stays counted."""
        if success:
            self.backend.delete(key, route)
        elif success is None:
            self.backend.incr(key, -1, route)

    def _warn_once(self, key: str, login: Any) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._warned.get(key, -1e18) < self.failure_window:
                return
            remember(self._warned, key, now, _WARNED_MEMO)
        # As directories log locked accounts; cut short (a login field can hold anything).
        logger.warning("cache %s: login %.64r had %d denials within %ds: refusing its "
                       "uncached logins without asking the backend until the window ends",
                       self.counters.name, login, self.max_failures, self.failure_window)
