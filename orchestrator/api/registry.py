"""What the API server does with an object between the request and the store (apiserver
`pkg/registry/generic/registry/store.go`): check it, fill the fields the server owns (uid,
creationTimestamp, generation, a generated name), refuse it in a namespace that does not
exist, keep what an update may not change, and filter lists and watches by label and field
selectors.

    create   checked; uid, creationTimestamp, generation 1; resourceVersion from the store
    update   checked; optimistic when the object carries a resourceVersion; uid and
             creationTimestamp kept; generation + 1 when the spec changed
    delete   the object as it was; what it owns goes with the garbage collector
"""

from __future__ import annotations

import datetime
import secrets
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from skiff.errors import Aborted, InvalidArgument, NotFound
from skiff.orchestrator.api import service_ips, validation
from skiff.orchestrator.api.kinds import BY_KIND, Kind
from skiff.orchestrator.api.meta import DEFAULT_NAMESPACE, check_metadata
from skiff.orchestrator.labels import EVERYTHING, Selector
from skiff.orchestrator.store import Event, Listing, Store, resource_version

NAMESPACES, SERVICES, PODS = BY_KIND["Namespace"], BY_KIND["Service"], BY_KIND["Pod"]
SYSTEM_NAMESPACES = (DEFAULT_NAMESPACE, "kube-system")
_NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # generateName's, as Kubernetes: no vowels, no look-alikes


@dataclass(frozen=True, slots=True)
class FieldSelector:
    """`spec.nodeName=n1,status.phase!=Running`: equality on dotted paths (a missing field is "")."""
    terms: tuple[tuple[str, bool, str], ...] = ()   # (path, equal, value)

    @classmethod
    def parse(cls, text: str) -> FieldSelector:
        terms = []
        for part in filter(None, (p.strip() for p in text.split(","))):
            path, op, value = (part.partition("!=") if "!=" in part else
                               part.partition("==") if "==" in part else part.partition("="))
            if not op or not path.strip():
                raise InvalidArgument(f"field selector {text!r}: {part!r}: want FIELD=VALUE or FIELD!=VALUE")
            terms.append((path.strip(), op != "!=", value.strip()))
        return cls(tuple(terms))

    def matches(self, obj: dict[str, Any]) -> bool:
        return all((_field(obj, path) == value) is equal for path, equal, value in self.terms)


def _field(obj: dict[str, Any], path: str) -> str:
    value: Any = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return "" if value is None else str(value)


