"""Per-plugin event counts (what happened on the wire), for tests and operators."""

from __future__ import annotations

import threading


class LdapCounters:
    """Thread-safe event counts of one plugin: ``plugin.counters.snapshot()`` is a plain dict.

    ``plugin.counters()`` is the same snapshot (a shorthand). Tests use them to prove what
    happened on the wire ("no new service bind", "no user bind was attempted").
    """

    NAMES = (
        "requests",  # authenticate() / add_metadata() calls
        "successes",
        "failures",  # answered "no" (None, or no metadata added)
        "backend_errors",  # raised BackendUnavailable
        "searches",  # search requests sent on service connections
        "service_binds",  # service connections opened and bound (the pool's misses)
        "user_binds",  # binds as a user, each on its own short-lived connection
        "stale_connections",  # pooled connections found dead (server restarted) and replaced
        "fast_failures",  # calls refused at once while the directory was failing (retry_after)
        "refused_inputs",  # answered "no" for the request's own sake: too long, SASLprep,
        # a filter ldap3 cannot encode, a partial (size-limited) result
    )

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(self.NAMES, 0)

    def add(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._counts[name] += amount

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def __repr__(self) -> str:
        return f"<LdapCounters {self.snapshot()}>"

    __call__ = snapshot
