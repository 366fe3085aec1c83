"""The semantic checks runc makes on a parsed config.json, as data checks (no syscalls).

runc spreads them over `libcontainer/specconv/spec_linux.go` (namespaces, propagation,
devices, mounts), `libcontainer/configs/validate/validator.go` (uts, sysctl, user
namespace, scheduler) and the cgroup drivers (swap against limit). Here they run once,
before anything is created, and each error names the JSON path of the offending value.
Where runc only warns (a relative mount destination, an unknown capability) skiff refuses:
a runtime that guesses is harder to debug than one that says no.
Checks that need the host (does this netns path point at the host's netns, is the kernel
new enough) belong to the runtime.
"""

import json
import posixpath
from typing import NoReturn

from skiff.oci.spec import (
    Hook,
    Linux,
    LinuxIDMapping,
    LinuxNamespaceType,
    LinuxResources,
    LinuxSeccomp,
    Process,
    Spec,
    SpecError,
    key_path,
)

# Index is the capability number (linux/capability.h), as prctl and capset want it.
CAPABILITIES: tuple[str, ...] = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
    "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW",
    "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
    "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ",
    "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
)  # fmt: skip
_CAPABILITY_SET = frozenset(CAPABILITIES)

RLIMITS = frozenset({
    "RLIMIT_AS", "RLIMIT_CORE", "RLIMIT_CPU", "RLIMIT_DATA", "RLIMIT_FSIZE", "RLIMIT_LOCKS",
    "RLIMIT_MEMLOCK", "RLIMIT_MSGQUEUE", "RLIMIT_NICE", "RLIMIT_NOFILE", "RLIMIT_NPROC",
    "RLIMIT_RSS", "RLIMIT_RTPRIO", "RLIMIT_RTTIME", "RLIMIT_SIGPENDING", "RLIMIT_STACK",
})  # fmt: skip

SECCOMP_ACTIONS = frozenset({
    "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_KILL_THREAD", "SCMP_ACT_TRAP",
    "SCMP_ACT_ERRNO", "SCMP_ACT_TRACE", "SCMP_ACT_ALLOW", "SCMP_ACT_LOG", "SCMP_ACT_NOTIFY",
})  # fmt: skip
SECCOMP_OPERATORS = frozenset({
    "SCMP_CMP_NE", "SCMP_CMP_LT", "SCMP_CMP_LE", "SCMP_CMP_EQ", "SCMP_CMP_GE",
    "SCMP_CMP_GT", "SCMP_CMP_MASKED_EQ",
})  # fmt: skip
SECCOMP_ARCHS = frozenset({
    "SCMP_ARCH_X86", "SCMP_ARCH_X86_64", "SCMP_ARCH_X32", "SCMP_ARCH_ARM",
    "SCMP_ARCH_AARCH64", "SCMP_ARCH_MIPS", "SCMP_ARCH_MIPS64", "SCMP_ARCH_MIPS64N32",
    "SCMP_ARCH_MIPSEL", "SCMP_ARCH_MIPSEL64", "SCMP_ARCH_MIPSEL64N32", "SCMP_ARCH_PPC",
    "SCMP_ARCH_PPC64", "SCMP_ARCH_PPC64LE", "SCMP_ARCH_S390", "SCMP_ARCH_S390X",
    "SCMP_ARCH_PARISC", "SCMP_ARCH_PARISC64", "SCMP_ARCH_RISCV64", "SCMP_ARCH_LOONGARCH64",
    "SCMP_ARCH_M68K", "SCMP_ARCH_SH", "SCMP_ARCH_SHEB",
})  # fmt: skip
SECCOMP_FLAGS = frozenset({
    "SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
    "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV",
})  # fmt: skip
ROOTFS_PROPAGATIONS = frozenset({
    "private", "rprivate", "shared", "rshared", "slave", "rslave", "unbindable",
    "runbindable",
})  # fmt: skip
SCHEDULER_POLICIES = frozenset({
    "SCHED_OTHER", "SCHED_FIFO", "SCHED_RR", "SCHED_BATCH", "SCHED_ISO", "SCHED_IDLE",
    "SCHED_DEADLINE",
})  # fmt: skip
SCHEDULER_FLAGS = frozenset({
    "SCHED_FLAG_RESET_ON_FORK", "SCHED_FLAG_RECLAIM", "SCHED_FLAG_DL_OVERRUN",
    "SCHED_FLAG_KEEP_POLICY", "SCHED_FLAG_KEEP_PARAMS", "SCHED_FLAG_UTIL_CLAMP_MIN",
    "SCHED_FLAG_UTIL_CLAMP_MAX",
})  # fmt: skip
IOPRIO_CLASSES = frozenset({"IOPRIO_CLASS_RT", "IOPRIO_CLASS_BE", "IOPRIO_CLASS_IDLE"})
PERSONALITY_DOMAINS = frozenset({"LINUX", "LINUX32"})
TIME_NAMESPACE_CLOCKS = frozenset({"monotonic", "boottime"})

