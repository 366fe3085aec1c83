"""Pods through the CRI, skiff against containerd 1.6 + runc (Debian's), measured by one CRI
client over each runtime's unix socket, the calls kubelet makes:

    .venv/bin/python bench/cri_pods.py [--only containerd|skiff] [--pods N] [--burst N]
                                       [--memory-pods N] [--execs N] [--markdown PATH]

1. pod-ready latency: RunPodSandbox -> CreateContainer -> StartContainer -> ContainerStatus
   says CONTAINER_RUNNING, one pod at a time, --pods of them (p50, p99), once with pod
   networking (a bridge) and once in the host's network namespace (NamespaceMode.NODE);
   each pod is stopped and removed after its sample, outside the timed part;
2. exec latency, as kubelet's exec probes see it: ExecSync of `true`, then of
   `sh -c 'echo hi'`, --execs times each one after another (p50, p99) after --exec-warmup
   unmeasured ones, in the running container of a pod started for them (pod network),
   removed afterwards, outside the timed part;
3. burst: --burst pods started at once from as many client threads; pods/s from the first
   request to the last container seen RUNNING;
4. memory per running pod: with --memory-pods pods running (pod network), the daemon's
   growth since before those pods plus every process the pods brought that is not a
   container's own (containerd: the containerd-shim-runc-v2 processes and the "pause"
   processes under them; skiff: whatever is new in the daemon's session, process tree or
   cgroup parent), RSS and PSS from /proc/PID/smaps_rollup, divided by the pod count.

Each runtime gets a daemon of its own, started here and stopped right after its runs, in
private directories (/var/lib/skiff-bench; /run/skiff-bench, a tmpfs) and a private mount namespace
(`unshare --mount --propagation private`, so that no mount it makes can outlive it on the
host): containerd with a config file of its own (CRI plugin, cgroupfs, runc v2 shim, a CNI
bridge+host-local+portmap conflist with its own bridge and subnet), skiff as
`skiff cri serve --config` with a private config (built-in bridge networking). Both run the
same two images, built here from Debian's busybox-static with `skiff build` and loaded into
each from the same oci-archive (`skiff import`, `ctr images import`): a container running
`sleep 3600` (with busybox's `true` linked for the exec), and for containerd's sandbox_image
a busybox "pause" (`sleep infinity`), not Kubernetes' pause. Afterwards the host is put
back as found: bridges, the nftables tables the runs created, ip_forward, cgroup parents,
and the directories containerd leaves in /run and /var/lib are removed; every leftover
found is reported.

docs/benchmarks.md, whose cri-pods section this script writes, says what and why. The
section carries its raw numbers in an HTML comment, so a run with --only takes the other
runtime's column from the previous run (and says so).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import glob
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import grpc
from cri_api.v1 import api_pb2 as pb
from cri_api.v1 import api_pb2_grpc

from report import write_section  # bench/report.py: this script's directory is on sys.path

from skiff.benchmark.stats import percentile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SKIFF = os.path.join(os.path.dirname(sys.executable), "skiff")
SECTION = "cri-pods"
DATA_MARK = "<!-- cri-pods-data "

BENCH_LIB = "/var/lib/skiff-bench"
BENCH_RUN = "/run/skiff-bench"
IMAGE = "localhost/skiff-bench/busybox"
APP_IMAGE = f"{IMAGE}:sleep"
PAUSE_IMAGE = f"{IMAGE}:pause"
APP_CMD = ("sleep", "3600")          # how a container's own process is told from the runtime's
POD_NAMESPACE = "skiff-bench"
RUNTIMES = ("skiff", "containerd")

# Targets (skiff / containerd), issue 6's (issue 5 asked for 0.5x, 2x with 20 pods, and 1x).
TARGET_READY = 0.2      # pod-ready p50 <= 0.2x
TARGET_BURST = 5.0      # a burst of 100 pods: pods/s >= 5x
TARGET_MEMORY = 0.5     # memory per running pod <= 0.5x

CALL_TIMEOUT = 60.0
# ExecSync's own timeout, seconds: kubelet passes the probe's timeoutSeconds (1 by default);
# more here, so that a slow sample is measured rather than failing the run.
EXEC_TIMEOUT = 10
# The exec commands measured, and what each must print: a probe's `true`, and one through a
# shell (busybox sh's builtin echo), as probes written `sh -c '...'` run.
EXEC_COMMANDS: tuple[tuple[tuple[str, ...], bytes], ...] = ((("true",), b""), (("sh", "-c", "echo hi"), b"hi\n"))


class BenchError(Exception):
    pass


# -- host state: what the runs may leave behind, and putting it back ------------------------

def run_on_tmpfs() -> bool:
    """Both runtimes keep their state in BENCH_RUN, as on /run, which is a tmpfs on a host
    (both fsync their records: on a disk each fsync costs a journal commit). Where this
    machine's /run is not a tmpfs, one is mounted there for the run; True if so."""
    with open("/proc/self/mountinfo") as f:
        fstype = {line.split()[4]: line.split(" - ")[1].split()[0] for line in f}.get("/run")
    if fstype == "tmpfs":
        return False
    sh(["mount", "-t", "tmpfs", "-o", "mode=0755", "skiff-bench", BENCH_RUN])
    return True


