"""A CRI v1 ContainerConfig, and the pod it joins, turned into an OCI runtime spec: what
containerd's CRI plugin builds in `internal/cri/server/container_create.go`
(`buildLinuxSpec`, `linuxContainerMounts`) with the options of `internal/cri/opts/`
(`spec_linux_opts.go`: mounts, devices, resources, oom score; `spec_opts.go`:
capabilities, pod namespaces, supplemental groups).

The image part (args, env, working dir, user lookup) is `images.runtime_config.runtime_spec`;
this module changes what CRI decides:

    process     terminal from tty; HOSTNAME first in env; docker's 14 default capabilities
                (containerd's default spec, not runc's 3) changed by add/drop/add_ambient;
                no rlimits (inherited, containerd/cri#515); noNewPrivileges from no_new_privs;
                oomScoreAdj clamped to what this process may grant
    namespaces  a new mount namespace; network, ipc and uts (which follows network, as
                kubelet's hostNetwork does) join the pod's or stay the host's; pid joins the
                pod's, is new, or is the host's; cgroup new on cgroup v2 unless privileged
    mounts      runc's defaults; the pod's /etc/hostname, /etc/hosts, /etc/resolv.conf and
                /dev/shm; then the CRI mounts, sorted by depth, replacing defaults at the
                same path (and everything under /dev when /dev is mounted)
    linux       devices and their cgroup rules, resources, seccomp, masked and read-only
                paths, cgroupsPath from the service
    annotations the config's, then containerd's io.kubernetes.cri.* ones

Errors are InvalidArgument naming the CRI field: fields of the ContainerConfig as they are
(`mounts[2].container_path`), fields of the pod's config under `sandbox_config.`, as the
two sit in a CreateContainerRequest.

Not done here: SELinux and AppArmor (skiff has neither), user namespaces (refused), image
volumes and `Mount.image` (refused), CDI devices, the privileged container's host devices
(containerd's WithHostDevices; the device cgroup does allow them all), blockio/RDT classes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import posixpath
import re
import socket
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from cri_api.v1 import api_pb2 as pb

from skiff.cri.seccomp_default import runtime_default_profile
from skiff.errors import InvalidArgument
from skiff.images.runtime_config import RuntimeConfigError, resolve_user, runtime_spec
from skiff.oci import validate_spec
from skiff.oci.codec import from_json
from skiff.oci.image import ImageConfig
from skiff.oci.spec import (
    Linux,
    LinuxCapabilities,
    LinuxCPU,
    LinuxDevice,
    LinuxDeviceCgroup,
    LinuxHugepageLimit,
    LinuxMemory,
    LinuxNamespace,
    LinuxNamespaceType,
    LinuxResources,
    LinuxSeccomp,
    Mount,
    Spec,
    SpecError,
    User,
)
from skiff.oci.validate import CAPABILITIES
from skiff.runtime.capabilities import last_cap
from skiff.runtime.seccomp import SeccompError
from skiff.runtime.seccomp import validate as validate_seccomp

# containerd pkg/cri/annotations
CONTAINER_TYPE = "io.kubernetes.cri.container-type"
SANDBOX_ID = "io.kubernetes.cri.sandbox-id"
SANDBOX_NAMESPACE = "io.kubernetes.cri.sandbox-namespace"
SANDBOX_UID = "io.kubernetes.cri.sandbox-uid"
SANDBOX_NAME = "io.kubernetes.cri.sandbox-name"
CONTAINER_NAME = "io.kubernetes.cri.container-name"
IMAGE_NAME = "io.kubernetes.cri.image-name"

# containerd's (and docker's) default set, oci/spec.go `defaultUnixCaps`: images expect
# chown, setuid and friends as root, which runc's 3-capability example spec lacks
DEFAULT_CAPABILITIES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
)  # fmt: skip

__all__ = ["PodContext", "container_spec", "linux_resources", "load_seccomp_profile", "pod_hostname"]

_SC = "linux.security_context"
_POD_NS = "sandbox_config.linux.security_context.namespace_options"
_MAX_ID = 2**31 - 1
_MAX_PROFILE = 1 << 20  # moby's default profile is 20 KiB; a megabyte is not a profile
_CAP_SYS_RESOURCE = CAPABILITIES.index("CAP_SYS_RESOURCE")
_PROPAGATION: dict[int, str] = {
    pb.PROPAGATION_PRIVATE: "rprivate",
    pb.PROPAGATION_HOST_TO_CONTAINER: "rslave",
    pb.PROPAGATION_BIDIRECTIONAL: "rshared",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class PodContext:
    """What a container takes from its pod sandbox."""

    sandbox_id: str
    config: pb.PodSandboxConfig
    # OCI namespace type ("network", "ipc", "uts", "pid") -> the pod's pinned namespace
    namespace_paths: Mapping[str, str]
    # holds, when IPC is pod-shared, `shm/` (a tmpfs the service mounted)
    pod_dir: str
    # holds `hostname`, `hosts`, `resolv.conf` (each may be missing)
    files_dir: str
    cgroups_path: str  # the container's linux.cgroupsPath (the service computes it)


def container_spec(
    config: pb.ContainerConfig,
    pod: PodContext,
    *,
    image: ImageConfig | None,
    rootfs: str,
    container_id: str,
) -> Spec:
    """The OCI spec for container `container_id` of `config` in `pod`, its root at `rootfs`
    (an image's unpacked or mounted root; its /etc/passwd resolves users). May create a
    missing host path of a CRI mount, as containerd does; nothing else is written."""
    sc = config.linux.security_context
    privileged = _privileged(sc, pod.config)
    base = _image_spec(config, image, rootfs)
    assert base.process is not None and base.linux is not None  # runtime_spec sets both

    caps = _capabilities(sc.capabilities, privileged)
    namespaces = _namespaces(config, pod, base.linux, privileged)
    ipc_host = pod.config.linux.security_context.namespace_options.ipc == pb.NODE
    mounts, propagation = _mounts(config, pod, base.mounts, ipc_host=ipc_host, privileged=privileged)
    devices, device_rules = _devices(config.devices)
    process = dataclasses.replace(
        base.process,
        terminal=config.tty,
        env=_with_hostname(base.process.env, pod.config),
        user=_user(base.process.user, sc, image, rootfs),
        capabilities=caps,
        rlimits=(),
        no_new_privileges=sc.no_new_privs,
        oom_score_adj=_oom_score_adj(config.linux.resources)
        if config.linux.HasField("resources")
        else None,
    )
    linux = Linux(
        resources=_resources(config.linux, base.linux.resources, device_rules, privileged),
        cgroups_path=pod.cgroups_path,
        namespaces=namespaces,
        devices=devices,
        seccomp=None if privileged else _seccomp(sc, caps.bounding),
        rootfs_propagation=propagation,
        masked_paths=() if privileged else _paths(sc.masked_paths, "masked_paths", base.linux.masked_paths),
        readonly_paths=()
        if privileged
        else _paths(sc.readonly_paths, "readonly_paths", base.linux.readonly_paths),
    )
    spec = dataclasses.replace(
        base,
        process=process,
        # the uts namespace is the pod's or the host's: the pod set its hostname
        hostname=None,
        mounts=mounts,
        annotations=_annotations(config, pod),
        linux=linux,
    )
    _validate(spec)
    return spec


def new_namespaces(config: pb.ContainerConfig, pod: PodContext) -> tuple[LinuxNamespaceType, ...]:
    """The namespaces the container's spec will make rather than join, known before its
    image is at hand (for Runtime.prepare); a config that container_spec refuses has none."""
    try:
        found = _namespaces(config, pod, Linux(), _privileged(config.linux.security_context, pod.config))
    except InvalidArgument:
        return ()
    return tuple(ns.type for ns in found if not ns.path)


# --- process -------------------------------------------------------------------------


def _image_spec(config: pb.ContainerConfig, image: ImageConfig | None, rootfs: str) -> Spec:
    env = []
    for i, kv in enumerate(config.envs):
        if not kv.key or "=" in kv.key:
            raise InvalidArgument(f"envs[{i}].key: must be a non-empty name without '=', got {kv.key!r}")
        env.append(f"{kv.key}={kv.value}")
    user, field = _user_string(config.linux.security_context)
    try:
        return runtime_spec(
            image,
            rootfs,
            args=tuple(config.args),
            # an empty repeated field is "not given" in protobuf: the image's Entrypoint
            entrypoint=tuple(config.command) or None,
            env=env,
            working_dir=config.working_dir or None,
            user=user,
            readonly=config.linux.security_context.readonly_rootfs,
        )
    except RuntimeConfigError as e:
        if field and str(e).startswith(("user ", "group ")):
            raise RuntimeConfigError(f"{field}: {e}") from e
        raise


def _user_string(sc: pb.LinuxContainerSecurityContext) -> tuple[str | None, str]:
    """The user as runtime_spec takes it, and the field it came from; (None, "") for the
    image's user. containerd util.GenerateUserString: run_as_username wins over
    run_as_user, and a group needs a user."""
    user, field = "", ""
    if sc.HasField("run_as_user"):
        user, field = str(_id(sc.run_as_user.value, f"{_SC}.run_as_user")), f"{_SC}.run_as_user"
    if sc.run_as_username:
        user, field = sc.run_as_username, f"{_SC}.run_as_username"
    if sc.HasField("run_as_group"):
        group = _id(sc.run_as_group.value, f"{_SC}.run_as_group")
        if not user:
            raise InvalidArgument(f"{_SC}.run_as_group: needs run_as_user or run_as_username")
        return f"{user}:{group}", field
    return user or None, field


def _id(value: int, field: str) -> int:
    if not 0 <= value <= _MAX_ID:
        raise InvalidArgument(f"{field}: must be between 0 and {_MAX_ID}, got {value}")
    return value


def _user(user: User, sc: pb.LinuxContainerSecurityContext, image: ImageConfig | None,
          rootfs: str) -> User:
    """The supplementary groups (containerd containerSpecOpts): Merge adds the groups of
    the image's /etc/group listing the user to supplemental_groups, Strict takes
    supplemental_groups alone; the primary gid is always in the list, as containerd's
    ensureAdditionalGids keeps it (CVE-2023-25173)."""
    groups = {_id(g, f"{_SC}.supplemental_groups[{i}]") for i, g in enumerate(sc.supplemental_groups)}
    if sc.supplemental_groups_policy == pb.Merge:
        name, _ = _user_string(sc)
        user_part = (name if name is not None else (image.user if image else None) or "0").partition(":")[0]
        # the user part alone: a group given beside it does not hide the user's memberships
        groups.update(resolve_user(rootfs, user_part).additional_gids)
    elif sc.supplemental_groups_policy != pb.Strict:
        policy = sc.supplemental_groups_policy
        raise InvalidArgument(f"{_SC}.supplemental_groups_policy: unknown policy {policy}")
    groups.add(user.gid)
    return dataclasses.replace(user, additional_gids=tuple(sorted(groups)))


def pod_hostname(pod: pb.PodSandboxConfig) -> str:
    """The pod's hostname: the config's, else (with a UTS namespace of its own) the pod's
    name, as kubelet would set it; "" for a host-network pod, which has the node's."""
    if pod.hostname:
        return pod.hostname
    if pod.linux.security_context.namespace_options.network == pb.NODE:
        return ""
    return pod.metadata.name[:63]


def _with_hostname(env: tuple[str, ...], pod: pb.PodSandboxConfig) -> tuple[str, ...]:
    # containerd sets HOSTNAME before the image's and the config's env, which may replace it
    if any(e.startswith("HOSTNAME=") for e in env):
        return env
    return (f"HOSTNAME={pod_hostname(pod) or socket.gethostname()}", *env)


def _privileged(sc: pb.LinuxContainerSecurityContext, pod: pb.PodSandboxConfig) -> bool:
    if sc.privileged and not pod.linux.security_context.privileged:
        raise InvalidArgument(f"{_SC}.privileged: the pod sandbox is not privileged")
    return sc.privileged


def _capabilities(c: pb.Capability, privileged: bool) -> LinuxCapabilities:
    """containerd WithCapabilities: "ALL" in add starts from every capability, "ALL" in
    drop from none, then single adds, then single drops. Ambient capabilities must also
    be inheritable and permitted for the kernel to keep them across execve."""
    every = CAPABILITIES[: last_cap() + 1]
    if privileged:
        return LinuxCapabilities(bounding=every, effective=every, permitted=every)
    add = _cap_names(c.add_capabilities, f"{_SC}.capabilities.add_capabilities")
    drop = _cap_names(c.drop_capabilities, f"{_SC}.capabilities.drop_capabilities")
    ambient = _cap_names(c.add_ambient_capabilities, f"{_SC}.capabilities.add_ambient_capabilities")
    if "ALL" in ambient:
        raise InvalidArgument(f"{_SC}.capabilities.add_ambient_capabilities: \"ALL\" is not allowed")
    caps = set(DEFAULT_CAPABILITIES)
    if "ALL" in add:
        caps = set(every)
    if "ALL" in drop:
        caps = set()
    caps |= set(add) - {"ALL"}
    caps -= set(drop)
    caps |= set(ambient)
    ordered = tuple(name for name in CAPABILITIES if name in caps)
    amb = tuple(name for name in CAPABILITIES if name in ambient)
    return LinuxCapabilities(bounding=ordered, effective=ordered, inheritable=amb, permitted=ordered,
                             ambient=amb)


def _cap_names(names: Iterable[str], field: str) -> list[str]:
    """CRI names come without the CAP_ prefix (kubelet), or with it (crictl users)."""
    found = []
    for i, raw in enumerate(names):
        name = raw.strip().upper()
        if name != "ALL" and not name.startswith("CAP_"):
            name = "CAP_" + name
        if name != "ALL" and name not in CAPABILITIES:
            raise InvalidArgument(f"{field}[{i}]: unknown capability {raw!r}")
        found.append(name)
    return found


def _oom_score_adj(resources: pb.LinuxContainerResources) -> int:
    """The requested score, raised to this process's own: without CAP_SYS_RESOURCE the
    kernel refuses a child a lower score than ours (EACCES), which would fail the start.
    containerd's restrict_oom_score_adj does the same; values the host cannot grant are
    clamped, not fatal."""
    requested = resources.oom_score_adj
    if not -1000 <= requested <= 1000:
        raise InvalidArgument(f"linux.resources.oom_score_adj: must be between -1000 and 1000, got {requested}")
    if _has_effective_capability(_CAP_SYS_RESOURCE):
        return requested
    with open("/proc/self/oom_score_adj") as f:
        return max(requested, int(f.read()))


def _has_effective_capability(number: int) -> bool:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> number & 1)
    return False


