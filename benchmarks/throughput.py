"""Throughput over HTTP: waitress in a subprocess, a keep-alive client with several threads.

The server process (``python -m benchmarks.throughput --serve CONFIG``) serves four stacks
of our filter in front of one tiny app, by path: ``/uncached`` (our LDAP authenticator, no
cache), ``/python-memcached``, ``/pymemcache`` and ``/pymemcache+local`` (cached, the last
with the near cache on, ``local_ttl = 60``; each its own ``key_prefix``, so each starts
cold). ``/_stats`` returns the LDAP authenticators' and caches' counters.

The server stack (waitress, memcached, slapd) shares one core, like the other sections;
the load generator runs on the other core(s), so it does not take CPU from the server.
Two workloads. *zipf*: users drawn from a Zipf distribution over the generated LDAP users;
rounds interleave the stacks; round 1 of a cached stack starts from an empty cache
(cold), later rounds find what earlier rounds cached (warm). *hot*: the most popular users
only, cached beforehand, so the cached stacks never miss: the cache's own capacity.

LDAP binds per 1000 requests are user binds (a bind as the user's DN, counted by the
authenticator and cross-checked against slapd's log); service binds (the pooled search
connections) are reported apart.
"""

from __future__ import annotations

import argparse
import bisect
import http.client
import itertools
import json
import os
import random
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

from . import harness, servers, stacks

TARGETS = ("uncached", "python-memcached", "pymemcache", "pymemcache+local")
CACHED = TARGETS[1:]
LOCAL_TTL = "60"
REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Settings:
    rounds: int
    seconds: float
    client_threads: int
    server_threads: int
    users: int
    zipf_s: float
    hot_users: int = 100
    hot_seconds: float = 2.0


# ------------------------------------------------------------------ the server process


def _ldap_of(middleware: Any) -> Any:
    caches = getattr(middleware, "cache_plugins", [])
    if caches:
        return caches[0].authenticator
    return middleware.api_factory.authenticators[0][1]


def build_server_app(config: dict[str, Any]) -> Callable:
    app = stacks.hello_app
    pool = config["server_threads"]
    stacks_by_name = {
        "uncached": stacks.our_ldap_uncached(app, config["slapd_url"], pool_size=pool),
    }
    for client in ("python-memcached", "pymemcache"):
        stacks_by_name[client] = stacks.our_cached(
            app, [config["memcached_url"]], client, slapd_url=config["slapd_url"],
            pool_size=pool, key_prefix=f"http-{client}:")
    stacks_by_name["pymemcache+local"] = stacks.our_cached(
        app, [config["memcached_url"]], "pymemcache", slapd_url=config["slapd_url"],
        pool_size=pool, key_prefix="http-pymemcache-local:", local_ttl=LOCAL_TTL)

    def stats() -> dict[str, Any]:
        result = {}
        for name, mw in stacks_by_name.items():
            caches = getattr(mw, "cache_plugins", [])
            result[name] = {
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


def load_phase(port: int, target: str, settings: Settings, zipf: Zipf, headers: list[str],
               seed: int, client_cpus: set[int]) -> dict[str, Any]:
    """``client_threads`` keep-alive connections hammering ``/target`` for ``seconds``."""
    threads = settings.client_threads
    latencies: list[list[float]] = [[] for _ in range(threads)]
    errors = [0] * threads
    seen: list[set[int]] = [set() for _ in range(threads)]
    start_line = threading.Barrier(threads + 1)
    stop_at = [0.0]

    def worker(t: int) -> None:
        if client_cpus:
            os.sched_setaffinity(0, client_cpus)
        rng = random.Random(seed * 1000 + t)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        path = f"/{target}"
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
                conn.request("GET", path, headers={"Authorization": headers[user]})
                response = conn.getresponse()
                body = response.read()
                mine.append(clock() - begin)
                users.add(user)
                if response.status != 200 or body != servers.login_of(user).encode():
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
        thread.join()
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


def _delta(after: dict, before: dict, target: str, kind: str, name: str) -> int:
    return after[target][kind][name] - before[target][kind][name]


def _workload(port: int, name: str, zipf: Zipf, settings: Settings, seconds: float,
              headers: list[str], client_cpus: set[int],
              log: Callable[[str], None]) -> dict[str, Any]:
    """Rounds interleaving the stacks; per-phase and summary figures."""
    phase_settings = Settings(**{**vars(settings), "seconds": seconds})
    phases: list[dict[str, Any]] = []
    for r in range(settings.rounds):
        shift = r % len(TARGETS)
        order = list(TARGETS[shift:] + TARGETS[:shift])
        for target in order:
            log(f"http: {name} round {r + 1}/{settings.rounds} {target}")
            before = get_json(port, "/_stats")
            phase = load_phase(port, target, phase_settings, zipf, headers,
                               seed=r * 10 + 1, client_cpus=client_cpus)
            after = get_json(port, "/_stats")
            phase.update({
                "round": r + 1,
                "target": target,
                "user_binds": _delta(after, before, target, "ldap", "user_binds"),
                "service_binds": _delta(after, before, target, "ldap", "service_binds"),
                "searches": _delta(after, before, target, "ldap", "searches"),
            })
            phase["user_binds_per_1000"] = 1000 * phase["user_binds"] / max(
                1, phase["requests"])
            if after[target]["cache"] is not None:
                phase["local_hits"] = _delta(after, before, target, "cache", "local_hits")
                phase["cache_hits"] = (_delta(after, before, target, "cache", "hits")
                                       + phase["local_hits"])
                phase["cache_misses"] = _delta(after, before, target, "cache", "misses")
            phases.append(phase)

    summary: dict[str, Any] = {}
    for target in TARGETS:
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
        }
    speedups = {}
    for target in CACHED:
        per_round = [
            next(p["rps"] for p in phases if p["round"] == r and p["target"] == target)
            / next(p["rps"] for p in phases if p["round"] == r and p["target"] == "uncached")
            for r in range(1, settings.rounds + 1)
        ]
        speedups[target] = statistics.median(per_round)
    return {"users": len(zipf.cumulative), "seconds": seconds, "phases": phases,
            "summary": summary, "rps_over_uncached": speedups}