# sysctls that the ipc namespace isolates, besides fs.mqueue.* (runc's validSysctlMap)
_IPC_SYSCTLS = frozenset({
    "kernel.msgmax", "kernel.msgmnb", "kernel.msgmni", "kernel.sem", "kernel.shmall",
    "kernel.shmmax", "kernel.shmmni", "kernel.shm_rmid_forced",
})  # fmt: skip

_UINT32_MAX = 2**32 - 1
_UINT64_MAX = 2**64 - 1


def validate_spec(spec: Spec, *, require_process: bool = True) -> None:
    """Raise SpecError for the first semantic error in `spec`."""
    if not spec.oci_version.startswith("1."):
        _fail("ociVersion", f"unsupported version {_q(spec.oci_version)}, skiff reads 1.x")
    if spec.root is None or not spec.root.path:
        _fail("root.path", "required")
    if spec.process is not None:
        validate_process(spec.process, "process")
    elif require_process:
        _fail("process", "required to create a container")

    linux = spec.linux if spec.linux is not None else Linux()
    has = {ns.type for ns in linux.namespaces}
    for name, value in (("hostname", spec.hostname), ("domainname", spec.domainname)):
        if value and LinuxNamespaceType.UTS not in has:
            _fail(name, "requires a uts namespace")

    userns = LinuxNamespaceType.USER in has
    for i, mount in enumerate(spec.mounts):
        at = f"mounts[{i}]"
        _absolute(mount.destination, f"{at}.destination")
        for key, maps in (("uidMappings", mount.uid_mappings), ("gidMappings", mount.gid_mappings)):
            if maps and not userns:
                _fail(f"{at}.{key}", "idmapped mounts require a user namespace")
            _id_mappings(maps, f"{at}.{key}")

    if spec.hooks is not None:
        for key, hooks in (
            ("prestart", spec.hooks.prestart),
            ("createRuntime", spec.hooks.create_runtime),
            ("createContainer", spec.hooks.create_container),
            ("startContainer", spec.hooks.start_container),
            ("poststart", spec.hooks.poststart),
            ("poststop", spec.hooks.poststop),
        ):
            for i, hook in enumerate(hooks):
                _hook(hook, f"hooks.{key}[{i}]")

    _linux(linux)


