"""How good a feasible node is for a pod, 0 to 100 each, summed: the least allocated node
first (kube-scheduler's NodeResourcesFit LeastAllocated, CPU and memory alike), and the node
with the fewest pods of the same controller (its default topology spreading by hostname)."""

from __future__ import annotations

from skiff.orchestrator.scheduler.filters import PodFacts
from skiff.orchestrator.scheduler.nodes import CPU, MEMORY, NodeInfo


def least_allocated(pod: PodFacts, node: NodeInfo) -> float:
    shares = []
    for name in (CPU, MEMORY):
        capacity = node.allocatable.get(name, 0)
        if capacity > 0:
            shares.append(max(0.0, (capacity - node.requested[name] - pod.requests[name]) / capacity))
    return 100 * sum(shares) / len(shares) if shares else 0.0


def spread(pod: PodFacts, node: NodeInfo, most: int) -> float:
    """`most`: the most pods of the controller on any node scored."""
    if pod.owner is None or most == 0:
        return 100.0
    return 100 * (1 - node.owners[pod.owner] / (most + 1))