# --- namespaces ----------------------------------------------------------------------


def _namespaces(config: pb.ContainerConfig, pod: PodContext, base: Linux,
                privileged: bool) -> tuple[LinuxNamespace, ...]:
    pod_ns = pod.config.linux.security_context.namespace_options
    ctr_sc = config.linux.security_context
    _no_userns(pod_ns, _POD_NS)
    if ctr_sc.HasField("namespace_options"):
        _no_userns(ctr_sc.namespace_options, f"{_SC}.namespace_options")
    for name, mode in (("network", pod_ns.network), ("ipc", pod_ns.ipc)):
        if mode not in (pb.POD, pb.NODE):
            raise InvalidArgument(f"{_POD_NS}.{name}: {pb.NamespaceMode.Name(mode)} is only valid for pid")

    # kubelet sends the pod's options in the container's config too; a container's own
    # pid mode (TARGET for an ephemeral container) is the one that counts
    if ctr_sc.HasField("namespace_options"):
        pid_mode, pid_field = ctr_sc.namespace_options.pid, f"{_SC}.namespace_options.pid"
    else:
        pid_mode, pid_field = pod_ns.pid, f"{_POD_NS}.pid"
    if pid_mode == pb.TARGET:
        # PodContext carries the pod's namespaces only, not the target container's: join
        # the pod's pid namespace when it has one (then the target shares it), else give
        # the container its own, as for CONTAINER
        pid_mode = pb.POD if "pid" in pod.namespace_paths else pb.CONTAINER

    found = [
        _namespace(LinuxNamespaceType.PID, pid_mode, pod, pid_field),
        _namespace(LinuxNamespaceType.NETWORK, pod_ns.network, pod, f"{_POD_NS}.network"),
        _namespace(LinuxNamespaceType.IPC, pod_ns.ipc, pod, f"{_POD_NS}.ipc"),
        # CRI has no uts mode: the pod's uts goes with its network, as hostNetwork does
        _namespace(LinuxNamespaceType.UTS, pod_ns.network, pod, f"{_POD_NS}.network"),
        LinuxNamespace(type=LinuxNamespaceType.MOUNT),
    ]
    # runtime_spec adds a cgroup namespace on cgroup v2 hosts; containerd leaves it out for
    # privileged containers (they may manage cgroups)
    if base.namespace(LinuxNamespaceType.CGROUP) is not None and not privileged:
        found.append(LinuxNamespace(type=LinuxNamespaceType.CGROUP))
    return tuple(ns for ns in found if ns is not None)


