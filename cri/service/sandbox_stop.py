"""StopPodSandbox and the teardown every sandbox path shares (containerd `sandbox_stop.go`,
`sandbox_remove.go`). Idempotent at each step, so it also finishes a RunPodSandbox that
failed or was interrupted half way, a Stop that failed, and a Remove after a restart."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace

from cri_api.v1 import api_pb2 as pb

from skiff.cri import pod_namespaces
from skiff.cri.service.context import ServiceContext
from skiff.cri.store.sandbox import SandboxRecord, SandboxState
from skiff.errors import NotFound
from skiff.runtime import own_mount


def stop_pod_sandbox(ctx: ServiceContext, request: pb.StopPodSandboxRequest) -> pb.StopPodSandboxResponse:
    teardown_by_id(ctx, request.pod_sandbox_id, remove=False)
    return pb.StopPodSandboxResponse()


def teardown_by_id(ctx: ServiceContext, pod_sandbox_id: str, *, remove: bool) -> None:
    """Stop or Remove by id or unique prefix, under the sandbox's lock; an unknown id is
    success (kubelet may stop or remove what is gone already)."""
    from skiff.cri.service.sandbox_run import require

    require(pod_sandbox_id, "pod_sandbox_id")
    try:
        sandbox_id = ctx.sandboxes.resolve(pod_sandbox_id)
        with ctx.sandbox_lock(sandbox_id):
            teardown_sandbox(ctx, ctx.sandboxes.get(sandbox_id), remove=remove)
    except NotFound:
        return
    if remove:
        ctx.forget_sandbox_lock(sandbox_id)


def teardown_sandbox(ctx: ServiceContext, record: SandboxRecord, *, remove: bool) -> None:
    """Stop: the pod's containers are killed, its network, namespaces and shm go; the record
    says NOTREADY. With `remove`, the containers, the pod cgroup, the pod's files and the
    record go too."""
    from skiff.cri.service.container_remove import remove as remove_container
    from skiff.cri.service.container_status import refreshed
    from skiff.cri.service.container_stop import stop as stop_container

    for container in ctx.containers.in_sandbox(record.id):
        try:
            stop_container(ctx, refreshed(ctx, container), timeout=0)
            if remove:
                remove_container(ctx, container)
        except NotFound:
            continue   # a RemoveContainer took it meanwhile: the rest of the pod still goes
    pod_namespaces.stop_pause(record.pause_pid, record.pause_start)
    if record.pause_cgroup:  # a pause whose pid the record never got is still in there
        from skiff.runtime.cgroups import load_cgroup
        from skiff.runtime.spawn import kill_and_reap

        kill_and_reap(load_cgroup(json.loads(record.pause_cgroup)).pids())
    config = pb.PodSandboxConfig.FromString(record.config)
    if config.linux.security_context.namespace_options.network != pb.NODE:
        netns = os.path.join(ctx.pod_dir(record.id), "ns", "net")
        ctx.network.teardown(netns if os.path.exists(netns) else None, record.id)
    pod_namespaces.unpin(os.path.join(ctx.pod_dir(record.id), "ns"))
    own_mount.unmount(os.path.join(ctx.pod_dir(record.id), "shm"))
    if not remove:
        if record.state is not SandboxState.NOTREADY:
            ctx.sandboxes.update(record.id, lambda r: replace(r, state=SandboxState.NOTREADY))
        return
    from skiff.runtime.cgroups import load_cgroup

    for cgroup in (record.pause_cgroup, record.pod_cgroup):  # the leaf first
        if cgroup:
            load_cgroup(json.loads(cgroup)).destroy()
    for directory in (ctx.pod_dir(record.id), ctx.pod_files_dir(record.id)):
        if os.path.isdir(directory):
            shutil.rmtree(directory)
    ctx.sandboxes.delete(record.id)
