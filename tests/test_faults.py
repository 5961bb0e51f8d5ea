"""Fault injection against the served stack under load (issue 7, point 6).

The stack is the one ``development.ini`` serves: our filter with the LDAP authenticator and
metadata provider wrapped by the memcached cache, in front of the demo app, on waitress
(8 threads), against a real slapd and real memcached servers with small timeouts. Six client
threads with keep-alive connections send a mix of good credentials (several users) and bad
ones (wrong passwords, one user's login with another's password, an ambiguous login, an empty
password) while a fault is injected after a warm-up, held, then lifted:

* memcached killed, then restarted (empty) on the same port;
* memcached hung (SIGSTOP: connections are accepted, nothing answers), then resumed;
* one of three memcached servers lost, then back (empty);
* slapd stopped, then started again;
* slapd hung (SIGSTOP: connects succeed, nothing answers), then resumed: with the stack's
  ttl, and with entries expiring during the hang (served stale);
* the first two again with the near cache on (``local_ttl``, both clients);
* not a fault but the reason operators invalidate: a user's password changes in LDAP, then
  the user is invalidated with the CLI (with and without the near cache).

For each, and for both memcached clients, whatever the timing:

* every response is a 200 or a 401: never a 500, never a dropped connection;
* every 200 is for the user whose credentials were sent (userid, REMOTE_USER, metadata);
* every bad credential gets a 401;
* good credentials get a 200 whenever the answer does not need the failed server (a memcached
  fault costs cache misses only; an LDAP fault costs the logins that were not cached), and
  always once the fault is lifted and its timeout (``dead_retry`` + ``socket_timeout``, or
  the LDAP connect timeout + ``retry_after``) has passed;
* no request waits much longer than the timeouts allow;
* the cache works again afterwards (hits come back), and so do logins that need LDAP.

With the near cache on, also: nothing is served from memory (not even a refusal) once the
fault has lasted ``local_check_interval`` + ``socket_timeout`` (+ a margin), since the
invalidation epoch can't be read; and local hits come back after recovery. After a password
change and an invalidation, the old password is refused and the new one accepted for every
request sent after the invalidation returned (``local_check_interval`` later with the near
cache).

Each scenario takes a few seconds; every loop is bounded by count and time, every thread is
a daemon, and every server is stopped by its fixture.

Product bugs these scenarios found are fixed: a pymemcache thread's stale socket marking a
restarted server dead again and again, and a lock whose release failed delaying later
logins (the tests under "regressions" at the end pin them); with slapd hung, uncached
logins that outnumber waitress's threads starving cached ones (fixed by the LDAP plugin's
circuit breaker, ``retry_after``: test_slapd_hung_uncached_logins_do_not_starve_cached_ones).
"""

from __future__ import annotations

import base64
import http.client
import json
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ldap3
import pytest
from conftest import SECRET
from paste.deploy import loadapp
from waitress import wasyncore
from waitress.server import create_server

from repoze_who_memcached import cli
from repoze_who_memcached.testing import MemcachedServer, SlapdServer, free_port

pytestmark = pytest.mark.slow  # real servers, real time: ~85 s for the file

CLIENTS = ["python-memcached", "pymemcache"]

# The stack's timeouts: small, so that each scenario takes seconds.
SOCKET_TIMEOUT = 0.2  # memcached, per call
DEAD_RETRY = 1.0  # memcached: a failed server is skipped this long
LDAP_CONNECT_TIMEOUT = 1  # whole seconds (ldap3 wants ints)
LDAP_TIMEOUT = 2
LDAP_RETRY_AFTER = 0.5  # after a failure, LDAP is not asked (calls fail at once) this long

# After a memcached fault is lifted, every waitress thread (python-memcached's client is
# per thread) has retried the server by then.
MEMCACHED_GRACE = DEAD_RETRY + SOCKET_TIMEOUT + 0.3
# After slapd is back, a request sent this much later must log in (the breaker lets a
# probe through within retry_after; a refused connect fails at once).
LDAP_GRACE = LDAP_CONNECT_TIMEOUT + LDAP_RETRY_AFTER
# A dead memcached server is refused at once: its users fail over to a survivor by then.
FAILOVER_GRACE = SOCKET_TIMEOUT + 0.3
# No request may take longer: a memcached call is bounded by socket_timeout (the stack
# makes a handful per request), and a stopped slapd refuses connections at once. Generous
# for a noisy 2-core machine; a request that waits out a lock or an LDAP timeout exceeds it
# (the hung-slapd scenarios, where requests do wait for LDAP, derive their own bound).
LATENCY_BOUND = 1.5

CLIENT_THREADS = 6
WAITRESS_THREADS = 8
WARM_UP = 0.6
HOLD = 1.2
AFTER = MEMCACHED_GRACE + 0.8
MAX_REQUESTS_PER_THREAD = 5000
CLIENT_TIMEOUT = 15.0  # http.client: far above any legitimate latency

# The near cache, where a scenario turns it on: answers kept in memory for a minute (longer
# than any scenario), the invalidation epoch read at most every LOCAL_CHECK_INTERVAL.
LOCAL_CHECK_INTERVAL = 0.3
NEAR_CACHE = {"local_ttl": 60, "local_check_interval": LOCAL_CHECK_INTERVAL}
# Once memcached fails, the next epoch read (due within LOCAL_CHECK_INTERVAL) fails within
# SOCKET_TIMEOUT and empties the near cache: nothing is served from memory for a request sent
# this long after the fault took effect. (Strictly, LOCAL_CHECK_INTERVAL is enough: while a
# read is in progress other threads skip the near cache. The rest is the margin.)
NEAR_FLUSH_BOUND = LOCAL_CHECK_INTERVAL + SOCKET_TIMEOUT + 0.2


# ------------------------------------------------------------------ credentials


@dataclass(frozen=True)
class Cred:
    label: str
    login: str
    password: str
    userid: str | None = None  # the user these credentials must log in as; None: refused
    mail: str | None = None  # an address the user's metadata holds

    @property
    def good(self) -> bool:
        return self.userid is not None

    def header(self) -> str:
        token = base64.b64encode(f"{self.login}:{self.password}".encode()).decode("ascii")
        return f"Basic {token}"


ALICE = Cred("alice", "alice", "wonderland", "alice", "alice@example.org")
BOB = Cred("bob", "bob", "builder", "bob", "bob@example.org")
ZOE = Cred("zoë", "zoë", "pässwörd", "zoë", "zoe@example.org")
CAROL = Cred("carol", "carol", "carol-pw", "carol", "carol@example.org")
GOOD = (ALICE, BOB, ZOE, CAROL)
BAD = (
    Cred("alice, wrong password", "alice", "wonderland!"),
    Cred("alice with bob's password", "alice", "builder"),
    Cred("bob with alice's password", "bob", "wonderland"),
    Cred("zoë, wrong password", "zoë", "passwörd"),
    Cred("carol with zoë's password", "carol", "pässwörd"),
    Cred("twin (two entries match)", "twin", "twin-password"),
    Cred("bob, empty password", "bob", ""),
)
# About 60% good: each thread walks this list from its own offset.
MIX = (ALICE, BAD[0], BOB, BAD[1], ZOE, CAROL, BAD[2], ALICE, BAD[3], BOB, ZOE, BAD[4],
       CAROL, BAD[5], ALICE, BOB, BAD[6], ZOE)


# ------------------------------------------------------------------ the served stack


