"""An LDAP authenticator and metadata provider for repoze.who, on ldap3.

Why our own: the LDAP plugins one can install either do not run on Python 3
(``repoze.who.plugins.ldap``) or are unsafe (``who_ldap`` 4: a wrong password raises,
DNs are built from unescaped logins, the password is sent before STARTTLS, and
``start_tls = false`` reads as true). This module is the backend our cache plugin wraps.

How it authenticates (search, then bind):

1. A *service connection* (bound as ``bind_dn``, or anonymously) searches ``base_dn`` with
   ``filter``, the login filter-escaped into it. Service connections are kept in a small
   pool, because opening and binding one costs as much as the whole rest of the work.
2. Exactly one entry must match: none or several is a "no" (several entries never become a
   guess at who was meant).
3. A *new, short-lived connection* binds as that entry's DN with the given password and is
   closed at once, so one user's bind can never leak into another request.

Every "no" returns None: a wrong password, an unknown user, an ambiguous or partial search
(several entries, sizeLimitExceeded), and whatever bytes a client sends as login or password
(empty, too long, refused by SASLprep, or making a filter ldap3 cannot encode). Only a
directory that cannot be asked (down, hung, refusing TLS, rejecting the service account)
raises :class:`~repoze_who_memcached.errors.BackendUnavailable`: that is not a wrong
password, and the cache plugin treats it differently (it never caches it as a denial, and
may serve a stale entry). So no client input can make the plugin look like a failing
directory, open the circuit breaker for everybody, or have the cache serve stale entries.
Passwords never appear in messages, logs or ``repr()``.

ldap3 facts this module is built around (checked with ldap3 2.9.1):

* ``Server(get_info=SCHEMA)`` (the default) reads the schema on every new connection
  (~14 ms); we use ``get_info=NONE``.
* A ``Server`` object keeps per-address state: after one refused connect it reports
  "invalid server address" without trying for 5 s (``RESET_AVAILABILITY_TIMEOUT``), and
  open/close of connections in other threads race on ``current_address``. ``ServerPool``
  with ``active=True`` loops forever (sleeping 10 s per cycle) when every server is down,
  and never forgets a connection it has seen (a leak with short-lived connections). So we
  build a fresh ``Server`` per connection (~10 µs; its arguments are computed once) and do
  the FIRST-strategy failover ourselves, remembering a failed server for
  :data:`SERVER_RETRY_SECONDS`.
* Timeouts must be ints; an empty password raises ``LDAPPasswordIsMandatoryError``; a
  search that hits ``size_limit`` returns True with result code 4 and the entries.
* A simple-bind password given as text goes through SASLprep (RFC 4013), which refuses
  control characters, private-use code points, non-characters and mixed-direction text
  (``LDAPSASLPrepError``, nothing sent); bytes are sent as they are. We run SASLprep
  ourselves, once, before any search, and bind with its bytes.
* Filter values are ``str.strip()``-ed (``(uid=*{login})`` with a login of spaces would
  become a presence filter), and an empty substring piece makes pyasn1 fail to encode the
  request: we escape every whitespace character (``\\20``), so the value is sent as given
  (slapd then treats spaces as insignificant, RFC 4518).
* After a bind, ``Connection.request`` keeps the bind request, password included, and
  ``repr()`` of a Connection shows ``password``: we clear both as soon as a bind returns.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import ssl
import string
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from ldap3 import (
    ANONYMOUS,
    BASE,
    DEREF_NEVER,
    LEVEL,
    NONE,
    SIMPLE,
    SUBTREE,
    SYNC,
    Connection,
    Server,
    Tls,
)
from ldap3.core.exceptions import (
    LDAPAttributeError,
    LDAPException,
    LDAPInvalidDnError,
    LDAPInvalidFilterError,
    LDAPInvalidValueError,
    LDAPPasswordIsMandatoryError,
    LDAPSASLPrepError,
    LDAPUserNameIsMandatoryError,
)
from ldap3.operation.search import parse_filter
from ldap3.protocol.sasl.sasl import sasl_prep
from ldap3.utils.conv import escape_filter_chars
from ldap3.utils.dn import parse_dn
from pyasn1.error import PyAsn1Error
from repoze.who.interfaces import IAuthenticator, IMetadataProvider
from zope.interface import implementer

from .counters import RateLimitedLog
from .errors import BackendUnavailable, ConfigError
from .options import Options

__all__ = [
    "DEFAULT_GROUPS_ITEM",
    "LDAP_DN_KEY",
    "LdapAuthenticator",
    "LdapCounters",
    "LdapMetadataProvider",
    "make_authenticator",
    "make_metadata_provider",
]

log = logging.getLogger(__name__)

#: Identity key under which the authenticator records the user's DN. The metadata provider
#: reads the entry by this DN (no search needed); a cache in front of both should keep it.
LDAP_DN_KEY = "ldap.dn"
#: Default identity key for the list of group names.
DEFAULT_GROUPS_ITEM = "groups"
#: How long a server that failed to connect is tried only after the others.
SERVER_RETRY_SECONDS = 30.0
#: After the directory failed, seconds during which it is not asked (calls fail at once).
DEFAULT_RETRY_AFTER = 2.0
#: Default ``max_login_bytes``: longer logins (UTF-8) are refused before any work.
DEFAULT_MAX_LOGIN_BYTES = 256
#: Default ``max_password_bytes``: longer passwords (UTF-8) are refused before any work
#: (SASLprep costs ~3 µs per character; slapd drops the session at ~256 KiB).
DEFAULT_MAX_PASSWORD_BYTES = 1024
#: Longer DNs (UTF-8) given as userid or ``ldap.dn`` are refused without asking anyone.
MAX_DN_BYTES = 4096
#: A failed call opens the circuit breaker only if it took at least this share of the
#: shortest timeout: a directory that refuses at once costs callers nothing to ask again.
SLOW_FAILURE_SHARE = 0.5
#: Seconds between two log lines about the same kind of refused input.
REFUSAL_LOG_INTERVAL = 60.0

DEFAULT_FILTER = "(uid={login})"
DEFAULT_GROUP_FILTER = "(&(objectClass=groupOfNames)(member={dn}))"
SCOPES = {"base": BASE, "one": LEVEL, "sub": SUBTREE}
NO_ATTRIBUTES = "1.1"  # RFC 4511: "return no attributes"

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

_ATTRIBUTE_NAME = re.compile(r"^(?:[A-Za-z][A-Za-z0-9-]*|[0-9]+(?:\.[0-9]+)+)$")
_RESERVED_ITEMS = ("repoze.who.", LDAP_DN_KEY)

# Every ldap3 failure of the network or of TLS (ssl.SSLError is an OSError); caught around
# each exchange with a server.
_NETWORK_ERRORS = (LDAPException, OSError)
# What ldap3 and pyasn1 raise, before anything is sent, for a request they cannot build
# from the values given (a filter value, a DN, a password): the input's fault, a "no".
_INPUT_ERRORS = (
    PyAsn1Error,
    LDAPInvalidFilterError,
    LDAPAttributeError,
    LDAPInvalidValueError,
    LDAPInvalidDnError,
    LDAPSASLPrepError,
    LDAPPasswordIsMandatoryError,
    LDAPUserNameIsMandatoryError,
    UnicodeError,
)


# -- options ------------------------------------------------------------------------------


class _FilterTemplate:
    """An LDAP filter with ``{name}`` placeholders, checked at load time.

    Placeholders are parsed once (so a typo such as ``{logn}``, a format spec or a filter
    ldap3 cannot parse is a ConfigError when the config is loaded), and every value is
    filter-escaped when rendered: ``*``, ``(``, ``)``, ``\\`` and NUL in a login are
    matched literally and can never widen the search.
    """

    def __init__(self, text: str, option: str, allowed: tuple[str, ...], opts: Options) -> None:
        text = text.strip()
        if not text.startswith("("):
            text = f"({text})"  # "uid={login}" is a common way to write it
        self.text = text
        self._parts: list[tuple[str, str | None]] = []
        try:
            parsed = list(string.Formatter().parse(text))
        except ValueError as exc:
            raise opts.error(option, f"bad placeholder in {text!r}: {exc}") from None
        for literal, placeholder, spec, conversion in parsed:
            if placeholder is not None and (placeholder not in allowed or spec or conversion):
                raise opts.error(
                    option,
                    f"unknown placeholder {{{placeholder}{'!' + conversion if conversion else ''}"
                    f"{':' + spec if spec else ''}}} in {text!r}; use "
                    + ", ".join("{" + name + "}" for name in allowed),
                )
            self._parts.append((literal, placeholder))
        self.fields = frozenset(name for _, name in self._parts if name is not None)
        if not self.fields:
            raise opts.error(
                option, f"{text!r} has no placeholder: every login would find the same entries"
            )
        sample = self.render(dict.fromkeys(self.fields, "sample"))
        try:
            parse_filter(sample, None, True, True, None, False)
        except LDAPException as exc:
            raise opts.error(option, f"not a valid LDAP filter: {text!r} ({exc})") from None

    def render(self, values: Mapping[str, str]) -> str:
        return "".join(
            literal + (_escape_filter_value(values[name]) if name is not None else "")
            for literal, name in self._parts
        )

    def __repr__(self) -> str:
        return f"<filter {self.text!r}>"


def _escape_filter_value(value: str) -> str:
    """``value`` escaped for a filter (RFC 4515), whitespace included.

    ldap3 ``strip()``s filter values: an unescaped login of spaces would make
    ``(uid={login}*)`` unencodable (a pyasn1 error) and turn ``(uid=*{login})`` into the
    presence filter ``(uid=*)`` before it is sent. Escaped (``\\20`` is the same space),
    the value reaches the server as given, and the server matches it by its own rules.
    """
    escaped = escape_filter_chars(value)
    if escaped.isprintable() and " " not in escaped:
        return escaped  # the usual case: nothing strip() could take
    return "".join(
        "".join(f"\\{byte:02x}" for byte in char.encode("utf-8")) if char.isspace() else char
        for char in escaped
    )


@dataclass(frozen=True)
class _ServerSpec:
    """What ldap3's ``Server`` needs for one URL (a fresh Server is made per connection)."""

    url: str
    host: str
    port: int
    use_ssl: bool


