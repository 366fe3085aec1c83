"""The ReplicaSet controller (kubernetes `pkg/controller/replicaset/replica_set.go`): as many
active pods as spec.replicas, made from the template and owned by the ReplicaSet; orphans its
selector matches are adopted; status says how many there are and how many are ready.

Deleting, it takes first the pods that are not scheduled, then the not ready, then the
newest: what costs the least to lose."""

from __future__ import annotations

import copy
from typing import Any

from skiff.errors import NotFound
from skiff.orchestrator.api.kinds import BY_KIND
from skiff.orchestrator.api.registry import Api
from skiff.orchestrator.controllers.base import (
    Controller, Expectations, controller_of, create_pods, is_active, is_ready, owner_reference, pod_from_template,
)
from skiff.orchestrator.informer import Informer, object_key
from skiff.orchestrator.labels import from_label_selector

REPLICA_SETS, PODS = BY_KIND["ReplicaSet"], BY_KIND["Pod"]


class ReplicaSetController(Controller):
    name = "replicaset"

    def __init__(self, registry: Api, replica_sets: Informer, pods: Informer) -> None:
        super().__init__()
        self.registry = registry
        self.replica_sets = replica_sets
        self.pods = pods
        self.expectations = Expectations()
        replica_sets.on_change(lambda key, old, new: self.queue.add(key))
        pods.on_change(self._pod_changed)

    def _pod_changed(self, key: str, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        if not self.owner_event("ReplicaSet", old, new, self.expectations) and new is not None:
            namespace = new["metadata"]["namespace"]
            for rs in self.replica_sets.items():  # an orphan: the ReplicaSets that would adopt it
                if rs["metadata"]["namespace"] == namespace and _selects(rs, new):
                    self.queue.add(object_key(rs))

    def sync(self, key: str) -> None:
        rs = self.replica_sets.get(key)
        if rs is None:
            self.expectations.forget(key)
            return
        if not self.expectations.satisfied(key):
            return  # the cache has not seen our last creates or deletes yet: their events requeue us
        namespace = rs["metadata"]["namespace"]
        mine = [p for p in self.pods.items()
                if p["metadata"]["namespace"] == namespace and self._owns_or_adopts(rs, p)]
        active = [p for p in mine if is_active(p)]
        wanted = int(rs["spec"].get("replicas", 1))
        if len(active) < wanted:
            create_pods(self.registry, key, [pod_from_template(rs) for _ in range(wanted - len(active))],
                        self.expectations)
        elif len(active) > wanted:
            self._delete(sorted(active, key=_deletion_order)[: len(active) - wanted], key)
        self._write_status(rs, active)

    def _owns_or_adopts(self, rs: dict[str, Any], pod: dict[str, Any]) -> bool:
        ref = controller_of(pod)
        if ref is not None:
            return bool(ref.get("uid") == rs["metadata"]["uid"])
        if not is_active(pod) or not _selects(rs, pod):
            return False
        adopted = copy.deepcopy(pod)
        adopted["metadata"].setdefault("ownerReferences", []).append(owner_reference(rs))
        self.registry.update(PODS, adopted)
        return True

    def _delete(self, pods: list[dict[str, Any]], key: str) -> None:
        self.expectations.expect(key, deletes=len(pods))
        for pod in pods:
            try:
                self.registry.delete(PODS, pod["metadata"]["namespace"], pod["metadata"]["name"])
            except NotFound:
                self.expectations.observed(key, deleted=1)

    def _write_status(self, rs: dict[str, Any], active: list[dict[str, Any]]) -> None:
        ready = sum(1 for p in active if is_ready(p))
        status = {"replicas": len(active), "fullyLabeledReplicas": len(active), "readyReplicas": ready,
                  "availableReplicas": ready, "observedGeneration": rs["metadata"].get("generation", 1)}
        if rs.get("status") == status:
            return
        self.registry.update(REPLICA_SETS, {**rs, "status": status})


def _selects(rs: dict[str, Any], pod: dict[str, Any]) -> bool:
    return from_label_selector(rs["spec"]["selector"]).matches(pod["metadata"].get("labels"))


def _deletion_order(pod: dict[str, Any]) -> tuple[bool, bool, str]:
    scheduled = bool((pod.get("spec") or {}).get("nodeName"))
    created = pod["metadata"].get("creationTimestamp", "")
    # unscheduled first, then not ready, then the newest (a reversed timestamp sorts first)
    return scheduled, is_ready(pod), "".join(chr(0x10FFFF - ord(ch)) for ch in created)
