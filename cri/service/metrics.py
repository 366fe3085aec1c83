"""ListMetricDescriptors and ListPodSandboxMetrics: what kubelet serves on /metrics/cadvisor
when it takes pod and container metrics from the runtime (PodAndContainerStatsFromCRI),
under cadvisor's names, as CRI-O answers them. The values are the stats calls' (stats.py),
so a scrape costs what ListPodSandboxStats costs. Every metric has CRI-O's base labels (id,
name, image); network metrics are the pod's and add the interface."""

from __future__ import annotations

from cri_api.v1 import api_pb2 as pb

from skiff.cri.service.context import ServiceContext
from skiff.cri.service.stats import pod_stats_of

BASE_LABELS = ("id", "name", "image")
# name -> (help, type, labels beyond the base ones)
DESCRIPTORS: dict[str, tuple[str, pb.MetricType.ValueType, tuple[str, ...]]] = {
    "container_cpu_usage_seconds_total": ("Cumulative cpu time consumed in seconds.", pb.COUNTER, ()),
    "container_memory_usage_bytes": ("Current memory usage in bytes, including all memory regardless of when it "
                                     "was accessed.", pb.GAUGE, ()),
    "container_memory_working_set_bytes": ("Current working set in bytes.", pb.GAUGE, ()),
    "container_memory_rss": ("Size of RSS in bytes.", pb.GAUGE, ()),
    "container_fs_usage_bytes": ("Number of bytes that are consumed by the container on this filesystem.",
                                 pb.GAUGE, ()),
    "container_network_receive_bytes_total": ("Cumulative count of bytes received.", pb.COUNTER, ("interface",)),
    "container_network_transmit_bytes_total": ("Cumulative count of bytes transmitted.", pb.COUNTER,
                                               ("interface",)),
}


def list_metric_descriptors(ctx: ServiceContext, request: pb.ListMetricDescriptorsRequest
                            ) -> pb.ListMetricDescriptorsResponse:
    return pb.ListMetricDescriptorsResponse(descriptors=[
        pb.MetricDescriptor(name=name, help=text, label_keys=[*BASE_LABELS, *extra])
        for name, (text, _, extra) in DESCRIPTORS.items()])


def list_pod_sandbox_metrics(ctx: ServiceContext, request: pb.ListPodSandboxMetricsRequest
                             ) -> pb.ListPodSandboxMetricsResponse:
    out = []
    for record in ctx.sandboxes.list():
        stats = pod_stats_of(ctx, record)
        pod = pb.PodSandboxMetrics(pod_sandbox_id=record.id)
        pod_labels = [record.id, record.name, ""]
        network = stats.linux.network
        interfaces = ([network.default_interface] if network.HasField("default_interface") else []) + \
            list(network.interfaces)
        for iface in interfaces:
            pod.metrics.extend([
                _metric("container_network_receive_bytes_total", network.timestamp, iface.rx_bytes.value,
                        [*pod_labels, iface.name]),
                _metric("container_network_transmit_bytes_total", network.timestamp, iface.tx_bytes.value,
                        [*pod_labels, iface.name])])
        images = {c.id: c.image_ref for c in ctx.containers.in_sandbox(record.id)}
        for container in stats.linux.containers:
            labels = [container.attributes.id, container.attributes.metadata.name,
                      images.get(container.attributes.id, "")]
            cpu, memory, layer = container.cpu, container.memory, container.writable_layer
            pod.container_metrics.append(pb.ContainerMetrics(container_id=container.attributes.id, metrics=[
                _metric("container_cpu_usage_seconds_total", cpu.timestamp,
                        cpu.usage_core_nano_seconds.value // 1_000_000_000, labels),
                _metric("container_memory_usage_bytes", memory.timestamp, memory.usage_bytes.value, labels),
                _metric("container_memory_working_set_bytes", memory.timestamp, memory.working_set_bytes.value,
                        labels),
                _metric("container_memory_rss", memory.timestamp, memory.rss_bytes.value, labels),
                _metric("container_fs_usage_bytes", layer.timestamp, layer.used_bytes.value, labels)]))
        out.append(pod)
    return pb.ListPodSandboxMetricsResponse(pod_metrics=out)


def _metric(name: str, timestamp: int, value: int, labels: list[str]) -> pb.Metric:
    metric = pb.Metric(name=name, timestamp=timestamp, metric_type=DESCRIPTORS[name][1], label_values=labels)
    metric.value.value = value
    return metric
