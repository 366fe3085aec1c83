"""The code that runs between fork and exec: fixed steps, syscalls only.

Rules (pyroute2 process.py, runc standard_init_linux.go): garbage collection off first; no
imports, threads, logging or heavy allocation; everything was decided in the parent (the
LaunchPlan). Every step records where it is (`_at`) before its syscalls, so one handler can
send the failure back with the step, errno and what it worked on, then `_exit`.
"""

from __future__ import annotations

import fcntl
import gc
import os
import pickle
import resource
import signal
import socket
import stat
import termios
import time
from dataclasses import replace
from typing import NoReturn

import _prctl  # python-prctl's C module: capset and no_new_privs without the wrapper's setup

from skiff.runtime import libc
from skiff.runtime.mount_template import ROOTFS
from skiff.runtime.capabilities import last_cap
from skiff.runtime import sync
from skiff.runtime.plan import HookPlan, LaunchPlan, ProcessPlan
from skiff.runtime.rootfs import BIND_REMOUNT_KEEP, MountOp, RootfsPlan
from skiff.runtime.sync import Step
from skiff.runtime.trace import child_mark

PR_CAPBSET_DROP = 24
PR_SET_KEEPCAPS = 8
PR_SET_DUMPABLE = 4
MAX_SYMLINKS = 40
# The signals a handler of the runtime's may hold, as plain ints: signal.valid_signals()
# makes an enum member of each, 50 us between fork and exec.
_HANDLED = tuple(int(s) for s in signal.valid_signals() if s not in (signal.SIGKILL, signal.SIGSTOP, signal.SIGPIPE))
# statvfs f_flag bits -> mount flags, to repeat locked flags on a bind remount.
_STATVFS_TO_MS = ((1, libc.MS_RDONLY), (2, libc.MS_NOSUID), (4, libc.MS_NODEV), (8, libc.MS_NOEXEC),
                  (1024, libc.MS_NOATIME), (2048, libc.MS_NODIRATIME), (4096, libc.MS_RELATIME))


class _Where:
    """The step the child is in, and what it works on, for the error report."""

    __slots__ = ("step", "detail")

    def __init__(self) -> None:
        self.step = Step.SYNC
        self.detail = ""


_where = _Where()


def _at(step: Step, detail: str = "") -> None:
    _where.step = step
    _where.detail = detail


class _StepFailed(Exception):
    """A failure that the detail describes in full (a hook's exit status, a missing executable)."""

    def __init__(self, detail: str) -> None:
        self.detail = detail


def main(plan: LaunchPlan, sock: int, close: tuple[int, ...], cgroup_joins: tuple[str, ...] = (),
         cloned: int = 0) -> NoReturn:
    """Entry right after the fork; never returns. `close`: the parent's fds that the child
    must not hold (its end of the sync socket, the cgroup directory). `cgroup_joins`: the
    cgroup files to write "0" into, joining the container's cgroup, before anything else.
    `cloned`: the namespaces the clone made already."""
    gc.disable()
    try:
        _reset_signals()
        child_mark(plan.trace_fd, b"fork")
        if plan.stdio is not None:
            _at(Step.SYNC, "stdio")
            for number, fd in enumerate(plan.stdio):
                os.dup2(fd, number)
            # A caller that names the stdio has other files open that a container must not
            # hold even until its exec (the CRI monitor: other containers' pipes, whose EOF
            # would wait for this one's start): closed, not only marked close-on-exec.
            libc.close_all_but({sock, *close, *(range(3, 3 + plan.process.preserve_fds)),
                            *plan.passed_fds(),
                            *((plan.process.console_fd,) if plan.process.console_fd is not None else ())})
        for path in cgroup_joins:
            _at(Step.CGROUP, path)
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, b"0")
            finally:
                os.close(fd)
        child_mark(plan.trace_fd, b"cgroup_join")
        # Until execve, /proc/<pid>/fd of this process leads to host files (the state
        # directory, the console socket): not dumpable, no other process may open them
        # (CVE-2016-9962). execve makes the container's process dumpable again.
        libc.prctl(PR_SET_DUMPABLE, 0)
        for fd in close:
            os.close(fd)
        _at(Step.EXEC, "mark the runtime's fds close-on-exec")
        libc.close_range_cloexec(3 + plan.process.preserve_fds)  # hooks get none either
        _init(plan, sock, _namespaces(plan, sock, cloned))
    except _StepFailed as e:
        _report(sock, _where.step, 0, e.detail)
    except OSError as e:
        _report(sock, _where.step, e.errno or 0, _where.detail)
    except BaseException as e:  # a bug: still tell the parent what happened
        _report(sock, Step.INTERNAL, 0, f"{_where.step.value}: {type(e).__name__}: {e}")
    os._exit(1)


