"""Container records (containerd `internal/cri/store/container/`).

States are the CRI ContainerState, as containerd's `container/status.go` draws them:

       CreateContainer      StartContainer       process exits
    ─────────────────► CREATED ─────────► RUNNING ─────────► EXITED ──► RemoveContainer
                          │                  │                  ▲
                          │                  │ restart: state   │ recovery finds
                          └── undo failed ───┴──► UNKNOWN ──────┘ the process gone

`started_at` and `finished_at` are 0 until the event happens, as in the CRI status.
"""

from __future__ import annotations

import contextlib
import enum
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from skiff.cri.store import RECORD_VERSION, CorruptRecord, Fields, LoadReport, RecordStore, encode_bytes
from skiff.errors import NotFound

__all__ = ["ContainerRecord", "ContainerState", "ContainerStore", "ExitReason",
           "container_name"]

_BY_SANDBOX = "_by_sandbox"  # ids cannot start with "_": never a record's name


class ContainerState(enum.Enum):
    # values are the CRI ContainerState numbers
    CREATED = 0
    RUNNING = 1
    EXITED = 2
    UNKNOWN = 3


class ExitReason(enum.Enum):
    # values are the strings kubelet reads in ContainerStatus.reason
    COMPLETED = "Completed"
    ERROR = "Error"
    OOM_KILLED = "OOMKilled"


def container_name(*, name: str, attempt: int, sandbox_name: str, sandbox_namespace: str,
                   sandbox_uid: str) -> str:
    """The name a container reserves (containerd `makeContainerName`): its own name and
    attempt with its sandbox's metadata, so one pod cannot hold two of the same attempt."""
    return "_".join((name, sandbox_name, sandbox_namespace, sandbox_uid, str(attempt)))


@dataclass(frozen=True, slots=True, kw_only=True)
class ContainerRecord:
    id: str
    sandbox_id: str
    name: str
    attempt: int = 0
    image_ref: str = ""
    """The image as the request named it."""
    image_id: str = ""
    """The resolved image id (config digest)."""
    image_name: str = ""
    """The name ContainerStatus shows for the image: the one it was asked by (kubelet's
    user_specified_image), else a tag of it, else image_ref."""
    image_repo_digest: str = ""
    """ContainerStatus's image_ref: `name@<digest>` (the index's if a pull named one), which
    kubelet shows as the container's imageID. These two are worked out once, at create: skiff
    keeps no image cache, and kubelet asks for a status every few seconds. A record an older
    skiff wrote has neither ("" both): its status shows image_ref and image_id instead."""
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    created_at: int = 0
    started_at: int = 0
    finished_at: int = 0
    exit_code: int = 0
    reason: ExitReason | None = None
    message: str = ""
    state: ContainerState = ContainerState.UNKNOWN
    log_path: str = ""
    runtime_id: str = ""
    """The id of the container in skiff's OCI runtime."""
    pid: int = 0
    """The init's pid once created."""
    monitor_pid: int = 0
    """The container's monitor (cri/monitor.py): it copies the logs and reaps the init."""
    monitor_start: int = 0
    """The monitor's start time (/proc/<pid>/stat), to know a live pid is still it."""
    stop_signal: str = ""
    """The image's STOPSIGNAL ("SIGQUIT", "3"); StopContainer sends it, else SIGTERM."""
    config: bytes = b""
    """The CRI ContainerConfig, `SerializeToString()` bytes, kept whole."""
    version: int = RECORD_VERSION

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "id": self.id,
            "sandbox_id": self.sandbox_id,
            "name": self.name,
            "attempt": self.attempt,
            "image_ref": self.image_ref,
            "image_id": self.image_id,
            "image_name": self.image_name,
            "image_repo_digest": self.image_repo_digest,
            "labels": self.labels,
            "annotations": self.annotations,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "exit_code": self.exit_code,
            "reason": "" if self.reason is None else self.reason.name,
            "message": self.message,
            "state": self.state.name,
            "log_path": self.log_path,
            "runtime_id": self.runtime_id,
            "pid": self.pid,
            "monitor_pid": self.monitor_pid,
            "monitor_start": self.monitor_start,
            "stop_signal": self.stop_signal,
            "config": encode_bytes(self.config),
        }

    @classmethod
    def from_json(cls, f: Fields) -> ContainerRecord:
        return cls(
            version=f.integer("version"),
            id=f.text("id"),
            sandbox_id=f.text("sandbox_id"),
            name=f.text("name"),
            attempt=f.integer("attempt"),
            image_ref=f.text("image_ref"),
            image_id=f.text("image_id"),
            image_name=f.text("image_name", added=True),
            image_repo_digest=f.text("image_repo_digest", added=True),
            labels=f.str_map("labels"),
            annotations=f.str_map("annotations"),
            created_at=f.integer("created_at"),
            started_at=f.integer("started_at"),
            finished_at=f.integer("finished_at"),
            exit_code=f.integer("exit_code"),
            reason=None if f.text("reason") == "" else f.enum("reason", ExitReason),
            message=f.text("message"),
            state=f.enum("state", ContainerState),
            log_path=f.text("log_path"),
            runtime_id=f.text("runtime_id"),
            pid=f.integer("pid"),
            monitor_pid=f.integer("monitor_pid"),
            monitor_start=f.integer("monitor_start"),
            stop_signal=f.text("stop_signal"),
            config=f.blob("config"),
        )


