"""Throughput over HTTP: waitress in a subprocess, keep-alive clients on the other core(s).

The server process (``python -m benchmarks.throughput --serve CONFIG``) serves, by path, the
same tiny app with no authentication at all (``/noauth``: the baseline, what the auth layer
is measured against), behind our filter with an authenticator that accepts everyone and no
cache (``/floor``: what repoze.who and Basic parsing cost alone), and behind our filter:
``/uncached`` (our LDAP authenticator, no cache), ``/python-memcached``, ``/pymemcache`` and
``/pymemcache+local`` (cached, the last with the near cache on, ``local_ttl = 60``; each its
own ``key_prefix``, so each starts cold); with python-ldap available, also
``/uncached[python-ldap]``, ``/pymemcache[python-ldap]`` and
``/pymemcache+local[python-ldap]``. ``/_stats`` returns the process's own CPU time
(``getrusage``: user + sys) and the LDAP authenticators' and caches' counters.

The app server (waitress, in its own process) has one core to itself; memcached and slapd
are moved to the other core(s) for this section, beside the load generator: at a site they
are other hosts, and their CPU is not the app server's (in the other sections every server
shares one core). The load keeps the server saturated (more client connections than server
threads: the server, not the client's think time, sets the pace), so requests per second
measure the app server's capacity. The client sends prepared request bytes over raw
keep-alive sockets (no http.client): a client in Python costs CPU per request too, and with
http.client it, not the server, limited the no-auth baseline. Each phase reports how busy
the server process was (CPU seconds over wall seconds): near 100% means the server, not the
client, set the pace.

Two workloads. *zipf*: users drawn from a Zipf distribution over the generated LDAP users;
rounds interleave the stacks, a phase each; round 1 of a cached stack starts from an empty
cache (cold), later rounds find what earlier rounds cached (warm). *hot*: the most popular
users only, cached beforehand, so the cached stacks never miss: the cache's own capacity,
each stack against ``noauth`` in sliced ABBA groups over one pool of connections
(:mod:`benchmarks.abba`).

LDAP binds per 1000 requests are user binds (a bind as the user's DN, counted by the
authenticator and cross-checked against slapd's log); service binds (the pooled search
connections) are reported apart.

CPU per request: the server process's user + sys time (its own accounting), over a Zipf
phase from ``resource.getrusage`` (``/_stats``), over the hot workload's slices from
``/proc/PID/stat`` read at every slice edge; divided by the requests served. memcached's
and slapd's beside it (``/proc/PID/stat``, in clock ticks: 10 ms resolution, over seconds
of load).
"""

from __future__ import annotations

import argparse
import bisect
import http.client
import itertools
import json
import os
import random
import resource
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from repoze_who_memcached.testing import free_port, wait_for_port

from . import abba, harness, servers, stacks

BASELINE = "noauth"
FLOOR = "floor"  # our filter with basic auth and an accept-all authenticator: no cache, no LDAP
# Lab stacks with a known cost, to check the measurement itself (benchmarks/abba_check.py):
# the bare app under another name (A/A), and ``burn<N>``: the bare app after N iterations
# of an empty loop.
COPY = "noauth-copy"
BURN = "burn"
BASE_TARGETS = (BASELINE, FLOOR, "uncached", "python-memcached", "pymemcache",
                "pymemcache+local")
PYTHON_LDAP_TARGETS = ("uncached[python-ldap]", "pymemcache[python-ldap]",
                       "pymemcache+local[python-ldap]")
