"""Pull and unpack of a ~100 MB, 5-layer image from a registry on 127.0.0.1: skiff against
skopeo copy + umoci unpack, and against containerd's `ctr pull` (issue 4's benchmark).

    .venv/bin/python bench/pull_unpack.py [--runs N] [--warmup N] [--markdown PATH]

The image is built here with skiff.images.build from real files (libraries, binaries, Python
sources, message catalogs, documentation) copied from /usr into one directory of ~20 MB per
layer, gzip layers; Debian's docker-registry serves it on 127.0.0.1 (tests/registry_fixture.py
starts it; skopeo pushes the layout). Each contender then runs N times, taking turns, every
time into a fresh empty destination, which is removed after the run:

- skiff library: `Images(root).pull(ref)` then `Images.unpack(Images.resolve(ref))`, in this
  process (one directory per layer, as overlay snapshots use them);
- skiff CLI: `skiff pull REF`, then the unpack in a new interpreter (there is no unpack command:
  `skiff run` unpacks on first use);
- skopeo + umoci: `skopeo copy docker://... oci:DIR:TAG` then `umoci unpack --image DIR:TAG
  BUNDLE`; skopeo runs in a private mount namespace with a tmpfs on /var/lib, where as root it
  would keep a blob-info cache;
- containerd: `ctr pull --plain-http REF` (fetch, then unpack into the overlayfs snapshotter)
  against a containerd started for that run alone, with its root, state, socket and config in
  the run's directory, in a private mount namespace; its start is not timed.

The registry's blobs are in the page cache for every contender alike; destinations are cold
(empty). Nothing is left behind: the registry, every containerd and the temporary directory
are stopped and removed on the way out.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests"))

import registry_fixture  # noqa: E402  tests/: the registry the tests use, and skopeo's push
from report import write_section  # noqa: E402  bench/report.py

LAYER_BYTES = 20 << 20
MAX_FILE = 4 << 20          # many files of ordinary sizes, not a few big ones
IMAGE_REPO = "bench/pull-unpack"
TAG = "bench"
MTIME = 1_700_000_000
TARGET = 1.0                # skiff <= 1.0x the fastest peer
PEERS = ("skopeo + umoci", "containerd ctr pull")
REFERENCE = "reference: tar -xzf"


def layer_sources() -> list[str]:
    multiarch = f"/usr/lib/{platform.machine()}-linux-gnu"
    return [multiarch if os.path.isdir(multiarch) else "/usr/lib", "/usr/bin", "/usr/lib/python3",
            "/usr/share/locale", "/usr/share/doc"]


class BenchError(Exception):
    pass


# -- the image ------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True, kw_only=True)
class ImageFacts:
    layers: int
    files: int
    uncompressed: int           # bytes of file content
    compressed: int             # bytes of the gzip layers
    sources: list[str]
    blobs: list[str]            # the layers' paths in the layout, bottom first


def copy_tree(source: str, dest: str, budget: int) -> tuple[int, int]:
    """Regular files of `source`, in sorted walk order, until `budget` bytes; (files, bytes)."""
    files = size = 0
    for top, dirs, names in os.walk(source):
        dirs.sort()
        for name in sorted(names):
            path = os.path.join(top, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if not os.path.isfile(path) or os.path.islink(path) or st.st_size > MAX_FILE:
                continue
            target = os.path.join(dest, os.path.relpath(path, "/"))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            try:
                shutil.copy2(path, target)
            except OSError:
                continue
            files += 1
            size += st.st_size
            if size >= budget:
                return files, size
    return files, size


def build_image(work: Path) -> tuple[Path, ImageFacts]:
    from skiff.images import build

    sources = layer_sources()
    dirs: list[str] = []
    files = size = 0
    for i, source in enumerate(sources):
        d = work / f"src{i}"
        n, b = copy_tree(source, str(d), LAYER_BYTES)
        dirs.append(str(d))
        files, size = files + n, size + b
    layout = work / "layout"
    built = build.build(str(layout), dirs, tag=TAG, mtime=MTIME)
    for source_dir in dirs:
        shutil.rmtree(source_dir)
    blobs = [str(layout / "blobs" / "sha256" / d.digest.split(":")[1]) for d in built.layers]
    return layout, ImageFacts(layers=len(built.layers), files=files, uncompressed=size,
                              compressed=sum(d.size for d in built.layers), sources=sources, blobs=blobs)


def count_files(*roots: str) -> int:
    return sum(len([n for n in names if os.path.isfile(os.path.join(top, n))])
               for root in roots for top, _, names in os.walk(root))


# -- the contenders -------------------------------------------------------------------------

@dataclass
class Contender:
    name: str
    run: Callable[[Path], dict[str, int]]    # into an empty directory: phase -> ns
    files: Callable[[Path], int]             # after a run: the regular files it unpacked
    samples: list[dict[str, int]] = field(default_factory=list)


def timed(phases: dict[str, int], phase: str, fn: Callable[[], object]) -> None:
    t = time.perf_counter_ns()
    fn()
    phases[phase] = time.perf_counter_ns() - t


def run(args: list[str], *, env: dict[str, str] | None = None) -> None:
    done = subprocess.run(args, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True, timeout=600)
    if done.returncode != 0:
        raise BenchError(f"{' '.join(args)}: exit {done.returncode}: {done.stderr.strip()}")


def skiff_library(ref: str) -> Contender:
    from skiff.images.service import Images

    def go(dest: Path) -> dict[str, int]:
        images = Images(str(dest / "skiff"))
        phases: dict[str, int] = {}
        timed(phases, "pull", lambda: images.pull(ref))
        timed(phases, "unpack", lambda: images.unpack(images.resolve(ref)))
        return phases

    return Contender("skiff library", go, lambda dest: count_files(str(dest / "skiff" / "layers")))


def skiff_cli(ref: str, env: dict[str, str]) -> Contender:
    skiff = os.path.join(os.path.dirname(sys.executable), "skiff")
    unpack = ("import sys; from skiff.images.service import Images; "
              "i = Images(sys.argv[1]); i.unpack(i.resolve(sys.argv[2]))")

    def go(dest: Path) -> dict[str, int]:
        root = str(dest / "skiff")
        phases: dict[str, int] = {}
        timed(phases, "pull", lambda: run([skiff, "pull", ref], env=dict(env, SKIFF_ROOT=root)))
        timed(phases, "unpack", lambda: run([sys.executable, "-c", unpack, root, ref], env=env))
        return phases

    return Contender("skiff CLI", go, lambda dest: count_files(str(dest / "skiff" / "layers")))


def skopeo_umoci(host: str, env: dict[str, str], work: Path) -> Contender:
    auth = work / "skopeo-auth.json"
    auth.write_text("{}")
    # As root, skopeo keeps a blob-info cache in /var/lib/containers with no flag to move it.
    private = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
               'mount -t tmpfs skiff-bench /var/lib && exec "$@"', "skopeo"]

    def go(dest: Path) -> dict[str, int]:
        layout, bundle = dest / "oci", dest / "bundle"
        phases: dict[str, int] = {}
        timed(phases, "pull", lambda: run([*private, "skopeo", "copy", "--quiet", "--src-tls-verify=false",
                                           "--authfile", str(auth), f"docker://{host}/{IMAGE_REPO}:{TAG}",
                                           f"oci:{layout}:{TAG}"], env=env))
        timed(phases, "unpack", lambda: run(["umoci", "unpack", "--image", f"{layout}:{TAG}", str(bundle)],
                                            env=env))
        return phases

    return Contender("skopeo + umoci", go, lambda dest: count_files(str(dest / "bundle" / "rootfs")))


def tar_reference(blobs: list[str]) -> Contender:
    """No registry, no store, no checks: GNU tar extracting the layer blobs from the local
    layout, one after the other, into one directory. A floor for the unpack half."""
    def go(dest: Path) -> dict[str, int]:
        rootfs = dest / "rootfs"
        rootfs.mkdir()
        def unpack() -> None:
            for b in blobs:
                run(["tar", "-xzf", b, "-C", str(rootfs)])

        phases: dict[str, int] = {}
        timed(phases, "unpack", unpack)
        return phases

    return Contender(REFERENCE, go, lambda dest: count_files(str(dest / "rootfs")))


CONTAINERD_CONFIG = """version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{d}/containerd.sock"
[ttrpc]
  address = "{d}/containerd.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
