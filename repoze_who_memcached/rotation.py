"""Secret rotation without a cold cache (``previous_secrets``): mixed into the region.

A user's keys are routed by a digest of the login's normal form, the same under every
secret, so an entry written under a previous secret sits on the server the current lookup
asks; its keys ride along in the lookup's one ``get``, and an entry found there is re-stored
under the current secret, never for longer than the current ``ttl``.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from typing import Any

from .keys import USER_KEY_MEMO_SIZE, Unencodable, encode_value, ldap_normal_form
from .memos import remember
from .records import EXPIRES as _EXPIRES
from .records import POSITIVE as _POSITIVE
from .records import USERID as _USERID
from .records import VALUES as _VALUES
from .records import Lookup as _Lookup
from .records import Outcome
from .records import SecretKeys as _SecretKeys


class SecretRotation:
    """The region's secret-rotation half (``CacheRegion`` mixes it in)."""

    _routes: dict[str, str]  # route_for's memo, made by CacheRegion.__init__

    def route_for(self, user: tuple[str, Any] | None) -> str | None:
        """What picks the memcached server of a user's keys (None: no user).

        Not a key: a digest of the user's normal form, the same under every secret, so an
        entry written under a previous secret sits on the server the current one asks
        (secret rotation reads both in one round trip). It tells whoever sees it which
        server a user's keys are on, and nothing else. Behind a proxy the proxy routes by
        the keys' hash tags, and the user's generation key is the route.
        """
        if user is None:
            return None
        kind, name = user
        if self.proxied:
            return self.user_key(kind, name)
        # Asked on every request, from the login alone: remembered for exact str names (a
        # login is no secret; the memo is emptied when full, as KeyMaker's user keys are).
        memo_key = kind + "\0" + name if type(name) is str else None
        if memo_key is not None:
            route = self._routes.get(memo_key)
            if route is not None:
                return route
        out: list[bytes] = [b"route\0"]
        try:
            encode_value(kind, out)
            encode_value(ldap_normal_form(name) if isinstance(name, str) else name, out)
        except (Unencodable, RecursionError, ValueError):
            return None
        route = "route:" + hashlib.sha256(b"".join(out)).hexdigest()[:32]
        if memo_key is not None:
            remember(self._routes, memo_key, route, USER_KEY_MEMO_SIZE)
        return route

    def _previous_keys(self, items: Sequence[tuple[str, Any]], head: bytes,
                       user: tuple[str, Any] | None, route: str
                       ) -> list[tuple[_SecretKeys, str, list[str]]]:
        """For each previous secret: its keys, and the entry and generation keys the same
        answer has under it."""
        found = []
        for old in self.previous:
            user_key = self.user_key(*user, keys=old.keys) if user is not None else None
            entry_key = old.keys.entry_key("", items, head, old.keys.tag_of(user_key))
            namespace_key = old.keys.namespace_key_for(user_key or entry_key) if (
                self.proxied) else old.namespace_key
            found.append((old, entry_key,
                          [namespace_key, user_key] if user_key else [namespace_key]))
        return found

    def _rotated(self, lookup: _Lookup, rotated: list[tuple[_SecretKeys, str, list[str]]],
                 found: dict[str, Any]) -> dict | None:
        """An entry stored under a previous secret (``previous_secrets``), read in the same
        round trip as the current one, re-stored under the current secret; None if none."""
        for old, entry_key, generation_keys in rotated:
            raw = found.get(entry_key)
            if raw is None:
                continue
            record = self._open(entry_key, raw, [found.get(k) for k in generation_keys],
                                old.sealer)
            if record is None or time.time() >= record[_EXPIRES]:
                continue
            self.counters.incr("rotated_hits")
            positive = bool(record[_POSITIVE])
            outcome = Outcome(record.get(_USERID), dict(record[_VALUES]), positive=positive)
            # Never longer than this configuration's own ttl (the old one may have been longer).
            expires = min(record[_EXPIRES],
                          time.time() + (self.ttl if positive else self.negative_ttl))
            # A record of our own: the opened one is the sealer's, shared (sealing.py).
            record = {**record, _EXPIRES: expires}
            self._store(lookup, outcome, expires=expires)
            return record
        return None