LOCAL_TTL = "60"
REPO_ROOT = Path(__file__).resolve().parent.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# (workload, numerator, denominator, minimum ratio of requests/s, what it says)
TARGETS = (
    ("hot", "pymemcache+local", BASELINE, 0.85,
     "hot users, near-cache hits / the same app with no authentication"),
    ("hot", "pymemcache", BASELINE, 0.6,
     "hot users, memcached hits (pymemcache) / no authentication"),
    ("hot", "python-memcached", BASELINE, 0.6,
     "hot users, memcached hits (python-memcached) / no authentication"),
    ("zipf", "pymemcache+local", "uncached", 4.0,
     "Zipf users, cached (near cache) / uncached LDAP, warm rounds"),
    ("zipf", "pymemcache", "uncached", 4.0,
     "Zipf users, cached (pymemcache) / uncached LDAP, warm rounds"),
    ("zipf", "python-memcached", "uncached", 4.0,
     "Zipf users, cached (python-memcached) / uncached LDAP, warm rounds"),
    ("zipf", "pymemcache[python-ldap]", "uncached", 4.0,
     "Zipf users, cached (pymemcache, python-ldap) / uncached LDAP (ldap3), warm rounds"),
    ("zipf", "pymemcache+local[python-ldap]", "uncached", 4.0,
     "Zipf users, cached (near cache, python-ldap) / uncached LDAP (ldap3), warm rounds"),
)


def burn_iterations(target: str) -> int | None:
    """N of a ``burn<N>`` lab stack, None for any other target."""
    digits = target[len(BURN):]
    return int(digits) if target.startswith(BURN) and digits.isdigit() else None


def is_bare(target: str) -> bool:
    """The bare app, no authentication: the baseline and the lab stacks."""
    return target in (BASELINE, COPY) or burn_iterations(target) is not None


def burning(app: Callable, iterations: int) -> Callable:
    """``app`` after a fixed CPU burn: a stack whose extra cost per request is known
    (calibrated in process), against which a measured ratio can be checked."""
    def burned(environ: dict, start_response: Callable) -> list[bytes]:
        for _ in range(iterations):
            pass
        return app(environ, start_response)
    return burned


def is_cached(target: str) -> bool:
    return (target not in (BASELINE, FLOOR, "uncached") and not target.startswith("uncached[")
            and not is_bare(target))


@dataclass
class Settings:
    rounds: int
    seconds: float
    client_threads: int
    server_threads: int
    users: int
    zipf_s: float
    hot_users: int = 100
    hot_groups: int = 40  # ABBA groups per stack (see benchmarks.abba)
    hot_slice_seconds: float = 0.25
    hot_settle_seconds: float = 0.025


# ------------------------------------------------------------------ the server process


def _ldap_of(middleware: Any) -> Any:
    caches = getattr(middleware, "cache_plugins", [])
    if caches:
        return caches[0].authenticator
    return middleware.api_factory.authenticators[0][1]


def build_stacks(config: dict[str, Any]) -> dict[str, Callable]:
    """Every stack of ``config["targets"]``, by name (``noauth`` is the bare app)."""
    app = stacks.hello_app
    pool = config["server_threads"]
    slapd, memcached = config["slapd_url"], [config["memcached_url"]]
    built: dict[str, Callable] = {}
    for target in config["targets"]:
        base, _, library = target.partition("[")
        library = library.rstrip("]") or None
        if target in (BASELINE, COPY):
            built[target] = app
        elif (iterations := burn_iterations(target)) is not None:
            built[target] = burning(app, iterations)
        elif target == FLOOR:
            built[target] = stacks.our_floor(app)
        elif base == "uncached":
            built[target] = stacks.our_ldap_uncached(app, slapd, pool_size=pool,
                                                     ldap_library=library)
        elif base in ("python-memcached", "pymemcache"):
            built[target] = stacks.our_cached(
                app, memcached, base, slapd_url=slapd, pool_size=pool, ldap_library=library,
                key_prefix=f"http-{target}:")
        elif base == "pymemcache+local":
            built[target] = stacks.our_cached(
                app, memcached, "pymemcache", slapd_url=slapd, pool_size=pool,
                ldap_library=library, key_prefix=f"http-{target}:", local_ttl=LOCAL_TTL)
        else:
            raise ValueError(f"unknown HTTP benchmark target {target!r}")
    return built