@dataclass(frozen=True)
class _Settings:
    """The options both plugins share, parsed once (see :func:`_parse_common`).

    ``bind_password`` is left out of ``repr()``; ``missing`` holds the errors for required
    options that were not given, raised by :func:`_finish` after the unknown options are
    known (a misspelt ``basedn`` is the likely reason ``base_dn`` is missing).
    """

    servers: tuple[_ServerSpec, ...]
    bind_dn: str | None
    bind_password: str | None = field(repr=False)
    base_dn: str
    base_dn_key: tuple[tuple[str, str], ...]
    filter: _FilterTemplate
    scope: str
    start_tls: bool
    tls: Tls | None
    connect_timeout: int
    timeout: int
    retry_after: float
    userid_attribute: str | None
    pool_size: int
    login_item: str
    max_login_bytes: int
    missing: tuple[ConfigError, ...] = field(default=(), repr=False, compare=False)


def _parse_servers(opts: Options, missing: list[ConfigError]) -> tuple[_ServerSpec, ...]:
    urls = opts.list("url")
    if urls is None:
        missing.append(opts.error("url", "is required (ldap://host[:port] or ldaps://..., "
                                         "several for failover, separated by spaces)"))
        return ()
    if not urls:
        raise opts.error("url", "must not be empty (ldap://host[:port] or ldaps://..., "
                                "several for failover, separated by spaces)")
    specs = []
    for url in urls:
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise opts.error("url", f"bad URL {url!r}: {exc}") from None
        scheme = parts.scheme.lower()
        if scheme not in ("ldap", "ldaps") or not parts.hostname:
            raise opts.error("url", f"expected ldap://host[:port] or ldaps://host[:port], "
                                    f"got {url!r}")
        if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
            raise opts.error("url", f"{url!r}: give only scheme, host and port")
        use_ssl = scheme == "ldaps"
        specs.append(
            _ServerSpec(url, parts.hostname, port or (636 if use_ssl else 389), use_ssl)
        )
    return tuple(specs)


