"""A CRI service for tests: in this process (`cri` fixture) or as a `skiff cri serve`
daemon (`CriDaemon`, for SIGKILL and restart), always over its real unix socket, with a
busybox image built locally in a store the session shares, the built-in bridge on a
name and CIDR of the tests' own, and its state under the test's tmp_path."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from cri_api.v1 import api_pb2 as pb
from cri_api.v1 import api_pb2_grpc

from skiff.cri.client import listening
from skiff.cri.config import CriConfig, NetworkConfig

IMAGE = "skiff.test/busybox:1"
BRIDGE = "skt0"
POD_CIDR = "10.123.0.0/24"


@pytest.fixture(scope="session")
def cri_images_root(tmp_path_factory: pytest.TempPathFactory) -> str:
    from skiff.demo import make_rootfs
    from skiff.images import build, layout
    from skiff.images.service import Images

    base = tmp_path_factory.mktemp("cri-images")
    make_rootfs(str(base / "src"))
    build.build(str(base / "layout"), [str(base / "src")], tag="1")
    images = Images(str(base / "root"))
    layout.import_layout(images.store, str(base / "layout"), name=IMAGE)
    return str(base / "root")


@dataclass
class Cri:
    config: CriConfig
    channel: grpc.Channel
    runtime: api_pb2_grpc.RuntimeServiceStub = field(init=False)
    images: api_pb2_grpc.ImageServiceStub = field(init=False)

    def __post_init__(self) -> None:
        self.runtime = api_pb2_grpc.RuntimeServiceStub(self.channel)
        self.images = api_pb2_grpc.ImageServiceStub(self.channel)

    # -- helpers the tests share ---------------------------------------------------------

    def run_pod(self, name: str, *, labels: dict[str, str] | None = None, host_network: bool = False,
                shared_pid: bool = False, port_mappings: list[pb.PortMapping] | None = None,
                attempt: int = 0) -> tuple[str, pb.PodSandboxConfig]:
        config = pod_config(self.config, name, labels=labels, host_network=host_network, shared_pid=shared_pid,
                            port_mappings=port_mappings, attempt=attempt)
        reply = self.runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=config))
        return str(reply.pod_sandbox_id), config

    def start(self, pod_id: str, pod: pb.PodSandboxConfig, name: str, *args: str,
              mounts: list[pb.Mount] | None = None, memory: int = 0, attempt: int = 0) -> str:
        config = pb.ContainerConfig(metadata=pb.ContainerMetadata(name=name, attempt=attempt),
                                    image=pb.ImageSpec(image=IMAGE), command=list(args),
                                    log_path=f"{name}/{attempt}.log", mounts=mounts or [],
                                    labels={"app": name})
        if memory:
            config.linux.resources.memory_limit_in_bytes = memory
        cid = str(self.runtime.CreateContainer(pb.CreateContainerRequest(
            pod_sandbox_id=pod_id, config=config, sandbox_config=pod)).container_id)
        self.runtime.StartContainer(pb.StartContainerRequest(container_id=cid))
        return cid

    def status(self, cid: str) -> pb.ContainerStatus:
        return self.runtime.ContainerStatus(pb.ContainerStatusRequest(container_id=cid)).status  # type: ignore[no-any-return]

    def pod_status(self, pod_id: str) -> pb.PodSandboxStatus:
        return self.runtime.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id)).status  # type: ignore[no-any-return]

    def exec(self, cid: str, *cmd: str, timeout: int = 10) -> pb.ExecSyncResponse:
        return self.runtime.ExecSync(pb.ExecSyncRequest(container_id=cid, cmd=list(cmd), timeout=timeout))  # type: ignore[no-any-return]

    def wait_exited(self, cid: str, timeout: float = 10.0) -> pb.ContainerStatus:
        deadline = time.monotonic() + timeout
        while True:
            status = self.status(cid)
            if status.state == pb.CONTAINER_EXITED or time.monotonic() > deadline:
                return status
            time.sleep(0.02)

    def remove_all(self) -> None:
        for pod in self.runtime.ListPodSandbox(pb.ListPodSandboxRequest()).items:
            self.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod.id))
            self.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod.id))


def pod_config(config: CriConfig, name: str, *, labels: dict[str, str] | None = None, host_network: bool = False,
               shared_pid: bool = False, port_mappings: list[pb.PortMapping] | None = None,
               attempt: int = 0) -> pb.PodSandboxConfig:
    pod = pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name=name, namespace="default", uid=f"uid-{name}", attempt=attempt),
        hostname=name, log_directory=os.path.join(config.log_root, f"default_{name}_uid-{name}"),
        labels=labels or {}, port_mappings=port_mappings or [])
    options = pod.linux.security_context.namespace_options
    if host_network:
        options.network = pb.NODE
    options.pid = pb.POD if shared_pid else pb.CONTAINER  # kubelet's default: the zero value is POD
    return pod


def service_config(tmp_path: Path, images_root: str, *, mode: str = "bridge") -> CriConfig:
    return CriConfig(socket=str(tmp_path / "run" / "skiff.sock"), images_root=images_root,
                     state_root=str(tmp_path / "state"), log_root=str(tmp_path / "logs"),
                     network=NetworkConfig(mode=mode, pod_cidr=POD_CIDR, bridge=BRIDGE))


def _remove_bridge(config: CriConfig) -> None:
    from skiff.cri.network import BridgeConfig
    from skiff.cri.network.bridge import remove_bridge

    if config.network.mode == "bridge":
        remove_bridge(BridgeConfig(pod_cidr=config.network.pod_cidr, bridge=config.network.bridge,
                                   state_dir=Path(config.state_root) / "network"))


@contextlib.contextmanager
def in_process(config: CriConfig) -> Iterator[Cri]:
    from skiff.cri.jobs import start_forkserver
    from skiff.cri.recovery import recover
    from skiff.cri.server import build_server
    from skiff.cri.service.context import open_context

    forkserver = start_forkserver()
    try:
        ctx = open_context(config, forkserver)
        try:
            recover(ctx)
            server = build_server(config.socket, ctx, workers=8)
            server.start()
            channel = grpc.insecure_channel(f"unix://{config.socket}")
            cri = Cri(config, channel)
            try:
                yield cri
            finally:
                try:
                    cri.remove_all()
                finally:
                    channel.close()
                    server.stop(grace=None).wait()
                    _remove_bridge(config)
        finally:
            ctx.close()
    finally:
        forkserver.stop()


@pytest.fixture
def cri(tmp_path: Path, cri_images_root: str) -> Iterator[Cri]:
    with in_process(service_config(tmp_path, cri_images_root)) as service:
        yield service


class CriDaemon:
    """`skiff cri serve` in a subprocess, with its config file written from `config`."""

    def __init__(self, config: CriConfig, tmp_path: Path) -> None:
        self.config = config
        self.path = tmp_path / "cri.toml"
        self.path.write_text("\n".join([
            f'socket = "{config.socket}"', f'images_root = "{config.images_root}"',
            f'state_root = "{config.state_root}"', f'log_root = "{config.log_root}"', "[network]",
            f'mode = "{config.network.mode}"', f'pod_cidr = "{config.network.pod_cidr}"',
            f'bridge = "{config.network.bridge}"']) + "\n")
        self.process: subprocess.Popen[bytes] | None = None
        self.log = tmp_path / "daemon.log"

    def start(self) -> Cri:
        skiff = os.path.join(os.path.dirname(sys.executable), "skiff")
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen([skiff, "cri", "serve", "--config", str(self.path)],
                                            stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while not listening(self.config.socket):  # a killed daemon's socket file stays behind
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"skiff cri serve did not start:\n{self.log.read_text()}")
            time.sleep(0.02)
        return Cri(self.config, grpc.insecure_channel(f"unix://{self.config.socket}"))

    def kill(self) -> None:
        """SIGKILL, as a crash: the fork server follows on its own (EOF)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        _wait_forkserver_gone(str(self.path))

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=20)
        _remove_bridge(self.config)


def _wait_forkserver_gone(config_path: str, timeout: float = 5.0) -> None:
    """The fork server (a fork of the daemon, same command line) exits on EOF once the
    daemon is gone; wait for it, so the next daemon and the leak check see it gone."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = False
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with contextlib.suppress(OSError):
                    with open(f"/proc/{entry}/cmdline", "rb") as f:
                        cmdline = f.read()
                    if b"serve" in cmdline and config_path.encode() in cmdline:
                        alive = True
        if not alive:
            return
        time.sleep(0.02)
