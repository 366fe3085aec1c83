"""`skiff bench start`: the options, the measurement phases, and the cleanup that runs
whatever happens.

    host side:  checks, bytecode, then (hybrid host) `unshare -m` + `python -m skiff.benchmark`
    measuring:  bundles -> contenders -> sequential (in turns) -> concurrency (N threads)
                -> growth (K containers running, each contender apart) -> breakdown (library)
                -> delete everything, check leftovers -> table, JSON, PNG
    host side:  any cgroup named after the run's tag is reported (seen from the host's
                mount namespace, which has every hierarchy)

Every container id holds the run's tag (`skiffbench<pid>`), so whatever a runtime leaves in
the cgroup tree is found by name. Each runtime gets a --root of its own in a temporary
directory, so its `list` shows only the benchmark's containers.
"""

from __future__ import annotations

import compileall
import contextlib
import dataclasses
import functools
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from skiff.benchmark import hostns, machine, plot, report, stats
from skiff.benchmark.bundles import Bundles, make_bundles
from skiff.benchmark.contenders import Command, Contender, CriPods, Library
from skiff.benchmark.cri_daemon import IMAGE, Peer, SkiffService, answers, found_peers
from skiff.benchmark.results import ContenderInfo, Results, write_json
from skiff.errors import FailedPrecondition, InvalidArgument, SkiffError

BUILTIN = ("library", "library-warm", "skiff-runc", "runc", "crun", "cri:skiff")
ID_TAG = "skiffbench"
DEFAULT_CRI_IMAGE = "docker.io/library/busybox:latest"
# The kernel cleans up after a removed container in workers, after the removal returns: a
# memory cgroup hands its objects to its parent on every file system's lists, a network
# namespace is dismantled. The more containers run, the more file systems there are to walk,
# so that work grows with K; measured back to back, each run of the growth phase shares the
# CPUs and the kernel's locks with the clean-up of the run before it. A pause of 30 ms after
# each run was enough for that to be done (at K=500, pods through the CRI: 1.45x back to
# back, 0.88x with the pause). The sequential table keeps its runs back to back.
SETTLE_MS = 30


@dataclass(frozen=True, slots=True, kw_only=True)
class Options:
    runtimes: tuple[str, ...] = ()       # empty: every one found
    count: int = 50
    warmup: int = 5
    concurrency: int = 1                 # 1: no concurrent phase
    running: tuple[int, ...] = (0,)
    settle_ms: int = SETTLE_MS           # the growth phase's pause after each run
    breakdown: bool = False
    json_path: str = "skiff-bench-start.json"
    png_path: str = "skiff-bench-start.png"
    cri_sockets: tuple[tuple[str, str], ...] = ()   # (name, path)
    cri_image: str = DEFAULT_CRI_IMAGE


def parse_options(*, runtimes: str | None, count: int, warmup: int, concurrency: int, running: str,
                  breakdown: bool, json_path: str, png_path: str, cri_sockets: list[str],
                  cri_image: str | None, settle_ms: int | None = None) -> Options:
    """The command line's values, checked; paths made absolute (the measuring side may run
    in another process)."""
    names = tuple(n.strip() for n in (runtimes or "").split(",") if n.strip())
    for n in names:
        if n not in BUILTIN and not (n.startswith("cri:") and len(n) > 4):
            raise InvalidArgument(f"--runtimes: unknown runtime {n!r} (known: {', '.join(BUILTIN)}, "
                                  "and cri:NAME for a socket given with --cri-socket NAME=PATH)")
    if count < 1 or warmup < 0 or concurrency < 1:
        raise InvalidArgument(f"--count {count}, --warmup {warmup}, --concurrency {concurrency}: "
                              "want at least 1, 0 and 1")
    if settle_ms is None:
        settle_ms = SETTLE_MS
    elif settle_ms < 0:
        raise InvalidArgument(f"--settle {settle_ms}: want milliseconds, 0 or more")
    try:
        levels = tuple(sorted({int(k) for k in running.split(",") if k.strip()}))
    except ValueError:
        raise InvalidArgument(f"--running {running!r}: want numbers separated by commas, e.g. 0,1,100,500") from None
    if not levels or levels[0] < 0:
        raise InvalidArgument(f"--running {running!r}: want numbers of containers, 0 or more")
    sockets = []
    for item in cri_sockets:
        name, sep, path = item.partition("=")
        if not sep or not name or not path or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise InvalidArgument(f"--cri-socket {item!r}: want NAME=PATH, e.g. containerd=/run/containerd/containerd.sock")
        if name == "skiff":
            raise InvalidArgument("--cri-socket skiff=...: cri:skiff is the benchmark's own service; name it otherwise")
        sockets.append((name, os.path.abspath(path.removeprefix("unix://"))))
    for flag, path in (("--json", json_path), ("--png", png_path)):
        if not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            raise InvalidArgument(f"{flag} {path}: no directory {os.path.dirname(os.path.abspath(path))} to write it in")
    return Options(runtimes=names, count=count, warmup=warmup, concurrency=concurrency, running=levels,
                   settle_ms=settle_ms, breakdown=breakdown, json_path=os.path.abspath(json_path), png_path=os.path.abspath(png_path),
                   cri_sockets=tuple(sockets), cri_image=cri_image or DEFAULT_CRI_IMAGE)


