"""skiff's cgroup layer: one Protocol, two drivers, chosen per host.

    detect_mode()      /sys/fs/cgroup is cgroup2            -> UNIFIED  (v2.V2Driver)
                       tmpfs, and /sys/fs/cgroup/unified is
                       cgroup2                              -> HYBRID   (v1.V1Driver + unified/)
                       tmpfs, nothing on unified/           -> LEGACY   (v1.V1Driver)

Placement (`open_cgroup`), per hierarchy:
    cgroups_path "/kubepods/pod1/ctr"  -> <mount>/kubepods/pod1/ctr
    cgroups_path "a/b" or None         -> <parent>/a/b or <parent>/<container id>
    parent "/x" | "x" | None           -> <mount>/x | <own>/x | <own>/skiff, where <own> is
                                          the cgroup this process runs in there
                                          (/proc/self/cgroup); env SKIFF_CGROUP_PARENT is
                                          the default parent
Ownership: skiff marks each directory it makes (xattr trusted.skiff) and removes only
marked directories, so it never removes, or writes limits into, a cgroup it did not create.

Importing this package is cheap (enum, errno, os, typing): the drivers, the stats dataclasses and
ctypes are imported by the calls that need them.
"""

from __future__ import annotations

import enum
import errno
import os
from typing import TYPE_CHECKING, Protocol

from skiff.errors import FailedPrecondition

if TYPE_CHECKING:
    from skiff.oci.spec import LinuxResources
    from skiff.runtime.cgroups.stats import CgroupStats

__all__ = [
    "CgroupDriver",
    "CgroupError",
    "CgroupMode",
    "CgroupStats",
    "detect_mode",
    "load_cgroup",
    "open_cgroup",
]


class CgroupError(FailedPrecondition):
    """A cgroup operation the host refused or cannot do: a value the kernel rejects
    (EINVAL from pids.max), a controller the parent does not delegate, a limit no
    hierarchy can enforce. FailedPrecondition because whether a value is acceptable
    depends on the host and the parent cgroup, not on the spec alone (the spec's shape is
    checked earlier, in oci/)."""


class CgroupMode(enum.Enum):
    UNIFIED = "v2"
    HYBRID = "hybrid"
    LEGACY = "v1"


class CgroupDriver(Protocol):
    mode: CgroupMode

    def create(self) -> None:
        """mkdir what is missing (and remember it); apply no limit."""

    def dirfd(self) -> int | None:
        """An O_PATH fd of the cgroup2 leaf for CLONE_INTO_CGROUP (the caller closes it):
        the leaf on v2, the unified/ group on a hybrid host; None on v1."""

    def self_joins(self, cloned: bool) -> tuple[str, ...]:
        """The files a new process writes "0" into to join the cgroup by itself, before it
        does anything else; `cloned`: it was cloned into dirfd() already. A process moving
        itself into a v1 `tasks` file skips the global lock that a move from outside takes,
        and the RCU grace period that lock waits for (about 12 ms each, per hierarchy)."""

    def add(self, pid: int) -> None:
        """Move `pid` into the cgroup in every hierarchy skiff manages."""

    def apply(self, resources: LinuxResources | None) -> None:
        """Write the limits the spec sets; leave the others as they are."""

    def freeze(self, frozen: bool) -> None:
        """Freeze or thaw; return once the kernel reports it done."""

    def frozen(self) -> bool: ...

    def stats(self) -> CgroupStats: ...

    def oom_kills(self) -> int:
        """How many tasks the OOM killer killed in the cgroup."""

    def pids(self) -> list[int]: ...

    def mounts(self) -> list[tuple[str, str]]:
        """(name under the container's /sys/fs/cgroup, host directory) for a cgroup mount
        inside the container: ("", leaf) on v2; ("memory", dir), ... on v1."""

    def destroy(self, *, keep_parents: bool = False) -> None:
        """Remove the leaf and (unless keep_parents) the parents skiff made, when empty;
        already gone is fine."""

    def release_parents(self) -> None:
        """Remove the parents skiff made, when empty (after destroy with keep_parents)."""

    def record(self) -> dict[str, object]:
        """JSON-able; `load_cgroup` rebuilds the driver from it."""


CGROUP_ROOT = "/sys/fs/cgroup"
_CGROUP2_SUPER_MAGIC = 0x63677270

_mode: CgroupMode | None = None


