"""Garbage collection (kubernetes `pkg/controller/garbagecollector/`, background propagation)
and the end of a namespace (`pkg/controller/namespace/`): what an object owns goes after it,
and what a namespace holds goes after the namespace.

A dependent goes only when none of its owners is left, and that is asked of the store, not of
a cache: an informer of another kind may not have shown a new owner yet. A dependent that
still has an owner loses only its references to the owners that are gone.

Pods bound to a node that does not exist are deleted at once (PodGC's orphans): no node agent
is there to finish a graceful delete."""

from __future__ import annotations

import copy
from typing import Any

from skiff.errors import Aborted, NotFound
from skiff.orchestrator.api.kinds import BY_KIND, NAMESPACED_ORDER, Kind
from skiff.orchestrator.api.registry import Api
from skiff.orchestrator.controllers.base import Controller
from skiff.orchestrator.informer import Handler, Informer


class GarbageCollector(Controller):
    name = "garbage-collector"

    def __init__(self, registry: Api, informers: dict[str, Informer]) -> None:
        """`informers`: one per kind, by kind name."""
        super().__init__()
        self.registry = registry
        self.informers = informers
        for kind, informer in informers.items():
            informer.on_change(self._handler(kind))

    def _handler(self, kind: str) -> Handler:
        return lambda key, old, new: self._changed(kind, key, old, new)

    def _changed(self, kind: str, key: str, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        if kind == "Node" and new is None and old is not None:
            self.queue.add(f"orphans/{old['metadata']['name']}")
        elif kind == "Pod" and new is not None and new["metadata"].get("deletionTimestamp") and new["spec"].get("nodeName"):
            self.queue.add(f"orphans/{new['spec']['nodeName']}")
        if new is None and old is not None:
            self.queue.add(f"owner/{old['metadata']['uid']}")
            if kind == "Namespace":
                self.queue.add(f"namespace/{old['metadata']['name']}")
        elif new is not None and new["metadata"].get("ownerReferences"):
            self.queue.add(f"dependent/{kind}/{key}")

    def sync(self, item: str) -> None:
        what, _, rest = item.partition("/")
        if what == "owner":
            for name, informer in self.informers.items():
                for obj in informer.items():
                    if any(r.get("uid") == rest for r in obj["metadata"].get("ownerReferences") or []):
                        self._collect(BY_KIND[name], obj)
        elif what == "namespace":
            for kind in NAMESPACED_ORDER:
                held = self.informers[kind.kind].items() if kind.kind in self.informers else []
                for obj in held:
                    if obj["metadata"].get("namespace") == rest:
                        self._delete(kind, obj)
        elif what == "orphans":
            try:
                self.registry.get(BY_KIND["Node"], "", rest)
                return
            except NotFound:
                pass
            for pod in self.informers["Pod"].items():
                if pod["spec"].get("nodeName") == rest:
                    try:
                        self.registry.delete(BY_KIND["Pod"], pod["metadata"]["namespace"], pod["metadata"]["name"],
                                             grace=0, uid=pod["metadata"]["uid"])
                    except (NotFound, Aborted):
                        pass   # gone, or made again meanwhile
        elif what == "dependent":
            name, _, key = rest.partition("/")
            dependent = self.informers[name].get(key)
            if dependent is not None:
                self._collect(BY_KIND[name], dependent)

    def _collect(self, kind: Kind, obj: dict[str, Any]) -> None:
        refs = obj["metadata"].get("ownerReferences") or []
        alive = [r for r in refs if self._owner_exists(obj, r)]
        if not alive:
            self._delete(kind, obj)
        elif len(alive) < len(refs):
            current = copy.deepcopy(self.registry.get(kind, obj["metadata"].get("namespace", ""),
                                                      obj["metadata"]["name"]))
            current["metadata"]["ownerReferences"] = alive
            self.registry.update(kind, current)

    def _owner_exists(self, obj: dict[str, Any], ref: dict[str, Any]) -> bool:
        kind = BY_KIND.get(str(ref.get("kind")))
        if kind is None:
            return True  # a kind skiff does not serve: not ours to judge
        try:
            owner = self.registry.get(kind, obj["metadata"].get("namespace", "") if kind.namespaced else "",
                                      str(ref.get("name")))
        except NotFound:
            return False
        return bool(owner["metadata"].get("uid") == ref.get("uid"))

    def _delete(self, kind: Kind, obj: dict[str, Any]) -> None:
        try:
            self.registry.delete(kind, obj["metadata"].get("namespace", ""), obj["metadata"]["name"],
                                 expected=obj["metadata"].get("resourceVersion"))
        except NotFound:
            pass
