"""Container start latency, skiff against runc, crun and CRI services (issues 3 and 6): a thin
script over `skiff bench start` (the skiff.benchmark package), which writes its section of
docs/benchmarks.md and the PNG docs/start_latency.png.

    ./dev.sh bench [--count N] [--warmup N] [--concurrency N] [--running K,K,...] [--markdown PATH]

What `skiff bench start` measures and how is said in the section it writes (and in
skiff/benchmark/). This script adds, for reference, the start of the venv's bare
interpreter (`python -c pass`), which every skiff-runc call pays before skiff's own code
runs: no container, so measured here, right after the containers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Any

from report import write_section  # bench/report.py: this script's directory is on sys.path

from skiff.benchmark.report import markdown_table
from skiff.benchmark.start import parse_options, run
from skiff.benchmark.stats import percentile
from skiff.errors import SkiffError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG = os.path.join(REPO, "docs", "start_latency.png")
TARGET_CLI_VS_RUNC = 1.5          # issue 3
TARGET_IN_PROCESS_VS_CRUN = 0.7   # issue 6
TARGET_GROWTH_500 = 1.2           # issue 6


def interpreter_ms(exe: str, count: int, warmup: int) -> list[float]:
    """`exe -c pass`, start to exit, as the benchmark times the runtimes' command lines."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    actions = [(os.POSIX_SPAWN_DUP2, devnull, fd) for fd in (0, 1)]
    samples = []
    try:
        for i in range(warmup + count):
            start = time.perf_counter_ns()
            pid = os.posix_spawn(exe, [exe, "-c", "pass"], env, file_actions=actions)
            _, status = os.waitpid(pid, 0)
            elapsed = time.perf_counter_ns() - start
            if os.waitstatus_to_exitcode(status) != 0:
                raise SkiffError(f"`{exe} -c pass` failed: {status}")
            if i >= warmup:
                samples.append(elapsed / 1e6)
    finally:
        os.close(devnull)
    return samples


def summary(samples: list[float]) -> dict[str, float]:
    return {"count": len(samples), "p50": percentile(samples, 50), "p90": percentile(samples, 90),
            "p99": percentile(samples, 99), "mean": statistics.fmean(samples)}


# -- the markdown -------------------------------------------------------------------------------

def results_rows(doc: dict[str, Any], pythons: dict[str, dict[str, float]]) -> list[list[str]]:
    summaries: dict[str, dict[str, float]] = doc["sequential"]["summaries"]
    samples = {c["name"]: c["sample"] for c in doc["contenders"]}
    refs = [r for r in ("library", "runc", "crun") if r in summaries]
    rows = [["", "sample", "runs", "p50 ms", "p90 ms", "p99 ms", "mean ms", *[f"p50 / {r}" for r in refs]]]
    everyone = [(n, samples[n], s) for n, s in summaries.items()] + [(n, "no container", s) for n, s in pythons.items()]
    for name, sample, s in everyone:
        rows.append([name, sample, str(int(s["count"])), f"{s['p50']:.1f}", f"{s['p90']:.1f}", f"{s['p99']:.1f}",
                     f"{s['mean']:.1f}", *[f"{s['p50'] / summaries[r]['p50']:.2f}x" for r in refs]])
    return rows


def concurrency_rows(doc: dict[str, Any]) -> list[list[str]]:
    c = doc["concurrency"]
    rows = [["", "runs", "p50 ms", "p90 ms", "p99 ms", "containers/s", "p50 / sequential p50"]]
    for name, s in c["summaries"].items():
        alone = doc["sequential"]["summaries"][name]["p50"]
        rows.append([name, str(s["count"]), f"{s['p50']:.1f}", f"{s['p90']:.1f}", f"{s['p99']:.1f}",
                     f"{c['containers_per_s'][name]:.1f}", f"{s['p50'] / alone:.2f}x"])
    return rows