"""


@contextmanager
def containerd(d: Path) -> Iterator[str]:
    """A containerd of its own in `d`, in a private mount namespace (its overlay mounts for
    unpacking stay there); the socket's path. Stopped and reaped on exit."""
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.toml").write_text(CONTAINERD_CONFIG.format(d=d))
    sock = str(d / "containerd.sock")
    with open(d / "containerd.log", "wb") as log:
        # unshare execs containerd: the pid is containerd's
        proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "containerd", "--config",
                                 str(d / "config.toml")], stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                raise BenchError(f"containerd exited {proc.returncode}: {(d / 'containerd.log').read_text()[-2000:]}")
            if os.path.exists(sock) and subprocess.run(["ctr", "--address", sock, "version"],
                                                       capture_output=True).returncode == 0:
                break
            if time.monotonic() > deadline:
                raise BenchError("containerd did not answer within 20 s")
            time.sleep(0.05)
        yield sock
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def ctr_pull(host: str) -> Contender:
    def go(dest: Path) -> dict[str, int]:
        phases: dict[str, int] = {}
        with containerd(dest / "containerd") as sock:
            timed(phases, "pull", lambda: run(["ctr", "--address", sock, "--namespace", "bench", "images", "pull",
                                               "--plain-http", f"{host}/{IMAGE_REPO}:{TAG}"]))
        return phases

    def files(dest: Path) -> int:
        return count_files(str(dest / "containerd" / "root" / "io.containerd.snapshotter.v1.overlayfs" / "snapshots"))

    return Contender("containerd ctr pull", go, files)


