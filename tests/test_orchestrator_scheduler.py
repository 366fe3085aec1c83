"""Scheduling decisions on simulated nodes: each filter, the scores, the reasons a pod cannot
be placed, and the bounded search on many nodes."""

from __future__ import annotations

from typing import Any

from skiff.orchestrator.scheduler.decide import Decider, feasible_to_find
from skiff.orchestrator.scheduler.nodes import NodeInfo


def node(name: str, *, cpu: str = "2", memory: str = "4Gi", pods: int = 110, ready: bool = True,
         taints: list[dict[str, str]] | None = None, unschedulable: bool = False, **labels: str) -> NodeInfo:
    return NodeInfo.of({"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, **labels}},
                        "spec": {"taints": taints or [], "unschedulable": unschedulable},
                        "status": {"allocatable": {"cpu": cpu, "memory": memory, "pods": str(pods)},
                                   "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}})


def pod(name: str = "p", *, cpu: str = "100m", memory: str = "64Mi", owner: str = "", host_port: int = 0,
        **spec: Any) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "c", "image": "busybox",
                                 "resources": {"requests": {"cpu": cpu, "memory": memory}}}
    if host_port:
        container["ports"] = [{"containerPort": 80, "hostPort": host_port}]
    metadata: dict[str, Any] = {"name": name, "labels": {"app": "web"}}
    if owner:
        metadata["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": owner,
                                        "controller": True}]
    return {"metadata": metadata, "spec": {"containers": [container], **spec}}


def nodes(*infos: NodeInfo) -> dict[str, NodeInfo]:
    return {n.name: n for n in infos}


def test_the_least_allocated_node_wins_and_replicas_spread() -> None:
    cluster = nodes(node("a"), node("b"), node("c"))
    cluster["a"].add("x", pod(cpu="1"))
    decider = Decider()
    placed = []
    for i in range(6):
        p = pod(f"web-{i}", owner="rs-1")
        chosen = decider.decide(p, cluster).node
        assert chosen is not None
        cluster[chosen].add(f"web-{i}", p)
        placed.append(chosen)
    assert sorted(placed.count(n) for n in "abc") == [2, 2, 2]
    assert placed[0] in ("b", "c")


def test_no_node_fits_and_the_message_says_why() -> None:
    cluster = nodes(node("a", cpu="500m"), node("b", cpu="500m"),
                    node("c", taints=[{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]),
                    node("d", ready=False), node("e", unschedulable=True))
    decision = Decider().decide(pod(cpu="1"), cluster)
    assert decision.node is None
    assert decision.message == ("0/5 nodes are available: 2 Insufficient cpu, 1 node(s) had untolerated taint "
                                "{dedicated: db}, 1 node(s) were not ready, 1 node(s) were unschedulable.")
    tolerant = pod(cpu="1", tolerations=[{"key": "dedicated", "operator": "Equal", "value": "db",
                                          "effect": "NoSchedule"}])
    assert Decider().decide(tolerant, cluster).node == "c"
    assert Decider().decide(pod(), {}).message == "0/0 nodes are available: no nodes registered."


def test_selectors_affinity_ports_and_anti_affinity() -> None:
    cluster = nodes(node("a", disk="ssd", zone="z1"), node("b", disk="hdd", zone="z1"), node("c", zone="z2"))
    assert Decider().decide(pod(nodeSelector={"disk": "hdd"}), cluster).node == "b"
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["z2"]}]}]}}}
    assert Decider().decide(pod(affinity=affinity), cluster).node == "c"
    cluster["a"].add("h", pod(host_port=8080))
    cluster["b"].add("h2", pod(host_port=8080))
    assert Decider().decide(pod(host_port=8080), cluster).node == "c"
    assert "didn't have free ports" in Decider().decide(pod(host_port=8080, nodeSelector={"zone": "z1"}),
                                                         cluster).message
    anti = {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "zone"}]}}
    assert Decider().decide(pod(affinity=anti), cluster).node == "c"  # the web pods are all in zone z1
    cluster["c"].add("w", pod())
    assert "didn't match pod anti-affinity rules" in Decider().decide(pod(affinity=anti), cluster).message
    assert Decider().decide(pod(affinity=anti), nodes(node("a", zone="z1"), node("b", zone="z2"))).node == "a"


def test_too_many_pods() -> None:
    cluster = nodes(node("a", pods=1))
    cluster["a"].add("x", pod())
    assert Decider().decide(pod(), cluster).message == "0/1 nodes are available: 1 Too many pods."
    cluster["a"].remove("x")
    assert Decider().decide(pod(), cluster).node == "a"


def test_many_nodes_are_searched_in_turns() -> None:
    assert feasible_to_find(50) == 50 and feasible_to_find(1000) == 420 and feasible_to_find(10000) == 500
    cluster = {f"n{i:04d}": node(f"n{i:04d}") for i in range(1000)}
    decider = Decider()
    first = decider.decide(pod("a"), cluster).node
    second = decider.decide(pod("b"), cluster).node
    assert first == "n0000" and second == "n0420"  # the second search starts where the first stopped
