"""Our own connection to one memcached server, for the hit path's one ``get``.

Every cache hit is a single ``get`` of a few keys on the server that owns the user. The
client libraries' general readers cost about as much again as the round trip itself
(``make bench``: the breakdown of our hit, the plugin's ``get_multi`` against a raw-socket
``get`` of the same keys), so we read that reply ourselves (:func:`fetch_values`).

We used to read it on the libraries' own sockets, taken out of their private state
(python-memcached's ``_get_server``, ``_Host.socket``, ``buffer``, ``mark_dead``;
pymemcache's ``_connect()`` and ``Client.sock``): any minor release of either library could
break every hit. So the hit path's connection is ours outright, with everything a
connection needs: its own connect and socket timeouts, TLS with the same ``ssl`` context,
a dead mark for ``dead_retry`` seconds after the server failed us, one reconnect when a
reused socket turns out to have been closed (memcached restarted), and its own tests. The
libraries keep doing everything else (stores, locks, invalidation, stats) through their
public API. The price: each thread holds two sockets per server instead of one.

:class:`MemcachedConnection` keeps one socket per thread (a ``threading.local``: waitress
and every threaded server call us from many threads, and a socket cannot be shared
mid-reply) and one dead mark shared by all threads (a dead server costs one timeout per
process, not one per thread). Nothing on it raises: a failure is reported, and is a miss.
"""

from __future__ import annotations

import os
import select
import socket
import ssl
import struct
import sys
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .memos import remember

if TYPE_CHECKING:
    from .backends import ServerAddress

ErrorReporter = Callable[[str, str], None]
"""``report(server, message)``: called on every cache error; must not raise."""


# --------------------------------------------------------------------------------------------
# The hit path's one read: a text-protocol ``get`` of a few keys on a connected socket


class ProtocolError(OSError):
    """memcached answered what no ``get`` answers: the connection is out of step (or it is
    not memcached). An OSError, so it counts as the server's fault."""


class ServerError(ProtocolError):
    """A ``SERVER_ERROR`` reply. From memcached, the server's fault; from a proxy
    (twemproxy), the fault of the one backend that holds the keys asked for."""


_RECV_BYTES = 65536
MAX_VALUE_BYTES = 1 << 20
"""The largest value a reply may announce: memcached's default item size limit, and
hundreds of times our largest sealed entry. A larger announcement is not memcached's."""
MAX_REPLIES = 1024
"""Replies remembered per server (see :func:`fetch_values`): at most about 9 MB (each
reply is kept with its parsed values, twice its bytes: 2048 replies of 4 KB measured
17 MiB), in practice a few hundred bytes each (two tokens and an entry)."""
MAX_REMEMBERED_REPLY_BYTES = 4096
STALE_CONNECTION = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)
"""What a reused socket raises when memcached closed it since its last use (a restart)."""


