"""The DaemonSet controller (kubernetes `pkg/controller/daemon/`): one pod of the template on
every node that can take it (ready, matching the template's nodeSelector, its taints
tolerated), bound to that node by the controller itself, as Kubernetes does with node
affinity; the pod of a node that goes or no longer fits is removed, and a finished one is
replaced."""

from __future__ import annotations

from typing import Any

from skiff.errors import NotFound
from skiff.orchestrator.api.kinds import BY_KIND
from skiff.orchestrator.api.registry import Api
from skiff.orchestrator.controllers.base import (
    Controller, Expectations, controller_of, create_pods, is_active, is_ready, pod_from_template,
)
from skiff.orchestrator.informer import Informer, object_key
from skiff.orchestrator.scheduler import filters
from skiff.orchestrator.scheduler.nodes import NodeInfo

DAEMON_SETS, PODS = BY_KIND["DaemonSet"], BY_KIND["Pod"]


class DaemonSetController(Controller):
    name = "daemonset"

    def __init__(self, registry: Api, daemon_sets: Informer, pods: Informer, nodes: Informer) -> None:
        super().__init__()
        self.registry = registry
        self.daemon_sets = daemon_sets
        self.pods = pods
        self.nodes = nodes
        self.expectations = Expectations()
        daemon_sets.on_change(lambda key, old, new: self.queue.add(key))
        nodes.on_change(lambda key, old, new: self._every())
        pods.on_change(self._pod_changed)

    def _every(self) -> None:
        for ds in self.daemon_sets.items():
            self.queue.add(object_key(ds))

    def _pod_changed(self, key: str, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        self.owner_event("DaemonSet", old, new, self.expectations)

    def sync(self, key: str) -> None:
        ds = self.daemon_sets.get(key)
        if ds is None:
            self.expectations.forget(key)
            return
        if not self.expectations.satisfied(key):
            return
        template = ds["spec"]["template"]
        facts = filters.PodFacts.of(template)
        eligible = {n["metadata"]["name"] for n in self.nodes.items()
                    if all(f(facts, NodeInfo.of(n)) is None for f in (filters.unschedulable, filters.node_affinity,
                                                                      filters.taints))}
        mine = [p for p in self.pods.items() if (controller_of(p) or {}).get("uid") == ds["metadata"]["uid"]]
        by_node: dict[str, list[dict[str, Any]]] = {}
        for pod in mine:
            by_node.setdefault(pod["spec"].get("nodeName", ""), []).append(pod)
        doomed = [p for node, pods in by_node.items() for p in pods
                  if node not in eligible or not is_active(p)]
        doomed += [p for node, pods in by_node.items() if node in eligible
                   for p in sorted((p for p in pods if is_active(p)), key=lambda p: p["metadata"]["name"])[1:]]
        missing = sorted(node for node in eligible if not any(is_active(p) for p in by_node.get(node, [])))
        for pod in doomed:
            try:
                self.registry.delete(PODS, pod["metadata"]["namespace"], pod["metadata"]["name"])
            except NotFound:
                pass
        create_pods(self.registry, key, [pod_from_template(ds, node=node) for node in missing], self.expectations)
        active = [p for p in mine if is_active(p) and p not in doomed]
        status = {"desiredNumberScheduled": len(eligible), "currentNumberScheduled": len(active),
                  "numberReady": sum(1 for p in active if is_ready(p)),
                  "numberMisscheduled": sum(1 for p in mine if is_active(p) and p["spec"].get("nodeName") not in eligible),
                  "observedGeneration": ds["metadata"].get("generation", 1)}
        if ds.get("status") != status:
            self.registry.update(DAEMON_SETS, {**ds, "status": status})