def build_server_app(config: dict[str, Any]) -> Callable:
    stacks_by_name = build_stacks(config)

    def stats() -> dict[str, Any]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        result: dict[str, Any] = {"cpu_seconds": usage.ru_utime + usage.ru_stime,
                                  "stacks": {}}
        for name, mw in stacks_by_name.items():
            if name == FLOOR or is_bare(name):
                result["stacks"][name] = {"ldap": None, "cache": None}
                continue
            caches = getattr(mw, "cache_plugins", [])
            result["stacks"][name] = {
                "ldap": _ldap_of(mw).counters(),
                "cache": caches[0].counters.snapshot() if caches else None,
            }
        return result

    def dispatch(environ: dict, start_response: Callable) -> list[bytes]:
        path = environ.get("PATH_INFO", "")
        name = path.strip("/").split("/", 1)[0]
        if name == "_stats":
            body = json.dumps(stats()).encode()
            start_response("200 OK", [("Content-Type", "application/json"),
                                      ("Content-Length", str(len(body)))])
            return [body]
        mw = stacks_by_name.get(name)
        if mw is None:
            start_response("404 Not Found", [("Content-Length", "0")])
            return []
        return mw(environ, start_response)

    return dispatch


def serve(config: dict[str, Any]) -> None:
    import logging

    import waitress

    # waitress warns "Task queue depth is N" whenever its threads are all busy: that is
    # the point of a load test.
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    waitress.serve(build_server_app(config), host="127.0.0.1", port=config["port"],
                   threads=config["server_threads"], _quiet=True)


class ServerProcess:
    def __init__(self, config: dict[str, Any], cpu: int) -> None:
        self.config = config
        self.cpu = cpu
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> ServerProcess:
        command = [sys.executable, "-m", "benchmarks.throughput", "--serve",
                   json.dumps(self.config)]
        if os.path.exists(servers.TASKSET):
            command = [servers.TASKSET, "-c", str(self.cpu), *command]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
        self.process = subprocess.Popen(command, cwd=REPO_ROOT, env=env,
                                        start_new_session=True)
        wait_for_port("127.0.0.1", self.config["port"], 30, self.process)
        return self

    @property
    def pid(self) -> int | None:
        """The server's pid (``taskset`` execs it: the same process)."""
        return self.process.pid if self.process is not None else None

    def __exit__(self, *exc_info: Any) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


# ------------------------------------------------------------------ the client


class Zipf:
    """Bounded Zipf over user indexes 0..n-1 (index 0 the most popular)."""

    def __init__(self, n: int, s: float) -> None:
        weights = [1.0 / (k ** s) for k in range(1, n + 1)]
        self.cumulative = list(itertools.accumulate(weights))
        self.total = self.cumulative[-1]

    def draw(self, rng: random.Random) -> int:
        return bisect.bisect(self.cumulative, rng.random() * self.total)


def get_json(port: int, path: str) -> Any:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