def prespawned(sock: int, flags: int, runtime: int, sample: bytes) -> NoReturn:
    """A slot (prespawn.py), cloned with the namespaces of `flags` as the runtime's child:
    wait for a plan, then go on as main() does after a fork."""
    gc.disable()
    try:
        libc.prctl(libc.PR_SET_PDEATHSIG, signal.SIGKILL)
        # getppid() is 0 in a new PID namespace; the host's /proc still names the parent.
        with open("/proc/self/stat", "rb") as f:
            stat = f.read()
        if int(stat[stat.rindex(b")") + 2:].split()[1]) != runtime:
            os._exit(0)  # the runtime died before PDEATHSIG was set
        libc.close_all_but({sock})
        if sample:
            pickle.loads(sample)  # now, not on the start: the pages it touches get copied (COW)
        received = _receive_plan(sock)
        if received is None:
            os._exit(0)  # the runtime closed the prespawner
        libc.prctl(libc.PR_SET_PDEATHSIG, 0)  # a container outlives the runtime
    except BaseException:
        os._exit(1)
    plan, joins = received
    main(plan, sock, (), joins, flags)


def launched(sock: int, flags: int, data: bytes, fds: list[int], close: tuple[int, ...]) -> NoReturn:
    """A process the prespawner cloned with its plan already (prespawn.py: into a cgroup2
    directory): on as main() does after a fork. `close`: the prespawner's control socket
    (the runtime sees EOF when the prespawner exits) and the cgroup directory."""
    gc.disable()
    try:
        for fd in close:
            os.close(fd)
        plan, joins = take_plan(data, fds)
    except BaseException:
        os._exit(1)
    main(plan, sock, (), joins, flags)


def _receive_plan(sock: int) -> tuple[LaunchPlan, tuple[str, ...]] | None:
    """The plan a slot waited for (Slot.hand_over); None at EOF."""
    conn = socket.socket(fileno=sock)
    try:
        data, fds, _, _ = socket.recv_fds(conn, 1 << 20, 8)
    finally:
        conn.detach()  # the fd stays: it is the sync socket from here on
    return take_plan(data, fds) if data else None


def take_plan(data: bytes, fds: list[int]) -> tuple[LaunchPlan, tuple[str, ...]]:
    """The plan and the cgroup files to join (prespawn.plan_message), with the runtime's
    stdio on 0, 1, 2 and the fds the plan names in place."""
    plan, joins = pickle.loads(data)
    for number, fd in enumerate(fds[:3]):
        os.dup2(fd, number)
        os.close(fd)
    return replace(plan.with_fds(fds[3:]), stdio=None), joins  # the plan's stdio is on 0, 1, 2 now


def _reset_signals() -> None:
    """The container starts with every signal at its default and none blocked, whatever
    the runtime's process had (spawn.signals_blocked blocked them all for the fork).
    SIGPIPE stays ignored until execve: a write to a gone runtime must fail, not kill."""
    for signum in _HANDLED:
        if signal.getsignal(signum) not in (signal.SIG_DFL, None):
            libc.default_signal(signum)
    libc.set_signal_mask(None)


