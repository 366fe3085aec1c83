"""Container records on disk: one directory per container under the runtime root
(`/run/skiff-runc/<id>/`), holding state.json and, until `start`, exec.fifo.

Records are written atomically (temp file, rename) with a version field, so a crash of
skiff leaves either the old record or the new one. No fsync: the root is /run, a tmpfs, and
a power loss that could undo a rename also ends every container the record describes. The kernel is the truth for liveness: a record
says which pid (and its start time, against pid reuse) and which cgroup; the status is
derived from those each time (container.py).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

from skiff.errors import AlreadyExists, InvalidArgument, NotFound

RECORD_VERSION = 1
STATE_FILE = "state.json"
EXEC_FIFO = "exec.fifo"
_ID = re.compile(r"^[\w+.-]+$")


@dataclass(frozen=True, slots=True, kw_only=True)
class ContainerRecord:
    id: str
    bundle: str
    rootfs: str
    pid: int
    pid_start: int                       # /proc/<pid>/stat starttime: tells our init from a reused pid
    created: str                         # RFC 3339, UTC
    owner: str = ""
    annotations: dict[str, str] = field(default_factory=dict)
    cgroup: dict[str, Any] = field(default_factory=dict)   # the cgroup driver's record()
    config: dict[str, Any] = field(default_factory=dict)   # config.json as created: hooks, exec defaults
    version: int = RECORD_VERSION


def check_id(container_id: str) -> None:
    if not container_id or not _ID.match(container_id) or container_id in (".", ".."):
        raise InvalidArgument(f"container id {container_id!r}: must be letters, digits, '_', '+', '-' or '.'")


class StateStore:
    def __init__(self, root: str) -> None:
        self.root = root

    def dir(self, container_id: str) -> str:
        check_id(container_id)
        return os.path.join(self.root, container_id)

    def reserve(self, container_id: str) -> str:
        """Make the container's directory; the mkdir is the lock against a second create."""
        path = self.dir(container_id)
        os.makedirs(self.root, mode=0o711, exist_ok=True)
        try:
            os.mkdir(path, 0o711)
        except FileExistsError:
            raise AlreadyExists(f"container {container_id!r} already exists") from None
        return path

    def save(self, record: ContainerRecord) -> None:
        path = os.path.join(self.dir(record.id), STATE_FILE)
        tmp = path + ".tmp"
        fields = {f.name: getattr(record, f.name) for f in dataclasses.fields(record)}
        # 0600: the config holds the process's environment, secrets included
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600), "w") as f:
            # shallow: asdict would deep-copy the whole config; dumps, not dump: only the
            # one-shot encoder is the C one
            f.write(json.dumps(fields))
        os.rename(tmp, path)

    def load(self, container_id: str) -> ContainerRecord:
        path = os.path.join(self.dir(container_id), STATE_FILE)
        try:
            with open(path) as f:
                data = json.load(f)
        except FileNotFoundError:
            raise NotFound(f"container {container_id!r} does not exist") from None
        except ValueError as e:
            raise InvalidArgument(f"{path}: corrupt state: {e}") from e
        if data.get("version") != RECORD_VERSION:
            raise InvalidArgument(f"{path}: state version {data.get('version')!r}, expected {RECORD_VERSION}")
        names = {f.name for f in dataclasses.fields(ContainerRecord)}
        return ContainerRecord(**{k: v for k, v in data.items() if k in names})

    def ids(self) -> list[str]:
        try:
            return sorted(n for n in os.listdir(self.root)
                          if os.path.exists(os.path.join(self.root, n, STATE_FILE)))
        except FileNotFoundError:
            return []

    def remove(self, container_id: str) -> None:
        """The directory holds only files skiff put there (state, fifo, a temp file)."""
        path = self.dir(container_id)
        try:
            names = os.listdir(path)
        except FileNotFoundError:
            return
        for name in names:
            os.unlink(os.path.join(path, name))
        os.rmdir(path)