class KeepAlive:
    """One keep-alive HTTP/1.1 connection sending prepared requests: a status and a body
    back, read by Content-Length (every response here has one)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.pending = b""

    def request(self, data: bytes) -> tuple[int, bytes]:
        sock = self.sock
        sock.sendall(data)
        buf = self.pending
        while (end := buf.find(b"\r\n\r\n")) < 0:
            buf += self._recv()
        head = buf[:end].lower()
        at = head.find(b"\r\ncontent-length:")
        if at < 0:
            raise ConnectionError("a response without Content-Length")
        stop = head.find(b"\r\n", at + 2)
        length = int(head[at + 17:stop if stop >= 0 else len(head)])
        total = end + 4 + length
        while len(buf) < total:
            buf += self._recv()
        self.pending = buf[total:]
        return int(head[9:12]), buf[end + 4:total]

    def _recv(self) -> bytes:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        return chunk

    def close(self) -> None:
        self.sock.close()


def prepared_requests(target: str, headers: list[str]) -> list[bytes]:
    return [(f"GET /{target} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {h}\r\n\r\n")
            .encode("ascii") for h in headers]


def expected_bodies(target: str, users: int) -> list[bytes]:
    """What the app answers each user: its login, or ``-`` where nobody authenticates."""
    if is_bare(target):
        return [b"-"] * users
    return [servers.login_of(i).encode() for i in range(users)]


def load_phase(port: int, target: str, settings: Settings, zipf: Zipf, headers: list[str],
               seed: int, client_cpus: set[int]) -> dict[str, Any]:
    """``client_threads`` keep-alive connections hammering ``/target`` for ``seconds``."""
    threads = settings.client_threads
    requests = prepared_requests(target, headers)
    bodies = expected_bodies(target, len(headers))
    latencies: list[list[float]] = [[] for _ in range(threads)]
    errors = [0] * threads
    seen: list[set[int]] = [set() for _ in range(threads)]
    start_line = threading.Barrier(threads + 1)
    stop_at = [0.0]

    def worker(t: int) -> None:
        if client_cpus:
            os.sched_setaffinity(0, client_cpus)
        rng = random.Random(seed * 1000 + t)
        conn = KeepAlive(port)
        mine, users = latencies[t], seen[t]
        start_line.wait()
        deadline = stop_at[0]
        clock = time.perf_counter
        try:
            while True:
                user = zipf.draw(rng)
                begin = clock()
                if begin >= deadline:
                    break
                status, body = conn.request(requests[user])
                mine.append(clock() - begin)
                users.add(user)
                if status != 200 or body != bodies[user]:
                    errors[t] += 1
        finally:
            conn.close()

    pool = [threading.Thread(target=worker, args=(t,), daemon=True) for t in range(threads)]
    for thread in pool:
        thread.start()
    began = time.perf_counter()
    stop_at[0] = began + settings.seconds
    start_line.wait()
    for thread in pool:
        thread.join(settings.seconds + 60)
    elapsed = time.perf_counter() - began
    merged = sorted(itertools.chain.from_iterable(latencies))
    return {
        "requests": len(merged),
        "errors": sum(errors),
        "seconds": elapsed,
        "rps": len(merged) / elapsed,
        "p50_ms": harness.percentile(merged, 0.50) * 1e3,
        "p99_ms": harness.percentile(merged, 0.99) * 1e3,
        "distinct_users": len(set().union(*seen)),
    }


def process_cpu_seconds(pid: int | None) -> float | None:
    """User + sys CPU seconds of process ``pid`` (its threads included), from the kernel's
    accounting in /proc; None if it cannot be read."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def _delta(after: dict, before: dict, target: str, kind: str, name: str) -> int:
    return after["stacks"][target][kind][name] - before["stacks"][target][kind][name]


def _counters(after: dict, before: dict, target: str) -> dict[str, int]:
    """The stack's LDAP and cache counters between two ``/_stats`` readings (none for a
    stack with neither): binds and searches, cache hits (near-cache hits included), the
    near-cache hits alone, misses."""
    found: dict[str, int] = {}
    if after["stacks"][target]["ldap"] is not None:
        for name in ("user_binds", "service_binds", "searches"):
            found[name] = _delta(after, before, target, "ldap", name)
    if after["stacks"][target]["cache"] is not None:
        found["local_hits"] = _delta(after, before, target, "cache", "local_hits")
        found["cache_hits"] = (_delta(after, before, target, "cache", "hits")
                               + found["local_hits"])
        found["cache_misses"] = _delta(after, before, target, "cache", "misses")
    return found


def _per_request_us(after: float | None, before: float | None, requests: int) -> float | None:
    if after is None or before is None or not requests:
        return None
    return (after - before) / requests * 1e6