def _namespace(kind: LinuxNamespaceType, mode: int, pod: PodContext, field: str) -> LinuxNamespace | None:
    if mode == pb.NODE:
        return None  # no entry: the runtime's own, which is the host's
    if mode == pb.CONTAINER:
        return LinuxNamespace(type=kind)
    path = pod.namespace_paths.get(kind.value)
    if not path:
        raise InvalidArgument(f"{field}: POD mode, but the pod has no {kind.value} namespace to join")
    return LinuxNamespace(type=kind, path=path)


def _no_userns(options: pb.NamespaceOption, field: str) -> None:
    if options.HasField("userns_options") and options.userns_options.mode != pb.NODE:
        raise InvalidArgument(f"{field}.userns_options: user namespaces are not supported by skiff")


# --- mounts --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class _Bind:
    container_path: str
    host_path: str
    readonly: bool = False
    propagation: int = pb.PROPAGATION_PRIVATE
    field: str  # where it came from, for errors


def _mounts(config: pb.ContainerConfig, pod: PodContext, defaults: Sequence[Mount], *,
            ipc_host: bool, privileged: bool) -> tuple[tuple[Mount, ...], str | None]:
    """containerd withMounts: CRI mounts win over the pod's files at the same path, both
    replace default mounts there, and a /dev mount takes every default under /dev."""
    cri = [_cri_bind(m, i) for i, m in enumerate(config.mounts)]
    taken = {b.container_path for b in cri}
    readonly = config.linux.security_context.readonly_rootfs
    binds = cri + [b for b in _pod_binds(pod, ipc_host, readonly) if b.container_path not in taken]
    # fewer path parts first, so that /a is mounted before /a/b (moby's orderedMounts)
    binds.sort(key=lambda b: b.container_path.rstrip("/").count("/"))
    targets = {b.container_path for b in binds}

    kept = []
    for m in defaults:
        dst = posixpath.normpath(m.destination)
        if dst in targets or ("/dev" in targets and dst.startswith("/dev/")):
            continue
        if privileged and dst in ("/sys", "/sys/fs/cgroup"):
            # containerd WithWriteableSysfs, WithWriteableCgroupfs
            m = dataclasses.replace(m, options=tuple(o for o in m.options if o != "ro"))
        kept.append(m)

    propagation: str | None = None
    for b in binds:
        kept.append(_bind_mount(b))
        if b.propagation == pb.PROPAGATION_BIDIRECTIONAL:
            propagation = "rshared"
        elif b.propagation == pb.PROPAGATION_HOST_TO_CONTAINER and propagation != "rshared":
            propagation = "rslave"
    return tuple(kept), propagation


