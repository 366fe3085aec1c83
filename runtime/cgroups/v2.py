"""The cgroup v2 driver (youki `libcgroups/src/v2/`, crun `cgroup-resources.c`).

One directory per container. skiff enables controllers in the `cgroup.subtree_control` of
the directories it created above the leaf, never in the leaf (a v2 cgroup with controllers
enabled for children cannot hold processes: "no internal processes", EBUSY on join, youki
`v2/manager.rs`) and never in a cgroup skiff did not create: if the anchor, the first
directory above skiff's, does not delegate a controller the spec needs, apply() says so,
naming the controller and the anchor's `cgroup.subtree_control`.

The hybrid driver (v1.py) reuses this class for the name-only group under
/sys/fs/cgroup/unified, where only what that hierarchy lists (hugetlb, often nothing) is
driven.

Device control on v2 is an eBPF program attached to the cgroup (BPF_CGROUP_DEVICE), not a
file: devices.py compiles `linux.resources.devices` into one.
"""

from __future__ import annotations

import functools
import math
import os
from typing import TYPE_CHECKING

from skiff.runtime.cgroups import (
    CGROUP_ROOT,
    CgroupError,
    CgroupMode,
    placement,
    str_field,
    str_list,
)
from skiff.runtime.cgroups import cgroupfs

if TYPE_CHECKING:
    from skiff.oci.spec import LinuxBlockIO, LinuxCPU, LinuxMemory, LinuxResources
    from skiff.runtime.cgroups.stats import BlkioEntry, CgroupStats, HugetlbStats

# What skiff enables below its own directories, when the parent offers it.
CONTROLLERS = ("cpuset", "cpu", "io", "memory", "hugetlb", "pids")


def shares_to_weight(shares: int) -> int:
    """cpu.shares [2, 262144] (default 1024) to cpu.weight [1, 10000] (default 100).

    The log-quadratic curve of crun >= 1.23 `convert_shares_to_weight` and runc >= 1.3.2
    (containers/crun#1767, opencontainers/runc#4785): it maps 2, 1024 and 262144 onto 1,
    100 and 10000, so a container with default shares keeps default weight. The older
    linear formula, 1 + (shares - 2) * 9999 / 262142, gave 1024 shares a weight of 39.
    """
    if shares <= 2:
        return 1
    if shares >= 262144:
        return 10000
    exponent_of_2 = math.log2(shares)
    exponent = (exponent_of_2 * exponent_of_2 + 125 * exponent_of_2) / 612.0 - 7.0 / 34.0
    return math.ceil(10**exponent)


def blkio_weight_to_io_weight(weight: int) -> int:
    """blkio.weight [10, 1000] to io.weight [1, 10000], linearly (crun, runc
    `ConvertBlkIOToIOWeightValue`). io.bfq.weight takes blkio's range as is."""
    return 1 + (weight - 10) * 9999 // 990


def swap_max(swap: int | None, limit: int | None) -> str | None:
    """memory.swap.max for the spec's swap (runc `ConvertMemorySwapToCgroupV2Value`).

    The spec's swap is memory+swap, as cgroup v1's memory.memsw.limit_in_bytes counts it;
    v2 limits swap alone, so v2 gets swap - limit. -1 is "max"; an unlimited memory with
    no swap given means unlimited swap too, as it does on v1. None: leave it alone.
    """
    if not swap:
        return "max" if limit == -1 else None
    if swap == -1:
        return "max"
    if not limit:
        raise CgroupError("linux.resources.memory.swap: needs memory.limit on cgroup v2")
    if limit == -1:
        return str(swap)
    if swap < limit:
        raise CgroupError(
            f"linux.resources.memory.swap: {swap} is below memory.limit {limit}"
            " (swap counts memory+swap)"
        )
    return str(swap - limit)


def _max(value: int) -> str:
    return "max" if value < 0 else str(value)


def plan(resources: LinuxResources, leaf: str) -> list[tuple[str, str]]:
    """The (file, value) writes for `resources`, in order; unset fields write nothing.
    A file's controller is the part of its name before the first dot."""
    writes: list[tuple[str, str]] = []
    if resources.memory is not None:
        writes += _memory(resources.memory)
    if resources.cpu is not None:
        writes += _cpu(resources.cpu)
    if resources.pids is not None and resources.pids.limit:
        writes.append(("pids.max", _max(resources.pids.limit)))
    if resources.block_io is not None:
        writes += _io(resources.block_io, leaf)
    for h in resources.hugepage_limits:
        writes.append((f"hugetlb.{h.page_size}.max", str(h.limit)))
    writes += unified_writes(resources.unified)
    return writes


