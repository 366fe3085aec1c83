"""Percentiles, ratios to skiff and throughput, in milliseconds and containers per second."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

NS_PER_MS = 1e6
# The reference of every ratio, in this order of preference: "ratios to skiff" means to the
# in-process library where it was measured.
REFERENCES = ("library", "skiff-runc", "cri:skiff")


@dataclass(frozen=True, slots=True, kw_only=True)
class Summary:
    count: int
    p50: float   # milliseconds
    p90: float
    p99: float
    mean: float
    min: float
    max: float


def to_ms(samples_ns: Sequence[int]) -> list[float]:
    return [round(s / NS_PER_MS, 4) for s in samples_ns]


def percentile(values: Sequence[float], q: int) -> float:
    """The q-th percentile (1..99), linear between the closest ranks ("inclusive", as numpy's
    default): with 20 samples p99 is mostly the slowest one."""
    if not values:
        raise ValueError("percentile of no samples")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def summarize(samples_ms: Sequence[float]) -> Summary:
    return Summary(count=len(samples_ms), p50=percentile(samples_ms, 50), p90=percentile(samples_ms, 90),
                   p99=percentile(samples_ms, 99), mean=statistics.fmean(samples_ms), min=min(samples_ms),
                   max=max(samples_ms))


def reference(names: Sequence[str]) -> str | None:
    return next((r for r in REFERENCES if r in names), None)


def ratios(summaries: Mapping[str, Summary], ref: str | None) -> dict[str, float]:
    """Each contender's p50 over the reference's (skiff's): above 1 is slower than skiff."""
    if ref is None or ref not in summaries:
        return {}
    base = summaries[ref].p50
    return {name: s.p50 / base for name, s in summaries.items()}


def throughput(runs: int, wall_ns: int) -> float:
    """Containers per second: runs over the wall time from the first start to the last end."""
    return runs / (wall_ns / 1e9) if wall_ns > 0 else 0.0
