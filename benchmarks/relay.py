"""A delaying TCP relay: what a data-centre link costs, on loopback.

memcached and slapd live on other hosts in production, a network round trip away. This
kernel has no netem (``tc qdisc ... netem`` is unknown), so the benchmarks and one fault test
put this relay between the app and each server: every chunk is forwarded ``delay`` seconds
after it arrived, in each direction (0.25 ms each way: a round trip of 0.5 ms, a data
centre's). Order is kept, bytes are not changed, and delays overlap as they do on a wire
(a chunk does not wait for the previous one's delay to end, only for its own).

Bounded: at most ``max_connections`` at once (more are refused by closing them), at most
``max_buffered`` chunks in flight per direction (reading pauses beyond it). Threads, not
asyncio: an event loop waits in whole milliseconds (epoll's timeout), four times the delay
to add; ``time.sleep`` waits to the microsecond. Two daemon threads per direction and
connection, started and stopped by the caller::

    with DelayingRelay(("127.0.0.1", memcached.port), delay=0.00025) as relay:
        ... connect to relay.port ...

:meth:`cut` closes every connection and refuses new ones (a partition); :meth:`restore`
lets them through again. The server behind keeps its data, as across a real partition.

The relay accepts on loopback at once, so a new connection's TCP handshake costs no delay
by itself; with ``connect_round_trip=True`` the first chunk a client sends on a connection
waits one more round trip (``2 * delay``), which is what a handshake across the link costs
a client that writes as soon as ``connect`` returns (ldap3's bind on a fresh connection).

Run as a process of its own (the benchmarks do, so that its threads share no GIL with the
process being measured)::

    python -m benchmarks.relay --delay 0.00025 --connect-round-trip 21001=127.0.0.1:11211
"""

from __future__ import annotations

import argparse
import contextlib
import queue
import signal
import socket
import sys
import threading
import time
from typing import Any

from repoze_who_memcached.testing import LOOPBACK, free_port

DATA_CENTRE_DELAY = 0.00025  # seconds each way


class DelayingRelay:
    def __init__(self, target: tuple[str, int], delay: float = DATA_CENTRE_DELAY, *,
                 host: str = LOOPBACK, port: int | None = None, max_connections: int = 256,
                 max_buffered: int = 256, connect_round_trip: bool = False) -> None:
        self.target = target
        self.delay = delay
        self.connect_round_trip = connect_round_trip
        self.host = host
        self.port = port or free_port(host)
        self.max_connections = max_connections
        self.max_buffered = max_buffered
        self.refused = 0
        self._cut = False
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._pairs = 0
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def connections(self) -> int:
        return self._pairs

    # ---------------------------------------------------------------- life cycle

    def start(self) -> DelayingRelay:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, self.port))
        listener.listen(128)
        listener.settimeout(0.1)  # so that stop() is seen
        self._listener = listener
        self._acceptor = threading.Thread(target=self._accept, name=f"relay-{self.port}",
                                          daemon=True)
        self._acceptor.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._acceptor is not None:
            self._acceptor.join(5)
        if self._listener is not None:
            self._listener.close()
        self._close_all()

    def __enter__(self) -> DelayingRelay:
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    def cut(self) -> None:
        """A partition: close every connection, refuse new ones (until :meth:`restore`)."""
        self._cut = True
        self._close_all()

    def restore(self) -> None:
        self._cut = False

    def _close_all(self) -> None:
        with self._lock:
            sockets = list(self._sockets)
            self._sockets.clear()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    # ---------------------------------------------------------------- the relay

    def _accept(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self._cut or self._pairs >= self.max_connections:
                self.refused += 1
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            for sock in (client, upstream):
                sock.settimeout(None)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._sockets.update((client, upstream))
                self._pairs += 1
            done = threading.Barrier(2, action=lambda c=client, u=upstream: self._end(c, u))
            handshake = 2 * self.delay if self.connect_round_trip else 0.0
            self._direction(client, upstream, done, first_extra=handshake)
            self._direction(upstream, client, done)

    def _end(self, client: socket.socket, upstream: socket.socket) -> None:
        with self._lock:
            self._pairs -= 1
            self._sockets.discard(client)
            self._sockets.discard(upstream)
        client.close()
        upstream.close()

    def _direction(self, source: socket.socket, sink: socket.socket,
                   done: threading.Barrier, first_extra: float = 0.0) -> None:
        """One way: a reader stamps each chunk with its due time, a writer sends it then
        (the first chunk ``first_extra`` seconds later still: a handshake's round trip)."""
        chunks: queue.Queue[tuple[float, bytes] | None] = queue.Queue(self.max_buffered)

        def read() -> None:
            extra = first_extra
            try:
                while chunk := source.recv(65536):
                    chunks.put((time.monotonic() + self.delay + extra, chunk))
                    extra = 0.0
            except OSError:
                pass
            finally:
                chunks.put(None)

        def write() -> None:
            try:
                while (item := chunks.get()) is not None:
                    due, chunk = item
                    wait = due - time.monotonic()
                    if wait > 0:
                        time.sleep(wait)
                    sink.sendall(chunk)
                with contextlib.suppress(OSError):
                    sink.shutdown(socket.SHUT_WR)
            except OSError:
                with contextlib.suppress(OSError):
                    source.shutdown(socket.SHUT_RDWR)
                while chunks.get() is not None:  # let the reader finish
                    pass
            finally:
                with contextlib.suppress(threading.BrokenBarrierError):
                    done.wait(30)

        for target in (read, write):
            threading.Thread(target=target, name=f"relay-{self.port}-io", daemon=True).start()


# ------------------------------------------------------------------ as a process


def _parse_route(text: str) -> tuple[int, tuple[str, int]]:
    """``LISTEN_PORT=HOST:PORT``."""
    listen, _, target = text.partition("=")
    host, _, port = target.rpartition(":")
    if not listen.isdigit() or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected LISTEN_PORT=HOST:PORT, got {text!r}")
    return int(listen), (host, int(port))


def main(argv: list[str] | None = None) -> int:
    """Relay every route until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.relay")
    parser.add_argument("--delay", type=float, default=DATA_CENTRE_DELAY,
                        help="seconds each way (default 0.00025)")
    parser.add_argument("--connect-round-trip", action="store_true",
                        help="delay a connection's first chunk by one more round trip")
    parser.add_argument("routes", nargs="+", type=_parse_route,
                        metavar="LISTEN_PORT=HOST:PORT")
    args = parser.parse_args(argv)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    with contextlib.ExitStack() as relays:
        for port, target in args.routes:
            relays.enter_context(DelayingRelay(target, args.delay, port=port,
                                               connect_round_trip=args.connect_round_trip))
        while not stop.wait(0.5):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