def _memory(m: LinuxMemory) -> list[tuple[str, str]]:
    # swappiness, disableOOMKiller and kernel memory have no v2 files; runc and crun
    # ignore them there too.
    writes = []
    if m.limit:
        writes.append(("memory.max", _max(m.limit)))
    swap = swap_max(m.swap, m.limit)
    if swap is not None:
        writes.append(("memory.swap.max", swap))
    if m.reservation:
        writes.append(("memory.low", _max(m.reservation)))
    return writes


def _cpu(c: LinuxCPU) -> list[tuple[str, str]]:
    if c.realtime_runtime or c.realtime_period:
        raise CgroupError(
            "linux.resources.cpu: realtimeRuntime and realtimePeriod are cgroup v1 only"
        )
    writes = []
    if c.shares:  # 0 is Docker's "unset"
        writes.append(("cpu.weight", str(shares_to_weight(c.shares))))
    if c.idle is not None:
        writes.append(("cpu.idle", str(c.idle)))
    if c.quota or c.period:
        # "max 100000" or "50000" (keeps the period) or "50000 100000" (runc fs2/cpu.go)
        value = str(c.quota) if c.quota and c.quota > 0 else "max"
        if c.period:
            value += f" {c.period}"
        writes.append(("cpu.max", value))
    if c.burst is not None:
        writes.append(("cpu.max.burst", str(c.burst)))
    if c.cpus:
        writes.append(("cpuset.cpus", c.cpus))
    if c.mems:
        writes.append(("cpuset.mems", c.mems))
    return writes


def _io(b: LinuxBlockIO, leaf: str) -> list[tuple[str, str]]:
    writes = []
    if b.weight or any(d.weight for d in b.weight_device):
        # BFQ has its own weight file, in blkio's range; without it io.weight (iocost)
        bfq = os.path.exists(f"{leaf}/io.bfq.weight")
        name = "io.bfq.weight" if bfq else "io.weight"

        def weight(w: int) -> int:
            return w if bfq else blkio_weight_to_io_weight(w)

        if b.weight:
            writes.append((name, f"default {weight(b.weight)}"))
        for d in b.weight_device:
            if d.weight:
                writes.append((name, f"{d.major}:{d.minor} {weight(d.weight)}"))
    for key, devices in (
        ("rbps", b.throttle_read_bps_device),
        ("wbps", b.throttle_write_bps_device),
        ("riops", b.throttle_read_iops_device),
        ("wiops", b.throttle_write_iops_device),
    ):
        for t in devices:
            writes.append(("io.max", f"{t.major}:{t.minor} {key}={_max(t.rate)}"))
    return writes


def unified_writes(unified: dict[str, str]) -> list[tuple[str, str]]:
    """`linux.resources.unified`: each key is a file in the leaf, written last so that it
    wins over the typed fields (as in runc and crun)."""
    writes = []
    for key, value in unified.items():
        if not key or "/" in key or key.startswith(".") or "." not in key:
            raise CgroupError(f"linux.resources.unified: {key!r}: not a cgroup file name")
        writes.append((key, value))
    return writes


@functools.cache
def hugepage_sizes() -> tuple[str, ...]:
    """The page sizes as cgroup file names spell them: "2MB", "1GB"."""
    sizes = []
    try:
        names = os.listdir("/sys/kernel/mm/hugepages")
    except OSError:
        return ()
    for name in names:  # hugepages-2048kB
        kb = int(name.removeprefix("hugepages-").removesuffix("kB"))
        if kb >= 1 << 20:
            sizes.append(f"{kb >> 20}GB")
        elif kb >= 1 << 10:
            sizes.append(f"{kb >> 10}MB")
        else:
            sizes.append(f"{kb}KB")
    return tuple(sorted(sizes))


