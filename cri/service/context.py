"""What every CRI RPC works with: the configuration, the stores, the runtime, the image
service, the network mode and the fork server, and where each pod's and container's files
live under the state root:

    <state_root>/sandboxes/<id>.json     sandbox records (store/sandbox.py)
    <state_root>/containers/<id>.json    container records (store/container.py)
    <state_root>/pods/<id>/              shm/, ns/{net,ipc,uts} (hostname, hosts, resolv.conf
                                         of a pod an older skiff made)
    <state_root>/pod-files/<id>/         hostname, hosts, resolv.conf (pod_files.py)
    <state_root>/bundles/<id>/           config.json, exit (the monitor's exit file)
    <state_root>/monitors/               <pid>.sock of each container monitor, monitor.log
    <state_root>/runtime/                the OCI runtime's own state (runtime/state.py)
    <state_root>/network/                IPAM and the nftables lock (network/)

The streaming server (streaming/) listens from here to `close`, for Exec's URLs.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from skiff.cri import pod_files
from skiff.cri.config import CriConfig
from skiff.cri.events import ContainerEvents
from skiff.cri.monitor_client import Monitors
from skiff.cri.network.driver import PodNetworking, networking_for
from skiff.cri.store.container import ContainerStore
from skiff.cri.streaming.server import StreamServer
from skiff.cri.store.sandbox import SandboxStore
from skiff.images.service import Images
from skiff.runtime import own_mount
from skiff.runtime.container import Runtime
from skiff.runtime.forkserver import ForkServer


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceContext:
    config: CriConfig
    images: Images
    sandboxes: SandboxStore
    containers: ContainerStore
    runtime: Runtime
    forkserver: ForkServer
    monitors: Monitors
    network: PodNetworking
    streaming: StreamServer
    events: ContainerEvents = field(default_factory=ContainerEvents)
    _sandbox_locks: dict[str, threading.Lock] = field(default_factory=dict)
    _locks_lock: threading.Lock = field(default_factory=threading.Lock)

    @contextmanager
    def sandbox_lock(self, sandbox_id: str) -> Iterator[None]:
        """Held by whatever changes a sandbox or what is in it (StopPodSandbox,
        RemovePodSandbox, CreateContainer, StartContainer, RemoveContainer): a Remove must not
        tear a pod down under a container being created or started in it, and no container
        may start in a pod that a Stop has just stopped. StopContainer does not take it: its
        grace period would hold the whole pod."""
        with self._locks_lock:
            lock = self._sandbox_locks.setdefault(sandbox_id, threading.Lock())
        with lock:
            yield

    def forget_sandbox_lock(self, sandbox_id: str) -> None:
        with self._locks_lock:
            self._sandbox_locks.pop(sandbox_id, None)

    @property
    def runtime_root(self) -> str:
        return os.path.join(self.config.state_root, "runtime")

    def pod_dir(self, sandbox_id: str) -> str:
        return os.path.join(self.config.state_root, "pods", sandbox_id)

    def pod_files_dir(self, sandbox_id: str) -> str:
        return os.path.join(self.config.state_root, pod_files.DIRECTORY, sandbox_id)

    @property
    def own_mounts(self) -> tuple[str, ...]:
        """What the containers' binds and overlays copy, each on a mount of its own while the
        service runs (runtime/own_mount.py): the pods' /etc files, the image layers, the
        containers' upper directories."""
        return (os.path.join(self.config.state_root, pod_files.DIRECTORY), self.images.layers, self.images.uppers)

    def close(self) -> None:
        """The service stops: its monitor stays for the containers that are left."""
        try:
            self.streaming.close()
            self.monitors.close()
        finally:
            for path in self.own_mounts:
                own_mount.unmount(path)

    def bundle_dir(self, container_id: str) -> str:
        return os.path.join(self.config.state_root, "bundles", container_id)

    def exit_file(self, container_id: str) -> str:
        return os.path.join(self.bundle_dir(container_id), "exit")


def open_context(config: CriConfig, forkserver: ForkServer, *, images: Images | None = None) -> ServiceContext:
    state = config.state_root
    os.makedirs(state, mode=0o700, exist_ok=True)
    for sub in ("pods", "bundles", "runtime", "network", "monitors"):
        os.makedirs(os.path.join(state, sub), mode=0o700, exist_ok=True)
    monitors = Monitors(forkserver, state_root=state, runtime_root=os.path.join(state, "runtime"),
                        cgroup_parent=config.cgroup_parent)
    monitors.current()  # now, not in the first CreateContainer
    ctx = ServiceContext(
        config=config,
        images=images or Images(config.images_root, registries=config.registries, progress=False),
        sandboxes=SandboxStore(state),
        containers=ContainerStore(state),
        runtime=Runtime(os.path.join(state, "runtime"), cgroup_parent=config.cgroup_parent),
        forkserver=forkserver,
        monitors=monitors,
        network=networking_for(config.network, Path(state) / "network"),
        streaming=StreamServer(forkserver, monitors, config.stream_address),
    )
    ctx.containers.on_change = ctx.events.changed
    try:
        for path in ctx.own_mounts:  # last: ctx.close() undoes them
            own_mount.bind(path)
    except BaseException:
        ctx.close()
        raise
    return ctx
