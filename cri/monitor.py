"""The container monitor, and the other fork-server jobs that start processes in containers.

A CRI container must outlive the daemon (kubelet restarts it, an upgrade replaces it), keep
its logs flowing meanwhile, and still report its exit code afterwards. So each container gets
one monitor process, CRI-O's conmon in spirit:

    fork server ─fork─► worker: setsid; stdout/stderr pipes on fds 1 and 2
                          a subreaper; fork ─► Runtime.create, exit (the init passes to
                          │                    the monitor, its nearest subreaper)
                          reply {"pid", "monitor_pid"} to the daemon
                          becomes `skiff-monitor <id>`: log_copier.run copies the pipes into
                          the CRI log, reaps the init and writes the exit file

The monitor does not exec a fresh interpreter: it stays a fork of the fork server, whose
objects are frozen for the collector (runtime/forkserver.py) and which holds only what the
jobs import (jobs.py), and leaves the create to a short-lived child, so it shares nearly all
its memory with the fork server and the other monitors. A fresh `python -S` would cost each
pod some 4 MB of its own; each monitor writes to about 1.5 MB of its pages (measured with
20 pods), 0.4 MB of it right after the fork, less than os.fork leaves: it is forked raw
(libc.fork).

The daemon keeps nothing in memory about it: the exit file is the truth about an exited
init, and the runtime's own state (runtime/state.py) about a live one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
from dataclasses import dataclass
from typing import Any

import setproctitle

from skiff.cri import log_copier
from skiff.errors import FailedPrecondition, SkiffError
from skiff.oci import parse_process
from skiff.runtime import libc
from skiff.runtime.forkserver import Worker, error_message, raise_error

MONITOR_TITLE = "skiff-monitor"
PR_SET_CHILD_SUBREAPER = 36


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
    monitor; on failure nothing is left (Runtime.create undoes itself).

    The create runs in a child of the monitor, which exits once the init waits on its exec
    fifo: the init, its child, passes to the monitor (a subreaper meanwhile), and the pages
    the create wrote die with the child instead of staying in the monitor for the
    container's life."""
    a = worker.args
    os.setsid()  # the daemon's process group and terminal are not the container's
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    report_r, report_w = os.pipe()
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1)
    creator = libc.fork()
    if creator == 0:
        code = 1
        try:
            for fd in (out_r, err_r, report_r):
                os.close(fd)
            _create_in_child(a, out_w, err_w, report_w)
            code = 0
        finally:
            os._exit(code)
    for fd in (out_w, err_w, report_w):
        os.close(fd)
    # Waited for first, then read without blocking: the init, a clone of the creator, holds
    # a copy of the report pipe's write end until it execs, so there is no EOF to wait for.
    os.waitpid(creator, 0)
    os.set_blocking(report_r, False)
    report = b""
    with contextlib.suppress(BlockingIOError):
        while chunk := os.read(report_r, 65536):
            report += chunk
    os.close(report_r)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 0)  # the init is ours now; later orphans are not
    if not report:
        raise SkiffError("container create: its process died without a word")
    message: dict[str, Any] = json.loads(report)
    if "error" in message:
        raise_error(message["error"])
    notes = os.open(a["monitor_log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    os.dup2(notes, 1)
    os.dup2(notes, 2)
    # A reopen request (SIGUSR1) may come as soon as the daemon has our pid; it waits, blocked,
    # until the copier's handler is in place.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    init = int(message["pid"])
    worker.reply({"pid": init, "monitor_pid": os.getpid()})
    worker.sock.close()
    become_monitor(a["container_id"], out_r, err_r, init=init, exit_file=a["exit_file"],
                   log_path=a["log_path"])


def _create_in_child(a: dict[str, Any], out_w: int, err_w: int, report_w: int) -> None:
    """Runtime.create with the container's stdout and stderr on fds 1 and 2; reports
    {"pid"} or the error on `report_w`."""
    from skiff.runtime.container import Runtime

    try:
        devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        os.dup2(devnull, 0)
        os.dup2(out_w, 1)
        os.dup2(err_w, 2)
        state = Runtime(a["runtime_root"], cgroup_parent=a.get("cgroup_parent")).create(
            a["container_id"], a["bundle"])
        message: dict[str, Any] = {"pid": state.pid}
    except BaseException as e:  # the monitor raises it again, as the job's error
        message = error_message(e)
    os.write(report_w, json.dumps(message).encode())


def become_monitor(container_id: str, out_r: int, err_r: int, *, init: int, exit_file: str,
                   log_path: str) -> None:
    """Copy the container's output into its log until both pipes close, reap its init;
    then exit. Never returns."""
    setproctitle.setproctitle(f"{MONITOR_TITLE} {container_id}")
    moved = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (out_r, err_r)]
    os.dup2(moved[0], log_copier.STDOUT_FD)
    os.dup2(moved[1], log_copier.STDERR_FD)
    # Whatever else this fork inherited (the fork server's and the daemon's files) is not
    # the monitor's; nothing that holds one of them is freed before the exit below.
    os.closerange(log_copier.STDERR_FD + 1, os.sysconf("SC_OPEN_MAX"))
    code = 1
    try:
        log_copier.run(log_path, {log_copier.STDOUT_FD: log_copier.Stream.STDOUT,
                                  log_copier.STDERR_FD: log_copier.Stream.STDERR},
                       init=init, exit_file=exit_file)
        code = 0
    finally:
        os._exit(code)


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
