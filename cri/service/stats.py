"""ContainerStats, ListContainerStats, PodSandboxStats, ListPodSandboxStats: from the
container's and the pod's cgroups (runtime/cgroups stats), the writable layer's size, and
the pod's network counters. usage_nano_cores needs two samples over time: as containerd, the
last sample of each container and pod is kept, and the first call reports none."""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time

from cri_api.v1 import api_pb2 as pb

from skiff.cri.service.container_status import lookup, refreshed
from skiff.cri.service.context import ServiceContext
from skiff.cri.service.sandbox_run import require
from skiff.cri.store.container import ContainerRecord, ContainerState
from skiff.cri.store.sandbox import SandboxRecord
from skiff.errors import NotFound, SkiffError
from skiff.runtime.cgroups import CgroupStats


_samples: dict[str, tuple[int, int]] = {}   # container or pod id -> (time, cumulative usage), ns
_samples_lock = threading.Lock()
MAX_SAMPLES = 10_000   # the oldest go beyond: ids of containers long removed


def _cpu(stats: CgroupStats, now: int, owner: str) -> pb.CpuUsage:
    usage = pb.CpuUsage(timestamp=now)
    usage.usage_core_nano_seconds.value = stats.cpu_usage_total
    with _samples_lock:
        before = _samples.pop(owner, None)
        _samples[owner] = (now, stats.cpu_usage_total)
        while len(_samples) > MAX_SAMPLES:
            del _samples[next(iter(_samples))]
    if before is not None and now > before[0] and stats.cpu_usage_total >= before[1]:
        usage.usage_nano_cores.value = (stats.cpu_usage_total - before[1]) * 1_000_000_000 // (now - before[0])
    return usage


def _memory(stats: CgroupStats, now: int) -> pb.MemoryUsage:
    raw = stats.memory_raw
    inactive = raw.get("total_inactive_file", raw.get("inactive_file", 0))
    usage = pb.MemoryUsage(timestamp=now)
    usage.working_set_bytes.value = max(stats.memory_usage - inactive, 0)
    usage.usage_bytes.value = stats.memory_usage
    usage.rss_bytes.value = stats.memory_rss
    usage.page_faults.value = raw.get("total_pgfault", raw.get("pgfault", 0))
    usage.major_page_faults.value = raw.get("total_pgmajfault", raw.get("pgmajfault", 0))
    if stats.memory_limit is not None:
        usage.available_bytes.value = max(stats.memory_limit - usage.working_set_bytes.value, 0)
    return usage


def _disk_usage(path: str) -> tuple[int, int]:
    """Bytes and inodes under `path`, not following links or crossing mounts."""
    total, inodes = 0, 0
    with contextlib.suppress(OSError):
        device = os.lstat(path).st_dev
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                with contextlib.suppress(OSError):
                    st = os.lstat(os.path.join(root, name))
                    if st.st_dev == device:
                        total += st.st_blocks * 512
                        inodes += 1
    return total, inodes


def container_stats_of(ctx: ServiceContext, record: ContainerRecord) -> pb.ContainerStats:
    now = time.time_ns()
    stats = pb.ContainerStats(attributes=pb.ContainerAttributes(
        id=record.id, metadata=pb.ContainerMetadata(name=record.name, attempt=record.attempt),
        labels=record.labels, annotations=record.annotations))
    with contextlib.suppress(SkiffError, OSError):
        cgroup_stats = ctx.runtime.stats(record.runtime_id)
        stats.cpu.CopyFrom(_cpu(cgroup_stats, now, record.id))
        stats.memory.CopyFrom(_memory(cgroup_stats, now))
    used, inodes = _disk_usage(ctx.images.upper_dir(record.id))
    stats.writable_layer.timestamp = now
    stats.writable_layer.fs_id.mountpoint = ctx.images.root
    stats.writable_layer.used_bytes.value = used
    stats.writable_layer.inodes_used.value = inodes
    return stats


def container_stats(ctx: ServiceContext, request: pb.ContainerStatsRequest) -> pb.ContainerStatsResponse:
    return pb.ContainerStatsResponse(stats=container_stats_of(ctx, lookup(ctx, request.container_id)))


