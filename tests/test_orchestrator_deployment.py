"""The Deployment controller with the ReplicaSet controller, in process, pods made ready by a
stand-in for the node agents: a rollout keeps within maxSurge and maxUnavailable, finishes on
the new version, and undo goes back."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from orchestrator_fixture import eventually, running

from skiff.errors import SkiffError
from skiff.orchestrator.api.kinds import BY_KIND
from skiff.orchestrator.api.registry import Registry
from skiff.orchestrator.controllers.deployment import HASH_LABEL, DeploymentController, rollout_complete, undo
from skiff.orchestrator.controllers.base import is_active, is_ready
from skiff.orchestrator.controllers.replicaset import ReplicaSetController

DEPLOY, RS, PODS = BY_KIND["Deployment"], BY_KIND["ReplicaSet"], BY_KIND["Pod"]


def make_ready(registry: Registry, stop: threading.Event) -> None:
    """What node agents would do: every pod Running and Ready, a moment after it is made."""
    while not stop.wait(0.02):
        for pod in registry.list(PODS).items:
            if is_active(pod) and not is_ready(pod):
                try:
                    registry.update(PODS, {**pod, "status": {"phase": "Running",
                                                             "conditions": [{"type": "Ready", "status": "True"}]}})
                except SkiffError:
                    pass  # changed or gone meanwhile: the next round


@pytest.fixture
def cluster(registry: Registry) -> Iterator[Registry]:
    stop = threading.Event()
    kubelet = threading.Thread(target=make_ready, args=(registry, stop))
    with running(registry, (DEPLOY, RS, PODS), lambda inf: [
            DeploymentController(registry, inf["Deployment"], inf["ReplicaSet"]),
            ReplicaSetController(registry, inf["ReplicaSet"], inf["Pod"])]):
        kubelet.start()
        yield registry
        stop.set()
        kubelet.join()


def deployment(image: str) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
            "spec": {"replicas": 4, "selector": {"matchLabels": {"app": "web"}},
                     "strategy": {"rollingUpdate": {"maxSurge": 1, "maxUnavailable": 1}},
                     "template": {"metadata": {"labels": {"app": "web"}},
                                  "spec": {"containers": [{"name": "httpd", "image": image}]}}}}


def images(registry: Registry) -> list[str]:
    return sorted(p["spec"]["containers"][0]["image"] for p in registry.list(PODS).items if is_active(p))


def test_a_rollout_stays_within_its_bounds_and_undo_goes_back(cluster: Registry) -> None:
    cluster.create(DEPLOY, deployment("web:1"))
    def done() -> bool:
        return rollout_complete(cluster.get(DEPLOY, "default", "web"))

    eventually(done)
    assert images(cluster) == ["web:1"] * 4

    seen: list[tuple[int, int]] = []  # (active pods, ready pods) while rolling

    def sample() -> None:
        pods = [p for p in cluster.list(PODS).items if is_active(p)]
        seen.append((len(pods), sum(1 for p in pods if is_ready(p))))

    current = cluster.get(DEPLOY, "default", "web")
    template = current["spec"]["template"]
    new_template = {**template, "spec": {"containers": [{"name": "httpd", "image": "web:2"}]}}
    cluster.update(DEPLOY, {**current, "spec": {**current["spec"], "template": new_template}})
    eventually(lambda: done() and images(cluster) == ["web:2"] * 4, during=sample)
    assert seen and max(active for active, _ in seen) <= 5 and min(ready for _, ready in seen) >= 3
    replica_sets = cluster.list(RS).items
    assert sorted(rs["spec"]["replicas"] for rs in replica_sets) == [0, 4]
    assert cluster.get(DEPLOY, "default", "web")["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "2"

    undo(cluster, cluster.get(DEPLOY, "default", "web"), replica_sets)
    eventually(lambda: done() and images(cluster) == ["web:1"] * 4)
    back = cluster.get(DEPLOY, "default", "web")
    assert back["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "3"
    assert HASH_LABEL not in back["spec"]["template"]["metadata"]["labels"]
    assert len(cluster.list(RS).items) == 2  # the first ReplicaSet is used again
