"""The Endpoints and DaemonSet controllers, in process: a Service's ready and not-ready pod
addresses with named target ports, and one daemon pod per eligible node as nodes come and go."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from orchestrator_fixture import eventually, running

from skiff.orchestrator.api.kinds import BY_KIND
from skiff.orchestrator.api.registry import Registry
from skiff.orchestrator.controllers.daemonset import DaemonSetController
from skiff.orchestrator.controllers.endpoints import EndpointsController
from skiff.orchestrator.controllers.garbage import GarbageCollector

PODS, SVC, EP, DS, NODES = (BY_KIND[k] for k in ("Pod", "Service", "Endpoints", "DaemonSet", "Node"))


@pytest.fixture
def cluster(registry: Registry) -> Iterator[Registry]:
    with running(registry, (PODS, SVC, EP, DS, NODES), lambda inf: [
            EndpointsController(registry, inf["Service"], inf["Pod"], inf["Endpoints"]),
            DaemonSetController(registry, inf["DaemonSet"], inf["Pod"], inf["Node"]),
            GarbageCollector(registry, inf)]):   # the pods of a node that goes: PodGC's
        yield registry


def web_pod(name: str, ip: str, ready: bool) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": {"app": "web"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "httpd", "image": "busybox",
                                                       "ports": [{"name": "http", "containerPort": 8080}]}]},
            "status": {"phase": "Running", "podIP": ip,
                       "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


def test_endpoints_follow_the_selected_pods(cluster: Registry) -> None:
    cluster.create(NODES, node("n1"))   # the pods' node: without it, they are PodGC's orphans
    cluster.create(SVC, {"metadata": {"name": "web"},
                         "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": "http"}]}})
    cluster.create(PODS, web_pod("a", "10.0.0.2", True))
    cluster.create(PODS, web_pod("b", "10.0.0.3", False))
    cluster.create(PODS, {**web_pod("c", "10.0.0.4", True), "metadata": {"name": "c", "labels": {"app": "db"}}})

    def subsets() -> list[dict[str, Any]]:
        try:
            return list(cluster.get(EP, "default", "web").get("subsets") or [])
        except Exception:
            return []
    eventually(lambda: len(subsets()) == 1 and len(subsets()[0].get("notReadyAddresses", [])) == 1)
    subset = subsets()[0]
    assert subset["ports"] == [{"name": "", "port": 8080, "protocol": "TCP"}]
    assert [a["ip"] for a in subset["addresses"]] == ["10.0.0.2"]
    assert [a["targetRef"]["name"] for a in subset["notReadyAddresses"]] == ["b"]
    cluster.delete(PODS, "default", "a")   # Terminating (no agent finishes it): out of the endpoints at once
    eventually(lambda: "addresses" not in subsets()[0])
    cluster.delete(SVC, "default", "web")
    eventually(lambda: not cluster.list(EP).items)


def node(name: str, **labels: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": labels},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}}


def test_a_daemon_pod_on_every_eligible_node(cluster: Registry) -> None:
    cluster.create(NODES, node("n1", role="edge"))
    cluster.create(NODES, node("n2", role="edge"))
    cluster.create(NODES, node("n3", role="core"))
    cluster.create(DS, {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "agent"},
                        "spec": {"selector": {"matchLabels": {"app": "agent"}},
                                 "template": {"metadata": {"labels": {"app": "agent"}},
                                              "spec": {"nodeSelector": {"role": "edge"},
                                                       "containers": [{"name": "c", "image": "busybox"}]}}}})

    def placed() -> list[str]:
        return sorted(p["spec"]["nodeName"] for p in cluster.list(PODS).items)
    eventually(lambda: placed() == ["n1", "n2"])
    cluster.create(NODES, node("n4", role="edge"))
    eventually(lambda: placed() == ["n1", "n2", "n4"])
    cluster.delete(NODES, "", "n1")
    eventually(lambda: placed() == ["n2", "n4"])
    eventually(lambda: (cluster.get(DS, "default", "agent").get("status") or {}).get("desiredNumberScheduled") == 2)
