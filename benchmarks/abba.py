"""Sliced ABBA load: each stack's requests/s over the baseline's, measured a slice apart.

How far the server's speed drifts on this shared machine decides how well a ratio of two
stacks' throughputs can be measured. Phases of a second each, every one with its own client
threads and connections, gave per-group ratios whose middle half spread over 0.14 (0.76 to
0.90 for one stack in eleven groups): a second apart, the machine is another machine. (A
phase's start and end, the same dead time for a fast and a slow stack, scale both rates by
the same factor and all but cancel in their ratio: on stacks of known cost, an identical
copy of the baseline and the baseline after a calibrated CPU burn, such phases measured the
expected ratio within their noise, as these slices do; see ``benchmarks/abba_check.py``.
What slices buy is a smaller spread, not the removal of a bias.) Here one pool of
keep-alive client connections runs for the whole workload, and the target they ask for
changes every ``slice_seconds`` (a fraction of a second), in groups of four slices:
baseline, stack, stack, baseline (ABBA: a steady drift cancels out). A group's ratio is the
stack's two slices' rates over the baseline's two; the median over groups comes with its
distribution-free 95% interval (:func:`median_interval`).

Each slice's rate counts the right answers to that slice's requests that complete inside
its *window*: from ``settle_seconds`` after the switch, or from the last response to an earlier
slice's request if that came later (until then the server still works for the previous
stack), to the slice's end. The server is saturated throughout (more connections than
server threads), so the completion rate in a window is the stack's throughput. A request
that straddles an edge counts in no window, which takes nothing from a rate (responses per
second of the window), and the edges cost the two stacks alike.

CPU per request: the server's (and memcached's and slapd's) user + sys time, read from
``/proc/PID/stat`` at every slice edge, summed over a stack's slices and divided by the
requests sent in them (10 ms clock ticks per reading; over dozens of slices the rounding
averages out).
"""

from __future__ import annotations

import itertools
import math
import os
import random
import statistics
import threading
import time
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from . import harness


@dataclass
class Schedule:
    """What the clients ask for in each slice, and which slices form each group."""

    baseline: str
    slices: list[str]
    groups: list[tuple[str, tuple[int, int, int, int]]]
    """(stack, its four slice indexes: baseline, stack, stack, baseline)."""

    @classmethod
    def abba(cls, baseline: str, stacks: Sequence[str], groups: int) -> Schedule:
        """``groups`` ABBA groups per stack; round ``r`` takes the stacks in an order
        rotated by ``r``, so that no stack always follows the same one."""
        slices: list[str] = []
        found = []
        others = [s for s in stacks if s != baseline]
        for r in range(groups):
            shift = r % len(others)
            for stack in others[shift:] + others[:shift]:
                first = len(slices)
                slices += [baseline, stack, stack, baseline]
                found.append((stack, (first, first + 1, first + 2, first + 3)))
        return cls(baseline, slices, found)


@dataclass
class Completions:
    """Every response of a run, in four parallel sequences: when it arrived
    (``perf_counter`` seconds), in which slice its request was sent (-1: the warm-up before
    the first slice, which asks for the first slice's stack), how long it took (seconds),
    and whether it was the expected one."""

    done: Sequence[float]
    sent_in: Sequence[int]
    latency: Sequence[float]
    ok: Sequence[bool]


def median_interval(values: Sequence[float],
                    confidence: float = 0.95) -> tuple[float, float] | None:
    """The distribution-free interval around the median of ``values``: the ``k``-th
    smallest to the ``k``-th largest, ``k`` the largest with P(Binomial(n, 1/2) < k) at
    most (1 - confidence) / 2; None if even the smallest and largest are not enough. Says
    how far the groups' median could be from the stack's true ratio, as the middle half
    (how far one group is from the next) does not."""
    ordered = sorted(values)
    n = len(ordered)
    tail = (1 - confidence) / 2
    below, k = 0.0, 0  # below: P(Binomial(n, 1/2) <= k - 1)
    while k < n // 2 and below + math.comb(n, k) / 2 ** n <= tail:
        below += math.comb(n, k) / 2 ** n
        k += 1
    return (ordered[k - 1], ordered[n - k]) if k else None