def sh(args: list[str], *, check: bool = True, timeout: float = 60) -> str:
    done = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise BenchError(f"{' '.join(args)}: exit {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def links() -> set[str]:
    return {item["ifname"] for item in json.loads(sh(["ip", "-j", "link", "show"]) or "[]")}


def nft_tables() -> set[tuple[str, str]]:
    listing = json.loads(sh(["nft", "-j", "list", "tables"]) or "{}")
    return {(i["table"]["family"], i["table"]["name"]) for i in listing.get("nftables", []) if "table" in i}


def nft_table_rules(family: str, name: str) -> list[str]:
    """A table's rules, each as its JSON text."""
    listing = json.loads(sh(["nft", "-j", "list", "table", family, name]) or "{}")
    return [json.dumps(i["rule"]) for i in listing.get("nftables", []) if "rule" in i]


def read_text(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


SYSCTLS = ("/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/ipv6/conf/all/forwarding")
# Directories a runtime may create outside its own: containerd 1.6 puts shim sockets in
# /run/containerd/s (a fixed path), pod netns files in /run/netns, CNI's result cache in
# /var/lib/cni.
WATCHED_DIRS = ("/run", "/var/lib", "/tmp", "/var/log", "/etc")


@dataclass
class HostState:
    links: set[str]
    tables: set[tuple[str, str]]
    sysctls: dict[str, str]
    entries: dict[str, set[str]]
    mounts: int

    @classmethod
    def now(cls) -> HostState:
        return cls(links=links(), tables=nft_tables(), sysctls={p: read_text(p) for p in SYSCTLS},
                   entries={d: set(os.listdir(d)) for d in WATCHED_DIRS if os.path.isdir(d)},
                   mounts=len(read_text("/proc/self/mountinfo").splitlines()))


def only_files(path: str, owned: Callable[[str], bool]) -> bool:
    """No mount point under `path`, and every file's name passes `owned`."""
    for top, dirs, files in os.walk(path):
        if os.path.ismount(top) or not all(owned(f) for f in files):
            return False
    return True


def remove_runtime_dir(path: str) -> bool:
    """The directories containerd makes outside its root, removed when they are recognizably
    what it left (after it stopped): /run/containerd (shim sockets in s/, a fixed path in 1.6;
    only when no other containerd runs), /run/netns (pod netns files, empty once the pods are
    gone) and /var/lib/cni (the CNI result cache, one file per network and container, named
    after our network or go-cni's loopback one). Anything else: False, left alone."""
    if path == "/run/containerd":
        others = [p for p in processes().values() if p.comm == "containerd"]
        if others or not only_files(path, lambda _: True):
            return False
    elif path == "/run/netns":
        if os.path.ismount(path) or os.listdir(path):
            return False
    elif path == "/var/lib/cni":
        if not only_files(path, lambda f: f.startswith(("skiff-bench-", "cni-loopback-")) or f == "lock"):
            return False
    else:
        return False
    shutil.rmtree(path)
    return True


def cgroup_dirs(name: str) -> list[str]:
    """`name` (a cgroup parent, "/x") in every cgroup hierarchy mounted under /sys/fs/cgroup."""
    base = name.strip("/")
    return sorted({p for p in glob.glob(f"/sys/fs/cgroup/*/{base}") + glob.glob(f"/sys/fs/cgroup/{base}")
                   if os.path.isdir(p)})


def remove_cgroup(path: str) -> None:
    for top, dirs, _ in os.walk(path, topdown=False):
        for d in dirs:
            with contextlib.suppress(OSError):
                os.rmdir(os.path.join(top, d))
    os.rmdir(path)


@dataclass
class Restorer:
    """What one runtime's run may change on the host, and how to undo it: `bridge`,
    `cgroup_parent`, and nftables tables the run created whose names are in `tables`."""
    name: str
    bridge: str
    cgroup_parent: str
    tables: Callable[[tuple[str, str]], bool]
    markers: tuple[str, ...]    # a rule naming one of these is the run's (subnet, bridge, CNI network)
    before: HostState = field(default_factory=HostState.now)
    notes: list[str] = field(default_factory=list)

    def restore(self) -> None:
        if self.bridge in links():
            sh(["ip", "link", "delete", self.bridge], check=False)
            if self.bridge in links():
                self.notes.append(f"{self.name}: could not delete bridge {self.bridge}")
        for family, table in sorted(nft_tables() - self.before.tables):
            if not self.tables((family, table)):
                self.notes.append(f"{self.name}: nftables table {family} {table} appeared during the run, "
                                  "not ours to delete: left alone")
                continue
            rules = nft_table_rules(family, table)
            if not all(any(m in r for m in self.markers) for r in rules):
                self.notes.append(f"{self.name}: nftables table {family} {table} appeared during the run and "
                                  "holds rules that are not the run's: left alone")
                continue
            if rules:
                self.notes.append(f"{self.name}: nftables table {family} {table} still held {len(rules)} rule(s) "
                                  "of the run's pods after the run: deleted")
            sh(["nft", "delete", "table", family, table], check=False)
        for path, value in self.before.sysctls.items():
            if value and read_text(path) != value:
                with open(path, "w") as f:
                    f.write(value)
        for d in cgroup_dirs(self.cgroup_parent):
            try:
                remove_cgroup(d)
            except OSError as e:
                self.notes.append(f"{self.name}: cgroup {d} could not be removed: {e.strerror}")
        now = HostState.now()
        for d, names in now.entries.items():
            for entry in sorted(names - self.before.entries.get(d, set())):
                path = os.path.join(d, entry)
                if os.path.lexists(path) and not remove_runtime_dir(path):
                    self.notes.append(f"{self.name}: {path} appeared during the run (left alone: it may be "
                                      "another program's)")
        if now.mounts != self.before.mounts:
            self.notes.append(f"{self.name}: the host's mount table changed during the run "
                              f"({self.before.mounts} -> {now.mounts} mounts)")


# -- processes and their memory ---------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Proc:
    pid: int
    ppid: int
    sid: int
    comm: str
    cmdline: tuple[str, ...]
    cgroup: str


def processes() -> dict[int, Proc]:
    found: dict[int, Proc] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            with open(f"/proc/{entry}/cmdline", "rb") as fb:
                cmdline = tuple(a.decode(errors="replace") for a in fb.read().split(b"\0") if a)
            with open(f"/proc/{entry}/cgroup") as f:
                cgroup = f.read()
        except OSError:
            continue
        # comm is in parentheses and may hold spaces: the fields after the last ')' are fixed.
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        rest = stat[stat.rindex(")") + 2:].split()
        found[int(entry)] = Proc(pid=int(entry), ppid=int(rest[1]), sid=int(rest[3]), comm=comm,
                                 cmdline=cmdline, cgroup=cgroup)
    return found


def descendants(procs: dict[int, Proc], roots: set[int]) -> set[int]:
    children: dict[int, list[int]] = {}
    for p in procs.values():
        children.setdefault(p.ppid, []).append(p.pid)
    seen, todo = set(), list(roots)
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        todo += children.get(pid, [])
    return seen


@dataclass(frozen=True, slots=True)
class Memory:
    rss: int    # bytes
    pss: int

    def __add__(self, other: Memory) -> Memory:
        return Memory(self.rss + other.rss, self.pss + other.pss)

    def __sub__(self, other: Memory) -> Memory:
        return Memory(self.rss - other.rss, self.pss - other.pss)


ZERO = Memory(0, 0)


def memory(pid: int) -> Memory:
    values = {"Rss:": 0, "Pss:": 0}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                parts = line.split()
                if parts and parts[0] in values:
                    values[parts[0]] = int(parts[1]) * 1024
    except OSError:
        return ZERO   # gone meanwhile
    return Memory(values["Rss:"], values["Pss:"])


def total(pids: set[int]) -> Memory:
    return sum((memory(p) for p in pids), ZERO)


# -- the daemons ------------------------------------------------------------------------------

@dataclass
class Daemon:
    name: str
    socket: str
    pid: int
    cgroup_parent: str
    version: str = ""

    def runtime_pids(self, procs: dict[int, Proc]) -> set[int]:
        """Every process of the runtime's, the containers' own included."""
        raise NotImplementedError

    def helper_pids(self, procs: dict[int, Proc]) -> set[int]:
        """The runtime's processes that are not the containers' own."""
        return {p for p in self.runtime_pids(procs) if procs[p].cmdline != APP_CMD}


class Containerd(Daemon):
    def runtime_pids(self, procs: dict[int, Proc]) -> set[int]:
        # The shims daemonize (their parent is gone): found by the address they were given.
        shims = {p.pid for p in procs.values()
                 if p.comm.startswith("containerd-shim") and self.socket in p.cmdline}
        return descendants(procs, {self.pid} | shims)


class Skiff(Daemon):
    def runtime_pids(self, procs: dict[int, Proc]) -> set[int]:
        # Whatever skiff starts: below the daemon, in its session (it leads one: started
        # with setsid), or in its cgroup parent, and what those started.
        mark = f":{self.cgroup_parent.rstrip('/')}/"
        roots = {p.pid for p in procs.values() if p.sid == self.pid or mark in p.cgroup}
        return descendants(procs, {self.pid} | roots)


def wait_for_socket(proc: subprocess.Popen[bytes], sock: str, log: str, name: str) -> str:
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            raise BenchError(f"{name} exited with {proc.returncode}: {read_text(log)[-3000:]}")
        if os.path.exists(sock):
            channel = grpc.insecure_channel(f"unix://{sock}")
            try:
                rt: Any = api_pb2_grpc.RuntimeServiceStub(channel)
                v = rt.Version(pb.VersionRequest(), timeout=2)
                return f"{v.runtime_name} {v.runtime_version}"
            except grpc.RpcError:
                pass
            finally:
                channel.close()
        if time.monotonic() > deadline:
            raise BenchError(f"{name} did not answer on {sock} within 30 s: {read_text(log)[-3000:]}")
        time.sleep(0.05)


def stop_process(proc: subprocess.Popen[bytes], name: str, notes: list[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        notes.append(f"{name} did not stop within 20 s of SIGTERM: killed")
        proc.kill()
        proc.wait()


def shut_down(name: str, daemon: Daemon | None, proc: subprocess.Popen[bytes] | None, dirs: tuple[str, ...],
              restorer: Restorer, notes: list[str]) -> None:
    """After a runtime's runs, whatever happened: its pods, the daemon, what it left, its
    directories, and the host state the restorer saved."""
    if daemon is not None:
        with contextlib.suppress(Exception):
            remove_all_pods(daemon.socket, notes)
    if proc is not None:
        stop_process(proc, name, notes)
        if daemon is not None:
            kill_leftovers(daemon, notes)
    for d in dirs:
        shutil.rmtree(d, ignore_errors=True)
    restorer.restore()
    notes.extend(restorer.notes)


def kill_leftovers(daemon: Daemon, notes: list[str]) -> None:
    """After the daemon stopped: its processes still running (shims, containers) are
    reported, killed and reaped by pid."""
    procs = processes()
    left = daemon.runtime_pids(procs) - {daemon.pid}
    left = {p for p in left if p in procs}
    if not left:
        return
    notes.append(f"{daemon.name}: {len(left)} process(es) outlived the daemon, killed: "
                 + ", ".join(sorted({' '.join(procs[p].cmdline[:2]) for p in left})))
    for p in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(os.path.exists(f"/proc/{p}") for p in left):
        time.sleep(0.05)


CONTAINERD_CONFIG = """version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[debug]
  level = "warn"
[plugins."io.containerd.internal.v1.opt"]
  path = "{root}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  # Lowering oom_score_adj (the sandbox asks for -998) is refused here (EACCES in runc's
  # nsexec, "can't get final child's PID from pipe"): keep it at containerd's own or above.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{state}/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni}/net.d"
    max_conf_num = 1
"""

# containerd's own example conflist (containerd/script/setup/install-cni), with our bridge,
# subnet and host-local dataDir. No loopback entry: the CRI plugin already runs the loopback
# plugin for lo in every pod netns (go-cni's WithLoNetwork); a second one would do it twice.
CNI_CONFLIST = {
    "cniVersion": "1.0.0",
    "name": "skiff-bench",
    "plugins": [
        {"type": "bridge", "bridge": "", "isGateway": True, "ipMasq": True, "promiscMode": True,
         "ipam": {"type": "host-local", "ranges": [[{"subnet": ""}]], "routes": [{"dst": "0.0.0.0/0"}],
                  "dataDir": ""}},
        {"type": "portmap", "capabilities": {"portMappings": True}},
    ],
}
CONTAINERD_BRIDGE, CONTAINERD_SUBNET = "skbench-ctrd0", "10.231.0.0/24"
SKIFF_BRIDGE, SKIFF_SUBNET = "skbench-skiff0", "10.232.0.0/24"
CONTAINERD_CGROUP, SKIFF_CGROUP = "/skiff-bench-containerd", "/skiff-bench-skiff"


def iptables_table(t: tuple[str, str]) -> bool:
    """iptables-nft's tables, which the CNI bridge plugin's masquerade rules create."""
    return t[0] in ("ip", "ip6") and t[1] in ("nat", "filter", "mangle")


@contextlib.contextmanager
def containerd_daemon(archives: dict[str, str], notes: list[str]) -> Iterator[Containerd]:
    root, state, cni = f"{BENCH_LIB}/containerd", f"{BENCH_RUN}/containerd", f"{BENCH_LIB}/containerd-cni"
    sock = f"{BENCH_RUN}/containerd.sock"
    restorer = Restorer("containerd", CONTAINERD_BRIDGE, CONTAINERD_CGROUP, iptables_table,
                        (CONTAINERD_SUBNET.split("/")[0].rpartition(".")[0] + ".", CONTAINERD_BRIDGE, "skiff-bench"))
    proc: subprocess.Popen[bytes] | None = None
    daemon: Containerd | None = None
    try:
        for d in (root, state, f"{cni}/net.d", f"{cni}/ipam"):
            os.makedirs(d, exist_ok=True)
        conflist = json.loads(json.dumps(CNI_CONFLIST))
        conflist["plugins"][0]["bridge"] = CONTAINERD_BRIDGE
        conflist["plugins"][0]["ipam"]["ranges"][0][0]["subnet"] = CONTAINERD_SUBNET
        conflist["plugins"][0]["ipam"]["dataDir"] = f"{cni}/ipam"
        with open(f"{cni}/net.d/10-skiff-bench.conflist", "w") as f:
            json.dump(conflist, f, indent=2)
        config = f"{BENCH_LIB}/containerd.toml"
        with open(config, "w") as f:
            f.write(CONTAINERD_CONFIG.format(root=root, state=state, sock=sock, pause=PAUSE_IMAGE, cni=cni))
        log = f"{BENCH_LIB}/containerd.log"
        with open(log, "wb") as out:
            # unshare execs containerd: the pid is containerd's.
            proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "containerd", "--config",
                                     config], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        version = wait_for_socket(proc, sock, log, "containerd")
        for archive in archives.values():
            sh(["ctr", "--address", sock, "--namespace", "k8s.io", "images", "import", "--base-name", IMAGE,
                archive], timeout=120)
        daemon = Containerd("containerd", sock, proc.pid, CONTAINERD_CGROUP, version=version)
        yield daemon
    except BaseException:
        notes.append("containerd's log ends: " + read_text(f"{BENCH_LIB}/containerd.log")[-2000:])
        raise
    finally:
        shut_down("containerd", daemon, proc, (root, state, cni), restorer, notes)


SKIFF_CONFIG = """socket = "{sock}"
images_root = "{lib}/images"
state_root = "{run}/state"
log_root = "{lib}/logs"
cgroup_parent = "{cgroup}"
[network]
mode = "bridge"
pod_cidr = "{subnet}"
bridge = "{bridge}"
"""


@contextlib.contextmanager
def skiff_daemon(archives: dict[str, str], notes: list[str]) -> Iterator[Skiff]:
    lib, run = f"{BENCH_LIB}/skiff", f"{BENCH_RUN}/skiff"
    sock = f"{BENCH_RUN}/skiff.sock"
    restorer = Restorer("skiff", SKIFF_BRIDGE, SKIFF_CGROUP, lambda t: t == ("ip", "skiff"),
                        (SKIFF_SUBNET.split("/")[0].rpartition(".")[0] + ".", SKIFF_BRIDGE))
    proc: subprocess.Popen[bytes] | None = None
    daemon: Skiff | None = None
    try:
        for d in (lib, run):
            os.makedirs(d, exist_ok=True)
        config = f"{BENCH_LIB}/skiff.toml"
        with open(config, "w") as f:
            f.write(SKIFF_CONFIG.format(sock=sock, lib=lib, run=run, cgroup=SKIFF_CGROUP, subnet=SKIFF_SUBNET,
                                        bridge=SKIFF_BRIDGE))
        for ref, archive in archives.items():
            sh([SKIFF, "--root", f"{lib}/images", "import", archive, ref], timeout=120)
        log = f"{BENCH_LIB}/skiff.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", SKIFF, "cri", "serve",
                                     "--config", config], stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True, env=bench_env())
        version = wait_for_socket(proc, sock, log, "skiff")
        daemon = Skiff("skiff", sock, proc.pid, SKIFF_CGROUP, version=version)
        yield daemon
    except BaseException:
        notes.append("skiff's log ends: " + read_text(f"{BENCH_LIB}/skiff.log")[-2000:])
        raise
    finally:
        shut_down("skiff", daemon, proc, (lib, run), restorer, notes)


def bench_env() -> dict[str, str]:
    # Users' machines cache bytecode; this environment may say not to (see start_latency.py).
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


# -- the CRI client -----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class PodTimes:
    start: float     # perf_counter seconds: the first request
    run_pod: float   # seconds each
    create: float
    start_container: float
    ready: float     # perf_counter seconds: ContainerStatus said RUNNING
    pod_id: str
    container_id: str
    cgroup: str      # the pod's cgroup parent

    @property
    def total(self) -> float:
        return self.ready - self.start


class Client:
    def __init__(self, socket: str, cgroup_parent: str, log_dir: str) -> None:
        self.channel = grpc.insecure_channel(f"unix://{socket}")
        self.rt: Any = api_pb2_grpc.RuntimeServiceStub(self.channel)
        self.cgroup_parent = cgroup_parent
        self.log_dir = log_dir

    def close(self) -> None:
        self.channel.close()

    def sandbox_config(self, name: str, host_network: bool) -> Any:
        # As kubelet does: a cgroup per pod (it makes and removes /kubepods/.../pod<uid>),
        # passed as the pod's cgroup_parent.
        uid = uuid.uuid4().hex
        ns = pb.NamespaceOption(network=pb.NODE if host_network else pb.POD, pid=pb.CONTAINER, ipc=pb.POD)
        return pb.PodSandboxConfig(
            metadata=pb.PodSandboxMetadata(name=name, uid=uid, namespace=POD_NAMESPACE, attempt=0),
            # kubelet leaves the hostname empty for host-network pods (runc refuses one
            # without a UTS namespace of the pod's own).
            hostname="" if host_network else name, log_directory=os.path.join(self.log_dir, f"{POD_NAMESPACE}_{name}_{uid}"),
            labels={"app": "skiff-bench"},
            linux=pb.LinuxPodSandboxConfig(
                cgroup_parent=f"{self.cgroup_parent}/pod{uid}",
                security_context=pb.LinuxSandboxSecurityContext(namespace_options=ns)))

    def start_pod(self, name: str, host_network: bool) -> PodTimes:
        """What kubelet does for a one-container pod, until the container is seen running."""
        config = self.sandbox_config(name, host_network)
        t0 = time.perf_counter()
        pod_id = self.rt.RunPodSandbox(pb.RunPodSandboxRequest(config=config), timeout=CALL_TIMEOUT).pod_sandbox_id
        t1 = time.perf_counter()
        container = pb.ContainerConfig(
            metadata=pb.ContainerMetadata(name="sleep", attempt=0), image=pb.ImageSpec(image=APP_IMAGE),
            log_path="sleep/0.log",
            linux=pb.LinuxContainerConfig(security_context=pb.LinuxContainerSecurityContext(
                namespace_options=config.linux.security_context.namespace_options)))
        cid = self.rt.CreateContainer(pb.CreateContainerRequest(pod_sandbox_id=pod_id, config=container,
                                                                sandbox_config=config),
                                      timeout=CALL_TIMEOUT).container_id
        t2 = time.perf_counter()
        self.rt.StartContainer(pb.StartContainerRequest(container_id=cid), timeout=CALL_TIMEOUT)
        t3 = time.perf_counter()
        while True:
            status = self.rt.ContainerStatus(pb.ContainerStatusRequest(container_id=cid),
                                             timeout=CALL_TIMEOUT).status
            if status.state == pb.CONTAINER_RUNNING:
                break
            if status.state == pb.CONTAINER_EXITED:
                raise BenchError(f"container {cid} of pod {name} exited with {status.exit_code}: {status.message}")
            if time.perf_counter() - t3 > 30:
                raise BenchError(f"container {cid} of pod {name} not running 30 s after StartContainer")
            time.sleep(0.001)
        return PodTimes(start=t0, run_pod=t1 - t0, create=t2 - t1, start_container=t3 - t2,
                        ready=time.perf_counter(), pod_id=pod_id, container_id=cid,
                        cgroup=config.linux.cgroup_parent)

    def exec_sync(self, container_id: str, cmd: tuple[str, ...]) -> Any:
        """ExecSync as kubelet's exec probe sends it; a failed command is an error here."""
        request = pb.ExecSyncRequest(container_id=container_id, cmd=list(cmd), timeout=EXEC_TIMEOUT)
        reply = self.rt.ExecSync(request, timeout=CALL_TIMEOUT)
        if reply.exit_code != 0:
            raise BenchError(f"exec {list(cmd)} in container {container_id}: exit {reply.exit_code}: "
                             f"{reply.stderr.decode(errors='replace').strip()}")
        return reply

    def remove_pod(self, pod_id: str, cgroup: str = "") -> None:
        self.rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=CALL_TIMEOUT)
        self.rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=CALL_TIMEOUT)
        if cgroup:  # kubelet's part: the pod cgroup, empty now
            for d in cgroup_dirs(cgroup):
                with contextlib.suppress(OSError):
                    os.rmdir(d)