def _report(sock: int, step: Step, err: int, detail: str) -> None:
    libc.ignore_signal(signal.SIGPIPE)  # a gone runtime must not kill us silently
    try:
        os.write(sock, sync.encode_failure(step, err, detail))
    except OSError:  # the runtime is gone (after `create` returned): stderr is all there is
        os.write(2, f"skiff init: {step.value}: {detail}: {os.strerror(err) if err else ''}\n".encode())


def _recv(sock: int, expected: bytes) -> None:
    _at(Step.SYNC, f"waiting for {expected!r}")
    if os.read(sock, sync.MAX_MESSAGE) != expected:
        raise _StepFailed(f"the runtime went away while the child waited for {expected!r}")


# -- the intermediate child: namespaces --------------------------------------------------

def _namespaces(plan: LaunchPlan, sock: int, cloned: int) -> dict[int, int] | None:
    """Join and make namespaces; returns in the process that goes on as the container's
    init, with the detached copies of the rootfs and bind sources if it copied the runtime's
    mount namespace template (mount_template.py)."""
    ns = plan.namespaces
    _recv(sock, sync.GO)
    fds = []
    for flag, path in ns.join:
        _at(Step.SETNS, path)
        fds.append((os.open(path, os.O_RDONLY | os.O_CLOEXEC), flag, path))
    for fd, flag, path in fds:
        _at(Step.SETNS, path)
        libc.setns(fd, flag)
        os.close(fd)
    trees = None
    if plan.mount_template is not None and plan.rootfs is not None and ns.unshare & ~cloned & libc.CLONE_NEWNS:
        trees = _detached_copies(plan.rootfs)
        _at(Step.SETNS, "the runtime's mount namespace template")
        libc.setns(plan.mount_template, libc.CLONE_NEWNS)
        os.close(plan.mount_template)  # a created container holds only what it needs until its start
    if ns.unshare & ~cloned:
        _at(Step.UNSHARE, f"flags {ns.unshare & ~cloned:#x}")
        libc.unshare(ns.unshare & ~cloned)
    if ns.unshare & libc.CLONE_NEWUSER:
        os.write(sock, sync.USERNS)
        _recv(sock, sync.IDMAPS_DONE)
    if ns.root_in_userns:
        # A new or joined user namespace: act as its root, whose capabilities apply there.
        _at(Step.SETUID_ROOT, "uid and gid 0 must be mapped")
        os.setresgid(0, 0, 0)
        os.setresuid(0, 0, 0)
    if not ns.second_fork or cloned & libc.CLONE_NEWPID:
        os.write(sock, sync.encode_pid(0))  # "me": getpid() would say 1 in a new PID namespace
        return trees
    _at(Step.CLONE)
    pid = libc.clone_parent()
    if pid == 0:
        return trees
    os.write(sock, sync.encode_pid(pid))
    os._exit(0)


# -- the container's init ------------------------------------------------------------------