def run_clients(port: int, schedule: Schedule, requests: dict[str, list[bytes]],
                bodies: dict[str, list[bytes]], draw: Callable[[random.Random], int],
                threads: int, slice_seconds: float, client_cpus: set[int],
                connect: Callable[[int], Any], cpu_readers: dict[str, Callable[[], float | None]],
                warmup_seconds: float = 0.5) -> tuple[Completions, float, dict[str, list]]:
    """Run the schedule; returns the completions, the first slice's start (perf_counter)
    and, per reader, its value at every slice edge (``len(slices) + 1`` readings)."""
    n = len(schedule.slices)
    order = schedule.slices
    # Bounded: a client that cannot connect breaks the barrier for all (BrokenBarrierError)
    # instead of leaving the run waiting for it.
    barrier = threading.Barrier(threads + 1, timeout=60)
    start_box = [0.0]
    done = [array("d") for _ in range(threads)]
    sent_in = [array("i") for _ in range(threads)]
    latency = [array("d") for _ in range(threads)]
    ok = [array("b") for _ in range(threads)]
    failures: list[BaseException] = []

    def worker(t: int) -> None:
        if client_cpus:
            os.sched_setaffinity(0, client_cpus)
        rng = random.Random(7919 * t + 1)
        conn = connect(port)
        clock = time.perf_counter
        my_done, my_sent, my_latency, my_ok = done[t], sent_in[t], latency[t], ok[t]
        try:
            barrier.wait()
            start = start_box[0]
            end = start + n * slice_seconds
            while True:
                begin = clock()
                if begin >= end:
                    break
                k = int((begin - start) / slice_seconds) if begin >= start else -1
                target = order[max(k, 0)]
                user = draw(rng)
                status, body = conn.request(requests[target][user])
                finish = clock()
                my_done.append(finish)
                my_sent.append(k)
                my_latency.append(finish - begin)
                my_ok.append(status == 200 and body == bodies[target][user])
        except BaseException as exc:  # reported after the join
            failures.append(exc)
        finally:
            conn.close()

    pool = [threading.Thread(target=worker, args=(t,), daemon=True) for t in range(threads)]
    for thread in pool:
        thread.start()
    start = start_box[0] = time.perf_counter() + warmup_seconds
    barrier.wait()
    readings: dict[str, list] = {name: [] for name in cpu_readers}
    for edge in range(n + 1):
        delay = start + edge * slice_seconds - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        for name, read in cpu_readers.items():
            readings[name].append(read())
    for thread in pool:
        thread.join(60)
    if failures:
        raise RuntimeError(f"a client failed: {failures[0]!r}") from failures[0]
    completions = Completions(
        done=array("d", itertools.chain.from_iterable(done)),
        sent_in=array("i", itertools.chain.from_iterable(sent_in)),
        latency=array("d", itertools.chain.from_iterable(latency)),
        ok=array("b", itertools.chain.from_iterable(ok)))
    return completions, start, readings


def slice_rates(c: Completions, n: int, start: float, slice_seconds: float,
                settle_seconds: float) -> tuple[list[float], list[int], bytearray]:
    """Per slice: its rate (right answers to its requests inside its window over the
    window's length) and the number of its requests; and, per completion, whether it was
    counted."""
    # The last response, in each slice, to a request sent in an earlier one.
    late = [-math.inf] * n
    for done, k in zip(c.done, c.sent_in, strict=True):
        arrived_in = math.floor((done - start) / slice_seconds)
        if k < arrived_in < n and arrived_in >= 0 and done > late[arrived_in]:
            late[arrived_in] = done
    ends = [start + (i + 1) * slice_seconds for i in range(n)]
    window_start = [max(start + i * slice_seconds + settle_seconds, late[i])
                    for i in range(n)]
    counted = [0] * n
    sent = [0] * n
    inside = bytearray(len(c.done))
    for index, (done, k, ok) in enumerate(zip(c.done, c.sent_in, c.ok, strict=True)):
        if 0 <= k < n:
            sent[k] += 1
            # Only right answers count: a stack that answers some requests wrongly (a fast
            # 401, a 500) has not served them.
            if ok and window_start[k] <= done < ends[k]:
                counted[k] += 1
                inside[index] = 1
    rates = [counted[i] / max(ends[i] - window_start[i], 1e-9) for i in range(n)]
    return rates, sent, inside


def analyse(c: Completions, schedule: Schedule, start: float, slice_seconds: float,
            settle_seconds: float, readings: dict[str, list]) -> dict[str, Any]:
    """Per stack: its groups' ratios, requests/s, latency, CPU per request (server and the
    readers'), errors (the warm-up's count against the first slice's stack); the baseline's
    figures over all its slices."""
    n = len(schedule.slices)
    rates, sent, inside = slice_rates(c, n, start, slice_seconds, settle_seconds)
    result: dict[str, Any] = {"groups": [], "stacks": {}}
    for stack, (a1, x1, x2, a2) in schedule.groups:
        ratio = (rates[x1] + rates[x2]) / (rates[a1] + rates[a2])
        result["groups"].append({"target": stack, "ratio": ratio,
                                 "rps": [rates[i] for i in (a1, x1, x2, a2)]})
    latencies: dict[str, list[float]] = {stack: [] for stack in schedule.slices}
    errors = dict.fromkeys(schedule.slices, 0)
    for index, k in enumerate(c.sent_in):
        stack = schedule.slices[k] if 0 <= k < n else schedule.slices[0]
        if inside[index]:
            latencies[stack].append(c.latency[index])
        if not c.ok[index]:
            errors[stack] += 1
    for stack, lat in latencies.items():
        mine = [i for i, s in enumerate(schedule.slices) if s == stack]
        lat.sort()
        cpu: dict[str, float | None] = {}
        for name, values in readings.items():
            spent = [values[i + 1] - values[i] for i in mine
                     if values[i] is not None and values[i + 1] is not None]
            cpu[name] = sum(spent) if len(spent) == len(mine) else None
        ratios = [g["ratio"] for g in result["groups"] if g["target"] == stack]
        result["stacks"][stack] = {
            "rps": statistics.median(rates[i] for i in mine),
            "p50_ms": harness.percentile(lat, 0.50) * 1e3 if lat else None,
            "p99_ms": harness.percentile(lat, 0.99) * 1e3 if lat else None,
            "requests": sum(sent[i] for i in mine),
            "errors": errors[stack],
            "slices": len(mine),
            "cpu_seconds": cpu,
            "seconds": len(mine) * slice_seconds,
            "rps_over_baseline": (1.0 if stack == schedule.baseline
                                  else statistics.median(ratios)),
            "group_ratios": ratios,
        }
    return result
