"""A pod's shared namespaces, pinned by bind mounts instead of an infra process.

    <pod dir>/ns/net, ipc, uts    bind mounts of a fork-server worker's /proc/self/ns/*:
                                  the worker unshares, sets the hostname and sysctls, mounts,
                                  and exits; the mounts keep the namespaces alive
    pause (pod-shared PID only)   a PID namespace dies with its PID 1, so a pod that shares
                                  one gets a process, cri/pause.py, that also reaps orphans

containerd and CRI-O pin with a pause container; skiff needs no process for the common pod,
which is what a pod costs the node in memory. The pod's containers join by path
(linux.namespaces[].path), so the worker's short life does not matter.

Sysctls are written from inside the new namespaces, so only namespaced ones are allowed
(kubelet's list: net.*, kernel.shm*, kernel.msg*, kernel.sem, fs.mqueue.*), and only for a
namespace the pod owns: a net.* sysctl of a host-network pod would change the host's.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import signal
import socket
import struct
import sys
from collections.abc import Mapping

from skiff.cri import pause
from skiff.errors import InvalidArgument
from skiff.runtime import libc
from skiff.runtime.forkserver import Worker

SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1

# CRI / OCI namespace type -> (file in /proc/self/ns, clone flag)
SHARED = {"network": ("net", libc.CLONE_NEWNET), "ipc": ("ipc", libc.CLONE_NEWIPC),
          "uts": ("uts", libc.CLONE_NEWUTS)}


def sysctl_namespace(key: str) -> str:
    """The namespace type a sysctl belongs to; InvalidArgument if it is not namespaced."""
    if key.startswith("net."):
        return "network"
    if key.startswith(("kernel.shm", "kernel.msg", "fs.mqueue.")) or key == "kernel.sem":
        return "ipc"
    raise InvalidArgument(f"config.linux.sysctls[{key}]: not a namespaced sysctl: a pod may set net.*, "
                          "kernel.shm*, kernel.msg*, kernel.sem and fs.mqueue.*")


def check_sysctls(sysctls: Mapping[str, str], types: list[str]) -> None:
    for key, value in sysctls.items():
        owner = sysctl_namespace(key)
        if owner not in types:
            raise InvalidArgument(f"config.linux.sysctls[{key}]: needs the pod's own {owner} namespace, "
                                  "and the pod shares the host's")
        if "/" in key or ".." in key or not value or "\n" in value:
            raise InvalidArgument(f"config.linux.sysctls[{key}]: {value!r} is not a valid sysctl setting")


def pin(worker: Worker) -> None:
    """Job "pin_namespaces": args ns_dir, types (of SHARED), hostname, sysctls, pid (bool),
    pause_joins (the cgroup files the pause writes "0" into: its cgroup).
    Replies {"pause_pid": pid or 0}, with a NETLINK_ROUTE socket of the new network
    namespace (to configure it without joining it). The caller removes the mounts with
    `unpin` on failure."""
    a = worker.args
    types: list[str] = a["types"]
    flags = 0
    for t in types:
        flags |= SHARED[t][1]
    libc.unshare(flags)
    netlink: list[int] = []
    if "network" in types:
        _loopback_up()
        # bound to the namespace it is made in, wherever it is used from
        netlink.append(socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC,
                                     socket.NETLINK_ROUTE).detach())
    if "uts" in types and a.get("hostname"):
        libc.sethostname(a["hostname"])
    for key, value in (a.get("sysctls") or {}).items():
        path = "/proc/sys/" + key.replace(".", "/")
        try:
            with open(path, "w") as f:
                f.write(value)
        except OSError as e:
            raise InvalidArgument(f"config.linux.sysctls[{key}]: {value!r}: {e.strerror}") from e
    for t in types:
        target = os.path.join(a["ns_dir"], SHARED[t][0])
        os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
        libc.mount(f"/proc/self/ns/{SHARED[t][0]}", target, None, libc.MS_BIND)
    pause_pid = 0
    if a.get("pid"):
        libc.unshare(libc.CLONE_NEWPID)
        pause_pid = os.fork()
        if pause_pid == 0:
            try:
                for path in a.get("pause_joins") or ():  # into its own cgroup before anything else
                    with open(path, "w") as f:
                        f.write("0")
                os.setsid()
                os.execve(sys.executable, [sys.executable, "-I", "-S", os.path.abspath(pause.__file__)],
                          {"PATH": os.defpath})
            finally:
                os._exit(127)
    worker.reply({"pause_pid": pause_pid}, netlink)


def _loopback_up() -> None:
    """`lo` up in this process's new network namespace, as every pod network mode wants it
    (an ioctl: no netlink library in the fork server)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        request = struct.pack("16sh22x", b"lo", 0)  # struct ifreq: name, flags
        flags = struct.unpack("16sh22x", fcntl.ioctl(s, SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sh22x", b"lo", flags | IFF_UP))


def unpin(ns_dir: str) -> None:
    """Unmount and remove the pinned namespace files; what is already gone is fine."""
    for file, _ in SHARED.values():
        target = os.path.join(ns_dir, file)
        try:
            libc.umount2(target, libc.MNT_DETACH)
        except OSError as e:
            if e.errno not in (errno.EINVAL, errno.ENOENT):
                raise
        with contextlib.suppress(FileNotFoundError):
            os.unlink(target)
    with contextlib.suppress(FileNotFoundError):
        os.rmdir(ns_dir)


def stop_pause(pid: int, start_time: int) -> None:
    """Kill the pod's pause if `pid` is still it (same start time): the PID namespace and
    every process left in it go with it."""
    from skiff.runtime.container import proc_start_time

    if pid and proc_start_time(pid) == start_time:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


JOBS = {"pin_namespaces": pin}
