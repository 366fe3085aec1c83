"""skiff's cgroup drivers against the real kernel, with real child processes.

The suite runs once per driver: "v1" on hosts whose controllers are on cgroup v1 (legacy
or hybrid, like the development host), "v2" on a pure cgroup v2 host (the test VM).
`open_cgroup` picks the driver from the host, the parameter only says which one a run
exercises. Every test puts its cgroups under a parent of its own (`skiff-test-<random>`
under this process's cgroup), so that tests running at the same time on the same kernel
never share a directory, and the fixture kills the children and destroys the cgroups even
when the test fails.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pytest

from skiff.errors import SkiffError
from skiff.oci import spec
from skiff.runtime.cgroups import (
    CgroupDriver,
    CgroupError,
    CgroupMode,
    detect_mode,
    load_cgroup,
    open_cgroup,
)
from skiff.runtime.cgroups import cgroupfs, v2

MODE = detect_mode()
MiB = 1 << 20

v1_only = pytest.mark.requires("cgroup1")
v2_only = pytest.mark.requires("cgroup2")


class Box:
    """Cgroups and children of one test; `close` undoes everything, in the right order."""

    def __init__(self) -> None:
        self.parent = f"skiff-test-{uuid.uuid4().hex[:10]}"
        self.cgroups: list[CgroupDriver] = []
        self.children: list[subprocess.Popen[bytes]] = []

    def cgroup(
        self, container_id: str | None = None, *, cgroups_path: str | None = None,
        parent: str | None = None, create: bool = True,
    ) -> CgroupDriver:
        cg = open_cgroup(
            container_id=container_id or f"ctr-{uuid.uuid4().hex[:8]}",
            cgroups_path=cgroups_path,
            parent=self.parent if parent is None else parent,
        )
        self.cgroups.append(cg)
        if create:
            cg.create()
        return cg

    def spawn(self, cg: CgroupDriver, code: str) -> subprocess.Popen[bytes]:
        """A python child that waits for one byte on stdin (`go`) before running `code`,
        so it is in the cgroup before it does anything the test measures."""
        child = subprocess.Popen(
            [sys.executable, "-c", "import sys; sys.stdin.buffer.read(1)\n" + code],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        self.children.append(child)
        cg.add(child.pid)
        return child

    def close(self) -> None:
        errors: list[BaseException] = []
        for cg in self.cgroups:
            try:
                if cg.frozen():
                    cg.freeze(False)  # a frozen v1 task does not die until thawed
            except CgroupError:
                pass
        for child in self.children:
            if child.poll() is None:
                child.kill()
            child.communicate()
        for cg in reversed(self.cgroups):
            try:
                cg.destroy()
            except CgroupError as e:
                errors.append(e)
        if errors:
            raise errors[0]


def go(child: subprocess.Popen[bytes], *, wait: bool = True) -> tuple[bytes, bytes]:
    if not wait:
        assert child.stdin is not None
        child.stdin.write(b"x")
        child.stdin.flush()
        return b"", b""
    return child.communicate(b"x", timeout=120)


@contextlib.contextmanager
def new_box() -> Iterator[Box]:
    b = Box()
    try:
        yield b
    finally:
        b.close()


@pytest.fixture(params=[pytest.param("v1", marks=v1_only), pytest.param("v2", marks=v2_only)])
def box(request: pytest.FixtureRequest) -> Iterator[Box]:
    """The suite's tests run once per driver (the marks skip the other one)."""
    with new_box() as b:
        yield b


@pytest.fixture
def v1_box() -> Iterator[Box]:
    with new_box() as b:
        yield b


@pytest.fixture
def v2_box() -> Iterator[Box]:
    with new_box() as b:
        yield b


def dirs(cg: CgroupDriver) -> list[str]:
    return [path for _, path in cg.mounts()]


def slurp(path: str) -> str:
    with open(path) as f:
        return f.read()


def cpu_ticks(pid: int) -> int:
    fields = slurp(f"/proc/{pid}/stat").rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


# -- conversions, no kernel ----------------------------------------------------------------