# -- measuring ------------------------------------------------------------------------------

def measure(contenders: list[Contender], runs: int, warmup: int, work: Path, expected_files: int) -> None:
    for i in range(warmup + runs):
        for n, c in enumerate(contenders):
            dest = work / f"run-{i}-{n}"
            dest.mkdir()
            try:
                phases = c.run(dest)
                got = c.files(dest)
                if got != expected_files:
                    raise BenchError(f"{c.name}: unpacked {got} files, the image has {expected_files}")
            finally:
                shutil.rmtree(dest)
            phases["total"] = sum(phases.values())
            if i >= warmup:
                c.samples.append(phases)
            print(f"  round {i + 1}/{warmup + runs} {c.name}: "
                  + ", ".join(f"{k} {v / 1e9:.2f} s" for k, v in phases.items())
                  + (" (warm-up)" if i < warmup else ""), file=sys.stderr)


@dataclass(frozen=True, slots=True)
class Summary:
    name: str
    p50: float
    min: float
    max: float
    phases: dict[str, float]  # p50 of each phase, seconds


def summarize(c: Contender) -> Summary:
    totals = [s["total"] / 1e9 for s in c.samples]
    phases = {k: statistics.median(s[k] / 1e9 for s in c.samples) for k in c.samples[0] if k != "total"}
    return Summary(c.name, statistics.median(totals), min(totals), max(totals), phases)


# -- the report -----------------------------------------------------------------------------

def version(args: list[str]) -> str:
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=20).stdout
    except OSError:
        return "missing"
    return out.strip().splitlines()[0] if out.strip() else "?"


def debian_version(package: str) -> str:
    out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True)
    return out.stdout.strip() or "?"


def cpu_model() -> str:
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "?"