def remove_all_pods(socket: str, notes: list[str]) -> None:
    """Whatever the runs left (after a failure): every pod with our label."""
    client = Client(socket, "", "")
    try:
        pods = client.rt.ListPodSandbox(pb.ListPodSandboxRequest(
            filter=pb.PodSandboxFilter(label_selector={"app": "skiff-bench"})), timeout=CALL_TIMEOUT).items
        for pod in pods:
            client.remove_pod(pod.id)
        if pods:
            notes.append(f"{len(pods)} pod(s) were still there after the runs (after an error): removed")
    finally:
        client.close()


# -- the measurements ---------------------------------------------------------------------------

@dataclass
class Result:
    runtime: str
    version: str = ""
    pods: int = 0
    # seconds, per network mode ("pod", "host"): whole pod-ready times and per-call times
    ready: dict[str, list[float]] = field(default_factory=dict)
    calls: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    burst_size: int = 0
    burst_pods_per_s: list[float] = field(default_factory=list)
    memory_pods: int = 0
    daemon_growth: dict[str, int] = field(default_factory=dict)     # rss, pss bytes (all N pods)
    helpers: dict[str, int] = field(default_factory=dict)           # per-pod processes, all N
    helper_count: int = 0
    helper_kinds: dict[str, int] = field(default_factory=dict)      # comm -> count
    containers: dict[str, int] = field(default_factory=dict)        # the containers' own, all N
    # seconds per ExecSync, by command as written in the table (exec_label); empty in data
    # from before this measurement
    execs: dict[str, list[float]] = field(default_factory=dict)
    exec_count: int = 0
    date: str = ""

    def per_pod(self, key: str) -> float:
        return (self.daemon_growth[key] + self.helpers[key]) / self.memory_pods


