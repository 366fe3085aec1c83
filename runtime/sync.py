"""The sync protocol between the runtime (parent) and the container's processes.

One SOCK_SEQPACKET socketpair; each message is one packet: a tag byte, then its payload.
The intermediate child (A) makes the namespaces; when a PID namespace is made or joined,
A clones the init (B) as the parent's sibling child (CLONE_PARENT) and exits, because
unshare(CLONE_NEWPID) only moves the caller's future children.

    parent                         A (namespaces)               B (init)
    fork A               ------>   joins its cgroup itself: "0" into each v1 `tasks`
    (clone3 into the cgroup2       file, and into cgroup.procs unless clone3 put it
    leaf where it can)             in the cgroup2 leaf already
    GO                   ------>   setns (user first), unshare
                         <------   USERNS (when it made one)
    write uid_map, gid_map
    IDMAPS_DONE          ------>   setresuid(0) in the new user ns
                                   clone B  -------------------> (or A goes on as B)
                         <------   PID (B's pid in the parent's PID namespace); A exits
                                                                rootfs: mounts, /dev
                         <-----------------------------------   HOOKS (only if the spec has hooks)
    prestart, createRuntime hooks
    HOOKS_DONE + state   ----------------------------------->   createContainer hooks,
                                                                pivot_root, process setup,
                                                                executable looked up
                         <-----------------------------------   READY
    create returns                                              blocks opening exec.fifo
                                                                until `start` reads it,
                                                                startContainer hooks, execve
    (`run`: the record is saved,
    then START             ----------------------------------->   instead of exec.fifo)

B runs as soon as it is cloned, so its HOOKS or READY may reach the parent before A's PID
(A preempted on a busy host): the parent holds B's messages until it knows B's pid.

Any child step that fails sends ERROR (errno, the step, what it worked on) and exits 1;
the parent raises ContainerInitError with the step. EOF before READY without ERROR means
the child died without a word (killed, or a bug), which the parent reports as such.
"""

from __future__ import annotations

import enum
import errno as errno_names
import os
from dataclasses import dataclass

GO = b"G"
IDMAPS_DONE = b"M"
HOOKS_DONE = b"H"
START = b"S"
USERNS = b"U"
PID = b"P"
HOOKS = b"K"
READY = b"R"
ERROR = b"E"

MAX_MESSAGE = 65536  # a HOOKS_DONE carries the state JSON, annotations included


class Step(enum.Enum):
    SYNC = "sync with the runtime"
    CGROUP = "join cgroup"
    SETNS = "setns"
    UNSHARE = "unshare"
    SETUID_ROOT = "become root in the user namespace"
    CLONE = "clone the container init"
    ROOT_PROPAGATION = "set root propagation"
    MOUNT = "mount"
    MKNOD = "create device"
    SYMLINK = "create symlink"
    HOOK = "run hook"
    PIVOT_ROOT = "pivot_root"
    MASK_PATH = "mask path"
    READONLY_PATH = "make path read-only"
    READONLY_ROOT = "make root read-only"
    HOSTNAME = "set hostname"
    DOMAINNAME = "set domainname"
    SYSCTL = "write sysctl"
    CONSOLE = "set up console"
    SETSID = "setsid"
    RLIMIT = "set rlimit"
    OOM_SCORE_ADJ = "write oom_score_adj"
    CAPABILITIES = "set capabilities"
    USER = "set user"
    UMASK = "set umask"
    CHDIR = "chdir to cwd"
    NO_NEW_PRIVS = "set no_new_privs"
    SECCOMP = "load seccomp filter"
    LOOKUP = "look up the executable"
    EXEC_FIFO = "wait for start on exec.fifo"
    EXEC = "execve"
    INTERNAL = "internal error"


_STEPS = {step.name.encode(): step for step in Step}


@dataclass(frozen=True, slots=True)
class ChildFailure:
    step: Step
    errno: int
    detail: str  # the path, flag or value the step worked on

    def message(self) -> str:
        if not self.errno:
            return f"{self.step.value}: {self.detail}"
        name = errno_names.errorcode.get(self.errno, str(self.errno))
        return f"{self.step.value}: {self.detail}: {os.strerror(self.errno).lower()} ({name})"


def encode_failure(step: Step, err: int, detail: str) -> bytes:
    """Child side: plain bytes operations only."""
    return ERROR + err.to_bytes(4, "little") + step.name.encode() + b"\0" + detail.encode(errors="replace")[:3000]


def decode_failure(message: bytes) -> ChildFailure:
    err = int.from_bytes(message[1:5], "little")
    name, _, detail = message[5:].partition(b"\0")
    return ChildFailure(_STEPS.get(name, Step.INTERNAL), err, detail.decode(errors="replace"))


def encode_pid(pid: int) -> bytes:
    return PID + pid.to_bytes(4, "little")


def decode_pid(message: bytes) -> int:
    return int.from_bytes(message[1:5], "little")
