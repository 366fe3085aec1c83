"""What `skiff cri serve` does before it answers: bring the records and the kernel back in
line after the daemon died, however it died (containerd `internal/cri/server/restart.go`).

Assumptions, each a way a previous daemon can have stopped:
- Containers and monitors outlive the daemon (cri/monitor.py), so a CREATED or RUNNING
  record is still right unless the monitor wrote an exit file meanwhile; `refreshed`
  reads it on every call anyway.
- A record in UNKNOWN is a Run/Create that was interrupted, or whose undo failed: its
  resources are removed now, with the same teardown Remove uses, and the record goes. If that
  fails again the record stays, reported NOTREADY / UNKNOWN, for a later Remove.
- Files without a record (a bundle, a pod directory with pinned namespaces) belong to a call
  that died before its record was written, or after it was deleted: removed.
- A reserved name whose id has no record was reserved by a call that died right after:
  released, so the next attempt with that name is not refused (containerd/cri#1014). A live
  record whose reservation was lost (an unreadable file, which `load` removes) reserves its
  name again.
Records the store cannot read are reported and left alone.
"""

from __future__ import annotations

import logging
import os

from skiff.cri import pod_files, pod_namespaces
from skiff.cri.service.container_remove import remove_container_files
from skiff.cri.service.context import ServiceContext
from skiff.cri.service.sandbox_stop import teardown_sandbox
from skiff.cri.store.container import ContainerRecord, ContainerState, container_name
from skiff.cri.store.sandbox import SandboxRecord, SandboxState, sandbox_name
from skiff.errors import SkiffError

log = logging.getLogger("skiff.cri")


def recover(ctx: ServiceContext) -> list[str]:
    """Returns one line per problem found (also logged)."""
    problems: list[str] = []
    containers = ctx.containers.load()
    sandboxes = ctx.sandboxes.load()
    problems += containers.problems + sandboxes.problems
    for container in containers.records:
        if container.state is ContainerState.UNKNOWN:
            problems += _attempt(f"container {container.id}: finishing an interrupted create or remove",
                                 _remove_container, ctx, container)
    for sandbox in sandboxes.records:
        if sandbox.state is SandboxState.UNKNOWN:
            problems += _attempt(f"pod sandbox {sandbox.id}: finishing an interrupted run or remove",
                                 teardown_sandbox, ctx, sandbox, remove=True)
    live_containers = ctx.containers.list()
    known_containers = {c.id for c in live_containers}
    bundles = os.path.join(ctx.config.state_root, "bundles")
    for name in sorted(os.listdir(bundles)):
        if name not in known_containers:
            problems += _attempt(f"container {name}: removing files without a record",
                                 remove_container_files, ctx, ContainerRecord(id=name, sandbox_id="", name="",
                                                                               runtime_id=name))
    live_sandboxes = {s.id: s for s in ctx.sandboxes.list()}
    known_sandboxes = set(live_sandboxes)
    pods = os.path.join(ctx.config.state_root, "pods")
    files = os.path.join(ctx.config.state_root, pod_files.DIRECTORY)
    for name in sorted(set(os.listdir(pods)) | set(os.listdir(files))):
        if name not in known_sandboxes:
            problems += _attempt(f"pod sandbox {name}: removing files without a record",
                                 _remove_pod_dir, ctx, name)
    for store, known in ((ctx.containers, known_containers), (ctx.sandboxes, known_sandboxes)):
        for reserved, owner in store.reserved_names().items():
            if owner not in known:
                store.release_name(reserved)
    problems += _reserve_live_names(ctx, live_sandboxes, live_containers)
    for line in problems:
        log.warning("recovery: %s", line)
    return problems


def _reserve_live_names(ctx: ServiceContext, pods: dict[str, SandboxRecord],
                        containers: list[ContainerRecord]) -> list[str]:
    problems: list[str] = []
    for s in pods.values():
        problems += _attempt(f"pod sandbox {s.id}: reserving its name again", ctx.sandboxes.reserve_name,
                             sandbox_name(name=s.name, namespace=s.namespace, uid=s.uid, attempt=s.attempt), s.id)
    for c in containers:
        if (pod := pods.get(c.sandbox_id)) is not None:
            problems += _attempt(f"container {c.id}: reserving its name again", ctx.containers.reserve_name,
                                 container_name(name=c.name, attempt=c.attempt, sandbox_name=pod.name,
                                                sandbox_namespace=pod.namespace, sandbox_uid=pod.uid), c.id)
    return problems


def _remove_container(ctx: ServiceContext, record: ContainerRecord) -> None:
    remove_container_files(ctx, record)
    ctx.containers.delete(record.id)


def _remove_pod_dir(ctx: ServiceContext, sandbox_id: str) -> None:
    import shutil

    from skiff.runtime.own_mount import unmount

    pod_dir = ctx.pod_dir(sandbox_id)
    if os.path.isdir(pod_dir):
        pod_namespaces.unpin(os.path.join(pod_dir, "ns"))
        unmount(os.path.join(pod_dir, "shm"))
        shutil.rmtree(pod_dir)
    if os.path.isdir(ctx.pod_files_dir(sandbox_id)):
        shutil.rmtree(ctx.pod_files_dir(sandbox_id))


def _attempt(what: str, step: object, *args: object, **kwargs: object) -> list[str]:
    assert callable(step)
    try:
        step(*args, **kwargs)
    except (SkiffError, OSError) as e:
        return [f"{what}: {e}"]
    return []
