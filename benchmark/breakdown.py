"""Where the library's start time goes (`--breakdown`): traced `Runtime.run`s, each turned
into per-phase durations from real CLOCK_MONOTONIC timestamps.

A run's marks are the runtime's (runtime/trace.py: each taken where the work happens, in
this process or the container's), a "begin" taken right before the call, and "workload",
which the workload itself reports: `/stamp` writes the time of its first instruction to its
stdout, here a pipe. Put in time order, each mark ends the phase it names: its duration is
its time minus the previous mark's. There is no network phase: a runtime run only makes the
new network namespace (holding `lo`), at the clone, inside "fork" (or, for a warm runtime,
before the run); setting up a pod's network is the CRI service's work, in its pod-ready
samples.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from skiff.benchmark import workload
from skiff.benchmark.contenders import BenchmarkError, Library
from skiff.benchmark.stats import NS_PER_MS, percentile
from skiff.runtime.trace import PHASES

Marks = list[tuple[str, int]]


@dataclass(frozen=True, slots=True, kw_only=True)
class Phase:
    name: str
    what: str
    p50: float    # milliseconds
    mean: float
    share: float  # of the mean total, 0..1


@dataclass(frozen=True, slots=True, kw_only=True)
class Breakdown:
    contender: str                       # whose start: the library, warm or not
    runs: int
    phases: list[Phase]
    total_p50: float
    samples_ms: dict[str, list[float]]   # per phase, one per run
    notes: list[str]


def durations(marks: Marks) -> dict[str, int]:
    """Nanoseconds per phase of one run: marks in time order, each minus the one before
    (the first, "begin", only starts the clock); a name marked twice adds up."""
    ordered = sorted(marks, key=lambda m: m[1])
    out: dict[str, int] = {}
    for (_, before), (name, at) in zip(ordered, ordered[1:]):
        out[name] = out.get(name, 0) + at - before
    return out


def traced_run(library: Library, container_id: str) -> Marks:
    """One run with the workload's stdout on a pipe, read once the run is over (the run
    returns after the container exited, so the write end is closed but for ours)."""
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    try:
        try:
            marks = library.run_traced(container_id, write_end)
        finally:
            os.close(write_end)
        data = b""
        while chunk := os.read(read_end, 4096):
            data += chunk
    finally:
        os.close(read_end)
    if workload.supported():
        try:
            marks.append(("workload", workload.decode(data)))
        except ValueError as e:
            raise BenchmarkError(f"--breakdown: {e}") from e
    return marks


def measure(library: Library, ids: Callable[[int], str], count: int, warmup: int,
            progress: Callable[[str], None]) -> Breakdown:
    runs: list[dict[str, int]] = []
    for i in range(warmup + count):
        container_id = ids(i)
        try:
            marks = traced_run(library, container_id)
        except BaseException:
            library.delete(container_id)
            raise
        if i >= warmup:
            runs.append(durations(marks))
        if (i + 1) % 10 == 0 or i + 1 == warmup + count:
            progress(f"breakdown: {i + 1}/{warmup + count} traced runs")
    return summarize(library.name, runs)


def summarize(contender: str, runs: Sequence[dict[str, int]]) -> Breakdown:
    seen = {name for run in runs for name in run}
    names = [n for n in PHASES if n in seen] + sorted(seen - PHASES.keys())
    samples = {n: [round(run.get(n, 0) / NS_PER_MS, 4) for run in runs] for n in names}
    totals = [sum(run.values()) / NS_PER_MS for run in runs]
    mean_total = sum(statistics.fmean(samples[n]) for n in names)  # the shares add up to 1
    phases = [Phase(name=n, what=PHASES.get(n, "(a mark runtime/trace.py does not list)"),
                    p50=percentile(samples[n], 50), mean=statistics.fmean(samples[n]),
                    share=statistics.fmean(samples[n]) / mean_total if mean_total else 0.0)
              for n in names]
    notes = []
    missing = [n for n in PHASES if n not in seen and not (n == "workload" and not workload.supported())]
    if missing:
        notes.append(f"no mark for {', '.join(missing)}: this skiff's trace does not take "
                     f"{'it' if len(missing) == 1 else 'them'}")
    if not workload.supported():
        notes.append("no \"workload\" mark: the workload is /bin/true on this machine (the /stamp executable "
                     "is x86-64 only), and the time from execve to its first instruction is in \"exited\"")
    return Breakdown(contender=contender, runs=len(runs), phases=phases, total_p50=percentile(totals, 50), samples_ms=samples,
                     notes=notes)
