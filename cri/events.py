"""GetContainerEvents (kubelet's evented PLEG): a container's lifecycle as a stream of events,
CREATED, STARTED, STOPPED and DELETED, each sent to every subscriber.

Events come from the container store (store/container.py calls `changed` on every change of
a record's state), so every path that creates, starts, records an exit or removes a container
is covered without each one saying so. An exit is recorded when a record is read (nothing
watches containers, container_status.py), so a subscribed stream reads the live containers
once a second while it waits: a container that exits on its own is seen within a second.

A subscriber that does not keep up loses its oldest events (kubelet relists then), rather
than holding up the calls that publish them."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from cri_api.v1 import api_pb2 as pb

from skiff.cri.store.container import ContainerRecord, ContainerState

BACKLOG = 1000   # events a subscriber may be behind
_TYPES = {ContainerState.CREATED: pb.CONTAINER_CREATED_EVENT, ContainerState.RUNNING: pb.CONTAINER_STARTED_EVENT,
          ContainerState.EXITED: pb.CONTAINER_STOPPED_EVENT}


class ContainerEvents:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscribers: list[Subscription] = []

    def changed(self, old: ContainerRecord | None, new: ContainerRecord | None) -> None:
        """A record was added, changed or deleted (old None: added; new None: deleted)."""
        if new is None:
            if old is None:
                return
            kind, record = pb.CONTAINER_DELETED_EVENT, old
        else:
            if old is not None and old.state is new.state or new.state not in _TYPES:
                return
            kind, record = _TYPES[new.state], new
        event = pb.ContainerEventResponse(container_id=record.id, container_event_type=kind,
                                          created_at=time.time_ns(),
                                          pod_sandbox_status=pb.PodSandboxStatus(id=record.sandbox_id))
        with self._lock:
            subscribers = list(self._subscribers)
        for subscriber in subscribers:
            subscriber.put(event)

    @contextmanager
    def subscribe(self) -> Iterator[Subscription]:
        subscription = Subscription()
        with self._lock:
            self._subscribers.append(subscription)
        try:
            yield subscription
        finally:
            with self._lock:
                self._subscribers.remove(subscription)


class Subscription:
    """One stream's events; `end` (the client went, the server stops) wakes its reader at once."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[pb.ContainerEventResponse | None] = queue.SimpleQueue()
        self._put_lock = threading.Lock()   # publishers call from any thread: the bound holds

    def put(self, event: pb.ContainerEventResponse) -> None:
        with self._put_lock:
            if self._queue.qsize() >= BACKLOG:
                try:
                    self._queue.get_nowait()   # the oldest goes
                except queue.Empty:
                    pass
            self._queue.put(event)

    def end(self) -> None:
        self._queue.put(None)

    def get(self, timeout: float) -> pb.ContainerEventResponse | None:
        """The next event; None once ended. Raises queue.Empty after `timeout` seconds."""
        return self._queue.get(timeout=timeout)