def _cri_bind(m: pb.Mount, i: int) -> _Bind:
    field = f"mounts[{i}]"
    if not posixpath.isabs(m.container_path):
        raise InvalidArgument(f"{field}.container_path: must be an absolute path, got {m.container_path!r}")
    if not m.host_path:
        # an image volume (Mount.image) has no host path
        what = "image mounts are not supported" if m.HasField("image") else "required"
        raise InvalidArgument(f"{field}.host_path: {what}")
    if not posixpath.isabs(m.host_path):
        raise InvalidArgument(f"{field}.host_path: must be an absolute path, got {m.host_path!r}")
    if m.uidMappings or m.gidMappings:
        raise InvalidArgument(f"{field}: idmapped mounts are not supported by skiff")
    if m.recursive_read_only:
        raise InvalidArgument(f"{field}.recursive_read_only: not supported by skiff")
    if m.propagation not in _PROPAGATION:
        raise InvalidArgument(f"{field}.propagation: unknown propagation {m.propagation}")
    return _Bind(container_path=posixpath.normpath(m.container_path), host_path=m.host_path,
                 readonly=m.readonly, propagation=m.propagation, field=field)


def _pod_binds(pod: PodContext, ipc_host: bool, readonly: bool) -> list[_Bind]:
    """containerd linuxContainerMounts: the pod's files where they exist. They are as
    read-only as the rootfs; /dev/shm never is."""
    found = []
    for name, target in (("hostname", "/etc/hostname"), ("hosts", "/etc/hosts"),
                         ("resolv.conf", "/etc/resolv.conf")):
        source = os.path.join(pod.files_dir, name)
        if os.path.isfile(source):
            found.append(_Bind(container_path=target, host_path=source, readonly=readonly,
                               field=f"pod {name}"))
    shm = "/dev/shm" if ipc_host else os.path.join(pod.pod_dir, "shm")
    if os.path.isdir(shm):
        found.append(_Bind(container_path="/dev/shm", host_path=shm, field="pod shm"))
    return found


