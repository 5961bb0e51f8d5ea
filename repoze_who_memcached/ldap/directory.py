"""Connections to one directory: failover, the service-connection pool, searches, user binds.

Written on the directory client interface (:mod:`.client`), so it is the same for every
``ldap_library``: what a result means, STARTTLS before anything else, which failures are
retried. Everything is bounded by ``connect_timeout`` / ``timeout`` and goes through the
circuit breaker (:mod:`.breaker`); a directory that cannot be asked raises
BackendUnavailable, an answer that is the request's own fault raises
:class:`~.results._Refused`.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from ldap3.core.exceptions import LDAPSASLPrepError
from ldap3.protocol.sasl.sasl import sasl_prep

from ..errors import BackendUnavailable
from .breaker import _Breaker
from .client import ClientRequestNotBuilt, ClientUnreachable, Connection, make_library
from .counters import LdapCounters
from .options import SERVER_RETRY_SECONDS, SLOW_FAILURE_SHARE, _ServerSpec, _Settings
from .results import (
    _CREDENTIALS_REFUSED,
    _INVALID_DN_SYNTAX,
    _NO_SUCH_OBJECT,
    _PARTIAL_RESULTS,
    _SEARCH_OK,
    _describe,
    _describe_result,
    _Entry,
    _redact,
    _Refused,
    _StaleConnection,
)


def _prepare_password(password: str) -> bytes | None:
    """The bytes a simple bind sends for ``password`` (RFC 4013 SASLprep, UTF-8), or None
    if SASLprep refuses it (control characters, private use, non-characters, mixed
    directions, or nothing left after mapping). ldap3 does the same when given text; done
    here, before any search, so a password no bind could carry costs no request, and
    every library sends the same bytes."""
    try:
        prepared = sasl_prep(password).encode("utf-8")
    except (LDAPSASLPrepError, UnicodeError):
        return None
    return prepared or None  # never an empty (unauthenticated, RFC 4513 5.1.2) bind


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
        self.library = make_library(settings)
        # The service password as every bind sends it, prepared once (None: SASLprep
        # refuses it, so no service bind can succeed: each says so).
        self._service_password = (None if settings.bind_password is None
                                  else _prepare_password(settings.bind_password))

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

    def _problem(self, exc: BaseException) -> str:
        """What went wrong, for a message: a client's own text, else ``Type: message``;
        the bind password blotted out either way."""
        if isinstance(exc, ClientUnreachable):
            return _redact(str(exc), self.settings.bind_password)[:500]
        return _describe(exc, self.settings.bind_password)

    def _open(self, spec: _ServerSpec, bind: Callable[[Connection], None] | None) -> Connection:
        """A connection to ``spec``'s server: TLS first, then ``bind``. Raises on failure.

        With ``start_tls``, STARTTLS completes before anything else is sent (no bind, no
        search goes out in clear).
        """
        conn = self.library.connect(spec)
        try:
            if self.settings.start_tls and not spec.use_ssl:
                conn.start_tls()
            if bind is not None:
                bind(conn)
        except BaseException:
            conn.close()
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
            except (ClientUnreachable, BackendUnavailable) as exc:
                self._mark(spec, up=False)
                problems.append(f"{spec.url}: {self._problem(exc)}")
                continue
            self._mark(spec, up=True)
            return conn
        raise BackendUnavailable("LDAP server unavailable: " + "; ".join(problems))

    def _service_bind(self, conn: Connection) -> None:
        s = self.settings
        who = s.bind_dn or "anonymous"
        self.counters.add("service_binds")
        if s.bind_dn is not None and self._service_password is None:
            raise BackendUnavailable(f"service bind as {who} refused: bind_password is "
                                     "refused by SASLprep (RFC 4013)")
        try:
            answer = conn.bind(s.bind_dn, self._service_password)
        except ClientRequestNotBuilt as exc:
            raise BackendUnavailable(f"service bind as {who} refused: {exc}") from None
        if answer.code != 0:
            raise BackendUnavailable(f"service bind as {who} refused: {answer.description} "
                                     f"({answer.code}) {answer.message}")

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
            conn.close()
            raise
        with self._lock:
            if len(self._idle) < self.settings.pool_size and self._pid == os.getpid():
                self._idle.append(conn)
                conn = None
        if conn is not None:
            conn.close()

    def _drain(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

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
        for attempt in (1, 2):
            refused: _Refused | None = None
            try:
                with self._pooled() as (conn, reused):
                    self.counters.add("searches")
                    try:
                        found = conn.search(base, search_filter, scope, attributes, size_limit)
                    except ClientRequestNotBuilt as exc:
                        # Raised while the request was built or encoded: nothing was sent,
                        # so the connection is as good as before and goes back to the pool.
                        refused = _Refused("bad-request", str(exc), answered=False)
                    except ClientUnreachable as exc:
                        if reused and attempt == 1 and not exc.timed_out:
                            raise _StaleConnection from None
                        raise BackendUnavailable(
                            f"LDAP search failed: {self._problem(exc)}"
                        ) from None
            except _StaleConnection:
                self.counters.add("stale_connections")
                self._drain()  # its siblings are most likely dead too
                continue
            if refused is not None:
                raise refused
            answer = found.answer
            if answer.code in (_NO_SUCH_OBJECT, _INVALID_DN_SYNTAX):
                return []
            if answer.code in _PARTIAL_RESULTS or found.references:
                raise _Refused("partial", f"the search under {base!r} returned part of its "
                               f"entries only ({answer.description})", answered=True)
            if answer.code != _SEARCH_OK:
                raise BackendUnavailable(
                    f"LDAP search under {base!r} failed: {answer.description} ({answer.code}) "
                    f"{answer.message}"
                )
            return found.entries
        raise AssertionError("unreachable")  # pragma: no cover

    def check_password(self, dn: str, password: bytes) -> bool:
        """Bind as ``dn`` on a connection of its own, then close it. True if accepted.

        ``password`` is already SASLprep-ed and encoded (:func:`_prepare_password`): it is
        sent as it is.
        """
        with self.breaker.call():
            return self._check_password(dn, password)

    def _check_password(self, dn: str, password: bytes) -> bool:
        conn = self._connect(None)
        try:
            self.counters.add("user_binds")
            try:
                answer = conn.bind(dn, password)
            except ClientRequestNotBuilt as exc:
                raise _Refused("bad-request", str(exc), answered=False) from None
            except ClientUnreachable as exc:
                raise BackendUnavailable(
                    f"LDAP bind failed: {_redact(str(exc), password)[:500]}"
                ) from None
            if answer.code == 0:
                return True
            if answer.code in _CREDENTIALS_REFUSED:
                return False
            raise BackendUnavailable(_describe_result(
                f"LDAP server did not judge a bind as {dn!r}", answer.description,
                answer.code, answer.message, password
            ))
        finally:
            conn.close()

    def health_check(self, bases: list[tuple[str, str]]) -> list[str]:
        """Problems found asking each server directly (empty: healthy); see
        :meth:`_LdapPlugin.health_check`. ``bases`` are ``(option name, DN)`` pairs."""
        s = self.settings
        who = s.bind_dn or "anonymous"
        problems = []
        for spec in s.servers:
            try:
                conn = self._open(spec, None)
            except (ClientUnreachable, BackendUnavailable) as exc:
                problems.append(f"{spec.url}: cannot connect: {self._problem(exc)}")
                continue
            try:
                try:
                    self._service_bind(conn)
                except (ClientUnreachable, BackendUnavailable) as exc:
                    problems.append(f"{spec.url}: {self._problem(exc)}")
                    continue
                for option, base in bases:
                    problem = self._check_base(conn, base, who)
                    if problem:
                        problems.append(f"{spec.url}: {option} {base!r}: {problem}")
            finally:
                conn.close()
        return problems

    def _check_base(self, conn: Connection, base: str, who: str) -> str | None:
        try:
            found = conn.search(base, "(objectClass=*)", "base", [], 1)
        except (ClientUnreachable, ClientRequestNotBuilt) as exc:
            return f"search failed: {self._problem(exc)}"
        answer = found.answer
        if answer.code == _NO_SUCH_OBJECT:
            return f"no such entry (or {who} may not see it)"
        if answer.code != _SEARCH_OK:
            return _describe_result("search failed", answer.description, answer.code,
                                    answer.message, self.settings.bind_password)
        return None
