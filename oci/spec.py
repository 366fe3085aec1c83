"""The OCI runtime-spec config.json (1.1/1.2) and runtime state, as frozen data.

Class names are the Go type names of opencontainers/runtime-spec `specs-go/config.go`
and `state.go`; attributes are the snake_case of the JSON names. Where the snake_case does
not camelCase back to the JSON name (`blockIO`, `containerID`, `class`), the field's
metadata carries the JSON name under `"json"`. Fields are declared in the Go struct order
so that `spec_to_dict` writes keys in the order `runc spec` does.

Conventions: an optional scalar is `X | None = None`; a list is a tuple defaulting to ();
a map is a dict defaulting to empty. A field without a default is required in the JSON.
Windows, Solaris, VM, z/OS and Intel RDT parts are not modelled: their JSON is ignored,
as unknown fields are.
"""

import enum
import json
import typing
from dataclasses import FrozenInstanceError, dataclass, field

from skiff.errors import InvalidArgument


class SpecError(InvalidArgument):
    """A config.json (or state, or process.json) that does not parse or validate.

    `field` is the JSON path of the offending value (`mounts[2].destination`); `source`
    names the file it came from when it was loaded from one.
    """

    def __init__(self, field: str, reason: str, *, source: str | None = None) -> None:
        self.field = field
        self.reason = reason
        self.source = source
        parts = [p for p in (source, field, reason) if p]
        super().__init__(": ".join(parts))

    def __reduce__(self) -> tuple[object, ...]:
        # keyword-only `source` would be lost by the default pickling of exceptions
        return (_rebuild_spec_error, (self.field, self.reason, self.source))


def _rebuild_spec_error(field: str, reason: str, source: str | None) -> SpecError:
    return SpecError(field, reason, source=source)


def key_path(path: str, key: str) -> str:
    """The field path of `key` in the JSON object at `path`: `linux.timeOffsets.boottime`,
    or quoted where the key has dots in it, as sysctl and annotation keys do:
    `linux.sysctl["net.ipv4.ip_forward"]`."""
    if key.isidentifier():
        return f"{path}.{key}" if path else key
    return f"{path}[{json.dumps(key)}]"


_T = typing.TypeVar("_T")


class _Model:
    """The methods `@dataclass(frozen=True)` would generate for each model, written once.

    Python 3.11's dataclass compiles every generated method from source, one exec per
    method per class: with frozen, eq, repr and hash that was 10 ms for this module's 34
    classes, on the start path of every skiff-runc command (4 ms this way). Behaviour is
    dataclass's: instances compare and hash as the tuple of their fields, and assigning
    or deleting a field raises FrozenInstanceError.
    """

    __slots__ = ()
    __dataclass_fields__: typing.ClassVar[dict[str, typing.Any]]

    def __setattr__(self, name: str, value: object) -> None:
        # the generated __init__ assigns each field once; any later assignment is a bug
        if hasattr(self, name):
            raise FrozenInstanceError(f"cannot assign to field {name!r}")
        object.__setattr__(self, name, value)

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}")

    def _values(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self.__dataclass_fields__)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        args = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__dataclass_fields__)
        return f"{self.__class__.__qualname__}({args})"


@typing.dataclass_transform(frozen_default=True, kw_only_default=True, field_specifiers=(field,))
def _model(cls: type[_T]) -> type[_T]:
    """@dataclass(frozen=True, slots=True, kw_only=True) for a _Model subclass, to type
    checkers and at run time, built with one exec instead of six: see _Model."""
    return dataclass(slots=True, kw_only=True, eq=False, repr=False)(cls)


class LinuxNamespaceType(enum.StrEnum):
    PID = "pid"
    NETWORK = "network"
    MOUNT = "mount"
    IPC = "ipc"
    UTS = "uts"
    USER = "user"
    CGROUP = "cgroup"
    TIME = "time"


class ContainerState(enum.StrEnum):
    CREATING = "creating"
    CREATED = "created"
    RUNNING = "running"
    STOPPED = "stopped"


# --- process -------------------------------------------------------------------------


@_model
class Box(_Model):
    """process.consoleSize"""

    height: int
    width: int


@_model
class User(_Model):
    """process.user"""

    uid: int
    gid: int
    umask: int | None = None
    additional_gids: tuple[int, ...] = ()
    username: str | None = None


@_model
class LinuxCapabilities(_Model):
    """process.capabilities"""

    bounding: tuple[str, ...] = ()
    effective: tuple[str, ...] = ()
    inheritable: tuple[str, ...] = ()
    permitted: tuple[str, ...] = ()
    ambient: tuple[str, ...] = ()