def test_shares_to_weight_keeps_the_defaults() -> None:
    assert v2.shares_to_weight(2) == 1
    assert v2.shares_to_weight(1024) == 100
    assert v2.shares_to_weight(262144) == 10000
    assert v2.shares_to_weight(10**9) == 10000
    weights = [v2.shares_to_weight(s) for s in (2, 3, 512, 1024, 2048, 100000, 262143)]
    assert weights == sorted(weights)


def test_swap_is_memory_plus_swap_in_the_spec() -> None:
    assert v2.swap_max(2 * MiB, 1 * MiB) == str(MiB)
    assert v2.swap_max(MiB, MiB) == "0"  # swap == limit: no swap at all
    assert v2.swap_max(-1, MiB) == "max"
    assert v2.swap_max(None, -1) == "max"  # unlimited memory, swap unset: unlimited too
    assert v2.swap_max(None, MiB) is None
    with pytest.raises(CgroupError, match="memory.swap: .* below memory.limit"):
        v2.swap_max(MiB, 2 * MiB)
    with pytest.raises(CgroupError, match="needs memory.limit"):
        v2.swap_max(MiB, None)


def test_detect_mode_matches_mountinfo() -> None:
    types = {}
    for line in slurp("/proc/self/mountinfo").splitlines():
        fields = line.split()
        types[fields[4]] = fields[fields.index("-", 6) + 1]
    if types.get("/sys/fs/cgroup") == "cgroup2":
        assert MODE is CgroupMode.UNIFIED
    elif types.get("/sys/fs/cgroup/unified") == "cgroup2":
        assert MODE is CgroupMode.HYBRID
    else:
        assert MODE is CgroupMode.LEGACY


def test_cgroup_stats_to_runc_json() -> None:
    from skiff.runtime.cgroups import CgroupStats
    from skiff.runtime.cgroups.stats import HugetlbStats

    data = CgroupStats(
        memory_usage=10, memory_limit=100, swap_usage=5, swap_limit=50, cpu_usage_total=7,
        cpu_usage_user=3, throttled_periods=2, pids_current=1,
        hugetlb={"2MB": HugetlbStats(usage=4)},
    ).to_runc_json()
    assert data["cpu"] == {
        "usage": {"total": 7, "kernel": 0, "user": 3}, "throttling": {"throttledPeriods": 2}
    }
    memory = data["memory"]
    assert isinstance(memory, dict)
    assert memory["usage"] == {"limit": 100, "usage": 10, "failcnt": 0}
    assert memory["swap"] == {"limit": 150, "usage": 15, "failcnt": 0}  # memory+swap
    assert data["pids"] == {"current": 1}
    assert data["hugetlb"] == {"2MB": {"usage": 4, "failcnt": 0}}
    assert CgroupStats().to_runc_json()["memory"]["usage"]["limit"] == 2**64 - 1  # type: ignore[index]


# -- placement ---------------------------------------------------------------------------