def load_average() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def markdown(facts: ImageFacts, summaries: list[Summary], args: argparse.Namespace, load_before: str,
             notes: list[str], create_ms: float) -> str:
    commit = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or "?"
    from skiff import __version__

    peers = [s for s in summaries if s.name in PEERS]
    fastest = min(peers, key=lambda s: s.p50)
    lib = next(s for s in summaries if s.name == "skiff library")
    ref = next(s for s in summaries if s.name == REFERENCE)
    rows = ["|  | runs | p50 s | min s | max s | p50 / fastest peer | pull p50 s | unpack p50 s |",
            "|:---|---:|---:|---:|---:|---:|---:|---:|"]
    for s in summaries:
        pull, unpack = s.phases.get("pull"), s.phases.get("unpack")
        rows.append(f"| {s.name} | {args.runs} | {s.p50:.2f} | {s.min:.2f} | {s.max:.2f} | "
                    f"{s.p50 / fastest.p50:.2f}x | "
                    + ("- | " if pull is None else f"{pull:.2f} | ")
                    + ("(in pull) |" if unpack is None else f"{unpack:.2f} |"))
    ratio = lib.p50 / fastest.p50
    verdict = (f"skiff <= {TARGET:.1f}x the fastest of the peers (p50): **{'met' if ratio <= TARGET else 'not met'}**. "
               f"The skiff library takes {lib.p50:.2f} s at p50, {ratio:.2f}x {fastest.name}'s {fastest.p50:.2f} s")
    verdict += "." if ratio <= TARGET else f" ({lib.p50 - fastest.p50:.2f} s over)."
    cli = next(s for s in summaries if s.name == "skiff CLI")
    verdict += (f" The skiff CLI (two commands, two interpreter starts) takes {cli.p50:.2f} s, "
                f"{cli.p50 / fastest.p50:.2f}x.")
    if lib.max >= fastest.min:
        verdict += (" The difference is within the run-to-run spread of this shared machine "
                    "(see min and max): read it as \"as fast as\", not as a margin.")
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    body = f"""## Image pull and unpack

What is measured: the wall-clock time from nothing to an unpacked root filesystem, for one
image of {facts.layers} gzip layers ({mb(facts.compressed)} compressed, {mb(facts.uncompressed)} in
{facts.files} files unpacked) served by Debian's docker-registry on 127.0.0.1 (plain HTTP), for

- **skiff library**: `Images(root).pull(ref)` then `Images.unpack(Images.resolve(ref))`,
  called in the benchmark's own process: blobs fetched 4 at a time into the content store
  (each verified and fsynced), then each layer unpacked into its own directory (the overlay
  snapshot's lower directories), up to 4 layers side by side;
- **skiff CLI**: the `skiff pull REF` command, then the same unpack in a new interpreter
  (`skiff run` unpacks on first use; there is no unpack command);
- **skopeo + umoci**: `skopeo copy --src-tls-verify=false docker://HOST/REPO:TAG oci:DIR:TAG`
  then `umoci unpack --image DIR:TAG BUNDLE` (one merged rootfs, plus umoci's mtree manifest
  of it). skopeo runs under `unshare --mount` with a tmpfs on /var/lib, where as root it
  keeps a blob-info cache that would otherwise make later runs skip work (and stay on the host);
- **containerd ctr pull**: `ctr pull --plain-http HOST/REPO:TAG`, which fetches into
  containerd's content store and unpacks into its overlayfs snapshotter; each run has a fresh
  containerd (root, state, socket and config in the run's directory, started in a private
  mount namespace), whose start is not timed;
- **reference: tar -xzf**: not a peer: GNU tar extracting the layer blobs straight from the
  local layout, one after the other, into one directory (no registry, no store, no
  checks): about what creating these files costs on this machine.

The image: one layer per directory, each ~20 MB of real files copied from this machine in
sorted order, files over 4 MB skipped: {', '.join(f'`{s}`' for s in facts.sources)};
built with `skiff.images.build` (gzip level 6), pushed with skopeo. Each sample is one
whole pull and unpack into a new, empty directory on the same disk, which is removed after
the run; the tools take turns (round-robin) after {args.warmup} unmeasured round(s), so that
noise on this shared machine hits them all alike; {args.runs} measured runs each. The
registry's files are in the page cache for all of them. Every run's unpacked file count is
checked against the image's. Timed with `time.perf_counter_ns()` around each command
(`subprocess.run`, output discarded) or call.

Reproduce (as root, Debian 12): `./dev.sh bench pull`, which installs docker-registry,
skopeo, umoci and containerd (options: `--runs N`, `--warmup N`,
`--markdown PATH`); it rewrites this section of the file.

### Machine

| | |
|:---|:---|
| CPUs | {os.cpu_count()} ({cpu_model()}) |
| kernel | {platform.release()} |
| disk | the temporary directory's filesystem: {fs_type(tempfile.gettempdir())} |
| docker-registry | {debian_version('docker-registry')} |
| skopeo | {version(['skopeo', '--version'])} (Debian {debian_version('skopeo')}) |
| umoci | {version(['umoci', '--version'])} |
| containerd | {version(['containerd', '--version'])} |
| Python | {platform.python_version()} ({os.path.realpath(sys.executable)}) |
| skiff | {__version__}, commit {commit} |
| date | {now}; load average {load_before} before the runs, {load_average()} after |

### Results

{chr(10).join(rows)}

With {args.runs} runs, min and max are the spread, not percentiles. ctr pull fetches and
unpacks in one command, so it has one figure.

Where the time goes: creating files. On this machine creating one empty file takes
{create_ms:.2f} ms, nearly all of it in the kernel (measured by the script: {CREATE_PROBE}
`open(O_CREAT)` + `close` in the temporary directory's filesystem), so the image's
{facts.files} files and their directories take seconds whoever writes them: GNU tar alone,
with nothing fetched, stored or checked, takes {ref.p50:.2f} s at p50. Fetching and
verifying the {mb(facts.compressed)} of blobs takes skiff {lib.phases['pull']:.2f} s (p50).

### Target (issue 4)

{verdict}
"""
    if notes:
        body += "\n### Notes from this run\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    return body


