"""Lab check of the sliced ABBA measurement (benchmarks/abba.py) against known costs.

Not part of ``make bench``. The real HTTP server (waitress pinned to CPU 0, as in
benchmarks/throughput.py) serves the bare app as ``noauth``, an identical copy of it
(``noauth-copy``: an A/A test, whose true ratio is 1) and ``burn<N>`` stacks: the bare app
after N iterations of an empty loop, whose extra CPU per request is calibrated in process.
The server being saturated, a stack's requests/s over the baseline's should be the
baseline's CPU per request over the stack's; this script prints what the sliced ABBA
method measures, what 1 s phases in ABBA groups with their own connections (the method of
9d98f97) measure, and what the calibration and steady phases say they should be.

    cd <repo> && PYTHONPATH=. python -m benchmarks.abba_check --burn-us 21 80 --groups 20
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import tempfile
import time
from array import array
from pathlib import Path
from typing import Any

from . import abba, servers, stacks, throughput

SERVER_CPU = 0
CLIENT_CPUS = {1}


def loop_seconds(iterations: int, calls: int) -> float:
    """CPU seconds per call of the burn loop (the process's own time: other processes on
    the core do not count)."""
    burned = throughput.burning(lambda environ, start_response: [], iterations)
    begin = time.process_time()
    for _ in range(calls):
        burned({}, None)
    return (time.process_time() - begin) / calls


def calibrate(targets_us: list[float], iterations_given: list[int]) -> dict[int, float]:
    """Iterations for each wanted µs (or as given), and each one's µs per call (median of
    7 runs), on the server's core."""
    mask = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {SERVER_CPU})
    try:
        per_iteration = loop_seconds(200_000, 20) / 200_000
        found = {}
        wanted = iterations_given or [max(1, round(us * 1e-6 / per_iteration))
                                      for us in targets_us]
        for iterations in wanted:
            calls = max(200, int(0.2 / (iterations * per_iteration)))
            found[iterations] = statistics.median(
                loop_seconds(iterations, calls) for _ in range(7)) * 1e6
        found[0] = statistics.median(loop_seconds(0, 20000) for _ in range(7)) * 1e6
        return found
    finally:
        os.sched_setaffinity(0, mask)


def settings_for(seconds: float) -> throughput.Settings:
    return throughput.Settings(rounds=1, seconds=seconds, client_threads=16,
                               server_threads=8, users=100, zipf_s=1.1)


def phase(port: int, target: str, seconds: float, zipf: throughput.Zipf,
          headers: list[str]) -> dict[str, Any]:
    """A phase with its own connections (``load_phase``) and the server's CPU over it."""
    before = throughput.get_json(port, "/_stats")["cpu_seconds"]
    measured = throughput.load_phase(port, target, settings_for(seconds), zipf, headers,
                                     seed=1, client_cpus=CLIENT_CPUS)
    cpu = throughput.get_json(port, "/_stats")["cpu_seconds"] - before
    measured["cpu_us"] = cpu / max(1, measured["requests"]) * 1e6
    measured["busy"] = cpu / measured["seconds"]
    return measured


def steady(port: int, stacks_run: list[str], rounds: int, seconds: float,
           zipf: throughput.Zipf, headers: list[str]) -> dict[str, dict[str, float]]:
    """Each stack's server CPU per request over phases of ``seconds``, interleaved."""
    found: dict[str, list[dict[str, Any]]] = {s: [] for s in stacks_run}
    for _ in range(rounds):
        for target in stacks_run:
            found[target].append(phase(port, target, seconds, zipf, headers))
    return {t: {"cpu_us": statistics.median(p["cpu_us"] for p in ps),
                "rps": statistics.median(p["rps"] for p in ps),
                "busy": statistics.median(p["busy"] for p in ps),
                "errors": sum(p["errors"] for p in ps)} for t, ps in found.items()}


def old_method(port: int, others: list[str], groups: int, zipf: throughput.Zipf,
               headers: list[str]) -> dict[str, list[float]]:
    """9d98f97's paired hot workload: per group, noauth, the stack, the stack, noauth, 1 s
    phases each with its own connections, 0.5 s of unmeasured load before each change."""
    ratios: dict[str, list[float]] = {t: [] for t in others}
    for r in range(groups):
        shift = r % len(others)
        for target in others[shift:] + others[:shift]:
            rps = []
            for position, name in enumerate((throughput.BASELINE, target, target,
                                             throughput.BASELINE)):
                if position != 2:
                    throughput.load_phase(port, name, settings_for(0.5), zipf, headers,
                                          seed=2, client_cpus=CLIENT_CPUS)
                rps.append(phase(port, name, 1.0, zipf, headers)["rps"])
            ratios[target].append((rps[1] + rps[2]) / (rps[0] + rps[3]))
    return ratios