class ContainerStore(RecordStore[ContainerRecord]):
    """`<state_root>/containers/`: one record per container, names as `container_name`, and
    `_by_sandbox/<sandbox id>/<container id>`, an index made again at `load`: a pod's stop,
    removal and stats read its own containers' records, not every one."""

    def __init__(self, state_root: str | os.PathLike[str]) -> None:
        super().__init__(os.path.join(state_root, "containers"), kind="container",
                         decode=ContainerRecord.from_json)
        # Told of each record added (old None), changed or deleted (new None), after the
        # write: the CRI's container events (cri/events.py).
        self.on_change: Callable[[ContainerRecord | None, ContainerRecord | None], None] | None = None

    def _tell(self, old: ContainerRecord | None, new: ContainerRecord | None) -> None:
        if self.on_change is not None:
            self.on_change(old, new)

    def _entry(self, sandbox_id: str, container_id: str) -> str:
        return os.path.join(self.root, _BY_SANDBOX, sandbox_id, container_id)

    def _index(self, record: ContainerRecord) -> None:
        entry = self._entry(record.sandbox_id, record.id)
        os.makedirs(os.path.dirname(entry), mode=0o700, exist_ok=True)
        with open(entry, "a"):
            pass

    def load(self) -> LoadReport[ContainerRecord]:
        report = super().load()
        live = {(r.sandbox_id, r.id) for r in report.records}
        index = os.path.join(self.root, _BY_SANDBOX)
        for sandbox_id in os.listdir(index) if os.path.isdir(index) else ():
            for container_id in os.listdir(os.path.join(index, sandbox_id)):
                if (sandbox_id, container_id) not in live:  # a create or delete cut short
                    self._unindex(sandbox_id, container_id)
        for record in report.records:  # records an older skiff wrote have no entry yet
            self._index(record)
        return report

    def add(self, record: ContainerRecord) -> None:
        self._index(record)  # first: an entry without a record is skipped when read
        super().add(record)
        self._tell(None, record)

    def update(self, id: str, change: Callable[[ContainerRecord], ContainerRecord]) -> ContainerRecord:
        before: list[ContainerRecord] = []

        def seen(old: ContainerRecord) -> ContainerRecord:
            before.append(old)
            return change(old)
        new = super().update(id, seen)
        self._tell(before[-1], new)
        return new

    def delete(self, id: str) -> None:
        try:
            old = self.get(id)
        except (NotFound, CorruptRecord):   # a corrupt record goes too (its index entry at the next load)
            return super().delete(id)
        super().delete(id)
        self._unindex(old.sandbox_id, id)
        self._tell(old, None)

    def _unindex(self, sandbox_id: str, container_id: str) -> None:
        entry = self._entry(sandbox_id, container_id)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(entry)
        with contextlib.suppress(OSError):  # another container of the pod is still there
            os.rmdir(os.path.dirname(entry))

    def in_sandbox(self, sandbox_id: str) -> list[ContainerRecord]:
        """The records of the pod's containers, by id."""
        try:
            ids = sorted(os.listdir(os.path.join(self.root, _BY_SANDBOX, sandbox_id)))
        except FileNotFoundError:
            return []
        records = []
        for container_id in ids:
            with contextlib.suppress(NotFound):  # being added, or a create cut short (`load` removes it)
                records.append(self.get(container_id))
        return records
