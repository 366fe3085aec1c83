"""The container's root filesystem, planned in the parent: mount operations with their
flags parsed, the /dev nodes and symlinks, masked and read-only paths.

The child (child.py) only runs these: it resolves each target inside the rootfs without
following a symlink out of it, creates it, and mounts. Option parsing follows runc's
libcontainer/specconv `mountPropagationMapping` and `parseMountOptions`.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, replace

from skiff.errors import InvalidArgument
from skiff.oci.spec import LinuxDevice, LinuxDeviceCgroup, LinuxResources, Spec
from skiff.runtime import libc

# option -> (clear, set). "Clear" options undo a default, as in runc.
_FLAG_OPTIONS: dict[str, tuple[bool, int]] = {
    "ro": (False, libc.MS_RDONLY), "rw": (True, libc.MS_RDONLY),
    "nosuid": (False, libc.MS_NOSUID), "suid": (True, libc.MS_NOSUID),
    "nodev": (False, libc.MS_NODEV), "dev": (True, libc.MS_NODEV),
    "noexec": (False, libc.MS_NOEXEC), "exec": (True, libc.MS_NOEXEC),
    "sync": (False, libc.MS_SYNCHRONOUS), "async": (True, libc.MS_SYNCHRONOUS),
    "dirsync": (False, libc.MS_DIRSYNC),
    "remount": (False, libc.MS_REMOUNT),
    "mand": (False, libc.MS_MANDLOCK), "nomand": (True, libc.MS_MANDLOCK),
    "noatime": (False, libc.MS_NOATIME), "atime": (True, libc.MS_NOATIME),
    "nodiratime": (False, libc.MS_NODIRATIME), "diratime": (True, libc.MS_NODIRATIME),
    "relatime": (False, libc.MS_RELATIME), "norelatime": (True, libc.MS_RELATIME),
    "strictatime": (False, libc.MS_STRICTATIME), "nostrictatime": (True, libc.MS_STRICTATIME),
    "nosymfollow": (False, libc.MS_NOSYMFOLLOW), "symfollow": (True, libc.MS_NOSYMFOLLOW),
    "lazytime": (False, libc.MS_LAZYTIME), "nolazytime": (True, libc.MS_LAZYTIME),
}
PROPAGATION = {
    "private": libc.MS_PRIVATE, "rprivate": libc.MS_PRIVATE | libc.MS_REC,
    "shared": libc.MS_SHARED, "rshared": libc.MS_SHARED | libc.MS_REC,
    "slave": libc.MS_SLAVE, "rslave": libc.MS_SLAVE | libc.MS_REC,
    "unbindable": libc.MS_UNBINDABLE, "runbindable": libc.MS_UNBINDABLE | libc.MS_REC,
}
# Flags a bind remount must repeat: in a user namespace the kernel refuses to drop them
# ("locked" flags), and they are what makes a bind mount ro or nosuid at all.
BIND_REMOUNT_KEEP = libc.MS_NOSUID | libc.MS_NODEV | libc.MS_NOEXEC | libc.MS_RDONLY

# The devices every container gets (runtime-spec config-linux.md "Default Devices").
DEFAULT_DEVICES = (
    ("/dev/null", 1, 3), ("/dev/zero", 1, 5), ("/dev/full", 1, 7),
    ("/dev/random", 1, 8), ("/dev/urandom", 1, 9), ("/dev/tty", 5, 0),
)
DEV_SYMLINKS = (
    ("/proc/self/fd", "/dev/fd"), ("/proc/self/fd/0", "/dev/stdin"),
    ("/proc/self/fd/1", "/dev/stdout"), ("/proc/self/fd/2", "/dev/stderr"),
)


@dataclass(frozen=True, slots=True, kw_only=True)
class MountOp:
    source: str | None
    target: str                    # absolute, inside the container
    fstype: str | None
    flags: int
    data: str | None = None
    propagation: int = 0           # applied by a second mount(2) call: it cannot be combined
    remount: int | None = None     # flags of the MS_REMOUNT|MS_BIND that makes a bind's options take
    is_file: bool = False          # a bind of a file needs a file, not a directory, as target


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceNode:
    path: str
    mode: int                      # S_IFCHR/S_IFBLK/S_IFIFO | permissions
    major: int
    minor: int
    uid: int
    gid: int


@dataclass(frozen=True, slots=True, kw_only=True)
class RootfsPlan:
    path: str                      # absolute host path of the rootfs
    propagation: int               # of "/" in the container's mount namespace
    readonly: bool
    mounts: tuple[MountOp, ...]
    devices: tuple[DeviceNode, ...]
    bind_devices: bool             # in a user namespace mknod is refused: bind the host's nodes
    symlinks: tuple[tuple[str, str], ...]
    masked_paths: tuple[str, ...]
    readonly_paths: tuple[str, ...]


def parse_options(options: tuple[str, ...], field: str) -> tuple[int, int, bool, list[str]]:
    """(flags, propagation, is_bind, data options) from a mount's options."""
    flags = propagation = 0
    bind = False
    data: list[str] = []
    for opt in options:
        if opt in ("bind", "rbind"):
            bind = True
            flags |= libc.MS_BIND | (libc.MS_REC if opt == "rbind" else 0)
        elif opt in _FLAG_OPTIONS:
            clear, flag = _FLAG_OPTIONS[opt]
            flags = flags & ~flag if clear else flags | flag
        elif opt in PROPAGATION:
            propagation |= PROPAGATION[opt]
        elif opt in ("rro", "rrw", "rnosuid", "rnodev", "rnoexec", "idmap", "ridmap"):
            raise InvalidArgument(f"{field}: mount option {opt!r} is not supported by skiff")
        else:
            data.append(opt)
    return flags, propagation, bind, data