def validate_process(p: Process, at: str) -> None:
    """Checks on a process, from config.json (`at` = "process") or `exec --process`."""
    if not p.args:
        _fail(_at(at, "args"), "must be a non-empty list")
    if not p.args[0]:
        _fail(_at(at, "args[0]"), "must not be empty")
    _absolute(p.cwd, _at(at, "cwd"))
    for i, entry in enumerate(p.env):
        _env(entry, _at(at, f"env[{i}]"))

    _uint(p.user.uid, _UINT32_MAX, _at(at, "user.uid"))
    _uint(p.user.gid, _UINT32_MAX, _at(at, "user.gid"))
    for i, gid in enumerate(p.user.additional_gids):
        _uint(gid, _UINT32_MAX, _at(at, f"user.additionalGids[{i}]"))
    if p.user.umask is not None:
        _uint(p.user.umask, 0o777, _at(at, "user.umask"))
    if p.console_size is not None:
        _uint(p.console_size.height, 0xFFFF, _at(at, "consoleSize.height"))
        _uint(p.console_size.width, 0xFFFF, _at(at, "consoleSize.width"))

    if p.capabilities is not None:
        c = p.capabilities
        for key, names in (
            ("bounding", c.bounding),
            ("effective", c.effective),
            ("inheritable", c.inheritable),
            ("permitted", c.permitted),
            ("ambient", c.ambient),
        ):
            for i, name in enumerate(names):
                if name not in _CAPABILITY_SET:
                    _fail(_at(at, f"capabilities.{key}[{i}]"), f"unknown capability {_q(name)}")

    seen: set[str] = set()
    for i, rl in enumerate(p.rlimits):
        where = _at(at, f"rlimits[{i}]")
        if rl.type not in RLIMITS:
            _fail(f"{where}.type", f"unknown rlimit {_q(rl.type)}")
        if rl.type in seen:
            _fail(f"{where}.type", f"duplicate rlimit {_q(rl.type)}")
        seen.add(rl.type)
        _uint(rl.hard, _UINT64_MAX, f"{where}.hard")
        _uint(rl.soft, _UINT64_MAX, f"{where}.soft")
        if rl.soft > rl.hard:
            _fail(f"{where}.soft", f"must not exceed hard ({rl.soft} > {rl.hard})")

    if p.oom_score_adj is not None and not -1000 <= p.oom_score_adj <= 1000:
        _fail(_at(at, "oomScoreAdj"), f"must be between -1000 and 1000, got {p.oom_score_adj}")

    if p.scheduler is not None:
        # runc validator.go `scheduler`, after sched_setattr(2)
        s, where = p.scheduler, _at(at, "scheduler")
        if s.policy not in SCHEDULER_POLICIES:
            _fail(f"{where}.policy", f"unknown scheduler policy {_q(s.policy)}")
        if not -20 <= s.nice <= 19:
            _fail(f"{where}.nice", f"must be between -20 and 19, got {s.nice}")
        if s.priority and s.policy not in ("SCHED_FIFO", "SCHED_RR"):
            _fail(f"{where}.priority", "only SCHED_FIFO and SCHED_RR take a priority")
        if (s.runtime or s.deadline or s.period) and s.policy != "SCHED_DEADLINE":
            _fail(where, "runtime, deadline and period are for SCHED_DEADLINE only")
        for i, flag in enumerate(s.flags):
            if flag not in SCHEDULER_FLAGS:
                _fail(f"{where}.flags[{i}]", f"unknown scheduler flag {_q(flag)}")

    if p.io_priority is not None:
        where = _at(at, "ioPriority")
        if p.io_priority.class_ not in IOPRIO_CLASSES:
            _fail(f"{where}.class", f"unknown io priority class {_q(p.io_priority.class_)}")
        if not 0 <= p.io_priority.priority <= 7:
            _fail(f"{where}.priority", f"must be between 0 and 7, got {p.io_priority.priority}")


# --- linux ---------------------------------------------------------------------------


