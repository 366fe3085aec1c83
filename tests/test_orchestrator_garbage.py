"""Garbage collection with the ReplicaSet controller, in process: a ReplicaSet's pods go with
it, a pod with a second owner only loses the reference, and a namespace takes its objects."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from orchestrator_fixture import eventually, running

from skiff.orchestrator.api.kinds import BY_KIND, KINDS
from skiff.orchestrator.api.registry import Registry
from skiff.orchestrator.controllers.garbage import GarbageCollector
from skiff.orchestrator.controllers.replicaset import ReplicaSetController

RS, PODS, NS, CM = BY_KIND["ReplicaSet"], BY_KIND["Pod"], BY_KIND["Namespace"], BY_KIND["ConfigMap"]


@pytest.fixture
def cluster(registry: Registry) -> Iterator[Registry]:
    with running(registry, KINDS, lambda inf: [GarbageCollector(registry, inf),
                                               ReplicaSetController(registry, inf["ReplicaSet"], inf["Pod"])]):
        yield registry


def replica_set(namespace: str = "default") -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "web", "namespace": namespace},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}},
                                  "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}}


def test_dependents_go_with_their_owner(cluster: Registry) -> None:
    cluster.create(RS, replica_set())
    eventually(lambda: len(cluster.list(PODS).items) == 2)
    holder = cluster.create(CM, {"metadata": {"name": "holder"}})
    shared = cluster.list(PODS).items[0]
    refs = [*shared["metadata"]["ownerReferences"],
            {"apiVersion": "v1", "kind": "ConfigMap", "name": "holder", "uid": holder["metadata"]["uid"]}]
    cluster.update(PODS, {**shared, "metadata": {**shared["metadata"], "ownerReferences": refs}})
    cluster.delete(RS, "default", "web")
    eventually(lambda: len(cluster.list(PODS).items) == 1)
    kept = cluster.list(PODS).items[0]
    assert kept["metadata"]["name"] == shared["metadata"]["name"]
    eventually(lambda: [r["kind"] for r in cluster.list(PODS).items[0]["metadata"]["ownerReferences"]] == ["ConfigMap"])


def test_a_namespace_takes_what_it_holds(cluster: Registry) -> None:
    cluster.create(NS, {"metadata": {"name": "shop"}})
    cluster.create(RS, replica_set("shop"))
    cluster.create(CM, {"metadata": {"name": "settings", "namespace": "shop"}})
    eventually(lambda: len(cluster.list(PODS, "shop").items) == 2)
    cluster.create(CM, {"metadata": {"name": "elsewhere"}})
    cluster.delete(NS, "", "shop")
    eventually(lambda: not any(cluster.list(k, "shop").items for k in (RS, PODS, CM)))
    assert [c["metadata"]["name"] for c in cluster.list(CM).items] == ["elsewhere"]
