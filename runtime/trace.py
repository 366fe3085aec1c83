"""Timestamps of a container start, for `skiff bench start --breakdown`.

Each mark is (name, CLOCK_MONOTONIC ns) at the END of the phase it names, taken where the
work happens: the parent's marks in this process, the child's in the container's processes,
which write them to a pipe (the trace fd of the LaunchPlan) that execve closes. The clock is
one for the whole machine (no time namespace is made), so the marks of all the processes
can be put in one order. A run without a trace records nothing and pays one `is None` test
per mark.
"""

from __future__ import annotations

import os
import time

# The marks of a `Runtime.run`, in the order they are taken, and the phase each one ends.
PHASES: dict[str, str] = {
    "spec": "read and check config.json",
    "cgroup": "create the cgroup, write its limits",
    "fork": "fork the container's first process",
    "cgroup_join": "the process joins its cgroup",
    "namespaces": "setns/unshare (and the clone into a new PID namespace)",
    "rootfs": "mounts, /dev, pivot_root",
    "process": "capabilities, user, rlimits, seccomp; executable looked up",
    "created": "the parent saves the container's record (create returns)",
    "started": "start: the go-ahead to the init (exec.fifo after create; the sync socket in run)",
    "exec": "the init has its go-ahead (exec.fifo or the sync socket), right before execve",
    "workload": "execve to the workload's first instruction",
    "exited": "the workload runs and exits; the parent's waitpid returns",
    "deleted": "delete: kill what is left, remove the cgroup and the state",
}

Trace = list[tuple[str, int]]


CHILD_MARK_SIZE = 24  # 16 bytes of name, 8 of time: one write(2) each, read back whole


class StartTrace:
    """The marks of one start: the parent's appended here, the child's read from a pipe
    whose write end the LaunchPlan carries (close-on-exec: EOF once the init exec'd)."""

    def __init__(self, marks: Trace) -> None:
        self.marks = marks
        self.read_fd, self.child_fd = os.pipe2(os.O_CLOEXEC)

    def mark(self, name: str) -> None:
        self.marks.append((name, time.monotonic_ns()))

    def forked(self) -> None:
        """The child has its copy of the write end: drop ours, or EOF never comes."""
        if self.child_fd >= 0:
            os.close(self.child_fd)
            self.child_fd = -1

    def collect(self) -> None:
        """After the init exec'd: add the child's marks, put all in time order, close."""
        self.forked()
        data = b""
        while chunk := os.read(self.read_fd, 4096):
            data += chunk
        os.close(self.read_fd)
        self.marks.extend((data[i:i + 16].rstrip(b"\0").decode(), int.from_bytes(data[i + 16:i + 24], "little"))
                          for i in range(0, len(data) - CHILD_MARK_SIZE + 1, CHILD_MARK_SIZE))
        self.marks.sort(key=lambda m: m[1])


def child_mark(fd: int | None, name: bytes) -> None:
    """In the child: plain bytes and one syscall (child.py's rules)."""
    if fd is not None:
        os.write(fd, name.ljust(16, b"\0") + time.monotonic_ns().to_bytes(8, "little"))
