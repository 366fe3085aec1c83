"""The cgroup v1 driver, for legacy and hybrid hosts (youki `libcgroups/src/v1/`, runc's
vendored `opencontainers/cgroups/fs/`).

One directory per hierarchy skiff manages (cpu, cpuacct, cpuset, memory, devices,
freezer, blkio, pids, hugetlb; however the host groups them into mounts, found in
/proc/self/mountinfo). On a hybrid host the container also joins the same cgroup under
/sys/fs/cgroup/unified, name-only, as runc does; whatever a spec needs from a controller
that is not mounted on v1 is driven there when that hierarchy offers it (hugetlb on the
development host, when its parent delegates it), through the v2 driver. A limit that no
hierarchy can enforce is an error, not a silent no-op.

cgroupspy (the project's dependency for v1 trees) is not used: it walks whole directory
trees and assumes /sys/fs/cgroup/<name> mounts, and its import (with logging) costs more
than these few reads and writes of known files.
"""

from __future__ import annotations

import errno
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
from skiff.runtime.cgroups import cgroupfs, v2

if TYPE_CHECKING:
    from collections.abc import Callable

    from skiff.oci.spec import LinuxBlockIO, LinuxCPU, LinuxDeviceCgroup, LinuxResources
    from skiff.runtime.cgroups.stats import BlkioEntry, CgroupStats, HugetlbStats

    _Put = Callable[[str, str], None]

# The spec field a v1 controller serves, for error messages.
_FIELD = {
    "memory": "linux.resources.memory",
    "cpu": "linux.resources.cpu",
    "cpuset": "linux.resources.cpu",
    "pids": "linux.resources.pids",
    "blkio": "linux.resources.blockIO",
    "hugetlb": "linux.resources.hugepageLimits",
}
# v1 controller <-> its v2 name, for the hybrid fallback
_V2_NAME = {"blkio": "io"}
_V1_NAME = {"io": "blkio"}


def _max(value: int) -> str:
    return "max" if value < 0 else str(value)


def _device_rule(d: LinuxDeviceCgroup) -> str:
    major = "*" if d.major is None or d.major < 0 else str(d.major)
    minor = "*" if d.minor is None or d.minor < 0 else str(d.minor)
    return f"{d.type or 'a'} {major}:{minor} {d.access or 'rwm'}"


