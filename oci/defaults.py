"""The config.json `skiff-runc spec` writes: runc's, from libcontainer/specconv/example.go
(`Example` and `ToRootless`), field for field."""

import os

from skiff.oci.spec import (
    Linux,
    LinuxCapabilities,
    LinuxDeviceCgroup,
    LinuxIDMapping,
    LinuxNamespace,
    LinuxNamespaceType,
    LinuxResources,
    Mount,
    POSIXRlimit,
    Process,
    Root,
    Spec,
    User,
)

OCI_VERSION = "1.2.0"

_CAPS = ("CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE")

_MOUNTS: tuple[Mount, ...] = (
    Mount(destination="/proc", type="proc", source="proc"),
    Mount(
        destination="/dev",
        type="tmpfs",
        source="tmpfs",
        options=("nosuid", "strictatime", "mode=755", "size=65536k"),
    ),
    Mount(
        destination="/dev/pts",
        type="devpts",
        source="devpts",
        options=("nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"),
    ),
    Mount(
        destination="/dev/shm",
        type="tmpfs",
        source="shm",
        options=("nosuid", "noexec", "nodev", "mode=1777", "size=65536k"),
    ),
    Mount(
        destination="/dev/mqueue",
        type="mqueue",
        source="mqueue",
        options=("nosuid", "noexec", "nodev"),
    ),
    Mount(
        destination="/sys",
        type="sysfs",
        source="sysfs",
        options=("nosuid", "noexec", "nodev", "ro"),
    ),
    Mount(
        destination="/sys/fs/cgroup",
        type="cgroup",
        source="cgroup",
        options=("nosuid", "noexec", "nodev", "relatime", "ro"),
    ),
)

_MASKED_PATHS = (
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/proc/scsi",
    "/sys/devices/virtual/tpm",
)

_READONLY_PATHS = (
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
)


def default_spec(
    *,
    rootless: bool = False,
    args: tuple[str, ...] | list[str] = ("sh",),
    cgroup_ns: bool | None = None,
) -> Spec:
    """What `runc spec [--rootless]` writes, running `args`.

    runc adds a cgroup namespace when the host runs cgroup v2 alone; `cgroup_ns=None`
    asks the host the same question (is /sys/fs/cgroup the cgroup2 root?).
    `rootless` maps the calling user's euid/egid to root in a new user namespace, shares
    the host's network namespace, bind-mounts /sys (sysfs cannot be mounted without
    owning the netns) and drops the cgroup device rules, as runc's ToRootless does.
    """
    if cgroup_ns is None:
        cgroup_ns = os.path.exists("/sys/fs/cgroup/cgroup.controllers")
    ns_types = [
        LinuxNamespaceType.PID,
        LinuxNamespaceType.NETWORK,
        LinuxNamespaceType.IPC,
        LinuxNamespaceType.UTS,
        LinuxNamespaceType.MOUNT,
    ]
    if cgroup_ns:
        ns_types.append(LinuxNamespaceType.CGROUP)

    mounts = _MOUNTS
    uid_mappings: tuple[LinuxIDMapping, ...] = ()
    gid_mappings: tuple[LinuxIDMapping, ...] = ()
    resources: LinuxResources | None = LinuxResources(
        devices=(LinuxDeviceCgroup(allow=False, access="rwm"),)
    )
    if rootless:
        ns_types.remove(LinuxNamespaceType.NETWORK)
        ns_types.append(LinuxNamespaceType.USER)
        uid_mappings = (LinuxIDMapping(container_id=0, host_id=os.geteuid(), size=1),)
        gid_mappings = (LinuxIDMapping(container_id=0, host_id=os.getegid(), size=1),)
        mounts = tuple(_rootless_mount(m) for m in _MOUNTS)
        resources = None

    return Spec(
        oci_version=OCI_VERSION,
        process=Process(
            terminal=True,
            user=User(uid=0, gid=0),
            args=tuple(args),
            env=(
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "TERM=xterm",
            ),
            cwd="/",
            capabilities=LinuxCapabilities(bounding=_CAPS, effective=_CAPS, permitted=_CAPS),
            rlimits=(POSIXRlimit(type="RLIMIT_NOFILE", hard=1024, soft=1024),),
            no_new_privileges=True,
        ),
        root=Root(path="rootfs", readonly=True),
        hostname="runc",
        mounts=mounts,
        linux=Linux(
            uid_mappings=uid_mappings,
            gid_mappings=gid_mappings,
            resources=resources,
            namespaces=tuple(LinuxNamespace(type=t) for t in ns_types),
            masked_paths=_MASKED_PATHS,
            readonly_paths=_READONLY_PATHS,
        ),
    )


def _rootless_mount(m: Mount) -> Mount:
    if m.destination == "/sys":
        return Mount(
            destination="/sys",
            type="none",
            source="/sys",
            options=("rbind", "nosuid", "noexec", "nodev", "ro"),
        )
    # a uid= or gid= the new user namespace may not map fails the mount
    options = tuple(o for o in m.options if not o.startswith(("uid=", "gid=")))
    return Mount(destination=m.destination, type=m.type, source=m.source, options=options)