def _init(plan: LaunchPlan, sock: int, trees: dict[int, int] | None) -> NoReturn:
    proc = plan.process
    child_mark(plan.trace_fd, b"namespaces")
    root = ROOTFS if trees is not None else plan.rootfs.path if plan.rootfs is not None else ""
    if plan.rootfs is not None:
        _prepare_rootfs(plan.rootfs, root, trees)
    state = b""
    if plan.hooks_sync:
        os.write(sock, sync.HOOKS)
        _at(Step.SYNC, "waiting for the runtime's hooks")
        reply = os.read(sock, sync.MAX_MESSAGE)
        if reply[:1] != sync.HOOKS_DONE:
            raise _StepFailed("the runtime went away while its hooks ran")
        state = reply[1:]
    for hook in plan.create_container_hooks:
        _run_hook("createContainer", hook, state)
    if plan.rootfs is not None:
        _pivot_root(root)
    _at(Step.SETSID)
    os.setsid()
    if proc.terminal:
        _console(proc)
    if plan.hostname is not None:
        _at(Step.HOSTNAME, plan.hostname)
        libc.sethostname(plan.hostname)
    if plan.domainname is not None:
        _at(Step.DOMAINNAME, plan.domainname)
        libc.setdomainname(plan.domainname)
    for path, value in plan.sysctl:
        _at(Step.SYSCTL, f"{path}={value}")
        _write(path, value)
    if plan.rootfs is not None:
        _finish_rootfs(plan.rootfs)
    child_mark(plan.trace_fd, b"rootfs")
    _process_setup(proc)
    executable = _lookup(proc)
    if proc.seccomp is not None and not proc.no_new_privileges:
        # Without no_new_privs loading a filter needs CAP_SYS_ADMIN: before the caps go.
        _at(Step.SECCOMP)
        proc.seccomp.load()
    _drop_privileges(proc)
    child_mark(plan.trace_fd, b"process")
    if plan.exec_fifo is not None or plan.start_sync:
        os.write(sock, sync.READY)
        if plan.exec_fifo is not None:
            dirfd, name = plan.exec_fifo
            _at(Step.EXEC_FIFO, name)
            fifo = os.open(name, os.O_WRONLY | os.O_CLOEXEC, dir_fd=dirfd)  # blocks until `start`
            os.write(fifo, b"0")
            os.close(fifo)
        else:
            _recv(sock, sync.START)
        for hook in plan.start_container_hooks:
            _run_hook("startContainer", hook, state)
    _at(Step.EXEC, executable)
    # Python ignores SIGPIPE; an ignored signal stays ignored across execve.
    libc.default_signal(signal.SIGPIPE)
    if proc.seccomp is not None and proc.no_new_privileges:
        # As late as possible, so the filter need not allow what the runtime itself calls.
        _at(Step.SECCOMP)
        proc.seccomp.load()
        _at(Step.EXEC, executable)
    child_mark(plan.trace_fd, b"exec")
    os.execve(executable, proc.args, proc.env)
    raise AssertionError("unreachable")


def _write(path: str, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


# -- rootfs ----------------------------------------------------------------------------------

def _resolve(root: str, path: str, plain: set[str]) -> str:
    """`path` inside `root`, following symlinks as if `root` were "/" (no escape through
    `..` or an absolute link), as runc's securejoin does. `plain`: the paths a look found
    to be no symlink, which need no second look (the mount targets share their parents:
    /sys/fs/cgroup/...) until a mount covers them (`_mount` forgets those)."""
    parts = [p for p in path.split("/") if p]
    current: list[str] = []
    links = 0
    while parts:
        part = parts.pop(0)
        if part == ".":
            continue
        if part == "..":
            if current:
                current.pop()
            continue
        candidate = root + "/" + "/".join(current + [part])
        if candidate in plain:
            current.append(part)
            continue
        try:
            st = os.lstat(candidate)
        except FileNotFoundError:
            # Missing: it will be made, but a later ".." must still stop at the root.
            current.append(part)
            continue
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > MAX_SYMLINKS:
                raise OSError(40, "too many symlinks", candidate)  # ELOOP
            target = os.readlink(candidate)
            if target.startswith("/"):
                current = []
            parts = [p for p in target.split("/") if p] + parts
            continue
        plain.add(candidate)
        current.append(part)
    return root + "/" + "/".join(current)


def _make_target(path: str, is_file: bool) -> None:
    """The mount point, made if missing; its parent is tried first, which mostly exists."""
    try:
        if is_file:
            # O_EXCL: an existing file stays as it is (opened for writing, overlayfs would copy it up)
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o644))
        else:
            os.mkdir(path, 0o755)
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        _make_target(path, is_file)
    except (FileExistsError, IsADirectoryError):
        pass  # a file bind onto a directory fails at the mount, naming both


def _locked_flags(path: str) -> int:
    flags = 0
    fflag = os.statvfs(path).f_flag
    for bit, ms in _STATVFS_TO_MS:
        if fflag & bit:
            flags |= ms
    return flags


def _detached_copies(rootfs: RootfsPlan) -> dict[int, int]:
    """In the runtime's mount namespace, before joining the template: a detached copy
    (open_tree) of the rootfs, under key -1, and of each bind mount's source, under the
    mount's index in rootfs.mounts."""
    trees = {-1: _copy_tree(rootfs.path, recursive=True)}
    for i, op in enumerate(rootfs.mounts):
        if op.flags & libc.MS_BIND and not op.flags & libc.MS_REMOUNT and op.source is not None:
            # A file has nothing mounted below it, and a recursive copy would look at every
            # mount below the one holding it.
            trees[i] = _copy_tree(op.source, recursive=bool(op.flags & libc.MS_REC) and not op.is_file)
    return trees