def new_method(port: int, server_pid: int | None, stacks_run: list[str], groups: int,
               zipf: throughput.Zipf, headers: list[str], slice_seconds: float,
               settle_seconds: float) -> dict[str, Any]:
    schedule = abba.Schedule.abba(throughput.BASELINE, stacks_run, groups)
    completions, start, readings = abba.run_clients(
        port, schedule, {t: throughput.prepared_requests(t, headers) for t in stacks_run},
        {t: throughput.expected_bodies(t, len(headers)) for t in stacks_run}, zipf.draw,
        16, slice_seconds, CLIENT_CPUS, throughput.KeepAlive,
        {"server": lambda: throughput.process_cpu_seconds(server_pid)})
    measured = abba.analyse(completions, schedule, start, slice_seconds, settle_seconds,
                            readings)
    rates, _, _ = abba.slice_rates(completions, len(schedule.slices), start, slice_seconds,
                                   settle_seconds)
    for stack, s in measured["stacks"].items():
        s["cpu_us"] = s["cpu_seconds"]["server"] / max(1, s["requests"]) * 1e6
        groups_of = [idx for name, idx in schedule.groups if name == stack]
        if groups_of:
            x = sum(rates[i] + rates[j] for _, i, j, _ in groups_of)
            a = sum(rates[i] + rates[j] for i, _, _, j in groups_of)
            s["ratio_of_sums"] = x / a
    return measured


def summary(ratios: list[float]) -> str:
    q = statistics.quantiles(ratios, n=4) if len(ratios) >= 4 else [float("nan")] * 3
    return (f"median {statistics.median(ratios):.4f} mean {statistics.mean(ratios):.4f} "
            f"middle half {q[0]:.3f}-{q[2]:.3f} (n={len(ratios)})")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--burn-us", type=float, nargs="*", default=[21.0, 80.0])
    parser.add_argument("--iterations", type=int, nargs="*", default=[])
    parser.add_argument("--groups", type=int, default=20)
    parser.add_argument("--old-groups", type=int, default=0)
    parser.add_argument("--steady-rounds", type=int, default=3)
    parser.add_argument("--slice", type=float, default=0.25)
    parser.add_argument("--settle", type=float, default=0.025)
    parser.add_argument("--no-copy", action="store_true")
    parser.add_argument("--real", nargs="*", default=[],
                        help="real stacks too (pymemcache+local...): starts slapd, memcached")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    calibrated = calibrate(args.burn_us, args.iterations)
    burns = [f"{throughput.BURN}{n}" for n in calibrated if n]
    others = ([] if args.no_copy else [throughput.COPY]) + burns + args.real
    stacks_run = [throughput.BASELINE, *others]
    print("calibrated µs per call:", {f"burn{n}": round(us, 2) for n, us in calibrated.items()})
    port = throughput.free_port()
    headers = [stacks.basic_header(servers.login_of(i), servers.password_of(i))
               for i in range(100)]
    zipf = throughput.Zipf(100, 1.1)
    report: dict[str, Any] = {"calibrated_us": calibrated, "args": vars(args)}
    with contextlib.ExitStack() as lab:
        config = {"port": port, "slapd_url": None, "memcached_url": None,
                  "server_threads": 8, "targets": stacks_run}
        if args.real:
            # As in make bench: slapd and memcached beside the clients, not the server.
            tmp = Path(lab.enter_context(tempfile.TemporaryDirectory()))
            ldif = servers.write_benchmark_ldif(tmp / "users.ldif", 200)
            cpus = ",".join(map(str, sorted(CLIENT_CPUS)))
            slapd = lab.enter_context(servers.PinnedSlapd(cpus=cpus, ldif=ldif))
            memcached = lab.enter_context(servers.PinnedMemcached(cpus=cpus, memory_mb=64))
            config.update(slapd_url=slapd.url, memcached_url=memcached.url)
        server = lab.enter_context(throughput.ServerProcess(config, SERVER_CPU))
        for target in stacks_run:
            for i in range(100):  # every hot user cached beforehand
                throughput._get(port, target, headers[i])
        report["steady"] = steady(port, stacks_run, args.steady_rounds, 1.5, zipf, headers)
        report["new"] = new_method(port, server.pid, stacks_run, args.groups, zipf, headers,
                                   args.slice, args.settle)
        if args.old_groups:
            report["old"] = old_method(port, others, args.old_groups, zipf, headers)
        report["steady_after"] = steady(port, stacks_run, 1, 1.5, zipf, headers)
    base = report["steady"][throughput.BASELINE]["cpu_us"]
    new_base = report["new"]["stacks"][throughput.BASELINE]["cpu_us"]
    print(f"steady noauth: {base:.1f} µs/request, {report['steady'][throughput.BASELINE]}")
    for target in others:
        n = throughput.burn_iterations(target)
        b = calibrated[n] - calibrated[0] if n is not None else 0.0
        st = report["steady"][target]
        new = report["new"]["stacks"][target]
        print(f"{target}: calibrated +{b:.1f} µs; expected (calibration) "
              f"{base / (base + b):.4f}; steady CPU {st['cpu_us']:.1f} µs "
              f"(+{st['cpu_us'] - base:.1f}): expected {base / st['cpu_us']:.4f}; "
              f"steady rps ratio {st['rps'] / report['steady'][throughput.BASELINE]['rps']:.4f}")
        print(f"    new: {summary(new['group_ratios'])}; ratio of sums "
              f"{new['ratio_of_sums']:.4f}; its CPU {new['cpu_us']:.1f} µs "
              f"(+{new['cpu_us'] - new_base:.1f}): {new_base / new['cpu_us']:.4f}; "
              f"errors {new['errors']}")
        if "old" in report:
            print(f"    old: {summary(report['old'][target])}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, default=lambda o: list(o) if isinstance(o, array)
                      else str(o), indent=1)


if __name__ == "__main__":
    main()
