"""What both LDAP plugins share: settings, the directory, counters, the cache fingerprint."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from ldap3.core.exceptions import LDAPInvalidDnError

from ..counters import RateLimitedLog
from ..errors import BackendUnavailable
from .counters import LdapCounters
from .directory import _Directory
from .dn import _dn_key
from .options import REFUSAL_LOG_INTERVAL, _Settings
from .results import _Refused

# One logger for the whole package, named as the module was before it became one: logging
# configurations that name ``repoze_who_memcached.ldap`` see every record as they did.
log = logging.getLogger(__package__)


# -- the plugins --------------------------------------------------------------------------

#: Version of the :meth:`_LdapPlugin.cache_fingerprint` text (bump if its meaning changes).
FINGERPRINT_VERSION = 1


class _LdapPlugin:
    """What both plugins share: settings, the directory, counters."""

    def __init__(self, settings: _Settings) -> None:
        self.settings = settings
        #: Event counts (see ``LdapCounters.NAMES``): ``counters.snapshot()`` or ``counters()``.
        self.counters = LdapCounters()
        self.directory = _Directory(settings, self.counters)
        self._warn = RateLimitedLog(log, REFUSAL_LOG_INTERVAL)

    def close(self) -> None:
        """Close pooled connections (e.g. at shutdown or in tests)."""
        self.directory.close()

    def __repr__(self) -> str:
        # Stable across processes (no addresses) and free of secrets.
        urls = " ".join(spec.url for spec in self.settings.servers)
        return f"<{type(self).__name__} {urls} base_dn={self.settings.base_dn!r}>"

    # operations for operators and for the cache ----------------------------------------------

    def health_check(self) -> list[str]:
        """Ask each configured server what a login needs; one line per problem (empty: ok).

        For each URL: a connection (with STARTTLS if configured), the service bind (as
        ``bind_dn``, or anonymous), and a base-scope search of each base DN the plugin
        searches. Each step is bounded by ``connect_timeout`` / ``timeout``; the pool and
        the circuit breaker are left alone (this is a check, not a login). The lines name
        the server and the step, never a password. ``repoze-who-memcached check`` prints
        them.
        """
        return self.directory.health_check(self._bases())

    def cache_fingerprint(self) -> str:
        """A stable text of every setting that decides this plugin's answers.

        Same options, same text, in every process; a different directory, base DN, filter,
        scope, attribute or item name, a different text. No secret is in it (not the bind
        password, nothing read from a file), and nothing that only decides *how* the
        directory is reached (timeouts, pool, TLS): a cache mixes it into its keys so that
        caches of different directories never share entries.
        """
        s = self.settings
        facts = {
            "plugin": type(self).__name__,
            "version": FINGERPRINT_VERSION,
            "urls": [spec.url for spec in s.servers],
            "bind_dn": s.bind_dn,
            "base_dn": s.base_dn,
            "filter": s.filter.text,
            "scope": s.scope,
            "userid_attribute": s.userid_attribute,
            "login_item": s.login_item,
            "max_login_bytes": s.max_login_bytes,
            **self._answer_settings(),
        }
        return json.dumps(facts, sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    def _answer_settings(self) -> dict[str, Any]:
        """The settings of one plugin type that decide answers (for the fingerprint)."""
        return {}

    def _bases(self) -> list[tuple[str, str]]:
        """``(option, DN)`` of every base this plugin searches (for the health check)."""
        return [("base_dn", self.settings.base_dn)]

    # helpers --------------------------------------------------------------------------------

    def _within_base(self, dn: str) -> bool:
        try:
            key = _dn_key(dn)
        except LDAPInvalidDnError:
            return False
        base = self.settings.base_dn_key
        return len(key) >= len(base) and key[len(key) - len(base) :] == base

    def _counted_call(self, work: Callable[[dict[str, Any]], Any], identity: dict[str, Any],
                      refused: Any) -> Any:
        """``work(identity)``, counted as a request (and as a backend error if it raises
        BackendUnavailable). A :class:`_Refused` becomes ``refused`` (the "no" answer), with
        a rate-limited warning."""
        self.counters.add("requests")
        try:
            return work(identity)
        except BackendUnavailable:
            self.counters.add("backend_errors")
            raise
        except _Refused as exc:
            self._refuse(exc.topic, "LDAP: %s; refusing it", exc.reason)
            return refused

    def _refuse(self, topic: str, message: str, *args: Any) -> None:
        """Count a refused request and say why, at most once per REFUSAL_LOG_INTERVAL per
        topic (a client sending such requests in a loop must not flood the log). Never
        pass a password or a login here: a login field often holds a mistyped password."""
        self.counters.add("refused_inputs")
        self._warn.warning(topic, message, *args)

    def _text_within(self, value: Any, max_bytes: int) -> bool:
        """True for a non-empty str of at most ``max_bytes`` UTF-8 bytes (cheapest first:
        a huge value is refused before it is encoded)."""
        if not isinstance(value, str) or not value or len(value) > max_bytes:
            return False
        try:
            return len(value.encode("utf-8")) <= max_bytes
        except UnicodeEncodeError:  # lone surrogates, e.g. from surrogateescape decoding
            return False

    def _counted(self, ok: bool) -> None:
        self.counters.add("successes" if ok else "failures")
