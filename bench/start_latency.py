"""Start-to-exit latency of a `/bin/true` container: skiff-runc, runc, crun, and skiff's
library called in-process, on one busybox bundle (issue 3's benchmark).

    ./dev.sh bench [--count N] [--warmup N] [--markdown PATH]

Each sample is one whole `run` (create, start, wait for the exit, delete), timed with
perf_counter_ns around posix_spawn + waitpid for the three CLIs and around `Runtime.run`
for the library. The runtimes take turns (round-robin), so that noise on this shared machine
hits them all alike. docs/benchmarks.md, whose start_latency section this script writes,
says what and why.

Debian 12's crun 1.8 refuses a hybrid cgroup host ("cgroups in hybrid mode not supported,
drop all controllers from cgroupv2"), so the script re-executes itself in a private mount
namespace (`unshare -m --propagation private`) in which /sys/fs/cgroup/unified is unmounted
and every runtime is measured, the same way. A private tmpfs then covers the mount point:
crun in legacy mode still mkdirs /sys/fs/cgroup/unified/<id> and writes a cgroup.procs
there, which on the bare mount point would land, unremovable and hidden under the cgroup2
mount, in the host's /sys/fs/cgroup tmpfs. Nothing is unmounted in the host's namespace.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Protocol

from report import write_section  # bench/report.py: this script's directory is on sys.path

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CGROUP_ROOT = "/sys/fs/cgroup"
UNIFIED = f"{CGROUP_ROOT}/unified"
# crun 1.8 rejects ociVersion 1.2.0 ("unknown version specified"); the bundle says 1.0.2,
# the version Debian's runc 1.1 writes, which no runtime here reads for anything else.
OCI_VERSION = "1.0.2"
# Container ids carry this, so one `find /sys/fs/cgroup -name '*skiff*'` finds what any of
# the three runtimes left behind.
ID_TAG = "skiffbench"
TARGET_CLI_VS_RUNC = 1.5


class BenchError(Exception):
    pass


# -- the contenders ------------------------------------------------------------------------

class Contender(Protocol):
    name: str

    def run_once(self, container_id: str) -> int:
        """One start-to-exit, in nanoseconds; BenchError when it fails."""
        ...

    def leftovers(self) -> list[str]:
        """Container ids the runtime still lists."""
        ...

    def force_delete(self, container_id: str) -> None: ...


class Command:
    """A runtime CLI: `<exe> --root <root> run --bundle <bundle> <id>` in a new process."""

    def __init__(self, name: str, exe: str, root: str, bundle: str, env: dict[str, str], err_path: str) -> None:
        self.name = name
        self.exe = exe
        self.root = root
        self.bundle = bundle
        self.env = env
        self.err_path = err_path
        self.devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        self.err = os.open(err_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        # The same three dup2s for every contender: stdin and stdout /dev/null, stderr a file
        # read only when the run fails.
        self.file_actions = [(os.POSIX_SPAWN_DUP2, self.devnull, 0), (os.POSIX_SPAWN_DUP2, self.devnull, 1),
                             (os.POSIX_SPAWN_DUP2, self.err, 2)]

    def argv(self, container_id: str) -> list[str]:
        return [self.exe, "--root", self.root, "run", "--bundle", self.bundle, container_id]

    def run_once(self, container_id: str) -> int:
        argv = self.argv(container_id)
        os.ftruncate(self.err, 0)
        os.lseek(self.err, 0, os.SEEK_SET)
        start = time.perf_counter_ns()
        pid = os.posix_spawn(argv[0], argv, self.env, file_actions=self.file_actions)
        _, status = os.waitpid(pid, 0)
        elapsed = time.perf_counter_ns() - start
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            os.lseek(self.err, 0, os.SEEK_SET)
            stderr = os.read(self.err, 65536).decode(errors="replace").strip()
            raise BenchError(f"{self.name}: `{' '.join(argv)}` exited with {code}: {stderr or '(no stderr)'}")
        return elapsed

    def leftovers(self) -> list[str]:
        out = subprocess.run([self.exe, "--root", self.root, "list", "-q"], env=self.env,
                             capture_output=True, text=True)
        if out.returncode != 0:
            raise BenchError(f"{self.name} list: exit {out.returncode}: {out.stderr.strip()}")
        return out.stdout.split()

    def force_delete(self, container_id: str) -> None:
        subprocess.run([self.exe, "--root", self.root, "delete", "--force", container_id], env=self.env,
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def close(self) -> None:
        os.close(self.devnull)
        os.close(self.err)


class Interpreter(Command):
    """Reference only: the venv's python starting and doing nothing, what every skiff-runc
    call pays before skiff's own code runs."""

    def argv(self, container_id: str) -> list[str]:
        return [self.exe, "-c", "pass"]

    def leftovers(self) -> list[str]:
        return []

    def force_delete(self, container_id: str) -> None:
        pass


