"""What every controller shares: the work queue, its workers, and expectations (creates and
deletes in flight, so that a cache that has not seen them yet cannot make the controller act
twice: `replica_set.go`'s ControllerExpectations)."""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from skiff.errors import AlreadyExists, NotFound
from skiff.orchestrator.api.kinds import BY_KIND
from skiff.orchestrator.api.registry import Api
from skiff.orchestrator.workqueue import ShutDown, WorkQueue

log = logging.getLogger("skiff.orchestrator")
EXPECTATIONS_TTL = 300.0  # seconds: an expectation never met (a lost event) stops blocking then
FINISHED = ("Succeeded", "Failed")


def controller_of(obj: dict[str, Any]) -> dict[str, Any] | None:
    return next((r for r in obj["metadata"].get("ownerReferences") or [] if r.get("controller")), None)


def is_ready(pod: dict[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


def is_active(pod: dict[str, Any]) -> bool:
    return (pod.get("status") or {}).get("phase") not in FINISHED and not pod["metadata"].get("deletionTimestamp")


def owner_reference(owner: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": owner["metadata"]["name"],
            "uid": owner["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}


@dataclass(slots=True)
class _Expected:
    adds: int
    deletes: int
    since: float


class Expectations:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_key: dict[str, _Expected] = {}

    def expect(self, key: str, *, adds: int = 0, deletes: int = 0) -> None:
        with self._lock:
            self._by_key[key] = _Expected(adds, deletes, time.monotonic())

    def observed(self, key: str, *, added: int = 0, deleted: int = 0) -> None:
        with self._lock:
            e = self._by_key.get(key)
            if e is not None:
                e.adds -= added
                e.deletes -= deleted

    def satisfied(self, key: str) -> bool:
        with self._lock:
            e = self._by_key.get(key)
            return e is None or (e.adds <= 0 and e.deletes <= 0) or time.monotonic() - e.since > EXPECTATIONS_TTL

    def forget(self, key: str) -> None:
        with self._lock:
            self._by_key.pop(key, None)


def pod_from_template(owner: dict[str, Any], *, labels: dict[str, str] | None = None,
                      node: str = "") -> dict[str, Any]:
    """A pod of `owner`'s spec.template, owned by it, named after it; `node`: bound there."""
    template = owner["spec"]["template"]
    meta = template.get("metadata") or {}
    spec = copy.deepcopy(template["spec"])
    if node:
        spec["nodeName"] = node
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"generateName": f"{owner['metadata']['name']}-", "namespace": owner["metadata"]["namespace"],
                         "labels": {**(meta.get("labels") or {}), **(labels or {})},
                         "annotations": dict(meta.get("annotations") or {}),
                         "ownerReferences": [owner_reference(owner)]},
            "spec": spec}


def create_pods(api: Api, key: str, pods: list[dict[str, Any]], expectations: Expectations) -> None:
    """Create `pods` for the owner `key`, expecting each; one not made is not waited for (a
    generated name that was taken is made again by the next sync)."""
    expectations.expect(key, adds=len(pods))
    for pod in pods:
        try:
            api.create(BY_KIND["Pod"], pod)
        except AlreadyExists:
            expectations.observed(key, added=1)
        except Exception:
            expectations.observed(key, added=1)
            raise


class Controller:
    """`sync(key)` for each key the informers' handlers enqueue, in `workers` threads."""

    name = "controller"

    def __init__(self) -> None:
        self.queue = WorkQueue()
        self._threads: list[threading.Thread] = []

    def sync(self, key: str) -> None:
        raise NotImplementedError

    def owner_event(self, kind: str, old: dict[str, Any] | None, new: dict[str, Any] | None,
                    expectations: Expectations) -> bool:
        """A pod changed: enqueue the `kind` object that controls it, counting the add or
        delete it may be waiting for. False when no `kind` controls the pod."""
        pod = new or old
        assert pod is not None
        ref = controller_of(pod)
        if ref is None or ref.get("kind") != kind:
            return False
        owner = f"{pod['metadata']['namespace']}/{ref['name']}"
        # A graceful delete is seen when the pod turns Terminating, not again when it goes.
        terminating = [p is not None and bool(p["metadata"].get("deletionTimestamp")) for p in (old, new)]
        deleted = (new is None and not terminating[0]) or (terminating[1] and not terminating[0])
        expectations.observed(owner, added=int(old is None), deleted=int(deleted))
        self.queue.add(owner)
        return True

    def start(self, workers: int = 1) -> None:
        for n in range(workers):
            t = threading.Thread(target=self._work, name=f"{self.name}-{n}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self.queue.shut_down()
        for t in self._threads:
            t.join()

    def _work(self) -> None:
        sync: Callable[[str], None] = self.sync
        while True:
            try:
                key = self.queue.get()
            except ShutDown:
                return
            if key is None:
                continue
            try:
                sync(key)
                self.queue.forget(key)
            except NotFound:
                self.queue.forget(key)  # the object went meanwhile: nothing left to do
            except Exception as e:
                log.warning("%s: %s: %s; again after a back-off", self.name, key, e)
                self.queue.add_rate_limited(key)
            finally:
                self.queue.done(key)