def _attribute_name(opts: Options, option: str, name: str) -> str:
    if not _ATTRIBUTE_NAME.match(name):
        raise opts.error(option, f"{name!r} is not an LDAP attribute name")
    return name


def _parse_common(opts: Options) -> _Settings:
    """Parse the connection and search options both factories take (strictly).

    A missing required option is not raised here but kept in ``missing`` for
    :func:`_finish`; a bad value is raised at once.
    """
    missing: list[ConfigError] = []
    servers = _parse_servers(opts, missing)
    bind_dn = opts.str("bind_dn") or None
    if bind_dn is not None:
        _dn_key(bind_dn, opts, "bind_dn")
    password_given = opts.has("bind_password") or opts.has("bind_password_file")
    if bind_dn is None:
        for name in ("bind_password", "bind_password_file"):
            if opts.has(name):
                missing.append(opts.error(name, "given without bind_dn"))
    elif not password_given:
        missing.append(opts.error("bind_dn", "needs bind_password or bind_password_file (a "
                                  "bind with a DN and no password is an anonymous bind in "
                                  "disguise)"))
    bind_password = opts.secret("bind_password", "bind_password_file", required=False)
    if bind_dn is not None and password_given and not bind_password:
        raise opts.error("bind_password", "must not be empty")
    base_dn = opts.str("base_dn")
    if base_dn is None:
        missing.append(opts.error("base_dn", "is required"))
        base_dn_key: tuple[tuple[str, str], ...] = ()
    elif not base_dn:
        raise opts.error("base_dn", "must not be empty")
    else:
        base_dn_key = _dn_key(base_dn, opts, "base_dn")
    filter_template = _FilterTemplate(
        opts.str("filter", DEFAULT_FILTER) or DEFAULT_FILTER, "filter", ("login",), opts
    )
    scope = opts.choice("scope", "sub", SCOPES)
    start_tls = opts.bool("start_tls", False)
    tls_verify = opts.bool("tls_verify", True)
    tls_ca_file = opts.str("tls_ca_file") or None
    if tls_ca_file is not None:
        tls_ca_file = os.path.expanduser(tls_ca_file)
        if not os.path.isfile(tls_ca_file):
            raise opts.error("tls_ca_file", f"no such file: {tls_ca_file!r}")
    tls = None
    if start_tls or any(s.use_ssl for s in servers):
        tls = Tls(
            validate=ssl.CERT_REQUIRED if tls_verify else ssl.CERT_NONE,
            ca_certs_file=tls_ca_file,
        )
        if not tls_verify:
            log.warning("LDAP TLS certificates are not verified (tls_verify = false): "
                        "anyone on the network path can read passwords")
    connect_timeout = opts.int("connect_timeout", 3, minimum=1, maximum=600)
    timeout = opts.int("timeout", 5, minimum=1, maximum=600)
    retry_after = opts.float("retry_after", DEFAULT_RETRY_AFTER, minimum=0, maximum=3600)
    userid_attribute = opts.str("userid_attribute") or None
    if userid_attribute is not None:
        _attribute_name(opts, "userid_attribute", userid_attribute)
    pool_size = opts.int("pool_size", 4, minimum=0, maximum=1000)
    login_item = opts.str("login_item", "login") or "login"
    max_login_bytes = opts.int("max_login_bytes", DEFAULT_MAX_LOGIN_BYTES, minimum=1,
                               maximum=65536)
    return _Settings(
        servers=servers,
        bind_dn=bind_dn,
        bind_password=bind_password,
        base_dn=base_dn or "",
        base_dn_key=base_dn_key,
        filter=filter_template,
        scope=scope,
        start_tls=start_tls,
        tls=tls,
        connect_timeout=connect_timeout,
        timeout=timeout,
        retry_after=retry_after,
        userid_attribute=userid_attribute,
        pool_size=pool_size,
        login_item=login_item,
        max_login_bytes=max_login_bytes,
        missing=tuple(missing),
    )


def _finish(opts: Options, settings: _Settings) -> None:
    """Refuse unknown options and report missing required ones, together.

    A required option is most often "missing" because it was misspelt (``basedn``): the
    unknown option is the error, and the missing one it probably meant is said with it,
    so the fix is obvious (``unknown option 'basedn' (option 'base_dn' is required)``).
    """
    try:
        opts.finish()
    except ConfigError as unknown:
        if not settings.missing:
            raise
        missing = settings.missing[0]
        raise ConfigError(f"{unknown.problem} (option {missing.option!r} {missing.problem})",
                          option=unknown.option, section=unknown.section) from None
    if settings.missing:
        raise settings.missing[0]


# -- DNs ----------------------------------------------------------------------------------

_DN_ESCAPE = re.compile(r"\\([0-9A-Fa-f]{2}|.)", re.DOTALL)


