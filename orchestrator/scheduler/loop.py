"""The scheduler as a controller: each pod without a node is decided (decide.py) and bound by
setting spec.nodeName; a pod no node can take gets the PodScheduled condition saying why, and
is tried again when a node or a pod changes, as kube-scheduler retries unschedulable pods.

A bound pod is counted on its node at once ("assumed"), before the informer shows the
binding: the next decision must not give the same room to another pod."""

from __future__ import annotations

import copy
import threading
from typing import Any

from skiff.orchestrator.api.kinds import BY_KIND
from skiff.orchestrator.api.registry import Api
from skiff.orchestrator.controllers.base import Controller, is_active
from skiff.orchestrator.informer import Informer
from skiff.orchestrator.scheduler.decide import Decider
from skiff.orchestrator.scheduler.nodes import NodeInfo

PODS = BY_KIND["Pod"]


class Scheduler(Controller):
    name = "scheduler"

    def __init__(self, registry: Api, nodes: Informer, pods: Informer) -> None:
        super().__init__()
        self.registry = registry
        self.nodes = nodes
        self.pods = pods
        self.decider = Decider()
        self._lock = threading.Lock()
        self._infos: dict[str, NodeInfo] = {}
        self._unschedulable: set[str] = set()
        nodes.on_change(self._node_changed)
        pods.on_change(self._pod_changed)

    def _node_changed(self, key: str, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        with self._lock:
            previous = self._infos.pop(key, None)
            if new is not None:
                info = NodeInfo.of(new)
                for pod_key, pod in (previous.pods if previous else {}).items():
                    info.add(pod_key, pod)
                self._infos[key] = info
        self._retry()

    def _pod_changed(self, key: str, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        with self._lock:
            for info in self._infos.values():
                if key in info.pods and (new is None or info.name != _node_of(new) or not is_active(new)):
                    info.remove(key)
            if new is not None and _node_of(new) and is_active(new) and _node_of(new) in self._infos:
                self._infos[_node_of(new)].add(key, new)
        if new is not None and not _node_of(new) and is_active(new):
            self.queue.add(key)
        elif new is None or not is_active(new):
            self._retry()  # room was freed

    def _retry(self) -> None:
        with self._lock:
            waiting, self._unschedulable = self._unschedulable, set()
        for key in waiting:
            self.queue.add(key)

    def sync(self, key: str) -> None:
        pod = self.pods.get(key)
        if pod is None or _node_of(pod) or not is_active(pod):
            return
        with self._lock:
            decision = self.decider.decide(pod, self._infos)
            if decision.node is not None:
                self._infos[decision.node].add(key, {**pod, "spec": {**pod["spec"], "nodeName": decision.node}})
        if decision.node is None:
            with self._lock:
                self._unschedulable.add(key)
            self._set_condition(pod, "False", "Unschedulable", decision.message)
            return
        bound = copy.deepcopy(pod)
        bound["spec"]["nodeName"] = decision.node
        _set(bound, "True", "", "")
        try:
            self.registry.update(PODS, bound)
        except Exception:
            with self._lock:  # not bound after all: the room is free again
                self._infos[decision.node].remove(key)
            raise

    def _set_condition(self, pod: dict[str, Any], status: str, reason: str, message: str) -> None:
        changed = copy.deepcopy(pod)
        if _set(changed, status, reason, message):
            self.registry.update(PODS, changed)


def _node_of(pod: dict[str, Any]) -> str:
    return str((pod.get("spec") or {}).get("nodeName") or "")


def _set(pod: dict[str, Any], status: str, reason: str, message: str) -> bool:
    """Set the PodScheduled condition; False when it already said so."""
    conditions = pod.setdefault("status", {}).setdefault("conditions", [])
    wanted = {"type": "PodScheduled", "status": status, **({"reason": reason, "message": message} if reason else {})}
    for n, c in enumerate(conditions):
        if c.get("type") == "PodScheduled":
            if all(c.get(k) == v for k, v in wanted.items()) and (reason or "reason" not in c):
                return False
            conditions[n] = wanted
            return True
    conditions.append(wanted)
    return True
