"""The sliced ABBA analysis of ``make bench`` (pure logic: synthetic completions).

A slice's rate must be the completion rate of its own stack's requests inside its window,
whatever the previous slice left in flight, so that a ratio of two stacks' rates is theirs
and not the edges'.
"""

from __future__ import annotations

import collections
import random

import pytest

from benchmarks import abba


def closed_loop(schedule: abba.Schedule, rates: dict[str, float], slice_seconds: float,
                threads: int, start: float = 100.0) -> abba.Completions:
    """What ``threads`` clients record against a saturated server: each client sends its
    next request as its response arrives (for the stack of the slice it is sent in); the
    server answers one request at a time, first come first served, each in ``1 / rate`` of
    its stack."""
    end = start + len(schedule.slices) * slice_seconds
    pending = collections.deque((start - 0.05, -1) for _ in range(threads))
    done, sent_in, latency = [], [], []
    clock = start - 0.05
    while pending:
        sent, k = pending.popleft()
        clock = max(clock, sent) + 1 / rates[schedule.slices[max(k, 0)]]
        done.append(clock)
        sent_in.append(k)
        latency.append(clock - sent)
        if clock < end:
            pending.append((clock, int((clock - start) // slice_seconds)))
    return abba.Completions(done, sent_in, latency, [True] * len(done))


def shared_loop(schedule: abba.Schedule, rates: dict[str, float], slice_seconds: float,
                clients: int, threads: int, start: float = 100.0) -> abba.Completions:
    """As ``closed_loop``, but the server shares itself equally between up to ``threads``
    requests at a time (the rest wait, first come first served): closer to waitress's
    threads, whose requests in flight all progress, so that when one stack's last request
    ends the next stack's have had some of their work done already."""
    end = start + len(schedule.slices) * slice_seconds
    waiting = collections.deque((start - 0.05, -1) for _ in range(clients))
    serving: list[list] = []  # [work left, sent, slice]
    clock = start - 0.05
    done, sent_in, latency = [], [], []
    while waiting or serving:
        while waiting and len(serving) < threads:
            sent, k = waiting.popleft()
            serving.append([1 / rates[schedule.slices[max(k, 0)]], sent, k])
        first = min(serving, key=lambda job: job[0])
        share = first[0]
        for job in serving:
            job[0] -= share
        clock += share * len(serving)
        serving.remove(first)
        _, sent, k = first
        done.append(clock)
        sent_in.append(k)
        latency.append(clock - sent)
        if clock < end:
            waiting.append((clock, int((clock - start) // slice_seconds)))
    return abba.Completions(done, sent_in, latency, [True] * len(done))


def test_the_schedule_puts_each_stack_between_two_baseline_slices_in_rotating_order():
    schedule = abba.Schedule.abba("noauth", ["noauth", "a", "b"], groups=2)
    assert schedule.slices == ["noauth", "a", "a", "noauth", "noauth", "b", "b", "noauth",
                               "noauth", "b", "b", "noauth", "noauth", "a", "a", "noauth"]
    assert [g[0] for g in schedule.groups] == ["a", "b", "b", "a"]
    for stack, indexes in schedule.groups:
        assert [schedule.slices[i] for i in indexes] == ["noauth", stack, stack, "noauth"]


@pytest.mark.parametrize("slow", [700.0, 4000.0, 6000.0])
def test_slice_rates_are_each_stacks_own_whatever_the_edges_carry(slow):
    schedule = abba.Schedule.abba("noauth", ["noauth", "x"], groups=5)
    rates = {"noauth": 7000.0, "x": slow}
    completions = closed_loop(schedule, rates, slice_seconds=0.25, threads=16)
    measured = abba.analyse(completions, schedule, 100.0, 0.25, 0.025,
                            {"server": [float(i) for i in range(len(schedule.slices) + 1)]})
    ratios = [g["ratio"] for g in measured["groups"]]
    assert len(ratios) == 5
    for ratio in ratios:
        assert ratio == pytest.approx(slow / 7000.0, rel=0.005)
    assert measured["stacks"]["x"]["rps_over_baseline"] == pytest.approx(slow / 7000.0,
                                                                         rel=0.005)
    assert measured["stacks"]["noauth"]["rps"] == pytest.approx(7000.0, rel=0.005)
    # One CPU second per slice: the stack's CPU is its slices'.
    assert measured["stacks"]["x"]["cpu_seconds"]["server"] == 10.0


def test_a_window_opens_only_after_the_previous_stacks_last_response():
    # One response to slice 0's request lands 0.1 s into slice 1: slice 1's window starts
    # there, not at the 25 ms settle, so its 10 own responses are over 0.15 s.
    done = [0.5] + [1.0 + 0.1 + 0.01 * i for i in range(10)] + [1.1]
    sent_in = [0] + [1] * 10 + [0]
    completions = abba.Completions(done, sent_in, [0.0] * len(done), [True] * len(done))
    rates, sent, _ = abba.slice_rates(completions, 2, 0.0, 1.0, 0.025)
    assert sent == [2, 10]
    assert rates[1] == pytest.approx(10 / 0.9)  # window 1.1 .. 2.0


def test_errors_are_counted_against_the_stack_that_answered_them():
    schedule = abba.Schedule.abba("noauth", ["noauth", "x"], groups=1)
    completions = closed_loop(schedule, {"noauth": 5000.0, "x": 5000.0}, 0.25, 4)
    completions.ok[:] = [k != 1 for k in completions.sent_in]
    measured = abba.analyse(completions, schedule, 100.0, 0.25, 0.025, {})
    assert measured["stacks"]["x"]["errors"] == completions.sent_in.count(1) > 0
    assert measured["stacks"]["noauth"]["errors"] == 0


def test_a_wrong_answer_in_the_warm_up_counts_against_the_first_slices_stack():
    schedule = abba.Schedule.abba("noauth", ["noauth", "x"], groups=1)
    completions = closed_loop(schedule, {"noauth": 5000.0, "x": 5000.0}, 0.25, 4)
    first = completions.sent_in.index(-1)
    completions.ok[first] = False
    measured = abba.analyse(completions, schedule, 100.0, 0.25, 0.025, {})
    assert measured["stacks"]["noauth"]["errors"] == 1
    assert measured["stacks"]["x"]["errors"] == 0


def test_wrong_answers_are_not_throughput():
    # A stack as fast as the baseline that answers every other request wrongly (a 401
    # instead of the app, say) serves half the baseline's right answers per second.
    schedule = abba.Schedule.abba("noauth", ["noauth", "x"], groups=3)
    completions = closed_loop(schedule, {"noauth": 6000.0, "x": 6000.0}, 0.25, 16)
    x_slices = {i for i, s in enumerate(schedule.slices) if s == "x"}
    of_x = [i for i, k in enumerate(completions.sent_in) if k in x_slices]
    for i in of_x[::2]:
        completions.ok[i] = False
    measured = abba.analyse(completions, schedule, 100.0, 0.25, 0.025, {})
    assert measured["stacks"]["x"]["rps_over_baseline"] == pytest.approx(0.5, rel=0.01)
    assert measured["stacks"]["x"]["rps"] == pytest.approx(3000.0, rel=0.01)
    assert measured["stacks"]["x"]["errors"] == (len(of_x) + 1) // 2


@pytest.mark.parametrize("side", ["numerator", "denominator"])
def test_a_ratio_with_wrong_answers_on_either_side_does_not_meet_its_target(side):
    from benchmarks import throughput

    errors = {"numerator": 0, "denominator": 0, side: 7}
    workloads = {"hot": {"groups": [], "summary": {
        "noauth": {"rps_over_noauth": 1.0, "errors": errors["denominator"]},
        "pymemcache+local": {"rps_over_noauth": 0.95, "errors": errors["numerator"]}}}}
    [entry] = throughput.evaluate_targets(workloads)
    assert (entry["numerator"], entry["denominator"]) == ("pymemcache+local", "noauth")
    assert entry["met"] is False
    assert entry["errors"] == 7


def test_the_median_of_the_groups_comes_with_a_distribution_free_95_percent_interval():
    # Of 40 groups, the median lies between the 14th and the 27th smallest ratio with a
    # probability of at least 95% (the binomial count of groups below the true median),
    # whatever the distribution of the ratios.
    ratios = [0.80 + 0.0025 * i for i in range(40)]
    low, high = abba.median_interval(ratios)
    assert (low, high) == (ratios[13], ratios[26])
    shuffled = random.Random(3).sample(ratios, len(ratios))
    assert abba.median_interval(shuffled) == (low, high)
    assert abba.median_interval(ratios[:5]) is None  # too few groups for 95%


def test_the_target_entry_carries_the_medians_interval():
    from benchmarks import throughput

    groups = [{"target": "pymemcache+local", "ratio": 0.80 + 0.0025 * i} for i in range(40)]
    workloads = {"hot": {"groups": groups, "summary": {
        "noauth": {"rps_over_noauth": 1.0, "errors": 0},
        "pymemcache+local": {"rps_over_noauth": 0.85, "errors": 0}}}}
    [entry] = throughput.evaluate_targets(workloads)
    assert entry["median_ci95"] == [groups[13]["ratio"], groups[26]["ratio"]]


@pytest.mark.parametrize("slow", [700.0, 4500.0, 6100.0])
def test_a_server_shared_between_its_threads_does_not_flatter_the_slower_stack(slow):
    # The head start the next stack's requests got before the window opened is at most
    # their share of a few requests: it costs the slower stack a little, never helps it.
    # (Requests of one cost shared equally end eight at a time: a window's count moves by
    # eight, about 0.5% of a group, hence the median.)
    schedule = abba.Schedule.abba("noauth", ["noauth", "x"], groups=5)
    completions = shared_loop(schedule, {"noauth": 7000.0, "x": slow}, 0.25, 16, 8)
    measured = abba.analyse(completions, schedule, 100.0, 0.25, 0.025, {})
    truth = slow / 7000.0
    assert truth * 0.985 <= measured["stacks"]["x"]["rps_over_baseline"] <= truth * 1.001
    for group in measured["groups"]:
        assert group["ratio"] == pytest.approx(truth, rel=0.015)
