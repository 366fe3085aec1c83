"""RemovePodSandbox: stop if needed, then remove the containers and everything of the pod.
An unknown id is success (containerd `sandbox_remove.go`)."""

from __future__ import annotations

from cri_api.v1 import api_pb2 as pb

from skiff.cri.service.context import ServiceContext
from skiff.cri.service.sandbox_run import require
from skiff.cri.service.sandbox_stop import teardown_sandbox
from skiff.errors import NotFound


def remove_pod_sandbox(ctx: ServiceContext, request: pb.RemovePodSandboxRequest) -> pb.RemovePodSandboxResponse:
    require(request.pod_sandbox_id, "pod_sandbox_id")
    try:
        sandbox_id = ctx.sandboxes.resolve(request.pod_sandbox_id)
        with ctx.sandbox_lock(sandbox_id):
            teardown_sandbox(ctx, ctx.sandboxes.get(sandbox_id), remove=True)
        ctx.forget_sandbox_lock(sandbox_id)
    except NotFound:
        pass
    return pb.RemovePodSandboxResponse()