class Library:
    """skiff's `Runtime.run` in this process: no interpreter start, modules already imported."""

    def __init__(self, name: str, root: str, bundle: str) -> None:
        # Imported here, after the namespace is set up: skiff caches the cgroup mode it sees.
        from skiff.runtime.container import Runtime

        self.name = name
        self.bundle = bundle
        self.runtime = Runtime(root)

    def run_once(self, container_id: str) -> int:
        start = time.perf_counter_ns()
        try:
            code = self.runtime.run(container_id, self.bundle)
        except Exception as e:
            raise BenchError(f"{self.name}: Runtime.run({container_id!r}): {type(e).__name__}: {e}") from e
        elapsed = time.perf_counter_ns() - start
        if code != 0:
            raise BenchError(f"{self.name}: Runtime.run({container_id!r}) returned {code}")
        return elapsed

    def leftovers(self) -> list[str]:
        return [s.id for s in self.runtime.states()]

    def force_delete(self, container_id: str) -> None:
        with contextlib.suppress(Exception):
            self.runtime.delete(container_id, force=True)


# -- statistics and the report ---------------------------------------------------------------

@dataclass(frozen=True, slots=True, kw_only=True)
class Summary:
    name: str
    count: int
    p50: float  # milliseconds
    p90: float
    p99: float
    mean: float


def summarize(name: str, samples_ns: list[int]) -> Summary:
    ms = [s / 1e6 for s in samples_ns]
    cuts = statistics.quantiles(ms, n=100, method="inclusive")
    return Summary(name=name, count=len(ms), p50=cuts[49], p90=cuts[89], p99=cuts[98], mean=statistics.fmean(ms))


def table(summaries: list[Summary], runc: Summary, crun: Summary) -> list[list[str]]:
    rows = [["", "runs", "p50 ms", "p90 ms", "p99 ms", "mean ms", "p50 / runc", "p50 / crun"]]
    for s in summaries:
        rows.append([s.name, str(s.count), f"{s.p50:.1f}", f"{s.p90:.1f}", f"{s.p99:.1f}", f"{s.mean:.1f}",
                     f"{s.p50 / runc.p50:.2f}x", f"{s.p50 / crun.p50:.2f}x"])
    return rows


def text_table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                     for r in rows)


def markdown_table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "|".join([":---"] + ["---:"] * (len(rows[0]) - 1)) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return "\n".join(lines)


@dataclass(frozen=True, slots=True, kw_only=True)
class Machine:
    cpus: int
    cpu_model: str
    kernel: str
    host_cgroups: str
    bench_cgroups: str
    runc: str
    crun: str
    python: str
    skiff: str
    date: str
    load: str


def cgroup_mode() -> str:
    """As the runtimes tell it: the filesystem at /sys/fs/cgroup, then at unified/."""
    fstypes: dict[str, str] = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            mountpoint = fields[4]
            fstypes[mountpoint] = fields[fields.index("-") + 1]  # the last mount on a point wins
    if fstypes.get(CGROUP_ROOT) == "cgroup2":
        return "unified (cgroup v2 only)"
    if fstypes.get(UNIFIED) == "cgroup2":
        with open(f"{UNIFIED}/cgroup.controllers") as f:
            controllers = f.read().split()
        return f"hybrid (controllers on v1; cgroup2 on {UNIFIED} with {' '.join(controllers) or 'no controllers'})"
    return "legacy (cgroup v1 only)"


