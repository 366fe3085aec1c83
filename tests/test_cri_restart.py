"""`skiff cri serve` killed with SIGKILL and started again: containers keep running, and
are reported with the right state, exit code and logs; what a killed call half-created is
cleaned up on start (cri/recovery.py)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from cri_api.v1 import api_pb2 as pb
from cri_fixture import CriDaemon, service_config

from skiff.cri.logs import parse_line

pytestmark = pytest.mark.requires("busybox")


@pytest.fixture
def daemon(tmp_path: Path, cri_images_root: str) -> Iterator[CriDaemon]:
    d = CriDaemon(service_config(tmp_path, cri_images_root), tmp_path)
    try:
        yield d
    finally:
        d.stop()


def _texts(log_path: str) -> list[bytes]:
    return [parse_line(line).text for line in Path(log_path).read_bytes().splitlines(keepends=True)]


def test_sigkill_and_restart_keeps_pods_and_reports_exits(daemon: CriDaemon) -> None:
    cri = daemon.start()
    pod_id, pod = cri.run_pod("survivor", labels={"io.kubernetes.pod.name": "survivor"})
    steady = cri.start(pod_id, pod, "steady", "sh", "-c", "while :; do echo beat; sleep 0.1; done")
    ending = cri.start(pod_id, pod, "ending", "sh", "-c", "sleep 1; echo done while down; exit 3")
    created_only = str(cri.runtime.CreateContainer(pb.CreateContainerRequest(
        pod_sandbox_id=pod_id, config=pb.ContainerConfig(
            metadata=pb.ContainerMetadata(name="waiting"), image=pb.ImageSpec(image="skiff.test/busybox:1"),
            command=["true"], annotations={"kept": "exactly"}))).container_id)
    info = json.loads(cri.runtime.ContainerStatus(pb.ContainerStatusRequest(
        container_id=steady, verbose=True)).info["info"])
    steady_pid, monitor = info["pid"], info["monitorPid"]
    cri.channel.close()

    daemon.kill()
    time.sleep(1.5)  # `ending` exits, and `steady` logs, while no daemon runs

    cri = daemon.start()
    try:
        status = cri.status(steady)
        assert status.state == pb.CONTAINER_RUNNING
        assert os.path.exists(f"/proc/{steady_pid}")
        ended = cri.status(ending)
        assert (ended.state, ended.exit_code, ended.reason) == (pb.CONTAINER_EXITED, 3, "Error")
        assert b"done while down" in _texts(ended.log_path)
        waiting = cri.status(created_only)
        assert waiting.state == pb.CONTAINER_CREATED and waiting.annotations == {"kept": "exactly"}
        pods = cri.runtime.ListPodSandbox(pb.ListPodSandboxRequest()).items
        assert [(p.id, p.state, dict(p.labels)) for p in pods] == [
            (pod_id, pb.SANDBOX_READY, {"io.kubernetes.pod.name": "survivor"})]
        beats = _texts(status.log_path).count(b"beat")
        time.sleep(0.3)
        assert _texts(status.log_path).count(b"beat") > beats  # the log still flows
        assert cri.exec(steady, "echo", "still here").stdout == b"still here\n"
        # the earlier daemon's monitor still copies steady's log, and answers for it
        os.rename(status.log_path, f"{status.log_path}.1")
        cri.runtime.ReopenContainerLog(pb.ReopenContainerLogRequest(container_id=steady))
        _wait(lambda: b"beat" in Path(status.log_path).read_bytes())
        cri.remove_all()
        _wait(lambda: not os.path.exists(f"/proc/{monitor}"))  # its last container is gone: so is it
    finally:
        cri.channel.close()


def _wait(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_recovery_cleans_up_an_interrupted_run(daemon: CriDaemon, tmp_path: Path) -> None:
    """A RunPodSandbox killed half way leaves an UNKNOWN record, a pod directory and pinned
    namespaces; the next start removes them and frees the name."""
    cri = daemon.start()
    pod_id, pod = cri.run_pod("interrupted")
    cri.channel.close()
    daemon.kill()
    state = Path(daemon.config.state_root)
    record_path = state / "sandboxes" / f"{pod_id}.json"
    record = json.loads(record_path.read_text())
    record["state"] = "UNKNOWN"
    record_path.write_text(json.dumps(record))
    orphan = state / "bundles" / ("ab" * 32)
    orphan.mkdir()
    (orphan / "config.json").write_text("{}")
    # a CreateContainer killed half way: its record says UNKNOWN
    container = json.loads((state / "sandboxes" / f"{pod_id}.json").read_text())  # a valid record to copy from
    half = {"version": 1, "id": "cd" * 32, "sandbox_id": pod_id, "name": "half", "attempt": 0, "image_ref": "",
            "image_id": "", "labels": {}, "annotations": {}, "created_at": container["created_at"],
            "started_at": 0, "finished_at": 0, "exit_code": 0, "reason": "", "message": "", "state": "UNKNOWN",
            "log_path": "", "runtime_id": "cd" * 32, "pid": 0, "monitor_pid": 0, "monitor_start": 0, "stop_signal": "", "config": ""}
    (state / "containers" / f"{'cd' * 32}.json").write_text(json.dumps(half))

    cri = daemon.start()
    try:
        assert not cri.runtime.ListPodSandbox(pb.ListPodSandboxRequest()).items
        assert not orphan.exists()
        assert not os.listdir(state / "pods")
        again, _ = cri.run_pod("interrupted")  # the name is free again
        assert again != pod_id
        cri.remove_all()
    finally:
        cri.channel.close()


def test_a_live_pod_whose_name_reservation_was_lost_reserves_it_again(daemon: CriDaemon) -> None:
    """An unreadable reservation is removed at start; the live pod's record is the truth, so
    a second pod with the same metadata is still refused."""
    cri = daemon.start()
    pod_id, pod = cri.run_pod("keeper")
    cri.channel.close()
    daemon.kill()
    for reservation in (Path(daemon.config.state_root) / "sandboxes" / "_names").iterdir():
        reservation.write_text("[")

    cri = daemon.start()
    try:
        with pytest.raises(grpc.RpcError) as info:
            cri.runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=pod))
        assert info.value.code() is grpc.StatusCode.ALREADY_EXISTS, info.value.details()
        assert [p.id for p in cri.runtime.ListPodSandbox(pb.ListPodSandboxRequest()).items] == [pod_id]
    finally:
        cri.remove_all()
        cri.channel.close()
