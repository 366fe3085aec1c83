"""`skiff bench start`: container start latency, skiff against the runtimes installed beside it.

    workload.py     the `/stamp` executable every runtime runs (its first instruction's time)
    bundles.py      the two busybox bundles: the timed workload, and `sleep` for the background
    hostns.py       cgroup mode, the private mount namespace crun needs on a hybrid host,
                    and the cgroups a run's containers left
    contenders.py   one class per way to start a container, behind one Protocol
    cri_daemon.py   the benchmark's own `skiff cri serve`, and peer CRI sockets
    stats.py        percentiles, ratios to skiff, throughput
    breakdown.py    where the library's time goes, per phase, from runtime/trace.py's marks
    machine.py      what the numbers were measured on
    results.py      everything measured, and the JSON document
    report.py       the text tables, and markdown_table for bench/start_latency.py
    plot.py         the PNG (matplotlib, the `bench` extra)
    start.py        options, the measurement phases, cleanup
    __main__.py     the measuring side, re-executed in the private mount namespace

It sits above the orchestrator, as a command line does: it may use any layer.
"""