def fetch_values(sock: Any, keys: Sequence[str], timeout: float | None = None,
                 replies: dict[tuple[bytes, bytes], dict[str, bytes]] | None = None
                 ) -> dict[str, bytes]:
    """``get k1 k2 ...`` on ``sock``; the values found, by key.

    ``timeout`` bounds the whole read, not each ``recv``: a server that trickles a reply
    a byte at a time cannot hold the caller longer than that (plus one ``recv``'s wait).
    An announced value over :data:`MAX_VALUE_BYTES` is a :class:`ProtocolError` at once.

    Every cache hit is one of these, so it is parsed here in a few steps (one ``recv`` for
    a usual reply) rather than by the client library's general reader, which costs about as
    much again as the round trip (``make bench``). Values are located by their announced
    length, never by searching for ``END``. Raises ConnectionResetError if the server closed
    the connection, :class:`ProtocolError` on anything unexpected, ValueError on a
    CLIENT_ERROR (a key memcached refused). The caller must drop the connection on any
    error: a half-read reply would be read as the answer to the next command.

    ``replies``: a memo of replies read whole in one ``recv``, by request and reply bytes.
    A hot user's entry stays the same bytes for its whole life, so the same request gets
    the same reply again and again; parsing it costs more than all the rest of a hit's
    Python but the HMAC. A reply equal byte for byte to one parsed before parses to the
    same values (a copy of them is returned); anything else is parsed. The memo holds
    sealed entries and tokens, as memcached does, and is bounded (:data:`MAX_REPLIES`
    replies of at most :data:`MAX_REMEMBERED_REPLY_BYTES`, emptied when full).
    """
    command = ("get " + " ".join(keys) + "\r\n").encode("ascii")
    try:
        sock.sendall(command)
    except BlockingIOError:  # the kernel's send timeout (SO_SNDTIMEO) ran out
        raise TimeoutError("memcached took no request within socket_timeout") from None
    deadline = None if timeout is None else time.monotonic() + timeout
    buf = _recv_more(sock, b"", None)
    if replies is not None:
        remembered = replies.get((command, buf))
        if remembered is not None:
            return dict(remembered)
    first = buf
    values: dict[str, bytes] = {}
    pos = 0
    while True:
        eol = buf.find(b"\r\n", pos)
        while eol < 0:
            if len(buf) - pos > 2048:  # no reply line of memcached's is this long
                raise ProtocolError("reply line too long")
            buf = _recv_more(sock, buf, deadline)
            eol = buf.find(b"\r\n", pos)
        line = buf[pos:eol]
        if line == b"END":
            if eol + 2 != len(buf):
                raise ProtocolError("data after END")
            if replies is not None and buf is first and len(buf) <= MAX_REMEMBERED_REPLY_BYTES:
                remember(replies, (command, buf), dict(values), MAX_REPLIES)
            return values
        parts = line.split(b" ")
        if parts[0] != b"VALUE" or len(parts) not in (4, 5) or not parts[3].isdigit():
            if line.startswith(b"CLIENT_ERROR"):
                raise ValueError(line[:100].decode("ascii", "replace"))
            if line.startswith(b"SERVER_ERROR"):
                raise ServerError(line[:100].decode("ascii", "replace"))
            raise ProtocolError(line[:100].decode("ascii", "replace"))
        size = int(parts[3])
        if size > MAX_VALUE_BYTES:
            raise ProtocolError(f"a value of {size} bytes announced")
        start = eol + 2
        end = start + size
        while len(buf) < end + 2:
            buf = _recv_more(sock, buf, deadline)
        if buf[end : end + 2] != b"\r\n":
            raise ProtocolError("value longer than announced")
        key = parts[1].decode("ascii", "replace")
        if key not in keys:  # the reply to some other command: out of step
            raise ProtocolError(f"value for a key not asked for: {key[:60]!r}")
        values[key] = buf[start:end]
        pos = end + 2


def _recv_more(sock: Any, buf: bytes, deadline: float | None) -> bytes:
    """One more ``recv``; past ``deadline`` (monotonic), a TimeoutError instead. The first
    ``recv`` of a reply, the only one of a usual hit, is not checked: the socket's own
    timeout bounds it."""
    if deadline is not None and time.monotonic() >= deadline:
        raise TimeoutError("memcached reply not complete within socket_timeout")
    try:
        chunk = sock.recv(_RECV_BYTES)
    except BlockingIOError:  # the kernel's receive timeout (SO_RCVTIMEO) ran out
        raise TimeoutError("memcached did not answer within socket_timeout") from None
    if not chunk:
        raise ConnectionResetError("memcached closed the connection")
    return buf + chunk


# --------------------------------------------------------------------------------------------
# The connection