@_model
class POSIXRlimit(_Model):
    """process.rlimits[]"""

    type: str
    hard: int
    soft: int


@_model
class Scheduler(_Model):
    """process.scheduler: sched_setattr(2) attributes"""

    policy: str
    nice: int = 0
    priority: int = 0
    flags: tuple[str, ...] = ()
    runtime: int = 0
    deadline: int = 0
    period: int = 0


@_model
class LinuxIOPriority(_Model):
    """process.ioPriority"""

    class_: str = field(metadata={"json": "class"})
    priority: int


@_model
class Process(_Model):
    """process, or the whole of an `exec --process` file"""

    terminal: bool = False
    console_size: Box | None = None
    user: User
    args: tuple[str, ...] = ()
    command_line: str | None = None
    env: tuple[str, ...] = ()
    cwd: str
    capabilities: LinuxCapabilities | None = None
    rlimits: tuple[POSIXRlimit, ...] = ()
    no_new_privileges: bool = False
    apparmor_profile: str | None = None
    oom_score_adj: int | None = None
    scheduler: Scheduler | None = None
    selinux_label: str | None = None
    io_priority: LinuxIOPriority | None = None


# --- root, mounts, hooks -------------------------------------------------------------


@_model
class Root(_Model):
    """root; a relative path is relative to the bundle"""

    path: str
    readonly: bool = False


@_model
class LinuxIDMapping(_Model):
    """linux.uidMappings[], linux.gidMappings[], mounts[].uidMappings[]"""

    container_id: int = field(metadata={"json": "containerID"})
    host_id: int = field(metadata={"json": "hostID"})
    size: int


@_model
class Mount(_Model):
    """mounts[]"""

    destination: str
    type: str | None = None
    source: str | None = None
    options: tuple[str, ...] = ()
    uid_mappings: tuple[LinuxIDMapping, ...] = ()
    gid_mappings: tuple[LinuxIDMapping, ...] = ()


@_model
class Hook(_Model):
    """hooks.<stage>[]"""

    path: str
    args: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    timeout: int | None = None


@_model
class Hooks(_Model):
    """hooks"""

    prestart: tuple[Hook, ...] = ()
    create_runtime: tuple[Hook, ...] = ()
    create_container: tuple[Hook, ...] = ()
    start_container: tuple[Hook, ...] = ()
    poststart: tuple[Hook, ...] = ()
    poststop: tuple[Hook, ...] = ()


# --- linux.resources -----------------------------------------------------------------


@_model
class LinuxDeviceCgroup(_Model):
    """linux.resources.devices[]: the device cgroup allow/deny list"""

    allow: bool
    type: str | None = None
    major: int | None = None
    minor: int | None = None
    access: str | None = None


@_model
class LinuxMemory(_Model):
    """linux.resources.memory; bytes, -1 is unlimited, swap counts memory+swap"""

    limit: int | None = None
    reservation: int | None = None
    swap: int | None = None
    kernel: int | None = None
    kernel_tcp: int | None = field(default=None, metadata={"json": "kernelTCP"})
    swappiness: int | None = None
    disable_oom_killer: bool | None = field(default=None, metadata={"json": "disableOOMKiller"})
    use_hierarchy: bool | None = None
    check_before_update: bool | None = None


@_model
class LinuxCPU(_Model):
    """linux.resources.cpu; times in microseconds"""

    shares: int | None = None
    quota: int | None = None
    burst: int | None = None
    period: int | None = None
    realtime_runtime: int | None = None
    realtime_period: int | None = None
    cpus: str | None = None
    mems: str | None = None
    idle: int | None = None


@_model
class LinuxPids(_Model):
    """linux.resources.pids"""

    limit: int


@_model
class LinuxWeightDevice(_Model):
    """linux.resources.blockIO.weightDevice[]"""

    major: int
    minor: int
    weight: int | None = None
    leaf_weight: int | None = None


@_model
class LinuxThrottleDevice(_Model):
    """linux.resources.blockIO.throttle*Device[]"""

    major: int
    minor: int
    rate: int


@_model
class LinuxBlockIO(_Model):
    """linux.resources.blockIO"""

    weight: int | None = None
    leaf_weight: int | None = None
    weight_device: tuple[LinuxWeightDevice, ...] = ()
    throttle_read_bps_device: tuple[LinuxThrottleDevice, ...] = ()
    throttle_write_bps_device: tuple[LinuxThrottleDevice, ...] = ()
    throttle_read_iops_device: tuple[LinuxThrottleDevice, ...] = field(
        default=(), metadata={"json": "throttleReadIOPSDevice"}
    )
    throttle_write_iops_device: tuple[LinuxThrottleDevice, ...] = field(
        default=(), metadata={"json": "throttleWriteIOPSDevice"}
    )


