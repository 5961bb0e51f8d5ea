"""What the cache core's pieces pass between them: outcomes, lookups, sealed-record fields.

Its own module so that the region (``region.py``) and the features mixed into it
(``rotation.py``, ``refresh.py``, ``credentials.py``) share them without importing each other.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from .keys import KeyMaker
from .sealing import Sealer

_SIMPLE_TYPES = (str, bytes, int, float, bool, type(None))

# Field names inside a sealed record (short: they are stored once per entry).
USERID, VALUES, EXPIRES, GENERATIONS, POSITIVE = "u", "v", "x", "g", "p"


@dataclass
class Outcome:
    """What one call of ``create`` produced, shared with the threads that waited for it.

    ``positive``: an answer to cache for ``ttl`` (else a denial, for ``negative_ttl``).
    ``failed``: the backend could not answer; nothing is cached and a stale answer may do.
    ``refused``: the caller declined to ask (the lockout shield): a denial, not cached.
    """

    userid: Any = None
    values: dict[str, Any] | None = None
    failed: bool = False
    positive: bool = False
    refused: bool = False


Result = tuple[str, Any, dict[str, Any] | None]
"""What :meth:`CacheRegion.get_or_create` returns: (outcome, userid, values), outcome one
of hit, negative_hit, miss, stale, error, refused; values are the caller's own to change."""

@dataclass(frozen=True)
class SecretKeys:
    """Keys and sealing under one previous secret (``previous_secrets``)."""

    keys: KeyMaker
    sealer: Sealer
    namespace_key: str


@dataclass
class Lookup:
    """One cached call in progress: what it asks, and where its keys live."""

    entry_key: str
    route: str  # what picks the server: the user's route (region.route_for), or the entry key
    generation_keys: list[str]
    generations: list[Any]  # the tokens as last read
    near_key: bytes | None = None  # where the near cache keeps the answer (None: it doesn't)
    near_flushes: int = 0  # the near cache's flush count before the first read
    user: tuple[str, Any] | None = None  # (kind, name) of the user who owns the entry
    credential: Any = None  # what a login proved with (the latest password wins)



def outcome_of(record: dict | None) -> Outcome | None:
    """A fresh record as the outcome of a call (None if there is none)."""
    if record is None or time.time() >= record[EXPIRES]:
        return None
    return Outcome(userid=record.get(USERID), values=dict(record[VALUES]),
                   positive=bool(record[POSITIVE]))


def cacheable(value: Any) -> bool:
    """Plain data that survives sealing unchanged (dict keys must be str for JSON)."""
    if isinstance(value, _SIMPLE_TYPES):
        return not isinstance(value, float) or value == value
    if isinstance(value, (list, tuple)):
        return all(cacheable(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and cacheable(v) for k, v in value.items())
    return False