def _get(port: int, target: str, header: str) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", f"/{target}", headers={"Authorization": header})
        conn.getresponse().read()
    finally:
        conn.close()


def run(lab: Any, settings: Settings, log: Callable[[str], None]) -> dict[str, Any]:
    port = free_port()
    config = {
        "port": port,
        "slapd_url": lab.slapd.url,
        "memcached_url": lab.memcached.url,
        "server_threads": settings.server_threads,
    }
    client_cpus = set(lab.all_cpus) - {lab.cpu}
    users = min(settings.users, lab.users)
    hot_users = min(settings.hot_users, users)
    headers = [stacks.basic_header(servers.login_of(i), servers.password_of(i))
               for i in range(users)]
    workloads = {}
    with ServerProcess(config, lab.cpu):
        # Warm the stacks' LDAP pools and connections with a user outside the Zipf draw.
        for target in TARGETS:
            _get(port, target, stacks.basic_header("bob", "builder"))
        slapd_binds_before = lab.slapd.user_binds()
        workloads["zipf"] = _workload(port, "zipf", Zipf(users, settings.zipf_s), settings,
                                      settings.seconds, headers, client_cpus, log)
        counted = sum(p["user_binds"] for p in workloads["zipf"]["phases"])
        slapd_binds = lab.slapd.user_binds() - slapd_binds_before
        # Hot: the most popular users only, cached beforehand: the cached stacks never miss.
        log(f"http: caching the {hot_users} hot users")
        for target in CACHED:
            for i in range(hot_users):
                _get(port, target, headers[i])
        workloads["hot"] = _workload(port, "hot", Zipf(hot_users, settings.zipf_s), settings,
                                     settings.hot_seconds, headers, client_cpus, log)
    return {
        "workloads": workloads,
        "user_binds_counted": counted,
        "user_binds_in_slapd_log": slapd_binds,
        "client_cpus": sorted(client_cpus) or [lab.cpu],
        "server_cpu": lab.cpu,
        "settings": vars(settings),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--serve", required=True, help="JSON config")
    args = parser.parse_args()
    serve(json.loads(args.serve))


if __name__ == "__main__":
    main()