class MemcachedConnection:
    """The hit path's connection to one memcached server: a socket per thread, made on the
    thread's first ``get``; a dead mark shared by all threads.

    ``connect_timeout`` bounds the TCP connect and, separately, the whole TLS handshake;
    ``socket_timeout`` bounds the whole reply (:func:`fetch_values`). A server that failed
    us (refused, reset twice, timed out, answered garbage) is skipped for ``dead_retry``
    seconds: :meth:`get_multi` answers nothing at once meanwhile. TLS is done for TCP
    servers when ``tls_context`` is given (as pymemcache does: never on a unix socket), with
    the server's host name checked by the context's own rules.

    :attr:`incidents` counts the times the server failed us (a dead mark) or closed a socket
    of ours (a restart). Every other socket to it opened before, in any thread and the
    library's too, may be dead: a backend whose library does not reconnect by itself
    (python-memcached) drops a thread's library sockets before its next call when the count
    has changed since that thread last looked.

    ``proxied``: the address is a proxy (twemproxy) in front of many backends. A
    ``SERVER_ERROR`` then speaks for the backend of the keys asked for (the proxy may close
    the connection after it): the socket is dropped, the get is a miss, and the proxy is
    not marked dead, since every other user's backend is still reached through it.
    """

    def __init__(
        self,
        address: ServerAddress,
        *,
        connect_timeout: float,
        socket_timeout: float,
        dead_retry: float,
        report_error: ErrorReporter,
        tls_context: ssl.SSLContext | None = None,
        proxied: bool = False,
    ) -> None:
        self.address = address
        self.proxied = proxied
        self.name = str(address)
        self.connect_timeout = connect_timeout
        self.socket_timeout = socket_timeout
        self.dead_retry = dead_retry
        self.report_error = report_error
        self.tls_context = tls_context if address.unix_path is None else None
        self.dead_until = 0.0
        """``time.monotonic()`` before which the server is skipped (0: never failed)."""
        self.incidents = 0
        """Dead marks and sockets found closed by the server, so far (see the class doc)."""
        self._local = threading.local()
        self._sockets: weakref.WeakSet[socket.socket] = weakref.WeakSet()  # for close()
        self._lock = threading.Lock()
        self._replies: dict[tuple[bytes, bytes], dict[str, bytes]] = {}  # fetch_values's
        _EVERY_CONNECTION.add(self)

    def __repr__(self) -> str:
        return f"<MemcachedConnection {self.name}{'' if self.alive else ' (dead)'}>"

    @property
    def alive(self) -> bool:
        """False for ``dead_retry`` seconds after the server failed us."""
        return self.dead_until <= time.monotonic()

    def mark_dead(self) -> None:
        """Skip this server for ``dead_retry`` seconds, in every thread (the libraries'
        failures are marked here too, so that the hit path and the stores agree)."""
        self.dead_until = time.monotonic() + self.dead_retry
        self.incidents += 1

    def get_multi(self, keys: Sequence[str]) -> dict[str, bytes]:
        """The values of ``keys`` found on this server (one round trip); {} if it is marked
        dead, and on any error (reported; the server is marked dead if it was its fault).
        A reused socket found closed is replaced once, without a mark: a restarted memcached
        is used again at once, instead of being skipped in one thread after another."""
        if self.dead_until > time.monotonic():
            return {}
        local = self._local
        sock = getattr(local, "sock", None)
        reused = sock is not None and sock.fileno() >= 0  # close() may have closed it
        try:
            if not reused:
                sock = local.sock = self._connect()
            try:
                return fetch_values(sock, keys, self.socket_timeout, self._replies)
            except STALE_CONNECTION:
                if not reused:
                    raise
                self._drop(local)
                self.incidents += 1  # the server restarted: other threads' sockets are old too
                sock = local.sock = self._connect()
                return fetch_values(sock, keys, self.socket_timeout, self._replies)
        except ServerError as exc:
            self._drop(local)
            if not self.proxied:
                self.mark_dead()
            self.report_error(self.name, f"get_multi: {exc}")
        except OSError as exc:  # refused, reset, timed out, TLS (a bad certificate too), garbage
            self._drop(local)
            self.mark_dead()
            self.report_error(self.name, f"get_multi: {type(exc).__name__}: {exc}")
        except ValueError as exc:  # CLIENT_ERROR (or a key we could not encode): not the server
            self._drop(local)
            self.report_error(self.name, f"get_multi: {exc}")
        except Exception as exc:  # a fault of ours: the server is not to blame
            self._drop(local)
            self.report_error(self.name, f"get_multi: {type(exc).__name__}: {exc}")
        return {}

    def version(self) -> str:
        """The server's ``version`` answer, on a connection of its own (for ``check``;
        raises on any failure: the caller reports it)."""
        sock = self._connect()
        try:
            try:
                sock.sendall(b"version\r\n")
            except BlockingIOError:
                raise TimeoutError("memcached took no request within socket_timeout") from None
            buf = b""
            deadline = time.monotonic() + self.socket_timeout
            while b"\r\n" not in buf:
                if len(buf) > 2048:
                    raise ProtocolError("reply line too long")
                buf = _recv_more(sock, buf, deadline)
            line = buf.split(b"\r\n", 1)[0].decode("ascii", "replace")
            if not line.startswith("VERSION "):
                raise ProtocolError(line[:100])
            return line[len("VERSION "):]
        finally:
            sock.close()

    def thread_socket(self) -> socket.socket | None:
        """This thread's socket, if it has one (for tests that put it out of step)."""
        return getattr(self._local, "sock", None)

    def close(self) -> None:
        """Close every thread's socket; each thread connects again on its next ``get``."""
        with self._lock:
            sockets = list(self._sockets)
            self._sockets.clear()
        for sock in sockets:
            sock.close()

    def _drop(self, local: threading.local) -> None:
        """Close this thread's socket: after an error it may hold half a reply."""
        sock = getattr(local, "sock", None)
        local.sock = None
        if sock is not None:
            sock.close()

    def _connect(self) -> socket.socket:
        address = self.address
        if address.unix_path is not None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(self.connect_timeout)
                sock.connect(address.unix_path)
            except BaseException:
                sock.close()
                raise
        else:
            deadline = time.monotonic() + self.connect_timeout
            sock = socket.create_connection((address.host, address.port),
                                            timeout=self.connect_timeout)
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if self.tls_context is not None:
                    sock = self._handshake(sock, deadline)
            except BaseException:
                sock.close()
                raise
        if (isinstance(sock, ssl.SSLSocket) or not _KERNEL_TIMEOUTS
                or threading.current_thread() is threading.main_thread()):
            sock.settimeout(self.socket_timeout)
        else:
            _set_kernel_timeouts(sock, self.socket_timeout)
        with self._lock:
            self._sockets.add(sock)
        return sock

    def _handshake(self, sock: socket.socket, deadline: float) -> ssl.SSLSocket:
        """TLS over ``sock``, the whole handshake bounded by ``deadline`` (a blocking
        handshake bounds each read only: a server trickling bytes could stretch it)."""
        assert self.tls_context is not None
        tls = self.tls_context.wrap_socket(sock, server_hostname=self.address.host,
                                           do_handshake_on_connect=False)
        try:
            tls.setblocking(False)
            poller = select.poll()  # not select.select: a busy process has fds over 1024
            while True:
                try:
                    tls.do_handshake()
                    return tls
                except ssl.SSLWantReadError:
                    poller.register(tls, select.POLLIN)
                except ssl.SSLWantWriteError:
                    poller.register(tls, select.POLLOUT)
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not poller.poll(remaining * 1000):
                    raise TimeoutError("TLS handshake not complete within connect_timeout")
                poller.unregister(tls)
        except BaseException:
            tls.close()
            raise


