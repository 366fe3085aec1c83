"""What the scheduler knows of a node: what it can give (status.allocatable) and what the pods
bound to it already ask for, their host ports, and their labels (for anti-affinity and
spreading). Kept up to date as pods are bound and go, not recomputed per pod."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from skiff.orchestrator.api import quantity

CPU, MEMORY, PODS = "cpu", "memory", "pods"
DEFAULT_PODS = 110  # kubelet's default maxPods when a node says nothing


def pod_requests(pod: dict[str, Any]) -> Counter[str]:
    """The pod's requests: CPU in millicores, the rest in units, one `pods` slot. A resource
    without a request but with a limit asks for the limit, as Kubernetes defaults it."""
    total: Counter[str] = Counter({PODS: 1})
    for n, c in enumerate(pod.get("spec", {}).get("containers") or []):
        resources = c.get("resources") or {}
        wanted = {**(resources.get("limits") or {}), **(resources.get("requests") or {})}
        for name, value in wanted.items():
            field_ = f"spec.containers[{n}].resources.requests.{name}"
            total[name] += quantity.milli(value, field_) if name == CPU else quantity.units(value, field_)
    return total


def host_ports(pod: dict[str, Any]) -> set[tuple[str, int]]:
    return {(p.get("protocol", "TCP"), int(p["hostPort"]))
            for c in pod.get("spec", {}).get("containers") or [] for p in c.get("ports") or [] if p.get("hostPort")}


def owner(pod: dict[str, Any]) -> str | None:
    """The uid of the pod's controller (its ReplicaSet, Job, DaemonSet), for spreading."""
    for ref in pod.get("metadata", {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return str(ref.get("uid"))
    return None


@dataclass(slots=True)
class NodeInfo:
    name: str
    labels: dict[str, str]
    allocatable: Counter[str]
    taints: list[dict[str, Any]]
    unschedulable: bool = False
    ready: bool = True
    requested: Counter[str] = field(default_factory=Counter)
    ports: Counter[tuple[str, int]] = field(default_factory=Counter)
    pod_labels: dict[str, dict[str, str]] = field(default_factory=dict)   # pod key -> labels
    owners: Counter[str] = field(default_factory=Counter)                  # controller uid -> pods here
    pods: dict[str, dict[str, Any]] = field(default_factory=dict)          # pod key -> the pod counted

    @classmethod
    def of(cls, node: dict[str, Any]) -> NodeInfo:
        status = node.get("status") or {}
        allocatable: Counter[str] = Counter({PODS: DEFAULT_PODS})
        for name, value in (status.get("allocatable") or status.get("capacity") or {}).items():
            where = f"node {node['metadata']['name']}: status.allocatable.{name}"
            allocatable[name] = quantity.milli(value, where) if name == CPU else quantity.units(value, where)
        ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
        spec = node.get("spec") or {}
        return cls(name=node["metadata"]["name"], labels=dict(node["metadata"].get("labels") or {}),
                   allocatable=allocatable, taints=list(spec.get("taints") or []),
                   unschedulable=bool(spec.get("unschedulable")), ready=ready)

    def add(self, key: str, pod: dict[str, Any]) -> None:
        """Count the pod here (again: its previous version is taken out first)."""
        self.remove(key)
        self.pods[key] = pod
        self.requested.update(pod_requests(pod))
        self.ports.update(host_ports(pod))
        self.pod_labels[key] = dict(pod.get("metadata", {}).get("labels") or {})
        if (uid := owner(pod)) is not None:
            self.owners[uid] += 1

    def remove(self, key: str) -> None:
        pod = self.pods.pop(key, None)
        if pod is None:
            return
        del self.pod_labels[key]
        self.requested.subtract(pod_requests(pod))
        self.ports.subtract(host_ports(pod))
        if (uid := owner(pod)) is not None:
            self.owners[uid] -= 1
