"""The python-ldap directory client (``ldap_library = python-ldap``): see :mod:`.client`.

python-ldap wraps libldap (C): the same search and bind cost several times less CPU than
in ldap3. Facts it is built around (python-ldap 3.4.8, libldap 2.5):

* ``ldap.initialize(url)`` connects lazily, at the first operation: a server that refuses
  would then show up in the middle of a user bind, outside the failover. So for
  ``ldap://`` we connect the socket ourselves (``connect_timeout``, TCP_NODELAY) and hand
  it over (``fileno=``; libldap then owns and closes it); STARTTLS works on such a
  connection. libldap cannot start TLS on a handed-over socket, so for ``ldaps://`` it
  connects itself (``OPT_NETWORK_TIMEOUT``), forced at once by a WhoAmI request (any LDAP
  answer proves the connection).
* Every synchronous call waits at most ``OPT_TIMEOUT`` (and the ``timeout`` given to
  ``search_ext_s``); the server is asked to stop after ``OPT_TIMELIMIT``.
* Results other than success are raised (``ldap.INVALID_CREDENTIALS``,
  ``ldap.SIZELIMIT_EXCEEDED``...) with a dict holding ``result``, ``desc`` and ``info``;
  libldap's own failures have negative codes (``SERVER_DOWN`` -1, ``TIMEOUT`` -5,
  ``CONNECT_ERROR`` -11, ``FILTER_ERROR`` -7...). A str holding NUL raises ValueError
  before anything is sent.
* Referrals in a search result are ``(None, [urls])`` items (``OPT_REFERRALS`` off: never
  followed). python-ldap keeps no copy of a bind's password in Python objects.
"""

from __future__ import annotations

import os
import socket
from contextlib import suppress
from typing import Any

import ldap
from ldap3.core.results import RESULT_CODES

from .client import Answer, ClientRequestNotBuilt, ClientUnreachable, SearchAnswer
from .options import NO_ATTRIBUTES, _ServerSpec, _Settings
from .results import _describe, _Entry

_SCOPES = {"base": ldap.SCOPE_BASE, "one": ldap.SCOPE_ONELEVEL, "sub": ldap.SCOPE_SUBTREE}
# libldap's own codes for a request it could not build from the values given.
_NOT_BUILT_CODES = frozenset({
    -3,  # LDAP_ENCODING_ERROR
    -7,  # LDAP_FILTER_ERROR
    -9,  # LDAP_PARAM_ERROR
})
_TIMEOUT_CODE = -5  # LDAP_TIMEOUT


def _fields(exc: ldap.LDAPError) -> dict[str, Any]:
    info = exc.args[0] if exc.args and isinstance(exc.args[0], dict) else {}
    return info


def _answer_of(exc: ldap.LDAPError) -> Answer | None:
    """The LDAP result an exception stands for, or None for a failure of libldap itself."""
    info = _fields(exc)
    code = info.get("result")
    if not isinstance(code, int) or code < 0:
        return None
    # The RFC 4511 names ldap3 uses ("invalidCredentials"), so messages read alike.
    return Answer(code, RESULT_CODES.get(code, str(info.get("desc"))),
                  str(info.get("info") or ""))


def _failure(exc: ldap.LDAPError, what: str) -> Exception:
    """What a libldap failure (a negative code) means: a request never built, or an
    exchange that failed."""
    info = _fields(exc)
    code = info.get("result")
    if code in _NOT_BUILT_CODES:
        return ClientRequestNotBuilt(f"python-ldap could not build the {what} "
                                     f"({type(exc).__name__})")
    text = f"{type(exc).__name__}: {info.get('desc', exc)}"
    if info.get("info"):
        text += f" ({info['info']})"
    timed_out = code == _TIMEOUT_CODE or isinstance(exc, ldap.TIMEOUT)
    return ClientUnreachable(text + (" (timed out)" if timed_out else ""), timed_out=timed_out)


