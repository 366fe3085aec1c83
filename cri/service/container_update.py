"""UpdateContainerResources and ReopenContainerLog."""

from __future__ import annotations

import json
import os
from dataclasses import replace

from cri_api.v1 import api_pb2 as pb

from skiff.cri.container_spec import linux_resources
from skiff.cri.service.container_status import lookup, lookup_running, monitor_alive
from skiff.cri.service.context import ServiceContext
from skiff.cri.store.container import ContainerState
from skiff.errors import FailedPrecondition
from skiff.oci import parse_spec, spec_to_dict


def update_container_resources(ctx: ServiceContext, request: pb.UpdateContainerResourcesRequest
                               ) -> pb.UpdateContainerResourcesResponse:
    """The cgroup first, then the bundle and the record, so a refused value changes nothing
    that ContainerStatus shows."""
    record = lookup(ctx, request.container_id)
    if record.state not in (ContainerState.CREATED, ContainerState.RUNNING):
        raise FailedPrecondition(f"container {record.id} is {record.state.name.lower()}: cannot update it")
    if not request.HasField("linux"):
        return pb.UpdateContainerResourcesResponse()
    path = os.path.join(ctx.bundle_dir(record.id), "config.json")
    with open(path) as f:
        spec = parse_spec(json.load(f))
    assert spec.linux is not None
    resources = linux_resources(request.linux, spec.linux.resources)
    ctx.runtime.update(record.runtime_id, resources)
    spec = replace(spec, linux=replace(spec.linux, resources=resources))
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(spec_to_dict(spec), f)
    os.rename(tmp, path)
    config = pb.ContainerConfig.FromString(record.config)
    config.linux.resources.CopyFrom(request.linux)
    ctx.containers.update(record.id, lambda r: replace(r, config=config.SerializeToString()))
    return pb.UpdateContainerResourcesResponse()


def reopen_container_log(ctx: ServiceContext, request: pb.ReopenContainerLogRequest) -> pb.ReopenContainerLogResponse:
    """kubelet renamed the log file for rotation; the monitor opens a new one at log_path."""
    record = lookup_running(ctx, request.container_id)
    if not record.log_path:
        return pb.ReopenContainerLogResponse()
    if not monitor_alive(record):
        raise FailedPrecondition(f"container {record.id}: its log monitor is gone")
    if not ctx.monitors.reopen(record.monitor_pid, record.runtime_id):
        raise FailedPrecondition(f"container {record.id}: its monitor no longer copies its output")
    return pb.ReopenContainerLogResponse()