def _linux(linux: Linux) -> None:
    types: dict[LinuxNamespaceType, str | None] = {}
    for i, ns in enumerate(linux.namespaces):
        if ns.type in types:
            _fail(f"linux.namespaces[{i}].type", f"duplicate namespace type {_q(str(ns.type))}")
        types[ns.type] = ns.path
        if ns.path is not None:
            # a path means "join this one"; an empty one is a mistake, not "create"
            _absolute(ns.path, f"linux.namespaces[{i}].path")

    user = LinuxNamespaceType.USER
    for key, maps in (("uidMappings", linux.uid_mappings), ("gidMappings", linux.gid_mappings)):
        if user not in types:
            if maps:
                _fail(f"linux.{key}", "requires a user namespace")
        elif types[user] is None and not maps:
            _fail(f"linux.{key}", "required to create a user namespace")
        # joining a user namespace: containerd and CRI-O still send its mappings, and
        # runc accepts them, so they are allowed (the runtime compares them)
        _id_mappings(maps, f"linux.{key}")

    if linux.time_offsets and LinuxNamespaceType.TIME not in types:
        _fail("linux.timeOffsets", "requires a time namespace")
    for clock in linux.time_offsets:
        if clock not in TIME_NAMESPACE_CLOCKS:
            _fail(key_path("linux.timeOffsets", clock), f"unknown clock {_q(clock)}")

    for key in linux.sysctl:
        _sysctl(key, types)

    if linux.resources is not None:
        _resources(linux.resources)

    for i, dev in enumerate(linux.devices):
        where = f"linux.devices[{i}]"
        _absolute(dev.path, f"{where}.path")
        if dev.type not in ("c", "b", "u", "p"):
            _fail(f"{where}.type", f"unknown device type {_q(dev.type)}, want c, b, u or p")
        _uint(dev.major, _UINT32_MAX, f"{where}.major")
        _uint(dev.minor, _UINT32_MAX, f"{where}.minor")
        if dev.uid is not None:
            _uint(dev.uid, _UINT32_MAX, f"{where}.uid")
        if dev.gid is not None:
            _uint(dev.gid, _UINT32_MAX, f"{where}.gid")

    if linux.seccomp is not None:
        _seccomp(linux.seccomp)

    if linux.rootfs_propagation is not None and linux.rootfs_propagation not in ROOTFS_PROPAGATIONS:
        _fail("linux.rootfsPropagation", f"unknown propagation {_q(linux.rootfs_propagation)}")

    for key, paths in (
        ("maskedPaths", linux.masked_paths),
        ("readonlyPaths", linux.readonly_paths),
    ):
        if paths and LinuxNamespaceType.MOUNT not in types:
            _fail(f"linux.{key}", "requires a mount namespace")
        for i, path in enumerate(paths):
            _absolute(path, f"linux.{key}[{i}]")

    if linux.personality is not None and linux.personality.domain not in PERSONALITY_DOMAINS:
        _fail("linux.personality.domain", f"unknown domain {_q(linux.personality.domain)}")


def _sysctl(key: str, namespaces: dict[LinuxNamespaceType, str | None]) -> None:
    # /proc/sys is only partly namespaced: runc validator.go `sysctl`. A "/" separated
    # key (net/ipv4/ip_forward) is the same sysctl as the dotted one.
    name = key
    first = min((i for i in (key.find("."), key.find("/")) if i >= 0), default=-1)
    if first >= 0 and key[first] == "/":
        name = key.translate(str.maketrans("./", "/."))
    where = key_path("linux.sysctl", key)
    if name in _IPC_SYSCTLS or name.startswith("fs.mqueue."):
        if LinuxNamespaceType.IPC not in namespaces:
            _fail(where, "requires an ipc namespace")
        return
    if name.startswith("net."):
        if LinuxNamespaceType.NETWORK not in namespaces:
            _fail(where, "requires a network namespace")
        return
    if name in ("kernel.hostname", "kernel.domainname"):
        if LinuxNamespaceType.UTS not in namespaces:
            _fail(where, "requires a uts namespace")
        if name == "kernel.hostname":
            _fail(where, 'conflicts with the "hostname" field, set that instead')
        return
    _fail(where, "is not namespaced, it would change the host")


