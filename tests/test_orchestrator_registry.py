"""The API server's object handling between a request and the store: server-owned fields,
namespaces, optimistic updates, label and field selectors on lists and watches."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from skiff.errors import Aborted, AlreadyExists, InvalidArgument, NotFound
from skiff.orchestrator.api.kinds import BY_KIND
from skiff.orchestrator.api.registry import FieldSelector, Registry
from skiff.orchestrator.labels import parse
from skiff.orchestrator.store import EventType, Listing

POD = BY_KIND["Pod"]


def pod(name: str = "", *, node: str = "", **labels: str) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": "c", "image": "busybox"}]}
    if node:
        spec["nodeName"] = node
    return {"metadata": {"name": name, "labels": labels}, "spec": spec}


def test_create_fills_what_the_server_owns(registry: Registry) -> None:
    created = registry.create(POD, pod("a", app="web"))
    m = created["metadata"]
    assert created["apiVersion"] == "v1" and created["kind"] == "Pod"
    assert m["namespace"] == "default" and m["generation"] == 1 and len(m["uid"]) == 36
    assert m["creationTimestamp"].endswith("Z") and m["resourceVersion"]
    generated = registry.create(POD, {**pod(), "metadata": {"generateName": "web-"}})
    assert generated["metadata"]["name"].startswith("web-") and len(generated["metadata"]["name"]) == 9
    registry.bootstrap()  # again: nothing changes
    assert [n["metadata"]["name"] for n in registry.list(BY_KIND["Namespace"]).items] == ["default", "kube-system"]


def test_a_namespace_must_exist_and_the_kind_must_agree(registry: Registry) -> None:
    with pytest.raises(NotFound, match="namespaces 'shop' not found: create it first"):
        registry.create(POD, pod("a"), namespace="shop")
    with pytest.raises(InvalidArgument, match="kind: 'Service' does not match the resource 'pods'"):
        registry.create(POD, {**pod("a"), "kind": "Service"})
    with pytest.raises(InvalidArgument, match=r"spec.containers\[0\].image: required"):
        registry.create(POD, {"metadata": {"name": "a"}, "spec": {"containers": [{"name": "c"}]}})


def test_update_is_optimistic_and_keeps_identity(registry: Registry) -> None:
    created = registry.create(POD, pod("a"))
    labelled = registry.update(POD, {**created, "metadata": {**created["metadata"], "labels": {"x": "1"}}})
    assert labelled["metadata"]["uid"] == created["metadata"]["uid"] and labelled["metadata"]["generation"] == 1
    moved = registry.update(POD, {**labelled, "spec": {**labelled["spec"], "nodeName": "n1"}})
    assert moved["metadata"]["generation"] == 2
    with pytest.raises(Aborted, match="the object has been modified"):
        registry.update(POD, created)  # carries the first resourceVersion
    forged = {**moved, "metadata": {**moved["metadata"], "uid": "forged", "creationTimestamp": "1970-01-01T00:00:00Z"}}
    kept = registry.update(POD, forged)["metadata"]
    assert kept["uid"] == created["metadata"]["uid"] and kept["creationTimestamp"] == created["metadata"]["creationTimestamp"]
    with pytest.raises(NotFound, match="pods 'b' not found in namespace 'default'"):
        registry.get(POD, "default", "b")


def names(listing: Listing) -> list[str]:
    return [p["metadata"]["name"] for p in listing.items]


def test_lists_and_watches_filter_by_labels_and_fields(registry: Registry) -> None:
    since = registry.list(POD).revision
    registry.create(POD, pod("a", node="n1", app="web"))
    registry.create(POD, pod("b", node="n2", app="web"))
    registry.create(POD, pod("c", node="n1", app="db"))
    assert names(registry.list(POD, "default", labels=parse("app=web"))) == ["a", "b"]
    assert names(registry.list(POD, fields=FieldSelector.parse("spec.nodeName=n1"))) == ["a", "c"]
    assert names(registry.list(POD, labels=parse("app=web"), fields=FieldSelector.parse("spec.nodeName!=n1"))) == ["b"]
    assert names(registry.list(POD, "kube-system")) == []
    events = list(registry.watch(POD, None, since, fields=FieldSelector.parse("spec.nodeName=n1"), timeout=0.1))
    assert [(e.type, e.object["metadata"]["name"]) for e in events] == [(EventType.ADDED, "a"), (EventType.ADDED, "c")]
    registry.delete(POD, "default", "a", grace=0)
    assert names(registry.list(POD)) == ["b", "c"]
    with pytest.raises(InvalidArgument, match="want FIELD=VALUE"):
        FieldSelector.parse("spec.nodeName")


SERVICES = BY_KIND["Service"]


def service(name: str, **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {"selector": {"app": name}, "ports": [{"port": 80}], **spec}}


def test_services_get_a_virtual_ip_and_node_ports(registry: Registry) -> None:
    a = registry.create(SERVICES, service("a"))
    b = registry.create(SERVICES, service("b", type="NodePort"))
    assert a["spec"]["clusterIP"] == "10.96.0.2" and b["spec"]["clusterIP"] == "10.96.0.3"
    assert b["spec"]["ports"][0]["nodePort"] == 30000
    assert registry.create(SERVICES, service("h", clusterIP="None"))["spec"]["clusterIP"] == "None"
    assert registry.create(SERVICES, service("c", clusterIP="10.96.1.1"))["spec"]["clusterIP"] == "10.96.1.1"
    with pytest.raises(AlreadyExists, match="spec.clusterIP: 10.96.1.1: provided IP is already allocated"):
        registry.create(SERVICES, service("d", clusterIP="10.96.1.1"))
    with pytest.raises(InvalidArgument, match="not in the service range 10.96.0.0/16"):
        registry.create(SERVICES, service("d", clusterIP="192.168.0.1"))
    with pytest.raises(AlreadyExists, match=r"spec.ports\[0\].nodePort: 30000: provided port is already allocated"):
        registry.create(SERVICES, service("d", type="NodePort", ports=[{"port": 80, "nodePort": 30000}]))
    # an update keeps what was given out, and refuses another IP
    kept = registry.update(SERVICES, {**b, "spec": {**b["spec"], "clusterIP": "", "ports": [{"port": 80}]}})
    assert kept["spec"]["clusterIP"] == "10.96.0.3" and kept["spec"]["ports"][0]["nodePort"] == 30000
    with pytest.raises(InvalidArgument, match="spec.clusterIP: 10.96.0.9: field is immutable"):
        registry.update(SERVICES, {**kept, "spec": {**kept["spec"], "clusterIP": "10.96.0.9"}})
    turned = registry.update(SERVICES, {**a, "spec": {**a["spec"], "type": "NodePort"}})
    assert turned["spec"]["ports"][0]["nodePort"] == 30001


def test_a_pod_on_a_node_is_deleted_gracefully(registry: Registry) -> None:
    bound = {**pod("a", node="n1"), "spec": {**pod("a", node="n1")["spec"], "terminationGracePeriodSeconds": 5}}
    registry.create(POD, bound)
    registry.create(POD, pod("unbound"))
    marked = registry.delete(POD, "default", "a")
    assert marked["metadata"]["deletionGracePeriodSeconds"] == 5 and marked["metadata"]["deletionTimestamp"]
    assert registry.delete(POD, "default", "a") == marked            # a second delete changes nothing
    cleared = copy.deepcopy(marked)
    del cleared["metadata"]["deletionTimestamp"]
    assert registry.update(POD, cleared)["metadata"]["deletionTimestamp"] == marked["metadata"]["deletionTimestamp"]
    registry.delete(POD, "default", "unbound")                       # no node agent to wait for
    assert names(registry.list(POD)) == ["a"]
    shorter = registry.delete(POD, "default", "a", grace=2)          # shortened, not lengthened
    assert shorter["metadata"]["deletionGracePeriodSeconds"] == 2
    assert registry.delete(POD, "default", "a", grace=9)["metadata"]["deletionGracePeriodSeconds"] == 2
    with pytest.raises(InvalidArgument, match="gracePeriodSeconds: -3: must be 0 or more"):
        registry.delete(POD, "default", "a", grace=-3)
    with pytest.raises(Aborted, match="precondition failed: UID in precondition: other"):
        registry.delete(POD, "default", "a", grace=0, uid="other")  # a pod made again under the name
    registry.delete(POD, "default", "a", grace=0, uid=marked["metadata"]["uid"])   # the agent's last word
    assert names(registry.list(POD)) == []
