"""The Deployment controller (kubernetes `pkg/controller/deployment/`): one ReplicaSet per
version of the pod template, named and labelled by the template's hash, and a rollout from
the old ones to the new one.

    RollingUpdate  the new ReplicaSet grows while all of them stay within replicas + maxSurge
                   pods; the old ones shrink while replicas - maxUnavailable stay available
                   (surge rounds up, unavailable down, as Kubernetes resolves percentages)
    Recreate       the old ones go to 0 first; the new one grows once their pods are gone

Each ReplicaSet carries its revision (`deployment.kubernetes.io/revision`); the newest
revisionHistoryLimit old ones are kept at 0 replicas, for `rollout undo`, which puts an old
template back (a new revision of it)."""

from __future__ import annotations

import copy
import hashlib
import json
import math
from typing import Any

from skiff.errors import AlreadyExists, NotFound
from skiff.orchestrator.api.kinds import BY_KIND
from skiff.orchestrator.api.registry import Api
from skiff.orchestrator.controllers.base import Controller, controller_of, owner_reference
from skiff.orchestrator.informer import Informer

DEPLOYMENTS, REPLICA_SETS = BY_KIND["Deployment"], BY_KIND["ReplicaSet"]
HASH_LABEL = "pod-template-hash"
REVISION = "deployment.kubernetes.io/revision"
DEFAULT_HISTORY = 10


def template_hash(template: dict[str, Any]) -> str:
    """A stable name for a pod template (without the hash label itself)."""
    plain = copy.deepcopy(template)
    (plain.get("metadata") or {}).get("labels", {}).pop(HASH_LABEL, None)
    return hashlib.sha256(json.dumps(plain, sort_keys=True).encode()).hexdigest()[:10]


def revision(obj: dict[str, Any]) -> int:
    try:
        return int((obj["metadata"].get("annotations") or {}).get(REVISION, "0"))
    except ValueError:
        return 0


def resolve(value: Any, total: int, *, round_up: bool) -> int:
    """maxSurge / maxUnavailable: an integer, or a percentage of `total`."""
    if isinstance(value, str) and value.endswith("%"):
        share = total * int(value[:-1]) / 100
        return math.ceil(share) if round_up else math.floor(share)
    return int(value)


