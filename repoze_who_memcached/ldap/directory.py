"""Connections to one directory: failover, the service-connection pool, searches, user binds.

Everything here is bounded by ``connect_timeout`` / ``timeout`` and goes through the circuit
breaker (:mod:`.breaker`); a directory that cannot be asked raises BackendUnavailable, an
answer that is the request's own fault raises :class:`~.results._Refused`.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress

from ldap3 import ANONYMOUS, BASE, DEREF_NEVER, NONE, SIMPLE, SYNC, Connection, Server
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

from ..errors import BackendUnavailable
from .breaker import _Breaker
from .counters import LdapCounters
from .options import (
    NO_ATTRIBUTES,
    SCOPES,
    SERVER_RETRY_SECONDS,
    SLOW_FAILURE_SHARE,
    _ServerSpec,
    _Settings,
)
from .results import (
    _CREDENTIALS_REFUSED,
    _NO_SUCH_OBJECT,
    _PARTIAL_RESULTS,
    _SEARCH_OK,
    _describe,
    _describe_result,
    _Entry,
    _is_timeout,
    _Refused,
    _StaleConnection,
)

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