def fs_type(path: str) -> str:
    out = subprocess.run(["findmnt", "-n", "-o", "FSTYPE,OPTIONS", "-T", path], capture_output=True,
                         text=True).stdout.split()
    return f"{out[0]} ({out[1]})" if len(out) == 2 else "?"


CREATE_PROBE = 1000


def file_create_ms(work: Path) -> float:
    """What creating one empty file costs here, in ms: the floor under any unpack."""
    d = work / "create-probe"
    d.mkdir()
    t = time.perf_counter_ns()
    for i in range(CREATE_PROBE):
        os.close(os.open(d / str(i), os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o644))
    elapsed = time.perf_counter_ns() - t
    shutil.rmtree(d)
    return elapsed / CREATE_PROBE / 1e6


# -- main -------------------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="measured runs per contender (default %(default)s)")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured rounds first (default %(default)s)")
    parser.add_argument("--markdown", default=os.path.join(REPO, "docs", "benchmarks.md"),
                        help="where to write the report (default docs/benchmarks.md)")
    parser.add_argument("--no-containerd", action="store_true", help="leave containerd out")
    args = parser.parse_args()
    if args.runs < 1 or args.warmup < 0:
        parser.error("--runs must be at least 1 and --warmup at least 0")
    if os.geteuid() != 0:
        print("pull_unpack: run as root (umoci and containerd unpack as root)", file=sys.stderr)
        return 1
    tools = ["docker-registry", "skopeo", "umoci", "unshare"] + ([] if args.no_containerd else ["containerd", "ctr"])
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        print(f"pull_unpack: missing {' '.join(missing)} (apt-get install docker-registry skopeo umoci "
              "containerd)", file=sys.stderr)
        return 1

    notes: list[str] = []
    had_containers = os.path.exists("/var/lib/containers")
    work = Path(tempfile.mkdtemp(prefix="skiff-bench-pull-"))
    try:
        create_ms = file_create_ms(work)
        print("building the image", file=sys.stderr)
        layout, facts = build_image(work)
        with registry_fixture.run_registry(work / "registry") as reg:
            registry_fixture.skopeo_copy(layout, TAG, reg, f"{IMAGE_REPO}:{TAG}", tmp=work)
            (work / "registries.toml").write_text(f'[registries."{reg.host}"]\ninsecure = true\n')
            env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
            env.update(SKIFF_REGISTRIES=str(work / "registries.toml"), SKIFF_NO_PROGRESS="1",
                       HOME=str(work), XDG_RUNTIME_DIR=str(work))
            os.environ.update(SKIFF_REGISTRIES=env["SKIFF_REGISTRIES"], SKIFF_NO_PROGRESS="1")
            ref = f"{reg.host}/{IMAGE_REPO}:{TAG}"
            contenders = [skiff_library(ref), skiff_cli(ref, env), skopeo_umoci(reg.host, env, work)]
            if not args.no_containerd:
                contenders.append(ctr_pull(reg.host))
            contenders.append(tar_reference(facts.blobs))
            load_before = load_average()
            runs = work / "runs"
            runs.mkdir()
            measure(contenders, args.runs, args.warmup, runs, facts.files)
    except (BenchError, RuntimeError, subprocess.SubprocessError) as e:
        print(f"pull_unpack: {e}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if not had_containers and os.path.exists("/var/lib/containers"):
        notes.append("/var/lib/containers appeared during the run (not from this script's skopeo, which "
                     "runs with a private /var/lib)")
    if args.no_containerd:
        notes.append("containerd was left out (--no-containerd)")

    summaries = [summarize(c) for c in contenders]
    for s in summaries:
        print(f"{s.name:22} p50 {s.p50:6.2f} s  min {s.min:6.2f}  max {s.max:6.2f}  "
              + "  ".join(f"{k} {v:.2f}" for k, v in s.phases.items()))
    write_section(args.markdown, "pull_unpack", markdown(facts, summaries, args, load_before, notes, create_ms))
    print(f"wrote its section of {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
