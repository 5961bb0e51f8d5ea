"""The circuit breaker: fail fast while the directory hangs, never because of client input."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from ..errors import BackendUnavailable
from .counters import LdapCounters
from .results import _is_timeout, _Refused


class _Breaker:
    """Fail fast while the directory hangs (a circuit breaker).

    A hung directory costs each call a full ``timeout``; with more callers than server
    threads, logins that need no directory at all (cached ones) queue behind them. So after
    a *slow* failure (one that took at least ``slow_after`` seconds: a timeout, a hung
    server), calls fail at once for ``retry_after`` seconds; then one call at a time (the
    probe) is let through: its success closes the breaker, a slow failure opens it again.

    A fast failure (connection refused, a dropped connection, a server-side error) never
    opens it, and closes it: asking again costs the callers nothing, and the first login
    after the directory is back must succeed. Answers (a wrong password included) and
    refusals of the input (:class:`_Refused`) are no failures at all: they say nothing about
    the directory being unable to answer, so no client input can open the breaker.
    """

    def __init__(self, retry_after: float, slow_after: float, counters: LdapCounters) -> None:
        self.retry_after = retry_after
        self.slow_after = slow_after
        self._counters = counters
        self._lock = threading.Lock()
        self._open_until: float | None = None  # None: closed, calls go through
        self._failed_at = 0.0
        self._probing = False

    def __repr__(self) -> str:
        state = "closed" if self._open_until is None else "open"
        return f"<LDAP circuit breaker {state} retry_after={self.retry_after:g}s>"

    @property
    def is_open(self) -> bool:
        """True while calls are refused at once (or only a probe is let through)."""
        return self._open_until is not None

    def admit(self) -> bool:
        """Let a call through (True if it is the probe) or raise BackendUnavailable."""
        if self._open_until is None or not self.retry_after:
            return False
        with self._lock:
            if self._open_until is None:
                return False
            now = time.monotonic()
            if now >= self._open_until and not self._probing:
                self._probing = True
                return True
            ago = now - self._failed_at
        self._counters.add("fast_failures")
        raise BackendUnavailable(f"LDAP directory failed slowly {ago:.1f}s ago; not asked "
                                 f"again before {self.retry_after:g}s have passed "
                                 "(retry_after)")

    def done(self, probe: bool, outcome: str) -> None:
        """Record a call's end: ``answered``, ``fast`` or ``slow`` failure, or ``neither``."""
        if outcome == "neither" or (outcome != "slow" and self._open_until is None
                                    and not probe):
            if probe:
                with self._lock:
                    self._probing = False
            return
        with self._lock:
            if probe:
                self._probing = False
            if outcome != "slow":
                self._open_until = None
            elif self.retry_after:
                self._failed_at = time.monotonic()
                self._open_until = self._failed_at + self.retry_after

    @contextmanager
    def call(self) -> Iterator[None]:
        probe = self.admit()
        outcome = "neither"
        started = time.monotonic()
        try:
            yield
            outcome = "answered"
        except BackendUnavailable as exc:
            slow = _is_timeout(exc) or time.monotonic() - started >= self.slow_after
            outcome = "slow" if slow else "fast"
            raise
        except _Refused as refused:
            # A partial result is an answer; a request never sent says nothing (and must
            # not let a client close the breaker of a hung directory).
            outcome = "answered" if refused.answered else "neither"
            raise
        finally:
            self.done(probe, outcome)
