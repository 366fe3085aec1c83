"""The CRI services the benchmark measures: a `skiff cri serve` of its own, and the peers'
sockets (containerd, CRI-O) named on the command line or found at their usual paths.

skiff's service runs on a private socket, state and images root under the benchmark's
directory, with network mode "none" (a pod network namespace holding only `lo`: what the
runtimes' bundle gets too, so pod-ready has no bridge or veth in it), and the bundle's own
root filesystem imported as its image: every contender runs the same files. It is started in
a session of its own, so a ^C reaches the benchmark, which removes its pods before it
stops the service.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

from skiff.cri.client import listening
from skiff.errors import Unavailable

IMAGE = "skiff.bench/busybox:1"
# The peers' usual sockets: found when present and answering Version.
KNOWN_SOCKETS = {"containerd": "/run/containerd/containerd.sock", "crio": "/var/run/crio/crio.sock"}
START_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class Peer:
    name: str      # the contender is "cri:<name>"
    socket: str


def answers(path: str, timeout: float = 2.0) -> str | None:
    """The runtime's name and version if a CRI service answers Version on `path`, else None."""
    if not listening(path):
        return None
    import grpc
    from cri_api.v1 import api_pb2 as pb
    from cri_api.v1 import api_pb2_grpc

    channel = grpc.insecure_channel(f"unix://{path}")
    try:
        stub = api_pb2_grpc.RuntimeServiceStub(channel)
        version = stub.Version(pb.VersionRequest(), timeout=timeout)
        return f"{version.runtime_name} {version.runtime_version}"
    except grpc.RpcError:
        return None
    finally:
        channel.close()


def found_peers(given: list[Peer]) -> list[Peer]:
    """The sockets given, then the usual ones not given under another name (unchecked: the
    contender probes each and skips, with a note, what does not answer)."""
    paths = {os.path.realpath(p.socket) for p in given}
    names = {p.name for p in given}
    extra = [Peer(name, path) for name, path in KNOWN_SOCKETS.items()
             if name not in names and os.path.realpath(path) not in paths and os.path.exists(path)]
    return given + extra


class SkiffService:
    """`skiff cri serve` under `directory`, serving IMAGE built from `rootfs`."""

    def __init__(self, directory: str, rootfs: str) -> None:
        self.directory = directory
        self.rootfs = rootfs
        self.socket = os.path.join(directory, "skiff.sock")
        self.log_root = os.path.join(directory, "logs")
        self.log = os.path.join(directory, "daemon.log")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        os.makedirs(self.directory, exist_ok=True)
        images_root = os.path.join(self.directory, "images")
        self._import_image(images_root)
        config = os.path.join(self.directory, "cri.toml")
        with open(config, "w") as f:
            f.write(f'socket = "{self.socket}"\nimages_root = "{images_root}"\n'
                    f'state_root = "{self.directory}/state"\nlog_root = "{self.log_root}"\n'
                    '[network]\nmode = "none"\n')
        skiff = os.path.join(os.path.dirname(sys.executable), "skiff")
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen([skiff, "cri", "serve", "--config", config], stdin=subprocess.DEVNULL,
                                            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        while answers(self.socket) is None:
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise Unavailable(f"skiff cri serve did not answer on {self.socket} within {START_TIMEOUT:.0f} s; "
                                  f"its log ends: {self.log_tail()}")
            time.sleep(0.05)

    def _import_image(self, images_root: str) -> None:
        from skiff.images import build, layout
        from skiff.images.service import Images

        source = os.path.join(self.directory, "layout")
        build.build(source, [self.rootfs], tag="1")
        layout.import_layout(Images(images_root).store, source, name=IMAGE)

    def log_tail(self) -> str:
        try:
            with open(self.log, errors="replace") as f:
                return f.read()[-2000:].strip() or "(empty)"
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """SIGTERM and wait (the caller removed its pods first: the service leaves
        containers running when it stops, as containerd does)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None
        _wait_gone(os.path.join(self.directory, "cri.toml"))


def _wait_gone(config_path: str, timeout: float = 5.0) -> None:
    """The service's fork server (a fork of the daemon, same command line) exits on EOF once
    the daemon is gone; wait for it, so that nothing of the run outlives it."""
    deadline = time.monotonic() + timeout
    marker = config_path.encode()
    while time.monotonic() < deadline:
        alive = False
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    alive = alive or marker in f.read()
            except OSError:
                continue
        if not alive:
            return
        time.sleep(0.02)
