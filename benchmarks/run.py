"""Entry point: ``python -m benchmarks.run [--quick] [--only SECTION ...]`` (``make bench``).

Starts a private slapd (the packaged sample users plus generated ones) and memcached, all
pinned to one CPU core with this process, runs the sections and writes
``benchmarks/results/latest.{md,png,json}`` (``quick.*`` with ``--quick``, so a development
run never overwrites the committed figures).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import latency, link, load, report, scale, servers, throughput

RESULTS_DIR = Path(__file__).parent / "results"
SECTIONS = ("latency", "http", "latency-link", "load", "scale")


@dataclass
class Mode:
    name: str
    users: int
    latency: latency.Settings
    http: throughput.Settings
    load: load.Settings
    scale: scale.Settings
    link: link.Settings


QUICK = Mode(
    name="quick",
    users=1000,
    latency=latency.Settings(rounds=5, batch_seconds=0.02, profile_calls=500),
    http=throughput.Settings(rounds=2, seconds=1.0, client_threads=8, server_threads=4,
                             users=1000, zipf_s=1.1, hot_users=50, hot_groups=4,
                             hot_slice_seconds=0.2),
    load=load.Settings(threads=50, processes=2, trials=1, lock_timeout=2),
    scale=scale.Settings(fills=(1, 10_000), sample=200, rounds=5, batch_seconds=0.02),
    link=link.Settings(rounds=5, batch_seconds=0.02, http=throughput.Settings(
        rounds=2, seconds=1.0, client_threads=8, server_threads=4, users=1000, zipf_s=1.1,
        hot_users=50, hot_groups=2, hot_slice_seconds=0.2)),
)
FULL = Mode(
    name="full",
    users=10_000,
    latency=latency.Settings(rounds=15, batch_seconds=0.05, profile_calls=5000),
    http=throughput.Settings(rounds=3, seconds=4.0, client_threads=16, server_threads=8,
                             users=10_000, zipf_s=1.1, hot_users=100, hot_groups=40,
                             hot_slice_seconds=0.25),
    load=load.Settings(threads=50, processes=3, trials=3, lock_timeout=5),
    scale=scale.Settings(fills=(1, 10_000, 1_000_000), sample=1000, rounds=15,
                         batch_seconds=0.04),
    link=link.Settings(rounds=11, batch_seconds=0.05, http=throughput.Settings(
        rounds=3, seconds=3.0, client_threads=16, server_threads=8, users=10_000, zipf_s=1.1,
        hot_users=100, hot_groups=12, hot_slice_seconds=0.25)),
)


class Lab:
    """The servers every section shares: slapd with the benchmark users, one memcached."""

    def __init__(self, workdir: Path, users: int, cpu: int, all_cpus: list[int]) -> None:
        self.workdir = workdir
        self.users = users
        self.cpu = cpu
        self.all_cpus = all_cpus  # the machine's, before this process pinned itself
        ldif = servers.write_benchmark_ldif(workdir / "users.ldif", users)
        self.slapd = servers.PinnedSlapd(cpus=str(cpu), ldif=ldif)
        self.memcached = servers.PinnedMemcached(cpus=str(cpu), memory_mb=256)

    def __enter__(self) -> Lab:
        self._stack = contextlib.ExitStack()
        self._stack.enter_context(self.slapd)
        self._stack.enter_context(self.memcached)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._stack.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument("--quick", action="store_true",
                        help="a short run for development (writes quick.*)")
    parser.add_argument("--only", action="append", choices=SECTIONS,
                        help="run only this section (repeatable)")
    parser.add_argument("--output", type=Path, default=None,
                        help="results directory (default benchmarks/results)")
    parser.add_argument("--name", default=None,
                        help="base name of the result files (default latest, or quick)")
    parser.add_argument("--cpu", type=int, default=None,
                        help="the core that client and servers share (default: the first)")
    args = parser.parse_args(argv)

    mode = QUICK if args.quick else FULL
    sections = args.only or list(SECTIONS)
    out_dir = args.output or RESULTS_DIR
    name = args.name or ("quick" if args.quick else "latest")
    all_cpus = servers.available_cpus()
    cpu = args.cpu if args.cpu is not None else all_cpus[0]

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    started = time.monotonic()

    def log(message: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {message}", file=sys.stderr, flush=True)

    environment = report.collect_environment()
    others = [c for c in all_cpus if c != cpu] or [cpu]
    environment["pinning"] = (
        f"the benchmark process and every server (memcached, slapd, waitress) on CPU {cpu} "
        f"(`taskset -c {cpu}`), but in the HTTP sections (http, latency-link), where "
        f"waitress has CPU {cpu} alone and memcached and slapd move to CPU {others} beside "
        f"the HTTP load generator's threads and the delaying relay; the "
        f"load-test workers on CPUs {all_cpus}; machine CPUs {all_cpus}")
    results: dict[str, Any] = {
        "mode": mode.name,
        "sections": sections,
        "environment": environment,
        "settings": {
            "users_in_ldap": mode.users,
            "latency": vars(mode.latency),
            "http": vars(mode.http),
            "load": vars(mode.load),
            "scale": {**vars(mode.scale), "fills": list(mode.scale.fills)},
            "latency-link": {"rounds": mode.link.rounds,
                             "batch_seconds": mode.link.batch_seconds,
                             "delay": mode.link.delay, "http": vars(mode.link.http)},
        },
    }
    servers.pin_to({cpu})
    with tempfile.TemporaryDirectory(prefix="rwm-bench-") as tmp:
        if set(sections) & {"latency", "http", "latency-link", "load"}:
            log(f"mode {mode.name}: starting slapd ({mode.users} generated users) and "
                "memcached")
            with Lab(Path(tmp), mode.users, cpu, all_cpus) as lab:
                environment["slapd_indexes"] = (
                    "equality indexes on uid and objectClass" if lab.slapd.indexed
                    else "NO indexes: the test server's config changed shape")
                if "latency" in sections:
                    results["latency"] = latency.run(lab, mode.latency, log)
                if "http" in sections:
                    results["http"] = throughput.run(lab, mode.http, log)
                if "latency-link" in sections:
                    results["latency-link"] = link.run(lab, mode.link, log)
                if "load" in sections:
                    results["load"] = load.run(lab, mode.load, log)
                log("stopping slapd and memcached")
        if "scale" in sections:
            results["scale"] = scale.run(Path(tmp), cpu, mode.scale, log)
    log("writing the report and chart")
    results["elapsed_seconds"] = time.monotonic() - started

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.json").write_text(json.dumps(results, indent=1, default=str) + "\n",
                                         encoding="utf-8")
    chart = report.write_chart(results, out_dir / f"{name}.png")
    (out_dir / f"{name}.md").write_text(report.markdown(results, chart.name), encoding="utf-8")
    log(f"wrote {out_dir / name}.md, .png, .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