def unescape_dn_value(value: str, errors: str = "replace") -> str:
    """An RDN value with its ``\\XX`` and ``\\c`` escapes (RFC 4514) resolved.

    ``errors`` is the UTF-8 decoding policy for ``\\XX`` bytes (``strict`` raises
    UnicodeDecodeError).
    """
    if "\\" not in value:
        return value
    raw = bytearray()
    pos = 0
    for match in _DN_ESCAPE.finditer(value):
        raw += value[pos : match.start()].encode("utf-8")
        token = match.group(1)
        raw += bytes([int(token, 16)]) if len(token) == 2 else token.encode("utf-8")
        pos = match.end()
    raw += value[pos:].encode("utf-8")
    return raw.decode("utf-8", errors=errors)


def _dn_key(dn: str, opts: Options | None = None, option: str = "") -> tuple[tuple[str, str], ...]:
    """A DN as comparable ``(type, value)`` pairs: lower-cased, unescaped.

    Raises ConfigError (when ``opts`` is given) or LDAPInvalidDnError for a malformed DN.
    """
    try:
        return tuple(
            (attr.strip().lower(), unescape_dn_value(value.strip()).lower())
            for attr, value, _sep in parse_dn(dn)
        )
    except LDAPInvalidDnError as exc:
        if opts is None:
            raise
        raise opts.error(option, f"not a DN: {dn!r} ({exc})") from None


# -- counters -----------------------------------------------------------------------------


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


# -- the directory ------------------------------------------------------------------------


