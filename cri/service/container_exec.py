"""ExecSync: run a command in a running container and return its output and exit code,
as kubelet's exec probes use it. The process runs through a fork-server worker (the
runtime forks); its output comes back over pipes, each capped, read until EOF or timeout.
Past the timeout the process is killed and the call fails with DEADLINE_EXCEEDED, which
kubelet reports as a probe timeout."""

from __future__ import annotations

import json
import os
import signal
import socket
import time

from cri_api.v1 import api_pb2 as pb

from skiff.cri.exec_output import Ended, read_until_exit
from skiff.cri.service.container_status import lookup_running
from skiff.cri.service.context import ServiceContext
from skiff.cri.store.container import ContainerRecord
from skiff.errors import DeadlineExceeded, FailedPrecondition, InvalidArgument

MAX_OUTPUT = 16 << 20  # bytes kept per stream (containerd's maxExecSyncSize is 16 MiB too)


def exec_job(ctx: ServiceContext, record: ContainerRecord, cmd: list[str], *, stdin: bool = False,
             tty: bool = False) -> dict[str, object]:
    """The fork server's "exec" job (cri/jobs.py) for `cmd`, with the container's own process
    settings (user, env, cwd, capabilities...). On a terminal (`tty`), the pty is the
    process's stdin; else `stdin` says whether it gets a pipe for it (/dev/null if not)."""
    with open(os.path.join(ctx.bundle_dir(record.id), "config.json")) as f:
        process: dict[str, object] = dict(json.load(f)["process"])
    process["args"] = cmd
    process["terminal"] = tty
    process.pop("consoleSize", None)
    return {"runtime_root": ctx.runtime_root, "cgroup_parent": ctx.config.cgroup_parent,
            "container_id": record.runtime_id, "process": process, "stdin": stdin and not tty, "tty": tty}


def exec_streaming(ctx: ServiceContext, request: pb.ExecRequest) -> pb.ExecResponse:
    """Exec: the URL on the streaming server where the command runs once a client connects
    (streaming/), with a terminal if `tty`."""
    from skiff.cri.streaming.tokens import ExecRequest

    if not request.cmd:
        raise InvalidArgument("cmd: must not be empty")
    if not (request.stdin or request.stdout or request.stderr):
        raise InvalidArgument("one of stdin, stdout or stderr must be true")
    record = lookup_running(ctx, request.container_id)
    job = exec_job(ctx, record, list(request.cmd), stdin=request.stdin, tty=request.tty)
    return pb.ExecResponse(url=ctx.streaming.exec_url(ExecRequest(
        container_id=record.id, job_args=job, stdin=request.stdin, stdout=request.stdout, stderr=request.stderr,
        tty=request.tty)))


def attach(ctx: ServiceContext, request: pb.AttachRequest) -> pb.AttachResponse:
    """Attach: the URL on the streaming server of a running container's own streams (its
    stdin if it was created with stdin; its output as it is logged). Its terminal is the
    container's: a tty in the request does not make one (containerd's behaviour)."""
    from skiff.cri.streaming.tokens import AttachRequest

    record = lookup_running(ctx, request.container_id)
    config = pb.ContainerConfig.FromString(record.config)
    if request.stdin and not config.stdin:
        raise InvalidArgument(f"stdin: container {record.id} was not created with stdin")
    stderr = request.stderr and not config.tty
    if not (request.stdin or request.stdout or stderr):
        raise InvalidArgument("one of stdin, stdout or stderr must be true" + (
            f" (stderr: container {record.id} runs on a terminal: its output is stdout)" if request.stderr else ""))
    return pb.AttachResponse(url=ctx.streaming.attach_url(AttachRequest(
        container_id=record.id, runtime_id=record.runtime_id, monitor_pid=record.monitor_pid,
        log_path=record.log_path or os.devnull, exit_file=ctx.exit_file(record.id), stdin=request.stdin,
        stdout=request.stdout, stderr=stderr, stdin_once=config.stdin_once,
        tty=config.tty)))


def port_forward(ctx: ServiceContext, request: pb.PortForwardRequest) -> pb.PortForwardResponse:
    """PortForward: the URL on the streaming server that connects to the pod's ports."""
    from skiff.cri.service.sandbox_run import require
    from skiff.cri.store.sandbox import SandboxState
    from skiff.cri.streaming.tokens import PortForwardRequest

    require(request.pod_sandbox_id, "pod_sandbox_id")
    record = ctx.sandboxes.get(ctx.sandboxes.resolve(request.pod_sandbox_id))
    if record.state is not SandboxState.READY:
        raise FailedPrecondition(f"pod sandbox {record.id} is not ready")
    bad = [p for p in request.port if not 0 < p < 65536]
    if bad:
        raise InvalidArgument(f"port: {bad}: ports are 1 to 65535")
    config = pb.PodSandboxConfig.FromString(record.config)
    host_network = config.linux.security_context.namespace_options.network == pb.NODE
    netns = None if host_network else os.path.join(ctx.pod_dir(record.id), "ns", "net")
    return pb.PortForwardResponse(url=ctx.streaming.port_forward_url(PortForwardRequest(
        sandbox_id=record.id, netns=netns, ports=tuple(request.port))))


def exec_sync(ctx: ServiceContext, request: pb.ExecSyncRequest) -> pb.ExecSyncResponse:
    if not request.cmd:
        raise InvalidArgument("cmd: must not be empty")
    record = lookup_running(ctx, request.container_id)
    job = exec_job(ctx, record, list(request.cmd))
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    try:
        worker = ctx.forkserver.call("exec", job, fds=[out_w, err_w])
    finally:
        os.close(out_w)
        os.close(err_w)
    deadline = time.monotonic() + request.timeout if request.timeout > 0 else None
    with worker:
        try:
            reply, _ = worker.receive(None if deadline is None else max(deadline - time.monotonic(), 0.01))
            pid = int(reply["pid"])
            stdout, stderr, timed_out = _read(out_r, err_r, deadline, worker.sock)
        finally:
            os.close(out_r)
            os.close(err_r)
        if timed_out:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            raise DeadlineExceeded(f"exec in container {record.id}: command {list(request.cmd)!r} "
                                   f"timed out after {request.timeout}s")
        reply, _ = worker.receive(None if deadline is None else max(deadline - time.monotonic(), 1.0))
    return pb.ExecSyncResponse(stdout=stdout, stderr=stderr, exit_code=int(reply["exit_code"]))


def _read(out_fd: int, err_fd: int, deadline: float | None, exit_reply: socket.socket) -> tuple[bytes, bytes, bool]:
    """Both pipes until EOF, up to MAX_OUTPUT each; True as third when the deadline passed
    before the process ended."""
    chunks: dict[int, bytearray] = {out_fd: bytearray(), err_fd: bytearray()}

    def keep(fd: int, data: bytes) -> None:
        chunks[fd] += data[:MAX_OUTPUT - len(chunks[fd])]
    ended = read_until_exit(chunks, exit_reply, keep, deadline=deadline)
    return bytes(chunks[out_fd]), bytes(chunks[err_fd]), ended is Ended.DEADLINE