def load_average() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def first_line(argv: list[str]) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.splitlines()[0]


def debian_version(package: str) -> str:
    out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True)
    return f", Debian {out.stdout}" if out.returncode == 0 else ""


def skiff_version() -> str:
    import skiff

    head = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True)
    if head.returncode != 0:
        return skiff.__version__
    return f"{skiff.__version__}, commit {head.stdout.strip()}" + (" with local changes" if dirty.stdout.strip() else "")


def machine(host_cgroups: str, runc: str, crun: str) -> Machine:
    model = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return Machine(
        cpus=len(os.sched_getaffinity(0)), cpu_model=model, kernel=platform.release(), host_cgroups=host_cgroups,
        bench_cgroups=cgroup_mode(),
        runc=first_line([runc, "--version"]) + debian_version("runc"),
        crun=first_line([crun, "--version"]) + debian_version("crun"),
        python=f"{platform.python_version()} ({os.path.realpath(sys.executable)})", skiff=skiff_version(),
        date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), load=load_average())


def verdicts(by_name: dict[str, Summary]) -> list[str]:
    cli, runc, crun, lib = by_name["skiff-runc"], by_name["runc"], by_name["crun"], by_name["skiff library"]
    ratio = cli.p50 / runc.p50
    first = (f"skiff-runc p50 <= {TARGET_CLI_VS_RUNC}x runc's p50: "
             + ("**met**" if ratio <= TARGET_CLI_VS_RUNC else "**not met**")
             + f". skiff-runc's p50 is {cli.p50:.1f} ms, {ratio:.2f}x runc's {runc.p50:.1f} ms "
             + f"(the target allows up to {TARGET_CLI_VS_RUNC * runc.p50:.1f} ms)"
             + ("." if ratio <= TARGET_CLI_VS_RUNC else
                f": {cli.p50 - TARGET_CLI_VS_RUNC * runc.p50:.1f} ms over."))
    ok = lib.p50 <= crun.p50
    second = ("in-process library start <= crun's whole-process time (p50): "
              + ("**met**" if ok else "**not met**")
              + f". `Runtime.run` takes {lib.p50:.1f} ms at p50, crun {crun.p50:.1f} ms "
              + f"({lib.p50 / crun.p50:.2f}x)"
              + ("." if ok else f": {lib.p50 - crun.p50:.1f} ms over.")
              + f" At p99: {lib.p99:.1f} ms against {crun.p99:.1f} ms.")
    return [first, second]


