"""The libc calls that Python 3.11's `os` lacks, bound once through ctypes.

Each wrapper raises OSError with errno and the argument it worked on, so a caller can
report "mount proc on /rootfs/proc: permission denied (EACCES)". They are safe to call in
the forked child: no imports, no allocation beyond the ctypes call itself.
"""

from __future__ import annotations

import ctypes
import os
from typing import Any


_libc = ctypes.CDLL(None, use_errno=True)

# Syscall numbers that glibc 2.36 has no wrapper for.
_SYSCALLS = {
    "x86_64": {"pivot_root": 155, "clone": 56, "clone3": 435, "close_range": 436, "open_tree": 428,
               "move_mount": 429},
    "aarch64": {"pivot_root": 41, "clone": 220, "clone3": 435, "close_range": 436, "open_tree": 428,
                "move_mount": 429},
}[os.uname().machine]

# clone(2) and namespace flags.
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_NEWTIME = 0x00000080
CLONE_PARENT = 0x00008000
CLONE_INTO_CGROUP = 0x200000000
SIGCHLD = 17

# mount(2) flags.
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_SYNCHRONOUS = 16
MS_REMOUNT = 32
MS_MANDLOCK = 64
MS_DIRSYNC = 128
MS_NOSYMFOLLOW = 256
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_BIND = 4096
MS_REC = 16384
MS_UNBINDABLE = 1 << 17
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24
MS_LAZYTIME = 1 << 25
MNT_DETACH = 2
# open_tree(2) and move_mount(2).
OPEN_TREE_CLONE = 1
OPEN_TREE_CLOEXEC = os.O_CLOEXEC
AT_RECURSIVE = 0x8000
AT_FDCWD = -100
MOVE_MOUNT_F_EMPTY_PATH = 4
CLOSE_RANGE_CLOEXEC = 4

PR_SET_PDEATHSIG = 1
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
PR_CAP_AMBIENT_CLEAR_ALL = 4


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), what)
    return result


_mount = _libc.mount
_mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_umount2 = _libc.umount2
_umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_unshare = _libc.unshare
_unshare.argtypes = [ctypes.c_int]
_setns = _libc.setns
_setns.argtypes = [ctypes.c_int, ctypes.c_int]
_sethostname = _libc.sethostname
_sethostname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
_setdomainname = _libc.setdomainname
_setdomainname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
_prctl = _libc.prctl
_prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
_signal = _libc.signal
_signal.restype = ctypes.c_void_p
_signal.argtypes = [ctypes.c_int, ctypes.c_void_p]
# clone and clone3 go through a PyDLL binding, which keeps the GIL across the call: a CDLL
# call releases it, and if another thread took it meanwhile the child (which has only this
# thread) would wait for it forever. Even so, fork only from a single-threaded process.
_clone_syscall = ctypes.PyDLL(None, use_errno=True).syscall
_clone_syscall.restype = ctypes.c_long


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    _check(
        _mount(
            source.encode() if source is not None else None,
            target.encode(),
            fstype.encode() if fstype is not None else None,
            flags,
            data.encode() if data else None,
        ),
        target,
    )


def umount2(target: str, flags: int) -> None:
    _check(_umount2(target.encode(), flags), target)


def unshare(flags: int) -> None:
    _check(_unshare(flags), "unshare")


def setns(fd: int, nstype: int) -> None:
    _check(_setns(fd, nstype), "setns")


def sethostname(name: str) -> None:
    raw = name.encode()
    _check(_sethostname(raw, len(raw)), name)


def setdomainname(name: str) -> None:
    raw = name.encode()
    _check(_setdomainname(raw, len(raw)), name)


def pivot_root(new_root: str, put_old: str) -> None:
    _check(
        _syscall(_SYSCALLS["pivot_root"], ctypes.c_char_p(new_root.encode()), ctypes.c_char_p(put_old.encode())),
        new_root,
    )


def open_tree(path: str, flags: int) -> int:
    """A detached copy of the mount at `path` (OPEN_TREE_CLONE): a bind mount that belongs to
    no namespace until move_mount attaches it, in whichever namespace the caller is then."""
    return _check(_syscall(_SYSCALLS["open_tree"], ctypes.c_int(AT_FDCWD), ctypes.c_char_p(path.encode()),
                           ctypes.c_uint(flags)), path)


def attach_tree(tree: int, target: str) -> None:
    """move_mount(2) of a detached tree (open_tree) onto `target`."""
    _check(_syscall(_SYSCALLS["move_mount"], ctypes.c_int(tree), ctypes.c_char_p(b""), ctypes.c_int(AT_FDCWD),
                    ctypes.c_char_p(target.encode()), ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH)), target)


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    return _check(_prctl(option, arg2, arg3, arg4, arg5), "prctl")


def default_signal(signum: int) -> None:
    """SIG_DFL for `signum` in the kernel, behind Python's back: signal.signal works only in
    the main thread, and a child cloned from another thread is not it."""
    _signal(signum, 0)


def ignore_signal(signum: int) -> None:
    _signal(signum, 1)