class V2Driver:
    def __init__(
        self, *, root: str, leaf: str, created: list[str], mode: CgroupMode = CgroupMode.UNIFIED
    ) -> None:
        self.mode = mode
        self.root = root  # the cgroup2 mount
        self.leaf = leaf
        self.created = created  # directories this driver made, top-down

    @classmethod
    def place(
        cls,
        *,
        container_id: str,
        cgroups_path: str | None,
        parent: str | None,
        root: str = CGROUP_ROOT,
        mode: CgroupMode = CgroupMode.UNIFIED,
        own: str | None = None,
    ) -> V2Driver:
        if own is None:
            own = cgroupfs.own_cgroups().get("", "/")
        # skiff's cgroup2 mount shows the whole tree (or the whole of its cgroup
        # namespace), so /proc/self/cgroup's path is the path under the mount
        rel = placement(
            container_id=container_id, cgroups_path=cgroups_path, parent=parent, own=own.strip("/")
        )
        return cls(root=root, leaf=f"{root}/{rel}", created=[], mode=mode)

    @classmethod
    def load(cls, record: dict[str, object]) -> V2Driver:
        return cls(
            root=str_field(record, "root"),
            leaf=str_field(record, "leaf"),
            created=str_list(record, "created"),
            mode=CgroupMode(str_field(record, "mode")),
        )

    def record(self) -> dict[str, object]:
        return {
            "mode": self.mode.value,
            "root": self.root,
            "leaf": self.leaf,
            "created": list(self.created),
        }

    def create(self) -> None:
        created: list[str] = []
        cgroupfs.make_dirs(self.leaf, created)
        for path in created:
            if path != self.leaf:
                self._enable_all(path)
        self.created += [p for p in created if p not in self.created]

    def _enable_all(self, path: str) -> None:
        # Everything skiff may drive, at once: containers that later share this parent
        # find their controllers there, and apply() needs no write outside the leaf.
        available = cgroupfs.read(f"{path}/cgroup.controllers").split()
        wanted = [f"+{c}" for c in CONTROLLERS if c in available]
        if wanted:
            cgroupfs.write(f"{path}/cgroup.subtree_control", " ".join(wanted))

    def dirfd(self) -> int | None:
        # also for the unified/ group of a hybrid host: it is cgroup2 too
        try:
            return os.open(self.leaf, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise CgroupError(f"open {self.leaf}: {cgroupfs.reason(e)}") from e

    def self_joins(self, cloned: bool) -> tuple[str, ...]:
        return () if cloned else (f"{self.leaf}/cgroup.procs",)

    def add(self, pid: int) -> None:
        cgroupfs.write(f"{self.leaf}/cgroup.procs", str(pid))

    def apply(self, resources: LinuxResources | None) -> None:
        if resources is not None:
            self.write_all(plan(resources, self.leaf))
            if resources.devices and self.mode is CgroupMode.UNIFIED:
                from skiff.runtime.cgroups.devices import attach_device_filter

                attach_device_filter(self.leaf, resources.devices)

    def write_all(self, writes: list[tuple[str, str]]) -> None:
        needed = {name.split(".", 1)[0] for name, _ in writes} - {"cgroup"}
        if needed:
            self.require(needed)
        for name, value in writes:
            cgroupfs.write(f"{self.leaf}/{name}", value)

    def controllers(self) -> set[str]:
        """The controllers the leaf has (its parent's subtree_control)."""
        return set(cgroupfs.read(f"{self.leaf}/cgroup.controllers").split())

    def require(self, needed: set[str]) -> None:
        """Make sure the leaf has `needed`: enable what is missing in skiff's own
        directories (another skiff may have made them without it, or be racing us), or
        raise naming the anchor that does not delegate it."""
        missing = needed - self.controllers()
        if not missing:
            return
        chain = []  # skiff's directories above the leaf, bottom-up
        path = os.path.dirname(self.leaf)
        while path.startswith(self.root + "/") and (
            path in self.created or cgroupfs.is_marked(path)
        ):
            chain.append(path)
            path = os.path.dirname(path)
        anchor_file = f"{path}/cgroup.subtree_control"
        undelegated = missing - set(cgroupfs.read(anchor_file).split())
        if undelegated:
            names = ", ".join(sorted(undelegated))
            raise CgroupError(
                f"cgroup controller {names} is not enabled in {anchor_file}: skiff enables"
                " controllers only in cgroups it created; delegate it there or choose"
                " another parent"
            )
        enable = " ".join(f"+{c}" for c in sorted(missing))
        for path in reversed(chain):
            cgroupfs.write(f"{path}/cgroup.subtree_control", enable)

    def freeze(self, frozen: bool) -> None:
        cgroupfs.write(f"{self.leaf}/cgroup.freeze", "1" if frozen else "0")
        cgroupfs.wait_for(
            f"{'freeze' if frozen else 'thaw'} {self.leaf}", lambda: self.frozen() == frozen
        )

    def frozen(self) -> bool:
        # cgroup.freeze says what was asked; cgroup.events says what the kernel did
        return cgroupfs.parse_keyed(cgroupfs.read(f"{self.leaf}/cgroup.events")).get(
            "frozen"
        ) == 1

    def oom_kills(self) -> int:
        return cgroupfs.read_keyed(f"{self.leaf}/memory.events").get("oom_kill", 0)

    def pids(self) -> list[int]:
        # skiff's leaf has no children, so its own cgroup.procs is every process
        return cgroupfs.read_pids(f"{self.leaf}/cgroup.procs")

    def mounts(self) -> list[tuple[str, str]]:
        return [("", self.leaf)]

    def destroy(self, *, keep_parents: bool = False) -> None:
        cgroupfs.remove_dirs(self.leaf, self.created, stop=self.root, keep_parents=keep_parents)

    def release_parents(self) -> None:
        cgroupfs.remove_parents(self.leaf, self.created, stop=self.root)

    def stats(self) -> CgroupStats:
        from skiff.runtime.cgroups.stats import CgroupStats

        leaf = self.leaf
        events = cgroupfs.read_keyed(f"{leaf}/memory.events")
        raw = cgroupfs.read_keyed(f"{leaf}/memory.stat")
        # usage_usec, user_usec and system_usec are there without the cpu controller
        cpu = cgroupfs.read_keyed(f"{leaf}/cpu.stat")
        service_bytes, serviced = _io_stat(cgroupfs.read_optional(f"{leaf}/io.stat") or "")
        return CgroupStats(
            memory_usage=cgroupfs.read_int(f"{leaf}/memory.current"),
            memory_max_usage=cgroupfs.read_int(f"{leaf}/memory.peak"),
            memory_limit=cgroupfs.read_limit(f"{leaf}/memory.max"),
            memory_failcnt=events.get("max", 0),
            memory_cache=raw.get("file", 0),
            memory_rss=raw.get("anon", 0),
            memory_raw=raw,
            swap_usage=cgroupfs.read_int(f"{leaf}/memory.swap.current"),
            swap_limit=cgroupfs.read_limit(f"{leaf}/memory.swap.max"),
            swap_failcnt=cgroupfs.read_keyed(f"{leaf}/memory.swap.events").get("fail", 0),
            oom_kills=events.get("oom_kill", 0),
            cpu_usage_total=cpu.get("usage_usec", 0) * 1000,
            cpu_usage_user=cpu.get("user_usec", 0) * 1000,
            cpu_usage_system=cpu.get("system_usec", 0) * 1000,
            throttling_periods=cpu.get("nr_periods", 0),
            throttled_periods=cpu.get("nr_throttled", 0),
            throttled_time=cpu.get("throttled_usec", 0) * 1000,
            pids_current=cgroupfs.read_int(f"{leaf}/pids.current"),
            pids_limit=cgroupfs.read_limit(f"{leaf}/pids.max"),
            hugetlb=self.hugetlb_stats(),
            io_service_bytes=service_bytes,
            io_serviced=serviced,
        )

    def hugetlb_stats(self) -> dict[str, HugetlbStats]:
        from skiff.runtime.cgroups.stats import HugetlbStats

        out = {}
        for size in hugepage_sizes():
            usage = cgroupfs.read_optional(f"{self.leaf}/hugetlb.{size}.current")
            if usage is None:
                continue  # hugetlb not enabled here
            events = cgroupfs.read_keyed(f"{self.leaf}/hugetlb.{size}.events")
            out[size] = HugetlbStats(
                usage=cgroupfs.parse_int(usage, size) or 0, failcnt=events.get("max", 0)
            )
        return out


_IO_OPS = {"r": "Read", "w": "Write", "d": "Discard"}


def _io_stat(text: str) -> tuple[tuple[BlkioEntry, ...], tuple[BlkioEntry, ...]]:
    """io.stat ("8:0 rbytes=1 wbytes=2 rios=3 wios=4 dbytes=0 dios=0") as runc's
    blkio entries: (bytes, operations)."""
    from skiff.runtime.cgroups.stats import BlkioEntry

    service_bytes: list[BlkioEntry] = []
    serviced: list[BlkioEntry] = []
    for line in text.splitlines():
        device, *pairs = line.split()
        major, _, minor = device.partition(":")
        for pair in pairs:
            key, _, value = pair.partition("=")
            op = _IO_OPS.get(key[:1])
            if op is None or key[1:] not in ("bytes", "ios"):
                continue
            entry = BlkioEntry(major=int(major), minor=int(minor), op=op, value=int(value))
            (service_bytes if key[1:] == "bytes" else serviced).append(entry)
    return tuple(service_bytes), tuple(serviced)