@dataclass(frozen=True, slots=True, kw_only=True)
class Session:
    """What the host side hands the measuring side (as JSON, across the re-exec)."""
    options: Options
    tag: str
    host_cgroups: str
    host_ns: int | None = None   # set when the measuring side runs in a private mount namespace

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Session:
        data = json.loads(text)
        o = data.pop("options")
        options = Options(**{**o, "runtimes": tuple(o["runtimes"]), "running": tuple(o["running"]),
                             "cri_sockets": tuple((n, p) for n, p in o["cri_sockets"])})
        return cls(options=options, **data)


def progress(message: str) -> None:
    print(f"skiff bench: {message}", file=sys.stderr, flush=True)


# -- the host side ------------------------------------------------------------------------------

def run(options: Options) -> int:
    """`skiff bench start`: measure (in a private mount namespace on a hybrid host), then
    check the host's cgroup tree for anything named after the run."""
    if os.geteuid() != 0:
        raise FailedPrecondition("skiff bench start: run as root (containers need namespaces and cgroups)")
    _compile_bytecode()
    session = Session(options=options, tag=f"{ID_TAG}{os.getpid()}", host_cgroups=hostns.cgroup_mode())
    try:
        # A private mount namespace: the runtimes' state on a tmpfs there, and on a hybrid
        # host unified/ hidden from crun.
        unshare = shutil.which("unshare")
        if unshare is None:
            raise FailedPrecondition("unshare (util-linux) is missing: the benchmark runs in a private mount "
                                     "namespace")
        session = dataclasses.replace(session, host_ns=hostns.mount_ns())
        code = _wait(subprocess.Popen([unshare, "-m", "--propagation", "private", "--", sys.executable,
                                       "-m", "skiff.benchmark", session.to_json()]))
    finally:
        removed, left = hostns.remove_empty_cgroups(session.tag)
        if removed:
            print("skiff bench: the runtimes left these empty cgroups of the benchmark's containers behind "
                  "(removed):\n  " + "\n  ".join(removed), file=sys.stderr)
        if left:
            print("skiff bench: the benchmark's containers left cgroups behind that could not be removed:\n  "
                  + "\n  ".join(f"{path}: {why}" for path, why in left), file=sys.stderr)
    return code or (1 if left else 0)


def _wait(process: subprocess.Popen[bytes]) -> int:
    """The measuring side gets a ^C too (same process group) and cleans up: wait for it."""
    while True:
        try:
            return process.wait()
        except KeyboardInterrupt:
            continue


def _compile_bytecode() -> None:
    """Bytecode as an installed skiff has it, so that no skiff-runc start compiles (this
    environment may set PYTHONDONTWRITEBYTECODE; the runtimes are started without it)."""
    import skiff

    package = os.path.dirname(os.path.abspath(skiff.__file__))
    excluded = re.compile(r"/(\.venv|tests|bench|build|\.git|\.mypy_cache|\.cache)/")
    with contextlib.redirect_stdout(None):
        compileall.compile_dir(package, quiet=2, rx=excluded)


