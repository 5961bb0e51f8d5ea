"""Across a data-centre link: memcached and slapd reached through a delaying relay.

On loopback a memcached round trip costs tens of µs; in production memcached and slapd are
on other hosts, about half a millisecond away. This section puts our delaying TCP relay
(:mod:`benchmarks.relay`, 0.25 ms each way, and one more round trip for the handshake of
each new connection: every uncached LDAP login opens one to bind) between the app and both
servers, and measures what the cache is worth there:

* in-process latency, interleaved rounds: our LDAP authenticator uncached, our memcached
  hit (both clients), our near-cache hit (``local_ttl = 60``), a raw-socket memcached get
  through the relay (the link's own round trip), and the same uncached and hit cases on
  plain loopback, side by side in the same rounds (what the link adds);
* the HTTP workloads of :mod:`benchmarks.throughput` (waitress, keep-alive clients, a
  no-auth baseline, CPU per request) with the server reaching memcached and slapd through
  the relay.

The relay runs as a process of its own, on the cores the load generator uses, not the
server's: the link's forwarding costs neither the measured process's GIL nor the server
core's CPU, as a real network's does not. The relay process is started and stopped here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from repoze_who_memcached.testing import LOOPBACK, free_port, wait_for_port

from . import harness, latency, servers, stacks, throughput
from .relay import DATA_CENTRE_DELAY

CLIENTS = latency.CLIENTS
LOGIN, PASSWORD = latency.LOGIN, latency.PASSWORD


@dataclass
class Settings:
    rounds: int
    batch_seconds: float
    http: throughput.Settings
    delay: float = DATA_CENTRE_DELAY


class RelayProcess:
    """``python -m benchmarks.relay`` in a subprocess pinned to ``cpus``, one route per
    target; stopped (SIGTERM, then SIGKILL) by its pid on exit."""

    def __init__(self, targets: dict[str, tuple[str, int]], delay: float,
                 cpus: list[int]) -> None:
        self.ports = {name: free_port() for name in targets}
        self.targets = targets
        self.delay = delay
        self.cpus = cpus
        self.process: subprocess.Popen | None = None

    def url(self, name: str) -> str:
        return f"{LOOPBACK}:{self.ports[name]}"

    def __enter__(self) -> RelayProcess:
        routes = [f"{self.ports[name]}={host}:{port}"
                  for name, (host, port) in self.targets.items()]
        command = [sys.executable, "-m", "benchmarks.relay", "--delay", repr(self.delay),
                   "--connect-round-trip", *routes]
        if os.path.exists(servers.TASKSET):
            command = [servers.TASKSET, "-c", ",".join(map(str, self.cpus)), *command]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [str(throughput.REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
        self.process = subprocess.Popen(command, cwd=throughput.REPO_ROOT, env=env,
                                        start_new_session=True)
        try:
            for port in self.ports.values():
                wait_for_port(LOOPBACK, port, 15, self.process)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def build_cases(lab: Any, relay: RelayProcess) -> tuple[dict[str, Callable[[], Any]], list]:
    """The link's latency cases, each checked once (right user; hits are hits)."""
    app = stacks.hello_app
    environ = stacks.basic_environ(LOGIN, PASSWORD)
    slapd_across = f"ldap://{relay.url('slapd')}"
    memcached_across = [relay.url("memcached")]
    cases: dict[str, Callable[[], Any]] = {}
    closers: list = []

    for name, slapd_url in (("ldap_uncached@link", slapd_across),
                            ("ldap_uncached@loopback", lab.slapd.url)):
        mw = stacks.our_ldap_uncached(app, slapd_url)
        latency._expect_user(stacks.call(mw, environ), name)
        cases[name] = stacks.wsgi_case(mw, environ)

    for client in CLIENTS:
        name = f"ours_hit[{client}]@link"
        mw = stacks.our_cached(app, memcached_across, client, slapd_url=slapd_across,
                               key_prefix=f"link-{client}:")
        stacks.call(mw, environ)  # the miss that fills the cache
        latency._expect_hit(stacks.call(mw, environ), name)
        cases[name] = stacks.wsgi_case(mw, environ)

    name = "ours_hit[pymemcache]@loopback"
    loopback_hit = stacks.our_cached(app, [lab.memcached.url], "pymemcache",
                                     slapd_url=lab.slapd.url,
                                     key_prefix="link-loopback-pymemcache:")
    stacks.call(loopback_hit, environ)  # the miss (the directory's address is in the keys)
    latency._expect_hit(stacks.call(loopback_hit, environ), name)
    cases[name] = stacks.wsgi_case(loopback_hit, environ)

    name = "ours_local_hit[pymemcache]@link"
    mw = stacks.our_cached(app, memcached_across, "pymemcache", slapd_url=slapd_across,
                           key_prefix="link-pymemcache:", local_ttl=throughput.LOCAL_TTL)
    latency._expect_hit(stacks.call(mw, environ), name)  # from memcached, kept in memory
    latency._expect_hit(stacks.call(mw, environ), name, "local_hit")
    cases[name] = stacks.wsgi_case(mw, environ)

    cases["our_floor"] = stacks.wsgi_case(stacks.our_floor(app), environ)

    # The link's own cost: one raw get of our entry through the relay, and on loopback.
    _args, _kwargs, found = latency.record_hit(loopback_hit, environ)
    entry_key = next(k for k, v in found.items() if len(v) > 64)
    host, port = relay.url("memcached").rsplit(":", 1)
    for name, (h, p) in (("raw_get@link", (host, int(port))),
                         ("raw_get@loopback", (lab.memcached.host, lab.memcached.port))):
        raw = latency.RawMemcached(h, p)
        closers.append(raw)
        cases[name] = raw.getter([entry_key])
    return cases, closers


