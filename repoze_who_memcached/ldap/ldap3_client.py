"""The ldap3 directory client (``ldap_library = ldap3``, the default): see :mod:`.client`.

ldap3 facts it is built around (ldap3 2.9.1): a ``Server`` object keeps per-address state
(so a fresh one is built per connection, its arguments computed once); ``get_info=NONE``
(the default re-reads the schema on every connection); timeouts must be ints; after a bind
``Connection.request`` keeps the bind request, password included, and ``repr()`` shows
``password`` (both cleared as soon as a bind returns); Nagle stays on unless turned off.
"""

from __future__ import annotations

import socket
import ssl
from contextlib import suppress
from typing import Any

from ldap3 import (
    ANONYMOUS,
    BASE,
    DEREF_NEVER,
    LEVEL,
    NONE,
    SIMPLE,
    SUBTREE,
    SYNC,
    Server,
    Tls,
)
from ldap3 import Connection as Ldap3Connection
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
from pyasn1.error import PyAsn1Error

from .client import Answer, ClientRequestNotBuilt, ClientUnreachable, SearchAnswer
from .options import NO_ATTRIBUTES, _ServerSpec, _Settings
from .results import _describe, _Entry, _is_timeout

_SCOPES = {"base": BASE, "one": LEVEL, "sub": SUBTREE}
# Every ldap3 failure of the network or of TLS (ssl.SSLError is an OSError).
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


def _unreachable(exc: BaseException, secret: str | bytes | None = None) -> ClientUnreachable:
    return ClientUnreachable(_describe(exc, secret), timed_out=_is_timeout(exc))


def _answer(result: dict[str, Any] | None) -> Answer:
    result = result or {}
    return Answer(result.get("result", -1), str(result.get("description")),
                  str(result.get("message") or ""))


class _Ldap3Connection:
    def __init__(self, conn: Ldap3Connection, timeout: int) -> None:
        self._conn = conn
        self._timeout = timeout

    def start_tls(self) -> None:
        try:
            started = self._conn.start_tls(read_server_info=False)
        except _NETWORK_ERRORS as exc:
            raise _unreachable(exc) from exc
        if not started:
            raise ClientUnreachable("STARTTLS did not start")

    def bind(self, dn: str | None, password: bytes | None) -> Answer:
        conn = self._conn
        if dn is not None:
            conn.authentication = SIMPLE
            conn.user = dn
            conn.password = password
        else:
            conn.authentication = ANONYMOUS
        try:
            accepted = conn.bind(read_server_info=False)
        except _INPUT_ERRORS as exc:
            raise ClientRequestNotBuilt(f"ldap3 could not build the bind "
                                        f"({type(exc).__name__})") from None
        except _NETWORK_ERRORS as exc:
            raise _unreachable(exc, password) from None
        finally:
            # A pooled connection must not carry the password into a repr, a log or a core
            # dump (ldap3 keeps it, and the last request).
            conn.password = None
            conn.request = None
        return Answer(0, "success") if accepted else _answer(conn.result)

    def search(self, base: str, search_filter: str, scope: str, attributes: list[str],
               size_limit: int) -> SearchAnswer:
        conn = self._conn
        try:
            conn.search(base, search_filter, search_scope=_SCOPES[scope],
                        attributes=attributes or [NO_ATTRIBUTES], size_limit=size_limit,
                        time_limit=self._timeout, dereference_aliases=DEREF_NEVER)
        except _INPUT_ERRORS as exc:
            raise ClientRequestNotBuilt(f"ldap3 could not build the search "
                                        f"({type(exc).__name__})") from None
        except _NETWORK_ERRORS as exc:
            raise _unreachable(exc) from exc
        response = conn.response or []
        entries = [
            _Entry(item["dn"],
                   {k.lower(): list(v) for k, v in (item.get("raw_attributes") or {}).items()})
            for item in response
            if item.get("type") == "searchResEntry"
        ]
        references = any(item.get("type") == "searchResRef" for item in response)
        return SearchAnswer(_answer(conn.result), entries, references)

    def close(self) -> None:
        # ldap3 leaves the socket of a failed open() unclosed (unbind skips a connection
        # that never opened), hence the explicit close.
        with suppress(Exception):
            self._conn.unbind()
        sock = getattr(self._conn, "socket", None)
        if sock is not None:
            with suppress(Exception):
                sock.close()


class Ldap3Library:
    """Connections with ldap3; the per-server arguments are computed once."""

    def __init__(self, settings: _Settings) -> None:
        self._timeout = settings.timeout
        tls = None
        if settings.tls is not None:
            tls = Tls(validate=ssl.CERT_REQUIRED if settings.tls.verify else ssl.CERT_NONE,
                      ca_certs_file=settings.tls.ca_file)
        self._server_args = {
            spec.url: {"host": spec.host, "port": spec.port, "use_ssl": spec.use_ssl,
                       "get_info": NONE, "connect_timeout": settings.connect_timeout,
                       "tls": tls}
            for spec in settings.servers
        }

    def connect(self, spec: _ServerSpec) -> _Ldap3Connection:
        conn = Ldap3Connection(
            Server(**self._server_args[spec.url]),
            client_strategy=SYNC,
            authentication=ANONYMOUS,
            receive_timeout=self._timeout,
            auto_referrals=False,  # never follow a referral with someone's password
            raise_exceptions=False,
            return_empty_attributes=False,
            read_only=True,
        )
        wrapped = _Ldap3Connection(conn, self._timeout)
        try:
            conn.open(read_server_info=False)
        except _NETWORK_ERRORS as exc:
            wrapped.close()
            raise _unreachable(exc) from exc
        # Nagle off (ldap3 leaves it on). Measured: the first bind after STARTTLS waited
        # ~40 ms for a delayed ACK, 49 ms per TLS login instead of 5 ms.
        with suppress(OSError, AttributeError):
            conn.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return wrapped


def make_library(settings: _Settings) -> Ldap3Library:
    return Ldap3Library(settings)
