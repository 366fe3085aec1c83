"""Pod sandbox records (containerd `internal/cri/store/sandbox/`).

States, as containerd's `sandbox/status.go` draws them:

      RunPodSandbox ok              StopPodSandbox / infra died
    ──────────────────► READY ──────────────────────────────► NOTREADY ──► removed
          │                                                        ▲
          │ setup failed, undo failed                              │ recovery finds
          └──────────────────────► UNKNOWN ◄── restart: kernel ────┘ it dead
                                      │         state unclear
                                      └── RemovePodSandbox finishes the cleanup

UNKNOWN is not a CRI state: the service reports it as SANDBOX_NOTREADY.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass, field
from typing import Any

from skiff.cri.store import RECORD_VERSION, Fields, RecordStore, encode_bytes

__all__ = ["SandboxRecord", "SandboxState", "SandboxStore", "sandbox_name"]


class SandboxState(enum.Enum):
    # values are the CRI PodSandboxState numbers where the CRI has the state
    READY = 0
    NOTREADY = 1
    UNKNOWN = -1


def sandbox_name(*, name: str, namespace: str, uid: str, attempt: int) -> str:
    """The name a sandbox reserves, from its CRI metadata (containerd `makeSandboxName`)."""
    return "_".join((name, namespace, uid, str(attempt)))


@dataclass(frozen=True, slots=True, kw_only=True)
class SandboxRecord:
    id: str
    name: str
    uid: str
    namespace: str
    attempt: int = 0
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    created_at: int = 0
    """Nanoseconds since the epoch, as the CRI reports it."""
    state: SandboxState = SandboxState.UNKNOWN
    infra_container_id: str = ""
    """The runtime container id of the pause process, when the sandbox has one."""
    namespace_paths: dict[str, str] = field(default_factory=dict)
    """Pinned namespaces (`network`, `ipc`, `uts` → bind-mounted path) when there is no
    infra process to hold them."""
    netns_path: str = ""
    ip: str = ""
    additional_ips: tuple[str, ...] = ()
    log_directory: str = ""
    cgroup_parent: str = ""
    pod_cgroup: str = ""
    """The pod cgroup's driver record (runtime/cgroups `record()`), as JSON text."""
    pause_cgroup: str = ""
    """The pause's own cgroup below the pod's (a v2 pod cgroup with processes could not hand
    controllers to its containers), as JSON text like pod_cgroup."""
    pause_pid: int = 0
    pause_start: int = 0
    """The pause process of a pod-shared PID namespace and its start time, to know it is it."""
    config: bytes = b""
    """The CRI PodSandboxConfig, `SerializeToString()` bytes: kept whole so a field skiff
    does not model yet is not lost across a restart."""
    version: int = RECORD_VERSION

    @property
    def reserved_name(self) -> str:
        return sandbox_name(name=self.name, namespace=self.namespace, uid=self.uid,
                            attempt=self.attempt)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "id": self.id,
            "name": self.name,
            "uid": self.uid,
            "namespace": self.namespace,
            "attempt": self.attempt,
            "labels": self.labels,
            "annotations": self.annotations,
            "created_at": self.created_at,
            "state": self.state.name,
            "infra_container_id": self.infra_container_id,
            "namespace_paths": self.namespace_paths,
            "netns_path": self.netns_path,
            "ip": self.ip,
            "additional_ips": list(self.additional_ips),
            "log_directory": self.log_directory,
            "cgroup_parent": self.cgroup_parent,
            "pod_cgroup": self.pod_cgroup,
            "pause_cgroup": self.pause_cgroup,
            "pause_pid": self.pause_pid,
            "pause_start": self.pause_start,
            "config": encode_bytes(self.config),
        }

    @classmethod
    def from_json(cls, f: Fields) -> SandboxRecord:
        return cls(
            version=f.integer("version"),
            id=f.text("id"),
            name=f.text("name"),
            uid=f.text("uid"),
            namespace=f.text("namespace"),
            attempt=f.integer("attempt"),
            labels=f.str_map("labels"),
            annotations=f.str_map("annotations"),
            created_at=f.integer("created_at"),
            state=f.enum("state", SandboxState),
            infra_container_id=f.text("infra_container_id"),
            namespace_paths=f.str_map("namespace_paths"),
            netns_path=f.text("netns_path"),
            ip=f.text("ip"),
            additional_ips=f.strings("additional_ips"),
            log_directory=f.text("log_directory"),
            cgroup_parent=f.text("cgroup_parent"),
            pod_cgroup=f.text("pod_cgroup"),
            pause_cgroup=f.text("pause_cgroup"),
            pause_pid=f.integer("pause_pid"),
            pause_start=f.integer("pause_start"),
            config=f.blob("config"),
        )


class SandboxStore(RecordStore[SandboxRecord]):
    """`<state_root>/sandboxes/`: one record per pod sandbox, names as `sandbox_name`."""

    def __init__(self, state_root: str | os.PathLike[str]) -> None:
        super().__init__(os.path.join(state_root, "sandboxes"), kind="pod sandbox",
                         decode=SandboxRecord.from_json)
