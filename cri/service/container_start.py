"""StartContainer: let the created init go on to exec (runtime `start`)."""

from __future__ import annotations

import time
from dataclasses import replace

from cri_api.v1 import api_pb2 as pb

from skiff.cri.service.container_status import lookup, refreshed
from skiff.cri.service.context import ServiceContext
from skiff.cri.store.container import ContainerRecord, ContainerState
from skiff.cri.store.sandbox import SandboxState
from skiff.errors import FailedPrecondition


def start_container(ctx: ServiceContext, request: pb.StartContainerRequest) -> pb.StartContainerResponse:
    record = lookup(ctx, request.container_id)
    with ctx.sandbox_lock(record.sandbox_id):   # not while its pod is being stopped
        _start(ctx, lookup(ctx, record.id))
    return pb.StartContainerResponse()


def _start(ctx: ServiceContext, record: ContainerRecord) -> None:
    if record.state is not ContainerState.CREATED:
        raise FailedPrecondition(f"container {record.id} is {record.state.name.lower()}, not created")
    sandbox = ctx.sandboxes.get(record.sandbox_id)
    if sandbox.state is not SandboxState.READY:
        raise FailedPrecondition(f"container {record.id}: its pod sandbox {sandbox.id} is not ready")
    try:
        ctx.runtime.start(record.runtime_id)
    except FailedPrecondition:
        record = refreshed(ctx, record)  # it died before exec: its exit says how
        raise
    started = time.time_ns()
    def change(r: ContainerRecord) -> ContainerRecord:
        if r.state is ContainerState.CREATED:
            return replace(r, state=ContainerState.RUNNING, started_at=started)
        # it exited so fast that a status call recorded the exit first: it did start
        return replace(r, started_at=started) if r.started_at == 0 else r

    ctx.containers.update(record.id, change)
