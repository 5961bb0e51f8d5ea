"""The narrow interface between the plugin and a memcached client library.

The plugin needs a handful of operations and one promise: none of them ever raises. A
dead, hung, refusing or garbage-returning memcached must cost a cache miss, not a failed
login. Each backend bounds every call by ``socket_timeout``, skips a
dead server for ``dead_retry`` seconds, and reports errors to a callback that the plugin
rate-limits into warnings and counts.

Every call takes a ``route``: the key that chooses the server. The plugin routes all keys of
one user (entries, the user's generation token, the namespace token, locks) by the user's
generation key, so one request is one round trip to one server whatever the cluster size,
and losing a server costs only the users it held. Generation tokens are written to every
server (``set_everywhere``), so a user's keys that fail over to another server meet the
current token there too.

Two backends:

* :class:`PythonMemcachedBackend` (default): python-memcached. Its ``Client`` is a
  ``threading.local``, so each thread gets its own sockets: safe under waitress as is.
  Pickle is refused: a value flagged as pickled by whoever wrote memcached is dropped,
  never unpickled.
* :class:`PymemcacheBackend`: pymemcache, one ``Client`` per server and thread, with TLS.
  Server selection is ours (a consistent-hash ring built once at start-up), because
  pymemcache's ``HashClient`` re-hashes every key against every server on each call.

Both read the hit path's one ``get`` on a connection of ours
(:class:`~repoze_who_memcached.connection.MemcachedConnection`, one per server: a socket per
thread, a dead mark shared by all threads), never on the library's: each library's general
reader costs about as much as the round trip itself, and its sockets are its private state
(see :mod:`repoze_who_memcached.connection` for why we own this one). Everything else (stores,
locks, invalidation, stats) goes through the library's public API. The server for a route is
chosen once, by us, for the ``get`` and the library's calls alike, from the same dead marks:
a server that failed either of them is skipped by both for ``dead_retry`` seconds.
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import os
import ssl
import threading
import time
import weakref
import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .connection import (
    MAX_VALUE_BYTES,
    STALE_CONNECTION,
    ErrorReporter,
    MemcachedConnection,
    ProtocolError,
    fetch_values,
)
from .errors import ConfigError

__all__ = [
    "BACKENDS", "MAX_VALUE_BYTES", "BackendSettings", "CacheBackend", "ConsistentHashRing",
    "ErrorReporter", "ProtocolError", "PymemcacheBackend", "PythonMemcachedBackend",
    "ServerAddress", "ServerReport", "fetch_values",
]

DEFAULT_PORT = 11211
MAX_RELATIVE_EXPIRY = 30 * 24 * 3600  # memcached reads larger values as unix timestamps


def memcached_expiry(seconds: int) -> int:
    """Seconds from now, in the form memcached understands for any length."""
    if seconds > MAX_RELATIVE_EXPIRY:
        return int(time.time()) + seconds
    return seconds


@dataclass(frozen=True)
class ServerAddress:
    host: str
    port: int
    unix_path: str | None = None

    @classmethod
    def parse(cls, text: str) -> ServerAddress:
        """``host:port``, ``host`` (port 11211), ``[::1]:port``, ``unix:/path``; an optional
        ``memcached://`` or ``inet:`` prefix is accepted for old configs."""
        raw = text.strip()
        spec = raw
        for prefix in ("memcached://", "memcache://", "inet:"):
            if spec.startswith(prefix):
                spec = spec[len(prefix) :]
        spec = spec.rstrip("/")
        if spec.startswith("unix:"):
            return cls(host="", port=0, unix_path=spec[5:])
        if spec.startswith("["):
            host, _, rest = spec[1:].partition("]")
            port_text = rest[1:] if rest.startswith(":") else ""
        else:
            host, _, port_text = spec.partition(":")
        if not host or any(c.isspace() for c in host):
            raise ConfigError(f"bad server {raw!r} (want host:port)", option="memcached_urls")
        try:
            port = int(port_text) if port_text else DEFAULT_PORT
        except ValueError:
            raise ConfigError(f"bad port in {raw!r}", option="memcached_urls") from None
        if not 0 < port < 65536:
            raise ConfigError(f"port out of range in {raw!r}", option="memcached_urls")
        return cls(host=host, port=port)

    def __str__(self) -> str:
        if self.unix_path is not None:
            return f"unix:{self.unix_path}"
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