_KERNEL_TIMEOUTS = sys.platform.startswith("linux")
"""Whether a plain socket's timeouts are the kernel's (see :func:`_set_kernel_timeouts`)."""


def _set_kernel_timeouts(sock: socket.socket, timeout: float) -> None:
    """Bound each ``send`` and ``recv`` by the kernel (``SO_SNDTIMEO``, ``SO_RCVTIMEO``)
    instead of by Python, and put the socket in blocking mode.

    A Python socket with a timeout calls ``poll()`` before every ``send`` and ``recv``: a
    hit's round trip is then four system calls instead of two, each of which lets go of
    the GIL and takes it back, which a busy multi-threaded server pays for in CPU (about
    a tenth of a memcached hit's cost over HTTP, ``make bench``). With the kernel's
    timeouts, a ``recv`` that waited ``timeout`` fails with EAGAIN (BlockingIOError): the
    readers above turn it into the TimeoutError a Python timeout raises. Not for TLS: an
    ``ssl`` socket in blocking mode would retry a timed-out read forever.

    Not in the main thread either (a socket belongs to the thread that made it): Python
    retries a ``recv`` or ``send`` that a signal interrupted (PEP 475), and the kernel's
    timeout then starts again from the whole of it, where Python's goes on with what is
    left. The kernel hands a process's signals to its main thread, so a process sent one
    more often than ``socket_timeout`` (a profiler's SIGPROF, a supervisor's SIGCHLD) would
    wait on a hung server there for as long as they came. Worker threads (waitress's, every
    threaded server's), where the hits are, get signals only when one is sent to that
    thread itself (``pthread_kill``), or when the main thread blocks them.
    """
    seconds = int(timeout)
    microseconds = int((timeout - seconds) * 1_000_000)
    if not seconds and not microseconds:
        microseconds = 1  # a zero timeval means "wait for ever"
    timeval = struct.pack("@ll", seconds, microseconds)
    sock.settimeout(None)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)


_EVERY_CONNECTION: weakref.WeakSet[MemcachedConnection] = weakref.WeakSet()


def _forget_sockets_after_fork() -> None:
    """A forked child must not talk on its parent's sockets (two processes reading one
    stream get each other's replies): it connects again. The parent's sockets stay open.
    The incident tells the python-memcached backend that the library's sockets of this
    thread are the parent's too (pymemcache's clients are forgotten in backends.py)."""
    for connection in list(_EVERY_CONNECTION):
        connection._local = threading.local()
        connection._sockets = weakref.WeakSet()
        connection._lock = threading.Lock()
        connection.incidents += 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_sockets_after_fork)