def _bind_mount(b: _Bind) -> Mount:
    source = b.host_path
    if not os.path.lexists(source):
        # kubelet relies on it: a hostPath volume of type "" is created on demand
        try:
            os.makedirs(source, mode=0o755, exist_ok=True)
        except OSError as e:
            raise InvalidArgument(f"{b.field}.host_path: {source}: {_strerror(e)}") from e
    source = os.path.realpath(source)
    if b.propagation != pb.PROPAGATION_PRIVATE:
        _check_source_propagation(source, b)
    return Mount(
        destination=b.container_path,
        type="bind",
        source=source,
        # containerd does not make bind mounts read-only with a read-only rootfs (nor do we)
        options=("rbind", _PROPAGATION[b.propagation], "ro" if b.readonly else "rw"),
    )


def _check_source_propagation(source: str, b: _Bind) -> None:
    """containerd ensureShared / ensureSharedOrSlave: a propagating bind of a private
    mount would silently propagate nothing."""
    mount_point, optional = _mount_of(source)
    shared = any(o.startswith("shared:") for o in optional)
    slave = any(o.startswith("master:") for o in optional)
    if b.propagation == pb.PROPAGATION_BIDIRECTIONAL and not shared:
        raise InvalidArgument(
            f"{b.field}.propagation: {source} is on {mount_point}, which is not a shared mount"
        )
    if b.propagation == pb.PROPAGATION_HOST_TO_CONTAINER and not (shared or slave):
        raise InvalidArgument(
            f"{b.field}.propagation: {source} is on {mount_point}, which is neither shared nor slave"
        )