def stack_ini(slapd: SlapdServer, memcached_urls: str, client: str,
              options: Mapping[str, Any] | None = None) -> str:
    """``development.ini``'s pipeline (and cache options) with this test's servers and
    small timeouts; ``options`` adds (or overrides) cache options."""
    ldap = textwrap.dedent(f"""\
        .url = {slapd.url}
        .base_dn = {slapd.users_base_dn}
        .bind_dn = {slapd.reader_dn}
        .bind_password = {slapd.reader_password}
        .connect_timeout = {LDAP_CONNECT_TIMEOUT}
        .timeout = {LDAP_TIMEOUT}
        .retry_after = {LDAP_RETRY_AFTER}
    """)
    cache = {
        "memcached_urls": memcached_urls,
        "memcached_client": client,
        "socket_timeout": SOCKET_TIMEOUT,
        "dead_retry": DEAD_RETRY,
        "secret": SECRET,
        "stats_log_interval": 0,
        "ttl": 300,
        "negative_ttl": 10,
        "stale_ttl": 3600,
        "lock_timeout": 5,
        **(options or {}),
    }
    return "\n".join([
        "[app:demo]",
        "use = egg:repoze_who_memcached#demo",
        "",
        "[filter:auth]",
        "use = egg:repoze_who_memcached",
        "realm = fault injection",
        "authenticator = egg:repoze_who_memcached#ldap_authenticator",
        *("authenticator" + line for line in ldap.splitlines()),
        "authenticator.userid_attribute = uid",
        "mdprovider = egg:repoze_who_memcached#ldap_metadata",
        *("mdprovider" + line for line in ldap.splitlines()),
        "mdprovider.attributes = mail cn displayName=name",
        f"mdprovider.group_base_dn = {slapd.groups_base_dn}",
        *(f"{name} = {value}" for name, value in cache.items()),
        "",
        "[pipeline:main]",
        "pipeline = auth demo",
        "",
    ])


@dataclass
class Stack:
    port: int
    app: Any
    ini: Path  # what the app was loaded from (the CLI can load it too: ``ini#auth``)

    @property
    def cache(self) -> Any:
        # The middleware lists the cache once per role (authenticator, metadata provider).
        (cache,) = self.app.cache_plugins
        return cache


@contextmanager
def served(tmp_path: Path, slapd: SlapdServer, memcached: Iterable[MemcachedServer],
           client: str, options: Mapping[str, Any] | None = None) -> Iterator[Stack]:
    """Serve the stack on waitress in a daemon thread; shut everything down afterwards.
    ``options``: extra cache options (see :func:`stack_ini`).

    The event loop runs in short rounds so that it can be stopped cleanly (closing the
    server under a running ``select`` makes it raise EBADF).
    """
    ini = tmp_path / "faults.ini"
    urls = " ".join(server.url for server in memcached)
    ini.write_text(stack_ini(slapd, urls, client, options), encoding="utf-8")
    app = loadapp(f"config:{ini}")
    port = free_port()
    channels: dict[int, Any] = {}
    server = create_server(app, map=channels, host="127.0.0.1", port=port,
                           threads=WAITRESS_THREADS)
    stopping = threading.Event()

    def serve() -> None:
        while not stopping.is_set():
            wasyncore.loop(timeout=0.05, map=channels, count=1)

    thread = threading.Thread(target=serve, name="waitress", daemon=True)
    thread.start()
    stack = Stack(port, app, ini)
    try:
        yield stack
    finally:
        stopping.set()
        thread.join(5)
        for channel in list(channels.values()):
            channel.close()
        server.task_dispatcher.shutdown(timeout=5)
        cache = stack.cache
        cache.backend.close()
        for plugin in (cache.authenticator, cache.mdprovider):
            plugin.close()
        assert not thread.is_alive(), "the waitress loop did not stop"


# ------------------------------------------------------------------ the load


@dataclass
class Result:
    thread: int
    cred: Cred
    sent: float
    done: float
    status: int | None = None  # None: no HTTP response (see error)
    userid: Any = None
    remote_user: Any = None
    mail: Any = None
    outcome: dict[str, str] = field(default_factory=dict)  # cache method -> hit/miss/...
    error: str | None = None
    closed: bool = False  # the server closes the connection after this response

    @property
    def latency(self) -> float:
        return self.done - self.sent

    @property
    def auth(self) -> str | None:
        return self.outcome.get("authenticate")


def connect(port: int) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", port, timeout=CLIENT_TIMEOUT)


