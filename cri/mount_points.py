"""The mount points of a CRI container, made in its fresh snapshot by the service before
the container's first process runs.

The runtime would make a missing mount point itself (child.py, `_make_target`), but by then
that process is in the container's cgroup, and the kernel ties a file's writeback to the
memory cgroup that first dirtied it. On a disk-backed snapshot (ext4 here) those few inodes
(/etc/hosts, /etc/hostname, /etc/resolv.conf, the copy-up of /etc) then keep the container's
memory cgroup and its pod's parents alive, dying, after they are removed: about three per
pod, until memory pressure reclaims them, and every cgroup create and remove slows down as
they pile up. Made here, they are the service's.

Only what the runtime would make anyway is made, the same way: directories 0755, empty files
0644 for a bind of a file. A mount point inside another mount (/dev/pts in /dev's tmpfs) is
left alone, and so is one whose path meets a symlink or a file in the image: the runtime
resolves those inside the container's root, as before.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from skiff.oci.spec import Mount


def make_mount_points(rootfs: str, mounts: Sequence[Mount]) -> None:
    made_by_mounts: list[str] = []  # destinations so far: what lies below them is theirs
    root = os.open(rootfs, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for m in mounts:
            destination = os.path.normpath("/" + m.destination)
            if any(destination == d or destination.startswith(d.rstrip("/") + "/") for d in made_by_mounts):
                continue
            made_by_mounts.append(destination)
            if destination != "/":
                _make(root, destination.strip("/").split("/"), is_file=_binds_file(m))
    finally:
        os.close(root)


def _binds_file(m: Mount) -> bool:
    binds = m.type == "bind" or bool({"bind", "rbind"} & set(m.options))
    return binds and not os.path.isdir(m.source or "")


def _make(root: int, names: list[str], *, is_file: bool) -> None:
    """Each missing component under `root`, never through a symlink (O_NOFOLLOW at each
    step); any other trouble leaves the rest to the runtime."""
    opened: list[int] = []
    parent = root
    try:
        for i, name in enumerate(names):
            if i == len(names) - 1 and is_file:
                # O_EXCL: an existing file stays as it is (opened for writing, overlayfs would copy it up)
                os.close(os.open(name, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o644, dir_fd=parent))
                return
            try:
                os.mkdir(name, 0o755, dir_fd=parent)
            except FileExistsError:
                pass
            parent = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
            opened.append(parent)
    except OSError:
        pass
    finally:
        for fd in opened:
            os.close(fd)