class DeploymentController(Controller):
    name = "deployment"

    def __init__(self, registry: Api, deployments: Informer, replica_sets: Informer) -> None:
        super().__init__()
        self.registry = registry
        self.deployments = deployments
        self.replica_sets = replica_sets
        deployments.on_change(lambda key, old, new: self.queue.add(key))
        replica_sets.on_change(self._replica_set_changed)

    def _replica_set_changed(self, key: str, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        rs = new or old
        assert rs is not None
        ref = controller_of(rs)
        if ref is not None and ref.get("kind") == "Deployment":
            self.queue.add(f"{rs['metadata']['namespace']}/{ref['name']}")

    def sync(self, key: str) -> None:
        d = self.deployments.get(key)
        if d is None:
            return
        owned = [rs for rs in self.replica_sets.items()
                 if rs["metadata"]["namespace"] == d["metadata"]["namespace"]
                 and (controller_of(rs) or {}).get("uid") == d["metadata"]["uid"]]
        new = self._new_replica_set(d, owned)
        old = sorted((rs for rs in owned if rs is not new), key=revision)
        desired = int(d["spec"].get("replicas", 1))
        strategy = d["spec"].get("strategy") or {}
        if strategy.get("type") == "Recreate":
            self._recreate(new, old, desired)
        else:
            rolling = strategy.get("rollingUpdate") or {}
            surge = resolve(rolling.get("maxSurge", "25%"), desired, round_up=True)
            unavailable = resolve(rolling.get("maxUnavailable", "25%"), desired, round_up=False)
            if surge == 0 and unavailable == 0:
                unavailable = 1
            self._roll(new, old, desired, surge, unavailable)
        self._clean_up(d, old)
        self._write_status(d, new, old)

    def _new_replica_set(self, d: dict[str, Any], owned: list[dict[str, Any]]) -> dict[str, Any]:
        template = d["spec"]["template"]
        digest = template_hash(template)
        for rs in owned:
            if rs["metadata"].get("labels", {}).get(HASH_LABEL) == digest:
                if revision(rs) < max((revision(o) for o in owned), default=0):  # an undo: it is new again
                    return self._set_revision(d, rs, max(revision(o) for o in owned) + 1)
                return self._set_revision(d, rs, revision(rs))
        labeled = copy.deepcopy(template)
        labeled.setdefault("metadata", {}).setdefault("labels", {})[HASH_LABEL] = digest
        selector = copy.deepcopy(d["spec"]["selector"])
        selector.setdefault("matchLabels", {})[HASH_LABEL] = digest
        next_revision = max((revision(o) for o in owned), default=0) + 1
        rs = {"apiVersion": "apps/v1", "kind": "ReplicaSet",
              "metadata": {"name": f"{d['metadata']['name']}-{digest}", "namespace": d["metadata"]["namespace"],
                           "labels": dict(labeled["metadata"]["labels"]),
                           "annotations": {REVISION: str(next_revision)},
                           "ownerReferences": [owner_reference(d)]},
              "spec": {"replicas": 0, "selector": selector, "template": labeled}}
        try:
            return self.registry.create(REPLICA_SETS, rs)
        except AlreadyExists:  # made by an earlier sync the cache has not shown yet
            return self.registry.get(REPLICA_SETS, d["metadata"]["namespace"], rs["metadata"]["name"])

    def _set_revision(self, d: dict[str, Any], rs: dict[str, Any], number: int) -> dict[str, Any]:
        if revision(rs) == number:
            return rs
        annotations = {**(rs["metadata"].get("annotations") or {}), REVISION: str(number)}
        return self.registry.update(REPLICA_SETS, {**rs, "metadata": {**rs["metadata"], "annotations": annotations}})

    def _scale(self, rs: dict[str, Any], replicas: int) -> dict[str, Any]:
        if int(rs["spec"].get("replicas", 0)) == replicas:
            return rs
        return self.registry.update(REPLICA_SETS, {**rs, "spec": {**rs["spec"], "replicas": replicas}})

    def _roll(self, new: dict[str, Any], old: list[dict[str, Any]], desired: int, surge: int,
              unavailable: int) -> None:
        total = sum(_replicas(rs) for rs in [new, *old])
        room = max(0, desired + surge - total)
        new = self._scale(new, desired if _replicas(new) >= desired else min(desired, _replicas(new) + room))
        # Old pods go only as far as availability allows: replicas - maxUnavailable stay
        # available, the new ReplicaSet's pods not available yet counting as unavailable.
        # First the old pods that are not available anyway (rollout.go's cleanupUnhealthyReplicas):
        # a crashing old version must not hold the rollout.
        new_unavailable = max(0, _replicas(new) - _available(new))
        minimum = desired - unavailable
        cleanup = sum(_replicas(rs) for rs in [new, *old]) - minimum - new_unavailable
        for n, rs in enumerate(old):
            step = min(max(0, cleanup), max(0, _replicas(rs) - _available(rs)))
            if step:
                old[n] = self._scale(rs, _replicas(rs) - step)
                cleanup -= step
        budget = sum(_available(rs) for rs in [new, *old]) - minimum - new_unavailable
        for rs in old:  # the oldest revision first
            step = min(max(0, budget), _replicas(rs))
            if step:
                self._scale(rs, _replicas(rs) - step)
                budget -= step

    def _recreate(self, new: dict[str, Any], old: list[dict[str, Any]], desired: int) -> None:
        for rs in old:
            self._scale(rs, 0)
        if all(int((rs.get("status") or {}).get("replicas", 0)) == 0 for rs in old):
            self._scale(new, desired)

    def _clean_up(self, d: dict[str, Any], old: list[dict[str, Any]]) -> None:
        limit = int(d["spec"].get("revisionHistoryLimit", DEFAULT_HISTORY))
        idle = [rs for rs in old if _replicas(rs) == 0 and int((rs.get("status") or {}).get("replicas", 0)) == 0]
        for rs in idle[: max(0, len(idle) - limit)]:
            self.registry.delete(REPLICA_SETS, rs["metadata"]["namespace"], rs["metadata"]["name"])

    def _write_status(self, d: dict[str, Any], new: dict[str, Any], old: list[dict[str, Any]]) -> None:
        every = [new, *old]
        desired = int(d["spec"].get("replicas", 1))
        replicas = sum(int((rs.get("status") or {}).get("replicas", 0)) for rs in every)
        available = sum(_available(rs) for rs in every)
        updated = int((new.get("status") or {}).get("replicas", 0))
        status = {"observedGeneration": d["metadata"].get("generation", 1), "replicas": replicas,
                  "updatedReplicas": updated,
                  "readyReplicas": sum(int((rs.get("status") or {}).get("readyReplicas", 0)) for rs in every),
                  "availableReplicas": available, "unavailableReplicas": max(0, desired - available)}
        annotations = {**(d["metadata"].get("annotations") or {}), REVISION: str(revision(new))}
        if d.get("status") == status and d["metadata"].get("annotations") == annotations:
            return
        current = self.registry.get(DEPLOYMENTS, d["metadata"]["namespace"], d["metadata"]["name"])
        self.registry.update(DEPLOYMENTS, {**current, "status": status,
                                           "metadata": {**current["metadata"], "annotations": annotations}})


def rollout_complete(d: dict[str, Any]) -> bool:
    """`rollout status`: every replica updated and available, for the latest generation."""
    status = d.get("status") or {}
    desired = int(d["spec"].get("replicas", 1))
    return (int(status.get("observedGeneration", 0)) >= int(d["metadata"].get("generation", 1))
            and status.get("updatedReplicas", 0) == desired and status.get("replicas", 0) == desired
            and status.get("availableReplicas", 0) == desired)


def undo(registry: Api, d: dict[str, Any], replica_sets: list[dict[str, Any]],
         to_revision: int = 0) -> dict[str, Any]:
    """`rollout undo`: the template of `to_revision` (0: the one before the current) back in the
    Deployment; the controller then rolls to it as to any new version."""
    owned = sorted((rs for rs in replica_sets if (controller_of(rs) or {}).get("uid") == d["metadata"]["uid"]),
                   key=revision)
    current = revision(d)
    candidates = [rs for rs in owned if (revision(rs) == to_revision if to_revision else revision(rs) < current)]
    if not candidates:
        raise NotFound(f"deployment {d['metadata']['name']}: no revision {to_revision or 'before ' + str(current)} "
                       "to roll back to")
    template = copy.deepcopy(candidates[-1]["spec"]["template"])
    template["metadata"]["labels"].pop(HASH_LABEL, None)
    return registry.update(DEPLOYMENTS, {**d, "spec": {**d["spec"], "template": template}})


def _replicas(rs: dict[str, Any]) -> int:
    return int(rs["spec"].get("replicas", 0))


def _available(rs: dict[str, Any]) -> int:
    return int((rs.get("status") or {}).get("availableReplicas", 0))

