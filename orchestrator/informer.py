"""An informer: one kind's objects kept in a local cache by a list and then a watch from the
list's revision, handlers told of each change (client-go's shared informer, reduced). When
the watch ends it watches again from the last revision it saw; when that revision is too old
(410) it lists again, and tells the handlers what changed meanwhile.

Handlers only look and enqueue keys (controllers do their work in their own workers), so they
run in the informer's thread. Cached objects are shared: never change one in place."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

from skiff.errors import OutOfRange, SkiffError
from skiff.orchestrator.api.kinds import Kind
from skiff.orchestrator.api.registry import Api
from skiff.orchestrator.store import Event, EventType

log = logging.getLogger("skiff.orchestrator")
Handler = Callable[[str, dict[str, Any] | None, dict[str, Any] | None], None]   # key, old, new


def object_key(obj: dict[str, Any]) -> str:
    """`namespace/name`, or `name` for a cluster-scoped object: the work queues' keys."""
    m = obj["metadata"]
    return f"{m['namespace']}/{m['name']}" if m.get("namespace") else str(m["name"])


class Informer:
    def __init__(self, source: Api, kind: Kind, *, namespace: str | None = None) -> None:
        self.source = source
        self.kind = kind
        self.namespace = namespace
        self._cache: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._handlers: list[Handler] = []
        self._stop = threading.Event()
        self.synced = threading.Event()
        self._thread: threading.Thread | None = None

    def on_change(self, handler: Handler) -> None:
        self._handlers.append(handler)

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            return self._cache.get(key)

    def items(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._cache.values())

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"informer-{self.kind.resource}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        stop_all([self])


    def _run(self) -> None:
        revision = None
        while not self._stop.is_set():
            try:
                if revision is None:
                    revision = self._relist()
                for event in self.source.watch(self.kind, self.namespace, revision, timeout=1.0):
                    self._apply(event)
                    revision = event.revision
                    if self._stop.is_set():
                        return
            except OutOfRange:
                revision = None
            except SkiffError as e:
                log.warning("informer %s: %s; listing again in 1 s", self.kind.resource, e)
                revision = None
                self._stop.wait(1.0)

    def _relist(self) -> int:
        listing = self.source.list(self.kind, self.namespace)
        fresh = {object_key(o): o for o in listing.items}
        with self._lock:
            old, self._cache = self._cache, fresh
        for key in old.keys() - fresh.keys():
            self._tell(key, old[key], None)
        for key, obj in fresh.items():
            if old.get(key) != obj:
                self._tell(key, old.get(key), obj)
        self.synced.set()
        return listing.revision

    def _apply(self, event: Event) -> None:
        key = object_key(event.object)
        with self._lock:
            old = self._cache.get(key)
            if event.type is EventType.DELETED:
                self._cache.pop(key, None)
            else:
                self._cache[key] = event.object
        self._tell(key, old, None if event.type is EventType.DELETED else event.object)

    def _tell(self, key: str, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        for handler in self._handlers:
            try:
                handler(key, old, new)
            except Exception:
                log.exception("informer %s: a handler failed on %s", self.kind.resource, key)


def stop_all(informers: Iterable[Informer]) -> None:
    """Stop them together: each may be waiting up to a second in its watch."""
    informers = list(informers)
    for informer in informers:
        informer._stop.set()
    for informer in informers:
        if informer._thread is not None:
            informer._thread.join()