class V1Driver:
    def __init__(
        self,
        *,
        mode: CgroupMode,
        dirs: dict[str, str],
        roots: dict[str, str],
        created: list[str],
        unified: v2.V2Driver | None,
    ) -> None:
        self.mode = mode
        self.dirs = dirs  # hierarchy ("cpu,cpuacct", "memory") -> the container's directory
        self.roots = roots  # hierarchy -> its mount point
        self.created = created  # directories this driver made, top-down per hierarchy
        self.unified = unified  # the name-only group under unified/ on a hybrid host

    @classmethod
    def place(
        cls, *, mode: CgroupMode, container_id: str, cgroups_path: str | None, parent: str | None
    ) -> V1Driver:
        own = cgroupfs.own_cgroups()
        names = {frozenset(k.split(",")) & cgroupfs.V1_CONTROLLERS: k for k in own if k}
        dirs, roots = {}, {}
        for controllers, (mountpoint, root) in cgroupfs.v1_mounts().items():
            name = names.get(controllers, ",".join(sorted(controllers)))
            rel = placement(
                container_id=container_id,
                cgroups_path=cgroups_path,
                parent=parent,
                own=cgroupfs.relative(own.get(name, "/"), root),
            )
            dirs[name] = f"{mountpoint}/{rel}"
            roots[name] = mountpoint
        if not dirs:
            wanted = ", ".join(sorted(cgroupfs.V1_CONTROLLERS))
            raise CgroupError(f"no cgroup v1 mount of any of {wanted} in /proc/self/mountinfo")
        unified = None
        if mode is CgroupMode.HYBRID:
            unified = v2.V2Driver.place(
                container_id=container_id,
                cgroups_path=cgroups_path,
                parent=parent,
                root=f"{CGROUP_ROOT}/unified",
                mode=CgroupMode.HYBRID,
                own=own.get("", "/"),
            )
        return cls(mode=mode, dirs=dirs, roots=roots, created=[], unified=unified)

    @classmethod
    def load(cls, record: dict[str, object]) -> V1Driver:
        dirs, roots, unified = record.get("dirs"), record.get("roots"), record.get("unified")
        if not isinstance(dirs, dict) or not isinstance(roots, dict):
            raise CgroupError("cgroup record: dirs and roots: want objects")
        if unified is not None and not isinstance(unified, dict):
            raise CgroupError("cgroup record: unified: want an object or null")
        return cls(
            mode=CgroupMode(str_field(record, "mode")),
            dirs={str(k): str(v) for k, v in dirs.items()},
            roots={str(k): str(v) for k, v in roots.items()},
            created=str_list(record, "created"),
            unified=None if unified is None else v2.V2Driver.load(unified),
        )

    def record(self) -> dict[str, object]:
        return {
            "mode": self.mode.value,
            "dirs": dict(self.dirs),
            "roots": dict(self.roots),
            "created": list(self.created),
            "unified": None if self.unified is None else self.unified.record(),
        }

    def _dir(self, controller: str) -> str | None:
        for name, path in self.dirs.items():
            if controller in name.split(","):
                return path
        return None

    def create(self) -> None:
        for name, path in self.dirs.items():
            created: list[str] = []
            cgroupfs.make_dirs(path, created)
            if "cpuset" in name.split(","):
                # A new v1 cpuset has no cpus and no mems, and joining it fails with
                # ENOSPC: copy the parent's, top-down (runc `cpusetEnsureParent`). Not only
                # into what this call made: a parent another skiff process made a moment
                # ago may still be empty, and is filled the same way (marked ones only).
                # Filled, it clones them into the directories made below it from then on:
                # a write of cpuset.cpus rebuilds the scheduler domains, in time that grows
                # with the number of cpusets (0.5 ms with 500 pods).
                for new in self._cpuset_chain(name, path, created):
                    parent = os.path.dirname(new)
                    filled = False
                    for file in ("cpuset.cpus", "cpuset.mems"):
                        if not cgroupfs.read(f"{new}/{file}").strip():
                            cgroupfs.write(f"{new}/{file}", cgroupfs.read(f"{parent}/{file}").strip())
                            filled = True
                    if filled:
                        cgroupfs.write(f"{new}/cgroup.clone_children", "1")
            self.created += [p for p in created if p not in self.created]
        if self.unified is not None:
            self.unified.create()

    def _cpuset_chain(self, name: str, leaf: str, created: list[str]) -> list[str]:
        """The directories from below the hierarchy's root down to `leaf` that skiff made."""
        chain: list[str] = []
        path = leaf
        while path != self.roots[name] and path.startswith(self.roots[name] + "/"):
            if path in created or cgroupfs.is_marked(path):
                chain.append(path)
            path = os.path.dirname(path)
        return chain[::-1]

    def dirfd(self) -> int | None:
        # CLONE_INTO_CGROUP takes one cgroup2 directory: on a hybrid host the unified/ group;
        # the v1 hierarchies the process joins by itself (self_joins)
        return self.unified.dirfd() if self.unified is not None else None

    def self_joins(self, cloned: bool) -> tuple[str, ...]:
        joins = tuple(f"{path}/tasks" for path in self.dirs.values())
        return joins + (self.unified.self_joins(cloned) if self.unified is not None else ())

    def add(self, pid: int) -> None:
        for path in self.dirs.values():
            cgroupfs.write(f"{path}/cgroup.procs", str(pid))
        if self.unified is not None:
            self.unified.add(pid)

    # -- limits ----------------------------------------------------------------------

    def apply(self, resources: LinuxResources | None) -> None:
        if resources is None:
            return
        v1_writes: list[tuple[str, str]] = []
        v2_wanted: set[str] = set()  # v2 controllers to drive under unified/
        for controller, writes in self._plan(resources).items():
            if self._dir(controller) is not None:
                v1_writes += writes
            elif controller == "devices":
                # v2 device control is a BPF program skiff does not build (see v2.py)
                raise CgroupError("linux.resources.devices: no devices cgroup v1 mount")
            else:
                v2_wanted.add(_V2_NAME.get(controller, controller))
        unified = self._unified_keys(resources.unified)
        if v2_wanted:
            self._require_unified(v2_wanted)
            unified = self._v2_writes(resources, v2_wanted) + unified
        self._write_v1(v1_writes)
        if unified and self.unified is not None:
            self.unified.write_all(unified)

    def _v2_writes(self, r: LinuxResources, wanted: set[str]) -> list[tuple[str, str]]:
        """What v2 would write for the controllers in `wanted`, planned from only their
        part of the spec (a v1-valid memory spec need not be v2-valid)."""
        from dataclasses import replace

        assert self.unified is not None
        part = replace(
            r,
            memory=r.memory if "memory" in wanted else None,
            cpu=r.cpu if wanted & {"cpu", "cpuset"} else None,
            pids=r.pids if "pids" in wanted else None,
            block_io=r.block_io if "io" in wanted else None,
            hugepage_limits=r.hugepage_limits if "hugetlb" in wanted else (),
            devices=(),
            unified={},
        )
        return [w for w in v2.plan(part, self.unified.leaf) if w[0].split(".", 1)[0] in wanted]

    def _require_unified(self, controllers: set[str]) -> None:
        names = ", ".join(sorted(controllers))
        fields = ", ".join(sorted({_FIELD[_V1_NAME.get(c, c)] for c in controllers}))
        if self.unified is None:
            raise CgroupError(
                f"{fields}: no cgroup hierarchy on this host has the {names} controller"
                " (no cgroup v1 mount of it in /proc/self/mountinfo, no cgroup v2)"
            )
        try:
            self.unified.require(controllers)
        except CgroupError as e:
            raise CgroupError(
                f"{fields}: no cgroup hierarchy on this host can enforce it: {names} is not"
                f" mounted on cgroup v1, and on cgroup v2 (unified/): {e}"
            ) from e

    def _unified_keys(self, unified: dict[str, str]) -> list[tuple[str, str]]:
        """The unified map, on v1: only keys of controllers that live on unified/."""
        writes = v2.unified_writes(unified)
        for name, _ in writes:
            controller = name.split(".", 1)[0]
            if self.unified is None:
                raise CgroupError(
                    f"linux.resources.unified: {name}: needs cgroup v2, and this host has"
                    " only cgroup v1"
                )
            if self._dir(_V1_NAME.get(controller, controller)) is not None:
                raise CgroupError(
                    f"linux.resources.unified: {name}: the {controller} controller is on"
                    " cgroup v1 on this host; only unified/'s controllers can be set this way"
                )
        return writes

    def _write_v1(self, writes: list[tuple[str, str]]) -> None:
        retry = []
        for name, value in writes:
            path = f"{self._dir(name.split('.', 1)[0])}/{name}"
            try:
                cgroupfs.write(path, value)
            except CgroupError as e:
                # A shorter period can make old quota / new period exceed the parent's
                # bandwidth (EINVAL) until the new quota is in: try it again after (crun
                # `write_cpu_resources`).
                cause = e.__cause__
                if name == "cpu.cfs_period_us" and isinstance(cause, OSError) and (
                    cause.errno == errno.EINVAL
                ):
                    retry.append((path, value))
                    continue
                raise
        for path, value in retry:
            cgroupfs.write(path, value)

    def _plan(self, r: LinuxResources) -> dict[str, list[tuple[str, str]]]:
        """{v1 controller: [(file, value)]} for what the spec sets, in write order."""
        plan: dict[str, list[tuple[str, str]]] = {}

        def put(name: str, value: str) -> None:
            plan.setdefault(name.split(".", 1)[0], []).append((name, value))

        if r.memory is not None:
            self._plan_memory(r, put)
        if r.cpu is not None:
            _plan_cpu(r.cpu, put)
        if r.pids is not None and r.pids.limit:
            put("pids.max", _max(r.pids.limit))
        if r.block_io is not None:
            self._plan_blkio(r.block_io, put)
        for h in r.hugepage_limits:
            put(f"hugetlb.{h.page_size}.limit_in_bytes", str(h.limit))
        if r.devices:
            # Deny everything, then the rules in order (runc, crun): a rule list that
            # does not start with deny-all still means "only these".
            put("devices.deny", "a")
            for d in r.devices:
                put("devices.allow" if d.allow else "devices.deny", _device_rule(d))
        return plan

    def _plan_memory(self, r: LinuxResources, put: _Put) -> None:
        m = r.memory
        assert m is not None
        # The spec's swap is memory+swap, exactly what memory.memsw.limit_in_bytes
        # limits, so v1 takes it as is (v2 takes swap - limit, see v2.swap_max).
        limit, swap = m.limit or None, m.swap or None
        if limit is not None and swap is not None and swap != -1 and limit != -1 and swap < limit:
            raise CgroupError(
                f"linux.resources.memory.swap: {swap} is below memory.limit {limit}"
                " (swap counts memory+swap)"
            )
        memsw_first = False
        if limit is not None and swap is not None and (memory := self._dir("memory")):
            # The kernel keeps limit <= memsw at every step: raise memsw first when the
            # new memsw is above the current limit, else lower the limit first (runc
            # fs/memory.go `setMemoryAndSwap`).
            current = cgroupfs.read_limit(f"{memory}/memory.limit_in_bytes")
            memsw_first = swap == -1 or (current is not None and current < swap)
        if swap is not None and memsw_first:
            put("memory.memsw.limit_in_bytes", str(swap))
        if limit is not None:
            put("memory.limit_in_bytes", str(limit))
        if swap is not None and not memsw_first:
            put("memory.memsw.limit_in_bytes", str(swap))
        if m.reservation:
            put("memory.soft_limit_in_bytes", str(m.reservation))
        if m.swappiness is not None:
            if not 0 <= m.swappiness <= 100:
                raise CgroupError(
                    f"linux.resources.memory.swappiness: {m.swappiness}: must be 0 to 100"
                )
            put("memory.swappiness", str(m.swappiness))
        if m.disable_oom_killer:
            put("memory.oom_control", "1")
        # kernel and kernelTCP: kmem limits are gone from Linux 5.16+ and ignored by
        # runc since 1.1; skiff ignores them too.

    def _plan_blkio(self, b: LinuxBlockIO, put: _Put) -> None:
        blkio = self._dir("blkio")
        # Without CFQ (gone since 5.0) the weight files are BFQ's: blkio.bfq.weight
        bfq = blkio is not None and os.path.exists(f"{blkio}/blkio.bfq.weight")
        prefix = "blkio.bfq." if bfq else "blkio."
        if b.weight:
            put(f"{prefix}weight", str(b.weight))
        if b.leaf_weight:
            put("blkio.leaf_weight", str(b.leaf_weight))
        for d in b.weight_device:
            if d.weight:
                put(f"{prefix}weight_device", f"{d.major}:{d.minor} {d.weight}")
            if d.leaf_weight:
                put("blkio.leaf_weight_device", f"{d.major}:{d.minor} {d.leaf_weight}")
        for name, devices in (
            ("read_bps_device", b.throttle_read_bps_device),
            ("write_bps_device", b.throttle_write_bps_device),
            ("read_iops_device", b.throttle_read_iops_device),
            ("write_iops_device", b.throttle_write_iops_device),
        ):
            for t in devices:
                put(f"blkio.throttle.{name}", f"{t.major}:{t.minor} {t.rate}")

    # -- freezer, stats, teardown ----------------------------------------------------

    def freeze(self, frozen: bool) -> None:
        freezer = self._dir("freezer")
        if freezer is None:
            # cgroup.freeze needs no controller: any cgroup2 directory has it (5.2+)
            if self.unified is None:
                raise CgroupError("freeze: no freezer cgroup v1 mount and no cgroup v2")
            self.unified.freeze(frozen)
            return
        cgroupfs.write(f"{freezer}/freezer.state", "FROZEN" if frozen else "THAWED")
        # freezer.state reads FREEZING until every task has stopped
        cgroupfs.wait_for(
            f"{'freeze' if frozen else 'thaw'} {freezer}", lambda: self.frozen() == frozen
        )

    def frozen(self) -> bool:
        freezer = self._dir("freezer")
        if freezer is None:
            return self.unified is not None and self.unified.frozen()
        return cgroupfs.read(f"{freezer}/freezer.state").strip() == "FROZEN"

    def oom_kills(self) -> int:
        memory = self._dir("memory")
        if memory is None:
            return 0
        return cgroupfs.read_keyed(f"{memory}/memory.oom_control").get("oom_kill", 0)

    def pids(self) -> list[int]:
        if self.unified is not None:
            return self.unified.pids()
        for path in self.dirs.values():
            return cgroupfs.read_pids(f"{path}/cgroup.procs")
        return []

    def mounts(self) -> list[tuple[str, str]]:
        out = list(self.dirs.items())
        if self.unified is not None:
            out.append(("unified", self.unified.leaf))
        return out

    def destroy(self, *, keep_parents: bool = False) -> None:
        errors: list[CgroupError] = []
        for name, path in self.dirs.items():
            try:
                cgroupfs.remove_dirs(path, self.created, stop=self.roots[name], keep_parents=keep_parents)
            except CgroupError as e:
                errors.append(e)
        if self.unified is not None:
            try:
                self.unified.destroy(keep_parents=keep_parents)
            except CgroupError as e:
                errors.append(e)
        if errors:
            for other in errors[1:]:
                errors[0].add_note(str(other))
            raise errors[0]

    def release_parents(self) -> None:
        for name, path in self.dirs.items():
            cgroupfs.remove_parents(path, self.created, stop=self.roots[name])
        if self.unified is not None:
            self.unified.release_parents()

    def stats(self) -> CgroupStats:
        from dataclasses import replace

        from skiff.runtime.cgroups.stats import CgroupStats

        memory, cpu, cpuacct, pids, blkio, hugetlb = (
            self._dir(c) for c in ("memory", "cpu", "cpuacct", "pids", "blkio", "hugetlb")
        )
        stats = _memory_stats(memory) if memory else CgroupStats()
        if cpuacct:
            percpu = cgroupfs.read_optional(f"{cpuacct}/cpuacct.usage_percpu") or ""
            stats = replace(
                stats,
                cpu_usage_total=cgroupfs.read_int(f"{cpuacct}/cpuacct.usage"),
                cpu_usage_user=cgroupfs.read_int(f"{cpuacct}/cpuacct.usage_user"),
                cpu_usage_system=cgroupfs.read_int(f"{cpuacct}/cpuacct.usage_sys"),
                cpu_usage_percpu=tuple(int(v) for v in percpu.split()),
            )
        if cpu:
            throttling = cgroupfs.read_keyed(f"{cpu}/cpu.stat")
            stats = replace(
                stats,
                throttling_periods=throttling.get("nr_periods", 0),
                throttled_periods=throttling.get("nr_throttled", 0),
                throttled_time=throttling.get("throttled_time", 0),  # ns on v1
            )
        if pids:
            stats = replace(
                stats,
                pids_current=cgroupfs.read_int(f"{pids}/pids.current"),
                pids_limit=cgroupfs.read_limit(f"{pids}/pids.max"),
            )
        if blkio:
            stats = replace(
                stats,
                io_service_bytes=_blkio_stat(f"{blkio}/blkio.throttle.io_service_bytes_recursive"),
                io_serviced=_blkio_stat(f"{blkio}/blkio.throttle.io_serviced_recursive"),
            )
        if hugetlb:
            stats = replace(stats, hugetlb=_hugetlb_stats(hugetlb))
        elif self.unified is not None:
            stats = replace(stats, hugetlb=self.unified.hugetlb_stats())
        return stats


