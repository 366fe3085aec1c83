"""Container processes made ahead of time: forked, with their namespaces, waiting for a plan.

The biggest piece of a container start that does not depend on the container is its first
process: a fork of the runtime's process (page tables, in proportion to its size) and the
new PID, network, IPC and UTS namespaces (the network one alone takes about 0.3 ms). A warm
Runtime (`Runtime(root, warm=N)`) keeps N such processes ready per kind of namespace set it
has seen; a create hands its LaunchPlan to a waiting process, which goes on from there
exactly as a freshly forked child would (child.main), and a new one is made once the start
is done.

    runtime                         prespawner (python -c, one thread)   slot (its clone)
    request "flags"        ───────► clone3(CLONE_PARENT | flags) ──────► waits on its socket
    the slot's pid + socket ◄──────                                      (parent: the runtime)
    create: plan + stdio, GO ─────────────────────────────────────────► joins its cgroup,
                                                                         unshare the rest, mounts, ...

The prespawner is a fresh interpreter, so a runtime with threads never forks for a slot (a
fork from a thread may copy a lock another thread held), and no slot carries the runtime's
heap (a slot's fork and execve cost in proportion to the process it is a copy of);
CLONE_PARENT makes every slot the runtime's child, so it waits for the container as for any
other. What no slot can take (a plan with a console or preserved fds) is forked. A slot never has a mount namespace of its own before its plan comes: one copied earlier would
miss the mounts made since (an image's rootfs). Nothing about the container is decided
before the plan: the namespaces are new and empty, as they would be at a fork.

Where the container's cgroup has a cgroup2 part (a cgroup v2 host, the unified/ group of a
hybrid one), a waiting slot would have to move itself into it: a write to cgroup.procs,
which waits for an RCU grace period (about 10 ms here). So for such a cgroup the process is
launched instead: the create sends the prespawner its plan, the cgroup's fd and its end of
the sync socket in one message, and the prespawner clones it straight into the cgroup
(CLONE_INTO_CGROUP) with the plan in hand; the clone is on the critical path. A
single-threaded runtime clones such a process itself, which is quicker.

A caller that knows of a create before it has the plan (the CRI, while it makes the
container's snapshot and spec) takes that clone off the critical path: Runtime.prepare makes
the cgroup and asks for a slot cloned into its cgroup2 part (`slot_in`), which waits there
for its plan like any other slot.

Slots die with the runtime (PR_SET_PDEATHSIG) and at `close`; a taken slot clears it, so
a detached container outlives the runtime as usual.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import select
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from skiff.runtime import libc

if TYPE_CHECKING:
    from skiff.runtime.plan import LaunchPlan

# What a slot may make before its plan: not a mount namespace (see above), nor user or
# cgroup ones (NamespacePlan.at_clone).
SLOT_NAMESPACES = libc.CLONE_NEWPID | libc.CLONE_NEWNET | libc.CLONE_NEWIPC | libc.CLONE_NEWUTS
INTO_CGROUP = 1 << 63  # in a request's flags: clone into the cgroup whose fd comes with it
SLOT_IN_CGROUP = 1 << 62  # the same, and the clone waits there for its plan (a slot)
_REPLY = 16  # flags (8 bytes) and pid (8 bytes)


@dataclass(frozen=True, slots=True)
class Slot:
    pid: int
    flags: int
    sock: socket.socket  # the runtime's end of the sync socket

    def hand_over(self, plan: LaunchPlan, cgroup_joins: tuple[str, ...]) -> None:
        data, fds = plan_message(plan, cgroup_joins)
        socket.send_fds(self.sock, [data], fds)


def plan_message(plan: LaunchPlan, cgroup_joins: tuple[str, ...]) -> tuple[bytes, list[int]]:
    """The plan as a slot takes it (child.take_plan): pickled, with the fds it names and its
    stdio (this process's as it is now, if the plan names none)."""
    fds = [*(plan.stdio or (0, 1, 2)), *plan.passed_fds()]
    return pickle.dumps((plan, cgroup_joins), protocol=pickle.HIGHEST_PROTOCOL), fds


def plan_flags(plan: LaunchPlan) -> int:
    """The namespaces a slot for `plan` has: those the first clone would make, but mount."""
    return plan.namespaces.at_clone & SLOT_NAMESPACES


def fits(plan: LaunchPlan) -> bool:
    """Whether a slot can take the plan: fds at fixed numbers (a console, preserved fds) only
    a fork passes on."""
    return not plan.process.preserve_fds and plan.process.console_fd is None


class Prespawner:
    def __init__(self, depth: int = 1) -> None:
        self.depth = depth
        self._idle: dict[int, list[Slot]] = {}
        self._pending: dict[int, int] = {}  # slots asked for and not yet arrived, per flags
        self._samples: dict[int, bytes] = {}  # a plan of each kind, which a new slot reads once
        self.taken = 0  # slots handed out, waiting or launched
        self._launched: list[tuple[int, socket.socket | None]] = []  # what launch() or slot_in() waits for
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        # A fresh interpreter, not a fork of the caller: its slots are small (their fork and
        # their execve cost in proportion to that), and a caller's threads and heap stay out.
        package = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [package, os.environ.get("PYTHONPATH")])))
        try:
            process = subprocess.Popen(
                [sys.executable, "-c", "import sys; from skiff.runtime.prespawn import serve; serve(*sys.argv[1:])",
                 str(theirs.fileno()), str(os.getpid())],
                # no copy of the caller's stdio: a reader of its pipes would wait for ours too
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, env=env)
        finally:
            theirs.close()
        self._process = process
        self._control: socket.socket | None = ours
        # Runtime.run may be called from several threads at once; take() and close() call
        # each other's parts (a dead prespawner closes), hence reentrant.
        self._lock = threading.RLock()

    def _slottable(self, plan: LaunchPlan) -> int:
        """The slot kind for this plan; 0 if it cannot go to a slot (the caller forks)."""
        return plan_flags(plan) if fits(plan) and self._control is not None else 0

    def launch(self, plan: LaunchPlan, cgroup_joins: tuple[str, ...], cgroup_fd: int) -> Slot | None:
        """A process made now for this plan, cloned into the cgroup2 directory `cgroup_fd`
        with the plan in hand: one exchange with the prespawner (the runtime's end of the
        sync socket goes with the request). None if it cannot be (the caller forks)."""
        with self._lock:
            flags = self._slottable(plan)
            if not flags:
                return None
            try:
                data, fds = plan_message(plan, cgroup_joins)
            except (pickle.PicklingError, TypeError, AttributeError):  # a plan that only a fork carries
                return None
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            try:
                pid, _ = self._clone(flags | INTO_CGROUP, data, [cgroup_fd, theirs.fileno(), *fds])
            finally:
                theirs.close()
            if not pid:
                ours.close()
                return None
            self.taken += 1
            return Slot(pid, flags, ours)

    def slot_in(self, flags: int, cgroup_fd: int) -> Slot | None:
        """A slot with the namespaces of `flags`, cloned now into the cgroup2 directory
        `cgroup_fd`, to wait there for its plan (Runtime.prepare). None if it cannot be."""
        with self._lock:
            if self._control is None:
                return None
            pid, sock = self._clone(flags | SLOT_IN_CGROUP, self._samples.get(flags, b""), [cgroup_fd])
            if not pid or sock is None:
                return None
            self.taken += 1
            return Slot(pid, flags, sock)

    def keep_sample(self, plan: LaunchPlan) -> bool:
        """Keep a plan of this kind for the slots made later to read ahead (see take); False
        if the plan does not pickle."""
        flags = plan_flags(plan)
        if flags not in self._samples:
            try:
                self._samples[flags] = pickle.dumps(replace(plan, exec_fifo=None, trace_fd=None),
                                                    protocol=pickle.HIGHEST_PROTOCOL)
            except (pickle.PicklingError, TypeError, AttributeError):  # a plan that only a fork carries
                return False
        return True

    def _clone(self, kind: int, data: bytes, fds: list[int]) -> tuple[int, socket.socket | None]:
        """One clone into a cgroup by the prespawner: (pid, our end of a slot's socket); pid 0
        if it could not be made (the caller forks)."""
        assert self._control is not None
        try:
            socket.send_fds(self._control, [kind.to_bytes(8, "little") + data], fds)
            self._pending[kind] = self._pending.get(kind, 0) + 1
            self._wait_pending(kind)
        except (EOFError, BrokenPipeError, ConnectionResetError):
            self.close()  # the prespawner is gone, or hangs: starts fork from now on
            return 0, None
        except OSError:
            return 0, None  # this request only (a plan over the socket's size): this start forks
        return self._launched.pop() if self._launched else (0, None)

    def take(self, plan: LaunchPlan) -> Slot | None:
        """A slot for this plan: a waiting one, else one made now; None if the plan cannot
        go to a slot (the caller forks). `refill` makes the next one: called once the start
        is past its critical part, so that the prespawner's clone does not compete with it."""
        with self._lock:
            flags = self._slottable(plan)
            if not flags:
                return None
            if not self.keep_sample(plan):
                return None
            try:
                self._receive(block=False)
            except EOFError:  # the prespawner is gone (it could not start, or was killed): fork
                self.close()
                return None
            slot = self._waiting_slot(flags)
            self.taken += slot is not None
            return slot

    def _waiting_slot(self, flags: int) -> Slot | None:
        idle = self._idle.setdefault(flags, [])
        slot = None
        while idle and slot is None:
            slot = idle.pop(0)
            if not _alive(slot):
                slot = None
        if slot is None:
            # None waiting (the first of its kind, or all taken): one made now, by the
            # prespawner, rather than a fork here, which may have other threads.
            try:
                self._ask(flags, 1)
                self._wait_pending(flags, until=lambda: bool(idle))
            except (OSError, EOFError):
                self.close()
                return None
            slot = idle.pop(0) if idle else None
        return slot

    def _wait_pending(self, kind: int, timeout: float = 10, until: Callable[[], bool] = lambda: False) -> None:
        """Until the prespawner has answered every request of this kind (or `until()`);
        EOFError if it has not within `timeout` (it hangs: treated as gone)."""
        while self._pending.get(kind) and not until():
            if not self._receive(block=True, timeout=timeout):
                raise EOFError(f"the prespawner did not answer within {timeout:g}s")

    def waiting(self) -> list[int]:
        """The pids of the slots that wait for a plan now."""
        with self._lock:
            if self._control is not None:
                self._receive(block=False)
            return [slot.pid for slots in self._idle.values() for slot in slots]

    def refill(self) -> None:
        """Ask for the slots missing of each kind seen (a kind is seen at its first take)."""
        with self._lock:
            if self._control is None:
                return
            try:
                for flags, idle in self._idle.items():
                    self._ask(flags, self.depth - len(idle) - self._pending.get(flags, 0))
            except OSError:  # the prespawner is gone: starts fork from now on
                self.close()

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until every kind seen so far has its slots waiting (for a benchmark that
        measures a start with a slot ready)."""
        with self._lock:
            try:
                while any(self._pending.values()):
                    if not self._receive(block=True, timeout=timeout):
                        return False
            except EOFError:
                self.close()
                return False
            return True

    def close(self) -> None:
        """End the prespawner and every waiting slot (EOF on their sockets), and reap them."""
        with self._lock:
            if self._control is None:
                return
            # The prespawner ends at EOF; the slots it made until then are still to be taken in.
            with contextlib.suppress(EOFError, OSError):
                self._control.shutdown(socket.SHUT_WR)
                while True:
                    self._receive(block=True)
            self._control.close()
            self._control = None
            self._process.wait()
            # Killed, not left to see EOF: a fork of this process (a created container's
            # init, say) may hold a copy of their sockets.
            for slots in self._idle.values():
                for slot in slots:
                    slot.sock.close()
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(slot.pid, signal.SIGKILL)
                    with contextlib.suppress(ChildProcessError):
                        os.waitpid(slot.pid, 0)
            self._idle.clear()
            self._pending.clear()

    def _ask(self, flags: int, count: int) -> None:
        assert self._control is not None
        for _ in range(max(0, count)):
            self._control.send(flags.to_bytes(8, "little") + self._samples[flags])
            self._pending[flags] = self._pending.get(flags, 0) + 1

    def _receive(self, *, block: bool, timeout: float | None = None) -> bool:
        """Take in the slots that arrived; with block, wait for at least one."""
        assert self._control is not None
        got = False
        while True:
            if not block or got:
                ready, _, _ = select.select([self._control], [], [], 0)
                if not ready:
                    return got
            elif timeout is not None:
                ready, _, _ = select.select([self._control], [], [], timeout)
                if not ready:
                    return False
            data, fds, _, _ = socket.recv_fds(self._control, _REPLY, 1, socket.MSG_CMSG_CLOEXEC)
            if not data:
                raise EOFError("the prespawner exited")
            flags, pid = int.from_bytes(data[:8], "little"), int.from_bytes(data[8:], "little")
            self._pending[flags] -= 1
            if flags & INTO_CGROUP:
                self._launched.append((pid, None))
            elif flags & SLOT_IN_CGROUP:
                self._launched.append((pid, socket.socket(fileno=fds[0]) if pid and fds else None))
            elif pid and fds:
                self._idle.setdefault(flags, []).append(Slot(pid, flags, socket.socket(fileno=fds[0])))
            got = True


def _alive(slot: Slot) -> bool:
    """Reap a slot that died while it waited (killed by someone); True if it still waits."""
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(slot.pid, os.WNOHANG)[0] == 0:
            return True
    slot.sock.close()
    return False


def serve(control_fd: str, runtime_pid: str) -> None:
    """The prespawner (`python -c`): one slot per request, until the runtime closes the
    control socket."""
    from skiff.runtime import child, seccomp  # noqa: F401 - every class a plan holds: a slot never imports
    from skiff.runtime.spawn import signals_blocked

    control = socket.socket(fileno=int(control_fd))
    runtime = int(runtime_pid)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_IGN)  # the runtime's Ctrl-C is the runtime's (slots reset it)
    libc.prctl(libc.PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != runtime:
        return
    while True:
        request, fds, _, _ = socket.recv_fds(control, 1 << 20, 8)
        if not request:
            break
        flags = int.from_bytes(request[:8], "little")
        namespaces = flags & ~(INTO_CGROUP | SLOT_IN_CGROUP)
        # launch: fds are the cgroup2 directory, the process's end of the sync socket and the
        # plan's; a slot to keep waiting gets a socket made here (slot_in: and the first fd
        # is the cgroup2 directory to clone it into)
        ours, theirs = (None, None) if flags & INTO_CGROUP else socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        into = fds[0] if flags & (INTO_CGROUP | SLOT_IN_CGROUP) else None
        try:
            with signals_blocked():
                pid = libc.clone3(namespaces, into, parent=True)
                if pid == 0:
                    try:
                        if theirs is None:
                            child.launched(fds[1], namespaces, request[8:], fds[2:], (control.fileno(), fds[0]))
                        else:
                            child.prespawned(theirs.fileno(), namespaces, runtime, request[8:])
                    finally:
                        os._exit(127)
        except OSError:
            pid = 0  # none: the runtime forks
        finally:
            for fd in fds:
                os.close(fd)
            if theirs is not None:
                theirs.close()
        reply = flags.to_bytes(8, "little") + pid.to_bytes(8, "little")
        if ours is not None:
            socket.send_fds(control, [reply], [ours.fileno()] if pid else [])
            ours.close()
        else:
            control.send(reply)