def markdown(m: Machine, rows: list[list[str]], by_name: dict[str, Summary], args: argparse.Namespace,
             notes: list[str]) -> str:
    load_after = load_average()
    interp, bare = by_name["python -c pass"], by_name["python -c pass, no venv"]
    cli, lib, runc = by_name["skiff-runc"], by_name["skiff library"], by_name["runc"]
    body = f"""## Container start latency

What is measured: the start-to-exit time of one container running `/bin/true`, one container
at a time, for

- **skiff-runc**: `skiff-runc --root DIR run --bundle BUNDLE ID`, a new Python interpreter per
  container (the venv's console script);
- **runc** and **crun**: the same command line with Debian's binaries;
- **skiff library**: `skiff.runtime.container.Runtime(DIR).run(ID, BUNDLE)` called in the
  benchmark's own process, with skiff already imported and warmed up: how the CRI daemon
  will start containers, without a new interpreter;
- **python -c pass**: for reference, no container: the venv's interpreter starting and
  exiting, which every skiff-runc call pays before skiff's own code runs; **python -c pass,
  no venv** is the same interpreter binary outside the venv.

Each sample is one whole `run`: create (namespaces, mounts, cgroups), start, wait for the
container to exit, delete. It is timed with `time.perf_counter_ns()` around
`os.posix_spawn` + `os.waitpid` for the command lines (stdin and stdout on /dev/null, stderr
to a file; every exit code is checked) and around the call for the library. All runtimes
run the same bundle (Debian's busybox-static as the root filesystem, the default
config.json of `skiff-runc spec`, which is runc's, with args `/bin/true`), each with its own
`--root` in a temporary directory and a fresh container id per run. The runtimes take turns,
round-robin (skiff-runc, runc, crun, library, the two pythons), after {args.warmup} warm-up rounds, so
that noise on the machine hits them all alike; {args.count} measured runs each.

Set-up that the script does, and why:

- **Bytecode.** This environment sets `PYTHONDONTWRITEBYTECODE=1`, with which every
  skiff-runc start would compile skiff's modules again; users' machines cache bytecode. The
  script byte-compiles the skiff package (`compileall`, the repository minus tests/, bench/
  and .venv/) and runs every command without that variable.
- **crun on a hybrid host.** Debian 12's crun 1.8 refuses a hybrid cgroup host ("cgroups in
  hybrid mode not supported, drop all controllers from cgroupv2"), and this host is hybrid.
  The script re-executes itself under `unshare -m --propagation private`, unmounts
  /sys/fs/cgroup/unified in that private mount namespace only, and measures **all** the
  runtimes there, so that they all see the same legacy (v1-only) cgroup layout. A private
  tmpfs covers the mount point: crun in legacy mode still makes
  /sys/fs/cgroup/unified/&lt;id&gt;/cgroup.procs, and on the bare mount point that would land
  in the host's /sys/fs/cgroup tmpfs, hidden under the cgroup2 mount.
- **ociVersion.** crun 1.8 rejects `"ociVersion": "1.2.0"` ("unknown version specified");
  the bundle says `{OCI_VERSION}`, which none of the runtimes uses for anything else.

Reproduce (as root, Debian 12): `./dev.sh bench` (options: `--count N`, `--warmup N`,
`--markdown PATH`); it installs runc and crun when missing and rewrites this section of the file.

### Machine

| | |
|:---|:---|
| CPUs | {m.cpus} ({m.cpu_model}) |
| kernel | {m.kernel} |
| cgroups | host: {m.host_cgroups}; as measured: {m.bench_cgroups} |
| runc | {m.runc} |
| crun | {m.crun} |
| Python | {m.python} |
| skiff | {m.skiff} |
| date | {m.date}; load average {m.load} before the runs, {load_after} after |

The machine is shared (other work ran on it meanwhile); the round-robin order spreads that
noise evenly, and p90/p99 are where it shows.

### Results

{markdown_table(rows)}

p99 over {args.count} runs rests on the slowest {max(1, round(args.count / 100))} or so: read it as "the tail",
not as a precise figure.

### Targets (issue 3)

""" + "\n".join(f"{i}. {v}" for i, v in enumerate(verdicts(by_name), 1)) + f"""

Where skiff-runc's time goes: of its {cli.p50:.1f} ms at p50, starting the venv's interpreter takes
{interp.p50:.1f} ms (python -c pass; {bare.p50:.1f} ms outside the venv: dev.sh replaces the editable
install's import hook with a plain path entry, so the venv costs nothing). The container work
itself takes about what the in-process `Runtime.run` takes, {lib.p50:.1f} ms. The remaining
{max(0.0, cli.p50 - interp.p50 - lib.p50):.1f} ms is what a fresh interpreter pays on top. Measured apart
(with `python -X importtime` and cProfile): about 29 ms of imports (argparse 5, json/ctypes/socket 3.5, dataclasses/typing/enum
7, the OCI model 4.5, the runtime's modules 9), and about 8 ms of first-use costs in the first
`run` of a process, most of it the first write to a v1 `cgroup.procs`, which waits for an RCU
grace period that later writes share (runc and crun pay it too, once per process as well).
For scale: target 1 gives skiff-runc {TARGET_CLI_VS_RUNC * runc.p50:.1f} ms in all, and the bare interpreter
takes {bare.p50:.1f} ms of that before any of skiff is imported: a CPython command line that imports
what a container start needs cannot meet it; the in-process library (how `skiff cri serve`
starts containers) and a fork server that skiff-runc could hand its work to (issue 6) are the
ways below runc.
"""
    if notes:
        body += "\n### Notes from this run\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    return body