class _PythonLdapConnection:
    def __init__(self, conn: Any, timeout: int) -> None:
        self._conn = conn
        self._timeout = timeout

    def start_tls(self) -> None:
        try:
            self._conn.start_tls_s()
        except ldap.LDAPError as exc:
            answer = _answer_of(exc)
            if answer is None and isinstance(exc, ldap.CONNECT_ERROR):
                # libldap says no more ("unknown error code"): the connection was up, so
                # the TLS handshake failed.
                raise ClientUnreachable(f"STARTTLS failed: {type(exc).__name__}: the TLS "
                                        "handshake did not complete (the server's "
                                        "certificate not trusted? see tls_ca_file, "
                                        "tls_verify)") from None
            if answer is None:
                raise _failure(exc, "STARTTLS") from None
            raise ClientUnreachable(f"STARTTLS did not start: {answer.description} "
                                    f"({answer.code}) {answer.message}") from None

    def bind(self, dn: str | None, password: bytes | None) -> Answer:
        try:
            self._conn.simple_bind_s(dn or "", password or b"")
        except ldap.LDAPError as exc:
            answer = _answer_of(exc)
            if answer is None:
                raise _failure(exc, "bind") from None
            return answer
        except (ValueError, TypeError, UnicodeError) as exc:
            raise ClientRequestNotBuilt(f"python-ldap could not build the bind "
                                        f"({type(exc).__name__})") from None
        return Answer(0, "success")

    def search(self, base: str, search_filter: str, scope: str, attributes: list[str],
               size_limit: int) -> SearchAnswer:
        try:
            found = self._conn.search_ext_s(base, _SCOPES[scope], search_filter,
                                            attributes or [NO_ATTRIBUTES],
                                            timeout=self._timeout, sizelimit=size_limit)
        except ldap.LDAPError as exc:
            answer = _answer_of(exc)
            if answer is None:
                raise _failure(exc, "search") from None
            # A size limit hit, a missing base...: python-ldap drops the entries with it
            # (a partial result is refused above anyway).
            return SearchAnswer(answer, [])
        except (ValueError, TypeError, UnicodeError) as exc:
            raise ClientRequestNotBuilt(f"python-ldap could not build the search "
                                        f"({type(exc).__name__})") from None
        entries = [_Entry(dn, {k.lower(): list(v) for k, v in attrs.items()})
                   for dn, attrs in found if dn is not None]
        references = any(dn is None for dn, _ in found)
        return SearchAnswer(Answer(0, "success"), entries, references)

    def close(self) -> None:
        with suppress(Exception):
            self._conn.unbind_s()


class PythonLdapLibrary:
    """Connections with python-ldap; the options are computed once."""

    def __init__(self, settings: _Settings) -> None:
        self._connect_timeout = settings.connect_timeout
        self._timeout = settings.timeout
        self._options: list[tuple[int, Any]] = [
            (ldap.OPT_PROTOCOL_VERSION, ldap.VERSION3),
            (ldap.OPT_REFERRALS, ldap.OPT_OFF),  # never follow one with someone's password
            (ldap.OPT_DEREF, ldap.DEREF_NEVER),
            (ldap.OPT_NETWORK_TIMEOUT, float(settings.connect_timeout)),
            (ldap.OPT_TIMEOUT, float(settings.timeout)),
            (ldap.OPT_TIMELIMIT, settings.timeout),
        ]
        if settings.tls is not None:
            self._options += [
                (ldap.OPT_X_TLS_REQUIRE_CERT,
                 ldap.OPT_X_TLS_DEMAND if settings.tls.verify else ldap.OPT_X_TLS_NEVER),
            ]
            if settings.tls.ca_file:
                self._options.append((ldap.OPT_X_TLS_CACERTFILE, settings.tls.ca_file))
            self._options.append((ldap.OPT_X_TLS_NEWCTX, 0))  # last: applies the above

    def _socket(self, spec: _ServerSpec) -> int:
        """A connected TCP socket's descriptor, Nagle off, blocking (libldap's to own)."""
        try:
            sock = socket.create_connection((spec.host, spec.port), self._connect_timeout)
        except OSError as exc:
            raise ClientUnreachable(_describe(exc), timed_out=isinstance(exc, TimeoutError)
                                    or "timed out" in str(exc)) from exc
        with suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(None)  # libldap bounds its waits itself (OPT_TIMEOUT)
        return sock.detach()

    def connect(self, spec: _ServerSpec) -> _PythonLdapConnection:
        fd = None if spec.use_ssl else self._socket(spec)
        try:
            conn = ldap.initialize(spec.url, fileno=fd)
        except BaseException:
            if fd is not None:
                os.close(fd)
            raise
        wrapped = _PythonLdapConnection(conn, self._timeout)
        try:
            for option, value in self._options:
                conn.set_option(option, value)
            conn.timeout = self._timeout  # what python-ldap's *_s methods wait
            if spec.use_ssl:
                conn.whoami_s()  # connects (TCP and TLS) now, inside the failover
        except ldap.LDAPError as exc:
            if _answer_of(exc) is None:  # any LDAP answer proves the connection
                wrapped.close()
                raise _failure(exc, "connection") from None
        return wrapped


def make_library(settings: _Settings) -> PythonLdapLibrary:
    return PythonLdapLibrary(settings)