# sigset_t as glibc has it (1024 bits). signal.pthread_sigmask turns each signal of the
# sets it takes and returns into an enum member: 90 us a block and restore, 1 us this way.
SigSet = ctypes.c_ulong * (1024 // (8 * ctypes.sizeof(ctypes.c_ulong)))
_SIG_BLOCK, _SIG_SETMASK = 0, 2
_pthread_sigmask = _libc.pthread_sigmask
_pthread_sigmask.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]


def block_all_signals() -> ctypes.Array[ctypes.c_ulong]:
    """Block every signal in this thread; the mask it had before."""
    previous = SigSet()
    err = _pthread_sigmask(_SIG_BLOCK, ctypes.byref(SigSet(*[ctypes.c_ulong(-1).value] * len(previous))),
                           ctypes.byref(previous))
    if err:
        raise OSError(err, os.strerror(err), "pthread_sigmask")
    return previous


def set_signal_mask(mask: ctypes.Array[ctypes.c_ulong] | None) -> None:
    """This thread's blocked signals: `mask`, or none."""
    err = _pthread_sigmask(_SIG_SETMASK, ctypes.byref(mask if mask is not None else SigSet()), None)
    if err:
        raise OSError(err, os.strerror(err), "pthread_sigmask")


def close_range_cloexec(first: int) -> None:
    """Mark every fd >= first close-on-exec (CVE-2024-21626: no host fd may reach exec)."""
    _check(
        _syscall(_SYSCALLS["close_range"], ctypes.c_uint(first), ctypes.c_uint(0xFFFFFFFF),
                 ctypes.c_uint(CLOSE_RANGE_CLOEXEC)),
        "close_range",
    )


def single_threaded() -> bool:
    """Whether this process has one thread, counted by the kernel: threads that a C library
    starts (grpc's) are not in Python's threading.active_count(), and a raw clone from a
    process with any other thread may copy a lock it holds (glibc's, taken by setgroups in
    the child: seen as a container process waiting for ever in setgroups)."""
    return len(os.listdir("/proc/self/task")) == 1


def close_all_but(keep: set[int]) -> None:
    """Close every fd above 2 that is not in `keep`."""
    low = 2
    for fd in sorted(f for f in keep if f > 2):
        os.closerange(low + 1, fd)
        low = fd
    os.closerange(low + 1, os.sysconf("SC_OPEN_MAX"))


def clone_parent() -> int:
    """fork(2) whose child is a sibling of the caller (CLONE_PARENT), as runc's nsexec does, so
    that the container's init is the runtime's own child even though an intermediate process
    made its namespaces. Raw syscall: the child must only do syscalls and exec."""
    return _check(
        _clone_syscall(_SYSCALLS["clone"], ctypes.c_ulong(CLONE_PARENT | SIGCHLD), ctypes.c_ulong(0),
                 ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0)),
        "clone",
    )


def fork() -> int:
    """fork(2) without Python's part, for a caller known to be single-threaded (the fork
    server and its workers): the child skips os.fork's work for Python (PyOS_AfterFork_Child
    and the os.register_at_fork handlers), which writes to some 150 pages that a long-lived
    child (the container monitor) would then no longer share with its parent. glibc's
    _Fork (2.34) still sets up the child's thread data, as fork does, minus the atfork
    handlers; os.fork where there is none. With another thread waiting for the GIL, the
    child would wait for ever (spawn._fork)."""
    if _glibc_fork is None:
        return os.fork()
    return _check(_glibc_fork(), "fork")


try:  # through PyDLL, as clone: the GIL stays held across the call
    _glibc_fork: Any = ctypes.PyDLL(None, use_errno=True)._Fork
    _glibc_fork.restype = ctypes.c_int
    _glibc_fork.argtypes = []
except AttributeError:
    _glibc_fork = None


class _CloneArgs(ctypes.Structure):
    _fields_ = [
        ("flags", ctypes.c_uint64), ("pidfd", ctypes.c_uint64), ("child_tid", ctypes.c_uint64),
        ("parent_tid", ctypes.c_uint64), ("exit_signal", ctypes.c_uint64), ("stack", ctypes.c_uint64),
        ("stack_size", ctypes.c_uint64), ("tls", ctypes.c_uint64), ("set_tid", ctypes.c_uint64),
        ("set_tid_size", ctypes.c_uint64), ("cgroup", ctypes.c_uint64),
    ]


def clone3(flags: int, cgroup_fd: int | None, *, parent: bool = False) -> int:
    """fork(2) with clone3's extras: `flags` (CLONE_NEW* namespaces made at the clone, as
    crun does, with no intermediate process) and, with `cgroup_fd`, straight into a cgroup v2
    directory (CLONE_INTO_CGROUP, Linux 5.7): no window in which the child runs outside its
    cgroup, and no cgroup.procs write. `parent`: the child is the caller's sibling
    (CLONE_PARENT; it inherits the caller's exit signal, and clone3 wants none given).
    Raw syscall: the child must only do syscalls and exec."""
    if cgroup_fd is not None:
        flags |= CLONE_INTO_CGROUP
    if parent:
        flags |= CLONE_PARENT
    args = _CloneArgs(flags=flags, exit_signal=0 if parent else SIGCHLD, cgroup=cgroup_fd or 0)
    return _check(
        _clone_syscall(_SYSCALLS["clone3"], ctypes.byref(args), ctypes.c_size_t(ctypes.sizeof(args))),
        "clone3",
    )
