"""The CRI service's fork server and its jobs: the container monitor (monitor.py), the pod's
namespaces (pod_namespaces.py), and exec.

It is started first, before the service imports grpc, protobuf and the stores: the fork
server is what the monitor and every worker are forks of, so what only the daemon uses stays
out of their memory (16 MB of RSS instead of 23). What the jobs use is imported here, so no
worker pays for imports.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
from typing import Any

from skiff.cri import monitor, pod_namespaces
from skiff.oci import parse_process
from skiff.runtime import console
from skiff.runtime.forkserver import ForkServer, Worker


def exec_process(worker: Worker) -> None:
    """Job "exec": args runtime_root, container_id, process (an OCI process object), stdin,
    tty (bools); fds: the process's stdin if `stdin` (else it gets /dev/null), stdout and
    stderr; none with `tty`, where the reply carries the pty master instead. Replies {"pid"}
    once the process runs, then {"exit_code"} (128+signal when killed) when it ends."""
    from skiff.runtime.container import Runtime

    a = worker.args
    devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    if not a.get("tty"):
        streams = worker.fds if a.get("stdin") else [devnull, *worker.fds]
        for target, fd in enumerate(streams):
            os.dup2(fd, target)
        for fd in worker.fds:
            os.close(fd)
    runtime = Runtime(a["runtime_root"], cgroup_parent=a.get("cgroup_parent"))
    process = parse_process(a["process"])
    if a.get("tty"):
        pid, master = _exec_with_terminal(runtime, a["container_id"], process)
    else:
        pid, master = runtime.exec(a["container_id"], process, detach=True), None
    for target in (0, 1, 2):  # our copies must not keep the caller's pipes open
        os.dup2(devnull, target)
    worker.reply({"pid": pid}, fds=[master] if master is not None else [])
    if master is not None:
        os.close(master)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    with contextlib.suppress(OSError):
        worker.reply({"exit_code": 128 - code if code < 0 else code})


def _exec_with_terminal(runtime: Any, container_id: str, process: Any) -> tuple[int, int]:
    """The process on a new pty; its master comes back through a console socket of this
    worker's own (runc's protocol: runtime/console.py), for the caller to hold."""
    directory = tempfile.mkdtemp(prefix="skiff-exec-")
    path = os.path.join(directory, "console.sock")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
            listener.bind(path)
            listener.listen(1)
            pid = runtime.exec(container_id, process, console_socket=path, detach=True)
            connection, _ = listener.accept()
            with connection:
                return pid, console.receive_master(connection)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


JOBS = {"monitor": monitor.serve, "exec": exec_process, **pod_namespaces.JOBS}


def start_forkserver() -> ForkServer:
    """The fork server with every job of the service. Call it before any thread starts."""
    import skiff.oci.codec  # noqa: F401
    import skiff.runtime.cgroups.devices  # noqa: F401
    import skiff.runtime.cgroups.stats  # noqa: F401
    import skiff.runtime.cgroups.v1  # noqa: F401
    import skiff.runtime.cgroups.v2  # noqa: F401
    import skiff.runtime.container  # noqa: F401
    import skiff.runtime.hooks  # noqa: F401
    import skiff.runtime.plan  # noqa: F401
    import skiff.runtime.prespawn  # noqa: F401
    import skiff.runtime.rootfs  # noqa: F401
    import skiff.runtime.seccomp  # noqa: F401
    import skiff.runtime.spawn  # noqa: F401
    from skiff.oci import default_spec, parse_spec, spec_to_dict

    parse_spec(spec_to_dict(default_spec()))  # builds the spec codec's converters once, here
    from skiff.runtime.cgroups import CgroupMode, cgroupfs, detect_mode

    if detect_mode() is not CgroupMode.UNIFIED:
        cgroupfs.v1_mounts()  # read once, here, not by each container's create
    return ForkServer.start(JOBS)