def _mount_of(path: str) -> tuple[str, list[str]]:
    """The mount point holding `path` (resolved) and its optional mountinfo fields."""
    best, optional = "/", []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            point = fields[4].encode().decode("unicode_escape")  # \040 for a space
            inside = path == point or path.startswith(point.rstrip("/") + "/")
            if inside and len(point) >= len(best):
                best, optional = point, fields[6 : fields.index("-")]
    return best, optional


# --- devices and resources -----------------------------------------------------------


def _devices(devices: Iterable[pb.Device]) -> tuple[tuple[LinuxDevice, ...], tuple[LinuxDeviceCgroup, ...]]:
    """Each CRI device as a node to create and a device cgroup rule allowing it
    (containerd WithDevices, oci.DeviceFromPath: type, numbers, mode and owner of the
    host node, symlinks followed)."""
    nodes, rules = [], []
    for i, d in enumerate(devices):
        field = f"devices[{i}]"
        if not posixpath.isabs(d.container_path):
            raise InvalidArgument(f"{field}.container_path: must be an absolute path, got {d.container_path!r}")
        access = d.permissions or "rwm"
        if set(access) - set("rwm"):
            raise InvalidArgument(f"{field}.permissions: must be a combination of r, w and m, got {access!r}")
        try:
            st = os.stat(d.host_path) if d.host_path else None
        except OSError as e:
            raise InvalidArgument(f"{field}.host_path: {d.host_path}: {_strerror(e)}") from e
        if st is None or not (stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)):
            raise InvalidArgument(f"{field}.host_path: {d.host_path!r} is not a device node")
        kind = "c" if stat.S_ISCHR(st.st_mode) else "b"
        major, minor = os.major(st.st_rdev), os.minor(st.st_rdev)
        nodes.append(LinuxDevice(path=posixpath.normpath(d.container_path), type=kind, major=major,
                                 minor=minor, file_mode=stat.S_IMODE(st.st_mode), uid=st.st_uid,
                                 gid=st.st_gid))
        rules.append(LinuxDeviceCgroup(allow=True, type=kind, major=major, minor=minor, access=access))
    return tuple(nodes), tuple(rules)


def _resources(linux: pb.LinuxContainerConfig, base: LinuxResources | None,
               device_rules: tuple[LinuxDeviceCgroup, ...], privileged: bool) -> LinuxResources:
    """containerd WithResources: zero means unset; a memory limit without a swap limit
    caps swap at the limit (no swapping), where the host accounts swap."""
    if privileged:  # containerd WithAllDevicesAllowed
        devices: tuple[LinuxDeviceCgroup, ...] = (LinuxDeviceCgroup(allow=True, access="rwm"),)
    else:
        devices = (base.devices if base else ()) + device_rules
    if not linux.HasField("resources"):
        return LinuxResources(devices=devices)
    r = linux.resources
    cpu = LinuxCPU(
        shares=r.cpu_shares or None,
        quota=r.cpu_quota or None,
        period=r.cpu_period or None,
        cpus=r.cpuset_cpus or None,
        mems=r.cpuset_mems or None,
    )
    limit = r.memory_limit_in_bytes or None
    swap = r.memory_swap_limit_in_bytes or limit
    memory = LinuxMemory(limit=limit, swap=swap if swap and _swap_accounted() else None)
    return LinuxResources(
        devices=devices,
        memory=memory if memory != LinuxMemory() else None,
        cpu=cpu if cpu != LinuxCPU() else None,
        hugepage_limits=tuple(LinuxHugepageLimit(page_size=h.page_size, limit=h.limit)
                              for h in r.hugepage_limits),
        unified=dict(r.unified),
    )