def _median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def _workload(port: int, name: str, targets: list[str], zipf: Zipf, settings: Settings,
              seconds: float, headers: list[str], client_cpus: set[int],
              backends: dict[str, int | None], log: Callable[[str], None],
              label: str) -> dict[str, Any]:
    """Rounds interleaving the stacks, a phase of ``seconds`` each; per-phase and summary
    figures (the Zipf workload: its rounds are cold, then warm, so each is a phase)."""
    rounds_run = settings.rounds
    phase_settings = Settings(**{**vars(settings), "seconds": seconds})
    phases: list[dict[str, Any]] = []
    for r in range(rounds_run):
        shift = r % len(targets)
        order = list(targets[shift:] + targets[:shift])
        for target in order:
            log(f"{label}: {name} round {r + 1}/{rounds_run} {target}")
            before = get_json(port, "/_stats")
            backends_before = {k: process_cpu_seconds(pid) for k, pid in backends.items()}
            phase = load_phase(port, target, phase_settings, zipf, headers,
                               seed=r * 10 + 1, client_cpus=client_cpus)
            backends_after = {k: process_cpu_seconds(pid) for k, pid in backends.items()}
            after = get_json(port, "/_stats")
            cpu = after["cpu_seconds"] - before["cpu_seconds"]
            phase.update({
                "round": r + 1,
                "target": target,
                "cpu_us_per_request": cpu / max(1, phase["requests"]) * 1e6,
                "server_busy": cpu / phase["seconds"],
            })
            for backend in backends:
                phase[f"{backend}_cpu_us_per_request"] = _per_request_us(
                    backends_after[backend], backends_before[backend], phase["requests"])
            phase.update({"user_binds": 0, "service_binds": 0, "searches": 0,
                          **_counters(after, before, target)})
            phase["user_binds_per_1000"] = 1000 * phase["user_binds"] / max(
                1, phase["requests"])
            phases.append(phase)

    def rps_of(target: str, r: int) -> float:
        """The stack's requests/s in round ``r``."""
        return statistics.mean(p["rps"] for p in phases
                               if p["round"] == r and p["target"] == target)

    rounds = range(1, rounds_run + 1)
    warm = range(2, rounds_run + 1) if rounds_run > 1 else rounds
    summary: dict[str, Any] = {}
    for target in targets:
        mine = [p for p in phases if p["target"] == target]
        summary[target] = {
            "rps": statistics.median(p["rps"] for p in mine),
            "p50_ms": statistics.median(p["p50_ms"] for p in mine),
            "p99_ms": statistics.median(p["p99_ms"] for p in mine),
            "requests": sum(p["requests"] for p in mine),
            "errors": sum(p["errors"] for p in mine),
            "user_binds_per_1000_round1": mine[0]["user_binds_per_1000"],
            "user_binds_per_1000_later": (
                statistics.median(p["user_binds_per_1000"] for p in mine[1:])
                if len(mine) > 1 else None),
            "service_binds": sum(p["service_binds"] for p in mine),
            "distinct_users_round1": mine[0]["distinct_users"],
            "cpu_us_per_request": statistics.median(p["cpu_us_per_request"] for p in mine),
            "server_busy": statistics.median(p["server_busy"] for p in mine),
            **{f"{b}_cpu_us_per_request": _median([p[f"{b}_cpu_us_per_request"]
                                                   for p in mine]) for b in backends},
            "rps_over_noauth": (
                1.0 if target == BASELINE
                else statistics.median(rps_of(target, r) / rps_of(BASELINE, r)
                                       for r in rounds)),
        }
    speedups, warm_speedups = {}, {}
    for target in filter(is_cached, targets):
        speedups[target] = statistics.median(
            rps_of(target, r) / rps_of("uncached", r) for r in rounds)
        warm_speedups[target] = statistics.median(
            rps_of(target, r) / rps_of("uncached", r) for r in warm)
    return {"users": len(zipf.cumulative), "seconds": seconds, "phases": phases,
            "summary": summary, "rps_over_uncached": speedups,
            "rps_over_uncached_warm": warm_speedups,
            "warm_rounds": list(warm)}