def progress(msg: str) -> None:
    print(f"cri_pods: {msg}", file=sys.stderr, flush=True)


def measure_ready(client: Client, result: Result, mode: str, count: int, warmup: int) -> None:
    times: list[float] = []
    calls: dict[str, list[float]] = {"RunPodSandbox": [], "CreateContainer": [], "StartContainer": []}
    for i in range(warmup + count):
        t = client.start_pod(f"ready-{mode}-{i}", host_network=(mode == "host"))
        client.remove_pod(t.pod_id, t.cgroup)
        if i >= warmup:
            times.append(t.total)
            calls["RunPodSandbox"].append(t.run_pod)
            calls["CreateContainer"].append(t.create)
            calls["StartContainer"].append(t.start_container)
    result.ready[mode] = times
    result.calls[mode] = calls
    progress(f"{result.runtime}: pod-ready, {mode} network: p50 {percentile(times, 50) * 1e3:.1f} ms, "
             f"p99 {percentile(times, 99) * 1e3:.1f} ms over {count}")


def exec_label(cmd: tuple[str, ...]) -> str:
    return " ".join(f"'{a}'" if " " in a else a for a in cmd)


def measure_exec(client: Client, result: Result, count: int, warmup: int) -> None:
    """ExecSync in the running container of a pod started for it (pod network), `count`
    calls one after another per command after `warmup` unmeasured ones; the pod is removed
    afterwards, outside the timed part."""
    pod = client.start_pod("exec", host_network=False)
    try:
        for cmd, expect in EXEC_COMMANDS:
            times: list[float] = []
            for i in range(warmup + count):
                t0 = time.perf_counter()
                reply = client.exec_sync(pod.container_id, cmd)
                elapsed = time.perf_counter() - t0
                if reply.stdout != expect:
                    raise BenchError(f"exec {list(cmd)}: printed {reply.stdout!r}, not {expect!r}")
                if i >= warmup:
                    times.append(elapsed)
            result.execs[exec_label(cmd)] = times
            progress(f"{result.runtime}: exec {exec_label(cmd)}: p50 {percentile(times, 50) * 1e3:.1f} ms, "
                     f"p99 {percentile(times, 99) * 1e3:.1f} ms over {count}")
    finally:
        client.remove_pod(pod.pod_id, pod.cgroup)
    result.exec_count = count


