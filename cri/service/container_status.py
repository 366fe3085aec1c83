"""ContainerStatus and ListContainers, and `refreshed`: a container's record brought up to
date with the kernel. Nothing watches containers: whoever reads a record of a CREATED or
RUNNING container checks the monitor's exit file first (level-triggered, and right after a
daemon restart as at any other time)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
from dataclasses import replace
from typing import Any

from cri_api.v1 import api_pb2 as pb

from skiff.cri.monitor import read_exit
from skiff.cri.monitor_client import Monitors
from skiff.cri.service.context import ServiceContext
from skiff.cri.store.container import ContainerRecord, ContainerState, ExitReason
from skiff.errors import FailedPrecondition, NotFound, SkiffError

_LIVE = (ContainerState.CREATED, ContainerState.RUNNING)
UNKNOWN_EXIT_CODE = 255


def monitor_alive(record: ContainerRecord) -> bool:
    return Monitors.alive(record.monitor_pid, record.monitor_start)


def refreshed(ctx: ServiceContext, record: ContainerRecord) -> ContainerRecord:
    if record.state not in _LIVE:
        return record
    ended = read_exit(ctx.exit_file(record.id))
    if ended is None:
        if monitor_alive(record) or record.pid == 0:
            return record
        # The monitor is gone without a word (killed, or the host rebooted): the exit
        # status is lost, but a dead container must not be reported running.
        from skiff.runtime.container import Status

        with contextlib.suppress(SkiffError):
            if ctx.runtime.state(record.runtime_id).status is not Status.STOPPED:
                return record
        return _exited(ctx, record, UNKNOWN_EXIT_CODE, 0, "exit status unknown: the container's monitor is gone")
    message = f"killed by signal {ended.signal}" if ended.signal else ""
    return _exited(ctx, record, ended.exit_code, ended.finished_at, message)


def refresh_live(ctx: ServiceContext) -> None:
    """Every CREATED or RUNNING container's record brought up to date (its exit recorded)."""
    for record in ctx.containers.list():
        with contextlib.suppress(NotFound):
            refreshed(ctx, record)


def _exited(ctx: ServiceContext, record: ContainerRecord, code: int, finished_at: int, message: str) -> ContainerRecord:
    oom = False
    with contextlib.suppress(SkiffError, OSError):
        oom = ctx.runtime.state(record.runtime_id).oom_killed
    reason = ExitReason.OOM_KILLED if oom else ExitReason.COMPLETED if code == 0 else ExitReason.ERROR

    def change(current: ContainerRecord) -> ContainerRecord:
        if current.state not in _LIVE:  # another thread got there first
            return current
        return replace(current, state=ContainerState.EXITED, exit_code=code, reason=reason, message=message,
                       finished_at=finished_at or current.finished_at or current.created_at)

    return ctx.containers.update(record.id, change)


def lookup(ctx: ServiceContext, container_id: str) -> ContainerRecord:
    """The container named by an id or unique id prefix, refreshed."""
    if not container_id:
        from skiff.errors import InvalidArgument

        raise InvalidArgument("container_id: must not be empty")
    return refreshed(ctx, ctx.containers.get(ctx.containers.resolve(container_id)))


def lookup_running(ctx: ServiceContext, container_id: str) -> ContainerRecord:
    """As `lookup`, for a call that needs the container running."""
    record = lookup(ctx, container_id)
    if record.state is not ContainerState.RUNNING:
        raise FailedPrecondition(f"container {record.id} is {record.state.name.lower()}, not running")
    return record


def _metadata(record: ContainerRecord) -> pb.ContainerMetadata:
    return pb.ContainerMetadata(name=record.name, attempt=record.attempt)


def container_status(ctx: ServiceContext, request: pb.ContainerStatusRequest) -> pb.ContainerStatusResponse:
    record = lookup(ctx, request.container_id)
    config = pb.ContainerConfig.FromString(record.config)
    status = pb.ContainerStatus(
        id=record.id, metadata=_metadata(record), state=pb.ContainerState.ValueType(record.state.value), created_at=record.created_at,
        started_at=record.started_at, finished_at=record.finished_at, exit_code=record.exit_code,
        # as containerd answers: a name of the image, and a repo digest (kubelet's imageID, which
        # it can pull again); both kept at create, record.image_ref and the id in an older record
        image=pb.ImageSpec(image=record.image_name or record.image_ref),
        image_ref=record.image_repo_digest or record.image_id,
        reason=record.reason.value if record.reason else "", message=record.message,
        labels=record.labels, annotations=record.annotations, mounts=list(config.mounts),
        log_path=record.log_path)
    if config.linux.HasField("resources"):
        status.resources.linux.CopyFrom(config.linux.resources)
    status.image_id = record.image_id
    if record.stop_signal:   # the image's STOPSIGNAL; none: RUNTIME_DEFAULT (SIGTERM)
        from skiff.cri.service.container_stop import stop_signal

        name = signal.Signals(stop_signal(record.stop_signal)).name
        if name in pb.Signal.keys():
            status.stop_signal = pb.Signal.Value(name)
    spec: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        with open(os.path.join(ctx.bundle_dir(record.id), "config.json")) as f:
            spec = json.load(f)
    user = (spec.get("process") or {}).get("user") or {}
    if user:   # who the process runs as, after the image's USER and the pod's security context
        status.user.linux.uid, status.user.linux.gid = int(user.get("uid", 0)), int(user.get("gid", 0))
        status.user.linux.supplemental_groups.extend(int(g) for g in user.get("additionalGids") or [])
    info: dict[str, str] = {}
    if request.verbose:
        details = {"sandboxID": record.sandbox_id, "pid": record.pid, "monitorPid": record.monitor_pid,
                   "runtimeId": record.runtime_id, "bundle": os.path.join(ctx.config.state_root, "bundles", record.id)}
        if spec:
            details["runtimeSpec"] = spec
        info["info"] = json.dumps(details)
    return pb.ContainerStatusResponse(status=status, info=info)


def _matches(record: ContainerRecord, f: pb.ContainerFilter | None) -> bool:
    if f is None:
        return True
    if f.id and not record.id.startswith(f.id):
        return False
    if f.HasField("state") and record.state.value != f.state.state:
        return False
    if f.pod_sandbox_id and not record.sandbox_id.startswith(f.pod_sandbox_id):
        return False
    return all(record.labels.get(k) == v for k, v in f.label_selector.items())


def list_containers(ctx: ServiceContext, request: pb.ListContainersRequest) -> pb.ListContainersResponse:
    wanted = request.filter if request.HasField("filter") else None
    out = []
    for record in ctx.containers.list():
        with contextlib.suppress(NotFound):  # removed meanwhile
            record = refreshed(ctx, record)
        if _matches(record, wanted):
            out.append(pb.Container(
                id=record.id, pod_sandbox_id=record.sandbox_id, metadata=_metadata(record),
                image=pb.ImageSpec(image=record.image_ref), image_ref=record.image_id,
                state=pb.ContainerState.ValueType(record.state.value), created_at=record.created_at, labels=record.labels,
                annotations=record.annotations))
    return pb.ListContainersResponse(containers=out)