def _mount_op(m_source: str | None, destination: str, fstype: str | None, options: tuple[str, ...],
              bundle: str, field: str) -> MountOp:
    flags, propagation, bind, data = parse_options(options, f"{field}.options")
    if fstype == "bind":
        bind = True
        flags |= libc.MS_BIND
    if not bind:
        return MountOp(source=m_source or fstype, target=destination, fstype=fstype, flags=flags,
                       data=",".join(data) or None, propagation=propagation)
    if not m_source:
        raise InvalidArgument(f"{field}.source: a bind mount needs a source")
    source = os.path.join(bundle, m_source)
    try:
        is_file = not stat.S_ISDIR(os.stat(source).st_mode)
    except OSError as e:
        raise InvalidArgument(f"{field}.source: {source}: {(e.strerror or str(e)).lower()}") from e
    # MS_BIND ignores every other flag: they take effect only through a remount.
    extra = flags & ~(libc.MS_BIND | libc.MS_REC)
    return MountOp(source=source, target=destination, fstype=None, flags=libc.MS_BIND | (flags & libc.MS_REC),
                   propagation=propagation, remount=extra if extra else None, is_file=is_file)


def _device(dev: LinuxDevice, i: int) -> DeviceNode:
    kinds = {"c": stat.S_IFCHR, "u": stat.S_IFCHR, "b": stat.S_IFBLK, "p": stat.S_IFIFO}
    if dev.type not in kinds:
        raise InvalidArgument(f"linux.devices[{i}].type: unknown device type {dev.type!r}")
    mode = dev.file_mode if dev.file_mode is not None else 0o666
    return DeviceNode(path=dev.path, mode=kinds[dev.type] | (mode & 0o7777), major=dev.major,
                      minor=dev.minor, uid=dev.uid or 0, gid=dev.gid or 0)