def linux_resources(resources: pb.LinuxContainerResources, current: LinuxResources | None) -> LinuxResources:
    """UpdateContainerResources: the new limits, keeping the device rules the container has."""
    keep = LinuxResources(devices=current.devices if current else ())
    return _resources(pb.LinuxContainerConfig(resources=resources), keep, (), privileged=False)


def _swap_accounted() -> bool:
    """containerd SwapControllerAvailable: v1 memory.memsw.*, or memory.swap.max in our
    own v2 cgroup (the root has none)."""
    if os.path.exists("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes"):
        return True
    try:
        with open("/proc/self/cgroup") as f:
            own = next((line.split(":", 2)[2].strip() for line in f if line.startswith("0::")), None)
    except OSError:
        return False
    return own is not None and os.path.exists(f"/sys/fs/cgroup{own.rstrip('/')}/memory.swap.max")


# --- seccomp -------------------------------------------------------------------------


def _seccomp(sc: pb.LinuxContainerSecurityContext, caps: tuple[str, ...]) -> LinuxSeccomp | None:
    """containerd sputil: the `seccomp` profile, else the deprecated
    seccomp_profile_path, where "" means unconfined (containerd's default)."""
    kind: int
    if sc.HasField("seccomp"):
        kind, ref, field = sc.seccomp.profile_type, sc.seccomp.localhost_ref, f"{_SC}.seccomp.localhost_ref"
    else:
        kind, ref, field = _profile_from_path(sc.seccomp_profile_path)
    if kind == pb.SecurityProfile.RuntimeDefault:
        return runtime_default_profile(caps)
    if kind == pb.SecurityProfile.Unconfined:
        return None
    if kind != pb.SecurityProfile.Localhost:
        raise InvalidArgument(f"{_SC}.seccomp.profile_type: unknown profile type {kind}")
    if not posixpath.isabs(ref):
        raise InvalidArgument(f"{field}: must be an absolute path, got {ref!r}")
    return load_seccomp_profile(ref, caps, field=field)


def _profile_from_path(path: str) -> tuple[int, str, str]:
    field = f"{_SC}.seccomp_profile_path"
    if path in ("", "unconfined"):
        return pb.SecurityProfile.Unconfined, "", field
    if path in ("runtime/default", "docker/default"):
        return pb.SecurityProfile.RuntimeDefault, "", field
    if path.startswith("localhost/"):
        return pb.SecurityProfile.Localhost, path.removeprefix("localhost/"), field
    raise InvalidArgument(f"{field}: unknown seccomp profile {path!r}")


def load_seccomp_profile(path: str, caps: Iterable[str], *, field: str = "seccomp profile") -> LinuxSeccomp:
    """A seccomp profile file in docker's format (moby profiles/seccomp: `archMap`,
    `name`, `includes`/`excludes` by caps, arches and minKernel) or the OCI
    linux.seccomp format, for a container whose bounding set is `caps`. Errors name
    `field` and the file."""
    try:
        with open(path, "rb") as f:
            raw = f.read(_MAX_PROFILE + 1)
    except OSError as e:
        raise InvalidArgument(f"{field}: {path}: {_strerror(e)}") from e
    if len(raw) > _MAX_PROFILE:
        raise InvalidArgument(f"{field}: {path}: larger than {_MAX_PROFILE} bytes")
    try:
        data = json.loads(raw)
    except ValueError as e:
        raise InvalidArgument(f"{field}: {path}: not JSON: {e}") from e
    if not isinstance(data, dict):
        raise InvalidArgument(f"{field}: {path}: expected a JSON object")
    try:
        profile = from_json(LinuxSeccomp, _docker_to_oci(data, frozenset(caps)))
        validate_seccomp(profile)
    except (SpecError, SeccompError) as e:
        raise InvalidArgument(f"{field}: {path}: {e}") from e
    return profile