def growth_rows(doc: dict[str, Any]) -> list[list[str]]:
    g = doc["growth"]
    levels = [str(k) for k in g["running"]]
    rows = [["", *[f"p50 ms, {k} running" for k in levels], *[f"{k} / 0" for k in levels if k != "0"]]]
    for name, points in g["p50_ms"].items():
        ratios = g["ratio_to_0"].get(name, {})
        rows.append([name, *[f"{points[k]:.1f}" if k in points else "-" for k in levels],
                     *[f"{ratios[k]:.2f}x" if k in ratios else "-" for k in levels if k != "0"]])
    return rows


def breakdown_rows(doc: dict[str, Any]) -> list[list[str]]:
    b = doc["breakdown"]
    rows = [["phase", "what ends with the mark", "p50 ms", "mean ms", "share"]]
    rows += [[p["name"], p["what"], f"{p['p50']:.2f}", f"{p['mean']:.2f}", f"{p['share'] * 100:.0f}%"]
             for p in b["phases"]]
    rows.append(["total", "from the call to Runtime.run to its return", f"{b['total_p50_ms']:.2f}",
                 f"{sum(p['mean'] for p in b['phases']):.2f}", "100%"])
    return rows


def verdicts(summaries: dict[str, dict[str, float]]) -> list[str]:
    if not all(n in summaries for n in ("skiff-runc", "runc", "crun", "library", "library-warm")):
        return ["not judged: skiff-runc, runc, crun and the library (cold and warm) were not all measured"]
    cli, runc, crun, lib, warm = (summaries[n] for n in ("skiff-runc", "runc", "crun", "library", "library-warm"))
    ratio = cli["p50"] / runc["p50"]
    met = ratio <= TARGET_CLI_VS_RUNC
    first = (f"skiff-runc p50 <= {TARGET_CLI_VS_RUNC}x runc's p50: " + ("**met**" if met else "**not met**")
             + f". skiff-runc's p50 is {cli['p50']:.1f} ms, {ratio:.2f}x runc's {runc['p50']:.1f} ms "
             + f"(the target allows up to {TARGET_CLI_VS_RUNC * runc['p50']:.1f} ms)"
             + ("." if met else f": {cli['p50'] - TARGET_CLI_VS_RUNC * runc['p50']:.1f} ms over."))
    limit = TARGET_IN_PROCESS_VS_CRUN * crun["p50"]
    ok = warm["p50"] <= limit
    second = (f"(issue 6) in-process start to exit <= {TARGET_IN_PROCESS_VS_CRUN}x crun's `crun run` (p50): "
              + ("**met**" if ok else "**not met**")
              + f". The warm library takes {warm['p50']:.1f} ms, {warm['p50'] / crun['p50']:.2f}x crun's "
              + f"{crun['p50']:.1f} ms (the target allows {limit:.1f} ms)"
              + ("." if ok else f": {warm['p50'] - limit:.1f} ms over.")
              + f" Cold (no process made ahead): {lib['p50']:.1f} ms, {lib['p50'] / crun['p50']:.2f}x.")
    return [first, second]


def growth_verdicts(doc: dict[str, Any]) -> list[str]:
    ratios = doc["growth"].get("ratio_to_0", {})
    out = []
    for name in ("library-warm", "library", "cri:skiff"):
        r = ratios.get(name, {}).get("500")
        if r is None:
            continue
        ok = r <= TARGET_GROWTH_500
        what = "pods" if name.startswith("cri:") else "containers"
        out.append(f"(issue 6) {name}: p50 with 500 {what} running <= {TARGET_GROWTH_500}x the p50 with none: "
                   + ("**met**" if ok else "**not met**") + f" ({r:.2f}x).")
    return out