def test_default_parent_is_skiff_under_own_cgroup(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("SKIFF_CGROUP_PARENT", raising=False)
    own = cgroupfs.own_cgroups()
    cg = open_cgroup(container_id="abc", cgroups_path=None)
    for name, path in cg.mounts():
        mine = own["" if name in ("", "unified") else name].rstrip("/")
        assert path.endswith(f"{mine}/skiff/abc"), (name, path)
    relative = open_cgroup(container_id="abc", cgroups_path="pod1/ctr", parent="/p")
    assert all(p.endswith("/p/pod1/ctr") for p in dirs(relative))
    absolute = open_cgroup(container_id="abc", cgroups_path="/kubepods/pod1/ctr", parent="/p")
    for (_, path), root in zip(absolute.mounts(), _roots(absolute)):
        assert path == f"{root}/kubepods/pod1/ctr"
    monkeypatch.setenv("SKIFF_CGROUP_PARENT", "/from-env")
    assert all(p.endswith("/from-env/abc") for p in dirs(open_cgroup(container_id="abc", cgroups_path=None)))
    with pytest.raises(CgroupError, match="linux.cgroupsPath"):
        open_cgroup(container_id="abc", cgroups_path="../escape")


def _roots(cg: CgroupDriver) -> list[str]:
    record = cg.record()
    if "roots" in record:
        roots = record["roots"]
        assert isinstance(roots, dict)
        out = [str(roots[name]) for name, _ in cg.mounts() if name != "unified"]
        unified = record["unified"]
        if isinstance(unified, dict):
            out.append(str(unified["root"]))
        return out
    return [str(record["root"])]


# -- lifecycle ---------------------------------------------------------------------------


def test_destroy_removes_exactly_what_create_made(box: Box) -> None:
    # The parent exists before skiff runs (the test makes it, unmarked): skiff must
    # create a/b under it and remove a/b and a, never the parent.
    probe = box.cgroup("probe", create=False)
    parents = [os.path.dirname(p) for p in dirs(probe)]
    for p in parents:
        os.makedirs(p)
    try:
        cg = box.cgroup("ignored", cgroups_path="a/b")
        for p in parents:
            assert os.path.isdir(f"{p}/a/b")
            assert cgroupfs.is_marked(f"{p}/a") and cgroupfs.is_marked(f"{p}/a/b")
        cg.destroy()
        cg.destroy()  # idempotent
        for p in parents:
            assert os.path.isdir(p) and not os.path.exists(f"{p}/a")
    finally:
        for p in parents:
            os.rmdir(p)


def test_shared_parent_goes_with_the_last_container(box: Box) -> None:
    first, second = box.cgroup("first"), box.cgroup("second")
    parents = {os.path.dirname(p) for p in dirs(first)}
    first.destroy()
    assert all(os.path.isdir(p) for p in parents)  # second is still in there
    second.destroy()  # second did not make the parent, but skiff did (marked)
    assert not any(os.path.exists(p) for p in parents)


def test_containers_made_and_removed_at_once_share_their_parents(box: Box) -> None:
    """Processes that create and destroy containers under one parent at once: a destroy
    removes the parent whenever it finds it empty, also right after another create made it
    again (its own record says it made it), and no create fails for that."""
    children = []
    for name in ("a", "b", "c"):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                for i in range(300):
                    cg = open_cgroup(container_id=f"{name}-{i}", cgroups_path=None, parent=f"{box.parent}/shared")
                    cg.create()
                    cg.destroy()
                code = 0
            except BaseException as e:  # noqa: BLE001 - the exit code says it, stderr says why
                print(f"{name}: {e}", file=sys.stderr)
            finally:
                os._exit(code)
        children.append(pid)
    codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in children]
    assert codes == [0, 0, 0]
    assert not any(os.path.exists(p) for p in dirs(box.cgroup("probe", create=False)))


def test_record_round_trip(box: Box) -> None:
    cg = box.cgroup()
    child = box.spawn(cg, "import time; time.sleep(60)")
    loaded = load_cgroup(cg.record())
    assert loaded.record() == cg.record()
    assert loaded.mode is cg.mode
    assert loaded.pids() == [child.pid]
    child.kill()
    child.communicate()
    loaded.destroy()
    assert not any(os.path.exists(p) for p in dirs(cg))
    load_cgroup(cg.record()).destroy()  # everything gone already: fine
    with pytest.raises(CgroupError, match="unknown mode"):
        load_cgroup({"mode": "v3"})


def test_add_and_pids(box: Box) -> None:
    cg = box.cgroup()
    children = [box.spawn(cg, "import time; time.sleep(60)") for _ in range(2)]
    assert sorted(cg.pids()) == sorted(c.pid for c in children)
    assert cg.stats().pids_current == 2


def test_apply_nothing(box: Box) -> None:
    cg = box.cgroup()
    cg.apply(None)
    cg.apply(spec.LinuxResources())
    assert cg.stats().pids_limit is None and cg.stats().memory_limit is None


# -- limits enforced ------------------------------------------------------------------------