def detect_mode() -> CgroupMode:
    """The host's cgroup setup, by filesystem magic (crun `libcrun_get_cgroup_mode`,
    youki `get_cgroup_setup_with_root`). Cached: it does not change while skiff runs."""
    global _mode
    if _mode is None:
        if _fs_magic(CGROUP_ROOT) == _CGROUP2_SUPER_MAGIC:
            _mode = CgroupMode.UNIFIED
        elif _fs_magic(CGROUP_ROOT + "/unified") == _CGROUP2_SUPER_MAGIC:
            _mode = CgroupMode.HYBRID
        else:
            _mode = CgroupMode.LEGACY
    return _mode


def _fs_magic(path: str) -> int | None:
    # Python has no os.statfs; ctypes is loaded by the runtime anyway (runtime/libc.py).
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(256)  # struct statfs: 120 bytes on 64-bit Linux
    if libc.statfs(path.encode(), buf) != 0:
        err = ctypes.get_errno()
        if err == errno.ENOENT:  # no unified/ directory on a pure v1 host
            return None
        raise CgroupError(f"statfs {path}: {os.strerror(err).lower()}")
    # f_type is the first member, a long (__fsword_t)
    return ctypes.c_long.from_buffer(buf).value


def open_cgroup(
    *, container_id: str, cgroups_path: str | None, parent: str | None = None
) -> CgroupDriver:
    """A driver for the container's cgroup, not yet created (see the module docstring for
    where it goes)."""
    if parent is None:
        parent = os.environ.get("SKIFF_CGROUP_PARENT") or None
    if detect_mode() is CgroupMode.UNIFIED:
        from skiff.runtime.cgroups import v2

        return v2.V2Driver.place(
            container_id=container_id, cgroups_path=cgroups_path, parent=parent
        )
    from skiff.runtime.cgroups import v1

    return v1.V1Driver.place(
        mode=detect_mode(), container_id=container_id, cgroups_path=cgroups_path, parent=parent
    )


def load_cgroup(record: dict[str, object]) -> CgroupDriver:
    """The driver `record()` described. The directories may be gone: destroy is then a
    no-op."""
    mode = record.get("mode")
    if mode == CgroupMode.UNIFIED.value:
        from skiff.runtime.cgroups import v2

        return v2.V2Driver.load(record)
    if mode in (CgroupMode.HYBRID.value, CgroupMode.LEGACY.value):
        from skiff.runtime.cgroups import v1

        return v1.V1Driver.load(record)
    raise CgroupError(f"cgroup record: unknown mode {mode!r}")


def placement(
    *, container_id: str, cgroups_path: str | None, parent: str | None, own: str
) -> str:
    """The container's cgroup relative to a hierarchy's mount, `own` being this process's
    cgroup relative to the same mount. No "." or ".." components, so the result cannot
    leave the mount."""
    for what, value in (
        ("linux.cgroupsPath", cgroups_path),
        ("cgroup parent", parent),
        ("container id", container_id),
    ):
        if value and any(p in (".", "..") for p in value.split("/")):
            raise CgroupError(f"{what}: {value!r}: '.' and '..' are not allowed in a cgroup path")
    if cgroups_path and not cgroups_path.strip("/"):
        raise CgroupError(f"linux.cgroupsPath: {cgroups_path!r}: must name a cgroup below the root")
    if not cgroups_path and not container_id.strip("/"):
        raise CgroupError("container id: must not be empty")
    if cgroups_path and cgroups_path.startswith("/"):
        path = cgroups_path
    else:
        if parent is None:
            base = f"{own}/skiff"
        elif parent.startswith("/"):
            base = parent
        else:
            base = f"{own}/{parent}"
        path = f"{base}/{cgroups_path or container_id}"
    return "/".join(p for p in path.split("/") if p)


def str_field(record: dict[str, object], key: str) -> str:
    value = record.get(key)
    if not isinstance(value, str):
        raise CgroupError(f"cgroup record: {key}: want a string, got {value!r}")
    return value


def str_list(record: dict[str, object], key: str) -> list[str]:
    value = record.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise CgroupError(f"cgroup record: {key}: want a list of strings, got {value!r}")
    return list(value)


def __getattr__(name: str) -> object:
    # CgroupStats lives in stats.py so that `import skiff.runtime.cgroups` does not pay
    # for dataclasses
    if name == "CgroupStats":
        from skiff.runtime.cgroups.stats import CgroupStats

        return CgroupStats
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