def markdown(doc: dict[str, Any], pythons: dict[str, dict[str, float]], markdown_path: str, png_path: str) -> str:
    m, o = doc["machine"], doc["options"]
    summaries = doc["sequential"]["summaries"]
    versions = "\n".join(f"| {c['name']} | {c['version']} |" for c in doc["contenders"])
    png = os.path.relpath(png_path, os.path.dirname(os.path.abspath(markdown_path)))
    body = f"""## Container start latency

What is measured: the start-to-exit time of one container running `/stamp`, one container at
a time, for

- **library**: `skiff.runtime.container.Runtime(DIR).run(ID, BUNDLE)` called in the
  benchmark's own process, with skiff already imported and warmed up: a program that embeds
  skiff, without a new interpreter per container;
- **library-warm**: the same with `Runtime(DIR, warm=1)`, skiff's fast path for a long-lived
  caller: the container's first process is made ahead of time with its PID, network, IPC and
  UTS namespaces, by a prespawner (a small interpreter started by `Runtime()`,
  skiff/runtime/prespawn.py), and takes the create's plan when it comes; the cgroup parents are kept between containers. After each
  run the benchmark waits, outside the clock, until the next process is made (so that it never
  shares the CPU with another contender's run): this is the start with one ready. Under
  `--concurrency` nothing waits, and the making competes with the starts. That is the cgroup
  v1 path, which the benchmark's layout gives (below); where a container's cgroup has a
  cgroup2 part, a warm runtime makes no process ahead (README, "warm");
- **skiff-runc**: `skiff-runc --root DIR run --bundle BUNDLE ID`, a new Python interpreter per
  container (the venv's console script);
- **runc** and **crun**: the same command line with Debian's binaries;
- **cri:skiff** (and **cri:NAME** for a containerd or CRI-O socket, when one runs): "pod
  ready", the time from RunPodSandbox through CreateContainer and StartContainer until
  ContainerStatus says RUNNING, for a pod of one `sleep 3600` container, through the CRI
  socket of a `skiff cri serve` the benchmark starts on its own socket, state and image store
  (network mode "none": the pod's network namespace holds only `lo`, as the bundle's does). A
  CRI service has no foreground run, so this sample is not a run to exit: compare it with the
  others as "what kubelet waits for";
- **python -c pass**: for reference, no container: the venv's interpreter starting and
  exiting, which every skiff-runc call pays before skiff's own code runs; **python -c pass,
  no venv** is the same interpreter binary outside the venv. Measured by this script right
  after the containers, one after the other.

`/stamp` is a 168-byte static x86-64 executable that the benchmark writes into the busybox
root filesystem (skiff/benchmark/workload.py): it reads CLOCK_MONOTONIC with the raw
clock_gettime syscall, writes the 16 bytes to its stdout and exits, so every runtime execs the
same tiny binary and the breakdown below gets the time of the workload's first instruction.

Each sample is one whole `run`: create (namespaces, mounts, cgroups), start, wait for the
container to exit, delete. It is timed with `time.perf_counter_ns()` around
`os.posix_spawn` + `os.waitpid` for the command lines (stdin and stdout on /dev/null, stderr
to a memfd; every exit code is checked) and around the call for the library. All runtimes
run the same bundle (Debian's busybox-static as the root filesystem plus `/stamp`, the
default config.json of `skiff-runc spec`, which is runc's, with args `/stamp`), each with its
own `--root` in a temporary directory on a tmpfs (in the benchmark's own mount namespace: runc's
and crun's default roots are on /run, a tmpfs on a host, where this machine's /run and /tmp
are ext4) and a fresh container id per run. The runtimes take
turns of 5 runs in a row, of which the first is not kept, after {o['warmup']} warm-up turns, so
that noise on the machine hits them all alike; {o['count']} measured runs each. Why turns and
not strict alternation: on this machine (a VM whose idle vCPUs are slow to wake) a start right
after another runtime's pays for the switch: crun measured 13.7 ms right after a run of skiff's
library and 8.1 ms right after one of its own.

Set-up that `skiff bench start` does, and why:

- **Bytecode.** This environment sets `PYTHONDONTWRITEBYTECODE=1`, with which every
  skiff-runc start would compile skiff's modules again; users' machines cache bytecode. The
  benchmark byte-compiles the skiff package (`compileall`, the repository minus tests/, bench/
  and .venv/) and runs every command without that variable.
- **crun on a hybrid host.** Debian 12's crun 1.8 refuses a hybrid cgroup host ("cgroups in
  hybrid mode not supported, drop all controllers from cgroupv2"), and this host is hybrid.
  The benchmark re-executes itself under `unshare -m --propagation private`, unmounts
  /sys/fs/cgroup/unified in that private mount namespace only, and measures **all** the
  runtimes there (the CRI service too), so that they all see the same legacy (v1-only)
  cgroup layout. A private tmpfs covers the mount point: crun in legacy mode still makes
  /sys/fs/cgroup/unified/&lt;id&gt;/cgroup.procs, and on the bare mount point that would land
  in the host's /sys/fs/cgroup tmpfs, hidden under the cgroup2 mount.
- **ociVersion.** crun 1.8 rejects `"ociVersion": "1.2.0"` ("unknown version specified");
  the bundle says `1.0.2`, which none of the runtimes uses for anything else.

Reproduce (as root, Debian 12): `./dev.sh bench` (options: `--count N`, `--warmup N`,
`--concurrency N`, `--running K,K,...`, `--markdown PATH`); it installs runc and crun when
missing and rewrites this section of the file and {png}. The same measurements without the
markdown: `skiff bench start --help`.

### Machine

| | |
|:---|:---|
| CPUs | {m['cpus']} ({m['cpu_model']}) |
| kernel | {m['kernel']} |
| cgroups | host: {m['host_cgroups']}; as measured: {m['bench_cgroups']} |
{versions}
| Python | {m['python']} |
| skiff | {m['skiff']} |
| date | {m['date']}; load average {m['load_before']} before the runs, {m['load_after']} after |

The machine is shared (other work ran on it meanwhile); the alternating turns spread that
noise evenly, and p90/p99 are where it shows.

### Results

{markdown_table(results_rows(doc, pythons))}

p99 over {o['count']} runs rests on the slowest {max(1, round(o['count'] / 100))} or so: read it as "the tail",
not as a precise figure.

![start latency per contender, and p50 against the containers already running]({png})

### Targets

""" + "\n".join(f"{i}. {v}" for i, v in enumerate(verdicts(summaries) + growth_verdicts(doc), 1)) + "\n"
    if all(n in summaries for n in ("skiff-runc", "library", "runc")) and pythons:
        cli, lib = summaries["skiff-runc"], summaries["library"]
        interp, bare = pythons["python -c pass"], pythons["python -c pass, no venv"]
        body += f"""
Where skiff-runc's time goes: of its {cli['p50']:.1f} ms at p50, starting the venv's interpreter takes
{interp['p50']:.1f} ms (python -c pass; {bare['p50']:.1f} ms outside the venv: dev.sh replaces the editable
install's import hook with a plain path entry, so the venv costs nothing). The container work
itself takes about what the in-process `Runtime.run` takes, {lib['p50']:.1f} ms. The remaining
{max(0.0, cli['p50'] - interp['p50'] - lib['p50']):.1f} ms is what a fresh interpreter pays on top. Measured apart
(with `python -X importtime` and cProfile): about 29 ms of imports (argparse 5, json/ctypes/socket 3.5, dataclasses/typing/enum
7, the OCI model 4.5, the runtime's modules 9), and about 8 ms of first-use costs in the first
`run` of a process, most of it the first write to a v1 `cgroup.procs`, which waits for an RCU
grace period that later writes share (runc and crun pay it too, once per process as well).
For scale: target 1 gives skiff-runc {TARGET_CLI_VS_RUNC * summaries['runc']['p50']:.1f} ms in all, and the bare interpreter
takes {bare['p50']:.1f} ms of that before any of skiff is imported: a CPython command line that imports
what a container start needs cannot meet it; the in-process library (how `skiff cri serve`
starts containers) and a fork server that skiff-runc could hand its work to are the ways
below runc.
"""
    if doc["concurrency"]:
        body += f"""
### Under concurrency

{doc['concurrency']['threads']} threads start containers at once, {o['count']} runs per contender shared among them
(each contender in turn, after the sequential runs warmed everything up); containers/s is the
runs over the wall time from the first start to the last end. The library's threads call
`Runtime.run` in the benchmark's process at once (one Python interpreter: its lock is
shared).

{markdown_table(concurrency_rows(doc))}
"""
    if len(doc["growth"]["running"]) > 1:
        body += f"""
### With containers already running

p50 of the same runs with K containers already running (`sleep 3600` from a second bundle on
the same root filesystem, read-only), started by the same runtime: one contender at a time,
each with K of its own, deleted before the next; {o['count']} runs at each K after {o['warmup']} warm-up
runs, in a row, {o.get('settle_ms', 0)} ms apart (`--settle`, outside the clock). K = 0 is measured that way
too, so each ratio compares like with like; runs in a row are not the turns of the table above,
and their p50 can differ from it.

{markdown_table(growth_rows(doc))}

Why the runs are apart: after a container or pod is removed, the kernel goes on cleaning up
after it in its workers. A removed memory cgroup hands the objects on the LRU lists of every
file system to its parent (memcg_reparent_list_lrus), holding the mutex each new file system
takes to register its own lists, and a network namespace is dismantled. With 500 pods there
are some 4,500 file systems to walk (about 9 a pod: the overlay root, /dev/shm, and each
container's proc, sysfs, mqueue, devpts, /dev, /sys/fs/cgroup and masked directories), twice
per removed pod (its pod and container cgroups). Back to back, each run shares the CPUs and
those locks with the clean-up of the run before it, so what grows is the clean-up of the
previous run, not the start. perf showed the kernel workers in that walk; a pause of 30 ms
after each run was enough for it to be done. Back to back (`--settle 0`), on 2026-11-26,
500 / 0 was 1.20x for library, 1.07x for library-warm, 1.16x for crun and 1.23x for cri:skiff
(1.45x to 1.50x for cri:skiff before the layers and upper directories got mounts of their
own, below); with the pause, in the run right after it, 1.01x, 1.06x, 1.00x and 0.93x. The
pause makes some contenders slower at every K (crun above all: 6.8 ms back to back, 17.8 ms
with the pause, that run), as a start from an idle machine is; the ratios compare runs
measured the same way.

What still grows with the pause is the kernel's, and every runtime pays it (perf, warm library,
150 runs at K = 0 and 500, 2026-11-26; about 0.1 ms each per run at 500): pivot_root visits
every thread on the machine (chroot_fs_refs), one `sleep` more per container; a new network
namespace's sysfs mount compares itself with every sysfs superblock (sget_fc), one per
container's namespace; a new v1 cpuset looks at each of its siblings (cpuset_css_online),
every container of the parent. On the warm library's 4 to 5 ms, that is about 1.1x; its
500 / 0 ranged from 0.94x to 1.27x over seven runs that day, with and without the pause.

What grew in skiff itself is gone: a warm runtime's containers copy an almost empty mount
namespace (runtime/mount_template.py) instead of the host's, which has about 5 mounts per
pod (2,500 extra host mounts had taken the warm library's start from 4.9 to 16.4 ms); the
pods' /etc files, the image layers and the containers' upper directories are on mounts of
their own (runtime/own_mount.py: a bind of a file, and overlayfs' copy of a layer's or an
upper directory's mount, had looked at every mount of the state directory: 0.35 ms a file,
0.12 ms an overlay with 500 pods); masked directories share one read-only tmpfs a container;
a pod's stop and removal read only its containers' records (they had read all 500); in bridge mode, skiff's nftables
table is found by its chains (`list tables` had read every pod's rules, 2 ms with 500 pods)
and a pod's eth0 has no IPv6 link-local address (its neighbour discovery was flooded to
every pod); the container monitor waits with epoll instead of polling every container's
pipes; a whole id resolves without a listing of the store; a name reservation is one file,
not a rewrite of an index of all the names; a new v1 cpuset clones its parent's CPUs instead
of a write that rebuilds the scheduler domains; /proc/self/mountinfo is read once per
process.
"""
    if doc["breakdown"]:
        body += f"""
### Where the library's time goes

`skiff bench start --breakdown`: {doc['breakdown']['runs']} more runs of {doc['breakdown'].get('contender', 'the library')}, each with `Runtime.run(..., trace=...)`
(skiff/runtime/trace.py: CLOCK_MONOTONIC marks taken where the work happens, in this process and
in the container's processes) plus the workload's own first-instruction time from `/stamp`.
In time order, each mark ends the phase it names. There is no network phase: a runtime run
makes the network namespace (holding `lo`) at the clone, inside "fork", and a warm runtime
before the run starts; pod networking is the CRI service's (`./dev.sh bench cri`). For the
warm library, "fork" is the hand-over of the plan to the process made ahead of time. The
share is of the mean total.

{markdown_table(breakdown_rows(doc))}
""" + "".join(f"\n{n}\n" for n in doc["breakdown"]["notes"])
    notes = [f"skipped {n}: {why}" for n, why in doc["skipped"].items()] + doc["notes"]
    if notes:
        body += "\n### Notes from this run\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    return body


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--count", type=int, default=200, help="measured runs per runtime (default %(default)s)")
    parser.add_argument("--warmup", type=int, default=5, help="unmeasured rounds first (default %(default)s)")
    parser.add_argument("--concurrency", type=int, default=2, help="threads at once (default %(default)s)")
    parser.add_argument("--running", default="0,1,100,500", help="containers already running (default %(default)s)")
    parser.add_argument("--settle", type=int, help="ms to wait after each run with containers running (default 30)")
    parser.add_argument("--markdown", default=os.path.join(REPO, "docs", "benchmarks.md"),
                        help="where to write the report (default docs/benchmarks.md)")
    parser.add_argument("--png", default=PNG, help="where to draw the figure (default docs/start_latency.png)")
    args = parser.parse_args()
    if args.count < 10 or args.warmup < 0:
        parser.error("--count must be at least 10 and --warmup at least 0")
    with tempfile.TemporaryDirectory(prefix="skiff-bench-report-") as tmp:
        json_path = os.path.join(tmp, "start.json")
        try:
            options = parse_options(runtimes=None, count=args.count, warmup=args.warmup,
                                    concurrency=args.concurrency, running=args.running, breakdown=True,
                                    json_path=json_path, png_path=args.png, cri_sockets=[], cri_image=None,
                                    settle_ms=args.settle)
            code = run(options)
            if code != 0:
                return code
            print("start_latency: python -c pass, for reference", file=sys.stderr)
            pythons = {"python -c pass": summary(interpreter_ms(sys.executable, args.count, args.warmup)),
                       "python -c pass, no venv": summary(interpreter_ms(os.path.realpath(sys.executable),
                                                                           args.count, args.warmup))}
        except SkiffError as e:
            print(f"start_latency: {e}", file=sys.stderr)
            return 1
        with open(json_path) as f:
            doc = json.load(f)
    for name, s in pythons.items():
        print(f"{name}: p50 {s['p50']:.1f} ms, p99 {s['p99']:.1f} ms")
    write_section(args.markdown, "start_latency", markdown(doc, pythons, args.markdown, args.png))
    print(f"\nwrote its section of {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