def test_memory_limit_oom_kills(box: Box) -> None:
    cg = box.cgroup()
    cg.apply(spec.LinuxResources(memory=spec.LinuxMemory(limit=64 * MiB, swap=64 * MiB)))
    child = box.spawn(cg, "b = b'x' * (256 << 20)\nprint('survived')")
    out, _ = go(child)
    assert child.returncode == -signal.SIGKILL, out
    assert cg.oom_kills() >= 1
    stats = cg.stats()
    assert stats.oom_kills >= 1
    assert stats.memory_limit == 64 * MiB
    assert stats.swap_limit in (0, None)  # None: no swap accounting on this kernel


def test_pids_limit_stops_fork(box: Box) -> None:
    cg = box.cgroup()
    cg.apply(spec.LinuxResources(pids=spec.LinuxPids(limit=4)))
    child = box.spawn(cg, """
import os, signal
kids = []
try:
    for _ in range(10):
        pid = os.fork()
        if pid == 0:
            signal.pause()
            os._exit(0)
        kids.append(pid)
    result = 'forked all'
except BlockingIOError:
    result = f'fork failed after {len(kids)}'
for k in kids:
    os.kill(k, 9)
    os.waitpid(k, 0)
print(result)
""")
    out, err = go(child)
    assert out.decode().strip() == "fork failed after 3", err  # 1 python + 3 kids = 4
    assert cg.stats().pids_limit == 4


def test_cpu_quota_throttles(box: Box) -> None:
    cg = box.cgroup()
    cg.apply(spec.LinuxResources(cpu=spec.LinuxCPU(quota=10000, period=100000, shares=512)))
    start = time.monotonic()
    child = box.spawn(cg, "import time\nend = time.time() + 0.6\nwhile time.time() < end: pass")
    go(child)
    elapsed = time.monotonic() - start
    assert child.returncode == 0
    stats = cg.stats()
    assert stats.throttling_periods > 0
    assert stats.throttled_periods > 0
    assert stats.throttled_time > 0
    assert stats.cpu_usage_total > 0
    # at most 10% of a CPU while it was in there, and a couple of periods of slack
    assert stats.cpu_usage_total < (0.1 * elapsed + 0.05) * 1e9


def test_freeze_and_thaw(box: Box) -> None:
    cg = box.cgroup()
    child = box.spawn(cg, "while True: pass")
    go(child, wait=False)
    time.sleep(0.1)
    cg.freeze(True)
    assert cg.frozen()
    ticks = cpu_ticks(child.pid)
    time.sleep(0.3)
    assert cpu_ticks(child.pid) == ticks
    cg.freeze(False)
    assert not cg.frozen()
    time.sleep(0.3)
    assert cpu_ticks(child.pid) > ticks


def test_bad_value_names_the_file(box: Box) -> None:
    cg = box.cgroup()
    with pytest.raises(CgroupError) as e:
        cg.apply(spec.LinuxResources(cpu=spec.LinuxCPU(cpus="999")))
    assert isinstance(e.value, SkiffError)
    cause = e.value.__cause__
    assert isinstance(cause, OSError) and cause.errno is not None
    # "write 999 to /sys/fs/cgroup/.../cpuset.cpus: numerical result out of range (ERANGE)"
    assert str(e.value).startswith("write 999 to /sys/fs/cgroup/")
    assert f"/cpuset.cpus: {os.strerror(cause.errno).lower()} ({errno.errorcode[cause.errno]})" in str(e.value)


def test_swap_below_limit_is_refused(box: Box) -> None:
    cg = box.cgroup()
    with pytest.raises(CgroupError, match="memory.swap: .* below memory.limit"):
        cg.apply(spec.LinuxResources(memory=spec.LinuxMemory(limit=64 * MiB, swap=32 * MiB)))


# -- v1 only -------------------------------------------------------------------------------


