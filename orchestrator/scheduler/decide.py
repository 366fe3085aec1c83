"""One scheduling decision: filter, score, pick; or the reasons no node can take the pod.

With many nodes, kube-scheduler stops filtering once it has enough feasible nodes
(percentageOfNodesToScore: 50% less 1% per 125 nodes, at least 5% and 100 nodes), starting
each pod where the last one stopped, so that every node gets its turn: scoring all 1,000 nodes
for each pod would be most of the cost, for little better a choice.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from skiff.orchestrator.scheduler import filters, scores
from skiff.orchestrator.scheduler.nodes import NodeInfo

MIN_FEASIBLE = 100


@dataclass(frozen=True, slots=True)
class Decision:
    node: str | None          # None: unschedulable
    message: str = ""         # why not, as the pod's PodScheduled condition says it


def feasible_to_find(total: int) -> int:
    if total <= MIN_FEASIBLE:
        return total
    percent = max(5, 50 - total // 125)
    return max(MIN_FEASIBLE, total * percent // 100)


class Decider:
    def __init__(self) -> None:
        self._next = 0   # where the next search starts

    def decide(self, pod: dict[str, Any], nodes: dict[str, NodeInfo]) -> Decision:
        names = sorted(nodes)
        if not names:
            return Decision(None, "0/0 nodes are available: no nodes registered.")
        facts = filters.PodFacts.of(pod)
        wanted = feasible_to_find(len(names))
        feasible: list[NodeInfo] = []
        reasons: Counter[str] = Counter()
        start = self._next % len(names)
        checked = 0
        for i in range(len(names)):
            node = nodes[names[(start + i) % len(names)]]
            checked += 1
            reason = next((r for f in filters.FILTERS if (r := f(facts, node)) is not None), None)
            if reason is None and facts.anti_affinity:
                reason = filters.anti_affinity(facts, node, nodes)
            if reason is None:
                feasible.append(node)
                if len(feasible) >= wanted:
                    break
            else:
                reasons[reason] += 1
        self._next = start + checked
        if not feasible:
            detail = ", ".join(f"{n} {r}" for r, n in sorted(reasons.items(), key=lambda x: (-x[1], x[0])))
            return Decision(None, f"0/{len(names)} nodes are available: {detail}.")
        most = max((n.owners[facts.owner] for n in feasible), default=0) if facts.owner else 0
        # max keeps the first of equals: in name order, a run is reproducible
        best = max(sorted(feasible, key=lambda n: n.name),
                   key=lambda n: scores.least_allocated(facts, n) + scores.spread(facts, n, most))
        return Decision(best.name)