def plan_rootfs(spec: Spec, bundle: str, cgroup_mounts: list[tuple[str, str]], *,
                cgroupns: bool, userns: bool) -> RootfsPlan:
    """`cgroup_mounts` are the cgroup driver's (name, host dir) pairs for a "cgroup" mount."""
    assert spec.root is not None  # validated
    linux = spec.linux
    ops: list[MountOp] = []
    dev_is_tmpfs = False
    for i, m in enumerate(spec.mounts):
        field = f"mounts[{i}]"
        if m.type == "cgroup" or m.type == "cgroup2":
            ops.extend(_cgroup_ops(m.destination, m.options, cgroup_mounts, cgroupns, field))
            continue
        op = _mount_op(m.source, m.destination, m.type, m.options, bundle, field)
        if m.destination == "/dev":
            dev_is_tmpfs = op.fstype == "tmpfs"
        ops.append(op)
    devices = [DeviceNode(path=p, mode=stat.S_IFCHR | 0o666, major=ma, minor=mi, uid=0, gid=0)
               for p, ma, mi in DEFAULT_DEVICES]
    if linux:
        devices += [_device(d, i) for i, d in enumerate(linux.devices)]
    symlinks = list(DEV_SYMLINKS)
    if any(op.target == "/dev/pts" for op in ops):
        symlinks.append(("pts/ptmx", "/dev/ptmx"))
    if os.path.exists("/proc/kcore"):
        symlinks.append(("/proc/kcore", "/dev/core"))
    propagation = PROPAGATION.get(linux.rootfs_propagation or "", 0) if linux else 0
    return RootfsPlan(
        path=os.path.join(bundle, spec.root.path),
        propagation=propagation,
        readonly=spec.root.readonly,
        mounts=tuple(ops),
        # runc sets up /dev only when the spec mounts a fresh one; a bind of the host's is left alone.
        devices=tuple(devices) if dev_is_tmpfs else (),
        bind_devices=userns,
        symlinks=tuple(symlinks) if dev_is_tmpfs else (),
        masked_paths=linux.masked_paths if linux else (),
        readonly_paths=linux.readonly_paths if linux else (),
    )


def _cgroup_ops(destination: str, options: tuple[str, ...], cgroup_mounts: list[tuple[str, str]],
                cgroupns: bool, field: str) -> list[MountOp]:
    flags, _, _, _ = parse_options(options, f"{field}.options")
    flags &= libc.MS_RDONLY | libc.MS_NOSUID | libc.MS_NODEV | libc.MS_NOEXEC
    if len(cgroup_mounts) == 1 and cgroup_mounts[0][0] == "":
        if cgroupns:  # a fresh cgroup2 mount inside the cgroup namespace shows the container's own tree
            return [MountOp(source="cgroup", target=destination, fstype="cgroup2", flags=flags)]
        return [MountOp(source=cgroup_mounts[0][1], target=destination, fstype=None, flags=libc.MS_BIND,
                        remount=flags or None)]
    # v1: a tmpfs holding one bind of the container's own cgroup per controller, as runc does.
    ops = [MountOp(source="tmpfs", target=destination, fstype="tmpfs",
                   flags=libc.MS_NOSUID | libc.MS_NODEV | libc.MS_NOEXEC, data="mode=755")]
    for name, host_dir in cgroup_mounts:
        ops.append(MountOp(source=host_dir, target=f"{destination}/{name}", fstype=None,
                           flags=libc.MS_BIND, remount=flags or None))
    if flags & libc.MS_RDONLY:
        ops.append(MountOp(source=None, target=destination, fstype=None,
                           flags=libc.MS_REMOUNT | libc.MS_BIND | flags))
    return ops


def with_device_rules(resources: LinuxResources | None, devices: tuple[LinuxDevice, ...]) -> LinuxResources:
    """The spec's device cgroup rules, then allows for the default devices, /dev/pts and the
    spec's own devices: a spec's usual "deny all" must not deny what the runtime creates
    (runc's specconv AllowedDevices)."""
    allows = [LinuxDeviceCgroup(allow=True, type="c", major=major, minor=minor, access="rwm")
              for _, major, minor in DEFAULT_DEVICES]
    allows += [LinuxDeviceCgroup(allow=True, type="c", major=5, minor=1, access="rwm"),    # console
               LinuxDeviceCgroup(allow=True, type="c", major=5, minor=2, access="rwm"),    # ptmx
               LinuxDeviceCgroup(allow=True, type="c", major=136, minor=None, access="rwm")]  # pts
    allows += [LinuxDeviceCgroup(allow=True, type=d.type if d.type != "u" else "c", major=d.major,
                                 minor=d.minor, access="rwm") for d in devices]
    resources = resources or LinuxResources()
    return replace(resources, devices=resources.devices + tuple(allows))
