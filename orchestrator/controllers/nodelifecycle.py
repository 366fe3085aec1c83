"""The node lifecycle controller (kubernetes `pkg/controller/nodelifecycle/`): a node whose agent
has not posted its Ready condition for `grace` seconds is marked Ready=Unknown ("Kubelet
stopped posting node status.") and tainted unreachable; once it has been so for `eviction`
seconds, its pods are deleted so that their controllers make them again on other nodes
(DaemonSet pods stay: they belong to that node). A heartbeat lifts the taint."""

from __future__ import annotations

import copy
import datetime
import logging
from typing import Any

from skiff.errors import Aborted, NotFound
from skiff.orchestrator.api.kinds import BY_KIND
from skiff.orchestrator.api.registry import Api, now
from skiff.orchestrator.controllers.base import controller_of
from skiff.orchestrator.informer import Informer
from skiff.orchestrator.periodic import Periodic

log = logging.getLogger("skiff.orchestrator")
NODES, PODS = BY_KIND["Node"], BY_KIND["Pod"]
UNREACHABLE = {"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"}
GRACE = 40.0       # kube-controller-manager's node-monitor-grace-period
EVICTION = 60.0    # how long a pod stays on an unreachable node (Kubernetes' default toleration: 300 s)


def parse_time(text: str) -> float:
    return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC).timestamp()


class NodeLifecycleController:
    def __init__(self, registry: Api, nodes: Informer, pods: Informer, *, grace: float = GRACE,
                 eviction: float = EVICTION, period: float = 5.0) -> None:
        self.registry = registry
        self.nodes = nodes
        self.pods = pods
        self.grace, self.eviction = grace, eviction
        self._loop = Periodic("node-lifecycle", period, self._round)

    def start(self) -> None:
        self._loop.start()

    def stop(self) -> None:
        self._loop.stop()

    def _round(self) -> None:
        for node in self.nodes.items():
            try:
                self.check(node, datetime.datetime.now(datetime.UTC).timestamp())
            except Exception as e:  # the other nodes all the same; this one again next round
                log.warning("node lifecycle: %s: %s", node["metadata"]["name"], e)

    def check(self, node: dict[str, Any], at: float) -> None:
        ready = next((c for c in (node.get("status") or {}).get("conditions") or [] if c.get("type") == "Ready"), None)
        if ready is None:
            return  # not registered by an agent yet
        heartbeat = parse_time(ready.get("lastHeartbeatTime") or node["metadata"]["creationTimestamp"])
        tainted = any(t.get("key") == UNREACHABLE["key"] for t in (node.get("spec") or {}).get("taints") or [])
        if at - heartbeat <= self.grace:
            if tainted and ready.get("status") == "True":
                self._update(node, ready=None, taint=False)
            return
        if ready.get("status") != "Unknown" or not tainted:
            self._update(node, ready={"type": "Ready", "status": "Unknown", "reason": "NodeStatusUnknown",
                                      "message": "Kubelet stopped posting node status.",
                                      "lastHeartbeatTime": ready.get("lastHeartbeatTime"),
                                      "lastTransitionTime": now()}, taint=True)
            return
        if at - parse_time(ready.get("lastTransitionTime") or now()) >= self.eviction:
            self._evict(node["metadata"]["name"])

    def _update(self, node: dict[str, Any], *, ready: dict[str, Any] | None, taint: bool) -> None:
        changed = copy.deepcopy(node)
        spec = changed.setdefault("spec", {})
        taints = [t for t in spec.get("taints") or [] if t.get("key") != UNREACHABLE["key"]]
        spec["taints"] = [*taints, {**UNREACHABLE, "timeAdded": now()}] if taint else taints
        if ready is not None:
            conditions = changed.setdefault("status", {}).setdefault("conditions", [])
            changed["status"]["conditions"] = [c for c in conditions if c.get("type") != "Ready"] + [ready]
        self.registry.update(NODES, changed)

    def _evict(self, node_name: str) -> None:
        for pod in self.pods.items():
            if pod["spec"].get("nodeName") != node_name or (controller_of(pod) or {}).get("kind") == "DaemonSet":
                continue
            try:
                # At once: its agent does not answer, so a graceful delete would leave the pod
                # Terminating until the node came back or went (PodGC's force delete).
                self.registry.delete(PODS, pod["metadata"]["namespace"], pod["metadata"]["name"], grace=0,
                                     uid=pod["metadata"]["uid"])
            except (NotFound, Aborted):   # gone, or made again meanwhile
                pass
