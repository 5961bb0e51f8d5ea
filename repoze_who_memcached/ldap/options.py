"""The LDAP plugins' options: parsed once at load time, strictly, into :class:`_Settings`.

Also the filter templates (``{login}`` placeholders, checked at load time and filter-escaped
when rendered) and the defaults both plugins share. A bad value raises ConfigError naming
the option; a missing required one is reported with the unknown option that probably meant
it (:func:`_finish`).
"""

from __future__ import annotations

import importlib.util
import ipaddress
import logging
import os
import re
import string
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from ldap3.core.exceptions import LDAPException
from ldap3.operation.search import parse_filter
from ldap3.utils.conv import escape_filter_chars

from ..errors import ConfigError
from ..options import Options
from .dn import _dn_key

# One logger for the whole package, named as the module was before it became one: logging
# configurations that name ``repoze_who_memcached.ldap`` see every record as they did.
log = logging.getLogger(__package__)


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
SCOPES = ("base", "one", "sub")
#: ``ldap_library`` values: the library the connections are made with. ldap3 (pure Python)
#: is always installed; python-ldap (libldap, C; about 5x cheaper in CPU) is the extra
#: ``repoze_who_memcached[python-ldap]``. Read when a factory runs (tests switch it).
LIBRARIES = ("ldap3", "python-ldap")
DEFAULT_LDAP_LIBRARY = "ldap3"
NO_ATTRIBUTES = "1.1"  # RFC 4511: "return no attributes"


_ATTRIBUTE_NAME = re.compile(r"^(?:[A-Za-z][A-Za-z0-9-]*|[0-9]+(?:\.[0-9]+)+)$")
_RESERVED_ITEMS = ("repoze.who.", LDAP_DN_KEY)


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


# ldap3 checks certificate names itself: with ssl.match_hostname (Python up to 3.11, which
# matches IP addresses) or, where the stdlib has none (3.12 and later), a backport of its own
# that refuses IP addresses.
LDAP3_VERIFIES_IP_HOSTS = sys.version_info < (3, 12)


def _is_ip_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class _ServerSpec:
    """What ldap3's ``Server`` needs for one URL (a fresh Server is made per connection)."""

    url: str
    host: str
    port: int
    use_ssl: bool


@dataclass(frozen=True)
class _TlsSettings:
    """How to check the server's certificate (each library builds its own context once)."""

    verify: bool
    ca_file: str | None


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
    tls: _TlsSettings | None
    connect_timeout: int
    timeout: int
    retry_after: float
    userid_attribute: str | None
    pool_size: int
    login_item: str
    max_login_bytes: int
    library: str = DEFAULT_LDAP_LIBRARY
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
        tls = _TlsSettings(verify=tls_verify, ca_file=tls_ca_file)
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
    # Not in cache_fingerprint(): both libraries give the same answers to the same
    # requests (the same tests prove it), so caches made with either may share entries.
    library = opts.choice("ldap_library", DEFAULT_LDAP_LIBRARY, LIBRARIES)
    if library == "python-ldap" and importlib.util.find_spec("ldap") is None:
        raise opts.error("ldap_library", "python-ldap is not installed (pip install "
                         "'repoze_who_memcached[python-ldap]'; it builds against Debian's "
                         "libldap2-dev and libsasl2-dev)")
    if tls is not None and tls.verify and library == "ldap3" and not LDAP3_VERIFIES_IP_HOSTS:
        ip_hosts = [s.host for s in servers
                    if (s.use_ssl or start_tls) and _is_ip_address(s.host)]
        if ip_hosts:
            raise opts.error("url", f"{ip_hosts[0]} is an IP address: on Python 3.12 and later "
                             "ldap3 cannot match a certificate to an IP address (its own "
                             "hostname check has no IP support), so every TLS connection "
                             "would fail. Use the server's host name, or ldap_library = "
                             "python-ldap")
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
        library=library,
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