@dataclass
class ServerReport:
    """What ``probe`` learned about one server (for the CLI's ``check`` and ``stats``)."""

    address: str
    ok: bool
    version: str = ""
    error: str = ""
    stats: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class BackendSettings:
    servers: tuple[ServerAddress, ...]
    socket_timeout: float = 0.5
    connect_timeout: float = 0.5
    dead_retry: float = 10.0
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_verify: bool = True
    proxy: str = ""
    """``"twemproxy"``: ``servers`` are twemproxy (nutcracker) listeners in front of one
    pool, not memcached servers (see :data:`PROXIES`); "" for memcached servers."""

    @property
    def tls(self) -> bool:
        return bool(self.tls_ca_file or self.tls_cert_file)


PROXIES = ("twemproxy",)
"""What ``memcached_proxy`` accepts besides ``none``.

Behind twemproxy (Debian's ``nutcracker``, configured with ``hash_tag: "{}"``): keys carry a
hash tag so that all of one user's keys land on one backend (``keys.py``); the request path
uses only commands twemproxy forwards (get, set, add, delete, incr, decr, touch); a
``SERVER_ERROR`` it answers for a failed backend is a miss, never a reason to skip the proxy
itself (other users' backends are fine); a write "to every server" is one write through the
proxy, which sends it to the key's backend (the listed proxies share one pool); ``probe``
sends ``version`` only (twemproxy drops the connection on ``stats``).
"""


class CacheBackend(ABC):
    """What the plugin asks of memcached. Implementations never raise from these methods."""

    def __init__(self, settings: BackendSettings, report_error: ErrorReporter) -> None:
        self.settings = settings
        self.report_error = report_error

    @abstractmethod
    def get_multi(self, keys: Sequence[str], route: str) -> dict[str, Any]:
        """Values found on the server owning ``route`` (one round trip); missing keys and
        errors are absent."""

    @abstractmethod
    def set(self, key: str, value: bytes, expire: int, route: str) -> bool: ...

    @abstractmethod
    def add(self, key: str, value: bytes, expire: int, route: str) -> bool:
        """Store only if absent; True if stored (the building block of locks)."""

    @abstractmethod
    def delete(self, key: str, route: str) -> bool: ...

    @abstractmethod
    def incr(self, key: str, delta: int, route: str) -> int | None:
        """Add ``delta`` (negative: subtract, memcached stops at 0) to a counter stored as
        ASCII digits; its new value, or None when the key is absent or on error."""

    @abstractmethod
    def touch(self, key: str, expire: int, route: str) -> bool:
        """Give an existing key a new expiry, keeping its value (generation tokens live as
        long as the entries stored under them, and no longer)."""

    @abstractmethod
    def set_everywhere(self, key: str, value: bytes) -> list[str]:
        """Store ``key`` (no expiry) on every server; returns the servers that failed.
        Behind a proxy: once, through the first proxy that takes it (all of them, listed,
        if none does)."""

    @abstractmethod
    def probe(self) -> list[ServerReport]:
        """Connect to every server and report its status, version and stats."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release sockets (tests and the CLI call it; servers just exit)."""


# --------------------------------------------------------------------------------------------
# python-memcached