def inner_main(payload: str) -> int:
    """`python -m skiff.benchmark SESSION`: the measuring side, in the private namespace."""
    try:
        session = Session.from_json(payload)
        if session.host_ns is not None:
            hostns.hide_unified(session.host_ns)
        return measure(session)
    except SkiffError as e:
        print(f"skiff: {e}", file=sys.stderr)
        for note in getattr(e, "__notes__", ()):
            print(f"skiff: {note}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


# -- the measuring side ---------------------------------------------------------------------------

def measure(session: Session) -> int:
    o = session.options
    bench_cgroups = hostns.cgroup_mode()
    if session.host_ns is not None and session.host_cgroups.startswith("hybrid"):
        bench_cgroups += " (in a private mount namespace with /sys/fs/cgroup/unified hidden: crun refuses hybrid hosts)"
    results = Results(machine=machine.describe(session.host_cgroups, bench_cgroups),
                      options=dataclasses.asdict(o), workload=())
    tmp = tempfile.mkdtemp(prefix="skiff-bench-")
    lineup = Lineup()
    if session.host_ns is not None:
        hostns.state_on_tmpfs(tmp, session.host_ns)
    try:
        bundles = make_bundles(os.path.join(tmp, "bundles"))
        results.workload = bundles.workload
        lineup.enlist(o, session.tag, bundles, tmp, results)
        if not lineup.contenders:
            raise FailedPrecondition("no runtime to measure: " + "; ".join(f"{n}: {w}" for n, w in results.skipped.items()))
        results.contenders = [ContenderInfo(name=c.name, sample=c.sample, version=c.version) for c in lineup.contenders]
        results.reference = stats.reference(results.names)
        with _quiet_stdio():
            _phases(o, session.tag, bundles, tmp, lineup, results)
    finally:
        with _sigint_deferred():
            lineup.clean_up(results.notes)
            if session.host_ns is not None:
                hostns.drop_tmpfs(tmp)
            shutil.rmtree(tmp, ignore_errors=True)
    stray = hostns.stray_unified(session.tag)
    if stray:
        results.notes.append(f"crun left {len(stray)} directories (one per container it ran) in the private tmpfs on "
                             f"{hostns.UNIFIED}, each holding a plain file cgroup.procs: it takes the cgroup2 line "
                             "of /proc/self/cgroup for a v1 hierarchy named 'unified'; they go with the namespace")
    results.load_after = machine.load_average()
    print(report.text(results), flush=True)
    write_json(o.json_path, results)
    written = [o.json_path]
    if plot.available():
        plot.draw(o.png_path, results)
        written.append(o.png_path)
    else:
        print(plot.MISSING, file=sys.stderr)
    print(f"wrote {' and '.join(written)}")
    return 1 if lineup.unremoved else 0


def _phases(o: Options, tag: str, bundles: Bundles, tmp: str, lineup: Lineup, results: Results) -> None:
    contenders = lineup.contenders

    def ids(n: int) -> Callable[[str], str]:
        return lambda what: f"{tag}-{n}-{what}"

    samples = sequential(contenders, o.count, o.warmup, tag)
    results.sequential = {n: stats.to_ms(s) for n, s in samples.items()}
    if o.concurrency > 1:
        results.threads = o.concurrency
        for n, c in enumerate(contenders):
            progress(f"concurrency: {c.name}, {o.concurrency} threads")
            got, wall = concurrent(c, o.concurrency, o.count, ids(n))
            results.concurrent[c.name] = stats.to_ms(got)
            results.concurrent_wall_ns[c.name] = wall
    # Each point in the same way, K = 0 too: one contender at a time, its runs in a row (which
    # are not the turns of the sequential table), so each ratio compares like with like.
    for k in sorted({0, *o.running}) if any(o.running) else ():
        results.growth[k] = {}
        for n, c in enumerate(contenders):
            work = functools.partial(repeat, c, o.count, o.warmup, ids(n), f"g{k}r", settle=o.settle_ms / 1000)
            results.growth[k][c.name] = stats.to_ms(lineup.with_running(c, k, ids(n), work))
    if o.breakdown:
        from skiff.benchmark import breakdown

        # the warm library where it runs: the breakdown is of skiff's fastest start
        libraries = sorted((c for c in contenders if isinstance(c, Library)), key=lambda c: not c.runtime.warm)
        library = libraries[0] if libraries else None
        if library is None:
            library = Library(os.path.join(tmp, "state-breakdown"), bundles)
            lineup.extras.append(library)
        make_id = ids(len(contenders))
        results.breakdown = breakdown.measure(library, lambda i: make_id(f"t{i}"), o.count, o.warmup, progress)


class Lineup:
    """The contenders, the background containers each has running, and cleaning up after them."""

    def __init__(self) -> None:
        self.contenders: list[Contender] = []
        self.extras: list[Contender] = []         # measured apart (the breakdown's library)
        self.service: SkiffService | None = None
        self.background: dict[str, list[str]] = {}
        self.unremoved: list[str] = []

    def enlist(self, o: Options, tag: str, bundles: Bundles, tmp: str, results: Results) -> None:
        peers = found_peers([Peer(n, p) for n, p in o.cri_sockets])
        wanted = list(o.runtimes) or [*BUILTIN, *(f"cri:{p.name}" for p in peers)]
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        for name in wanted:
            state = os.path.join(tmp, f"state-{name.replace(':', '-')}")
            if name in ("library", "library-warm"):
                self.contenders.append(Library(state, bundles, name, warm=name == "library-warm"))
            elif name == "skiff-runc":
                exe = os.path.join(os.path.dirname(sys.executable), "skiff-runc")
                if os.access(exe, os.X_OK):
                    from skiff import __version__

                    self.contenders.append(Command(name, exe, state, bundles, env,
                                                   version=f"skiff {__version__} ({exe})"))
                else:
                    results.skipped[name] = f"{exe} is missing (install skiff into this Python's environment)"
            elif name in ("runc", "crun"):
                found = shutil.which(name)
                if found is not None:
                    self.contenders.append(Command(name, found, state, bundles, env))
                else:
                    results.skipped[name] = f"not found on PATH (Debian package {name})"
            elif name == "cri:skiff":
                progress("starting skiff cri serve (private socket, state and images)")
                self.service = SkiffService(os.path.join(tmp, "cri-skiff"), bundles.rootfs)
                self.service.start()
                self.contenders.append(CriPods(name, self.service.socket, IMAGE, tag, self.service.log_root))
            else:
                self._enlist_peer(name, peers, o.cri_image, tag, os.path.join(tmp, "pod-logs"), results)

    def _enlist_peer(self, name: str, peers: list[Peer], image: str, tag: str, log_root: str,
                     results: Results) -> None:
        """A peer's CRI socket, if it answers, has (or pulls) the image and runs a pod."""
        peer = next((p for p in peers if f"cri:{p.name}" == name), None)
        if peer is None:
            results.skipped[name] = f"no socket for it: give --cri-socket {name[4:]}=PATH"
            return
        if answers(peer.socket) is None:
            results.skipped[name] = f"no CRI service answers Version on {peer.socket}"
            return
        contender = CriPods(name, peer.socket, image, tag, log_root)
        try:
            contender.ensure_image()
            contender.run_once(f"{tag}-probe-{peer.name}")
        except Exception as e:
            with contextlib.suppress(Exception):
                contender.delete(f"{tag}-probe-{peer.name}")
            contender.close()
            results.skipped[name] = f"{peer.socket}: a pod of {image} did not start ({e})"
            return
        self.contenders.append(contender)

    def with_running(self, c: Contender, k: int, ids: Callable[[str], str], work: Callable[[], list[int]]) -> list[int]:
        """`work()` while `k` background containers of `c` run; they are deleted afterwards."""
        started = self.background.setdefault(c.name, [])
        progress(f"growth: starting {k} background containers with {c.name}" if k else f"growth: {c.name}, 0 running")
        try:
            for j in range(k):
                container_id = ids(f"b{k}x{j}")
                started.append(container_id)  # before the start: a failed start is cleaned up too
                c.start_detached(container_id)
            return work()
        finally:
            if k:
                progress(f"growth: deleting {c.name}'s {k} background containers")
            while started:
                c.delete(started[-1])
                started.pop()

    def clean_up(self, notes: list[str]) -> None:
        """Every container the benchmark made goes, whatever happened; what a runtime still
        lists afterwards is deleted and reported."""
        everyone = self.contenders + self.extras
        for c in everyone:
            for container_id in self.background.pop(c.name, []):
                with contextlib.suppress(Exception):
                    c.delete(container_id)
        for c in everyone:
            try:
                left = c.leftovers()
                for container_id in left:
                    with contextlib.suppress(Exception):
                        c.delete(container_id)
                if left:
                    notes.append(f"{c.name} still had {len(left)} of the benchmark's containers after the runs "
                                 f"({' '.join(left[:5])}{' ...' if len(left) > 5 else ''}): deleted")
                still = c.leftovers()
                if still:
                    self.unremoved += still
                    notes.append(f"{c.name} still lists {' '.join(still[:5])} after delete --force")
            except Exception as e:
                notes.append(f"{c.name}: the leftover check failed: {e}")
            try:
                c.close()
            except Exception as e:  # the daemon below must be stopped all the same
                notes.append(f"{c.name}: closing it failed: {e}")
        if self.service is not None:
            self.service.stop()


# -- the phases -------------------------------------------------------------------------------------

def _sample(c: Contender, container_id: str) -> int:
    try:
        return c.run_once(container_id)
    except BaseException:
        with contextlib.suppress(Exception):
            c.delete(container_id)
        raise


def sequential(contenders: list[Contender], count: int, warmup: int, tag: str) -> dict[str, list[int]]:
    """Turns: each contender in turn runs report.TURN times in a row, and the first run of a turn is
    not kept. A start right after another runtime's pays for the switch on this kind of
    machine (a VM whose idle vCPUs are slow to wake): crun measured 13.7 ms right after a run
    of skiff's library, 8.1 ms right after one of its own. The turns alternate, so noise
    over time still hits every contender alike; the first `warmup` turns are not kept."""
    samples: dict[str, list[int]] = {c.name: [] for c in contenders}
    turn = 0
    while any(len(got) < count for got in samples.values()):
        for n, c in enumerate(contenders):
            for j in range(report.TURN):
                elapsed = _sample(c, f"{tag}-{n}-s{turn}x{j}")
                if turn >= warmup and j > 0 and len(samples[c.name]) < count:
                    samples[c.name].append(elapsed)
        turn += 1
        if turn % 5 == 0:
            progress(f"sequential: {min(len(got) for got in samples.values())}/{count} runs kept")
    return samples


def repeat(c: Contender, count: int, warmup: int, ids: Callable[[str], str], prefix: str, *,
           settle: float = 0.0) -> list[int]:
    """`settle`: seconds to wait after each run, outside the clock (SETTLE_MS)."""
    got = []
    for i in range(warmup + count):
        got.append(_sample(c, ids(f"{prefix}{i}")))
        time.sleep(settle)
    return got[warmup:]


def concurrent(c: Contender, threads: int, count: int, ids: Callable[[str], str]) -> tuple[list[int], int]:
    """`count` runs shared by `threads` threads; (samples, wall time from the first start to
    the last end), both in ns. The sequential phase warmed everything up."""
    counter = itertools.count()
    lock = threading.Lock()
    samples: list[int] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def worker() -> None:
        while not stop.is_set():
            with lock:
                i = next(counter)
            if i >= count:
                return
            try:
                samples.append(_sample(c, ids(f"c{i}")))
            except BaseException as e:
                errors.append(e)
                stop.set()

    workers = [threading.Thread(target=worker, name=f"bench-{c.name}-{t}") for t in range(threads)]
    start = time.perf_counter_ns()
    for w in workers:
        w.start()
    try:
        for w in workers:
            w.join()
    except BaseException:
        stop.set()
        for w in workers:
            w.join()
        raise
    wall = time.perf_counter_ns() - start
    if errors:
        raise errors[0]
    return samples, wall


@contextlib.contextmanager
def _sigint_deferred() -> Iterator[None]:
    """A second ^C during the cleanup waits until it is done (a cleanup cut short would
    leave containers behind), then ends the benchmark as ^C does. A handler, not a blocked
    mask: gRPC's threads would take a process-directed SIGINT for the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda sig, _frame: caught.append(sig))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


@contextlib.contextmanager
def _quiet_stdio() -> Iterator[None]:
    """The library's containers inherit this process's stdio: stdin and stdout on /dev/null
    for the runs, as the command lines get them. The report is printed afterwards."""
    sys.stdout.flush()
    devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    saved = [os.dup(0), os.dup(1)]
    try:
        os.dup2(devnull, 0)
        os.dup2(devnull, 1)
        yield
    finally:
        for fd, copy in enumerate(saved):
            os.dup2(copy, fd)
            os.close(copy)
        os.close(devnull)
