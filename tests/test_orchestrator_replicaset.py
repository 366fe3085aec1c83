"""The ReplicaSet controller against a real store and registry, in process: seed, let it
reconcile, look at what it made."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from orchestrator_fixture import eventually, running

from skiff.orchestrator.api.kinds import BY_KIND
from skiff.orchestrator.api.registry import Registry
from skiff.orchestrator.controllers.replicaset import ReplicaSetController

RS, PODS = BY_KIND["ReplicaSet"], BY_KIND["Pod"]


@pytest.fixture
def cluster(registry: Registry) -> Iterator[Registry]:
    with running(registry, (RS, PODS), lambda inf: [ReplicaSetController(registry, inf["ReplicaSet"], inf["Pod"])]):
        yield registry


def replica_set(replicas: int) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "web"},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}},
                                  "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}}


def pods(registry: Registry) -> list[dict[str, Any]]:
    return registry.list(PODS, "default").items


def test_replicas_are_made_scaled_replaced_and_counted(cluster: Registry) -> None:
    rs = cluster.create(RS, replica_set(3))
    eventually(lambda: len(pods(cluster)) == 3)
    for p in pods(cluster):
        assert p["metadata"]["name"].startswith("web-") and p["metadata"]["labels"] == {"app": "web"}
        assert p["metadata"]["ownerReferences"][0]["uid"] == rs["metadata"]["uid"]
    eventually(lambda: (cluster.get(RS, "default", "web").get("status") or {}).get("replicas") == 3)
    victim = pods(cluster)[0]["metadata"]["name"]
    cluster.delete(PODS, "default", victim)
    eventually(lambda: len(pods(cluster)) == 3 and victim not in {p["metadata"]["name"] for p in pods(cluster)})
    current = cluster.get(RS, "default", "web")
    cluster.update(RS, {**current, "spec": {**current["spec"], "replicas": 1}})
    eventually(lambda: len(pods(cluster)) == 1)
    eventually(lambda: (cluster.get(RS, "default", "web").get("status") or {}).get("replicas") == 1)
    time.sleep(0.3)
    assert len(pods(cluster)) == 1  # and it stays so: no double creates from a stale cache


def test_an_orphan_the_selector_matches_is_adopted(cluster: Registry) -> None:
    cluster.create(PODS, {"metadata": {"name": "stray", "labels": {"app": "web"}},
                          "spec": {"containers": [{"name": "c", "image": "busybox"}]}})
    # the controller's cache sees the orphan before its owner comes (else the owner makes two,
    # then has three, and which one goes is a coin toss)
    time.sleep(0.3)
    rs = cluster.create(RS, replica_set(2))
    eventually(lambda: len(pods(cluster)) == 2)
    stray = cluster.get(PODS, "default", "stray")
    assert stray["metadata"]["ownerReferences"][0]["uid"] == rs["metadata"]["uid"]
