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

from skiff.cri import monitor, pod_namespaces
from skiff.oci import parse_process
from skiff.runtime.forkserver import ForkServer, Worker


def exec_process(worker: Worker) -> None:
    """Job "exec": args runtime_root, container_id, process (an OCI process object), stdin
    (bool); fds: the process's stdin if `stdin` (else it gets /dev/null), stdout and stderr.
    Replies {"pid"} once the process runs, then {"exit_code"} (128+signal when killed) when
    it ends."""
    from skiff.runtime.container import Runtime

    a = worker.args
    devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    streams = worker.fds if a.get("stdin") else [devnull, *worker.fds]
    for target, fd in enumerate(streams):
        os.dup2(fd, target)
    for fd in worker.fds:
        os.close(fd)
    runtime = Runtime(a["runtime_root"], cgroup_parent=a.get("cgroup_parent"))
    pid = runtime.exec(a["container_id"], parse_process(a["process"]), detach=True)
    for target in (0, 1, 2):  # our copies must not keep the caller's pipes open
        os.dup2(devnull, target)
    worker.reply({"pid": pid})
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    with contextlib.suppress(OSError):
        worker.reply({"exit_code": 128 - code if code < 0 else code})


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
