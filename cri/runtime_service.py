"""runtime.v1 RuntimeService: each RPC is one function in cri/service/ (containerd names
them object-verb, `internal/cri/server/sandbox_run.go`); this class only routes to them.
Errors become gRPC codes in grpc_errors.py. Exec, Attach and PortForward answer with a URL
of the streaming server (streaming/)."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from typing import Any, Callable

import grpc
from cri_api.v1 import api_pb2 as pb
from cri_api.v1 import api_pb2_grpc

from skiff import __version__
from skiff.cri.service import (
    container_create,
    container_exec,
    container_remove,
    container_start,
    container_status,
    container_stop,
    container_update,
    metrics,
    sandbox_remove,
    sandbox_run,
    sandbox_status,
    sandbox_stop,
    stats,
)
from skiff.cri.service.context import ServiceContext

# What kubelet checks: the CRI version it speaks and the API version.
CRI_VERSION = "0.1.0"
RUNTIME_API_VERSION = "v1"


def _route(function: Callable[[ServiceContext, Any], Any]) -> Callable[[Any, Any, grpc.ServicerContext], Any]:
    def rpc(self: RuntimeService, request: Any, context: grpc.ServicerContext) -> Any:
        return function(self.ctx, request)

    rpc.__doc__ = function.__doc__
    return rpc


class RuntimeService(api_pb2_grpc.RuntimeServiceServicer):
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx

    def Version(self, request: pb.VersionRequest, context: grpc.ServicerContext) -> pb.VersionResponse:
        return pb.VersionResponse(version=CRI_VERSION, runtime_name="skiff", runtime_version=__version__,
                                  runtime_api_version=RUNTIME_API_VERSION)

    def Status(self, request: pb.StatusRequest, context: grpc.ServicerContext) -> pb.StatusResponse:
        ready, why = self.ctx.network.ready()
        network = pb.RuntimeCondition(type="NetworkReady", status=ready)
        if not ready:
            network.reason, network.message = "NetworkPluginNotReady", why
        conditions = [pb.RuntimeCondition(type="RuntimeReady", status=True), network]
        return pb.StatusResponse(status=pb.RuntimeStatus(conditions=conditions))

    def RuntimeConfig(self, request: pb.RuntimeConfigRequest, context: grpc.ServicerContext) -> pb.RuntimeConfigResponse:
        # skiff drives cgroupfs itself; kubelet must use the same driver.
        return pb.RuntimeConfigResponse(linux=pb.LinuxRuntimeConfiguration(cgroup_driver=pb.CGROUPFS))

    def UpdateRuntimeConfig(self, request: pb.UpdateRuntimeConfigRequest,
                            context: grpc.ServicerContext) -> pb.UpdateRuntimeConfigResponse:
        # kubelet tells the node's pod CIDR; skiff's network mode has it in its own configuration
        return pb.UpdateRuntimeConfigResponse()

    def GetContainerEvents(self, request: pb.GetEventsRequest,
                           context: grpc.ServicerContext) -> Iterator[pb.ContainerEventResponse]:
        """Until the client goes (or the server stops); while it waits, the live containers are
        read once a second, which records the exits of those that ended (events.py)."""
        with self.ctx.events.subscribe() as events:
            # the stream ends the moment the RPC does, not at the next poll: a handler left
            # polling would read the containers of a service that is closing
            context.add_callback(events.end)
            while context.is_active():
                try:
                    event = events.get(timeout=1.0)
                except queue.Empty:
                    container_status.refresh_live(self.ctx)
                    continue
                if event is None:
                    return
                yield event

    RunPodSandbox = _route(sandbox_run.run_pod_sandbox)
    StopPodSandbox = _route(sandbox_stop.stop_pod_sandbox)
    RemovePodSandbox = _route(sandbox_remove.remove_pod_sandbox)
    PodSandboxStatus = _route(sandbox_status.pod_sandbox_status)
    ListPodSandbox = _route(sandbox_status.list_pod_sandbox)
    CreateContainer = _route(container_create.create_container)
    StartContainer = _route(container_start.start_container)
    StopContainer = _route(container_stop.stop_container)
    RemoveContainer = _route(container_remove.remove_container)
    ContainerStatus = _route(container_status.container_status)
    ListContainers = _route(container_status.list_containers)
    UpdateContainerResources = _route(container_update.update_container_resources)
    ReopenContainerLog = _route(container_update.reopen_container_log)
    ExecSync = _route(container_exec.exec_sync)
    Exec = _route(container_exec.exec_streaming)
    PortForward = _route(container_exec.port_forward)
    Attach = _route(container_exec.attach)
    ContainerStats = _route(stats.container_stats)
    ListMetricDescriptors = _route(metrics.list_metric_descriptors)
    ListPodSandboxMetrics = _route(metrics.list_pod_sandbox_metrics)
    ListContainerStats = _route(stats.list_container_stats)
    PodSandboxStats = _route(stats.pod_sandbox_stats)
    ListPodSandboxStats = _route(stats.list_pod_sandbox_stats)
