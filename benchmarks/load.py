"""Backend load: many concurrent first requests for one identity, in one or several processes.

Each worker process (``python -m benchmarks.load --worker CONFIG``) builds our filter with
the cache wrapping our LDAP authenticator and starts ``threads`` long-lived request threads
(as a WSGI server has), each of which makes one request for another user, one at a time.
Then, for each trial, all its threads send the same new identity at the same moment (a
wall-clock instant the parent chose, shared by every process). The parent counts
the binds as that user's DN in slapd's log; each worker reports its own authenticator's
user binds.

Expected: one bind per process without ``lock_timeout`` (the plugin coalesces concurrent
misses in-process); one bind in all with ``lock_timeout`` (a memcached ``add`` lock makes
the other processes wait for the entry instead of asking LDAP).
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from repoze_who_memcached.plugin import ENVIRON_KEY

from . import servers, stacks
from .throughput import REPO_ROOT

CLIENTS = ("python-memcached", "pymemcache")


@dataclass
class Settings:
    threads: int
    processes: int
    trials: int
    lock_timeout: int


# ------------------------------------------------------------------ the worker process


class _Threads:
    """Long-lived request threads, like a WSGI server's: each has made one request (one at a
    time, so no pool grows beyond one connection) before any trial."""

    def __init__(self, middleware: Any, count: int) -> None:
        self.middleware = middleware
        self.jobs: list[queue.Queue] = [queue.Queue() for _ in range(count)]
        self.done: queue.Queue = queue.Queue()
        self.threads = [threading.Thread(target=self._serve, args=(i,), daemon=True)
                        for i in range(count)]
        for thread in self.threads:
            thread.start()
        warm = stacks.basic_environ("bob", "builder")
        ready = threading.Event()
        ready.set()
        for jobs in self.jobs:  # one after another
            jobs.put((warm, ready))
            self.done.get()

    def _serve(self, i: int) -> None:
        while True:
            job = self.jobs[i].get()
            if job is None:
                return
            environ, go = job
            go.wait()
            begin = time.perf_counter()
            env = stacks.call(self.middleware, environ)
            outcome = env.get(ENVIRON_KEY, {}).get("cache", {}).get("authenticate")
            self.done.put((env.get("REMOTE_USER"), time.perf_counter() - begin, outcome))

    def burst(self, environ: dict, at: float) -> list[tuple[Any, float, Any]]:
        """Every thread sends ``environ`` at the wall-clock instant ``at``."""
        go = threading.Event()
        for jobs in self.jobs:
            jobs.put((environ, go))
        delay = at - time.time()
        if delay > 0:
            time.sleep(delay)
        go.set()
        return [self.done.get() for _ in self.jobs]


def worker(config: dict[str, Any]) -> None:
    options = {"key_prefix": config["key_prefix"], **config.get("cache_options", {})}
    if config["lock_timeout"]:
        options["lock_timeout"] = str(config["lock_timeout"])
    mw = stacks.our_cached(stacks.hello_app, [config["memcached_url"]], config["client"],
                           slapd_url=config["slapd_url"], **options)
    plugin = stacks.cache_plugin(mw)
    ldap = plugin.authenticator
    threads = _Threads(mw, config["threads"])
    print(json.dumps({"ready": True, "pid": os.getpid()}), flush=True)
    for line in sys.stdin:
        message = json.loads(line)
        if message.get("quit"):
            break
        environ = stacks.basic_environ(message["login"], message["password"])
        ldap_before = ldap.counters()
        cache_before = plugin.counters.snapshot()
        results = threads.burst(environ, message["at"])
        ldap_after = ldap.counters()
        cache_after = plugin.counters.snapshot()
        print(json.dumps({
            "pid": os.getpid(),
            "answered_right": sum(1 for user, _, _ in results if user == message["login"]),
            "slowest_ms": max(t for _, t, _ in results) * 1e3,
            "outcomes": dict(Counter(str(o) for _, _, o in results)),
            "user_binds": ldap_after["user_binds"] - ldap_before["user_binds"],
            "coalesced": cache_after["coalesced"] - cache_before["coalesced"],
            "lock_waits": cache_after["lock_waits"] - cache_before["lock_waits"],
            "backend_calls": cache_after["backend_calls"] - cache_before["backend_calls"],
            "cache_errors": cache_after["cache_errors"] - cache_before["cache_errors"],
        }), flush=True)


# ------------------------------------------------------------------ the parent


class Workers:
    def __init__(self, count: int, config: dict[str, Any], cpus: list[int]) -> None:
        self.count = count
        self.config = config
        self.cpus = cpus
        self.processes: list[subprocess.Popen] = []

    def __enter__(self) -> Workers:
        command = [sys.executable, "-m", "benchmarks.load", "--worker", json.dumps(self.config)]
        if os.path.exists(servers.TASKSET):
            command = [servers.TASKSET, "-c", ",".join(map(str, self.cpus)), *command]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
        for _ in range(self.count):
            self.processes.append(subprocess.Popen(
                command, cwd=REPO_ROOT, env=env, stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, text=True, start_new_session=True))
        for process in self.processes:
            reply = self._read(process)
            if not reply.get("ready"):
                raise RuntimeError(f"load worker did not start: {reply}")
        return self

    @staticmethod
    def _read(process: subprocess.Popen) -> dict[str, Any]:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line:
            raise RuntimeError(f"load worker {process.pid} exited ({process.wait(5)})")
        return json.loads(line)

    def trial(self, login: str, password: str) -> list[dict[str, Any]]:
        at = time.time() + 0.3  # every process releases its threads at this instant
        for process in self.processes:
            assert process.stdin is not None
            process.stdin.write(json.dumps({"login": login, "password": password,
                                            "at": at}) + "\n")
            process.stdin.flush()
        return [self._read(process) for process in self.processes]

    def __exit__(self, *exc_info: Any) -> None:
        for process in self.processes:
            try:
                assert process.stdin is not None
                process.stdin.write(json.dumps({"quit": True}) + "\n")
                process.stdin.close()
                process.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                process.kill()
                process.wait(5)


def run(lab: Any, settings: Settings, log: Callable[[str], None]) -> dict[str, Any]:
    scenarios = []
    next_user = lab.users - 1  # the least popular generated users: cold everywhere
    plans: list[tuple[str, int, int, dict[str, str]]] = []
    for client in CLIENTS:
        plans += [(client, 1, 0, {}), (client, settings.processes, 0, {}),
                  (client, settings.processes, settings.lock_timeout, {})]
    for n, (client, processes, lock_timeout, cache_options) in enumerate(plans):
        name = (f"{processes} process{'es' if processes > 1 else ''} x "
                f"{settings.threads} threads, "
                + (f"lock_timeout={lock_timeout}" if lock_timeout else "no lock_timeout")
                + "".join(f", {k}={v}" for k, v in cache_options.items()))
        # One bind in all (one process, or a cluster-wide lock), else at most one per
        # process (a process whose threads arrive after another stored the entry has none).
        one_in_all = processes == 1 or bool(lock_timeout)
        expected = "1" if one_in_all else f"≤ 1 per process (≤ {processes} in all)"
        config = {
            "client": client,
            "slapd_url": lab.slapd.url,
            "memcached_url": lab.memcached.url,
            "lock_timeout": lock_timeout,
            "key_prefix": f"load-{n}:",
            "threads": settings.threads,
            "cache_options": cache_options,
        }
        log(f"load: {client}: {name}")
        trials = []
        with Workers(processes, config, lab.all_cpus) as workers:
            for _ in range(settings.trials):
                login = servers.login_of(next_user)
                password = servers.password_of(next_user)
                next_user -= 1
                before = lab.slapd.user_binds(login)
                replies = workers.trial(login, password)
                in_log = lab.slapd.user_binds(login) - before
                trials.append({
                    "login": login,
                    "binds_in_slapd_log": in_log,
                    "binds_per_process": [r["user_binds"] for r in replies],
                    "answered_right": sum(r["answered_right"] for r in replies),
                    "requests": processes * settings.threads,
                    "slowest_ms": max(r["slowest_ms"] for r in replies),
                    "coalesced": sum(r["coalesced"] for r in replies),
                    "lock_waits": sum(r["lock_waits"] for r in replies),
                    "cache_errors": sum(r["cache_errors"] for r in replies),
                    "outcomes": [r["outcomes"] for r in replies],
                })
        met = all(
            (t["binds_in_slapd_log"] == 1 if one_in_all
             else 1 <= t["binds_in_slapd_log"] <= processes)
            and t["answered_right"] == t["requests"]
            and all(b <= 1 for b in t["binds_per_process"])
            for t in trials
        )
        scenarios.append({
            "client": client,
            "scenario": name,
            "processes": processes,
            "threads": settings.threads,
            "lock_timeout": lock_timeout,
            "expected_binds": expected,
            "trials": trials,
            "met": met,
        })
    return {"scenarios": scenarios, "settings": vars(settings)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", required=True, help="JSON config")
    args = parser.parse_args()
    worker(json.loads(args.worker))


if __name__ == "__main__":
    main()
