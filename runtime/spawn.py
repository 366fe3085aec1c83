"""The parent side of starting a container process: fork, the sync exchange (sync.py), and
undo when anything fails. The child side is child.py.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
from typing import Callable

from skiff.errors import FailedPrecondition
from skiff.runtime import child, libc, sync
from skiff.runtime.cgroups import CgroupDriver
from skiff.runtime.namespaces import write_id_maps
from skiff.runtime.plan import LaunchPlan


class ContainerInitError(FailedPrecondition):
    """The container's process failed before exec; `failure` says at which step."""

    def __init__(self, message: str, failure: sync.ChildFailure | None = None) -> None:
        super().__init__(message)
        self.failure = failure


def _fork(cgroup_fd: int | None) -> tuple[int, bool]:
    """(pid, joined the cgroup already). clone3 into the cgroup where the kernel can (v2,
    Linux 5.7); on any error, fork and let the caller write cgroup.procs, as crun does."""
    if cgroup_fd is not None:
        try:
            return libc.clone_into_cgroup(cgroup_fd), True
        except OSError:
            pass
    return os.fork(), False


def _kill_and_reap(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def spawn(plan: LaunchPlan, cgroup: CgroupDriver | None,
          on_hooks: Callable[[int], bytes] | None = None) -> int:
    """Start the plan's process and return its pid once it is ready: blocked on the exec fifo
    for `create`, exec'ing for `exec`. `on_hooks(pid)` runs the parent's hooks and returns the
    state JSON the container's own hooks get."""
    parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    cgroup_fd = cgroup.dirfd() if cgroup is not None else None
    try:
        pid, in_cgroup = _fork(cgroup_fd)
        if pid == 0:
            child.main(plan, child_end.fileno(), parent_end.fileno())
    finally:
        if cgroup_fd is not None:
            os.close(cgroup_fd)
        child_end.close()
    with parent_end, contextlib.ExitStack() as undo:
        undo.callback(_kill_and_reap, pid)
        if cgroup is not None and not in_cgroup:
            cgroup.add(pid)
        parent_end.send(sync.GO)
        init = _exchange(parent_end, pid, plan, on_hooks, undo)
        if init != pid:
            os.waitpid(pid, 0)  # the intermediate child exits once it has sent the init's pid
        undo.pop_all()
        return init


def _exchange(sock: socket.socket, pid: int, plan: LaunchPlan,
              on_hooks: Callable[[int], bytes] | None, undo: contextlib.ExitStack) -> int:
    init = pid
    while True:
        message = sock.recv(sync.MAX_MESSAGE)
        tag = message[:1]
        if tag == sync.USERNS:
            write_id_maps(pid, plan.namespaces)
            sock.send(sync.IDMAPS_DONE)
        elif tag == sync.PID:
            init = sync.decode_pid(message)
            if init != pid:
                undo.callback(_kill_and_reap, init)
        elif tag == sync.HOOKS:
            state = on_hooks(init) if on_hooks is not None else b""
            sock.send(sync.HOOKS_DONE + state)
        elif tag == sync.READY:
            return init
        elif tag == sync.ERROR:
            failure = sync.decode_failure(message)
            raise ContainerInitError(failure.message(), failure)
        else:
            raise ContainerInitError(f"container init exited before it was ready: {exit_status(init)}")


def exit_status(pid: int) -> str:
    """Reap our child `pid` and say how it ended."""
    try:
        done, status = os.waitpid(pid, 0)
    except ChildProcessError:
        return "exit status unknown"
    if os.WIFSIGNALED(status):
        return f"killed by signal {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit status {os.WEXITSTATUS(status)}"
