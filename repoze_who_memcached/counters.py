"""Per-plugin counters, rate-limited warnings, and the optional Prometheus export.

Operators ask "is the cache working?" the day after deploying it. Counters answer from
Python (``plugin.counters.snapshot()``), in the log (a summary at INFO every
``stats_log_interval`` seconds, checked on the request path with one clock read), in the
demo app, and in Prometheus when ``prometheus_client`` is installed. Collection is pull-based:
nothing extra happens per request for Prometheus.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

COUNTER_NAMES = (
    "hits",
    "misses",
    "negative_hits",
    "local_hits",
    "local_flushes",
    "stale_served",
    "backend_calls",
    "backend_errors",
    "cache_errors",
    "bad_values",
    "lock_waits",
    "coalesced",
    "invalidations",
    "invalidation_fallbacks",
    "shield_refusals",
    "refreshes",
    "password_changes",
    "rotated_hits",
)


class Counters:
    """Exact event counts, cheap enough for the request path, plus a periodic INFO summary.

    Each counter is an ``itertools.count``: ``next()`` is one C call, which the GIL makes
    atomic, so counting takes no lock and loses nothing. Reading one advances it too, so
    :meth:`snapshot` (under a lock) subtracts the reads it has made.
    """

    def __init__(self, name: str, logger: logging.Logger, log_interval: float = 0.0) -> None:
        self.name = name
        self._counts = {counter: itertools.count() for counter in COUNTER_NAMES}
        self._reads = 0  # how many times snapshot() advanced every counter
        self._lock = threading.Lock()  # guards snapshot reads and the summary's schedule
        self._logger = logger
        self._log_interval = log_interval
        self._next_log = time.monotonic() + log_interval if log_interval else float("inf")

    def incr(self, counter: str) -> None:
        next(self._counts[counter])
        if time.monotonic() >= self._next_log:
            self._log_summary()

    def counter(self, counter: str) -> Iterator[int]:
        """The raw counter, for the hottest path: ``next()`` it to count (without the
        summary's schedule check: call :meth:`log_if_due` now and then instead)."""
        return self._counts[counter]

    def log_if_due(self) -> None:
        if time.monotonic() >= self._next_log:
            self._log_summary()

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            reads = self._reads
            self._reads += 1
            return {counter: next(count) - reads for counter, count in self._counts.items()}

    def hit_ratio(self) -> float | None:
        counts = self.snapshot()
        answered = counts["hits"] + counts["negative_hits"] + counts["local_hits"]
        looked_up = answered + counts["misses"]
        return answered / looked_up if looked_up else None

    def _log_summary(self) -> None:
        with self._lock:
            now = time.monotonic()
            if now < self._next_log:
                return
            self._next_log = now + self._log_interval
        counts = self.snapshot()
        self._logger.info(
            "cache %s counters: %s", self.name, " ".join(f"{k}={v}" for k, v in counts.items())
        )


class RateLimitedLog:
    """Warnings about one recurring fault (a dead server, forged values) at most once per
    ``interval`` seconds each, with a count of what was held back: a dead memcached must not
    write a line per request."""

    def __init__(self, logger: logging.Logger, interval: float = 30.0) -> None:
        self._logger = logger
        self._interval = interval
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()

    MAX_ARG_CHARS = 200  # an error may quote a value read from memcached: keep lines short

    def warning(self, topic: str, message: str, *args: Any) -> None:
        args = tuple(
            a[: self.MAX_ARG_CHARS] + "..." if isinstance(a, str) and len(a) > self.MAX_ARG_CHARS
            else a
            for a in args
        )
        now = time.monotonic()
        with self._lock:
            last = self._last.get(topic)
            if last is not None and now - last < self._interval:
                self._held[topic] = self._held.get(topic, 0) + 1
                return
            self._last[topic] = now
            held = self._held.pop(topic, 0)
        if held:
            message += " (%d similar messages suppressed)"
            args = (*args, held)
        self._logger.warning(message, *args)


_exported: list[Counters] = []
_export_lock = threading.Lock()


def register_prometheus(counters: Counters) -> bool:
    """Expose ``counters`` as ``repoze_who_memcached_<counter>_total{plugin="<name>"}``.

    One collector serves every plugin in the process (Prometheus refuses two collectors with
    the same metric names). Returns False when prometheus_client is not installed.
    """
    try:
        from prometheus_client import REGISTRY
        from prometheus_client.core import CounterMetricFamily
    except ImportError:
        return False

    class _Collector:
        def collect(self) -> Iterator[Any]:
            with _export_lock:
                plugins = list(_exported)
            for counter in COUNTER_NAMES:
                family = CounterMetricFamily(
                    f"repoze_who_memcached_{counter}",
                    f"repoze_who_memcached: {counter.replace('_', ' ')}",
                    labels=["plugin"],
                )
                for plugin_counters in plugins:
                    family.add_metric([plugin_counters.name], plugin_counters.snapshot()[counter])
                yield family

    with _export_lock:
        first = not _exported
        if counters not in _exported:
            _exported.append(counters)
    if first:
        REGISTRY.register(_Collector())
    return True
