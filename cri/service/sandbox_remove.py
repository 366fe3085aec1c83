"""RemovePodSandbox: stop if needed, then remove the containers and everything of the pod.
An unknown id is success (containerd `sandbox_remove.go`)."""

from __future__ import annotations

from cri_api.v1 import api_pb2 as pb

from skiff.cri.service.context import ServiceContext
from skiff.cri.service.sandbox_stop import teardown_by_id


def remove_pod_sandbox(ctx: ServiceContext, request: pb.RemovePodSandboxRequest) -> pb.RemovePodSandboxResponse:
    teardown_by_id(ctx, request.pod_sandbox_id, remove=True)
    return pb.RemovePodSandboxResponse()