def start_many(client: Client, count: int, tag: str) -> list[PodTimes]:
    """`count` pods started at once from as many threads, released together by a barrier."""
    barrier = threading.Barrier(count)
    results: list[PodTimes | None] = [None] * count
    errors: list[BaseException] = []

    def one(i: int) -> None:
        barrier.wait()
        try:
            results[i] = client.start_pod(f"{tag}-{i}", host_network=False)
        except BaseException as e:  # noqa: BLE001  reported below, in the main thread
            errors.append(e)

    threads = [threading.Thread(target=one, args=(i,), name=f"bench-{tag}-{i}") for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    started = [r for r in results if r is not None]
    if errors:
        for r in started:
            with contextlib.suppress(grpc.RpcError):
                client.remove_pod(r.pod_id, r.cgroup)
        raise BenchError(f"{len(errors)} of {count} pods failed to start; the first: {errors[0]!r}") from errors[0]
    return started


def remove_many(client: Client, pods: list[PodTimes]) -> None:
    for p in pods:
        client.remove_pod(p.pod_id, p.cgroup)


def measure_burst(client: Client, result: Result, size: int, rounds: int) -> None:
    for r in range(rounds):
        pods = start_many(client, size, f"burst{r}")
        first, last = min(p.start for p in pods), max(p.ready for p in pods)
        remove_many(client, pods)
        result.burst_pods_per_s.append(size / (last - first))
    result.burst_size = size
    progress(f"{result.runtime}: burst of {size}: "
             + ", ".join(f"{x:.1f}" for x in result.burst_pods_per_s) + " pods/s")


def measure_memory(client: Client, daemon: Daemon, result: Result, count: int) -> None:
    before_procs = processes()
    baseline = daemon.runtime_pids(before_procs)   # the daemon and its standing helpers
    before = {p: memory(p) for p in baseline}
    pods = start_many(client, count, "memory")
    try:
        time.sleep(2)   # let lazy work (first reads, the monitor's copies) settle
        procs = processes()
        helpers = daemon.helper_pids(procs) - baseline
        containers = daemon.runtime_pids(procs) - daemon.helper_pids(procs)
        if len(containers) != count:
            raise BenchError(f"{daemon.name}: {len(containers)} container processes ({' '.join(APP_CMD)}) "
                             f"found for {count} running pods")
        growth = sum((memory(p) - before[p] for p in baseline if p in procs), ZERO)
        helper_mem = total(helpers)
        result.memory_pods = count
        result.daemon_growth = asdict(growth)
        result.helpers = asdict(helper_mem)
        result.helper_count = len(helpers)
        kinds: dict[str, int] = {}
        for p in helpers:
            cmd = procs[p].cmdline
            # the first word of a title (a process may set one): one kind per program
            label = (" ".join(cmd) if cmd[:1] == ("sleep",) else os.path.basename(cmd[0].split()[0]) if cmd
                     else procs[p].comm)
            kinds[label] = kinds.get(label, 0) + 1
        result.helper_kinds = kinds
        result.containers = asdict(total(containers))
    finally:
        remove_many(client, pods)
    progress(f"{result.runtime}: memory with {count} pods: daemon +{growth.rss / 1e6:.1f} MB RSS, "
             f"{len(helpers)} helper processes {helper_mem.rss / 1e6:.1f} MB RSS / {helper_mem.pss / 1e6:.1f} MB PSS "
             f"({', '.join(f'{k} x{v}' for k, v in sorted(kinds.items()))}); per pod "
             f"{result.per_pod('rss') / 1e6:.2f} MB RSS, {result.per_pod('pss') / 1e6:.2f} MB PSS")


def run_runtime(name: str, archives: dict[str, str], args: argparse.Namespace, notes: list[str]) -> Result:
    start = containerd_daemon if name == "containerd" else skiff_daemon
    result = Result(runtime=name, pods=args.pods,
                    date=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"))
    progress(f"{name}: starting the daemon")
    cgroups_before = memory_cgroups()
    with start(archives, notes) as daemon:
        result.version = daemon.version
        client = Client(daemon.socket, daemon.cgroup_parent, f"{BENCH_LIB}/{name}-pods")
        try:
            measure_ready(client, result, "pod", args.pods, args.warmup)
            measure_ready(client, result, "host", args.pods, args.warmup)
            measure_exec(client, result, args.execs, args.exec_warmup)
            measure_burst(client, result, args.burst, args.burst_rounds)
            measure_memory(client, daemon, result, args.memory_pods)
        finally:
            client.close()
    shutil.rmtree(f"{BENCH_LIB}/{name}-pods", ignore_errors=True)
    progress(f"{name}: daemon stopped, host cleaned")
    time.sleep(5)  # the kernel takes down removed cgroups in its workers
    left = memory_cgroups() - cgroups_before
    notes.append(f"{name}: {left} memory cgroups more in the kernel (/proc/cgroups) after its run than before it, "
                 "every pod removed: cgroups removed but kept alive, dying, by memory still charged to them")
    return result


def memory_cgroups() -> int:
    """num_cgroups of the memory controller: live cgroups and removed ones still dying."""
    for line in read_text("/proc/cgroups").splitlines():
        fields = line.split()
        if fields and fields[0] == "memory":
            return int(fields[2])
    return 0


# -- the images -------------------------------------------------------------------------------

def build_images(work: str) -> dict[str, str]:
    """Both images, built with `skiff build` into a scratch store and each exported as an
    oci-archive; archive path by image reference."""
    rootfs = os.path.join(work, "rootfs")
    for d in ("bin", "etc", "proc", "sys", "dev", "tmp", "root"):
        os.makedirs(os.path.join(rootfs, d), exist_ok=True)
    os.chmod(os.path.join(rootfs, "tmp"), 0o1777)
    shutil.copy2("/bin/busybox", os.path.join(rootfs, "bin", "busybox"))
    for applet in ("sh", "sleep", "true"):
        os.symlink("busybox", os.path.join(rootfs, "bin", applet))
    with open(os.path.join(rootfs, "etc", "passwd"), "w") as f:
        f.write("root:x:0:0:root:/root:/bin/sh\n")
    with open(os.path.join(rootfs, "etc", "group"), "w") as f:
        f.write("root:x:0:\n")
    store = os.path.join(work, "store")
    archives: dict[str, str] = {}
    for ref, cmd in ((APP_IMAGE, list(APP_CMD)), (PAUSE_IMAGE, ["sleep", "infinity"])):
        sh([SKIFF, "--root", store, "build", rootfs, "--tag", ref, "--cmd", json.dumps(cmd)])
        # The archive's index names the image by its tag alone ("sleep"), which
        # `ctr images import --base-name IMAGE` turns into IMAGE:sleep.
        archives[ref] = os.path.join(work, f"{ref.rpartition(':')[2]}.oci.tar")
        sh([SKIFF, "--root", store, "export", "--format", "oci-archive", ref, archives[ref]])
    return archives


# -- the report -------------------------------------------------------------------------------

def ms(x: float) -> str:
    return f"{x * 1e3:.1f} ms"


def mbytes(x: float) -> str:
    return f"{x / 1e6:.2f} MB"


@dataclass(frozen=True, slots=True)
class Row:
    metric: str
    skiff: float | None
    containerd: float | None
    fmt: Callable[[float], str]
    target: str = ""
    ok: Callable[[float], bool] | None = None   # on the ratio


def rows(results: dict[str, Result]) -> list[Row]:
    def pick(fn: Callable[[Result], float]) -> tuple[float | None, float | None]:
        return tuple(fn(results[r]) if r in results else None for r in RUNTIMES)  # type: ignore[return-value]

    def pick_exec(label: str, q: int) -> tuple[float | None, float | None]:
        # a column carried over from a run before this measurement has no execs: "not run"
        return tuple(percentile(results[r].execs[label], q) if r in results and results[r].execs.get(label)
                     else None for r in RUNTIMES)  # type: ignore[return-value]

    out: list[Row] = []
    for mode, label in (("pod", "pod network"), ("host", "host network")):
        out.append(Row(f"pod ready p50, {label}", *pick(lambda r: percentile(r.ready[mode], 50)), ms,
                       f"<= {TARGET_READY}x", lambda x: x <= TARGET_READY))
        out.append(Row(f"pod ready p99, {label}", *pick(lambda r: percentile(r.ready[mode], 99)), ms))
    n = max(r.exec_count for r in results.values())
    for cmd, _ in EXEC_COMMANDS:
        label = exec_label(cmd)
        out.append(Row(f"ExecSync `{label}` p50 ({n} in a row)", *pick_exec(label, 50), ms))
        out.append(Row(f"ExecSync `{label}` p99", *pick_exec(label, 99), ms))
    size = next(iter(results.values())).burst_size
    out.append(Row(f"burst of {size} pods, pods/s (median of rounds)",
                   *pick(lambda r: statistics.median(r.burst_pods_per_s)), lambda x: f"{x:.1f}",
                   f">= {TARGET_BURST}x", lambda x: x >= TARGET_BURST))
    n = next(iter(results.values())).memory_pods
    out.append(Row(f"memory per running pod, PSS ({n} pods)", *pick(lambda r: r.per_pod("pss")), mbytes,
                   f"<= {TARGET_MEMORY}x", lambda x: x <= TARGET_MEMORY))
    out.append(Row(f"memory per running pod, RSS ({n} pods)", *pick(lambda r: r.per_pod("rss")), mbytes))
    out.append(Row("  of which daemon growth, PSS", *pick(lambda r: r.daemon_growth["pss"] / r.memory_pods),
                   mbytes))
    out.append(Row("  of which per-pod processes, PSS", *pick(lambda r: r.helpers["pss"] / r.memory_pods), mbytes))
    return out


def markdown_rows(table: list[Row]) -> list[str]:
    lines = ["| metric | skiff | containerd | skiff / containerd | target | met? |",
             "|:---|---:|---:|---:|:---|:---|"]
    for r in table:
        s = r.fmt(r.skiff) if r.skiff is not None else "not run"
        c = r.fmt(r.containerd) if r.containerd is not None else "not run"
        ratio = r.skiff / r.containerd if r.skiff is not None and r.containerd else None
        met = "-" if r.ok is None or ratio is None else ("**met**" if r.ok(ratio) else "**not met**")
        lines.append(f"| {r.metric} | {s} | {c} | {'-' if ratio is None else f'{ratio:.2f}x'} | "
                     f"{r.target or '-'} | {met} |")
    return lines


def call_rows(results: dict[str, Result]) -> list[str]:
    lines = ["| p50 of each call, pod network | " + " | ".join(r for r in RUNTIMES if r in results) + " |",
             "|:---|" + "---:|" * sum(1 for r in RUNTIMES if r in results)]
    for call in ("RunPodSandbox", "CreateContainer", "StartContainer"):
        lines.append(f"| {call} | " + " | ".join(ms(statistics.median(results[r].calls["pod"][call]))
                                                 for r in RUNTIMES if r in results) + " |")
    lines.append("| RunPodSandbox, host network | " + " | ".join(
        ms(statistics.median(results[r].calls["host"]["RunPodSandbox"])) for r in RUNTIMES if r in results) + " |")
    return lines


def load_average() -> str:
    return " ".join(read_text("/proc/loadavg").split()[:3])


def debian_version(package: str) -> str:
    return sh(["dpkg-query", "-W", "-f=${Version}", package], check=False).strip() or "?"


def cpu_model() -> str:
    for line in read_text("/proc/cpuinfo").splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "?"


def skiff_commit() -> str:
    head = sh(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], check=False).strip()
    dirty = sh(["git", "-C", REPO, "status", "--porcelain", "--untracked-files=no"], check=False).strip()
    return (head or "?") + (" with local changes" if dirty else "")


def previous_data(path: str) -> dict[str, Any]:
    text = read_text(path)
    start = text.find(DATA_MARK)
    if start < 0:
        return {}
    end = text.find(" -->", start)
    try:
        data: dict[str, Any] = json.loads(text[start + len(DATA_MARK):end])
    except ValueError:
        return {}
    return data


def verdict_text(results: dict[str, Result]) -> list[str]:
    if len(results) < 2:
        missing = next(r for r in RUNTIMES if r not in results)
        return [f"No verdicts: {missing} has not been measured yet."]
    s, c = results["skiff"], results["containerd"]
    out = []
    for mode, label in (("pod", "with pod networking"), ("host", "in the host network")):
        sp, cp = percentile(s.ready[mode], 50), percentile(c.ready[mode], 50)
        ok = sp / cp <= TARGET_READY
        out.append(f"pod ready p50 {label} <= {TARGET_READY}x containerd's: **{'met' if ok else 'not met'}**: "
                   f"skiff {ms(sp)}, containerd {ms(cp)} ({sp / cp:.2f}x; the target allows {ms(cp * TARGET_READY)})"
                   + ("." if ok else f", {ms(sp - cp * TARGET_READY)} over."))
    sb, cb = statistics.median(s.burst_pods_per_s), statistics.median(c.burst_pods_per_s)
    ok = sb / cb >= TARGET_BURST
    out.append(f"burst of {s.burst_size} pods >= {TARGET_BURST}x containerd's pods/s: **{'met' if ok else 'not met'}**: "
               f"skiff {sb:.1f} pods/s, containerd {cb:.1f} ({sb / cb:.2f}x).")
    sm, cm = s.per_pod("pss"), c.per_pod("pss")
    ok = sm <= cm * TARGET_MEMORY
    out.append(f"memory per running pod (PSS) <= {TARGET_MEMORY}x containerd's (shim + pause + daemon growth): "
               f"**{'met' if ok else 'not met'}**: skiff {mbytes(sm)}, containerd {mbytes(cm)} ({sm / cm:.2f}x). "
               "PSS is what the pods cost the node: RSS counts every shared page once per process (RSS: skiff "
               f"{mbytes(s.per_pod('rss'))}, containerd {mbytes(c.per_pod('rss'))}). skiff's one container "
               "monitor, which runs before the pods come, counts in the daemon's growth.")
    return out


def markdown(results: dict[str, Result], measured: set[str], args: argparse.Namespace, notes: list[str],
             load_before: str) -> str:
    n_pods = next(iter(results.values())).pods
    exec_count = max(r.exec_count for r in results.values()) or args.execs
    carried = [f"{r} ({results[r].date})" for r in RUNTIMES if r in results and r not in measured]
    memory_lines = []
    for r in RUNTIMES:
        if r in results:
            res = results[r]
            kinds = ", ".join(f"{v} {k}" for k, v in sorted(res.helper_kinds.items()))
            memory_lines.append(
                f"- {r}: with {res.memory_pods} pods running, the daemon grew by "
                f"{mbytes(res.daemon_growth['rss'])} RSS / {mbytes(res.daemon_growth['pss'])} PSS; the pods brought "
                f"{res.helper_count} processes besides their containers ({kinds or 'none'}), "
                f"{mbytes(res.helpers['rss'])} RSS / {mbytes(res.helpers['pss'])} PSS in all; the containers' own "
                f"`sleep` processes, not counted, {mbytes(res.containers['rss'])} RSS.")
    data = {r: asdict(results[r]) for r in results}
    body = f"""## Pods through the CRI

What is measured: one CRI client (`bench/cri_pods.py`, Python gRPC on the runtime's unix
socket, the calls kubelet makes) against **skiff** (`skiff cri serve`) and **containerd**
(Debian's {debian_version('containerd')}, CRI plugin, runc v2 shim, runc {debian_version('runc')}):

1. **pod ready**: `RunPodSandbox`, `CreateContainer`, `StartContainer`, then `ContainerStatus`
   until it says `CONTAINER_RUNNING`, one pod at a time, {n_pods} pods after {args.warmup} unmeasured
   ones; each pod is stopped and removed (`StopPodSandbox`, `RemovePodSandbox`) after its
   sample, outside the timed part. Once with pod networking (a network namespace on a
   bridge), once with `namespace_options.network = NODE` (the host's network namespace);
2. **exec**, as kubelet's exec probes run: `ExecSync` of `true`, then of `sh -c 'echo hi'`
   (the shell's builtin echo; the reply's output is checked), {exec_count} calls of each one after
   another after {args.exec_warmup} unmeasured ones, with `timeout` = {EXEC_TIMEOUT} s (kubelet passes the
   probe's `timeoutSeconds`, 1 by default), in the running `sleep` container of a pod started
   for them (pod network), stopped and removed afterwards, outside the timed part; from the
   request to the reply (exit code and output), the command's own run included. One exec is,
   in containerd, a ttrpc call to the pod's shim, which starts `runc exec` (a new runc
   process, whose nsexec joins the container's namespaces) with the output on FIFOs, then
   the exit event back; in skiff, a job handed to a fork-server worker, which forks the
   process into the container's namespaces itself (no runtime binary started) with the
   output on pipes;
3. **burst**: {args.burst} pods started at once by as many client threads on one channel (released
   together by a barrier); pods/s from the first request to the last container seen
   RUNNING, median of {args.burst_rounds} round(s);
4. **memory per running pod**: with {args.memory_pods} pods running (pod network), the daemon's
   growth since just before those pods plus every process the pods brought that is not a
   container's own `sleep` (containerd: the `containerd-shim-runc-v2` processes and the
   pause processes below them; skiff: whatever is new in the daemon's process tree, session
   or cgroup parent; its container monitor, one for all the pods, is there before them and
   counts in the growth; the one new `python3` is the fork server's next idle worker, one per
   daemon), RSS and PSS from `/proc/PID/smaps_rollup`, divided by the pod count.
   PSS splits shared pages (the shim's binary, busybox) between their users, RSS counts them
   in full for each process; a daemon's PSS can shrink when it forks helpers (pages it now
   shares with them), so only the sum of the two parts means something.

Both runtimes run the same images, built here with `skiff build` from Debian's
busybox-static (`/bin/busybox` with `sh`, `sleep` and `true` links) and loaded from one oci-archive
(`skiff import`, `ctr images import`): a container running `sleep 3600`, and as
containerd's `sandbox_image` a busybox "pause" running `sleep infinity`, not Kubernetes'
pause image (no Docker Hub here). Each pod: cgroupfs cgroups, under a cgroup of its own
(`cgroup_parent` = PARENT/pod&lt;uid&gt;, made by the runtime, removed after the pod as kubelet does), its own PID namespace per container (kubelet's default), a log directory
(`log_path` set). Each daemon is started for its runs alone and stopped right after, skiff's first (containerd's
pods leave memory cgroups dying, counted in the notes, which slow what runs after them), with
private directories under /var/lib/skiff-bench and /run/skiff-bench (a tmpfs, as /run is on a
host: this machine's /run is ext4, where each of the records both runtimes fsync costs a
journal commit), in a private mount namespace: containerd with its own config file (overlayfs snapshotter, cgroupfs, runc v2
shim) and CNI conf dir, a bridge + host-local + portmap conflist with its own bridge and
subnet (lo is brought up by the CRI plugin's built-in loopback network), and
`restrict_oom_score_adj = true`, because this machine refuses to lower oom_score_adj (the
sandbox asks for -998; runc then fails with "can't get final child's PID from pipe"); skiff with its own
config (its built-in bridge, IPAM and nftables). The script then removes what the runs made:
bridges, the nftables tables they created, ip_forward as it was, cgroup parents, and the
directories containerd makes outside its root (/run/containerd, /run/netns, /var/lib/cni).

Reproduce (as root, Debian 12): `./dev.sh bench cri` (options: `--pods N`, `--burst N`,
`--memory-pods N`, `--execs N`, `--only containerd|skiff`); it rewrites this section of the file.

### Machine

| | |
|:---|:---|
| CPUs | {len(os.sched_getaffinity(0))} ({cpu_model()}) |
| kernel | {platform.release()} |
| containerd | {results['containerd'].version if 'containerd' in results else '-'} (Debian {debian_version('containerd')}), runc {debian_version('runc')}, CNI plugins {debian_version('containernetworking-plugins')} |
| skiff | {results['skiff'].version if 'skiff' in results else '-'}, commit {skiff_commit()}, Python {platform.python_version()} |
| date | {', '.join(f'{r} {results[r].date}' for r in RUNTIMES if r in results)}; load average {load_before} before, {load_average()} after |

### Results

""" + "\n".join(markdown_rows(rows(results))) + "\n\n" + "\n".join(call_rows(results)) + f"""

p99 over {n_pods} pods (or {exec_count} execs) rests on the slowest one or two: read it as "the tail".

""" + "\n".join(memory_lines) + """

### Targets

""" + "\n".join(f"{i}. {v}" for i, v in enumerate(verdict_text(results), 1)) + "\n"
    if carried:
        body += ("\n" + "; ".join(carried) + ": numbers carried over from an earlier run of this script "
                 "(`--only`), not measured side by side with the other column.\n")
    if notes:
        body += "\n### Notes from this run\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    body += f"\n{DATA_MARK}{json.dumps(data, separators=(',', ':'))} -->\n"
    return body


# -- main -------------------------------------------------------------------------------------

def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--only", choices=RUNTIMES, help="measure one runtime (the other column comes from the last run)")
    p.add_argument("--pods", type=int, default=50, help="pods per pod-ready series (default %(default)s)")
    p.add_argument("--warmup", type=int, default=2, help="unmeasured pods before each series (default %(default)s)")
    p.add_argument("--burst", type=int, default=100, help="pods per burst (default %(default)s)")
    p.add_argument("--burst-rounds", type=int, default=3, help="bursts (default %(default)s)")
    p.add_argument("--memory-pods", type=int, default=20, help="pods running for the memory figure (default %(default)s)")
    p.add_argument("--execs", type=int, default=50, help="ExecSync calls per exec series (default %(default)s)")
    p.add_argument("--exec-warmup", type=int, default=5,
                   help="unmeasured ExecSync calls before each exec series (default %(default)s)")
    p.add_argument("--markdown", default=os.path.join(REPO, "docs", "benchmarks.md"),
                   help="the file whose cri-pods section is rewritten (default %(default)s)")
    args = p.parse_args()
    if os.geteuid() != 0:
        print("cri_pods: run as root (the runtimes make namespaces, cgroups and bridges)", file=sys.stderr)
        return 1
    for d in (BENCH_LIB, BENCH_RUN):
        if os.path.exists(d):
            print(f"cri_pods: {d} exists (another run, or one that did not finish): remove it first",
                  file=sys.stderr)
            return 1
    load_before = load_average()
    notes: list[str] = []
    results: dict[str, Result] = {}
    # skiff first: containerd's pods leave memory cgroups dying behind them (hundreds a run,
    # counted in the notes), which slow whatever runs next on the machine; skiff's leave
    # none, so each runtime is measured on a machine no other runtime has slowed.
    order = [args.only] if args.only else ["skiff", "containerd"]
    run_tmpfs = False
    try:
        os.makedirs(BENCH_LIB)
        os.makedirs(BENCH_RUN)
        run_tmpfs = run_on_tmpfs()
        progress("building the busybox images")
        archives = build_images(f"{BENCH_LIB}/images")
        for name in order:
            results[name] = run_runtime(name, archives, args, notes)
    except (BenchError, grpc.RpcError) as e:
        print(f"cri_pods: {e}", file=sys.stderr)
        for n in notes:
            print(f"cri_pods: note: {n}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(BENCH_LIB, ignore_errors=True)
        if run_tmpfs:
            subprocess.run(["umount", "--lazy", BENCH_RUN], check=False)
        shutil.rmtree(BENCH_RUN, ignore_errors=True)
    if args.only:
        for name, data in previous_data(args.markdown).items():
            if name not in results and name in RUNTIMES:
                results[name] = Result(**data)
    for n in notes:
        print(f"cri_pods: note: {n}", file=sys.stderr)
    for r in rows(results):
        s = r.fmt(r.skiff) if r.skiff is not None else "-"
        c = r.fmt(r.containerd) if r.containerd is not None else "-"
        print(f"{r.metric:48} skiff {s:>10}  containerd {c:>10}")
    write_section(args.markdown, SECTION, markdown(results, set(order), args, notes, load_before))
    print(f"cri_pods: wrote section {SECTION} of {args.markdown}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