def _copy_tree(source: str, *, recursive: bool) -> int:
    _at(Step.MOUNT, f"copy {source}")
    return libc.open_tree(source, libc.OPEN_TREE_CLONE | libc.OPEN_TREE_CLOEXEC
                          | (libc.AT_RECURSIVE if recursive else 0))


def _mount(root: str, op: MountOp, tree: int | None, plain: set[str]) -> None:
    """`tree`: the detached copy of a bind's source, attached instead of a bind mount."""
    target = _resolve(root, op.target, plain)
    _at(Step.MOUNT, f"{op.source or op.fstype} on {target}")
    if not op.flags & libc.MS_REMOUNT:
        _make_target(target, op.is_file)
    if tree is not None:
        libc.attach_tree(tree, target)
        os.close(tree)
    else:
        libc.mount(op.source, target, op.fstype, op.flags, op.data)
    if op.remount is not None:
        flags = libc.MS_BIND | libc.MS_REMOUNT | op.remount | (_locked_flags(target) & BIND_REMOUNT_KEEP)
        libc.mount(None, target, None, flags)
    if op.propagation:
        libc.mount(None, target, None, op.propagation)
    plain.difference_update([p for p in plain if p.startswith(target + "/")])


def _prepare_rootfs(rootfs: RootfsPlan, root: str, trees: dict[int, int] | None) -> None:
    """`root`: where the rootfs is in this namespace: its host path, or mount_template.ROOTFS
    where its detached copy (`trees`) goes."""
    if trees is not None:
        _at(Step.MOUNT, f"{rootfs.path} on {root}")
        libc.attach_tree(trees[-1], root)
        os.close(trees[-1])
    _at(Step.ROOT_PROPAGATION, "/")
    # Slave by default: host mounts still reach the container, its mounts never reach the host.
    propagation = rootfs.propagation or libc.MS_REC | libc.MS_SLAVE
    libc.mount(None, "/", None, propagation)
    if propagation & libc.MS_SHARED:
        # pivot_root refuses a new root, or its parent mount, that is shared (runc
        # prepareRoot); a bind of the root on itself below is private then, an attached copy not.
        for point in ("/", root) if trees is not None else (_mount_point_of(root.rsplit("/", 1)[0] or "/"),):
            _at(Step.ROOT_PROPAGATION, point)
            libc.mount(None, point, None, libc.MS_PRIVATE)
    if trees is None:
        _at(Step.MOUNT, f"{root} on itself")
        libc.mount(root, root, None, libc.MS_BIND | libc.MS_REC)  # pivot_root needs a mount point
    plain: set[str] = set()
    for i, op in enumerate(rootfs.mounts):
        _mount(root, op, trees.get(i) if trees is not None else None, plain)
    os.umask(0)  # mknod's mode as it is, until _process_setup sets the process's own
    for dev in rootfs.devices:
        target = _resolve(root, dev.path, plain)
        _at(Step.MKNOD, target)
        if rootfs.bind_devices:
            _make_target(target, True)
            libc.mount(dev.path, target, None, libc.MS_BIND)
            continue
        try:
            os.mknod(target, dev.mode, os.makedev(dev.major, dev.minor))
        except FileExistsError:  # the spec names a default device again: its node wins
            os.unlink(target)
            os.mknod(target, dev.mode, os.makedev(dev.major, dev.minor))
        if dev.uid or dev.gid:  # made by root: 0, 0 already
            os.chown(target, dev.uid, dev.gid)
    for link_target, link in rootfs.symlinks:
        path = _resolve(root, link, plain)
        _at(Step.SYMLINK, path)
        try:
            os.symlink(link_target, path)
        except FileExistsError:
            pass