def _resources(r: LinuxResources) -> None:
    at = "linux.resources"
    for i, d in enumerate(r.devices):
        where = f"{at}.devices[{i}]"
        if d.type is not None and d.type not in ("a", "b", "c"):
            _fail(f"{where}.type", f"unknown device type {_q(d.type)}, want a, b or c")
        if not d.access or set(d.access) - set("rwm"):
            reason = f"must be a non-empty combination of r, w and m, got {_q(d.access)}"
            _fail(f"{where}.access", reason)

    m = r.memory
    if m is not None:
        for key, value in (
            ("limit", m.limit),
            ("reservation", m.reservation),
            ("swap", m.swap),
            ("kernel", m.kernel),
            ("kernelTCP", m.kernel_tcp),
        ):
            if value is not None and value < -1:
                _fail(f"{at}.memory.{key}", f"must be -1 (unlimited) or a byte count, got {value}")
        # runc ConvertMemorySwapToCgroupV2Value: spec swap is memory+swap, as on v1
        if m.swap is not None and m.swap > 0:
            if m.limit is None or m.limit <= 0:
                _fail(f"{at}.memory.swap", "needs memory.limit to be set")
            if m.swap < m.limit:
                _fail(
                    f"{at}.memory.swap",
                    f"must be >= memory.limit, it counts memory+swap ({m.swap} < {m.limit})",
                )
        if m.swappiness is not None and not 0 <= m.swappiness <= 100:
            _fail(f"{at}.memory.swappiness", f"must be between 0 and 100, got {m.swappiness}")

    c = r.cpu
    if c is not None:
        # kernel ranges: cpu.shares 2..262144, cfs period 1ms..1s, quota at least 1ms
        if c.shares is not None and c.shares != 0 and not 2 <= c.shares <= 262144:
            _fail(f"{at}.cpu.shares", f"must be between 2 and 262144, got {c.shares}")
        if c.quota is not None and c.quota not in (-1, 0) and c.quota < 1000:
            _fail(f"{at}.cpu.quota", f"must be -1 (unlimited) or at least 1000 (us), got {c.quota}")
        if c.period is not None and c.period != 0 and not 1000 <= c.period <= 1_000_000:
            _fail(f"{at}.cpu.period", f"must be between 1000 and 1000000 (us), got {c.period}")
        if c.burst is not None and c.burst < 0:
            _fail(f"{at}.cpu.burst", f"must not be negative, got {c.burst}")
        for key, cpuset in (("cpus", c.cpus), ("mems", c.mems)):
            if cpuset:
                _cpu_list(cpuset, f"{at}.cpu.{key}")

    if r.pids is not None and r.pids.limit < -1:
        _fail(f"{at}.pids.limit", f"must be -1 (unlimited) or a count, got {r.pids.limit}")

    b = r.block_io
    if b is not None:
        for key, weight in (("weight", b.weight), ("leafWeight", b.leaf_weight)):
            if weight is not None and weight != 0 and not 10 <= weight <= 1000:
                _fail(f"{at}.blockIO.{key}", f"must be between 10 and 1000, got {weight}")
        for i, wd in enumerate(b.weight_device):
            if wd.weight is not None and not 10 <= wd.weight <= 1000:
                where = f"{at}.blockIO.weightDevice[{i}].weight"
                _fail(where, f"must be between 10 and 1000, got {wd.weight}")
        for key, throttles in (
            ("throttleReadBpsDevice", b.throttle_read_bps_device),
            ("throttleWriteBpsDevice", b.throttle_write_bps_device),
            ("throttleReadIOPSDevice", b.throttle_read_iops_device),
            ("throttleWriteIOPSDevice", b.throttle_write_iops_device),
        ):
            for i, td in enumerate(throttles):
                _uint(td.rate, _UINT64_MAX, f"{at}.blockIO.{key}[{i}].rate")

    for i, h in enumerate(r.hugepage_limits):
        size = h.page_size
        digits = size[:-2] if len(size) > 2 and size[-2] in "KMG" else size[:-1]
        if not size.endswith("B") or not digits.isdigit():
            reason = f"must look like 2MB or 1GB, got {_q(size)}"
            _fail(f"{at}.hugepageLimits[{i}].pageSize", reason)
        _uint(h.limit, _UINT64_MAX, f"{at}.hugepageLimits[{i}].limit")

    for key in r.unified:
        # the key names a file in the container's cgroup directory: no path tricks
        if "/" in key or "." not in key or key.startswith("."):
            _fail(key_path(f"{at}.unified", key), "must be a cgroup file name such as memory.max")


