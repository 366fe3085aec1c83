"""CreateContainer (containerd `internal/cri/server/container_create.go`).

  the container monitor prepares the cgroup and first process, meanwhile (cri/monitor.py) →
  reserve the name → record (UNKNOWN) → snapshot of the image → OCI spec, mount points
  (cri/mount_points.py) and bundle → the monitor creates the container → record CREATED.
On failure `remove_container_files` undoes what exists and the monitor discards what it
prepared; the record stays (UNKNOWN) only if that fails too, so RemoveContainer can finish.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from dataclasses import replace

from cri_api.v1 import api_pb2 as pb

from skiff.cri.container_spec import PodContext, container_spec, new_namespaces
from skiff.cri.image_service import named_image
from skiff.cri.mount_points import make_mount_points
from skiff.cri.monitor_client import Preparing
from skiff.cri.service.container_remove import remove_container_files
from skiff.cri.service.context import ServiceContext
from skiff.cri.service.sandbox_run import require
from skiff.cri.service.sandbox_status import state_of
from skiff.cri.store.container import ContainerRecord, ContainerState, container_name
from skiff.cri.store.sandbox import SandboxRecord, SandboxState
from skiff.errors import FailedPrecondition, InvalidArgument, NotFound
from skiff.images.service import ResolvedImage
from skiff.oci import spec_to_dict


def create_container(ctx: ServiceContext, request: pb.CreateContainerRequest) -> pb.CreateContainerResponse:
    require(request.pod_sandbox_id, "pod_sandbox_id")
    config = request.config
    require(config.metadata.name, "config.metadata.name")
    require(config.image.image, "config.image.image")
    sandbox_id = ctx.sandboxes.resolve(request.pod_sandbox_id)
    with ctx.sandbox_lock(sandbox_id):
        return _create_in_sandbox(ctx, config, ctx.sandboxes.get(sandbox_id))


def _create_in_sandbox(ctx: ServiceContext, config: pb.ContainerConfig, sandbox: SandboxRecord
                       ) -> pb.CreateContainerResponse:
    if sandbox.state is not SandboxState.READY or state_of(sandbox) != pb.SANDBOX_READY:
        # a dead pause's pid may belong to another process now: never join its namespace
        raise FailedPrecondition(f"pod sandbox {sandbox.id} is not ready")
    if os.path.isabs(config.log_path) or ".." in config.log_path.split("/"):
        raise InvalidArgument(f"config.log_path: {config.log_path!r}: must be relative to the pod's "
                              "log_directory, without '..'")
    container_id = secrets.token_hex(32)
    pod = PodContext(sandbox_id=sandbox.id, config=pb.PodSandboxConfig.FromString(sandbox.config),
                     namespace_paths=sandbox.namespace_paths, pod_dir=ctx.pod_dir(sandbox.id),
                     files_dir=_files_dir(ctx, sandbox.id), cgroups_path=f"{sandbox.cgroup_parent}/{container_id}")
    # The monitor makes the cgroup and the first process meanwhile, on the other CPU: their
    # clone into a cgroup2 directory is most of a create's time in the runtime.
    preparing = ctx.monitors.prepare({"container_id": container_id, "cgroups_path": pod.cgroups_path,
                                      "new_namespaces": [t.value for t in new_namespaces(config, pod)]})
    try:
        return _create_prepared(ctx, config, sandbox, pod, container_id, preparing)
    except BaseException:
        preparing.discard()
        raise


def _create_prepared(ctx: ServiceContext, config: pb.ContainerConfig, sandbox: SandboxRecord, pod: PodContext,
                     container_id: str, preparing: Preparing) -> pb.CreateContainerResponse:
    # the name and repo digest ContainerStatus shows, worked out once: kubelet asks for a
    # container's status every few seconds
    image = named_image(ctx.images, config.image.image, user_specified=config.image.user_specified_image)
    if image is None:
        raise NotFound(f"config.image.image: image {config.image.image!r} not found: pull it first")
    name = container_name(name=config.metadata.name, attempt=config.metadata.attempt, sandbox_name=sandbox.name,
                          sandbox_namespace=sandbox.namespace, sandbox_uid=sandbox.uid)
    log_path = os.path.join(sandbox.log_directory, config.log_path) if sandbox.log_directory and config.log_path else ""
    ctx.containers.reserve_name(name, container_id)
    try:
        record = ContainerRecord(
            id=container_id, sandbox_id=sandbox.id, name=config.metadata.name, attempt=config.metadata.attempt,
            image_ref=image.asked_by, image_id=image.id, image_name=image.name,
            image_repo_digest=image.repo_digest, labels=dict(config.labels),
            annotations=dict(config.annotations), created_at=time.time_ns(), state=ContainerState.UNKNOWN,
            log_path=log_path, runtime_id=container_id, config=config.SerializeToString())
        ctx.containers.add(record)
    except BaseException:
        ctx.containers.release_name(name)
        raise
    try:
        pid, monitor_pid, stop_signal = _create(ctx, record, config, pod, image.resolved, preparing)
    except BaseException as cause:
        try:
            remove_container_files(ctx, record)
            ctx.containers.delete(record.id)
        except Exception as undo_error:
            cause.add_note(f"while undoing: {undo_error}; RemoveContainer {container_id} cleans up")
        raise
    from skiff.runtime.container import proc_start_time

    monitor_start = proc_start_time(monitor_pid) or 0
    ctx.containers.update(container_id, lambda r: replace(r, state=ContainerState.CREATED, pid=pid,
                                                          monitor_pid=monitor_pid, monitor_start=monitor_start,
                                                          stop_signal=stop_signal))
    return pb.CreateContainerResponse(container_id=container_id)


def _files_dir(ctx: ServiceContext, sandbox_id: str) -> str:
    files = ctx.pod_files_dir(sandbox_id)
    return files if os.path.isdir(files) else ctx.pod_dir(sandbox_id)  # a pod an older skiff made


def _create(ctx: ServiceContext, record: ContainerRecord, config: pb.ContainerConfig, pod: PodContext,
            image: ResolvedImage, preparing: Preparing) -> tuple[int, int, str]:
    rootfs, resolved = ctx.images.prepare(image, record.id)
    spec = container_spec(config, pod, image=resolved.image.config, rootfs=rootfs, container_id=record.id)
    make_mount_points(rootfs, spec.mounts)
    bundle = ctx.bundle_dir(record.id)
    os.makedirs(bundle, mode=0o700)
    with open(os.path.join(bundle, "config.json"), "w") as f:
        f.write(json.dumps(spec_to_dict(spec)))  # dumps: json.dump never uses the C encoder
    log_path = record.log_path or os.devnull
    if record.log_path:
        os.makedirs(os.path.dirname(log_path), mode=0o755, exist_ok=True)
    preparing.wait()
    config = pb.ContainerConfig.FromString(record.config)
    reply = ctx.monitors.create({"container_id": record.runtime_id, "bundle": bundle, "log_path": log_path,
                                 "exit_file": ctx.exit_file(record.id), "stdin": config.stdin and not config.tty,
                                 "terminal": config.tty})
    stop_signal = resolved.image.config.stop_signal if resolved.image.config else None
    return int(reply["pid"]), int(reply["monitor_pid"]), stop_signal or ""
