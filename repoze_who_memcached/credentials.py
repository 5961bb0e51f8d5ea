"""The latest password wins (``password_item``): mixed into the region.

Each successful backend answer for a login leaves a keyed digest of its credential, sealed
under a per-login key; a success with another credential replaces the login's generation
token on every server, so an old password stops working through every app server at once.
"""

from __future__ import annotations

import hmac

from .generations import new_token
from .keys import Unencodable
from .records import Lookup as _Lookup
from .records import Outcome
from .sealing import Unsealable


class LatestCredentialWins:
    """The region's latest-password half (``CacheRegion`` mixes it in)."""

    def _remember_credential(self, lookup: _Lookup, outcome: Outcome,
                             refreshing: bool = False) -> bool:
        """The latest password wins: a success with another credential than the login's
        last successful one means the password changed, so every other entry of the login
        stops being used, on every server, before this one is stored under a new token.

        The last credential is kept as a keyed digest, sealed (AES-GCM, padded) under a
        per-login key. Denials rewrite it too, unchanged, when they are cached: to a
        memcached reader a success and a cached denial write the same things.

        ``refreshing``: a refresh-ahead's answer, which may arrive after a newer password's
        login; then a different stamp means "too late" (returns False, nothing changed).
        """
        assert lookup.user is not None
        kind, login = lookup.user
        if kind != "login" or len(lookup.generation_keys) < 2:
            return True
        if not outcome.positive and not self.negative_ttl:
            return True  # a denial that stores nothing
        stamp_key = self.keys.login_key("credential-stamp", login)
        try:
            ours = self.keys.credential_stamp(login, lookup.credential).decode("ascii")
        except (Unencodable, RecursionError, ValueError):
            return True
        raw = self.backend.get_multi([stamp_key], lookup.route).get(stamp_key)
        held = None
        if raw is not None:
            try:
                held = self.sealer.open(stamp_key, raw).get("s")
            except (Unsealable, ValueError, TypeError, AttributeError):
                held = None  # garbage: as if none were held
        if outcome.positive:
            if isinstance(held, str) and not hmac.compare_digest(held, ours):
                if refreshing:
                    return False
                token = new_token()
                failed = self.backend.set_everywhere(lookup.generation_keys[1], token)
                if len(failed) < len(self.backend.settings.servers):
                    lookup.generations[1] = token
                    self.counters.incr("password_changes")
                    self._replace_epoch()
            held = ours
        kept = held if isinstance(held, str) else None
        self.backend.set(stamp_key, self.sealer.seal(stamp_key, {"s": kept}),
                         self.store_expiry, lookup.route)
        return True

