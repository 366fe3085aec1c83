"""The tables `skiff bench start` prints: each one a list of rows (the header first), shown as
aligned text; markdown_table renders rows as markdown (bench/start_latency.py builds its
rows from the JSON document)."""

from __future__ import annotations

from skiff.benchmark.results import Results

TURN = 5  # runs of one contender in a row (start.py)
Rows = list[list[str]]


def sequential_rows(r: Results) -> Rows:
    """With a ratio to skiff's reference, and to crun where it ran (the fastest peer here)."""
    summaries = r.summaries()
    refs = [ref for ref in (r.reference, "crun") if ref and ref in summaries]
    rows = [["", "sample", "runs", "p50 ms", "p90 ms", "p99 ms", "mean ms"] + [f"p50 / {ref}" for ref in refs]]
    for c in r.contenders:
        s = summaries.get(c.name)
        if s is None:
            continue
        row = [c.name, c.sample, str(s.count), f"{s.p50:.1f}", f"{s.p90:.1f}", f"{s.p99:.1f}", f"{s.mean:.1f}"]
        row += [f"{s.p50 / summaries[ref].p50:.2f}x" for ref in refs]
        rows.append(row)
    return rows


def concurrency_rows(r: Results) -> Rows:
    summaries = r.concurrent_summaries()
    rates = r.throughputs()
    ref = r.reference
    rows = [["", "sample", "runs", "p50 ms", "p90 ms", "p99 ms", "containers/s"] + ([f"p50 / {ref}"] if ref else [])]
    for c in r.contenders:
        s = summaries.get(c.name)
        if s is None:
            continue
        row = [c.name, c.sample, str(s.count), f"{s.p50:.1f}", f"{s.p90:.1f}", f"{s.p99:.1f}", f"{rates[c.name]:.1f}"]
        if ref:
            row.append(f"{s.p50 / summaries[ref].p50:.2f}x" if ref in summaries else "-")
        rows.append(row)
    return rows


def growth_rows(r: Results) -> Rows:
    levels = r.running_levels()
    p50, ratio = r.growth_p50(), r.growth_ratios()
    header = ["", *[f"p50 ms, {k} running" for k in levels], *[f"{k} / 0" for k in levels if k]]
    rows = [header]
    for name in r.names:
        points = p50.get(name, {})
        rows.append([name, *[f"{points[k]:.1f}" if k in points else "-" for k in levels],
                     *[f"{ratio[name][k]:.2f}x" if k in ratio.get(name, {}) else "-" for k in levels if k]])
    return rows


def breakdown_rows(r: Results) -> Rows:
    b = r.breakdown
    assert b is not None
    rows = [["phase", "what ends with the mark", "p50 ms", "mean ms", "share"]]
    for p in b.phases:
        rows.append([p.name, p.what, f"{p.p50:.2f}", f"{p.mean:.2f}", f"{p.share * 100:.0f}%"])
    rows.append(["total", "from the call to Runtime.run to its return", f"{b.total_p50:.2f}",
                 f"{sum(p.mean for p in b.phases):.2f}", "100%"])
    return rows


def text_table(rows: Rows) -> str:
    """Aligned columns: the first (names) left, the numbers right; text columns left."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    numeric = [i > 0 and all(_numeric(row[i]) for row in rows[1:]) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.rjust(w) if numeric[i] else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()
                     for row in rows)


def markdown_table(rows: Rows) -> str:
    numeric = [i > 0 and all(_numeric(row[i]) for row in rows[1:]) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "|".join("---:" if n else ":---" for n in numeric) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows[1:]]
    return "\n".join(lines)


def _numeric(cell: str) -> bool:
    return cell == "-" or cell.rstrip("x%").replace(".", "", 1).isdigit()


def text(r: Results) -> str:
    """The whole report, as printed."""
    runs = r.options["count"]
    out = [f"container start latency: {runs} runs each, in turns of {TURN} in a row (the first of each turn and the "
           f"first {r.options['warmup']} turns not kept); "
           f"workload {' '.join(r.workload)}",
           text_table(sequential_rows(r))]
    if r.concurrent:
        out += ["", f"with {r.threads} threads starting containers at once ({runs} runs each)",
                text_table(concurrency_rows(r))]
    if r.growth:
        out += ["", "growth: p50 with K containers already running (one contender at a time, each with K `sleep` "
                f"containers of its own and its runs in a row, K = 0 too, {r.options.get('settle_ms', 0)} ms apart)",
                text_table(growth_rows(r))]
    if r.breakdown is not None:
        out += ["", f"breakdown of {r.breakdown.contender}'s start ({r.breakdown.runs} traced runs; each mark ends its phase)",
                text_table(breakdown_rows(r))]
        out += [f"note: {n}" for n in r.breakdown.notes]
    if any(c.sample != "run to exit" for c in r.contenders):
        out += ["", "\"run to exit\": create, start, the workload's exit, delete; \"pod ready\": RunPodSandbox + "
                "CreateContainer + StartContainer until RUNNING (a CRI service has no foreground run)"]
    for name, why in r.skipped.items():
        out.append(f"skipped {name}: {why}")
    out += [f"note: {n}" for n in r.notes]
    return "\n".join(out)