class _RefusePickle:
    """Stands in for ``pickle.Unpickler``: nothing read from the network is unpickled."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise ValueError("pickled value refused")


def _no_decompression(data: bytes) -> bytes:
    """We never compress; a value flagged as compressed is garbage and fails to open."""
    return data


class PythonMemcachedBackend(CacheBackend):
    """python-memcached for everything but the hit path's ``get`` (ours, see the module).

    Routing is ours, in python-memcached's own terms: the server for a route is
    ``_route_hash(route) % len(servers)``, and if that one is marked dead, the next of
    python-memcached's own failover sequence (:func:`_python_memcached_order`) that is not.
    The library is told that choice through its public ``(serverhash, key)`` tuple keys:
    the route's hash when we chose its first server (so that if the library finds it dead
    on connecting, it fails over along the same sequence as we will), else the chosen
    server's index, so ``index % len(servers)`` is that server whatever the library's own
    (per-thread) marks say. When the library finds a server dead (its ``debuglog`` says
    "Marking dead"), the server is marked dead in our connection too, so the next ``get``
    goes where the stores go. After any incident of a server (a dead mark, or a socket of
    ours it closed), each thread drops its library sockets before its next call
    (:meth:`_client_for`): the library would otherwise find each old socket closed, one
    thread after another, and mark the server dead each time.
    """

    def __init__(self, settings: BackendSettings, report_error: ErrorReporter) -> None:
        super().__init__(settings, report_error)
        if settings.tls:
            raise ConfigError(
                "option 'memcached_tls_ca_file': python-memcached has no TLS; "
                "set memcached_client = pymemcache"
            )
        self._connections = _connections(settings, report_error, tls_context=None)
        self._count = len(self._connections)
        self._client = _make_python_memcached_client(
            settings, report_error, on_dead=lambda index: self._connections[index].mark_dead())
        self._seen = threading.local()  # per thread: the servers' incidents at its last call

    def _client_for(self, index: int) -> Any:
        """This thread's python-memcached client, its sockets dropped first (public
        ``disconnect_all``) if server ``index`` has had an incident since this thread's
        last call.

        python-memcached does not reconnect on a socket the server closed (a restart, a cut
        link): it marks the server dead, and its own retry-once finds that mark. Its sockets
        are per thread, so every thread that held one from before would mark the server
        dead in turn, each for dead_retry, as its first store after the restart came along
        (a thread whose gets were skipped by a dead mark never touched its sockets). One
        incident, seen by any thread, makes every thread reconnect instead (each thread's
        own get finds its old socket closed too, an incident each: a restart costs a few
        needless reconnects, once)."""
        incidents = self._connections[index].incidents
        seen = getattr(self._seen, "incidents", None)
        if seen is None:  # this thread's first call: its client has no socket yet
            self._seen.incidents = [c.incidents for c in self._connections]
        elif seen[index] != incidents:
            self._seen.incidents = [c.incidents for c in self._connections]
            with contextlib.suppress(Exception):
                self._client.disconnect_all()  # every server's: one call, rare
        return self._client

    def _server_for(self, route: str) -> tuple[int, int] | None:
        """``(index, serverhash)``: the live server for ``route`` and the hash that makes
        python-memcached choose it (None: all the route's candidates are marked dead)."""
        where = _route_hash(route)
        first = where % self._count
        if self._connections[first].alive:
            return first, where
        for index in _python_memcached_order(where, self._count):
            if self._connections[index].alive:
                return index, index
        return None

    def _guard(self, what: str, route: str, default: Any, call: Callable[[Any, int], Any]
               ) -> Any:
        """``call(client, serverhash)`` for the server chosen for ``route``; never raises."""
        chosen = self._server_for(route)
        if chosen is None:
            return default  # every candidate is marked dead: the failure was reported then
        try:
            return call(self._client_for(chosen[0]), chosen[1])
        except Exception as exc:
            # A surprise mid-read may leave a socket out of step: drop them all. (A value read
            # out of step would fail to open anyway: it is sealed to its own key.)
            self.report_error("*", f"{what}: {type(exc).__name__}: {exc}")
            with contextlib.suppress(Exception):
                self._client.disconnect_all()
            return default

    def get_multi(self, keys: Sequence[str], route: str) -> dict[str, Any]:
        chosen = self._server_for(route)
        if chosen is None:
            return {}
        return self._connections[chosen[0]].get_multi(keys)

    def set(self, key: str, value: bytes, expire: int, route: str) -> bool:
        expiry = memcached_expiry(expire)
        return bool(self._guard("set", route, False,
                                lambda client, at: client.set((at, key), value, expiry)))

    def add(self, key: str, value: bytes, expire: int, route: str) -> bool:
        expiry = memcached_expiry(expire)
        return bool(self._guard("add", route, False,
                                lambda client, at: client.add((at, key), value, expiry)))

    def delete(self, key: str, route: str) -> bool:
        return bool(self._guard("delete", route, False,
                                lambda client, at: client.delete((at, key))))

    def incr(self, key: str, delta: int, route: str) -> int | None:
        def call(client: Any, at: int) -> Any:
            if delta >= 0:
                return client.incr((at, key), delta)
            return client.decr((at, key), -delta)

        value = self._guard("incr", route, None, call)
        return int(value) if value is not None else None

    def touch(self, key: str, expire: int, route: str) -> bool:
        expiry = memcached_expiry(expire)
        return bool(self._guard("touch", route, False,
                                lambda client, at: client.touch((at, key), expiry)))

    def set_everywhere(self, key: str, value: bytes) -> list[str]:
        if self.settings.proxy:
            return _set_through_proxy(self.settings, key, lambda: self.set(key, value, 0, key))
        failed = []
        for server in self.settings.servers:
            single = _make_python_memcached_client(
                BackendSettings(servers=(server,), socket_timeout=self.settings.socket_timeout,
                                dead_retry=0),
                self.report_error,
            )
            try:
                if not single.set(key, value, 0):
                    failed.append(str(server))
            except Exception:
                failed.append(str(server))
            finally:
                single.disconnect_all()
        return failed

    def probe(self) -> list[ServerReport]:
        if self.settings.proxy:
            return [_probe_proxy(self._connections[i]) for i in range(self._count)]
        reports = []
        for server in self.settings.servers:
            errors: list[str] = []
            single = _make_python_memcached_client(
                BackendSettings(servers=(server,), socket_timeout=self.settings.socket_timeout,
                                dead_retry=0),
                lambda _s, message, errors=errors: errors.append(message),
            )
            try:
                stats = single.get_stats()
            except Exception as exc:
                errors.append(str(exc))
                stats = []
            finally:
                single.disconnect_all()
            if stats:
                values = dict(stats[0][1])
                reports.append(ServerReport(str(server), True, values.get("version", ""),
                                            stats=values))
            else:
                error = _clean_error(errors[-1] if errors else "no answer")
                reports.append(ServerReport(str(server), False, error=error))
        return reports

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._client.disconnect_all()
        for connection in self._connections:
            connection.close()


def _set_through_proxy(settings: BackendSettings, key: str, store: Callable[[], bool]
                       ) -> list[str]:
    """A write "everywhere" behind a proxy: one ``set`` through it, which twemproxy sends to
    the key's backend, the only one ever asked for that key. ``store`` is the backend's own
    routed ``set`` (a proxy marked dead is skipped for the next). [] when it was stored,
    else every proxy: the write did not happen."""
    if store():
        return []
    return [f"{server} (or the backend behind it)" for server in settings.servers]


def _probe_proxy(connection: MemcachedConnection) -> ServerReport:
    """``version`` through a proxy: twemproxy forwards it to a backend and drops the
    connection on ``stats``, so there is nothing more to ask it here."""
    name = str(connection.address)
    try:
        version = connection.version()
    except Exception as exc:
        return ServerReport(name, False, error=f"{type(exc).__name__}: {exc}")
    return ServerReport(name, True, version)


def _connections(settings: BackendSettings, report_error: ErrorReporter,
                 tls_context: ssl.SSLContext | None) -> list[MemcachedConnection]:
    """The hit path's connections, one per server, in the order of ``settings.servers``."""
    return [
        MemcachedConnection(server, connect_timeout=settings.connect_timeout,
                            socket_timeout=settings.socket_timeout,
                            dead_retry=settings.dead_retry, report_error=report_error,
                            tls_context=tls_context, proxied=bool(settings.proxy))
        for server in settings.servers
    ]


def _route_hash(route: str) -> int:
    return zlib.crc32(route.encode("ascii"))


PYTHON_MEMCACHED_TRIES = 10
"""How many servers python-memcached tries for one key (its ``Client._SERVER_RETRIES``)."""


def _cmemcache_hash(data: bytes) -> int:
    """python-memcached's default server hash (``memcache.cmemcache_hash``), which its
    failover re-hashes with: bits 16-30 of the CRC-32."""
    return ((zlib.crc32(data) & 0xFFFFFFFF) >> 16) & 0x7FFF


def _python_memcached_order(where: int, count: int) -> Iterable[int]:
    """The servers python-memcached tries, in order, for a key whose server hash is
    ``where``: ``where % count``, then ``hash(str(where) + str(i)) % count``, re-hashing
    the last hash each time (its ``_get_server``). Ours to compute, from that public fact,
    so that processes running an older release of this package (which let python-memcached
    choose) fail over to the same server as we do."""
    yield where % count
    for attempt in range(PYTHON_MEMCACHED_TRIES - 1):
        where = _cmemcache_hash(f"{where}{attempt}".encode("ascii"))
        yield where % count


def _clean_error(message: str) -> str:
    return message.replace("MemCache: ", "").replace(".  Marking dead.", "").strip()


def _make_python_memcached_client(settings: BackendSettings, report_error: ErrorReporter,
                                  on_dead: Callable[[int], None] | None = None):
    """A python-memcached ``Client`` whose failure messages are reported to us (and, with
    ``on_dead``, whose "Marking dead" of server ``index`` is passed on as ``on_dead(index)``)."""
    import memcache

    names = [str(s) for s in settings.servers]

    class ReportingClient(memcache.Client):
        """python-memcached reports failures only through ``debuglog``; route them to us."""

        def set_servers(self, servers: Iterable[Any]) -> None:
            super().set_servers(servers)
            for index, host in enumerate(self.servers):
                host.debug = 1
                host.debuglog = lambda message, index=index: _report_host(index, message)

        def debuglog(self, message: str) -> None:
            report_error("*", message)

    def _report_host(index: int, message: str) -> None:
        if "NOT_STORED" in message:
            return  # a lost add race (a held lock): an answer, not a fault
        if on_dead is not None and "Marking dead" in message:
            on_dead(index)
        report_error(names[index], message)

    return ReportingClient(
        names,
        debug=1,
        check_keys=False,  # our keys are made valid by construction; checking costs µs
        socket_timeout=settings.socket_timeout,
        dead_retry=settings.dead_retry,
        unpickler=_RefusePickle,
        decompressor=_no_decompression,
    )


# --------------------------------------------------------------------------------------------
# pymemcache


class ConsistentHashRing:
    """Maps a key to an ordered preference of servers, computed once per server set.

    A key's position is the CRC-32 of the key (C speed, and our keys are HMAC digests, so
    uniform already); then one bisect. When a server is dead its keys move to the next live
    server on the ring; every other key stays put.
    """

    POINTS_PER_SERVER = 100

    def __init__(self, count: int) -> None:
        points = []
        for index in range(count):
            for replica in range(self.POINTS_PER_SERVER):
                digest = hashlib.blake2b(b"%d-%d" % (index, replica), digest_size=4).digest()
                points.append((int.from_bytes(digest, "big"), index))
        points.sort()
        self._positions = [p for p, _ in points]
        self._owners = [i for _, i in points]
        self.count = count

    @staticmethod
    def position(key: str) -> int:
        return zlib.crc32(key.encode("ascii"))

    def first(self, key: str) -> int:
        """The server index ``key`` prefers (the first of :meth:`owners`)."""
        if self.count == 1:
            return 0
        at = bisect.bisect(self._positions, self.position(key))
        return self._owners[at if at < len(self._owners) else 0]

    def owners(self, key: str) -> Iterable[int]:
        """Server indexes in order of preference for ``key``."""
        if self.count == 1:
            yield 0
            return
        start = bisect.bisect(self._positions, self.position(key))
        seen: set[int] = set()
        n = len(self._owners)
        for offset in range(n):
            owner = self._owners[(start + offset) % n]
            if owner not in seen:
                seen.add(owner)
                yield owner
                if len(seen) == self.count:
                    return


class PymemcacheBackend(CacheBackend):
    """pymemcache with our own server selection and one plain ``Client`` per server and
    thread (like python-memcached's model): no pool to exhaust, no pool to pay for."""

    def __init__(self, settings: BackendSettings, report_error: ErrorReporter) -> None:
        super().__init__(settings, report_error)
        from pymemcache.client.base import Client
        from pymemcache.exceptions import (
            MemcacheServerError,
            MemcacheUnexpectedCloseError,
            MemcacheUnknownError,
        )

        # Behind a proxy a SERVER_ERROR is the answer for one backend's keys (twemproxy's
        # "Connection refused" for a dead one): the proxy itself is fine for other users.
        self._server_faults = (
            (OSError, MemcacheUnexpectedCloseError, MemcacheUnknownError) if settings.proxy
            else (OSError, MemcacheUnexpectedCloseError, MemcacheServerError,
                  MemcacheUnknownError))
        self._stale_connection = (MemcacheUnexpectedCloseError, *STALE_CONNECTION)
        tls_context = _tls_context(settings) if settings.tls else None
        self._connections = _connections(settings, report_error, tls_context)
        self._make_clients = lambda: [
            Client(
                (s.unix_path if s.unix_path is not None else (s.host, s.port)),
                connect_timeout=settings.connect_timeout,
                timeout=settings.socket_timeout,
                no_delay=True,
                default_noreply=False,
                tls_context=tls_context,
            )
            for s in settings.servers
        ]
        self._local = threading.local()
        self._every_client: weakref.WeakSet = weakref.WeakSet()  # for close()
        self._names = [str(s) for s in settings.servers]
        self._ring = ConsistentHashRing(len(self._names))
        self._lock = threading.Lock()
        _EVERY_PYMEMCACHE_BACKEND.add(self)

    @property
    def _clients(self) -> list[Any]:
        """This thread's clients (made on first use; a thread's end closes them)."""
        clients = getattr(self._local, "clients", None)
        if clients is None:
            clients = self._local.clients = self._make_clients()
            with self._lock:
                self._every_client.update(clients)
        return clients

    def _server_for(self, key: str) -> int | None:
        """The first server on the ring for ``key`` that is not marked dead (the marks are
        our connections': shared by the hit path's ``get`` and the library's calls)."""
        connections = self._connections
        first = self._ring.first(key)  # the usual case, without the generator
        if connections[first].alive:
            return first
        for index in self._ring.owners(key):
            if connections[index].alive:
                return index
        return None

    def _failed(self, index: int, what: str, exc: BaseException) -> None:
        # Only a server that failed us is skipped for dead_retry; our own limits (a full
        # connection pool, a refused value) say nothing about the server.
        if isinstance(exc, self._server_faults):
            self._connections[index].mark_dead()
        self.report_error(self._names[index], f"{what}: {type(exc).__name__}: {exc}")

    def _run(self, route: str, what: str, default: Any, call: Callable[[Any], Any]) -> Any:
        index = self._server_for(route)
        if index is None:
            return default
        try:
            return self._call(self._clients[index], call)
        except Exception as exc:
            self._failed(index, what, exc)
            return default

    def _call(self, client: Any, call: Callable[[Any], Any]) -> Any:
        """``call(client)``, once more on a fresh connection if the reused one turned out to
        be closed (memcached restarted since this thread last used it). Without this, each
        thread's stale socket would mark the server dead again, one thread after another."""
        try:
            return call(client)
        except self._stale_connection:
            client.close()
            return call(client)

    def get_multi(self, keys: Sequence[str], route: str) -> dict[str, Any]:
        index = self._server_for(route)
        if index is None:
            return {}
        return self._connections[index].get_multi(keys)

    def set(self, key: str, value: bytes, expire: int, route: str) -> bool:
        expiry = memcached_expiry(expire)
        return bool(self._run(route, "set", False,
                              lambda c: c.set(key, value, expiry, noreply=False)))

    def add(self, key: str, value: bytes, expire: int, route: str) -> bool:
        expiry = memcached_expiry(expire)
        return bool(self._run(route, "add", False,
                              lambda c: c.add(key, value, expiry, noreply=False)))

    def delete(self, key: str, route: str) -> bool:
        return bool(self._run(route, "delete", False, lambda c: c.delete(key, noreply=False)))

    def incr(self, key: str, delta: int, route: str) -> int | None:
        def call(client: Any) -> Any:
            if delta >= 0:
                return client.incr(key, delta, noreply=False)
            return client.decr(key, -delta, noreply=False)

        value = self._run(route, "incr", None, call)
        return int(value) if value is not None else None

    def touch(self, key: str, expire: int, route: str) -> bool:
        expiry = memcached_expiry(expire)
        return bool(self._run(route, "touch", False,
                              lambda c: c.touch(key, expiry, noreply=False)))

    def set_everywhere(self, key: str, value: bytes) -> list[str]:
        if self.settings.proxy:
            return _set_through_proxy(self.settings, key, lambda: self.set(key, value, 0, key))
        failed = []
        for index, client in enumerate(self._clients):
            try:
                if not self._call(client, lambda c: c.set(key, value, 0, noreply=False)):
                    failed.append(self._names[index])
            except Exception as exc:
                self._failed(index, "set", exc)
                failed.append(self._names[index])
        return failed

    def probe(self) -> list[ServerReport]:
        if self.settings.proxy:
            return [_probe_proxy(connection) for connection in self._connections]
        reports = []
        for name, client in zip(self._names, self._clients, strict=True):
            try:
                stats = {_text(k): _text(v) for k, v in client.stats().items()}
                reports.append(ServerReport(name, True, stats.get("version", ""), stats=stats))
            except Exception as exc:
                reports.append(ServerReport(name, False, error=f"{type(exc).__name__}: {exc}"))
        return reports

    def close(self) -> None:
        with self._lock:
            clients = list(self._every_client)
        for client in clients:
            with contextlib.suppress(Exception):
                client.close()
        for connection in self._connections:
            connection.close()


_EVERY_PYMEMCACHE_BACKEND: weakref.WeakSet[PymemcacheBackend] = weakref.WeakSet()


def _forget_pymemcache_clients_after_fork() -> None:
    """A forked child must not talk on its parent's pymemcache sockets (the forking
    thread's clients): it makes clients of its own. The parent's sockets stay open; the
    child's copies are dropped, not closed by a call of ours."""
    for backend in list(_EVERY_PYMEMCACHE_BACKEND):
        backend._local = threading.local()
        backend._every_client = weakref.WeakSet()
        backend._lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pymemcache_clients_after_fork)


def _text(value: Any) -> str:
    return value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)


def _tls_context(settings: BackendSettings) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=settings.tls_ca_file)
    if not settings.tls_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if settings.tls_cert_file:
        context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
    return context


BACKENDS: dict[str, type[CacheBackend]] = {
    "python-memcached": PythonMemcachedBackend,
    "pymemcache": PymemcacheBackend,
}
