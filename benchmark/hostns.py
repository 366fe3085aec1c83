"""The cgroup layout the runtimes see, and the private mount namespace the benchmark runs in
on a hybrid host.

Debian 12's crun 1.8 refuses a hybrid cgroup host ("cgroups in hybrid mode not supported,
drop all controllers from cgroupv2"). So on such a host `skiff bench start` re-executes
itself under `unshare -m --propagation private`, unmounts /sys/fs/cgroup/unified in that
namespace only, and measures every runtime there, so that they all see the same legacy
(v1-only) layout. A private tmpfs then covers the mount point: crun in legacy mode still
mkdirs /sys/fs/cgroup/unified/<id> and writes a cgroup.procs there, which on the bare mount
point would land, unremovable and hidden under the cgroup2 mount, in the host's
/sys/fs/cgroup tmpfs. Nothing is unmounted in the host's namespace.
"""

from __future__ import annotations

import os
import subprocess

from skiff.errors import FailedPrecondition

CGROUP_ROOT = "/sys/fs/cgroup"
UNIFIED = f"{CGROUP_ROOT}/unified"


def _fstypes() -> dict[str, str]:
    found: dict[str, str] = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            found[fields[4]] = fields[fields.index("-") + 1]  # the last mount on a point wins
    return found


def cgroup_mode() -> str:
    """As the runtimes tell it: the filesystem at /sys/fs/cgroup, then at unified/."""
    fstypes = _fstypes()
    if fstypes.get(CGROUP_ROOT) == "cgroup2":
        return "unified (cgroup v2 only)"
    if fstypes.get(UNIFIED) == "cgroup2":
        with open(f"{UNIFIED}/cgroup.controllers") as f:
            controllers = f.read().split()
        return f"hybrid (controllers on v1; cgroup2 on {UNIFIED} with {' '.join(controllers) or 'no controllers'})"
    return "legacy (cgroup v1 only)"


def is_hybrid() -> bool:
    return cgroup_mode().startswith("hybrid")


def mount_ns() -> int:
    return os.stat("/proc/self/ns/mnt").st_ino


def hide_unified(host_ns: int) -> None:
    """In the private namespace (checked: never in the host's), unified/ gives way to a tmpfs."""
    if mount_ns() == host_ns:
        raise FailedPrecondition("not in a private mount namespace: refusing to unmount anything")
    if not is_hybrid():
        return
    for argv in (["umount", UNIFIED], ["mount", "-t", "tmpfs", "-o", "size=64m,mode=755", "skiff-bench", UNIFIED]):
        done = subprocess.run(argv, capture_output=True, text=True)
        if done.returncode != 0:
            raise FailedPrecondition(f"`{' '.join(argv)}` in the benchmark's mount namespace: {done.stderr.strip()}")


def state_on_tmpfs(path: str, host_ns: int) -> None:
    """In the private namespace: a tmpfs on the benchmark's directory, where every runtime
    keeps its state, as /run is a tmpfs on a host (runc's and crun's default roots are there)."""
    if mount_ns() == host_ns:
        raise FailedPrecondition("not in a private mount namespace: refusing to mount anything")
    from skiff.runtime import libc

    libc.mount("skiff-bench", path, "tmpfs", libc.MS_NOSUID | libc.MS_NODEV, "mode=700")


def drop_tmpfs(path: str) -> None:
    from skiff.runtime import libc

    libc.umount2(path, libc.MNT_DETACH)


def stray_unified(id_tag: str) -> list[str]:
    """What crun left in the private tmpfs on unified/ (a directory per container, each with
    a plain cgroup.procs file): it goes with the namespace, but is reported."""
    if not os.path.ismount(UNIFIED) or _fstypes().get(UNIFIED) != "tmpfs":
        return []
    return sorted(d for d in os.listdir(UNIFIED) if id_tag in d)


def cgroups_named(tag: str) -> set[str]:
    """Every cgroup directory whose name holds `tag`, in every hierarchy this namespace sees."""
    found: set[str] = set()
    for top, dirs, _ in os.walk(CGROUP_ROOT):
        found.update(os.path.join(top, d) for d in dirs if tag in d)
    return found


def remove_empty_cgroups(tag: str) -> tuple[list[str], list[tuple[str, str]]]:
    """The cgroups named after the run (its tag is in every container id, so they are the
    benchmark's) that a runtime left: removed when empty, deepest first; (removed, (path, why)
    for the others). rmdir refuses a cgroup with processes or children, so nothing alive goes."""
    removed: list[str] = []
    failed: list[tuple[str, str]] = []
    for path in sorted(cgroups_named(tag), key=lambda p: p.count("/"), reverse=True):
        try:
            os.rmdir(path)
            removed.append(path)
        except OSError as e:
            failed.append((path, e.strerror or str(e)))
    return sorted(removed), sorted(failed)