def _hot_workload(port: int, targets: list[str], zipf: Zipf, settings: Settings,
                 headers: list[str], client_cpus: set[int], server_pid: int | None,
                 backends: dict[str, int | None], log: Callable[[str], None],
                 label: str) -> dict[str, Any]:
    """Every stack against the baseline in sliced ABBA groups (:mod:`benchmarks.abba`),
    over one pool of keep-alive connections; per-stack summary and per-group ratios."""
    schedule = abba.Schedule.abba(BASELINE, targets, settings.hot_groups)
    seconds = len(schedule.slices) * settings.hot_slice_seconds
    log(f"{label}: hot, {settings.hot_groups} ABBA groups per stack, slices of "
        f"{settings.hot_slice_seconds} s ({seconds:.0f} s in all)")
    readers = {"server": lambda: process_cpu_seconds(server_pid),
               **{b: (lambda pid=pid: process_cpu_seconds(pid)) for b, pid in backends.items()}}
    before = get_json(port, "/_stats")
    completions, start, readings = abba.run_clients(
        port, schedule, {t: prepared_requests(t, headers) for t in targets},
        {t: expected_bodies(t, len(headers)) for t in targets}, zipf.draw,
        settings.client_threads, settings.hot_slice_seconds, client_cpus, KeepAlive, readers)
    after = get_json(port, "/_stats")
    measured = abba.analyse(completions, schedule, start, settings.hot_slice_seconds,
                            settings.hot_settle_seconds, readings)
    summary: dict[str, Any] = {}
    for target in targets:
        m = measured["stacks"][target]
        requests = max(1, m["requests"])
        cpu = m["cpu_seconds"]
        row = {
            "rps": m["rps"], "p50_ms": m["p50_ms"], "p99_ms": m["p99_ms"],
            "requests": m["requests"], "errors": m["errors"], "slices": m["slices"],
            "cpu_us_per_request": (None if cpu["server"] is None
                                   else cpu["server"] / requests * 1e6),
            "server_busy": None if cpu["server"] is None else cpu["server"] / m["seconds"],
            **{f"{b}_cpu_us_per_request": (None if cpu[b] is None else cpu[b] / requests * 1e6)
               for b in backends},
            "rps_over_noauth": m["rps_over_baseline"],
        }
        # Counters over the whole workload (the slices' settling requests included).
        row.update(_counters(after, before, target))
        summary[target] = row
    return {"users": len(zipf.cumulative), "slice_seconds": settings.hot_slice_seconds,
            "settle_seconds": settings.hot_settle_seconds,
            "groups_per_stack": settings.hot_groups,
            "groups": measured["groups"], "summary": summary}


def _get(port: int, target: str, header: str) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", f"/{target}", headers={"Authorization": header})
        conn.getresponse().read()
    finally:
        conn.close()


def evaluate_targets(workloads: dict[str, Any]) -> list[dict[str, Any]]:
    """Every target whose stacks ran, met or missed (with the bound a missed Zipf one hit)."""
    found = []
    for workload, numerator, denominator, minimum, meaning in TARGETS:
        w = workloads.get(workload)
        if w is None or numerator not in w["summary"] or denominator not in w["summary"]:
            continue
        groups: list[float] = []
        if denominator == BASELINE:
            ratio = w["summary"][numerator]["rps_over_noauth"]
            groups = [g["ratio"] for g in w.get("groups", []) if g["target"] == numerator]
        else:
            ratio = w["rps_over_uncached_warm"][numerator]
        # A wrong answer on either side (a fast 401, a 500) makes the ratio no measure of
        # serving the app: no target is met with one.
        errors = w["summary"][numerator]["errors"] + w["summary"][denominator]["errors"]
        entry = {"workload": workload, "numerator": numerator, "denominator": denominator,
                 "meaning": meaning, "target": minimum, "ratio": ratio, "errors": errors,
                 "met": ratio >= minimum and errors == 0}
        if len(groups) >= 4:
            # The middle half of the ABBA groups' ratios: how far one group is from the next
            # on this machine (the median's own uncertainty is smaller, by about sqrt(n)).
            quartiles = statistics.quantiles(groups, n=4)
            entry["groups"] = len(groups)
            entry["middle_half"] = [quartiles[0], quartiles[2]]
            interval = abba.median_interval(groups)
            entry["median_ci95"] = list(interval) if interval else None
        if workload == "zipf":
            warm = [p for p in w["phases"] if p["target"] == numerator
                    and p["round"] in w["warm_rounds"]]
            binds = statistics.median(p["user_binds_per_1000"] for p in warm)
            entry["warm_user_binds_per_1000"] = binds
            # Were hits free, the cached stack would run at most this much faster.
            entry["bound_from_misses"] = 1000 / binds if binds else None
        found.append(entry)
    return found