def _mount_point_of(path: str) -> str:
    best = "/"
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].replace("\\040", " ")
            if (path == point or path.startswith(point.rstrip("/") + "/")) and len(point) > len(best):
                best = point
    return best


def _pivot_root(root: str) -> None:
    """pivot_root(".", "."), then detach the old root from under us: no directory for the old
    root is needed inside the container (runc's trick, rootfs_linux.go pivotRoot)."""
    _at(Step.PIVOT_ROOT, root)
    old = os.open("/", os.O_DIRECTORY | os.O_RDONLY | os.O_CLOEXEC)
    new = os.open(root, os.O_DIRECTORY | os.O_RDONLY | os.O_CLOEXEC)
    os.fchdir(new)
    libc.pivot_root(".", ".")
    os.fchdir(old)
    libc.mount(None, ".", None, libc.MS_SLAVE | libc.MS_REC)  # the unmount must not reach the host
    libc.umount2(".", libc.MNT_DETACH)
    os.chdir("/")
    os.close(old)
    os.close(new)


def _finish_rootfs(rootfs: RootfsPlan) -> None:
    if rootfs.propagation & libc.MS_SHARED:
        # pivot_root needed a private root; share it again (a peer group of its own: a new
        # root can never share the host's, per-mount "rshared" options are for that)
        _at(Step.ROOT_PROPAGATION, "/")
        libc.mount(None, "/", None, rootfs.propagation)
    for path in rootfs.readonly_paths:
        _at(Step.READONLY_PATH, path)
        try:
            libc.mount(path, path, None, libc.MS_BIND | libc.MS_REC)
        except FileNotFoundError:
            continue
        libc.mount(None, path, None, libc.MS_BIND | libc.MS_REMOUNT | libc.MS_RDONLY | _locked_flags(path))
    empty = ""  # the first masked directory's read-only tmpfs, bound on the others
    for path in rootfs.masked_paths:
        _at(Step.MASK_PATH, path)
        try:
            if not stat.S_ISDIR(os.stat(path).st_mode):
                libc.mount("/dev/null", path, None, libc.MS_BIND)
            elif empty:
                # one file system fewer each: every file system is walked when a memory
                # cgroup is removed, and that walk grows with the containers running
                libc.mount(empty, path, None, libc.MS_BIND)
            else:
                libc.mount("tmpfs", path, "tmpfs", libc.MS_RDONLY)
                empty = path
        except FileNotFoundError:
            continue
    if rootfs.readonly:
        _at(Step.READONLY_ROOT, "/")
        libc.mount(None, "/", None, libc.MS_BIND | libc.MS_REMOUNT | libc.MS_RDONLY | _locked_flags("/"))


# -- the process -------------------------------------------------------------------------------

def _console(proc: ProcessPlan) -> None:
    """Make a pty inside the container, send its master to the console socket, and make the
    slave the controlling terminal and stdio (runc's console socket protocol)."""
    _at(Step.CONSOLE, "/dev/ptmx")
    master, slave = os.openpty()
    if proc.console_size is not None:
        rows, cols = proc.console_size
        fcntl.ioctl(slave, termios.TIOCSWINSZ, rows.to_bytes(2, "little") + cols.to_bytes(2, "little") + bytes(4))
    assert proc.console_fd is not None
    console = socket.socket(fileno=proc.console_fd)
    socket.send_fds(console, [b"/dev/ptmx"], [master])
    console.close()
    os.close(master)
    fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
    for fd in (0, 1, 2):
        os.dup2(slave, fd)
    os.close(slave)


def _process_setup(proc: ProcessPlan) -> None:
    for resource_id, soft, hard in proc.rlimits:
        _at(Step.RLIMIT, f"{resource_id}={soft}:{hard}")
        resource.setrlimit(resource_id, (soft, hard))
    if proc.oom_score_adj is not None:
        _at(Step.OOM_SCORE_ADJ, str(proc.oom_score_adj))
        _write("/proc/self/oom_score_adj", str(proc.oom_score_adj))