# -- the two halves: the host side, the namespace side ---------------------------------------

def host_main(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        print("start_latency: run as root (containers need namespaces and cgroups)", file=sys.stderr)
        return 1
    for tool in ("runc", "crun", "unshare", "umount", "mount"):
        if shutil.which(tool) is None:
            print(f"start_latency: {tool} is missing (./dev.sh bench installs runc and crun)", file=sys.stderr)
            return 1
    skiff_runc = os.path.join(os.path.dirname(sys.executable), "skiff-runc")
    if not os.access(skiff_runc, os.X_OK):
        print(f"start_latency: {skiff_runc} is missing: install skiff into the venv", file=sys.stderr)
        return 1
    # Bytecode as an installed skiff has it; --inner drops PYTHONDONTWRITEBYTECODE as well.
    excluded = re.compile(r"/(\.venv|tests|bench|build|\.git|\.mypy_cache|\.cache)/")
    if not compileall.compile_dir(REPO, quiet=1, rx=excluded):
        print("start_latency: byte-compiling skiff failed", file=sys.stderr)
        return 1
    before = skiff_cgroups()
    host_cgroups = cgroup_mode()
    own_ns = os.stat("/proc/self/ns/mnt").st_ino
    prefix = f"{ID_TAG}-{os.getpid()}"
    inner = ["unshare", "-m", "--propagation", "private", "--", sys.executable, os.path.abspath(__file__),
             "--inner", str(own_ns), "--host-cgroups", host_cgroups, "--id-prefix", prefix, *sys.argv[1:]]
    code = subprocess.run(inner).returncode
    # Seen from the host's namespace, which has every hierarchy, unified/ included.
    new = skiff_cgroups() - before
    ours = sorted(p for p in new if os.path.basename(p).startswith(prefix))
    others = sorted(new - set(ours))
    if others:
        print("start_latency: warning: cgroups named skiff appeared meanwhile (skiff's own parent "
              "directories, or other work on this machine):\n  " + "\n  ".join(others), file=sys.stderr)
    if ours:
        print("start_latency: the benchmark's containers left cgroups behind:\n  " + "\n  ".join(ours),
              file=sys.stderr)
        return 1
    return code


def skiff_cgroups() -> set[str]:
    """What `find /sys/fs/cgroup -name '*skiff*'` prints (the container ids carry 'skiff')."""
    found: set[str] = set()
    for top, dirs, _ in os.walk(CGROUP_ROOT):
        found.update(os.path.join(top, d) for d in dirs if "skiff" in d)
    return found


def set_up_namespace(host_ns: int) -> None:
    if os.stat("/proc/self/ns/mnt").st_ino == host_ns:
        raise BenchError("not in a private mount namespace: refusing to unmount anything")
    if cgroup_mode().startswith("hybrid"):
        subprocess.run(["umount", UNIFIED], check=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=755", "skiff-bench", UNIFIED], check=True)


def inner_main(args: argparse.Namespace) -> int:
    try:
        set_up_namespace(args.inner)
    except (BenchError, subprocess.CalledProcessError) as e:
        print(f"start_latency: {e}", file=sys.stderr)
        return 1
    runc, crun = shutil.which("runc"), shutil.which("crun")
    assert runc is not None and crun is not None
    skiff_runc = os.path.join(os.path.dirname(sys.executable), "skiff-runc")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    m = machine(args.host_cgroups, runc, crun)
    tmp = tempfile.mkdtemp(prefix="skiff-bench-")
    contenders: list[Contender] = []
    try:
        from skiff.demo import make_bundle

        bundle = make_bundle(os.path.join(tmp, "bundle"), ("/bin/true",))
        config_path = os.path.join(bundle, "config.json")
        with open(config_path) as f:
            config = json.load(f)
        config["ociVersion"] = OCI_VERSION
        with open(config_path, "w") as f:
            json.dump(config, f, indent=2)

        def state(name: str) -> str:
            return os.path.join(tmp, f"state-{name}")

        def err(name: str) -> str:
            return os.path.join(tmp, f"stderr-{name}")

        contenders = [
            Command("skiff-runc", skiff_runc, state("skiff-runc"), bundle, env, err("skiff-runc")),
            Command("runc", runc, state("runc"), bundle, env, err("runc")),
            Command("crun", crun, state("crun"), bundle, env, err("crun")),
            Library("skiff library", state("library"), bundle),
            Interpreter("python -c pass", sys.executable, "", bundle, env, err("python")),
            Interpreter("python -c pass, no venv", os.path.realpath(sys.executable), "", bundle, env,
                        err("python-no-venv")),
        ]
        samples = measure(contenders, args.count, args.warmup, args.id_prefix)
        notes = check_leftovers(contenders)
    except BenchError as e:
        print(f"start_latency: {e}", file=sys.stderr)
        return 1
    finally:
        for c in contenders:
            if isinstance(c, Command):
                c.close()
        shutil.rmtree(tmp, ignore_errors=True)

    summaries = [summarize(c.name, samples[c.name]) for c in contenders]
    by_name = {s.name: s for s in summaries}
    rows = table(summaries, by_name["runc"], by_name["crun"])
    print(text_table(rows))
    print()
    for v in verdicts(by_name):
        print(re.sub(r"\*\*", "", v))
    for n in notes:
        print(f"note: {n}")
    path = args.markdown
    write_section(path, "start_latency", markdown(m, rows, by_name, args, notes))
    print(f"\nwrote its section of {path}")
    return 0


def measure(contenders: list[Contender], count: int, warmup: int, prefix: str) -> dict[str, list[int]]:
    samples: dict[str, list[int]] = {c.name: [] for c in contenders}
    total = warmup + count
    for i in range(total):
        for n, c in enumerate(contenders):
            container_id = f"{prefix}-{n}-{i}"
            try:
                elapsed = c.run_once(container_id)
            except BaseException:
                c.force_delete(container_id)
                raise
            if i >= warmup:
                samples[c.name].append(elapsed)
        if (i + 1) % 50 == 0 or i + 1 == total:
            print(f"  {i + 1}/{total} rounds", file=sys.stderr)
    return samples


def check_leftovers(contenders: list[Contender]) -> list[str]:
    """Every runtime must list nothing (a foreground run deletes its container). What crun
    leaves under the private tmpfs on unified/ goes with the namespace, but is reported."""
    for c in contenders:
        left = c.leftovers()
        for container_id in left:
            c.force_delete(container_id)
        if left:
            raise BenchError(f"{c.name} still lists {len(left)} containers after the runs: {' '.join(left[:5])}")
    notes = []
    if os.path.ismount(UNIFIED):
        stray = [d for d in os.listdir(UNIFIED) if d.startswith(ID_TAG)]
        if stray:
            notes.append(f"crun left {len(stray)} directories (one per container it ran) in the private tmpfs "
                         f"on {UNIFIED}, each holding a regular file cgroup.procs: it treats the cgroup2 "
                         "line of /proc/self/cgroup as a v1 hierarchy named 'unified'. They vanish with the "
                         "benchmark's mount namespace.")
    return notes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=200, help="measured runs per runtime (default %(default)s)")
    parser.add_argument("--warmup", type=int, default=5, help="unmeasured rounds first (default %(default)s)")
    parser.add_argument("--markdown", default=os.path.join(REPO, "docs", "benchmarks.md"),
                        help="where to write the report (default docs/benchmarks.md)")
    parser.add_argument("--inner", type=int, help=argparse.SUPPRESS)  # the host's mount namespace inode
    parser.add_argument("--host-cgroups", help=argparse.SUPPRESS)
    parser.add_argument("--id-prefix", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.count < 10 or args.warmup < 0:
        parser.error("--count must be at least 10 and --warmup at least 0")
    if args.inner is None:
        return host_main(args)
    return inner_main(args)


if __name__ == "__main__":
    sys.exit(main())
