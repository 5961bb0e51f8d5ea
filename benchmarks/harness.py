"""Timing: interleaved rounds, medians and paired ratios.

A *case* is a zero-argument callable doing one operation (one WSGI request, one memcached
get...). :func:`interleaved` calibrates a batch size per case, then runs ``rounds`` rounds;
in each round every case runs one timed batch, in an order rotated from round to round, so
slow drifts of a noisy machine hit every case alike. A case's figure is the median of its
per-round means; a ratio is the median of the per-round ratios (numerator and denominator
measured seconds apart). The garbage collector is paused inside a batch, as ``timeit`` does.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

Case = Callable[[], object]


class _PerRound:
    """Figures with one sample per round: their median and range."""

    samples: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def spread(self) -> tuple[float, float]:
        return min(self.samples), max(self.samples)


@dataclass
class Series(_PerRound):
    """Per-round mean cost of one operation, in microseconds."""

    name: str
    samples: list[float] = field(default_factory=list)
    batch: int = 0

    def as_dict(self) -> dict:
        return {"median_us": self.median, "samples_us": self.samples, "batch": self.batch}


@dataclass
class Ratio(_PerRound):
    numerator: str
    denominator: str
    samples: list[float]

    def as_dict(self) -> dict:
        return {"median": self.median, "samples": self.samples,
                "numerator": self.numerator, "denominator": self.denominator}


def _run_batch(case: Case, n: int) -> float:
    """Seconds for ``n`` calls of ``case`` (collect first; no collection inside)."""
    gc.collect()  # cheap: :func:`interleaved` froze everything that existed before it
    gc.disable()
    try:
        start = time.perf_counter()
        for _ in range(n):
            case()
        return time.perf_counter() - start
    finally:
        gc.enable()


def calibrate(case: Case, batch_seconds: float, *, max_batch: int = 1_000_000) -> int:
    """Calls of ``case`` that take about ``batch_seconds`` (after a warm-up)."""
    for _ in range(3):
        case()
    n = 1
    while True:
        elapsed = _run_batch(case, n)
        if elapsed >= batch_seconds / 8 or n >= max_batch:
            break
        n *= 4
    per_call = elapsed / n
    return max(1, min(max_batch, int(batch_seconds / max(per_call, 1e-9))))


def interleaved(
    cases: Mapping[str, Case],
    *,
    rounds: int,
    batch_seconds: float,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Series]:
    names = list(cases)
    series = {name: Series(name) for name in names}
    gc.collect()
    gc.freeze()  # the heap so far is never scanned again: collections between batches are cheap
    try:
        for name in names:
            series[name].batch = calibrate(cases[name], batch_seconds)
        _rounds(cases, series, names, rounds, progress)
    finally:
        gc.unfreeze()
    return series


def _rounds(cases: Mapping[str, Case], series: dict[str, Series], names: list[str],
            rounds: int, progress: Callable[[str], None] | None) -> None:
    for r in range(rounds):
        shift = r % len(names)
        order = names[shift:] + names[:shift]
        if r % 2:
            order.reverse()
        for name in order:
            n = series[name].batch
            series[name].samples.append(_run_batch(cases[name], n) / n * 1e6)
        if progress:
            progress(f"round {r + 1}/{rounds}")


def ratio(series: Mapping[str, Series], numerator: str, denominator: str) -> Ratio:
    num, den = series[numerator].samples, series[denominator].samples
    return Ratio(numerator, denominator, [a / b for a, b in zip(num, den, strict=True)])


def difference_ratio(series: Mapping[str, Series], minuend: str, subtrahend: str,
                     other_minuend: str, other_subtrahend: str) -> Ratio:
    """Per round, (minuend - subtrahend) / (other_minuend - other_subtrahend)."""
    samples = [
        (a - b) / (c - d)
        for a, b, c, d in zip(series[minuend].samples, series[subtrahend].samples,
                              series[other_minuend].samples, series[other_subtrahend].samples,
                              strict=True)
    ]
    return Ratio(f"({minuend} - {subtrahend})", f"({other_minuend} - {other_subtrahend})",
                 samples)


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of an already sorted sequence."""
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(fraction * len(sorted_values)) - 1))
    return sorted_values[index]