def list_container_stats(ctx: ServiceContext, request: pb.ListContainerStatsRequest) -> pb.ListContainerStatsResponse:
    f = request.filter if request.HasField("filter") else None
    out = []
    for record in ctx.containers.list():
        with contextlib.suppress(NotFound):
            record = refreshed(ctx, record)
        if record.state is not ContainerState.RUNNING:
            continue  # kubelet asks for stats of running containers; containerd lists those
        if f is not None and (
                (f.id and not record.id.startswith(f.id))
                or (f.pod_sandbox_id and not record.sandbox_id.startswith(f.pod_sandbox_id))
                or any(record.labels.get(k) != v for k, v in f.label_selector.items())):
            continue
        out.append(container_stats_of(ctx, record))
    return pb.ListContainerStatsResponse(stats=out)


def _network(pid: int, now: int) -> pb.NetworkUsage | None:
    """Every interface's counters but lo's as the pod sees them, from a process in its netns;
    eth0 is the default one."""
    try:
        with open(f"/proc/{pid}/net/dev") as f:
            lines = f.read().splitlines()[2:]
    except OSError:
        return None
    usage = pb.NetworkUsage(timestamp=now)
    for line in lines:
        name, _, counters = line.partition(":")
        name = name.strip()
        if name == "lo":
            continue
        v = [int(x) for x in counters.split()]
        iface = pb.NetworkInterfaceUsage(name=name)
        iface.rx_bytes.value, iface.rx_errors.value = v[0], v[2]
        iface.tx_bytes.value, iface.tx_errors.value = v[8], v[10]
        if name == "eth0":
            usage.default_interface.CopyFrom(iface)
        else:
            usage.interfaces.append(iface)
    return usage if usage.HasField("default_interface") or usage.interfaces else None


def pod_stats_of(ctx: ServiceContext, record: SandboxRecord) -> pb.PodSandboxStats:
    now = time.time_ns()
    stats = pb.PodSandboxStats(attributes=pb.PodSandboxAttributes(
        id=record.id, metadata=pb.PodSandboxMetadata(name=record.name, uid=record.uid,
                                                     namespace=record.namespace, attempt=record.attempt),
        labels=record.labels, annotations=record.annotations))
    if record.pod_cgroup:
        from skiff.runtime.cgroups import load_cgroup

        with contextlib.suppress(SkiffError, OSError):
            cgroup = load_cgroup(json.loads(record.pod_cgroup))
            cgroup_stats = cgroup.stats()
            stats.linux.cpu.CopyFrom(_cpu(cgroup_stats, now, record.id))
            stats.linux.memory.CopyFrom(_memory(cgroup_stats, now))
            stats.linux.process.timestamp = now
            stats.linux.process.process_count.value = len(cgroup.pids())
    running = []
    for container in ctx.containers.in_sandbox(record.id):
        with contextlib.suppress(NotFound):
            container = refreshed(ctx, container)
        if container.state is ContainerState.RUNNING:
            running.append(container)
            stats.linux.containers.append(container_stats_of(ctx, container))
    for pid in [record.pause_pid] + [c.pid for c in running]:
        network = _network(pid, now) if pid else None
        if network is not None:
            stats.linux.network.CopyFrom(network)
            break
    return stats


def pod_sandbox_stats(ctx: ServiceContext, request: pb.PodSandboxStatsRequest) -> pb.PodSandboxStatsResponse:
    require(request.pod_sandbox_id, "pod_sandbox_id")
    record = ctx.sandboxes.get(ctx.sandboxes.resolve(request.pod_sandbox_id))
    return pb.PodSandboxStatsResponse(stats=pod_stats_of(ctx, record))


def list_pod_sandbox_stats(ctx: ServiceContext, request: pb.ListPodSandboxStatsRequest) -> pb.ListPodSandboxStatsResponse:
    f = request.filter if request.HasField("filter") else None
    out = []
    for record in ctx.sandboxes.list():
        if f is not None and ((f.id and not record.id.startswith(f.id))
                              or any(record.labels.get(k) != v for k, v in f.label_selector.items())):
            continue
        out.append(pod_stats_of(ctx, record))
    return pb.ListPodSandboxStatsResponse(stats=out)
