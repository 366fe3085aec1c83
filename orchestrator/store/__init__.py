"""The orchestrator's state: API objects under keys, each write a new revision of the whole
store, as etcd keeps it (kubernetes `staging/src/k8s.io/apiserver/pkg/storage/interfaces.go`).

    key       /registry/<resource>/<namespace>/<name>   (cluster objects: no namespace part)
    revision  one counter for the store: each create, update and delete takes the next one;
              an object's metadata.resourceVersion is the revision that last wrote it
    watch     the events after a revision, in order, for keys under a prefix; revisions
              older than the store keeps raise OutOfRange (HTTP 410 Gone), and the watcher
              lists again

Two implementations pass the same tests: `sqlite.py` (embedded, the default) and, for
several machines, `etcd.py`. An update or delete given `expected` (a resourceVersion) fails with
Aborted (HTTP 409 Conflict) when the object has moved on since: optimistic concurrency.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol


class EventType(enum.Enum):
    ADDED = "ADDED"
    MODIFIED = "MODIFIED"
    DELETED = "DELETED"


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    type: EventType
    key: str
    object: dict[str, Any]   # as written (for DELETED: as it was, at the deleting revision)
    revision: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Listing:
    items: list[dict[str, Any]]
    revision: int            # the store's revision when it was read: watch from there


class Store(Protocol):
    def create(self, key: str, obj: dict[str, Any]) -> dict[str, Any]:
        """`obj` with its resourceVersion set; AlreadyExists if the key has an object."""
        ...

    def get(self, key: str) -> dict[str, Any]:
        """NotFound if the key has no object."""
        ...

    def update(self, key: str, obj: dict[str, Any], *, expected: str | None = None) -> dict[str, Any]:
        """Replace the object; `expected`: the resourceVersion it must still have."""
        ...

    def delete(self, key: str, *, expected: str | None = None) -> dict[str, Any]:
        """The object as it was when deleted."""
        ...

    def list(self, prefix: str) -> Listing:
        """Every object whose key starts with `prefix`, by key."""
        ...

    def watch(self, prefix: str, since: int, *, timeout: float) -> Iterator[Event]:
        """The events after revision `since` for keys under `prefix`, as they come, until
        `timeout` seconds pass without one."""
        ...

    def close(self) -> None: ...


def resource_version(obj: dict[str, Any]) -> str:
    metadata = obj.get("metadata") or {}
    return str(metadata.get("resourceVersion", ""))