def _seccomp(s: LinuxSeccomp) -> None:
    at = "linux.seccomp"
    if s.default_action not in SECCOMP_ACTIONS:
        _fail(f"{at}.defaultAction", f"unknown seccomp action {_q(s.default_action)}")
    if s.default_action == "SCMP_ACT_NOTIFY":
        # every syscall would wait on the listener, including the ones the runtime makes
        _fail(f"{at}.defaultAction", "SCMP_ACT_NOTIFY cannot be the default action")
    for i, arch in enumerate(s.architectures):
        if arch not in SECCOMP_ARCHS:
            _fail(f"{at}.architectures[{i}]", f"unknown architecture {_q(arch)}")
    for i, flag in enumerate(s.flags):
        if flag not in SECCOMP_FLAGS:
            _fail(f"{at}.flags[{i}]", f"unknown seccomp flag {_q(flag)}")
    notify = False
    for i, sc in enumerate(s.syscalls):
        where = f"{at}.syscalls[{i}]"
        if not sc.names:
            _fail(f"{where}.names", "must be a non-empty list")
        if sc.action not in SECCOMP_ACTIONS:
            _fail(f"{where}.action", f"unknown seccomp action {_q(sc.action)}")
        notify = notify or sc.action == "SCMP_ACT_NOTIFY"
        for j, arg in enumerate(sc.args):
            if arg.op not in SECCOMP_OPERATORS:
                _fail(f"{where}.args[{j}].op", f"unknown seccomp operator {_q(arg.op)}")
            if not 0 <= arg.index <= 5:
                _fail(f"{where}.args[{j}].index", f"must be between 0 and 5, got {arg.index}")
            _uint(arg.value, _UINT64_MAX, f"{where}.args[{j}].value")
            _uint(arg.value_two, _UINT64_MAX, f"{where}.args[{j}].valueTwo")
    if notify and not s.listener_path:
        _fail(f"{at}.listenerPath", "required when an action is SCMP_ACT_NOTIFY")
    if s.listener_path:
        _absolute(s.listener_path, f"{at}.listenerPath")


# --- small checks -------------------------------------------------------------------


def _fail(field: str, reason: str) -> NoReturn:
    raise SpecError(field, reason)


def _q(value: str | None) -> str:
    # quoted as JSON quotes it, as the parse errors quote values
    return json.dumps(value)


def _at(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _absolute(path: str, field: str) -> None:
    if not posixpath.isabs(path):
        _fail(field, f"must be an absolute path, got {_q(path)}")
    if "\0" in path:
        _fail(field, "must not contain a NUL byte")


def _uint(value: int, maximum: int, field: str) -> None:
    if not 0 <= value <= maximum:
        _fail(field, f"must be between 0 and {maximum}, got {value}")


def _env(entry: str, field: str) -> None:
    # runc prepareEnv: the kernel would take "FOO" as a variable nobody can read
    name, sep, _ = entry.partition("=")
    if not sep:
        _fail(field, f"must be NAME=value, got {_q(entry)}")
    if not name:
        _fail(field, "variable name must not be empty")
    if "\0" in entry:
        _fail(field, "must not contain a NUL byte")


def _hook(hook: Hook, at: str) -> None:
    _absolute(hook.path, f"{at}.path")
    if hook.timeout is not None and hook.timeout <= 0:
        _fail(f"{at}.timeout", f"must be greater than zero, got {hook.timeout}")
    for i, entry in enumerate(hook.env):
        _env(entry, f"{at}.env[{i}]")


def _id_mappings(maps: tuple[LinuxIDMapping, ...], at: str) -> None:
    for i, m in enumerate(maps):
        _uint(m.container_id, _UINT32_MAX, f"{at}[{i}].containerID")
        _uint(m.host_id, _UINT32_MAX, f"{at}[{i}].hostID")
        if not 1 <= m.size <= _UINT32_MAX:
            _fail(f"{at}[{i}].size", f"must be at least 1, got {m.size}")


def _cpu_list(value: str, field: str) -> None:
    # the cpuset list format: "0-3,5,7-8"
    for part in value.split(","):
        lo, dash, hi = part.strip().partition("-")
        if not lo.isdigit() or (dash and (not hi.isdigit() or int(hi) < int(lo))):
            _fail(field, f"must be a list such as 0-3,5, got {_q(value)}")
