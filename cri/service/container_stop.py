"""StopContainer (containerd `container_stop.go`): the image's stop signal (SIGTERM unless
its STOPSIGNAL says otherwise), then SIGKILL to every process of the container once
`timeout` seconds pass. Stopping a stopped container is fine: kubelet retries."""

from __future__ import annotations

import contextlib
import signal
import time

from cri_api.v1 import api_pb2 as pb

from skiff.cri.service.container_status import lookup, refreshed
from skiff.cri.service.context import ServiceContext
from skiff.cri.store.container import ContainerRecord, ContainerState
from skiff.errors import FailedPrecondition, NotFound, SkiffError

KILL_WAIT = 10.0  # seconds for SIGKILLed processes to be gone and the exit recorded


def stop_container(ctx: ServiceContext, request: pb.StopContainerRequest) -> pb.StopContainerResponse:
    stop(ctx, lookup(ctx, request.container_id), timeout=max(request.timeout, 0))
    return pb.StopContainerResponse()


def stop(ctx: ServiceContext, record: ContainerRecord, *, timeout: float) -> ContainerRecord:
    if record.state not in (ContainerState.CREATED, ContainerState.RUNNING):
        return record
    if timeout > 0 and record.state is ContainerState.RUNNING:
        if _signal(ctx, record, stop_signal(record.stop_signal), all=False):
            record = _wait(ctx, record, timeout)
            if record.state is ContainerState.EXITED:
                return record
    _signal(ctx, record, signal.SIGKILL, all=True)
    record = _wait(ctx, record, KILL_WAIT)
    if record.state is not ContainerState.EXITED:
        raise FailedPrecondition(f"container {record.id}: still running {KILL_WAIT:g}s after SIGKILL")
    return record


def stop_signal(name: str) -> int:
    """The image's STOPSIGNAL as docker and containerd read it ("SIGQUIT", "QUIT", "3");
    SIGTERM when there is none or it is not a signal."""
    text = name.strip().upper()
    try:
        return int(signal.Signals(int(text))) if text.isdigit() else int(signal.Signals[
            text if text.startswith("SIG") else "SIG" + text])
    except (KeyError, ValueError):
        return signal.SIGTERM


def _signal(ctx: ServiceContext, record: ContainerRecord, sig: int, *, all: bool) -> bool:
    """False when there is nothing left to signal."""
    try:
        ctx.runtime.kill(record.runtime_id, sig, all=all)
        return True
    except (NotFound, FailedPrecondition):  # gone or already stopped: the exit file tells
        return False
    except SkiffError:
        with contextlib.suppress(ProcessLookupError):
            ctx.runtime.kill(record.runtime_id, sig, all=False)
        return True


def _wait(ctx: ServiceContext, record: ContainerRecord, timeout: float) -> ContainerRecord:
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        record = refreshed(ctx, ctx.containers.get(record.id))
        if record.state is ContainerState.EXITED or time.monotonic() >= deadline:
            return record
        time.sleep(delay)
        delay = min(delay * 2, 0.05)
