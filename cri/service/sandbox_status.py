"""PodSandboxStatus and ListPodSandbox. A READY sandbox whose pause (pod PID namespace) died
is reported NOTREADY, as containerd reports a sandbox whose pause exited."""

from __future__ import annotations

import json

from cri_api.v1 import api_pb2 as pb

from skiff.cri.service.context import ServiceContext
from skiff.cri.service.sandbox_run import require
from skiff.cri.store.sandbox import SandboxRecord, SandboxState


def state_of(record: SandboxRecord) -> pb.PodSandboxState.ValueType:
    if record.state is SandboxState.READY and record.pause_pid:
        from skiff.runtime.container import proc_start_time

        if proc_start_time(record.pause_pid) != record.pause_start:
            return pb.SANDBOX_NOTREADY
    return pb.SANDBOX_READY if record.state is SandboxState.READY else pb.SANDBOX_NOTREADY


def _metadata(record: SandboxRecord) -> pb.PodSandboxMetadata:
    return pb.PodSandboxMetadata(name=record.name, uid=record.uid, namespace=record.namespace,
                                 attempt=record.attempt)


def pod_sandbox_status(ctx: ServiceContext, request: pb.PodSandboxStatusRequest) -> pb.PodSandboxStatusResponse:
    require(request.pod_sandbox_id, "pod_sandbox_id")
    record = ctx.sandboxes.get(ctx.sandboxes.resolve(request.pod_sandbox_id))
    config = pb.PodSandboxConfig.FromString(record.config)
    status = pb.PodSandboxStatus(
        id=record.id, metadata=_metadata(record), state=state_of(record), created_at=record.created_at,
        network=pb.PodSandboxNetworkStatus(ip=record.ip,
                                           additional_ips=[pb.PodIP(ip=ip) for ip in record.additional_ips]),
        labels=record.labels, annotations=record.annotations)
    status.linux.namespaces.options.CopyFrom(config.linux.security_context.namespace_options)
    info: dict[str, str] = {}
    if request.verbose:
        info["info"] = json.dumps({
            "pid": record.pause_pid, "namespacePaths": record.namespace_paths, "netnsPath": record.netns_path,
            "podDir": ctx.pod_dir(record.id), "cgroupParent": record.cgroup_parent,
            "state": record.state.name, "config": json.loads(_config_json(config))})
    return pb.PodSandboxStatusResponse(status=status, info=info)


def _config_json(config: pb.PodSandboxConfig) -> str:
    from google.protobuf import json_format

    return str(json_format.MessageToJson(config))


def _matches(record: SandboxRecord, state: pb.PodSandboxState.ValueType, f: pb.PodSandboxFilter | None) -> bool:
    if f is None:
        return True
    if f.id and not record.id.startswith(f.id):
        return False
    if f.HasField("state") and state != f.state.state:
        return False
    return all(record.labels.get(k) == v for k, v in f.label_selector.items())


def list_pod_sandbox(ctx: ServiceContext, request: pb.ListPodSandboxRequest) -> pb.ListPodSandboxResponse:
    wanted = request.filter if request.HasField("filter") else None
    items = []
    for record in ctx.sandboxes.list():
        state = state_of(record)
        if _matches(record, state, wanted):
            items.append(pb.PodSandbox(id=record.id, metadata=_metadata(record), state=state,
                                       created_at=record.created_at, labels=record.labels,
                                       annotations=record.annotations))
    return pb.ListPodSandboxResponse(items=items)