@v1_only
def test_v1_layout(v1_box: Box) -> None:
    cg = v1_box.cgroup()
    fd = cg.dirfd()
    if MODE is CgroupMode.HYBRID:  # unified/ is cgroup2: clone3 puts the process there
        assert fd is not None
        os.close(fd)
        assert cg.self_joins(False)[-1].endswith("/cgroup.procs")
    else:
        assert fd is None
    # the v1 hierarchies the process joins by itself, through their `tasks` files
    assert cg.self_joins(True) and all(path.endswith("/tasks") for path in cg.self_joins(True))
    names = {name for name, _ in cg.mounts()}
    assert {"memory", "pids", "freezer", "devices"} <= names
    assert any("cpu" in n.split(",") for n in names)
    if MODE is CgroupMode.HYBRID:
        assert "unified" in names
    cpuset = dict(cg.mounts()).get("cpuset")
    if cpuset:
        # copied from the parent, or nothing could join
        parent = os.path.dirname(cpuset)
        for f in ("cpuset.cpus", "cpuset.mems"):
            assert slurp(f"{cpuset}/{f}") == slurp(f"{parent}/{f}") != "\n"


@v1_only
def test_v1_devices_allow_list(v1_box: Box) -> None:
    cg = v1_box.cgroup()
    cg.apply(spec.LinuxResources(devices=(
        spec.LinuxDeviceCgroup(allow=False, access="rwm"),
        spec.LinuxDeviceCgroup(allow=True, type="c", major=1, minor=3, access="rw"),
    )))
    devices = dict(cg.mounts())["devices"]
    assert slurp(f"{devices}/devices.list").split("\n")[0] == "c 1:3 rw"
    child = v1_box.spawn(cg, """
import os
for dev in ('/dev/null', '/dev/zero'):
    try:
        os.close(os.open(dev, os.O_RDONLY))
        print(dev, 'ok')
    except PermissionError:
        print(dev, 'denied')
""")
    out, err = go(child)
    assert out.decode().split("\n")[:2] == ["/dev/null ok", "/dev/zero denied"], err


@v1_only
def test_v1_unified_map_refused_for_v1_controllers(v1_box: Box) -> None:
    cg = v1_box.cgroup()
    with pytest.raises(CgroupError, match=r"linux.resources.unified: memory.high: .*cgroup v1"):
        cg.apply(spec.LinuxResources(unified={"memory.high": "1000000"}))


@v1_only
def test_v1_memory_limits_and_update_order(v1_box: Box) -> None:
    cg = v1_box.cgroup()
    memory = dict(cg.mounts())["memory"]
    cg.apply(spec.LinuxResources(memory=spec.LinuxMemory(limit=64 * MiB, swap=128 * MiB, reservation=32 * MiB)))
    assert int(slurp(f"{memory}/memory.limit_in_bytes")) == 64 * MiB
    assert int(slurp(f"{memory}/memory.soft_limit_in_bytes")) == 32 * MiB
    if os.path.exists(f"{memory}/memory.memsw.limit_in_bytes"):
        assert int(slurp(f"{memory}/memory.memsw.limit_in_bytes")) == 128 * MiB
    # raising both above the old memsw needs memsw first, lowering needs limit first
    cg.apply(spec.LinuxResources(memory=spec.LinuxMemory(limit=256 * MiB, swap=512 * MiB)))
    cg.apply(spec.LinuxResources(memory=spec.LinuxMemory(limit=16 * MiB, swap=16 * MiB)))
    assert int(slurp(f"{memory}/memory.limit_in_bytes")) == 16 * MiB
    assert cg.stats().memory_limit == 16 * MiB


@v1_only
@pytest.mark.skipif(MODE is not CgroupMode.HYBRID, reason="test requires a hybrid host")
def test_hybrid_hugetlb_without_a_hierarchy_is_an_error(v1_box: Box) -> None:
    cg = v1_box.cgroup()
    if "hugetlb" in {n for name, _ in cg.mounts() for n in name.split(",")}:
        pytest.skip("hugetlb is mounted on cgroup v1 here")
    unified = dict(cg.mounts())["unified"]
    if "hugetlb" in slurp(f"{unified}/cgroup.controllers").split():
        pytest.skip("hugetlb is delegated on unified/ here")
    size = v2.hugepage_sizes()[0] if v2.hugepage_sizes() else "2MB"
    with pytest.raises(CgroupError) as e:
        cg.apply(spec.LinuxResources(hugepage_limits=(spec.LinuxHugepageLimit(page_size=size, limit=2 * MiB),)))
    assert "linux.resources.hugepageLimits" in str(e.value)
    assert "hugetlb" in str(e.value) and "/sys/fs/cgroup/unified/" in str(e.value)
    assert "cgroup.subtree_control" in str(e.value)