_NATIVE_ARCH = {"x86_64": "SCMP_ARCH_X86_64", "aarch64": "SCMP_ARCH_AARCH64"}.get(os.uname().machine, "")


def _docker_to_oci(data: dict[str, object], caps: frozenset[str]) -> dict[str, object]:
    """moby's setupSeccomp: the native entry of archMap with its sub-architectures; each
    rule kept when its includes match and its excludes do not; `name` as `names`."""
    out = dict(data)
    arch_map = data.get("archMap")
    if isinstance(arch_map, list) and not data.get("architectures"):
        for entry in arch_map:
            if isinstance(entry, dict) and entry.get("architecture") == _NATIVE_ARCH:
                out["architectures"] = [_NATIVE_ARCH, *(entry.get("subArchitectures") or [])]
    rules = data.get("syscalls")
    if isinstance(rules, list):
        kept = []
        for rule in rules:
            if not isinstance(rule, dict):
                kept.append(rule)  # from_json names the bad entry
                continue
            if not _applies(rule.get("includes"), caps, want=True) or _applies(rule.get("excludes"), caps, want=False):
                continue
            if "names" not in rule and isinstance(rule.get("name"), str):
                rule = {**rule, "names": [rule["name"]]}
            kept.append(rule)
        out["syscalls"] = kept
    return out


def _applies(condition: object, caps: frozenset[str], *, want: bool) -> bool:
    """For includes (`want`): every listed condition holds (an empty one holds). For
    excludes: any listed condition holds (an empty one does not)."""
    if not isinstance(condition, dict):
        return want
    checks = []
    if condition.get("caps"):
        listed = {str(c) for c in condition["caps"]}
        checks.append(listed <= caps if want else bool(listed & caps))
    if condition.get("arches"):
        arch = _NATIVE_ARCH.removeprefix("SCMP_ARCH_").lower()
        checks.append(arch in {str(a).lower() for a in condition["arches"]})
    if condition.get("minKernel"):
        checks.append(_kernel_at_least(str(condition["minKernel"])))
    if not checks:
        return want
    return all(checks) if want else any(checks)


def _kernel_at_least(version: str) -> bool:
    def numbers(text: str) -> tuple[int, ...]:
        return tuple(int(n) for n in re.findall(r"\d+", text)[:2])

    return numbers(os.uname().release) >= numbers(version)


# --- the rest ------------------------------------------------------------------------


def _paths(paths: Sequence[str], name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    # an empty list is "not given" in protobuf: skiff's defaults
    for i, p in enumerate(paths):
        if not posixpath.isabs(p):
            raise InvalidArgument(f"{_SC}.{name}[{i}]: must be an absolute path, got {p!r}")
    return tuple(paths) or default


def _annotations(config: pb.ContainerConfig, pod: PodContext) -> dict[str, str]:
    """The config's annotations, then containerd's DefaultCRIAnnotations (which win)."""
    meta = pod.config.metadata
    annotations = dict(config.annotations)
    annotations.update({
        CONTAINER_TYPE: "container",
        SANDBOX_ID: pod.sandbox_id,
        SANDBOX_NAMESPACE: meta.namespace,
        SANDBOX_UID: meta.uid,
        SANDBOX_NAME: meta.name,
        CONTAINER_NAME: config.metadata.name,
        IMAGE_NAME: config.image.image,
    })  # fmt: skip
    return annotations


# OCI fields validate_spec names, as the CRI fields they came from
_CRI_FIELDS = {
    "linux.resources.cpu.shares": "linux.resources.cpu_shares",
    "linux.resources.cpu.quota": "linux.resources.cpu_quota",
    "linux.resources.cpu.period": "linux.resources.cpu_period",
    "linux.resources.cpu.cpus": "linux.resources.cpuset_cpus",
    "linux.resources.cpu.mems": "linux.resources.cpuset_mems",
    "linux.resources.memory.limit": "linux.resources.memory_limit_in_bytes",
    "linux.resources.memory.swap": "linux.resources.memory_swap_limit_in_bytes",
}


def _validate(spec: Spec) -> None:
    try:
        validate_spec(spec)
    except SpecError as e:
        field = _CRI_FIELDS.get(e.field)
        if field is None:
            field = e.field.replace("hugepageLimits", "hugepage_limits").replace("pageSize", "page_size")
        raise InvalidArgument(f"{field}: {e.reason}") from e


def _strerror(e: OSError) -> str:
    return os.strerror(e.errno).lower() if e.errno else str(e)