def cpu_table(workloads: dict[str, Any]) -> dict[str, Any]:
    """CPU per request in the hot workload (every cached request a hit), by what it is."""
    hot = workloads.get("hot")
    if hot is None:
        return {}
    rows = {}
    for label, target in (("no authentication", BASELINE),
                          ("our filter, no cache (accept-all authenticator)", FLOOR),
                          ("near-cache hit", "pymemcache+local"),
                          ("memcached hit (pymemcache)", "pymemcache"),
                          ("memcached hit (python-memcached)", "python-memcached"),
                          ("uncached LDAP (ldap3)", "uncached"),
                          ("uncached LDAP (python-ldap)", "uncached[python-ldap]")):
        s = hot["summary"].get(target)
        if s is None:
            continue
        rows[label] = {"target": target,
                       "app_cpu_us": s["cpu_us_per_request"],
                       "over_noauth_us": (s["cpu_us_per_request"]
                                          - hot["summary"][BASELINE]["cpu_us_per_request"]),
                       "server_busy": s["server_busy"],
                       "memcached_cpu_us": s.get("memcached_cpu_us_per_request"),
                       "slapd_cpu_us": s.get("slapd_cpu_us_per_request")}
    return rows


def run(lab: Any, settings: Settings, log: Callable[[str], None], *,
        memcached_url: str | None = None, slapd_url: str | None = None,
        label: str = "http") -> dict[str, Any]:
    """Both workloads against the lab's servers, or against ``memcached_url`` /
    ``slapd_url`` (the same servers reached across a delaying relay)."""
    port = free_port()
    slapd_url = slapd_url or lab.slapd.url
    python_ldap = stacks.python_ldap_unavailable(slapd_url)
    targets = list(BASE_TARGETS) + (list(PYTHON_LDAP_TARGETS) if python_ldap is None else [])
    config = {
        "port": port,
        "slapd_url": slapd_url,
        "memcached_url": memcached_url or lab.memcached.url,
        "server_threads": settings.server_threads,
        "targets": targets,
    }
    client_cpus = set(lab.all_cpus) - {lab.cpu}
    users = min(settings.users, lab.users)
    hot_users = min(settings.hot_users, users)
    headers = [stacks.basic_header(servers.login_of(i), servers.password_of(i))
               for i in range(users)]
    backends = {"memcached": getattr(lab.memcached.process, "pid", None),
                "slapd": getattr(lab.slapd.process, "pid", None)}
    workloads = {}
    services = [backends["memcached"], backends["slapd"]]
    with servers.PinnedElsewhere(services, client_cpus or {lab.cpu}), \
            ServerProcess(config, lab.cpu) as server:
        # Warm the stacks' LDAP pools and connections with a user outside the Zipf draw.
        for target in targets:
            _get(port, target, stacks.basic_header("bob", "builder"))
        slapd_binds_before = lab.slapd.user_binds()
        workloads["zipf"] = _workload(port, "zipf", targets, Zipf(users, settings.zipf_s),
                                      settings, settings.seconds, headers, client_cpus,
                                      backends, log, label)
        counted = sum(p["user_binds"] for p in workloads["zipf"]["phases"])
        slapd_binds = lab.slapd.user_binds() - slapd_binds_before
        # Hot: the most popular users only, cached beforehand: the cached stacks never miss.
        log(f"{label}: caching the {hot_users} hot users")
        for target in filter(is_cached, targets):
            for i in range(hot_users):
                _get(port, target, headers[i])
        workloads["hot"] = _hot_workload(port, targets, Zipf(hot_users, settings.zipf_s),
                                         settings, headers, client_cpus, server.pid,
                                         backends, log, label)
    return {
        "workloads": workloads,
        "targets": evaluate_targets(workloads),
        "cpu_per_request": cpu_table(workloads),
        "python_ldap": python_ldap or "available: the [python-ldap] stacks use it",
        "refresh_ahead": "not used: no entry expires within a run (ttl = "
                         f"{stacks.TTL} s), so refresh-ahead has nothing to refresh",
        "user_binds_counted": counted,
        "user_binds_in_slapd_log": slapd_binds,
        "client_cpus": sorted(client_cpus) or [lab.cpu],
        "services_cpus": sorted(client_cpus) or [lab.cpu],
        "server_cpu": lab.cpu,
        "memcached_url": config["memcached_url"],
        "slapd_url": config["slapd_url"],
        "settings": vars(settings),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--serve", required=True, help="JSON config")
    args = parser.parse_args()
    serve(json.loads(args.serve))


if __name__ == "__main__":
    main()
