"""What LDAP answers and failures mean to the plugins (shared by every directory call).

Result codes that are a "no" rather than a broken directory, the partial-result refusal
(:class:`_Refused`), the entries a search returns, and error texts with secrets blotted out.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

# One logger for the whole package, named as the module was before it became one: logging
# configurations that name ``repoze_who_memcached.ldap`` see every record as they did.
log = logging.getLogger(__package__)


# Bind results that mean "these credentials are no good" (an ordinary failed login).
# Anything else a server answers to a user bind says the directory cannot judge right now
# (busy, unavailable, or demanding TLS we did not set up): that is BackendUnavailable.
_CREDENTIALS_REFUSED = frozenset(
    {
        48,  # inappropriateAuthentication (e.g. an entry without a password)
        49,  # invalidCredentials (wrong password, locked account, ...)
        50,  # insufficientAccessRights (the ACLs deny authenticating as this entry)
        53,  # unwillingToPerform (e.g. a disabled account)
    }
)
_SEARCH_OK = 0
# A search that ends in one of these returned only part of the matching entries: never a
# unique match, never a complete group list (the user's answer, not a broken directory).
_PARTIAL_RESULTS = frozenset(
    {
        4,  # sizeLimitExceeded (our size_limit, or the server's own "sizelimit")
        11,  # adminLimitExceeded (e.g. slapd's "limits ... size.unchecked")
    }
)
_NO_SUCH_OBJECT = 32
# invalidDNSyntax: a search base the directory cannot parse. Our configured base DNs are
# checked (health_check); a DN taken from a request (a DN userid) that the directory refuses
# names no entry: the user's answer, never "the directory is failing".
_INVALID_DN_SYNTAX = 34


def _is_timeout(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            break
        if (getattr(seen, "timed_out", False) or isinstance(seen, TimeoutError)
                or "timed out" in str(seen)):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _describe(exc: BaseException, secret: str | bytes | None = None) -> str:
    """``Type: message`` of an error, with ``secret`` blotted out should it appear."""
    return _redact(f"{type(exc).__name__}: {exc}", secret)[:500]


def _redact(text: str, secret: str | bytes | None) -> str:
    """``text`` with ``secret`` (and its repr, as a bytes value may be shown) replaced."""
    if not secret:
        return text
    if isinstance(secret, bytes):
        text = text.replace(repr(secret), "***")
        secret = secret.decode("utf-8", "replace")
    return text.replace(secret, "***").replace(repr(secret)[1:-1], "***")


def _describe_result(what: str, description: str, code: int, message: str,
                     secret: str | bytes | None) -> str:
    """``what: description (code) message`` of an LDAP result, ``secret`` blotted out."""
    return _redact(f"{what}: {description} ({code}) {message}", secret)[:500]


@dataclass
class _Entry:
    dn: str
    attributes: dict[str, list[bytes]]  # keys lower-cased

    def texts(self, name: str) -> list[str]:
        """The values of ``name`` that are UTF-8 text (binary values are skipped)."""
        values = []
        for raw in self.attributes.get(name.lower(), ()):
            try:
                values.append(raw.decode("utf-8") if isinstance(raw, bytes) else str(raw))
            except UnicodeDecodeError:
                log.debug("skipping a binary value of %s in %s", name, self.dn)
        return values


class _Refused(Exception):
    """A search or bind the plugin refuses to judge as a match (internal; becomes a "no").

    Raised for answers that are the request's own fault, never the directory's: a partial
    result (sizeLimitExceeded, adminLimitExceeded, continuation references), or a request
    ldap3 or pyasn1 could not build from the values given (nothing was sent). ``topic``
    groups the log lines (rate-limited); ``reason`` never holds a password. ``answered``
    says whether the directory answered (a partial result) or was never asked.
    """

    def __init__(self, topic: str, reason: str, *, answered: bool) -> None:
        super().__init__(reason)
        self.topic = topic
        self.reason = reason
        self.answered = answered


class _StaleConnection(Exception):
    """A pooled connection died between uses (internal signal for one retry)."""
