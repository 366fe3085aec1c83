"""The LaunchPlan: everything the child will do, decided and checked in the parent.

A spec goes in; a frozen plan comes out, with names resolved to numbers (rlimits,
capabilities), options to flags, seccomp compiled to BPF. Whatever can be wrong with the
spec is found here, before any fork, so the child only does syscalls.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from skiff.errors import InvalidArgument
from skiff.oci.spec import Hook, Hooks, Process, Spec
from skiff.runtime import libc
from skiff.runtime.capabilities import CapabilitySets, capability_sets
from skiff.runtime.namespaces import NamespacePlan, plan_join, plan_namespaces
from skiff.runtime.rootfs import RootfsPlan, plan_rootfs

if TYPE_CHECKING:
    from skiff.runtime.seccomp import PreparedFilter

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True, slots=True, kw_only=True)
class HookPlan:
    path: str
    args: tuple[str, ...]
    env: dict[str, str]
    timeout: float | None


@dataclass(frozen=True, slots=True, kw_only=True)
class ProcessPlan:
    args: tuple[str, ...]
    env: dict[str, str]
    path: str                          # PATH inside the container, to look up args[0]
    cwd: str
    uid: int
    gid: int
    additional_gids: tuple[int, ...]
    umask: int
    capabilities: CapabilitySets
    no_new_privileges: bool
    rlimits: tuple[tuple[int, int, int], ...]   # (RLIMIT_*, soft, hard)
    oom_score_adj: int | None
    seccomp: PreparedFilter | None     # built in the parent: the child makes one syscall
    terminal: bool
    console_size: tuple[int, int] | None        # (rows, columns)
    console_fd: int | None             # connected console socket: the pty master goes there
    preserve_fds: int


@dataclass(frozen=True, slots=True, kw_only=True)
class LaunchPlan:
    namespaces: NamespacePlan
    rootfs: RootfsPlan | None          # None for `exec`: the process joins a running container
    hostname: str | None
    domainname: str | None
    sysctl: tuple[tuple[str, str], ...]    # (/proc/sys path, value)
    hooks_sync: bool                   # stop before pivot_root for the parent's hooks and the state
    create_container_hooks: tuple[HookPlan, ...]
    start_container_hooks: tuple[HookPlan, ...]
    process: ProcessPlan
    exec_fifo: tuple[int, str] | None  # (dirfd of the state dir, file name): wait there for `start`
    start_sync: bool = False           # `run`: wait for START on the sync socket instead
    trace_fd: int | None = None        # where the child writes its timestamps (trace.py), if traced
    stdio: tuple[int, int, int] | None = None  # the process's stdin, stdout, stderr; None: the runtime's own
    mount_template: int | None = None  # fd of the namespace to copy instead of the runtime's (mount_template.py)

    def passed_fds(self) -> list[int]:
        """The fds the plan names that travel with it to a prespawned process (not a
        console's: such a plan is forked), in the order `with_fds` takes them."""
        return [fd for fd in (self.exec_fifo[0] if self.exec_fifo else None, self.trace_fd, self.mount_template)
                if fd is not None]

    def with_fds(self, fds: list[int]) -> LaunchPlan:
        """The plan with the numbers its fds have in the process that received them."""
        taken = iter(fds)
        return replace(
            self,
            exec_fifo=(next(taken), self.exec_fifo[1]) if self.exec_fifo is not None else None,
            trace_fd=next(taken) if self.trace_fd is not None else None,
            mount_template=next(taken) if self.mount_template is not None else None,
        )

    @property
    def at_clone(self) -> int:
        """The namespaces the first clone makes (NamespacePlan.at_clone): a mount namespace
        copied from the template is made by the child once it joined the template."""
        flags = self.namespaces.at_clone
        return flags & ~libc.CLONE_NEWNS if self.mount_template is not None else flags


def parse_env(pairs: tuple[str, ...]) -> dict[str, str]:
    """KEY=VALUE entries to a dict (validation has checked their shape)."""
    env: dict[str, str] = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        env[key] = value
    return env


def hook_plans(hooks: tuple[Hook, ...]) -> tuple[HookPlan, ...]:
    return tuple(HookPlan(path=h.path, args=h.args or (h.path,), env=parse_env(h.env),
                          timeout=float(h.timeout) if h.timeout else None) for h in hooks)


def plan_process(process: Process, *, field: str = "process", seccomp: PreparedFilter | None = None,
                 console_fd: int | None = None, preserve_fds: int = 0) -> ProcessPlan:
    if not process.args:
        raise InvalidArgument(f"{field}.args: must be a non-empty list")
    rlimits = []
    for i, r in enumerate(process.rlimits):
        number = getattr(resource, r.type, None)
        if not isinstance(number, int) or not r.type.startswith("RLIMIT_"):
            raise InvalidArgument(f"{field}.rlimits[{i}].type: unknown rlimit {r.type!r}")
        if r.soft > r.hard:
            raise InvalidArgument(f"{field}.rlimits[{i}]: soft limit {r.soft} exceeds hard limit {r.hard}")
        rlimits.append((number, r.soft, r.hard))
    if process.terminal and console_fd is None:
        raise InvalidArgument(f"{field}.terminal: a terminal needs a console socket (--console-socket)")
    env = parse_env(process.env)
    box = process.console_size
    return ProcessPlan(
        args=process.args,
        env=env,
        path=env.get("PATH", DEFAULT_PATH),
        cwd=process.cwd or "/",
        uid=process.user.uid,
        gid=process.user.gid,
        additional_gids=process.user.additional_gids,
        umask=process.user.umask if process.user.umask is not None else 0o022,
        capabilities=capability_sets(process.capabilities, f"{field}.capabilities"),
        no_new_privileges=process.no_new_privileges,
        rlimits=tuple(rlimits),
        oom_score_adj=process.oom_score_adj,
        seccomp=seccomp,
        terminal=process.terminal,
        console_size=(box.height, box.width) if box else None,
        console_fd=console_fd,
        preserve_fds=preserve_fds,
    )


def prepare_seccomp(spec: Spec) -> PreparedFilter | None:
    if spec.linux is None or spec.linux.seccomp is None:
        return None
    from skiff.runtime import seccomp  # libseccomp is loaded only for specs that use it

    return seccomp.prepare(seccomp.compile_filter(spec.linux.seccomp))


def plan_create(spec: Spec, *, bundle: str, cgroup_mounts: list[tuple[str, str]],
                exec_fifo: tuple[int, str] | None, start_sync: bool = False, console_fd: int | None = None,
                preserve_fds: int = 0, trace_fd: int | None = None,
                stdio: tuple[int, int, int] | None = None, mount_template: int | None = None) -> LaunchPlan:
    """`mount_template`: the runtime's mount_template, used if the container can copy it: not
    with a user namespace (joining the template needs the host's CAP_SYS_ADMIN, and attaching
    host mounts in a namespace it owns is another matter) nor with createContainer hooks,
    which run in the container's namespace before pivot_root and must see the host's paths."""
    if spec.process is None:
        raise InvalidArgument("process: required to create a container")
    namespaces = plan_namespaces(spec.linux)
    if not namespaces.all & libc.CLONE_NEWNS:
        raise InvalidArgument("linux.namespaces: a mount namespace is required to set up the rootfs")
    hooks = spec.hooks or Hooks()
    if namespaces.all & libc.CLONE_NEWUSER or hooks.create_container:
        mount_template = None
    sysctl = tuple(("/proc/sys/" + key.replace(".", "/"), value)
                   for key, value in (spec.linux.sysctl.items() if spec.linux else ()))
    return LaunchPlan(
        namespaces=namespaces,
        rootfs=plan_rootfs(spec, bundle, cgroup_mounts,
                           cgroupns=bool(namespaces.unshare & libc.CLONE_NEWCGROUP),
                           userns=bool(namespaces.all & libc.CLONE_NEWUSER)),
        hostname=spec.hostname,
        domainname=spec.domainname,
        sysctl=sysctl,
        hooks_sync=bool(hooks.prestart or hooks.create_runtime or hooks.create_container
                        or hooks.start_container),
        create_container_hooks=hook_plans(hooks.create_container),
        start_container_hooks=hook_plans(hooks.start_container),
        process=plan_process(spec.process, seccomp=prepare_seccomp(spec), console_fd=console_fd,
                             preserve_fds=preserve_fds),
        exec_fifo=exec_fifo,
        start_sync=start_sync,
        trace_fd=trace_fd,
        stdio=stdio,
        mount_template=mount_template,
    )


def plan_exec(spec: Spec, process: Process, *, init_pid: int, console_fd: int | None = None,
              preserve_fds: int = 0) -> LaunchPlan:
    """A process joining a running container: its namespaces, no rootfs work, the container's
    seccomp profile (as runc does unless told otherwise)."""
    types = tuple(ns.type for ns in (spec.linux.namespaces if spec.linux else ()))
    return LaunchPlan(
        namespaces=plan_join(init_pid, types),
        rootfs=None,
        hostname=None,
        domainname=None,
        sysctl=(),
        hooks_sync=False,
        create_container_hooks=(),
        start_container_hooks=(),
        process=plan_process(process, seccomp=prepare_seccomp(spec), console_fd=console_fd,
                             preserve_fds=preserve_fds),
        exec_fifo=None,
    )

