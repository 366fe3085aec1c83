"""RemoveContainer (containerd `container_remove.go`): a live container is killed first; an
unknown id is success, as kubelet expects. The CRI log file stays: kubelet owns it."""

from __future__ import annotations

import os
import shutil

from cri_api.v1 import api_pb2 as pb

from skiff.cri.service.container_status import monitor_alive
from skiff.cri.service.context import ServiceContext
from skiff.cri.store.container import ContainerRecord
from skiff.errors import NotFound


def remove_container(ctx: ServiceContext, request: pb.RemoveContainerRequest) -> pb.RemoveContainerResponse:
    from skiff.cri.service.container_status import lookup

    try:
        record = lookup(ctx, request.container_id)
        with ctx.sandbox_lock(record.sandbox_id):   # not while its pod is torn down
            remove(ctx, lookup(ctx, record.id))
    except NotFound:
        pass   # gone already, or with its pod meanwhile
    return pb.RemoveContainerResponse()


def remove(ctx: ServiceContext, record: ContainerRecord) -> None:
    from skiff.cri.service.container_stop import stop

    stop(ctx, record, timeout=0)
    remove_container_files(ctx, record)
    ctx.containers.delete(record.id)


def remove_container_files(ctx: ServiceContext, record: ContainerRecord) -> None:
    """The runtime container, its snapshot and bundle; each may be missing (a create that
    failed half way, a second try after a failed remove)."""
    ctx.runtime.delete(record.runtime_id, force=True)
    if monitor_alive(record):  # its last lines in the log, its exit file written
        ctx.monitors.release(record.monitor_pid, record.runtime_id)
    ctx.images.release(record.id)
    bundle = ctx.bundle_dir(record.id)
    if os.path.isdir(bundle):
        shutil.rmtree(bundle)