def _is_timeout(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            break
        if isinstance(seen, TimeoutError) or "timed out" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _describe(exc: BaseException, secret: str | bytes | None = None) -> str:
    """``Type: message`` of an ldap3 error, with ``secret`` blotted out should it appear."""
    return _redact(f"{type(exc).__name__}: {exc}", secret)[:500]


def _redact(text: str, secret: str | bytes | None) -> str:
    """``text`` with ``secret`` (and its repr, as a bytes value may be shown) replaced."""
    if not secret:
        return text
    if isinstance(secret, bytes):
        text = text.replace(repr(secret), "***")
        secret = secret.decode("utf-8", "replace")
    return text.replace(secret, "***").replace(repr(secret)[1:-1], "***")


def _no_delay(conn: Connection) -> None:
    """Turn off Nagle's algorithm on the connection's socket (ldap3 leaves it on).

    Measured: the first bind after STARTTLS waited ~40 ms for a delayed ACK (Nagle on the
    client, delayed ACK on the server), 49 ms per TLS login instead of 5 ms.
    """
    with suppress(OSError, AttributeError):
        conn.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _close(conn: Connection) -> None:
    """Unbind and close, ignoring errors (the connection is being thrown away).

    ldap3 leaves the socket of a failed ``open()`` unclosed (``unbind`` skips a connection
    that never opened), hence the explicit close.
    """
    with suppress(Exception):
        conn.unbind()
    sock = getattr(conn, "socket", None)
    if sock is not None:
        with suppress(Exception):
            sock.close()


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


class _Directory:
    """Connections to one directory: failover, the service-connection pool, user binds.

    Thread-safe: connections are taken out of the pool for one operation and put back;
    user binds never touch the pool.
    """

    def __init__(self, settings: _Settings, counters: LdapCounters) -> None:
        self.settings = settings
        self.counters = counters
        self._lock = threading.Lock()
        self._idle: list[Connection] = []
        self._pid = os.getpid()
        self._down_until: dict[str, float] = {}
        slow_after = SLOW_FAILURE_SHARE * min(settings.connect_timeout, settings.timeout)
        self.breaker = _Breaker(settings.retry_after, slow_after, counters)
        # Everything about Server objects that does not change, computed once.
        self._server_args = {
            spec.url: {
                "host": spec.host,
                "port": spec.port,
                "use_ssl": spec.use_ssl,
                "get_info": NONE,
                "connect_timeout": settings.connect_timeout,
                "tls": settings.tls,
            }
            for spec in settings.servers
        }

    def __repr__(self) -> str:
        urls = " ".join(spec.url for spec in self.settings.servers)
        return f"<LDAP directory {urls} idle={len(self._idle)} {self.breaker!r}>"

    # servers and connections --------------------------------------------------------------

    def _servers_in_order(self) -> list[_ServerSpec]:
        """FIRST strategy: configured order, servers that failed lately at the end."""
        now = time.monotonic()
        with self._lock:
            down = {url for url, until in self._down_until.items() if until > now}
        specs = self.settings.servers
        return [s for s in specs if s.url not in down] + [s for s in specs if s.url in down]

    def _mark(self, spec: _ServerSpec, up: bool) -> None:
        with self._lock:
            if up:
                self._down_until.pop(spec.url, None)
            else:
                self._down_until[spec.url] = time.monotonic() + SERVER_RETRY_SECONDS

    def _open(self, spec: _ServerSpec, bind: Callable[[Connection], None] | None) -> Connection:
        """A connection to ``spec``'s server: TLS first, then ``bind``. Raises on failure.

        With ``start_tls``, STARTTLS completes before anything else is sent (no bind, no
        search goes out in clear).
        """
        s = self.settings
        conn = Connection(
            Server(**self._server_args[spec.url]),
            client_strategy=SYNC,
            authentication=ANONYMOUS,
            receive_timeout=s.timeout,
            auto_referrals=False,  # never follow a referral with someone's password
            raise_exceptions=False,
            return_empty_attributes=False,
            read_only=True,
        )
        try:
            conn.open(read_server_info=False)
            _no_delay(conn)
            if s.start_tls and not spec.use_ssl and not conn.start_tls(read_server_info=False):
                raise BackendUnavailable("STARTTLS did not start")
            if bind is not None:
                bind(conn)
        except BaseException:
            _close(conn)
            raise
        return conn

    def _connect(self, bind: Callable[[Connection], None] | None) -> Connection:
        """Open a connection to the first server that answers (see :meth:`_open`).

        ``bind`` (for service connections) runs inside the failover loop, so a server that
        accepts connections but hangs is skipped too.
        """
        problems = []
        for spec in self._servers_in_order():
            try:
                conn = self._open(spec, bind)
            except (*_NETWORK_ERRORS, BackendUnavailable) as exc:
                self._mark(spec, up=False)
                problems.append(f"{spec.url}: {_describe(exc, self.settings.bind_password)}")
                continue
            self._mark(spec, up=True)
            return conn
        raise BackendUnavailable("LDAP server unavailable: " + "; ".join(problems))

    def _service_bind(self, conn: Connection) -> None:
        s = self.settings
        if s.bind_dn is not None:
            conn.authentication = SIMPLE
            conn.user = s.bind_dn
            conn.password = s.bind_password
        self.counters.add("service_binds")
        try:
            accepted = conn.bind(read_server_info=False)
        finally:
            _forget_password(conn)
        if not accepted:
            result = conn.result or {}
            raise BackendUnavailable(
                f"service bind as {s.bind_dn or 'anonymous'} refused: "
                f"{result.get('description')} ({result.get('result')}) {result.get('message')}"
            )

    @contextmanager
    def _pooled(self) -> Iterator[tuple[Connection, bool]]:
        """Lend a bound service connection (reused when one is idle): ``(conn, reused)``.

        The connection goes back to the pool only when the block ends without an error;
        on any error it is closed (it may be half-way through a response, or dead).
        """
        conn = None
        with self._lock:
            if self._pid != os.getpid():  # forked: the parent's sockets are not ours
                self._idle.clear()
                self._pid = os.getpid()
            if self._idle:
                conn = self._idle.pop()
        reused = conn is not None
        if conn is None:
            conn = self._connect(self._service_bind)
        try:
            yield conn, reused
        except BaseException:
            _close(conn)
            raise
        with self._lock:
            if len(self._idle) < self.settings.pool_size and self._pid == os.getpid():
                self._idle.append(conn)
                conn = None
        if conn is not None:
            _close(conn)

    def _drain(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            _close(conn)

    def close(self) -> None:
        """Close the idle service connections (they are reopened on demand)."""
        self._drain()

    # operations --------------------------------------------------------------------------

    def search(
        self, base: str, search_filter: str, scope: str, attributes: list[str], size_limit: int
    ) -> list[_Entry]:
        """Search on a service connection; a connection found dead is replaced once.

        A pooled connection is typically found dead after the server restarted: the error
        comes at once (not a timeout), so one retry on a fresh connection is cheap and hides
        the restart. Timeouts are not retried: that would double the wait on a hung server.
        Raises :class:`_Refused` for a partial result or a request that cannot be built.
        """
        with self.breaker.call():
            return self._search(base, search_filter, scope, attributes, size_limit)

    def _search(
        self, base: str, search_filter: str, scope: str, attributes: list[str], size_limit: int
    ) -> list[_Entry]:
        s = self.settings
        for attempt in (1, 2):
            refused: _Refused | None = None
            try:
                with self._pooled() as (conn, reused):
                    self.counters.add("searches")
                    try:
                        conn.search(
                            base,
                            search_filter,
                            search_scope=SCOPES[scope],
                            attributes=attributes or [NO_ATTRIBUTES],
                            size_limit=size_limit,
                            time_limit=s.timeout,
                            dereference_aliases=DEREF_NEVER,
                        )
                    except _INPUT_ERRORS as exc:
                        # Raised while the request was built or encoded: nothing was sent,
                        # so the connection is as good as before and goes back to the pool.
                        refused = _Refused("bad-request", f"ldap3 could not build the search "
                                           f"({type(exc).__name__})", answered=False)
                    except _NETWORK_ERRORS as exc:
                        if reused and attempt == 1 and not _is_timeout(exc):
                            raise _StaleConnection from None
                        raise BackendUnavailable(
                            f"LDAP search failed: {_describe(exc, s.bind_password)}"
                        ) from None
                    result = conn.result or {}
                    response = conn.response or []
            except _StaleConnection:
                self.counters.add("stale_connections")
                self._drain()  # its siblings are most likely dead too
                continue
            if refused is not None:
                raise refused
            code = result.get("result")
            if code == _NO_SUCH_OBJECT:
                return []
            partial = code in _PARTIAL_RESULTS or any(
                item.get("type") == "searchResRef" for item in response
            )
            if partial:
                raise _Refused("partial", f"the search under {base!r} returned part of its "
                               f"entries only ({result.get('description')})", answered=True)
            if code != _SEARCH_OK:
                raise BackendUnavailable(
                    f"LDAP search under {base!r} failed: {result.get('description')} ({code}) "
                    f"{result.get('message')}"
                )
            return [
                _Entry(
                    item["dn"],
                    {k.lower(): list(v) for k, v in (item.get("raw_attributes") or {}).items()},
                )
                for item in response
                if item.get("type") == "searchResEntry"
            ]
        raise AssertionError("unreachable")  # pragma: no cover

    def check_password(self, dn: str, password: bytes) -> bool:
        """Bind as ``dn`` on a connection of its own, then close it. True if accepted.

        ``password`` is already SASLprep-ed and encoded (:func:`_prepare_password`): ldap3
        sends bytes as they are.
        """
        with self.breaker.call():
            return self._check_password(dn, password)

    def _check_password(self, dn: str, password: bytes) -> bool:
        conn = self._connect(None)
        try:
            conn.authentication = SIMPLE
            conn.user = dn
            conn.password = password
            self.counters.add("user_binds")
            try:
                accepted = conn.bind(read_server_info=False)
            except _INPUT_ERRORS as exc:
                raise _Refused("bad-request", f"ldap3 could not build the bind "
                               f"({type(exc).__name__})", answered=False) from None
            except _NETWORK_ERRORS as exc:
                raise BackendUnavailable(
                    f"LDAP bind failed: {_describe(exc, password)}"
                ) from None
            finally:
                _forget_password(conn)
            if accepted:
                return True
            result = conn.result or {}
            if result.get("result") in _CREDENTIALS_REFUSED:
                return False
            raise BackendUnavailable(_describe_result(
                f"LDAP server did not judge a bind as {dn!r}", result, password
            ))
        finally:
            _close(conn)

    def health_check(self, bases: list[tuple[str, str]]) -> list[str]:
        """Problems found asking each server directly (empty: healthy); see
        :meth:`_LdapPlugin.health_check`. ``bases`` are ``(option name, DN)`` pairs."""
        s = self.settings
        who = s.bind_dn or "anonymous"
        problems = []
        for spec in s.servers:
            try:
                conn = self._open(spec, None)
            except (*_NETWORK_ERRORS, BackendUnavailable) as exc:
                problems.append(f"{spec.url}: cannot connect: {_describe(exc, s.bind_password)}")
                continue
            try:
                try:
                    self._service_bind(conn)
                except (*_NETWORK_ERRORS, BackendUnavailable) as exc:
                    problems.append(f"{spec.url}: {_describe(exc, s.bind_password)}")
                    continue
                for option, base in bases:
                    problem = self._check_base(conn, base, who)
                    if problem:
                        problems.append(f"{spec.url}: {option} {base!r}: {problem}")
            finally:
                _close(conn)
        return problems

    def _check_base(self, conn: Connection, base: str, who: str) -> str | None:
        try:
            conn.search(base, "(objectClass=*)", search_scope=BASE,
                        attributes=[NO_ATTRIBUTES], size_limit=1,
                        time_limit=self.settings.timeout, dereference_aliases=DEREF_NEVER)
        except _NETWORK_ERRORS as exc:
            return f"search failed: {_describe(exc, self.settings.bind_password)}"
        result = conn.result or {}
        code = result.get("result")
        if code == _NO_SUCH_OBJECT:
            return f"no such entry (or {who} may not see it)"
        if code != _SEARCH_OK:
            return _describe_result("search failed", result, self.settings.bind_password)
        return None


def _forget_password(conn: Connection) -> None:
    """Drop the password a bind left on ``conn`` (and in its last request, which ldap3
    keeps): a pooled connection must not carry it into a repr, a log or a core dump."""
    conn.password = None
    conn.request = None


def _describe_result(what: str, result: Mapping[str, Any], secret: str | bytes | None) -> str:
    """``what: description (code) message`` of an LDAP result, ``secret`` blotted out."""
    text = f"{what}: {result.get('description')} ({result.get('result')}) {result.get('message')}"
    return _redact(text, secret)[:500]


class _StaleConnection(Exception):
    """A pooled connection died between uses (internal signal for one retry)."""


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


def _prepare_password(password: str) -> bytes | None:
    """The bytes a simple bind sends for ``password`` (RFC 4013 SASLprep, UTF-8), or None
    if SASLprep refuses it (control characters, private use, non-characters, mixed
    directions, or nothing left after mapping). ldap3 does the same when given text; done
    here, before any search, so a password no bind could carry costs no request."""
    try:
        prepared = sasl_prep(password).encode("utf-8")
    except (LDAPSASLPrepError, UnicodeError):
        return None
    return prepared or None  # never an empty (unauthenticated, RFC 4513 5.1.2) bind


@implementer(IAuthenticator)
class LdapAuthenticator(_LdapPlugin):
    """Search-then-bind authentication; see the module docstring. Made by
    :func:`make_authenticator`."""

    def __init__(self, settings: _Settings, password_item: str,
                 max_password_bytes: int = DEFAULT_MAX_PASSWORD_BYTES) -> None:
        super().__init__(settings)
        self.login_item = settings.login_item
        self.password_item = password_item
        self.max_password_bytes = max_password_bytes
        attr = settings.userid_attribute
        self._search_attributes = [attr] if attr else []

    def authenticate(self, environ: dict[str, Any], identity: dict[str, Any]) -> str | None:
        """The userid (DN or ``userid_attribute``) if login and password are good, else None.

        Whatever the identity holds is answered (None for anything odd); raises
        BackendUnavailable only if the directory cannot be asked.
        """
        userid = self._counted_call(self._authenticate, identity, None)
        self._counted(userid is not None)
        return userid

    def _answer_settings(self) -> dict[str, Any]:
        return {"password_item": self.password_item,
                "max_password_bytes": self.max_password_bytes}

    def _authenticate(self, identity: dict[str, Any]) -> str | None:
        login = identity.get(self.login_item)
        password = identity.get(self.password_item)
        s = self.settings
        # An empty password would make an "unauthenticated" bind that many servers accept
        # (RFC 4513 5.1.2): never send one. Size first: nothing below costs more than this.
        if not isinstance(login, str) or not isinstance(password, str):
            return None
        if not login or not password:
            return None
        if not self._text_within(login, s.max_login_bytes):
            self._refuse("login-size", "LDAP: a login over max_login_bytes (%d) or not UTF-8; "
                         "refusing it", s.max_login_bytes)
            return None
        if not self._text_within(password, self.max_password_bytes):
            self._refuse("password-size", "LDAP: a password over max_password_bytes (%d) or "
                         "not UTF-8; refusing it", self.max_password_bytes)
            return None
        prepared = _prepare_password(password)
        if prepared is None:
            self._refuse("saslprep", "LDAP: a password SASLprep (RFC 4013) refuses (control, "
                         "private-use or non-characters, or mixed directions); refusing it")
            return None
        entries = self.directory.search(
            s.base_dn, s.filter.render({"login": login}), s.scope, self._search_attributes, 2
        )
        if len(entries) != 1:
            if len(entries) > 1:
                self._warn.warning("ambiguous", "LDAP: several entries match one login under "
                                   "%s; refusing it (make the filter unique)", s.base_dn)
            return None
        entry = entries[0]
        if not entry.dn:
            return None
        userid: str | None = entry.dn
        if s.userid_attribute:
            userid = _pick_userid(entry.texts(s.userid_attribute), login)
            if userid is None:
                self._warn.warning("no-userid", "LDAP: %s has no usable %s; refusing the login",
                                   entry.dn, s.userid_attribute)
                return None
        if not self.directory.check_password(entry.dn, prepared):
            return None
        identity[LDAP_DN_KEY] = entry.dn
        return userid


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates, e.g. from surrogateescape decoding
        return False
    return True


def _pick_userid(values: list[str], login: str) -> str | None:
    """The userid among an entry's values: the one matching the login, else the first."""
    if not values:
        return None
    folded = login.casefold()
    for value in values:
        if value.casefold() == folded:
            return value
    return values[0]


@dataclass(frozen=True)
class _GroupSettings:
    base_dn: str
    filter: _FilterTemplate
    scope: str
    attribute: str
    item: str


@implementer(IMetadataProvider)
class LdapMetadataProvider(_LdapPlugin):
    """Copies attributes (and group names) of the user's entry into the identity.

    Made by :func:`make_metadata_provider`. The entry is found by ``identity['ldap.dn']``
    when our authenticator (or a cache of it) put it there, else by the userid: read as a DN
    when no ``userid_attribute`` is set, otherwise searched for with ``userid_filter``.
    A partial search result (the server's size limit) adds nothing: no metadata is better
    than a group list with groups missing.
    """

    def __init__(
        self,
        settings: _Settings,
        attributes: tuple[tuple[str, str], ...],
        list_attributes: frozenset[str],
        missing: str,
        userid_filter: _FilterTemplate,
        groups: _GroupSettings | None,
    ) -> None:
        super().__init__(settings)
        self.attributes = attributes
        self.list_attributes = list_attributes
        self.missing = missing
        self.userid_filter = userid_filter
        self.groups = groups
        self._ldap_attributes = list(dict.fromkeys(attr for attr, _ in attributes))

    def add_metadata(self, environ: dict[str, Any], identity: dict[str, Any]) -> None:
        """Add the configured items; does nothing for an unknown user or odd input.

        Raises BackendUnavailable only if the directory cannot be asked.
        """
        self._counted(self._counted_call(self._add_metadata, identity, False))

    def _answer_settings(self) -> dict[str, Any]:
        g = self.groups
        return {
            "attributes": [list(pair) for pair in self.attributes],
            "list_attributes": sorted(self.list_attributes),
            "missing": self.missing,
            "userid_filter": self.userid_filter.text,
            "groups": None if g is None else {
                "base_dn": g.base_dn, "filter": g.filter.text, "scope": g.scope,
                "attribute": g.attribute, "item": g.item,
            },
        }

    def _bases(self) -> list[tuple[str, str]]:
        bases = super()._bases()
        if self.groups is not None:
            bases.append(("group_base_dn", self.groups.base_dn))
        return bases

    def _add_metadata(self, identity: dict[str, Any]) -> bool:
        userid = identity.get("repoze.who.userid")
        # A userid is a login-like value when userid_attribute is set, else a DN (which
        # may well be longer than any login).
        limit = self.settings.max_login_bytes if self.settings.userid_attribute else MAX_DN_BYTES
        if not self._text_within(userid, limit):
            return False
        entry = self._find_entry(identity, userid)
        if entry is None:
            return False
        values: dict[str, Any] = {}
        for attr, item in self.attributes:
            texts = entry.texts(attr)
            as_list = attr.lower() in self.list_attributes
            if texts:
                values[item] = texts if as_list or len(texts) > 1 else texts[0]
            elif self.missing == "none":
                values[item] = None
            elif self.missing == "empty":
                values[item] = [] if as_list else ""
        if self.groups is not None:
            names = self._groups(entry.dn, userid, identity)
            if names is not None:
                values[self.groups.item] = names
        identity.update(values)
        return True

    def _find_entry(self, identity: dict[str, Any], userid: str) -> _Entry | None:
        s = self.settings
        dn = identity.get(LDAP_DN_KEY)
        if not isinstance(dn, str) or not dn:
            dn = userid if s.userid_attribute is None else None
        if dn is not None:
            if not self._text_within(dn, MAX_DN_BYTES) or not self._within_base(dn):
                return None
            if not self._ldap_attributes:
                return _Entry(dn, {})  # nothing to read; groups need only the DN
            found = self.directory.search(dn, "(objectClass=*)", "base", self._ldap_attributes, 0)
        else:
            found = self.directory.search(
                s.base_dn,
                self.userid_filter.render({"userid": userid, "login": userid}),
                s.scope,
                self._ldap_attributes,
                2,
            )
        if len(found) != 1:
            return None
        return found[0]

    def _groups(self, dn: str, userid: str, identity: dict[str, Any]) -> list[str] | None:
        g = self.groups
        assert g is not None
        login = identity.get(self.settings.login_item)
        if "login" in g.filter.fields and not self._text_within(login,
                                                                 self.settings.max_login_bytes):
            return None
        values = {"dn": dn, "userid": userid, "login": login if isinstance(login, str) else ""}
        found = self.directory.search(
            g.base_dn, g.filter.render(values), g.scope, [g.attribute], 0
        )
        names = {texts[0] for entry in found if (texts := entry.texts(g.attribute))}
        return sorted(names)


# -- factories ----------------------------------------------------------------------------


def make_authenticator(**options: Any) -> LdapAuthenticator:
    """Build the LDAP authenticator from ini-style string options.

    Options (all strings, as repoze.who's config passes them): ``url`` (required; several
    separated by spaces are tried in order), ``base_dn`` (required), ``bind_dn`` and
    ``bind_password`` or ``bind_password_file`` (else searches are anonymous), ``filter``
    (default ``(uid={login})``), ``scope`` (base, one, sub; default sub), ``start_tls``,
    ``tls_ca_file``, ``tls_verify`` (default true), ``connect_timeout`` (default 3) and
    ``timeout`` (default 5; whole seconds), ``retry_after`` (seconds a directory that
    failed slowly is not asked; default 2), ``userid_attribute`` (default: the userid is
    the DN), ``pool_size`` (idle service connections kept; default 4), ``login_item`` and
    ``password_item`` (identity keys; default ``login``, ``password``),
    ``max_login_bytes`` (default 256) and ``max_password_bytes`` (default 1024): longer
    values (UTF-8) are refused before any work.
    An unknown option or a bad value raises ConfigError naming it.
    """
    opts = Options(options, "ldap authenticator")
    settings = _parse_common(opts)
    password_item = opts.str("password_item", "password") or "password"
    max_password_bytes = opts.int("max_password_bytes", DEFAULT_MAX_PASSWORD_BYTES, minimum=1,
                                  maximum=65536)
    _finish(opts, settings)
    return LdapAuthenticator(settings, password_item, max_password_bytes)


def make_metadata_provider(**options: Any) -> LdapMetadataProvider:
    """Build the LDAP metadata provider from ini-style string options.

    Takes the connection and search options of :func:`make_authenticator` (but not
    ``password_item``), plus: ``attributes`` (``mail=email cn``: copy ``mail`` as
    ``email`` and ``cn`` as ``cn``), ``list_attributes`` (attributes always given as lists;
    others are a string when they have one value, a list when several),
    ``missing`` (``omit``, the default; ``none``; or ``empty``: "" or []),
    ``userid_filter`` (how to find the entry by userid when there is no DN; default: the
    ``filter``, with ``{login}`` standing for the userid; placeholders ``{userid}``,
    ``{login}``), and for groups ``group_base_dn`` (enables them), ``group_filter``
    (default ``(&(objectClass=groupOfNames)(member={dn}))``; placeholders ``{dn}``,
    ``{userid}``, ``{login}``), ``group_scope`` (default sub), ``group_attribute``
    (default cn) and ``groups_item`` (default ``groups``). ``max_login_bytes`` (default
    256) bounds the login and, with ``userid_attribute``, the userid it looks up (a DN
    userid is bounded by :data:`MAX_DN_BYTES`).
    """
    opts = Options(options, "ldap metadata provider")
    settings = _parse_common(opts)
    attributes = _parse_attribute_map(opts, opts.list("attributes", ()) or [])
    list_attributes = frozenset(
        _attribute_name(opts, "list_attributes", name).lower()
        for name in opts.list("list_attributes", ()) or []
    )
    known = {attr.lower() for attr, _ in attributes}
    for name in sorted(list_attributes - known):
        raise opts.error("list_attributes", f"{name!r} is not one of the attributes")
    missing = opts.choice("missing", "omit", ("omit", "none", "empty"))
    userid_filter_text = opts.str("userid_filter") or settings.filter.text
    userid_filter = _FilterTemplate(userid_filter_text, "userid_filter", ("userid", "login"), opts)
    groups = None
    group_base_dn = opts.str("group_base_dn") or None
    group_filter = opts.str("group_filter") or DEFAULT_GROUP_FILTER
    group_scope = opts.choice("group_scope", "sub", SCOPES)
    group_attribute = _attribute_name(opts, "group_attribute", opts.str("group_attribute") or "cn")
    groups_item = opts.str("groups_item") or DEFAULT_GROUPS_ITEM
    if group_base_dn is not None:
        _dn_key(group_base_dn, opts, "group_base_dn")
        _check_item(opts, "groups_item", groups_item)
        if groups_item in {item for _, item in attributes}:
            raise opts.error("groups_item", f"{groups_item!r} is also an attribute's name")
        groups = _GroupSettings(
            base_dn=group_base_dn,
            filter=_FilterTemplate(group_filter, "group_filter", ("dn", "userid", "login"), opts),
            scope=group_scope,
            attribute=group_attribute,
            item=groups_item,
        )
    _finish(opts, settings)
    if not attributes and groups is None:
        raise ConfigError(
            "ldap metadata provider: nothing to do: give 'attributes' and/or 'group_base_dn'"
        )
    return LdapMetadataProvider(
        settings, attributes, list_attributes, missing, userid_filter, groups
    )


def _check_item(opts: Options, option: str, item: str) -> None:
    if item.startswith(_RESERVED_ITEMS[0]) or item == LDAP_DN_KEY:
        raise opts.error(option, f"{item!r} is reserved (repoze.who.* and {LDAP_DN_KEY})")


def _parse_attribute_map(opts: Options, words: list[str]) -> tuple[tuple[str, str], ...]:
    """``["mail=email", "cn"]`` -> ``(("mail", "email"), ("cn", "cn"))``, checked."""
    pairs = []
    items: set[str] = set()
    for word in words:
        attr, sep, item = word.partition("=")
        attr, item = attr.strip(), (item.strip() if sep else attr.strip())
        _attribute_name(opts, "attributes", attr)
        if not item:
            raise opts.error("attributes", f"{word!r}: empty identity key after '='")
        _check_item(opts, "attributes", item)
        if item in items:
            raise opts.error("attributes", f"identity key {item!r} given twice")
        items.add(item)
        pairs.append((attr, item))
    return tuple(pairs)
