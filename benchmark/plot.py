"""The PNG: latency distributions per contender (box plots) and the growth curve (p50 against
the number of containers already running). matplotlib comes with skiff's `bench` extra; it
is imported here only, with the Agg backend (no display needed)."""

from __future__ import annotations

from skiff.benchmark.results import Results

MISSING = "matplotlib is missing: no PNG (install skiff's `bench` extra: pip install 'skiff[bench]')"


def available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def draw(path: str, r: Results) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in r.names if r.sequential.get(n)]
    fig, (dist, growth) = plt.subplots(1, 2, figsize=(13, 5.5), width_ratios=(3, 2))
    try:
        samples = [r.sequential[n] for n in names]
        dist.boxplot(samples, whis=(1, 99), showfliers=True, flierprops={"markersize": 3})
        dist.set_xticks(range(1, len(names) + 1),
                        [f"{n}\n({c.sample})" for n in names for c in r.contenders if c.name == n], fontsize=8)
        everything = [v for s in samples for v in s]
        if everything and min(everything) > 0 and max(everything) / min(everything) > 20:
            dist.set_yscale("log")  # a pod-ready beside a 10 ms run: keep both readable
        dist.set_ylabel("ms")
        dist.set_title(f"start latency, sequential ({r.options['count']} runs each; whiskers p1-p99)", fontsize=10)
        dist.grid(axis="y", alpha=0.3)

        points = r.growth_p50()
        for name in names:
            ks = sorted(points.get(name, {}))
            growth.plot(ks, [points[name][k] for k in ks], marker="o", label=name)
        levels = r.running_levels()
        if levels[-1] > 20:
            growth.set_xscale("symlog", linthresh=1)  # 0, 1, 100, 500 all apart
        growth.set_xticks(levels, [str(k) for k in levels])
        growth.set_xlabel("containers already running")
        growth.set_ylabel("p50 ms")
        if len(levels) < 2:
            growth.set_title("growth: not measured (--running 0)", fontsize=10)
        else:
            growth.set_title("p50 against containers already running", fontsize=10)
        growth.grid(alpha=0.3)
        growth.legend(fontsize=8)
        fig.suptitle(f"skiff bench start: workload {' '.join(r.workload)}, {r.machine.cpus} CPUs, "
                     f"kernel {r.machine.kernel}", fontsize=11)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