class Api(Protocol):
    """What controllers, the scheduler and node agents use of the API: the Registry in the
    API server's process, or client.RemoteRegistry from anywhere else."""
    def create(self, kind: Kind, obj: dict[str, Any], *, namespace: str | None = None) -> dict[str, Any]: ...

    def update(self, kind: Kind, obj: dict[str, Any], *, namespace: str | None = None) -> dict[str, Any]: ...

    def delete(self, kind: Kind, namespace: str, name: str, *, expected: str | None = None,
               grace: int | None = None, uid: str | None = None) -> dict[str, Any]: ...

    def get(self, kind: Kind, namespace: str, name: str) -> dict[str, Any]: ...

    def list(self, kind: Kind, namespace: str | None = None, *, labels: Selector = EVERYTHING,
             fields: FieldSelector = ...) -> Listing: ...

    def watch(self, kind: Kind, namespace: str | None, since: int, *, labels: Selector = EVERYTHING,
              fields: FieldSelector = ..., timeout: float) -> Iterator[Event]: ...


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Registry:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._allocating = threading.Lock()   # service IPs and node ports (service_ips.py)

    def bootstrap(self) -> None:
        """The namespaces every cluster has."""
        for name in SYSTEM_NAMESPACES:
            try:
                self.get(NAMESPACES, "", name)
            except NotFound:
                self.create(NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})

    # -- writes --------------------------------------------------------------------------------

    def create(self, kind: Kind, obj: dict[str, Any], *, namespace: str | None = None) -> dict[str, Any]:
        obj = _with_kind(kind, obj)
        metadata = dict(obj.get("metadata") or {})
        if not metadata.get("name") and metadata.get("generateName"):
            metadata["name"] = f"{metadata['generateName']}{''.join(secrets.choice(_NAME_ALPHABET) for _ in range(5))}"
        obj = {**obj, "metadata": metadata}
        metadata = check_metadata(obj, kind, "", namespace=namespace)
        metadata.pop("resourceVersion", None)
        metadata.update(uid=str(uuid.uuid4()), creationTimestamp=now(), generation=1)
        metadata.pop("deletionTimestamp", None)
        obj = {**obj, "metadata": metadata}
        validation.check(obj)
        if kind.namespaced:
            self._require_namespace(metadata["namespace"])
        key = kind.key(metadata.get("namespace", ""), metadata["name"])
        if kind is not SERVICES:
            return self.store.create(key, obj)
        with self._allocating:
            return self.store.create(key, service_ips.allocate(obj, self._other_services(key)))

    def update(self, kind: Kind, obj: dict[str, Any], *, namespace: str | None = None) -> dict[str, Any]:
        """Replace the object; with a resourceVersion in it, only if that is still the current one."""
        obj = _with_kind(kind, obj)
        metadata = check_metadata(obj, kind, "", namespace=namespace)
        key = kind.key(metadata.get("namespace", ""), metadata["name"])
        current = self.store.get(key)
        expected = str(metadata.pop("resourceVersion", "") or resource_version(current))
        kept = current["metadata"]
        generation = int(kept.get("generation", 1))
        if obj.get("spec") != current.get("spec"):
            generation += 1
        metadata.update(uid=kept["uid"], creationTimestamp=kept["creationTimestamp"], generation=generation)
        for field in ("deletionTimestamp", "deletionGracePeriodSeconds"):   # only a delete sets them
            metadata.pop(field, None)
            if field in kept:
                metadata[field] = kept[field]
        obj = {**obj, "metadata": metadata}
        validation.check(obj)
        if kind is not SERVICES:
            return self.store.update(key, obj, expected=expected)
        with self._allocating:  # a port turned NodePort gets its node port
            obj = service_ips.allocate(service_ips.keep(obj, current), self._other_services(key))
            return self.store.update(key, obj, expected=expected)

    def _other_services(self, key: str) -> list[dict[str, Any]]:
        return [s for s in self.store.list(SERVICES.prefix(None)).items
                if SERVICES.key(s["metadata"]["namespace"], s["metadata"]["name"]) != key]

    def delete(self, kind: Kind, namespace: str, name: str, *, expected: str | None = None,
               grace: int | None = None, uid: str | None = None) -> dict[str, Any]:
        """`expected`: only at this resourceVersion; `uid`: only this object, not one made again
        under its name (Kubernetes' preconditions).

        A pod running on a node is deleted gracefully, as Kubernetes does: it is marked
        (deletionTimestamp, deletionGracePeriodSeconds: `grace`, else the pod's
        terminationGracePeriodSeconds) and stays until its node agent has stopped it within
        that time and deletes it with grace 0. Meanwhile it is Terminating: out of its
        service's endpoints and not counted by its controller. A second delete can shorten
        the grace period, not lengthen it."""
        if grace is not None and grace < 0:
            raise InvalidArgument(f"gracePeriodSeconds: {grace}: must be 0 or more")
        key = kind.key(namespace, name)
        while True:
            current = self.get(kind, namespace, name)
            if uid is not None and current["metadata"].get("uid") != uid:
                raise Aborted(f"{kind.resource} {name!r}: precondition failed: UID in precondition: {uid}, "
                              f"UID in object meta: {current['metadata'].get('uid')}")
            version = expected or resource_version(current)
            try:
                if kind is PODS and (marked := _graceful(current, grace)) is not None:
                    return current if marked is current else self.store.update(key, marked, expected=version)
                return self.store.delete(key, expected=version)
            except Aborted:
                if expected is not None:
                    raise   # the caller's own condition; otherwise the pod's status changed meanwhile: again


    def _require_namespace(self, namespace: str) -> None:
        try:
            self.get(NAMESPACES, "", namespace)
        except NotFound:
            raise NotFound(f"namespaces {namespace!r} not found: create it first") from None

    # -- reads ---------------------------------------------------------------------------------

    def get(self, kind: Kind, namespace: str, name: str) -> dict[str, Any]:
        try:
            return self.store.get(kind.key(namespace, name))
        except NotFound:
            raise NotFound(f"{kind.resource} {name!r} not found"
                           + (f" in namespace {namespace!r}" if kind.namespaced else "")) from None

    def list(self, kind: Kind, namespace: str | None = None, *, labels: Selector = EVERYTHING,
             fields: FieldSelector = FieldSelector()) -> Listing:
        """`namespace` None or "": every namespace."""
        listing = self.store.list(kind.prefix(namespace))
        items = [o for o in listing.items if labels.matches(o["metadata"].get("labels")) and fields.matches(o)]
        return Listing(items=items, revision=listing.revision)

    def watch(self, kind: Kind, namespace: str | None, since: int, *, labels: Selector = EVERYTHING,
              fields: FieldSelector = FieldSelector(), timeout: float) -> Iterator[Event]:
        for event in self.store.watch(kind.prefix(namespace), since, timeout=timeout):
            if labels.matches(event.object["metadata"].get("labels")) and fields.matches(event.object):
                yield event


def _graceful(pod: dict[str, Any], grace: int | None) -> dict[str, Any] | None:
    """The pod marked Terminating for a graceful delete (itself if that changes nothing), or
    None when it goes at once: grace 0, not on a node, or finished."""
    period = grace if grace is not None else int(pod["spec"].get("terminationGracePeriodSeconds", 30))
    running = (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
    if not pod["spec"].get("nodeName") or not running or period <= 0:
        return None
    metadata = pod["metadata"]
    if metadata.get("deletionTimestamp") and int(metadata.get("deletionGracePeriodSeconds", 0)) <= period:
        return pod
    return {**pod, "metadata": {**metadata, "deletionTimestamp": metadata.get("deletionTimestamp") or now(),
                                "deletionGracePeriodSeconds": period}}


def _with_kind(kind: Kind, obj: dict[str, Any]) -> dict[str, Any]:
    """apiVersion and kind as the URL says (a request body may leave them out, not contradict them)."""
    for field, want in (("apiVersion", kind.api_version), ("kind", kind.kind)):
        if obj.get(field) not in (None, want):
            raise InvalidArgument(f"{field}: {obj[field]!r} does not match the resource {kind.resource!r} ({want!r})")
    return {**obj, "apiVersion": kind.api_version, "kind": kind.kind}
