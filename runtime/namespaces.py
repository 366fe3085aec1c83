"""Namespaces: which to make, which to join by path, and the user namespace's id maps.

The intermediate child opens every path to join before the first setns (joining a mount
namespace changes what a later /proc path means), joins the user namespace first (its
capabilities are what allow joining the rest), then unshares the new ones in one call so
that they are all owned by the new user namespace when one is made.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass

from skiff.errors import InvalidArgument
from skiff.oci.spec import Linux, LinuxIDMapping, LinuxNamespaceType
from skiff.runtime import libc

FLAGS = {
    LinuxNamespaceType.USER: libc.CLONE_NEWUSER,
    LinuxNamespaceType.MOUNT: libc.CLONE_NEWNS,
    LinuxNamespaceType.PID: libc.CLONE_NEWPID,
    LinuxNamespaceType.NETWORK: libc.CLONE_NEWNET,
    LinuxNamespaceType.IPC: libc.CLONE_NEWIPC,
    LinuxNamespaceType.UTS: libc.CLONE_NEWUTS,
    LinuxNamespaceType.CGROUP: libc.CLONE_NEWCGROUP,
    LinuxNamespaceType.TIME: libc.CLONE_NEWTIME,
}
# The names under /proc/<pid>/ns/.
PROC_NAMES = {
    LinuxNamespaceType.USER: "user",
    LinuxNamespaceType.MOUNT: "mnt",
    LinuxNamespaceType.PID: "pid",
    LinuxNamespaceType.NETWORK: "net",
    LinuxNamespaceType.IPC: "ipc",
    LinuxNamespaceType.UTS: "uts",
    LinuxNamespaceType.CGROUP: "cgroup",
    LinuxNamespaceType.TIME: "time",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class NamespacePlan:
    unshare: int = 0                              # CLONE_NEW* flags to make
    join: tuple[tuple[int, str], ...] = ()        # (CLONE_NEW* flag, path), user first
    uid_map: str | None = None                    # uid_map text, written by the parent
    gid_map: str | None = None
    root_in_userns: bool = False                  # a user ns is made (mapping 0) or joined: become its root

    @property
    def second_fork(self) -> bool:
        """unshare or setns of a PID namespace only moves the caller's children."""
        return bool((self.unshare | self.joined) & libc.CLONE_NEWPID)

    @property
    def joined(self) -> int:
        flags = 0
        for flag, _ in self.join:
            flags |= flag
        return flags

    @property
    def all(self) -> int:
        return self.unshare | self.joined

    @property
    def at_clone(self) -> int:
        """The namespaces the container's first clone can make itself, which spares the
        second fork for a new PID namespace. Not a user namespace (the parent maps its ids
        before the others are made inside it), nor a cgroup one (rooted where the process is
        once it joined its cgroup), and none when a PID namespace is joined (setns first)."""
        if self.all & libc.CLONE_NEWUSER or self.joined & libc.CLONE_NEWPID:
            return 0
        return self.unshare & ~libc.CLONE_NEWCGROUP


def _id_map(mappings: tuple[LinuxIDMapping, ...]) -> str:
    return "".join(f"{m.container_id} {m.host_id} {m.size}\n" for m in mappings)


def _maps_root(mappings: tuple[LinuxIDMapping, ...]) -> bool:
    return any(m.container_id <= 0 < m.container_id + m.size for m in mappings)


def plan_namespaces(linux: Linux | None) -> NamespacePlan:
    """The spec's namespaces; validation has already refused duplicates and unknown types."""
    if linux is None:
        return NamespacePlan()
    unshare = 0
    join: list[tuple[int, str]] = []
    for i, ns in enumerate(linux.namespaces):
        if ns.type is LinuxNamespaceType.TIME:  # needs timens_offsets written before the init forks
            raise InvalidArgument(f"linux.namespaces[{i}].type: time namespaces are not supported by skiff")
        flag = FLAGS[ns.type]
        if ns.path:
            join.append((flag, ns.path))
        else:
            unshare |= flag
    join.sort(key=lambda j: j[0] != libc.CLONE_NEWUSER)
    new_user = bool(unshare & libc.CLONE_NEWUSER)
    return NamespacePlan(
        unshare=unshare,
        join=tuple(join),
        uid_map=_id_map(linux.uid_mappings) if new_user else None,
        gid_map=_id_map(linux.gid_mappings) if new_user else None,
        root_in_userns=(new_user and _maps_root(linux.uid_mappings) and _maps_root(linux.gid_mappings))
        or any(flag == libc.CLONE_NEWUSER for flag, _ in join),
    )


def plan_join(pid: int, types: tuple[LinuxNamespaceType, ...]) -> NamespacePlan:
    """`exec`: join every namespace the container has, through its init's /proc entries."""
    join = [(FLAGS[t], f"/proc/{pid}/ns/{PROC_NAMES[t]}") for t in types]
    join.sort(key=lambda j: j[0] != libc.CLONE_NEWUSER)
    return NamespacePlan(join=tuple(join), root_in_userns=LinuxNamespaceType.USER in types)


def write_id_maps(pid: int, plan: NamespacePlan) -> None:
    """Parent side: the child cannot map ids beyond its own, the parent (root) can. The
    kernel takes each map in one write(2), and says what it refuses there."""
    for name, field, text in (("uid_map", "linux.uidMappings", plan.uid_map),
                              ("gid_map", "linux.gidMappings", plan.gid_map)):
        if not text:
            continue
        path = f"/proc/{pid}/{name}"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, text.encode())
            finally:
                os.close(fd)
        except OSError as e:
            raise InvalidArgument(f"{field}: write {path}: {(e.strerror or str(e)).lower()} "
                                  f"({errno.errorcode.get(e.errno or 0, e.errno)})") from e