@_model
class LinuxHugepageLimit(_Model):
    """linux.resources.hugepageLimits[]"""

    page_size: str
    limit: int


@_model
class LinuxInterfacePriority(_Model):
    """linux.resources.network.priorities[]"""

    name: str
    priority: int


@_model
class LinuxNetwork(_Model):
    """linux.resources.network"""

    class_id: int | None = field(default=None, metadata={"json": "classID"})
    priorities: tuple[LinuxInterfacePriority, ...] = ()


@_model
class LinuxRdma(_Model):
    """linux.resources.rdma.<device>"""

    hca_handles: int | None = None
    hca_objects: int | None = None


@_model
class LinuxResources(_Model):
    """linux.resources"""

    devices: tuple[LinuxDeviceCgroup, ...] = ()
    memory: LinuxMemory | None = None
    cpu: LinuxCPU | None = None
    pids: LinuxPids | None = None
    block_io: LinuxBlockIO | None = field(default=None, metadata={"json": "blockIO"})
    hugepage_limits: tuple[LinuxHugepageLimit, ...] = ()
    network: LinuxNetwork | None = None
    rdma: dict[str, LinuxRdma] = field(default_factory=dict)
    unified: dict[str, str] = field(default_factory=dict)


# --- linux ---------------------------------------------------------------------------


@_model
class LinuxNamespace(_Model):
    """linux.namespaces[]; a path joins that namespace, no path creates one"""

    type: LinuxNamespaceType
    path: str | None = None


@_model
class LinuxDevice(_Model):
    """linux.devices[]: device nodes to create in the container"""

    path: str
    type: str
    # required by the spec unless type is "p"; a fifo's 0:0 needs no JSON
    major: int = 0
    minor: int = 0
    file_mode: int | None = None
    uid: int | None = None
    gid: int | None = None


@_model
class LinuxSeccompArg(_Model):
    """linux.seccomp.syscalls[].args[]"""

    index: int
    value: int
    value_two: int = 0
    op: str


@_model
class LinuxSyscall(_Model):
    """linux.seccomp.syscalls[]"""

    names: tuple[str, ...]
    action: str
    errno_ret: int | None = None
    args: tuple[LinuxSeccompArg, ...] = ()


@_model
class LinuxSeccomp(_Model):
    """linux.seccomp"""

    default_action: str
    default_errno_ret: int | None = None
    architectures: tuple[str, ...] = ()
    flags: tuple[str, ...] = ()
    listener_path: str | None = None
    listener_metadata: str | None = None
    syscalls: tuple[LinuxSyscall, ...] = ()


@_model
class LinuxPersonality(_Model):
    """linux.personality"""

    domain: str
    flags: tuple[str, ...] = ()


@_model
class LinuxTimeOffset(_Model):
    """linux.timeOffsets.<clock>"""

    secs: int = 0
    nanosecs: int = 0


@_model
class Linux(_Model):
    """linux"""

    uid_mappings: tuple[LinuxIDMapping, ...] = ()
    gid_mappings: tuple[LinuxIDMapping, ...] = ()
    sysctl: dict[str, str] = field(default_factory=dict)
    resources: LinuxResources | None = None
    cgroups_path: str | None = None
    namespaces: tuple[LinuxNamespace, ...] = ()
    devices: tuple[LinuxDevice, ...] = ()
    seccomp: LinuxSeccomp | None = None
    rootfs_propagation: str | None = None
    masked_paths: tuple[str, ...] = ()
    readonly_paths: tuple[str, ...] = ()
    mount_label: str | None = None
    personality: LinuxPersonality | None = None
    time_offsets: dict[str, LinuxTimeOffset] = field(default_factory=dict)

    def namespace(self, type: LinuxNamespaceType) -> LinuxNamespace | None:
        """The entry for `type`, or None when the container shares the runtime's."""
        for ns in self.namespaces:
            if ns.type == type:
                return ns
        return None


# --- the whole config, and the state hooks read on stdin ----------------------------


@_model
class Spec(_Model):
    """config.json"""

    oci_version: str
    process: Process | None = None
    root: Root | None = None
    hostname: str | None = None
    domainname: str | None = None
    mounts: tuple[Mount, ...] = ()
    hooks: Hooks | None = None
    annotations: dict[str, str] = field(default_factory=dict)
    linux: Linux | None = None


@_model
class State(_Model):
    """the state `state` prints and hooks read on stdin (runtime-spec state.go)"""

    oci_version: str
    id: str
    status: ContainerState
    pid: int | None = None
    bundle: str
    annotations: dict[str, str] = field(default_factory=dict)
