"""The scheduler as a controller: pods bound to nodes through the registry, an unschedulable
pod's condition, and its retry when a node comes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from orchestrator_fixture import eventually, running

from skiff.orchestrator.api.kinds import BY_KIND
from skiff.orchestrator.api.registry import Registry
from skiff.orchestrator.scheduler.loop import Scheduler

NODES, PODS = BY_KIND["Node"], BY_KIND["Pod"]


@pytest.fixture
def cluster(registry: Registry) -> Iterator[Registry]:
    with running(registry, (NODES, PODS), lambda inf: [Scheduler(registry, inf["Node"], inf["Pod"])]):
        yield registry


def node(name: str, cpu: str) -> dict[str, Any]:
    return {"metadata": {"name": name},
            "status": {"allocatable": {"cpu": cpu, "memory": "4Gi", "pods": "110"},
                       "conditions": [{"type": "Ready", "status": "True"}]}}


def pod(name: str, cpu: str) -> dict[str, Any]:
    return {"metadata": {"name": name},
            "spec": {"containers": [{"name": "c", "image": "busybox", "resources": {"requests": {"cpu": cpu}}}]}}


def node_of(registry: Registry, name: str) -> str:
    return str(registry.get(PODS, "default", name)["spec"].get("nodeName") or "")


def test_pods_are_bound_within_what_nodes_can_give(cluster: Registry) -> None:
    cluster.create(NODES, node("n1", "1"))
    cluster.create(NODES, node("n2", "1"))
    for i in range(4):
        cluster.create(PODS, pod(f"p{i}", "500m"))
    eventually(lambda: all(node_of(cluster, f"p{i}") for i in range(4)))
    placed = [node_of(cluster, f"p{i}") for i in range(4)]
    assert sorted(placed) == ["n1", "n1", "n2", "n2"]
    assert cluster.get(PODS, "default", "p0")["status"]["conditions"] == [{"type": "PodScheduled", "status": "True"}]

    cluster.create(PODS, pod("big", "2"))
    def unschedulable() -> bool:
        conditions = (cluster.get(PODS, "default", "big").get("status") or {}).get("conditions") or []
        return any(c.get("reason") == "Unschedulable" for c in conditions)
    eventually(unschedulable)
    condition = cluster.get(PODS, "default", "big")["status"]["conditions"][0]
    assert condition["message"] == "0/2 nodes are available: 2 Insufficient cpu."
    cluster.create(NODES, node("n3", "4"))
    eventually(lambda: node_of(cluster, "big") == "n3")