def send(conn: http.client.HTTPConnection, cred: Cred, thread: int = -1) -> Result:
    """One request; never raises (an error without an HTTP response is recorded)."""
    result = Result(thread, cred, sent=time.monotonic(), done=0.0)
    try:
        conn.request("GET", "/?format=json", headers={"Authorization": cred.header()})
        response = conn.getresponse()
        body = response.read()
        result.status = response.status
        result.closed = response.will_close
        if response.status == 200:
            facts = json.loads(body)
            result.userid = facts.get("userid")
            result.remote_user = facts.get("remote_user")
            result.mail = (facts.get("identity") or {}).get("mail")
            result.outcome = dict((facts.get("cache") or {}).get("cache") or {})
    except (OSError, http.client.HTTPException, ValueError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    result.done = time.monotonic()
    return result


class Load:
    """``threads`` keep-alive clients walking ``mix`` until stopped (bounded)."""

    def __init__(self, port: int, withheld: Iterable[Cred] = (), *,
                 mix: Sequence[Cred] = MIX, threads: int = CLIENT_THREADS,
                 until_accepted: bool = False, pace: float = 0.0) -> None:
        """``until_accepted``: send each credential again until it gets a 200 (then the
        next); ``pace``: at least this long between a thread's requests."""
        self.port = port
        self._mix = tuple(mix)
        self._until_accepted = until_accepted
        self._pace = pace
        self._withheld = set(withheld)
        self._released = threading.Event()
        self._stop = threading.Event()
        self._paused = threading.Event()
        self._lock = threading.Lock()
        self._busy = 0  # requests in flight
        self.results: list[Result] = []
        self.crashes: list[str] = []
        self._threads = [
            threading.Thread(target=self._run, args=(n,), name=f"load-{n}", daemon=True)
            for n in range(threads)
        ]
        self._deadline = 0.0

    def start(self, max_seconds: float) -> None:
        self._deadline = time.monotonic() + max_seconds
        for thread in self._threads:
            thread.start()

    def release(self) -> None:
        """From now on, also send the withheld credentials."""
        self._released.set()

    def pause(self) -> None:
        """Stop sending, and return once no request is in flight."""
        self._paused.set()
        deadline = time.monotonic() + CLIENT_TIMEOUT
        while time.monotonic() < deadline:
            with self._lock:
                if not self._busy:
                    return
            time.sleep(0.005)
        raise AssertionError("requests still in flight after pausing the load")

    def resume(self) -> None:
        self._paused.clear()

    def stop(self) -> list[Result]:
        self._stop.set()
        for thread in self._threads:
            thread.join(CLIENT_TIMEOUT + 5)
        alive = [t.name for t in self._threads if t.is_alive()]
        assert not alive, f"load threads did not finish: {alive}"
        assert not self.crashes, "a load thread crashed:\n" + "\n".join(self.crashes)
        with self._lock:
            return sorted(self.results, key=lambda r: r.sent)

    def _run(self, n: int) -> None:
        try:
            self._loop(n)
        except BaseException as exc:  # record it: a silent thread death would hide requests
            self.crashes.append(f"load-{n}: {type(exc).__name__}: {exc}")

    def _loop(self, n: int) -> None:
        conn: http.client.HTTPConnection | None = None
        position = n * 5
        for _ in range(MAX_REQUESTS_PER_THREAD):
            if self._stop.is_set() or time.monotonic() > self._deadline:
                break
            cred = self._mix[position % len(self._mix)]
            position += 1
            if cred in self._withheld and not self._released.is_set():
                continue
            if not self._begin_request():
                continue
            if conn is None:
                conn = connect(self.port)
            result = send(conn, cred, n)
            if self._until_accepted and result.status != 200:
                position -= 1
            if result.error is not None or result.closed:
                conn.close()
                conn = None
            with self._lock:
                self.results.append(result)
                self._busy -= 1
            if self._pace:
                self._stop.wait(max(0.0, result.sent + self._pace - time.monotonic()))
        if conn is not None:
            conn.close()

    def _begin_request(self) -> bool:
        """Count a request in flight, unless paused (then wait, and say so)."""
        with self._lock:
            self._busy += 1  # before looking at the flag: pause() waits for us
        if not self._paused.is_set():
            return True
        with self._lock:
            self._busy -= 1
        while (self._paused.is_set() and not self._stop.is_set()
               and time.monotonic() < self._deadline):
            time.sleep(0.005)
        return False


# ------------------------------------------------------------------ a scenario


@dataclass
class Timeline:
    t0: float
    fault_begin: float = 0.0  # the injection was asked for
    fault_on: float = 0.0  # ... and has taken effect
    lift_begin: float = 0.0  # the fault is being lifted
    lift_end: float = 0.0  # ... and is gone
    end: float = 0.0

    def at(self, t: float) -> str:
        return f"{t - self.t0:6.3f}s"

    def __str__(self) -> str:
        return (f"timeline: fault injected {self.at(self.fault_begin)}..{self.at(self.fault_on)}, "
                f"lifted {self.at(self.lift_begin)}..{self.at(self.lift_end)}, "
                f"load stopped {self.at(self.end)}")

    def within_fault(self, r: Result, grace: float = 0.0) -> bool:
        """Sent after the fault took effect (plus ``grace``), answered before it was lifted."""
        return r.sent >= self.fault_on + grace and r.done <= self.lift_begin


@dataclass
class Run:
    results: list[Result]
    timeline: Timeline
    counters_at_lift: dict[str, int]
    counters_at_end: dict[str, int]

    def select(self, predicate: Callable[[Result], bool]) -> list[Result]:
        return [r for r in self.results if predicate(r)]

    def describe(self, title: str, rows: list[Result], limit: int = 8) -> str:
        """A failure message: what went wrong, examples, the timeline and phase statistics."""
        t = self.timeline
        lines = [f"{title}: {len(rows)} request(s), for example:"]
        for r in rows[:limit]:
            what = r.error or f"{r.status} userid={r.userid!r} cache={r.outcome or '-'}"
            lines.append(f"  sent {t.at(r.sent)} took {r.latency:.3f}s thread {r.thread} "
                         f"[{r.cred.label}]: {what}")
        lines.append(str(t))
        for phase, rows_in_phase in self.phases().items():
            statuses = Counter(r.status if r.error is None else "error" for r in rows_in_phase)
            outcomes = Counter(r.auth or "-" for r in rows_in_phase if r.status == 200)
            slowest = max((r.latency for r in rows_in_phase), default=0.0)
            lines.append(f"  {phase}: {len(rows_in_phase)} requests, status {dict(statuses)}, "
                         f"auth cache {dict(outcomes)}, slowest {slowest:.3f}s")
        lines.append(f"  counters at lift {self.counters_at_lift}")
        lines.append(f"  counters at end  {self.counters_at_end}")
        return "\n".join(lines)

    def phases(self) -> dict[str, list[Result]]:
        t = self.timeline
        bounds = [("warm-up", t.t0), ("fault", t.fault_begin), ("lifting", t.lift_begin),
                  ("after", t.lift_end)]
        phases: dict[str, list[Result]] = {name: [] for name, _ in bounds}
        for r in self.results:
            name = next((name for name, start in reversed(bounds) if r.sent >= start),
                        "warm-up")  # a request sent before t0 (by a load started earlier)
            phases[name].append(r)
        return phases


def run_scenario(
    stack: Stack,
    inject: Callable[[], None],
    lift: Callable[[], None],
    *,
    hold: float = HOLD,
    after: float = AFTER,
    withheld: Iterable[Cred] = (),
    before_fault: Callable[[], None] | None = None,
    quiet_fault: bool = False,
) -> Run:
    """Load, warm up, inject, hold, lift, keep the load on for ``after`` seconds.

    ``quiet_fault``: the load is paused (no request in flight) from before the injection
    until the fault is lifted, as when a server is restarted while the site is quiet.
    """
    load = Load(stack.port, withheld)
    timeline = Timeline(t0=time.monotonic())
    load.start(max_seconds=WARM_UP + hold + after + 20)
    counters_at_lift: dict[str, int] = {}
    try:
        time.sleep(WARM_UP)
        if quiet_fault:
            load.pause()
        if before_fault is not None:
            before_fault()
        timeline.fault_begin = time.monotonic()
        inject()
        timeline.fault_on = time.monotonic()
        load.release()
        time.sleep(hold)
        timeline.lift_begin = time.monotonic()
        counters_at_lift = stack.cache.counters.snapshot()
        lift()
        timeline.lift_end = time.monotonic()
        load.resume()
        time.sleep(after)
    finally:
        timeline.end = time.monotonic()
        results = load.stop()
    run = Run(results, timeline, counters_at_lift, stack.cache.counters.snapshot())
    warmed = {r.cred for r in run.results if r.sent < timeline.fault_begin and r.status == 200}
    expected = {c for c in GOOD if c not in set(withheld)}
    assert warmed >= expected, run.describe(
        f"warm-up too short: never logged in {sorted(c.label for c in expected - warmed)}",
        run.results,
    )
    return run


def check_invariants(run: Run, grace: float, latency_bound: float = LATENCY_BOUND) -> None:
    """What must hold in every scenario, whatever the timing. ``latency_bound``: the
    scenario's own bound on any request's latency, where requests may wait on a hung LDAP
    (:data:`LATENCY_BOUND` everywhere else)."""
    problems = []

    def expect_none(title: str, rows: list[Result]) -> None:
        if rows:
            problems.append(run.describe(title, rows))

    expect_none("requests without an HTTP response (connection errors)",
                run.select(lambda r: r.error is not None))
    expect_none("responses other than 200 or 401 (a 500 is a fault turned into an error page)",
                run.select(lambda r: r.error is None and r.status not in (200, 401)))
    expect_none("BAD CREDENTIALS ACCEPTED (a wrong password or another user's got a 200)",
                run.select(lambda r: not r.cred.good and r.status == 200))
    expect_none("WRONG USER: a 200 for someone other than the credentials' owner",
                run.select(lambda r: r.cred.good and r.status == 200
                           and (r.userid != r.cred.userid or r.remote_user != r.cred.userid)))
    expect_none("WRONG METADATA: another user's mail in the identity",
                run.select(lambda r: r.status == 200 and r.mail is not None
                           and r.cred.mail not in _as_list(r.mail)))
    expect_none(f"good credentials refused more than {grace:.1f}s after the fault was lifted",
                run.select(lambda r: r.cred.good and r.sent >= run.timeline.lift_end + grace
                           and r.status != 200))
    slow = run.select(lambda r: r.latency > latency_bound)
    expect_none(f"requests slower than {latency_bound}s", slow)
    assert not problems, "\n\n".join(problems)


def check_cache_recovered(run: Run, grace: float, *, near: bool = False) -> None:
    """After the fault (and its grace), every user's login is a cache hit again.

    ``near``: the near cache is on, so a hit is a memcached hit or a ``local_hit``; and the
    near cache must be back too: every user gets local hits again, and they are the rule.
    """
    t = run.timeline
    cached = ("hit", "local_hit") if near else ("hit",)
    late = run.select(lambda r: r.cred.good and r.sent >= t.lift_end + grace and r.status == 200)
    hit_users = {r.cred for r in late if r.auth in cached}
    missing = {r.cred for r in late} - hit_users
    assert late and not missing, run.describe(
        f"no cache hit after recovery for {sorted(c.label for c in missing)}", late
    )
    # Once every user is cached again, hits are the rule (a miss per user and thread is not).
    hits = sum(r.auth in cached for r in late)
    assert hits >= 0.5 * len(late), run.describe(
        f"the cache did not come back: {hits} hits in {len(late)} logins after recovery", late
    )
    counters = ("hits", "local_hits") if near else ("hits",)
    grew = sum(run.counters_at_end[c] - run.counters_at_lift[c] for c in counters)
    assert grew > 0, run.describe(f"the {' and '.join(counters)} counter(s) did not grow after "
                                  "recovery", late)
    if not near:
        return
    local_users = {r.cred for r in late if r.auth == "local_hit"}
    missing = {r.cred for r in late} - local_users
    assert not missing, run.describe(
        f"the near cache did not come back for {sorted(c.label for c in missing)}", late
    )
    local = sum(r.auth == "local_hit" for r in late)
    assert local >= 0.5 * len(late), run.describe(
        f"the near cache did not come back: {local} local hits in {len(late)} logins after "
        "recovery", late
    )
    assert run.counters_at_end["local_hits"] > run.counters_at_lift["local_hits"], run.describe(
        "the local_hits counter did not grow after recovery", late
    )


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


# ------------------------------------------------------------------ fixtures


@contextmanager
def memcached_servers(count: int) -> Iterator[list[MemcachedServer]]:
    servers = [MemcachedServer(port=free_port()) for _ in range(count)]
    try:
        for server in servers:
            server.prepare()
            server.start()
        yield servers
    finally:
        for server in servers:
            if server.running:
                kill(server)  # SIGTERM takes memcached up to a second
            server.close()


@pytest.fixture
def memcached_server():
    """A memcached of this test's own (the test kills, pauses and restarts it)."""
    with memcached_servers(1) as (server,):
        yield server


@pytest.fixture
def three_memcached():
    with memcached_servers(3) as servers:
        yield servers


@pytest.fixture
def slapd_server():
    """A slapd of this test's own (stopped, paused, restarted), on a restartable port."""
    with SlapdServer(port=free_port()) as server:
        yield server


def kill(server: MemcachedServer) -> None:
    """SIGKILL: the process dies at once, with no graceful shutdown; the kernel resets its
    connections."""
    assert server.process is not None
    server.process.kill()
    server.process.wait(5)
    server.stop()  # bookkeeping only: the process is gone


# ------------------------------------------------------------------ memcached faults


def check_memcached_fault(run: Run, grace: float = MEMCACHED_GRACE) -> None:
    check_invariants(run, grace)
    # A memcached fault costs cache misses, never a login: good credentials always work.
    refused = run.select(lambda r: r.cred.good and r.status != 200)
    assert not refused, run.describe("good credentials refused while LDAP was up", refused)


class NearCacheWatch:
    """The counters when a fault is injected, and once the near cache must have been emptied
    (``NEAR_FLUSH_BOUND`` after the fault took effect, read by a timer): between that moment
    and the lifting, ``local_hits`` must not grow. The counter sees what responses cannot:
    a refusal served from memory (a 401 says nothing of the cache)."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.at_fault: dict[str, int] = {}
        self.at_bound: dict[str, int] = {}
        self.bound_read_at = 0.0

    def before_fault(self) -> None:
        self.at_fault = self.stack.cache.counters.snapshot()

    def inject(self, fault: Callable[[], None]) -> Callable[[], None]:
        def inject() -> None:
            fault()
            timer = threading.Timer(NEAR_FLUSH_BOUND, self._read_counters)
            timer.daemon = True
            timer.start()
        return inject

    def _read_counters(self) -> None:
        self.at_bound = self.stack.cache.counters.snapshot()
        self.bound_read_at = time.monotonic()


def check_near_cache_off_during_fault(run: Run, watch: NearCacheWatch) -> None:
    """With the near cache on and memcached failing: it served before the fault, it was
    emptied, and nothing came from memory once the epoch could no longer be read."""
    t = run.timeline
    before = run.select(lambda r: r.sent < t.fault_begin and r.auth == "local_hit")
    assert before, run.describe("no local hit before the fault: is the near cache on?", [])
    late = run.select(lambda r: t.within_fault(r, NEAR_FLUSH_BOUND))
    assert len(late) >= 10, run.describe(
        f"too few requests more than {NEAR_FLUSH_BOUND:.1f}s into the fault", late
    )
    from_memory = [r for r in late if any(o.startswith("local_") for o in r.outcome.values())]
    assert not from_memory, run.describe(
        f"NEAR CACHE USED WHILE MEMCACHED FAILED: answers from memory more than "
        f"{NEAR_FLUSH_BOUND:.1f}s after the fault took effect (the invalidation epoch could "
        f"not be read)", from_memory,
    )
    assert watch.at_bound and watch.bound_read_at < t.lift_begin, (
        f"the counters were not read during the fault (timer late): {t}"
    )
    served = run.counters_at_lift["local_hits"] - watch.at_bound["local_hits"]
    assert served == 0, run.describe(
        f"NEAR CACHE USED WHILE MEMCACHED FAILED: local_hits grew by {served} between "
        f"{NEAR_FLUSH_BOUND:.1f}s into the fault and its lifting (bad credentials' refusals "
        f"included, which responses do not show)", [],
    )
    assert run.counters_at_lift["local_flushes"] > watch.at_fault["local_flushes"], run.describe(
        f"the near cache was never emptied during the fault (local_flushes "
        f"{watch.at_fault['local_flushes']} at the fault)", [],
    )


# Each memcached fault with both clients, and with pymemcache and the near cache on (the
# near cache is above the client: one client is enough for it).
MEMCACHED_FAULT_CASES = [
    pytest.param("python-memcached", False, id="python-memcached"),
    pytest.param("pymemcache", False, id="pymemcache"),
    pytest.param("python-memcached", True, id="python-memcached-near-cache"),
    pytest.param("pymemcache", True, id="pymemcache-near-cache"),
]


# How a memcached fails (inject, lift), and what the fault is called in messages.
MEMCACHED_FAULTS = {
    "killed-then-restarted": (kill, MemcachedServer.start, "memcached was down"),
    "hung-then-resumed": (MemcachedServer.pause, MemcachedServer.resume, "memcached hung"),
}


@pytest.mark.parametrize("fault", list(MEMCACHED_FAULTS))
@pytest.mark.parametrize(("client", "near"), MEMCACHED_FAULT_CASES)
def test_memcached_fault(tmp_path, slapd, memcached_server, client, near, fault):
    """memcached killed (SIGKILL) then restarted empty, or hung (SIGSTOP) then resumed."""
    inject, lift, what = MEMCACHED_FAULTS[fault]
    with served(tmp_path, slapd, [memcached_server], client,
                NEAR_CACHE if near else None) as stack:
        watch = NearCacheWatch(stack)
        run = run_scenario(stack, watch.inject(lambda: inject(memcached_server)),
                           lambda: lift(memcached_server), before_fault=watch.before_fault)
    check_memcached_fault(run)
    during = run.select(lambda r: r.cred.good and run.timeline.within_fault(r))
    assert len(during) >= 10, run.describe(f"too few logins while {what}", during)
    served_from_cache = [r for r in during if r.auth == "hit"]
    assert not served_from_cache, run.describe(f"cache hits while {what}?", served_from_cache)
    if near:
        check_near_cache_off_during_fault(run, watch)
    check_cache_recovered(run, MEMCACHED_GRACE, near=near)


def _sealed_entries(server: MemcachedServer) -> int:
    return sum((server.get_raw(k) or b"")[:1] == b"\x01" for k in server.stored_keys())


@pytest.mark.parametrize("client", CLIENTS)
def test_one_of_three_memcached_lost(tmp_path, slapd, three_memcached, client):
    lost: list[MemcachedServer] = []
    entries: list[int] = []

    def choose_victim() -> None:
        """The server holding the most entries (after the warm-up), but not all of them."""
        entries.extend(_sealed_entries(s) for s in three_memcached)
        assert sum(e > 0 for e in entries) >= 2, f"entries not spread over servers: {entries}"
        lost.append(three_memcached[entries.index(max(entries))])

    with served(tmp_path, slapd, three_memcached, client) as stack:
        run = run_scenario(stack, lambda: kill(lost[0]), lambda: lost[0].start(),
                           hold=HOLD + FAILOVER_GRACE, before_fault=choose_victim)
    check_memcached_fault(run)
    t = run.timeline
    during = run.select(lambda r: r.cred.good and t.within_fault(r, FAILOVER_GRACE))
    # Losing a server costs only its users' entries, and those are cached again on the
    # survivors: every user gets hits during the fault.
    hit_users = {r.cred for r in during if r.auth == "hit"}
    missing = set(GOOD) - hit_users
    assert not missing, run.describe(
        f"no cache hit for {sorted(c.label for c in missing)} while one server of three was "
        f"down (entries per server before: {entries})", during,
    )
    rebuilt = run.select(lambda r: r.cred.good and t.fault_begin <= r.sent < t.lift_begin
                         and "miss" in r.outcome.values())
    assert rebuilt, run.describe(f"no miss at all although a server with {max(entries)} "
                                 f"entries was lost", during)
    check_cache_recovered(run, MEMCACHED_GRACE)


# ------------------------------------------------------------------ LDAP fault


@pytest.mark.parametrize("client", CLIENTS)
def test_slapd_stopped_then_started(tmp_path, slapd_server, memcached_server, client):
    """Cached logins carry on while slapd is down; others get a 401 (never a 500) until it
    is back. carol is never sent before the fault: she is the uncached user."""
    with served(tmp_path, slapd_server, [memcached_server], client) as stack:
        run = run_scenario(stack, slapd_server.stop, slapd_server.start, withheld=[CAROL],
                           after=LDAP_GRACE + 1.0)
        ldap_counts = stack.cache.authenticator.counters()
    check_invariants(run, LDAP_GRACE)
    t = run.timeline
    cached_users = [r for r in run.results if r.cred.good and r.cred != CAROL]
    refused = [r for r in cached_users if r.status != 200]
    assert not refused, run.describe("cached logins refused while slapd was down", refused)
    during = [r for r in cached_users if t.within_fault(r)]
    not_hits = [r for r in during if r.auth != "hit"]
    assert during and not not_hits, run.describe(
        "cached logins while slapd was down that were not cache hits", not_hits or during
    )
    carol = run.select(lambda r: r.cred == CAROL)
    carol_during = [r for r in carol if t.within_fault(r)]
    assert len(carol_during) >= 3, run.describe("too few uncached logins during the fault",
                                                carol)
    let_in = [r for r in carol_during if r.status != 401]
    assert not let_in, run.describe("an uncached login while slapd was down got no 401", let_in)
    assert ldap_counts["backend_errors"] > 0, f"slapd never seemed down: {ldap_counts}"
    carol_after = [r for r in carol if r.sent >= t.lift_end + LDAP_GRACE]
    assert carol_after and all(r.status == 200 for r in carol_after), run.describe(
        "logins needing LDAP did not resume once slapd was back", carol_after or carol
    )
    assert any(r.auth == "hit" for r in carol_after), run.describe(
        "the login that needed LDAP was not cached once slapd was back", carol_after
    )
    assert run.counters_at_end["hits"] > run.counters_at_lift["hits"]
    # memcached was healthy throughout: no false alarm (a lost add race is no error).
    assert run.counters_at_end["cache_errors"] == 0, run.describe(
        "cache errors counted although memcached never failed", []
    )


# ------------------------------------------------------------------ LDAP hung


# slapd hung (SIGSTOP): the kernel still accepts connections into slapd's listen backlog,
# but nothing answers. What a request can wait on then (ldap.py): each exchange with the
# directory is bounded, a new connection's connect by ``connect_timeout`` and each answer
# (service bind, search, user bind) by ``timeout`` (ldap3's receive_timeout). The first
# exchange that fails ends the plugin call with BackendUnavailable (a timed-out search is
# not retried; a connection that timed out is closed, never pooled again), and an exchange
# under way when slapd resumes is answered then, after which the rest of the call is quick.
# So one plugin call waits at most connect_timeout + timeout, and threads missing on the
# same key wait for one leader's call (flights) rather than make their own. A request makes
# at most two plugin calls that reach LDAP: authenticate, then add_metadata if that gave a
# userid (during the hang only an entry served stale does: then both calls wait; an
# authentication answered just before the hang leaves one wait, for the metadata). Nothing
# waits for a waitress thread while there are no more clients than threads (but see
# test_slapd_hung_uncached_logins_starve_cached_ones).
LDAP_CALL_BOUND = LDAP_CONNECT_TIMEOUT + LDAP_TIMEOUT


def hung_ldap_bound(ldap_calls: int) -> float:
    """No request may take longer while slapd hangs: ``ldap_calls`` plugin calls that each
    wait out LDAP_CALL_BOUND, plus the usual LATENCY_BOUND (memcached calls, a noisy
    machine)."""
    return ldap_calls * LDAP_CALL_BOUND + LATENCY_BOUND


# Long enough for an LDAP call that begins as slapd hangs to time out before it resumes
# (and, with ttl = 1, for the warm-up's entries to expire and one to be served stale).
HUNG_HOLD = LDAP_CALL_BOUND + 0.5
# slapd answers what was queued as soon as it runs again, and the breaker lets a probe
# through within retry_after: a login needing LDAP that is sent this much later must succeed.
HUNG_GRACE = LDAP_RETRY_AFTER + 0.5
HUNG_AFTER = HUNG_GRACE + 0.7
LDAP_PACE = 0.05  # between two first logins of new users: a few dozen per scenario

# Users never logged in before, each needing LDAP for a first login (added to the test's
# own slapd; the main load never sends them). Plain-text passwords: slapd compares them as
# they are.
NEW_USERS = tuple(
    Cred(f"new user {n}", f"new{n:02d}", f"new-password-{n}", f"new{n:02d}",
         f"new{n:02d}@example.org")
    for n in range(60)
)


def add_users(slapd: SlapdServer, creds: Iterable[Cred]) -> None:
    with ldap_admin(slapd) as conn:
        for cred in creds:
            added = conn.add(_dn(slapd, cred), ["inetOrgPerson"],
                             {"uid": cred.login, "cn": cred.label, "sn": cred.login,
                              "mail": cred.mail, "userPassword": cred.password})
            assert added, conn.result


def max_in_flight(rows: Iterable[Result], begin: float, end: float) -> int:
    """The most of ``rows`` in progress at once between ``begin`` and ``end``."""
    events = sorted(event for r in rows if r.sent < end and r.done > begin
                    for event in ((max(r.sent, begin), 1), (r.done, -1)))
    most = current = 0
    for _, change in events:
        current += change
        most = max(most, current)
    return most


# With the stack's ttl (300 s, longer than any scenario) the warm-up's entries are fresh
# throughout the hang; with ttl = 1 they expire during it and are served stale (the stack
# sets stale_ttl), after waiting for LDAP: every login then needs LDAP, for authentication
# and for metadata. The memcached client matters little to an LDAP fault: the stale case
# runs with one.
HUNG_CASES = [
    pytest.param("python-memcached", {}, id="python-memcached"),
    pytest.param("pymemcache", {}, id="pymemcache"),
    pytest.param("pymemcache", {"ttl": 1}, id="pymemcache-stale"),
]


@pytest.mark.parametrize(("client", "options"), HUNG_CASES)
def test_slapd_hung_then_resumed(tmp_path, slapd_server, memcached_server, client, options):
    """slapd hangs (SIGSTOP: connects succeed, nothing answers) under load, then resumes.

    Three loads: the main one (carol withheld until the fault: the uncached user); one
    client sending cached users only (is a cached login still quick while threads wait on
    LDAP?); one client logging in users never seen before, each again until it gets in
    (every such login needs LDAP: how long does one take during the hang, how soon after
    the resume do they work again?). Eight clients: as many as waitress's threads, so that
    no request waits for a thread, while up to seven wait on LDAP.
    """
    assert CLIENT_THREADS + 2 <= WAITRESS_THREADS  # no request waits for a thread
    stale = "ttl" in options
    add_users(slapd_server, NEW_USERS)
    bound = hung_ldap_bound(2 if stale else 1)
    with served(tmp_path, slapd_server, [memcached_server], client, options) as stack:
        cached_probe = Load(stack.port, mix=(ALICE, BOB, ZOE), threads=1)
        ldap_probe = Load(stack.port, mix=NEW_USERS, threads=1, until_accepted=True,
                          pace=LDAP_PACE)
        for probe in (cached_probe, ldap_probe):
            probe.start(max_seconds=WARM_UP + HUNG_HOLD + HUNG_AFTER + 20)
        try:
            run = run_scenario(stack, slapd_server.pause, slapd_server.resume,
                               withheld=[CAROL], hold=HUNG_HOLD, after=HUNG_AFTER)
        finally:
            cached = cached_probe.stop()
            new = ldap_probe.stop()
        ldap_counts = stack.cache.authenticator.counters()
    t = run.timeline
    run = Run(sorted(run.results + cached + new, key=lambda r: r.sent), t,
              run.counters_at_lift, run.counters_at_end)
    check_invariants(run, HUNG_GRACE, bound)

    def needs_ldap(r: Result) -> bool:
        return r.cred == CAROL or r.cred in NEW_USERS

    # Cached logins keep working: always a 200, from the cache (stale once past the ttl).
    cached_users = run.select(lambda r: r.cred.good and not needs_ldap(r))
    refused = [r for r in cached_users if r.status != 200]
    assert not refused, run.describe("cached logins refused while slapd hung", refused)
    during = [r for r in cached_users if t.within_fault(r)]
    not_cached = [r for r in during if r.auth not in ("hit", "stale")]
    assert len(during) >= 10 and not not_cached, run.describe(
        "cached logins while slapd hung that were not served from the cache",
        not_cached or during,
    )
    # Logins that need LDAP fail cleanly: a 401 once the LDAP call timed out.
    ldap_during = run.select(lambda r: needs_ldap(r) and t.within_fault(r))
    assert len(ldap_during) >= 3, run.describe("too few logins needing LDAP during the hang",
                                               run.select(needs_ldap))
    let_in = [r for r in ldap_during if r.status != 401]
    assert not let_in, run.describe("a login needing LDAP got no 401 while slapd hung", let_in)
    assert max(r.latency for r in ldap_during) >= LDAP_TIMEOUT - 0.1, run.describe(
        f"no login waited out the LDAP timeout: was slapd hung? ({ldap_counts})", ldap_during
    )
    if stale:
        # The authentication's entry, or the metadata's (which expires first depends on
        # the warm-up's races), served once its LDAP call timed out: so possibly after the
        # resume (past the authentication, the metadata waits for LDAP next).
        served_stale = [r for r in cached_users if "stale" in r.outcome.values()]
        assert served_stale, run.describe("no cached login served stale while slapd hung",
                                          cached_users)
    else:
        # Threads waiting on LDAP (up to seven of waitress's eight) leave cached logins as
        # quick as ever.
        slow = [r for r in during if r.latency > LATENCY_BOUND]
        stuck = max_in_flight(run.select(needs_ldap), t.fault_on, t.lift_begin)
        assert not slow and stuck >= WAITRESS_THREADS // 2, run.describe(
            f"cached logins slower than {LATENCY_BOUND}s while up to {stuck} requests waited "
            f"on the hung LDAP", slow or during,
        )
        quick = [r for r in cached if t.within_fault(r)]
        assert len(quick) >= 100, run.describe(
            "the client sending only cached logins was answered too few times during the hang",
            quick,
        )
    # After the resume, logins needing LDAP work again (from LDAP: misses, not just hits).
    late = [r for r in new if r.sent >= t.lift_end + HUNG_GRACE]
    assert len(late) >= 5 and all(r.auth == "miss" for r in late), run.describe(
        f"new users' first logins {HUNG_GRACE}s after slapd resumed", late or new
    )
    carol_late = run.select(lambda r: r.cred == CAROL and r.sent >= t.lift_end + HUNG_GRACE)
    assert carol_late, run.describe("carol was not sent after slapd resumed", [])


# More uncached logins in flight than waitress has threads. Until the first LDAP timeout
# nobody knows slapd hangs: the first wave holds every thread for the LDAP timeout, and a
# cached login queues behind it. From then on, the breaker (retry_after) fails LDAP calls
# at once: threads are free again, cached logins quick.
STARVING_CLIENTS = 2 * WAITRESS_THREADS
FIRST_WAVE = LDAP_CALL_BOUND + 0.5  # by then every call of the first wave has timed out
STARVE_HOLD = FIRST_WAVE + 2.0
WRONG_PASSWORDS = tuple(
    Cred(f"carol, wrong password {n}", "carol", f"wrong-password-{n}") for n in range(200)
)


def test_slapd_hung_uncached_logins_do_not_starve_cached_ones(tmp_path, slapd_server,
                                                              memcached_server):
    """slapd hangs while 16 clients send logins that are not cached (wrong passwords, each
    its own key: no coalescing), and one client sends cached logins only.

    With 8 waitress threads, the first 8 uncached logins wait out the LDAP timeout and 8
    more queue, and so does the cached client's first request. Without a breaker every
    uncached login after them did the same (measured before ldap.py had one: in a 3 s hang
    the cached client got no answer at all; in 4 s hangs, with 9 uncached clients 4, with 24
    none). With it, once the first wave has timed out, LDAP calls fail at once: cached
    logins must be answered as usual: quickly, and many of them.
    """
    with served(tmp_path, slapd_server, [memcached_server], "pymemcache") as stack:
        conn = connect(stack.port)
        for cred in (ALICE, BOB, ZOE):
            warm = send(conn, cred)
            if warm.status != 200 or warm.userid != cred.userid:
                pytest.fail(f"warm-up login failed: {warm}")
        conn.close()
        uncached = Load(stack.port, mix=WRONG_PASSWORDS, threads=STARVING_CLIENTS)
        probe = Load(stack.port, mix=(ALICE, BOB, ZOE), threads=1)
        timeline = Timeline(t0=time.monotonic())
        try:
            timeline.fault_begin = time.monotonic()
            slapd_server.pause()
            timeline.fault_on = time.monotonic()
            uncached.start(max_seconds=STARVE_HOLD + 20)
            time.sleep(0.3)  # every uncached client's login is in: 8 running, 8 queued
            probe.start(max_seconds=STARVE_HOLD + 20)
            time.sleep(STARVE_HOLD)
        finally:
            timeline.lift_begin = time.monotonic()
            slapd_server.resume()
            timeline.lift_end = time.monotonic()
        try:
            cached = probe.stop()
        finally:
            refused = uncached.stop()
        timeline.end = time.monotonic()
    run = Run(sorted(cached + refused, key=lambda r: r.sent), timeline, {}, {})
    # These hold, starved or not (pytest.fail: not the known problem).
    wrong = run.select(lambda r: r.error is not None or r.status not in (200, 401)
                       or (r.status == 200) != r.cred.good
                       or (r.status == 200 and (r.userid != r.cred.userid or r.auth != "hit")))
    if wrong or len(refused) < STARVING_CLIENTS:
        pytest.fail(run.describe("wrong answers or too few uncached logins", wrong or refused))
    # After the first wave: cached logins quick and many; uncached ones refused at once.
    after_wave = timeline.fault_on + FIRST_WAVE
    sent = [r for r in cached if after_wave <= r.sent < timeline.lift_begin]
    answered = [r for r in sent if r.done <= timeline.lift_begin]
    slow = [r for r in sent if r.latency > LATENCY_BOUND]
    # (Each takes tens of ms, not one: the 16 clients' quick 401s keep both cores busy, so
    # the count varies with the machine: 18 to 42 seen. Without the breaker: 0 to 6 answers
    # in a whole hang of 3 to 4 s, each waiting seconds.)
    assert sent and not slow and len(answered) >= 10, run.describe(
        f"CACHED LOGINS STARVED while {STARVING_CLIENTS} uncached logins met the hung LDAP "
        f"({WAITRESS_THREADS} waitress threads): {len(answered)} answered in the "
        f"{timeline.lift_begin - after_wave:.1f}s after the first wave, {len(slow)} slower "
        f"than {LATENCY_BOUND}s", slow or sent,
    )
    held = [r for r in refused if after_wave <= r.sent < timeline.lift_begin
            and r.latency > LDAP_TIMEOUT - 0.1]
    waited = len(held)
    # At most the breaker's probes (one per plugin at a time) still wait out the timeout.
    assert waited <= 2 * (STARVE_HOLD / (LDAP_RETRY_AFTER + LDAP_TIMEOUT) + 1), run.describe(
        f"{waited} uncached logins after the first wave still waited for the hung LDAP", held)


# ------------------------------------------------------------------ a password change


# dave is added to this test's slapd: a user of his own, whom the main load never sends, so
# that the main load's invariants hold as they are. Both his passwords log in as dave when
# LDAP accepts them: which one that is depends on when.
DAVE_OLD = Cred("dave, old password", "dave", "dave-old-password", "dave", "dave@example.org")
DAVE_NEW = Cred("dave, new password", "dave", "dave-new-password", "dave", "dave@example.org")
PASSWORD_HOLD = 0.8  # between the password change and the invalidation
PASSWORD_AFTER = 1.5


@contextmanager
def ldap_admin(slapd: SlapdServer) -> Iterator[ldap3.Connection]:
    """A connection bound as the root DN (which bypasses the ACLs)."""
    conn = ldap3.Connection(ldap3.Server(slapd.url, get_info=ldap3.NONE), slapd.root_dn,
                            slapd.root_password, auto_bind=True, receive_timeout=5)
    try:
        yield conn
    finally:
        conn.unbind()


def _dn(slapd: SlapdServer, cred: Cred) -> str:
    return f"uid={cred.login},{slapd.users_base_dn}"


def add_user(slapd: SlapdServer, cred: Cred) -> None:
    with ldap_admin(slapd) as conn:
        added = conn.add(_dn(slapd, cred), ["inetOrgPerson"],
                         {"uid": cred.login, "cn": "Dave Davies", "sn": "Davies",
                          "mail": cred.mail})
        assert added, conn.result
    set_password(slapd, cred)


def set_password(slapd: SlapdServer, cred: Cred) -> None:
    """As an administrator would: the Password Modify extended operation (slapd hashes it)."""
    with ldap_admin(slapd) as conn:
        changed = conn.extend.standard.modify_password(_dn(slapd, cred),
                                                       new_password=cred.password)
        assert changed, conn.result


def invalidate_with_cli(stack: Stack, login: str) -> None:
    """``repoze-who-memcached invalidate INI#auth LOGIN``, in this process but with plugins
    of its own, built from the ini: as from another machine sharing the cache."""
    status = cli.main(["invalidate", f"{stack.ini}#auth", login])
    assert status == 0, f"the CLI's invalidate failed (exit status {status})"


def check_password_change(run: Run, dave: list[Result], bound: float, near: bool) -> None:
    """dave's requests: before the change the old password logs in and the new one doesn't;
    from ``bound`` after the invalidation returned, the reverse, always."""
    t = run.timeline
    dave_run = Run(dave, t, run.counters_at_lift, run.counters_at_end)
    problems = []

    def expect_none(title: str, rows: list[Result]) -> None:
        if rows:
            problems.append(dave_run.describe(title, rows))

    expect_none("requests without an HTTP response (connection errors)",
                [r for r in dave if r.error is not None])
    expect_none("responses other than 200 or 401",
                [r for r in dave if r.error is None and r.status not in (200, 401)])
    expect_none("WRONG USER: a 200 for dave's credentials but not as dave",
                [r for r in dave if r.status == 200
                 and (r.userid != "dave" or r.remote_user != "dave")])
    expect_none("WRONG METADATA: another user's mail in dave's identity",
                [r for r in dave if r.status == 200 and r.mail is not None
                 and DAVE_OLD.mail not in _as_list(r.mail)])
    before = [r for r in dave if r.done <= t.fault_begin]
    expect_none("before the password change, the old password refused or the new accepted",
                [r for r in before if (r.status == 200) != (r.cred == DAVE_OLD)])
    after = [r for r in dave if r.sent >= t.lift_end + bound]
    expect_none(f"OLD PASSWORD ACCEPTED OR NEW ONE REFUSED, sent {bound:.1f}s or more after "
                f"the invalidation returned",
                [r for r in after if (r.status == 200) != (r.cred == DAVE_NEW)])
    assert not problems, "\n\n".join(problems)
    for cred in (DAVE_OLD, DAVE_NEW):
        sent = [r for r in before if r.cred == cred]
        assert len(sent) >= 3, dave_run.describe(f"too few [{cred.label}] before the change", sent)
        sent = [r for r in after if r.cred == cred]
        assert len(sent) >= 5, dave_run.describe(
            f"too few [{cred.label}] {bound:.1f}s after the invalidation", sent
        )
    # The scenario needs the invalidation: until it, the cache still took the old password.
    stale = [r for r in dave if r.cred == DAVE_OLD and r.status == 200 and r.sent >= t.fault_on
             and r.done <= t.lift_begin]
    assert stale, dave_run.describe("the old password was never accepted from the cache between "
                                    "the change and the invalidation", dave)
    if near:
        assert any(r.auth == "local_hit" for r in stale), dave_run.describe(
            "the old password was never accepted from the near cache before the invalidation",
            stale,
        )


@pytest.mark.parametrize("near", [False, True], ids=["memcached-only", "near-cache"])
def test_password_changed_then_invalidated(tmp_path, slapd_server, memcached_server, near):
    """Why operators invalidate: dave's password changes in LDAP while the load runs, then
    an operator invalidates dave with the CLI (plugins of its own, as on another machine).
    Until then the cache may keep taking the old password; after it, never: at once without
    the near cache, within ``local_check_interval`` with it. (In the timeline, the "fault"
    is the password change and its "lifting" the invalidation.)

    No margin is added to these bounds, and none is needed: a request *sent* after the
    invalidation returned reads the new generation token; with the near cache, one sent
    ``local_check_interval`` after it is served from memory only after an epoch read that
    began after the invalidation."""
    add_user(slapd_server, DAVE_OLD)
    bound = LOCAL_CHECK_INTERVAL if near else 0.0
    with served(tmp_path, slapd_server, [memcached_server], "pymemcache",
                NEAR_CACHE if near else None) as stack:
        probe = Load(stack.port, mix=(DAVE_OLD, DAVE_NEW), threads=2)
        probe.start(max_seconds=WARM_UP + PASSWORD_HOLD + PASSWORD_AFTER + 20)
        try:
            run = run_scenario(stack, lambda: set_password(slapd_server, DAVE_NEW),
                               lambda: invalidate_with_cli(stack, DAVE_OLD.login),
                               hold=PASSWORD_HOLD, after=PASSWORD_AFTER)
        finally:
            dave = probe.stop()
    check_password_change(run, dave, bound, near)
    # The other users: never refused, and the invalidation of dave cost them nothing (no
    # miss); with the near cache, which the invalidation emptied, back to local hits.
    check_invariants(run, 0.0)
    refused = run.select(lambda r: r.cred.good and r.status != 200)
    assert not refused, run.describe("good credentials refused", refused)
    missed = run.select(lambda r: r.cred.good and r.sent >= run.timeline.lift_end
                        and r.auth not in ("hit", "local_hit"))
    assert not missed, run.describe("other users' logins not cached after dave's invalidation",
                                    missed)
    check_cache_recovered(run, bound, near=near)
    if near:
        flushes = run.counters_at_end["local_flushes"] - run.counters_at_lift["local_flushes"]
        assert flushes >= 1, run.describe("the invalidation never emptied the near cache", [])


# ------------------------------------------------------------------ regressions


def _connections(server: MemcachedServer) -> int:
    stats = server.raw_command(b"stats\r\n").decode()
    return next(int(line.split()[2]) for line in stats.splitlines()
                if line.startswith("STAT curr_connections "))


def test_pymemcache_cache_is_back_soon_after_a_restart(tmp_path, slapd, memcached_server):
    """memcached restarted while the site is quiet: the cache must be back after dead_retry.

    The load warms the cache (several threads connect to memcached), pauses; memcached is
    killed and started again; the load resumes. The first call finds a dead connection and
    marks the server dead for dead_retry: that is expected, and what the grace allows for.
    (Fixed: a reused connection found closed is retried once on a fresh one.)
    """
    baseline = _connections(memcached_server)  # the listener and this stats connection
    connected: list[int] = []
    with served(tmp_path, slapd, [memcached_server], "pymemcache") as stack:
        run = run_scenario(
            stack, lambda: kill(memcached_server), memcached_server.start, hold=0.0,
            after=MEMCACHED_GRACE + 1.0, quiet_fault=True,
            before_fault=lambda: connected.append(_connections(memcached_server) - baseline),
        )
    try:
        check_memcached_fault(run)
    except AssertionError as exc:
        pytest.fail(f"memcached restart:\n{exc}")
    late = run.select(lambda r: r.cred.good and r.sent >= run.timeline.lift_end + MEMCACHED_GRACE)
    hits = sum(r.auth == "hit" for r in late)
    errors = run.counters_at_end["cache_errors"] - run.counters_at_lift["cache_errors"]
    assert late and hits >= 0.8 * len(late), run.describe(
        f"the cache was still off {MEMCACHED_GRACE:.1f}s after memcached restarted: {hits} hits "
        f"in {len(late)} logins; {connected[0]} client connections before the kill, {errors} "
        f"cache errors after the restart", late,
    )


def test_memcached_hung_mid_login_leaves_no_lock_behind(tmp_path, slapd_server,
                                                        memcached_server):
    """memcached hangs at the worst moment: a login holds its lock, waiting for LDAP.

    slapd is paused so that carol's first login holds its memcached lock while it waits
    for LDAP; memcached is then paused, slapd resumed: the login succeeds from LDAP, but
    storing the answer and releasing the lock time out. Once memcached is back (and
    dead_retry has passed), carol's next login must be as quick as any miss, not wait for
    the lock that this process itself failed to release. (Either client shows it: the
    plugin, not the client, decides to wait; one is enough, the wait costs 5 s.)
    """
    with served(tmp_path, slapd_server, [memcached_server], "python-memcached") as stack:
        conn = connect(stack.port)
        warm = send(conn, ALICE)  # namespace token, LDAP connections
        assert warm.status == 200 and warm.userid == "alice", warm
        first: list[Result] = []
        login = threading.Thread(target=lambda: first.append(send(connect(stack.port), CAROL)),
                                 daemon=True)
        slapd_server.pause()
        try:
            login.start()
            time.sleep(0.3)  # carol's miss takes the lock, then waits for LDAP
            memcached_server.pause()
        finally:
            slapd_server.resume()
        try:
            login.join(CLIENT_TIMEOUT)
        finally:
            memcached_server.resume()
        assert first and first[0].status == 200 and first[0].userid == "carol", first
        time.sleep(MEMCACHED_GRACE)
        second = send(conn, CAROL)
        lock_waits = stack.cache.counters.snapshot()["lock_waits"]
        conn.close()
    if second.status != 200 or second.userid != "carol":
        pytest.fail(f"not the known lock bug: {second}")
    assert second.latency < LATENCY_BOUND, (
        f"carol's login after memcached came back took {second.latency:.1f}s "
        f"(lock waits: {lock_waits}; cache: {second.outcome})"
    )
