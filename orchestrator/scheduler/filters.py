"""Which nodes can take a pod, and for the others the reason, worded as kube-scheduler words it
in the pod's condition ("0/3 nodes are available: 2 Insufficient cpu, 1 node(s) had
untolerated taint {dedicated: db}.")."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from skiff.orchestrator.labels import Operator, Requirement, Selector, from_label_selector
from skiff.orchestrator.scheduler.nodes import PODS, NodeInfo, host_ports, owner, pod_requests

HOSTNAME = "kubernetes.io/hostname"


@dataclass(frozen=True, slots=True)
class PodFacts:
    """What the filters and scores read of a pod, worked out once per decision, not per node."""
    requests: Counter[str]
    ports: frozenset[tuple[str, int]]
    node_selector: dict[str, str]
    affinity_terms: tuple[tuple[Requirement, ...], ...]     # ORed; each term's requirements ANDed
    tolerations: tuple[dict[str, Any], ...]
    anti_affinity: tuple[tuple[Selector, str], ...]         # (selector, topology key)
    owner: str | None

    @classmethod
    def of(cls, pod: dict[str, Any]) -> PodFacts:
        spec = pod.get("spec") or {}
        affinity = spec.get("affinity") or {}
        required = ((affinity.get("nodeAffinity") or {}).get("requiredDuringSchedulingIgnoredDuringExecution") or {})
        terms = tuple(tuple(Requirement(e["key"], _OPERATORS[e["operator"]], frozenset(e.get("values") or ()))
                            for e in t.get("matchExpressions") or [] if e.get("operator") in _OPERATORS)
                      for t in required.get("nodeSelectorTerms") or [])
        anti = tuple((from_label_selector(t.get("labelSelector") or {}, "podAntiAffinity.labelSelector"),
                      t.get("topologyKey", HOSTNAME))
                     for t in (affinity.get("podAntiAffinity") or {}).get(
                         "requiredDuringSchedulingIgnoredDuringExecution") or [])
        return cls(requests=pod_requests(pod), ports=frozenset(host_ports(pod)),
                   node_selector=dict(spec.get("nodeSelector") or {}), affinity_terms=terms,
                   tolerations=tuple(spec.get("tolerations") or ()), anti_affinity=anti, owner=owner(pod))


_OPERATORS = {"In": Operator.IN, "NotIn": Operator.NOT_IN, "Exists": Operator.EXISTS,
              "DoesNotExist": Operator.DOES_NOT_EXIST, "Gt": Operator.GREATER_THAN, "Lt": Operator.LESS_THAN}
Filter = Callable[[PodFacts, NodeInfo], str | None]   # None: the node passes


def unschedulable(pod: PodFacts, node: NodeInfo) -> str | None:
    if not node.ready:
        return "node(s) were not ready"
    if node.unschedulable and not _tolerates(pod, {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}):
        return "node(s) were unschedulable"
    return None


def node_affinity(pod: PodFacts, node: NodeInfo) -> str | None:
    if any(node.labels.get(k) != v for k, v in pod.node_selector.items()) or (
            pod.affinity_terms and not any(term and all(r.matches(node.labels) for r in term)
                                           for term in pod.affinity_terms)):
        return "node(s) didn't match Pod's node affinity/selector"
    return None


def taints(pod: PodFacts, node: NodeInfo) -> str | None:
    for taint in node.taints:
        if taint.get("effect") in ("NoSchedule", "NoExecute") and not _tolerates(pod, taint):
            value = f": {taint['value']}" if taint.get("value") else ""
            return f"node(s) had untolerated taint {{{taint.get('key')}{value}}}"
    return None


def _tolerates(pod: PodFacts, taint: dict[str, Any]) -> bool:
    for t in pod.tolerations:
        if t.get("effect") and t["effect"] != taint.get("effect"):
            continue
        if t.get("operator", "Equal") == "Exists":
            if not t.get("key") or t["key"] == taint.get("key"):
                return True
        elif t.get("key") == taint.get("key") and (t.get("value") or "") == (taint.get("value") or ""):
            return True
    return False


def resources(pod: PodFacts, node: NodeInfo) -> str | None:
    for name, amount in pod.requests.items():
        if amount and node.requested[name] + amount > node.allocatable.get(name, 0):
            return "Too many pods" if name == PODS else f"Insufficient {name}"
    return None


def ports(pod: PodFacts, node: NodeInfo) -> str | None:
    if any(node.ports[p] > 0 for p in pod.ports):
        return "node(s) didn't have free ports for the requested pod ports"
    return None


def anti_affinity(pod: PodFacts, node: NodeInfo, nodes: dict[str, NodeInfo]) -> str | None:
    """Required pod anti-affinity: no pod matching a term's selector in the node's topology
    domain (the node itself for kubernetes.io/hostname, else every node sharing the label)."""
    for selector, key in pod.anti_affinity:
        domain = [node] if key == HOSTNAME else [
            n for n in nodes.values() if key in node.labels and n.labels.get(key) == node.labels[key]]
        if any(selector.matches(labels) for n in domain for labels in n.pod_labels.values()):
            return "node(s) didn't match pod anti-affinity rules"
    return None


FILTERS: tuple[Filter, ...] = (unschedulable, node_affinity, taints, resources, ports)