def _lookup(proc: ProcessPlan) -> str:
    """Find args[0] before READY, so that a missing binary fails `create` (as runc does)."""
    name = proc.args[0]
    _at(Step.LOOKUP, name)
    candidates = [name] if "/" in name else [d + "/" + name for d in proc.path.split(":") if d]
    for path in candidates:
        if not path.startswith("/"):
            path = proc.cwd.rstrip("/") + "/" + path
        try:
            st = os.stat(path)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and os.access(path, os.X_OK):
            return path
        if "/" in name:
            raise _StepFailed(f'exec: "{name}": permission denied')
    where = "no such file or directory" if "/" in name else "executable file not found in $PATH"
    raise _StepFailed(f'exec: "{name}": {where}')


def _drop_privileges(proc: ProcessPlan) -> None:
    caps = proc.capabilities
    _at(Step.CAPABILITIES, "bounding set")
    for n in range(_KERNEL_LAST_CAP + 1):  # past libcap's list too: the kernel's is what counts
        if not caps.bounding >> n & 1:
            libc.prctl(PR_CAPBSET_DROP, n)
    every = range(_LAST_CAP + 1)
    _at(Step.USER, f"uid={proc.uid} gid={proc.gid} groups={list(proc.additional_gids)}")
    libc.prctl(PR_SET_KEEPCAPS, 1)
    os.setgroups(list(proc.additional_gids))
    os.setresgid(proc.gid, proc.gid, proc.gid)
    os.setresuid(proc.uid, proc.uid, proc.uid)
    libc.prctl(PR_SET_KEEPCAPS, 0)
    _at(Step.CAPABILITIES, "effective, permitted, inheritable")
    sets = (caps.effective, caps.permitted, caps.inheritable)
    on = [[n for n in every if mask >> n & 1] for mask in sets]
    off = [[n for n in every if not mask >> n & 1] for mask in sets]
    _prctl.set_caps(*on, *off)  # one capset(2)
    _at(Step.CAPABILITIES, "ambient")
    libc.prctl(libc.PR_CAP_AMBIENT, libc.PR_CAP_AMBIENT_CLEAR_ALL)
    for n in range(caps.ambient.bit_length()):
        if caps.ambient >> n & 1:
            libc.prctl(libc.PR_CAP_AMBIENT, libc.PR_CAP_AMBIENT_RAISE, n)
    _at(Step.UMASK, oct(proc.umask))
    os.umask(proc.umask)
    _at(Step.CHDIR, proc.cwd)
    os.chdir(proc.cwd)
    if proc.no_new_privileges:
        _at(Step.NO_NEW_PRIVS)
        _prctl.prctl(_prctl.PR_SET_NO_NEW_PRIVS, 1)


# Capabilities this kernel knows, and those libcap (under python-prctl) can also set. One
# the kernel knows beyond libcap is dropped from the bounding set, so no execve regains it.
_KERNEL_LAST_CAP: int = last_cap()
_LAST_CAP: int = min(_prctl.CAP_LAST_CAP, _KERNEL_LAST_CAP)


def _run_hook(kind: str, hook: HookPlan, state: bytes) -> None:
    """A hook in the container's namespaces: state on stdin, killed past its timeout."""
    _at(Step.HOOK, f"{kind} hook {hook.path}")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.dup2(r, 0)
            os.execve(hook.path, hook.args, hook.env)
        finally:
            os._exit(127)
    os.close(r)
    try:
        os.write(w, state)
    except BrokenPipeError:
        pass
    os.close(w)
    deadline = time.monotonic() + hook.timeout if hook.timeout else None
    while True:
        done, status = os.waitpid(pid, os.WNOHANG if deadline else 0)
        if done:
            break
        if deadline and time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            raise _StepFailed(f"{kind} hook {hook.path}: timed out after {hook.timeout:g}s")
        time.sleep(0.002)
    if status:
        raise _StepFailed(f"{kind} hook {hook.path} failed: {_describe_status(status)}")


def _describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by signal {os.WTERMSIG(status)}"
    return f"exit status {os.WEXITSTATUS(status)}"
