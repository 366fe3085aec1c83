"""The node lifecycle controller's decisions at given times: a node silent past the grace
period goes Ready=Unknown and tainted, its pods go after the eviction delay (not its daemon
pods), and a heartbeat brings it back."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from orchestrator_fixture import running

from skiff.orchestrator.api.kinds import BY_KIND
from skiff.orchestrator.api.registry import Registry
from skiff.orchestrator.controllers.nodelifecycle import NodeLifecycleController, parse_time

NODES, PODS = BY_KIND["Node"], BY_KIND["Pod"]
T0 = "2026-01-01T00:00:00Z"


@pytest.fixture
def setup(registry: Registry) -> Iterator[tuple[Registry, NodeLifecycleController]]:
    with running(registry, (NODES, PODS), lambda inf: []) as inf:
        yield registry, NodeLifecycleController(registry, inf["Node"], inf["Pod"], grace=40, eviction=60)


def pod(name: str, daemon: bool = False) -> dict[str, Any]:
    refs = [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "d", "uid": "u", "controller": True}] if daemon else []
    return {"metadata": {"name": name, "ownerReferences": refs},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "busybox"}]}}


def fresh(registry: Registry, name: str) -> dict[str, Any]:
    time.sleep(0.1)  # the informer's cache
    return registry.get(NODES, "", name)


def test_a_silent_node_goes_unknown_then_loses_its_pods(setup: tuple[Registry, NodeLifecycleController]) -> None:
    registry, controller = setup
    registry.create(NODES, {"metadata": {"name": "n1"}, "status": {"conditions": [
        {"type": "Ready", "status": "True", "lastHeartbeatTime": T0}]}})
    registry.create(PODS, pod("app"))
    registry.create(PODS, pod("daemon", daemon=True))
    start = parse_time(T0)
    controller.check(fresh(registry, "n1"), start + 30)
    assert fresh(registry, "n1")["status"]["conditions"][0]["status"] == "True"
    controller.check(fresh(registry, "n1"), start + 41)
    node = fresh(registry, "n1")
    ready = node["status"]["conditions"][0]
    assert (ready["status"], ready["reason"]) == ("Unknown", "NodeStatusUnknown")
    assert [t["key"] for t in node["spec"]["taints"]] == ["node.kubernetes.io/unreachable"]
    controller.check(node, parse_time(ready["lastTransitionTime"]) + 30)
    assert len(registry.list(PODS).items) == 2
    controller.check(fresh(registry, "n1"), parse_time(ready["lastTransitionTime"]) + 61)
    assert [p["metadata"]["name"] for p in registry.list(PODS).items] == ["daemon"]

    back = fresh(registry, "n1")
    beat = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    back["status"]["conditions"] = [{"type": "Ready", "status": "True", "lastHeartbeatTime": beat}]
    registry.update(NODES, back)
    controller.check(fresh(registry, "n1"), parse_time(beat) + 1)
    assert fresh(registry, "n1")["spec"]["taints"] == []
