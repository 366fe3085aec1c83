"""runtime.v1 RuntimeService. For now Version and Status; the pod and container RPCs are
issue 5's next steps (the generated base class answers UNIMPLEMENTED for them meanwhile)."""

from __future__ import annotations

import grpc
from cri_api.v1 import api_pb2 as pb
from cri_api.v1 import api_pb2_grpc

from skiff import __version__

# What kubelet checks: the CRI version it speaks and the API version.
CRI_VERSION = "0.1.0"
RUNTIME_API_VERSION = "v1"


class RuntimeService(api_pb2_grpc.RuntimeServiceServicer):
    def Version(self, request: pb.VersionRequest, context: grpc.ServicerContext) -> pb.VersionResponse:
        return pb.VersionResponse(version=CRI_VERSION, runtime_name="skiff", runtime_version=__version__,
                                  runtime_api_version=RUNTIME_API_VERSION)

    def Status(self, request: pb.StatusRequest, context: grpc.ServicerContext) -> pb.StatusResponse:
        conditions = [
            pb.RuntimeCondition(type="RuntimeReady", status=True),
            pb.RuntimeCondition(type="NetworkReady", status=False, reason="NetworkPluginNotReady",
                                message="skiff: pod networking is not wired into the CRI service yet"),
        ]
        return pb.StatusResponse(status=pb.RuntimeStatus(conditions=conditions))