def _plan_cpu(c: LinuxCPU, put: _Put) -> None:
    if c.shares:
        put("cpu.shares", str(c.shares))
    if c.period:
        put("cpu.cfs_period_us", str(c.period))
    if c.quota:
        put("cpu.cfs_quota_us", str(c.quota))
    if c.burst is not None:
        put("cpu.cfs_burst_us", str(c.burst))
    # rt_period before rt_runtime: the runtime must fit in the period (runc)
    if c.realtime_period:
        put("cpu.rt_period_us", str(c.realtime_period))
    if c.realtime_runtime:
        put("cpu.rt_runtime_us", str(c.realtime_runtime))
    if c.idle is not None:
        put("cpu.idle", str(c.idle))
    if c.cpus:
        put("cpuset.cpus", c.cpus)
    if c.mems:
        put("cpuset.mems", c.mems)


def _memory_stats(memory: str) -> CgroupStats:
    from skiff.runtime.cgroups.stats import CgroupStats

    raw = cgroupfs.read_keyed(f"{memory}/memory.stat")
    usage = cgroupfs.read_int(f"{memory}/memory.usage_in_bytes")
    limit = cgroupfs.read_limit(f"{memory}/memory.limit_in_bytes")
    # memsw files exist only with swap accounting; they count memory+swap
    memsw = cgroupfs.read_optional(f"{memory}/memory.memsw.usage_in_bytes")
    memsw_limit = cgroupfs.read_limit(f"{memory}/memory.memsw.limit_in_bytes")
    return CgroupStats(
        memory_usage=usage,
        memory_max_usage=cgroupfs.read_int(f"{memory}/memory.max_usage_in_bytes"),
        memory_limit=limit,
        memory_failcnt=cgroupfs.read_int(f"{memory}/memory.failcnt"),
        # total_* count the descendants too, as v2's files do
        memory_cache=raw.get("total_cache", raw.get("cache", 0)),
        memory_rss=raw.get("total_rss", raw.get("rss", 0)),
        memory_raw=raw,
        swap_usage=max(0, (cgroupfs.parse_int(memsw, memory) or 0) - usage) if memsw else 0,
        swap_limit=None if memsw_limit is None or limit is None else memsw_limit - limit,
        swap_failcnt=cgroupfs.read_int(f"{memory}/memory.memsw.failcnt"),
        oom_kills=cgroupfs.read_keyed(f"{memory}/memory.oom_control").get("oom_kill", 0),
    )


def _blkio_stat(path: str) -> tuple[BlkioEntry, ...]:
    """blkio.throttle.* files: "8:0 Read 4096" lines and a "Total" line."""
    from skiff.runtime.cgroups.stats import BlkioEntry

    entries = []
    for line in (cgroupfs.read_optional(path) or "").splitlines():
        fields = line.split()
        if len(fields) != 3:
            continue
        major, _, minor = fields[0].partition(":")
        entries.append(
            BlkioEntry(major=int(major), minor=int(minor), op=fields[1], value=int(fields[2]))
        )
    return tuple(entries)


def _hugetlb_stats(hugetlb: str) -> dict[str, HugetlbStats]:
    from skiff.runtime.cgroups.stats import HugetlbStats

    return {
        size: HugetlbStats(
            usage=cgroupfs.read_int(f"{hugetlb}/hugetlb.{size}.usage_in_bytes"),
            max_usage=cgroupfs.read_int(f"{hugetlb}/hugetlb.{size}.max_usage_in_bytes"),
            failcnt=cgroupfs.read_int(f"{hugetlb}/hugetlb.{size}.failcnt"),
        )
        for size in v2.hugepage_sizes()
    }
