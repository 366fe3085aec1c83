"""The corners of the CRI contract that kubelet relies on, as containerd and CRI-O answer them:
the container and sandbox state machines, idempotent stops and removals, a pod's removal
taking its containers, attempts, labels and annotations returned as given, and the stats'
writable layer and network counters, also as metrics."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest
from cri_api.v1 import api_pb2 as pb
from cri_fixture import IMAGE, Cri


def create(cri: Cri, pod_id: str, pod: pb.PodSandboxConfig, name: str, *args: str, attempt: int = 0,
           annotations: dict[str, str] | None = None) -> str:
    config = pb.ContainerConfig(metadata=pb.ContainerMetadata(name=name, attempt=attempt),
                                image=pb.ImageSpec(image=IMAGE), command=list(args),
                                log_path=f"{name}/{attempt}.log", labels={"role": name},
                                annotations=annotations or {})
    return str(cri.runtime.CreateContainer(pb.CreateContainerRequest(
        pod_sandbox_id=pod_id, config=config, sandbox_config=pod)).container_id)


def code(call: Callable[[], object]) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as e:
        call()
    return e.value.code()


def test_state_machines_attempts_labels_and_annotations(cri: Cri) -> None:
    pod_id, pod = cri.run_pod("contract", labels={"app": "c"}, attempt=1)
    pod_status = cri.pod_status(pod_id)
    assert (pod_status.state, pod_status.metadata.attempt, dict(pod_status.labels)) == \
        (pb.SANDBOX_READY, 1, {"app": "c"})

    cid = create(cri, pod_id, pod, "main", "sh", "-c", "exit 4", annotations={"note": "kept as given"})
    created = cri.status(cid)
    assert (created.state, created.started_at, created.finished_at) == (pb.CONTAINER_CREATED, 0, 0)
    assert created.annotations == {"note": "kept as given"} and created.labels == {"role": "main"}
    cri.runtime.StartContainer(pb.StartContainerRequest(container_id=cid))
    exited = cri.wait_exited(cid)
    assert (exited.state, exited.exit_code, exited.reason) == (pb.CONTAINER_EXITED, 4, "Error")
    # a started container is not started again, and an exited one stays exited
    assert code(lambda: cri.runtime.StartContainer(pb.StartContainerRequest(container_id=cid))) == \
        grpc.StatusCode.FAILED_PRECONDITION

    # kubelet's restart: the same name with the next attempt, beside the exited one
    assert code(lambda: create(cri, pod_id, pod, "main", "true")) == grpc.StatusCode.ALREADY_EXISTS
    again = create(cri, pod_id, pod, "main", "sleep", "60", attempt=1)
    cri.runtime.StartContainer(pb.StartContainerRequest(container_id=again))
    assert cri.status(again).metadata.attempt == 1
    listed = cri.runtime.ListContainers(pb.ListContainersRequest(filter=pb.ContainerFilter(
        pod_sandbox_id=pod_id, label_selector={"role": "main"}))).containers
    assert sorted((c.metadata.attempt, c.state) for c in listed) == [(0, pb.CONTAINER_EXITED),
                                                                   (1, pb.CONTAINER_RUNNING)]
    assert all(c.annotations == ({"note": "kept as given"} if c.id == cid else {}) for c in listed)

    # a pod's removal takes its containers, the running one included; a removal of what is
    # gone already succeeds, and so does a pod's stop (a container's is NOT_FOUND, as containerd's)
    cri.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
    assert not cri.runtime.ListContainers(pb.ListContainersRequest()).containers
    assert not cri.runtime.ListPodSandbox(pb.ListPodSandboxRequest()).items
    cri.runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=again))
    cri.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod_id))
    cri.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
    assert code(lambda: cri.status(again)) == grpc.StatusCode.NOT_FOUND
    assert code(lambda: cri.runtime.StopContainer(pb.StopContainerRequest(container_id=again))) == \
        grpc.StatusCode.NOT_FOUND
    assert code(lambda: cri.pod_status(pod_id)) == grpc.StatusCode.NOT_FOUND


def test_stats_have_the_writable_layer_and_network_counters(cri: Cri) -> None:
    pod_id, pod = cri.run_pod("counted")
    cid = cri.start(pod_id, pod, "main", "sh", "-c", "head -c 300000 /dev/zero > /written; "
                    "ping -c 1 -W 1 $(ip route | awk '/default/ {print $3}'); sleep 3600")
    try:
        def stats() -> pb.ContainerStats:
            reply = cri.runtime.ContainerStats(pb.ContainerStatsRequest(container_id=cid))
            return reply.stats  # type: ignore[no-any-return]
        from orchestrator_fixture import eventually

        eventually(lambda: stats().writable_layer.used_bytes.value >= 300000, timeout=10)
        assert stats().writable_layer.inodes_used.value >= 1
        pod_stats = cri.runtime.PodSandboxStats(pb.PodSandboxStatsRequest(pod_sandbox_id=pod_id)).stats
        eth0 = pod_stats.linux.network.default_interface
        assert eth0.name == "eth0" and eth0.rx_bytes.value > 0 and eth0.tx_bytes.value > 0

        # the same, as the metrics kubelet serves on /metrics/cadvisor when it asks the runtime
        descriptors = {d.name: list(d.label_keys) for d in cri.runtime.ListMetricDescriptors(
            pb.ListMetricDescriptorsRequest()).descriptors}
        [pod_metrics] = cri.runtime.ListPodSandboxMetrics(pb.ListPodSandboxMetricsRequest()).pod_metrics
        [container_metrics] = pod_metrics.container_metrics
        by_name = {m.name: m for m in container_metrics.metrics}
        assert container_metrics.container_id == cid and set(by_name) <= set(descriptors)
        assert by_name["container_fs_usage_bytes"].value.value >= 300000
        assert by_name["container_memory_working_set_bytes"].metric_type == pb.GAUGE
        assert list(by_name["container_memory_rss"].label_values) == [cid, "main", IMAGE]
        received = [m for m in pod_metrics.metrics if m.name == "container_network_receive_bytes_total"]
        assert [(list(m.label_values), m.metric_type) for m in received] == [([pod_id, "counted", "", "eth0"],
                                                                              pb.COUNTER)]
        assert received[0].value.value > 0 and descriptors[received[0].name] == ["id", "name", "image", "interface"]
    finally:
        cri.remove_all()
