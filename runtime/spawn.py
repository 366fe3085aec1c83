"""The parent side of starting a container process: fork, the sync exchange (sync.py), and
undo when anything fails. The child side is child.py.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import signal
import socket
import time
from typing import Callable, Iterator

from skiff.errors import FailedPrecondition
from skiff.runtime import child, libc, sync
from skiff.runtime.cgroups import CgroupDriver
from skiff.runtime.namespaces import write_id_maps
from skiff.runtime.plan import LaunchPlan
from skiff.runtime.prespawn import Prespawner, Slot, fits, plan_flags
from skiff.runtime.undo import Undo

# clone3 errors that mean "this kernel or this caller's seccomp profile cannot do it": fall
# back to fork + cgroup.procs. Others (EAGAIN from pids.max, EBUSY) are real answers.
_CLONE3_UNSUPPORTED = (errno.ENOSYS, errno.E2BIG, errno.EINVAL, errno.EPERM, errno.EOPNOTSUPP)


class ContainerInitError(FailedPrecondition):
    """The container's process failed before exec; `failure` says at which step."""

    def __init__(self, message: str, failure: sync.ChildFailure | None = None) -> None:
        super().__init__(message)
        self.failure = failure


def _fork(cgroup_fd: int | None, namespaces: int) -> tuple[int, bool, int]:
    """(pid, joined the cgroup already, the namespaces made at the clone). clone3 where the
    kernel can: into the cgroup (v2, Linux 5.7), with the namespaces the plan lets it make
    (NamespacePlan.at_clone). Where it cannot, fork: the child joins its cgroup and makes
    every namespace itself."""
    # A raw clone3 skips what os.fork does for Python in the child (PyOS_AfterFork_Child):
    # with another thread waiting for the GIL at that moment, the child waits for it to hand
    # the GIL over, for ever. So only a single-threaded caller clones; threads fork.
    if (cgroup_fd is not None or namespaces) and libc.single_threaded():
        try:
            return libc.clone3(namespaces, cgroup_fd), cgroup_fd is not None, namespaces
        except OSError as e:
            if e.errno not in _CLONE3_UNSUPPORTED:
                raise ContainerInitError(f"clone3 (namespaces {namespaces:#x}): {os.strerror(e.errno or 0).lower()} "
                                         f"({errno.errorcode.get(e.errno or 0, e.errno)})") from e
    return os.fork(), False, 0


@contextlib.contextmanager
def signals_blocked() -> Iterator[None]:
    """Every signal blocked around a fork: no handler of the caller's (Ctrl-C's
    KeyboardInterrupt) can run in the child before it is in child.main, where it would
    run the caller's code there. The child resets the handlers, then unblocks
    (child.main); this process unblocks as soon as the clone returns."""
    parent = os.getpid()
    previous = libc.block_all_signals()
    try:
        yield
    finally:
        if os.getpid() == parent:
            libc.set_signal_mask(previous)


