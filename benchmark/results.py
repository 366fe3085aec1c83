"""Everything one `skiff bench start` measured, what is derived from it (summaries, ratios to
skiff, throughput, growth), and the JSON document it writes. Times are milliseconds."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any

from skiff.benchmark.breakdown import Breakdown
from skiff.benchmark.machine import Machine
from skiff.benchmark.stats import Summary, ratios, summarize, throughput

FORMAT = 1  # the JSON document's version: bump when a field changes meaning


@dataclass(frozen=True, slots=True, kw_only=True)
class ContenderInfo:
    name: str
    sample: str     # "run to exit" or "pod ready"
    version: str


@dataclass(kw_only=True)
class Results:
    machine: Machine
    options: dict[str, Any]
    workload: tuple[str, ...]
    contenders: list[ContenderInfo] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)        # contender -> why
    reference: str | None = None
    sequential: dict[str, list[float]] = field(default_factory=dict)
    threads: int = 1
    concurrent: dict[str, list[float]] = field(default_factory=dict)
    concurrent_wall_ns: dict[str, int] = field(default_factory=dict)
    # K (containers already running) -> contender -> samples, each contender's runs in a row
    # (K = 0 measured that way too); empty when only 0 was asked for.
    growth: dict[int, dict[str, list[float]]] = field(default_factory=dict)
    breakdown: Breakdown | None = None
    notes: list[str] = field(default_factory=list)
    load_after: str = ""

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.contenders]

    def summaries(self) -> dict[str, Summary]:
        return {n: summarize(s) for n, s in self.sequential.items() if s}

    def concurrent_summaries(self) -> dict[str, Summary]:
        return {n: summarize(s) for n, s in self.concurrent.items() if s}

    def throughputs(self) -> dict[str, float]:
        return {n: throughput(len(self.concurrent[n]), wall) for n, wall in self.concurrent_wall_ns.items()}

    def running_levels(self) -> list[int]:
        return sorted({0, *self.growth})

    def growth_p50(self) -> dict[str, dict[int, float]]:
        """p50 per contender at each number of containers already running (without a growth
        phase: the sequential p50 as the one point, at 0)."""
        out: dict[str, dict[int, float]] = {}
        base = self.summaries()
        for name in self.names:
            points = {0: base[name].p50} if name in base and not self.growth else {}
            for k, by_name in sorted(self.growth.items()):
                if by_name.get(name):
                    points[k] = summarize(by_name[name]).p50
            out[name] = points
        return out

    def growth_ratios(self) -> dict[str, dict[int, float]]:
        return {name: {k: p / points[0] for k, p in points.items()}
                for name, points in self.growth_p50().items() if points.get(0)}


def document(r: Results) -> dict[str, Any]:
    def summaries_json(s: dict[str, Summary]) -> dict[str, Any]:
        return {n: dataclasses.asdict(v) for n, v in s.items()}

    concurrency = None
    if r.concurrent:
        summaries = r.concurrent_summaries()
        concurrency = {"threads": r.threads, "samples_ms": r.concurrent, "summaries": summaries_json(summaries),
                       "ratios": ratios(summaries, r.reference),
                       "wall_s": {n: w / 1e9 for n, w in r.concurrent_wall_ns.items()},
                       "containers_per_s": r.throughputs()}
    breakdown = None
    if r.breakdown is not None:
        b = r.breakdown
        breakdown = {"contender": b.contender, "runs": b.runs, "total_p50_ms": b.total_p50, "phases": [dataclasses.asdict(p) for p in b.phases],
                     "samples_ms": b.samples_ms, "notes": b.notes}
    summaries = r.summaries()
    return {
        "format": FORMAT,
        "benchmark": "skiff bench start",
        "machine": {**dataclasses.asdict(r.machine), "load_after": r.load_after},
        "options": r.options,
        "workload": list(r.workload),
        "reference": r.reference,
        "contenders": [dataclasses.asdict(c) for c in r.contenders],
        "skipped": r.skipped,
        "sequential": {"samples_ms": r.sequential, "summaries": summaries_json(summaries),
                       "ratios": ratios(summaries, r.reference)},
        "concurrency": concurrency,
        "growth": {"running": r.running_levels(),
                   "samples_ms": {n: {str(k): r.growth[k][n] for k in sorted(r.growth) if n in r.growth[k]}
                                  for n in r.names},
                   "p50_ms": {n: {str(k): v for k, v in p.items()} for n, p in r.growth_p50().items()},
                   "ratio_to_0": {n: {str(k): v for k, v in p.items()} for n, p in r.growth_ratios().items()}},
        "breakdown": breakdown,
        "notes": r.notes,
    }


def write_json(path: str, r: Results) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(document(r), f, indent=1)
        f.write("\n")
    os.replace(tmp, path)