# -- v2 only -------------------------------------------------------------------------------


@v2_only
def test_v2_controllers_enabled_above_the_leaf_only(v2_box: Box) -> None:
    cg = v2_box.cgroup()
    (_, leaf), = cg.mounts()
    parent = os.path.dirname(leaf)
    enabled = slurp(f"{parent}/cgroup.subtree_control").split()
    offered = slurp(f"{parent}/cgroup.controllers").split()
    assert [c for c in v2.CONTROLLERS if c in offered] == [c for c in v2.CONTROLLERS if c in enabled]
    assert {"memory", "pids", "cpu"} <= set(enabled)
    assert slurp(f"{leaf}/cgroup.subtree_control").split() == []
    fd = cg.dirfd()
    assert fd is not None
    try:
        assert os.fstat(fd).st_ino == os.stat(leaf).st_ino
    finally:
        os.close(fd)


@v2_only
def test_v2_writes_and_unified_map(v2_box: Box) -> None:
    cg = v2_box.cgroup()
    (_, leaf), = cg.mounts()
    cg.apply(spec.LinuxResources(
        memory=spec.LinuxMemory(limit=64 * MiB, swap=96 * MiB, reservation=16 * MiB),
        cpu=spec.LinuxCPU(shares=1024, quota=50000, period=100000),
        pids=spec.LinuxPids(limit=-1),
        unified={"memory.high": str(48 * MiB)},
    ))

    def read(name: str) -> str:
        return slurp(f"{leaf}/{name}").strip()

    assert read("memory.max") == str(64 * MiB)
    assert read("memory.low") == str(16 * MiB)
    assert read("memory.high") == str(48 * MiB)
    if os.path.exists(f"{leaf}/memory.swap.max"):
        assert read("memory.swap.max") == str(32 * MiB)  # 96 - 64: v2 counts swap alone
    assert read("cpu.weight") == "100"
    assert read("cpu.max") == "50000 100000"
    assert read("pids.max") == "max"
    stats = cg.stats()
    assert stats.memory_limit == 64 * MiB and stats.pids_limit is None


@v2_only
def test_v2_anchor_without_the_controller_is_named(v2_box: Box) -> None:
    # A parent skiff did not create, that delegates nothing: skiff must not enable
    # anything in it, and must say which file lacks the controller.
    probe = v2_box.cgroup("probe", create=False)
    (_, leaf), = probe.mounts()
    anchor = os.path.dirname(leaf)
    os.mkdir(anchor)
    try:
        cg = v2_box.cgroup("ctr")
        with pytest.raises(CgroupError) as e:
            cg.apply(spec.LinuxResources(pids=spec.LinuxPids(limit=10)))
        assert f"pids is not enabled in {anchor}/cgroup.subtree_control" in str(e.value)
        assert slurp(f"{anchor}/cgroup.subtree_control").strip() == ""
        cg.destroy()
    finally:
        os.rmdir(anchor)


@v2_only
def test_v2_hugetlb_limit(v2_box: Box) -> None:
    cg = v2_box.cgroup()
    (_, leaf), = cg.mounts()
    if "hugetlb" not in slurp(f"{leaf}/cgroup.controllers").split() or not v2.hugepage_sizes():
        pytest.skip("test requires the hugetlb controller")
    size = v2.hugepage_sizes()[0]
    cg.apply(spec.LinuxResources(hugepage_limits=(spec.LinuxHugepageLimit(page_size=size, limit=0),)))
    assert slurp(f"{leaf}/hugetlb.{size}.max").strip() == "0"
    assert size in cg.stats().hugetlb