def kill_and_reap(pids: list[int], timeout: float = 10.0) -> None:
    """SIGKILL each, then wait until each is gone: reaped if it is our child, else until the
    kernel has removed it (a zombie counts as gone: its reaper is not us). The wait is on
    pidfds, which turn readable as their process exits; where there are none (Linux < 5.3,
    a seccomp profile, no fd left), /proc is looked at every millisecond."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    pidfds: dict[int, int] = {}
    polled: set[int] = set()
    try:
        for pid in pids:
            try:
                pidfds[os.pidfd_open(pid)] = pid
            except ProcessLookupError:  # gone: reaped already, or a zombie not ours to reap
                _reap_if_ours(pid)
            except OSError:
                polled.add(pid)
        poller = select.poll()
        for fd in pidfds:
            poller.register(fd, select.POLLIN)
        deadline = time.monotonic() + timeout
        pending = set(pidfds)
        while (pending or polled) and (left := deadline - time.monotonic()) > 0:
            for fd, _ in poller.poll(min(left, 0.001) * 1000 if polled else left * 1000):
                poller.unregister(fd)
                pending.discard(fd)
                # Reaped at once: a PID namespace's init finishes its exit only once every
                # process in the namespace is reaped, and an exec'd one is ours to reap.
                _reap_if_ours(pidfds[fd])
            polled = {pid for pid in polled if not _reap_if_ours(pid) and _alive(pid)}
    finally:
        for fd in pidfds:
            os.close(fd)


def _reap_if_ours(pid: int) -> bool:
    """True if `pid` was our child and is reaped now."""
    try:
        return os.waitpid(pid, os.WNOHANG)[0] != 0
    except ChildProcessError:
        return False


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):  # gone, or going (ESRCH while it exits)
        return False
    return stat[stat.rindex(b")") + 2:][:1] not in (b"Z", b"X")


def spawn(plan: LaunchPlan, cgroup: CgroupDriver | None,
          on_hooks: Callable[[int], bytes] | None = None, on_ready: Callable[[int], None] | None = None,
          prespawner: Prespawner | None = None, prepared: Slot | None = None) -> int:
    """Start the plan's process and return its pid: for `create`, once it waits on the exec
    fifo; for `run` (plan.start_sync), once `on_ready(pid)` has run and the init got START;
    for `exec`, once it has exec'd. `on_hooks(pid)` runs the parent's hooks and returns the
    state JSON the container's own hooks get. With a prespawner, a process made ahead of
    time takes the plan where one is waiting (prespawn.py). `prepared`: a slot waiting in
    the cgroup2 part of `cgroup` already (Runtime.prepare), taken if it fits the plan and
    killed if not."""
    cgroup_fd = cgroup.dirfd() if cgroup is not None else None
    try:
        slot = None
        if prepared is not None:
            slot = _hand_over(prepared, plan, cgroup.self_joins(True) if cgroup is not None else ())
            if slot is not None and prespawner is not None:
                prespawner.keep_sample(plan)  # the next prepared slot reads it ahead
        if slot is None and prespawner is not None:
            slot = _take_slot(prespawner, plan, cgroup, cgroup_fd)
        if slot is not None:
            try:
                return _start(plan, slot.pid, slot.flags, slot.sock, on_hooks, on_ready)
            except _SilentExit:
                pass  # it died while it waited (killed), before it said a word: fork instead
        pid, cloned, parent_end = _fork_child(plan, cgroup, cgroup_fd)
        return _start(plan, pid, cloned, parent_end, on_hooks, on_ready)
    finally:
        if cgroup_fd is not None:
            os.close(cgroup_fd)


class _SilentExit(ContainerInitError):
    """The child was gone before it said anything."""


def _start(plan: LaunchPlan, pid: int, cloned: int, parent_end: socket.socket,
           on_hooks: Callable[[int], bytes] | None, on_ready: Callable[[int], None] | None) -> int:
    """The sync exchange with the child `pid` (forked or prespawned) up to its READY, or to
    its execve for `exec`; on failure it is killed and reaped."""
    with parent_end, Undo() as undo:
        undo.callback(kill_and_reap, [pid])
        try:
            parent_end.send(sync.GO)
        except (BrokenPipeError, ConnectionResetError) as e:
            raise _SilentExit(f"container init exited before it was ready: {exit_status(pid)}") from e
        second_fork = plan.namespaces.second_fork and not cloned & libc.CLONE_NEWPID
        init = _exchange(parent_end, pid, plan, on_hooks, undo, second_fork)
        if plan.start_sync:
            if on_ready is not None:
                on_ready(init)
            parent_end.send(sync.START)
        if init != pid:
            os.waitpid(pid, 0)  # the intermediate child exits once it has sent the init's pid
        undo.keep()
        return init


def _take_slot(prespawner: Prespawner, plan: LaunchPlan, cgroup: CgroupDriver | None,
               cgroup_fd: int | None) -> Slot | None:
    if cgroup is not None and cgroup_fd is not None:
        # A cgroup with a cgroup2 part: a process cloned into it, not a waiting one that
        # moves in (prespawn.py). A single-threaded caller clones it itself, quicker than
        # through the prespawner (1.8 against 2.5 ms here, the namespaces made either way).
        return None if libc.single_threaded() else prespawner.launch(plan, cgroup.self_joins(True), cgroup_fd)
    slot = prespawner.take(plan)
    if slot is None:
        return None
    return _hand_over(slot, plan, cgroup.self_joins(False) if cgroup is not None else ())


def _hand_over(slot: Slot, plan: LaunchPlan, cgroup_joins: tuple[str, ...]) -> Slot | None:
    """The slot, with the plan handed over; None (the slot killed) if it cannot take it."""
    if slot.flags == plan_flags(plan) and fits(plan):
        try:
            slot.hand_over(plan, cgroup_joins)
            return slot
        except Exception:  # noqa: BLE001 - it died since it was made, or the plan does not pickle
            pass
    slot.sock.close()
    kill_and_reap([slot.pid])
    return None


def _fork_child(plan: LaunchPlan, cgroup: CgroupDriver | None,
                cgroup_fd: int | None) -> tuple[int, int, socket.socket]:
    """(pid, namespaces made at the clone, our end of the sync socket). `cgroup_fd`: the
    cgroup2 directory to clone into (the caller closes it)."""
    parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    # The child joins its cgroup itself (faster than a move from here, see self_joins);
    # what is left to join depends on whether clone3 put it in the cgroup2 part already.
    joins = {cloned: cgroup.self_joins(cloned) if cgroup is not None else () for cloned in (True, False)}
    parent = os.getpid()
    try:
        with signals_blocked():
            pid, in_cgroup, cloned = _fork(cgroup_fd, plan.at_clone)
            if pid == 0:
                try:
                    child.main(plan, child_end.fileno(), (parent_end.fileno(),) + (
                        (cgroup_fd,) if cgroup_fd is not None else ()), joins[in_cgroup], cloned)
                finally:
                    os._exit(127)  # whatever happens, never run the parent's code in the child
    except BaseException:
        if os.getpid() != parent:
            os._exit(127)
        parent_end.close()
        raise
    finally:
        child_end.close()
    return pid, cloned, parent_end


def _recv(sock: socket.socket) -> bytes:
    """The child's next message; b"" once every process with the socket is gone (also when
    the last one died with a message of ours unread, which the kernel reports as a reset)."""
    try:
        return sock.recv(sync.MAX_MESSAGE)
    except ConnectionResetError:
        return b""


def _exchange(sock: socket.socket, pid: int, plan: LaunchPlan,
              on_hooks: Callable[[int], bytes] | None, undo: Undo, second_fork: bool) -> int:
    init: int | None = None
    # The init's own messages that came before the intermediate's PID: the init runs as soon
    # as it is cloned and may send HOOKS or READY before the intermediate, preempted, sends
    # its pid. Taking READY then would make the intermediate the "init".
    pending: list[bytes] = []
    while True:
        message = pending.pop(0) if init is not None and pending else _recv(sock)
        tag = message[:1]
        if tag == sync.USERNS:
            write_id_maps(pid, plan.namespaces)
            sock.send(sync.IDMAPS_DONE)
        elif tag == sync.PID:
            init = _init_pid(message, pid, undo)
        elif tag == sync.ERROR:
            failure = sync.decode_failure(message)
            if init is None and second_fork:
                _await_init_pid(sock, pid, undo)  # the init may have failed before A sent its pid
            raise ContainerInitError(failure.message(), failure)
        elif init is None:
            if not message:  # EOF: every process with the socket is gone
                error = _SilentExit if not pending else ContainerInitError
                raise error(f"container init exited before it was ready: {exit_status(pid)}")
            pending.append(message)
        elif tag == sync.HOOKS:
            state = on_hooks(init) if on_hooks is not None else b""
            sock.send(sync.HOOKS_DONE + state)
        elif tag == sync.READY:
            return init
        elif plan.exec_fifo is None and not plan.start_sync:
            # `exec` sends no READY: the socket is close-on-exec, so EOF without an ERROR means
            # execve happened (or the process was killed, which waiting for it will show).
            return init
        else:
            raise ContainerInitError(f"container init exited before it was ready: {exit_status(init)}")


def _await_init_pid(sock: socket.socket, pid: int, undo: Undo) -> None:
    """Read on until A's PID message (or EOF: A failed before the clone) so that the undo
    reaps the init as well."""
    while message := _recv(sock):
        if message[:1] == sync.PID:
            _init_pid(message, pid, undo)
            return


def _init_pid(message: bytes, pid: int, undo: Undo) -> int:
    """The init's pid from a PID message (0: the process we forked is the init); a second
    process is killed with the rest if the start fails."""
    init = sync.decode_pid(message) or pid
    if init != pid:
        undo.callback(kill_and_reap, [init])
    return init


def exit_status(pid: int) -> str:
    """How our child `pid` ended, without reaping it (the caller's undo reaps it, and must not
    signal a pid that could already belong to another process)."""
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
    except ChildProcessError:
        return "exit status unknown"
    if info is None:
        return "exit status unknown"
    if info.si_code in (os.CLD_KILLED, os.CLD_DUMPED):
        return f"killed by signal {signal.Signals(info.si_status).name}"
    return f"exit status {info.si_status}"
