"""The container monitor, and the other fork-server jobs that start processes in containers.

A CRI container must outlive the daemon (kubelet restarts it, an upgrade replaces it), keep
its logs flowing meanwhile, and still report its exit code afterwards. So each container gets
one monitor process, CRI-O's conmon in spirit:

    fork server ─fork─► worker: setsid; stdout/stderr pipes on fds 1 and 2
                          Runtime.create  (the init is the worker's child: spawn clones it
                          │                with CLONE_PARENT from the intermediate)
                          reply {"pid", "monitor_pid"} to the daemon
                          exec log_copier.py --init PID --exit-file F LOG_PATH
                          └─► copies the pipes into the CRI log, reaps the init, writes F

The daemon keeps nothing in memory about it: the exit file is the truth about an exited
init, and the runtime's own state (runtime/state.py) about a live one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import sys
from dataclasses import dataclass

from skiff.cri import log_copier
from skiff.errors import FailedPrecondition
from skiff.oci import parse_process
from skiff.runtime.forkserver import Worker


@dataclass(frozen=True, slots=True, kw_only=True)
class ContainerExit:
    exit_code: int
    signal: int
    finished_at: int  # nanoseconds since the epoch


def read_exit(path: str) -> ContainerExit | None:
    """The exit file the monitor wrote, or None while the init runs (or if it never ran)."""
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read())
        return ContainerExit(exit_code=int(data["exit_code"]), signal=int(data["signal"]),
                             finished_at=int(data["finished_at"]))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as e:
        raise FailedPrecondition(f"exit file {path}: unreadable: {e}") from e


def create_container(worker: Worker) -> None:
    """Job "create_container": args runtime_root, cgroup_parent, container_id, bundle,
    log_path, exit_file, monitor_log. Replies {"pid", "monitor_pid"}, then becomes the
    monitor; on failure nothing is left (Runtime.create undoes itself)."""
    from skiff.runtime.container import Runtime

    a = worker.args
    os.setsid()  # the daemon's process group and terminal are not the container's
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    notes = os.open(a["monitor_log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    os.dup2(devnull, 0)
    os.dup2(out_w, 1)
    os.dup2(err_w, 2)
    os.close(out_w)
    os.close(err_w)
    runtime = Runtime(a["runtime_root"], cgroup_parent=a.get("cgroup_parent"))
    state = runtime.create(a["container_id"], a["bundle"])
    # From here on the write ends live only in the container: the copier sees EOF when
    # the container's last process closes them.
    os.dup2(notes, 1)
    os.dup2(notes, 2)
    worker.reply({"pid": state.pid, "monitor_pid": os.getpid()})
    moved = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (out_r, err_r)]
    os.dup2(moved[0], log_copier.STDOUT_FD)
    os.dup2(moved[1], log_copier.STDERR_FD)
    # The copier unblocks SIGUSR1 once its handler is in place: an early reopen waits.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    os.execve(sys.executable,
              [sys.executable, "-I", "-S", os.path.abspath(log_copier.__file__),
               "--init", str(state.pid), "--exit-file", a["exit_file"], a["log_path"]],
              {"PATH": os.defpath, "LC_ALL": "C.UTF-8"})


def exec_process(worker: Worker) -> None:
    """Job "exec": args runtime_root, container_id, process (an OCI process object); fds:
    stdout and stderr for the process (stdin is /dev/null). Replies {"pid"} once the
    process runs, then {"exit_code"} (128+signal when killed) when it ends."""
    from skiff.runtime.container import Runtime

    a = worker.args
    devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    os.dup2(devnull, 0)
    os.dup2(worker.fds[0], 1)
    os.dup2(worker.fds[1], 2)
    for fd in worker.fds:
        os.close(fd)
    runtime = Runtime(a["runtime_root"], cgroup_parent=a.get("cgroup_parent"))
    pid = runtime.exec(a["container_id"], parse_process(a["process"]), detach=True)
    os.dup2(devnull, 1)  # our copies must not keep the caller's pipes open
    os.dup2(devnull, 2)
    worker.reply({"pid": pid})
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    with contextlib.suppress(OSError):
        worker.reply({"exit_code": 128 - code if code < 0 else code})


JOBS = {"create_container": create_container, "exec": exec_process}