RATIOS = (
    ("ldap_uncached@link", "ours_hit[pymemcache]@link"),
    ("ldap_uncached@link", "ours_hit[python-memcached]@link"),
    ("ldap_uncached@link", "ours_local_hit[pymemcache]@link"),
    ("ours_hit[pymemcache]@link", "ours_local_hit[pymemcache]@link"),
    ("ldap_uncached@link", "ldap_uncached@loopback"),
    ("ours_hit[pymemcache]@link", "ours_hit[pymemcache]@loopback"),
    ("raw_get@link", "raw_get@loopback"),
)


def run(lab: Any, settings: Settings, log: Callable[[str], None]) -> dict[str, Any]:
    others = [c for c in lab.all_cpus if c != lab.cpu] or [lab.cpu]
    targets = {"memcached": (lab.memcached.host, lab.memcached.port),
               "slapd": (lab.slapd.host, lab.slapd.port)}
    log(f"latency-link: starting the relay ({settings.delay * 1e3:.2f} ms each way) on "
        f"CPU {others}")
    with RelayProcess(targets, settings.delay, others) as relay:
        cases, closers = build_cases(lab, relay)
        log(f"latency-link: {len(cases)} cases x {settings.rounds} rounds")
        try:
            series = harness.interleaved(cases, rounds=settings.rounds,
                                         batch_seconds=settings.batch_seconds)
        finally:
            for raw in closers:
                raw.close()
        ratios = {}
        for numerator, denominator in RATIOS:
            r = harness.ratio(series, numerator, denominator)
            ratios[f"{numerator} / {denominator}"] = {"ratio": r.median, "spread": r.spread}
        http = throughput.run(lab, settings.http, log, memcached_url=relay.url("memcached"),
                              slapd_url=f"ldap://{relay.url('slapd')}", label="latency-link")
        log("latency-link: stopping the relay")
    return {
        "delay_ms_each_way": settings.delay * 1e3,
        "relay_cpus": others,
        "cases": {name: s.as_dict() for name, s in series.items()},
        "ratios": ratios,
        "http": http,
        "settings": {"rounds": settings.rounds, "batch_seconds": settings.batch_seconds,
                     "delay": settings.delay, "http": vars(settings.http)},
    }
