"""`skiff cri pods|ps|inspect|logs|exec|...` (cri/client.py) against a stub CRI server on a
real unix socket: canned pods, containers and images, and a record of each request, so
that what the client sends (filters, resolved ids, configs) is checked as well as what it
prints."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from cri_api.v1 import api_pb2 as pb
from cri_api.v1 import api_pb2_grpc

from skiff.cli import main
from skiff.cri.client import human_duration, human_size
from skiff.cri.logs import Stream, format_line, format_timestamp

SKIFF = os.path.join(os.path.dirname(sys.executable), "skiff")
NOW = time.time_ns()
SECOND = 1_000_000_000
POD_WEB = "aaaa1111" + "0" * 56
POD_DB = "aaaa2222" + "0" * 56
NGINX = "cccc1111" + "1" * 56
SIDECAR = "cccc2222" + "2" * 56
POSTGRES = "dddd3333" + "3" * 56
IMAGE_ID = "sha256:" + "e" * 64


class FakeCri(api_pb2_grpc.RuntimeServiceServicer, api_pb2_grpc.ImageServiceServicer):
    """Answers from canned data and filters as a service would; `requests` records each call."""

    def __init__(self, tmp: Path) -> None:
        self.socket = str(tmp / "cri.sock")
        self.log_path = str(tmp / "nginx.log")
        self.requests: list[tuple[str, Any]] = []
        self.pods = [
            pb.PodSandbox(id=POD_WEB, metadata=pb.PodSandboxMetadata(name="web", namespace="default", uid="u1"),
                          state=pb.SANDBOX_READY, created_at=NOW - 120 * SECOND, labels={"app": "web"}),
            pb.PodSandbox(id=POD_DB, metadata=pb.PodSandboxMetadata(name="db", namespace="kube-system", attempt=1),
                          state=pb.SANDBOX_NOTREADY, created_at=NOW - 3 * 3600 * SECOND, labels={"app": "db"}),
        ]
        self.containers = [
            self._container(NGINX, POD_WEB, "nginx", "docker.io/library/nginx:1", pb.CONTAINER_RUNNING, 60),
            self._container(SIDECAR, POD_WEB, "sidecar", IMAGE_ID, pb.CONTAINER_EXITED, 2 * 86400),
            self._container(POSTGRES, POD_DB, "postgres", "docker.io/library/postgres:16", pb.CONTAINER_RUNNING, 3600),
        ]

    @staticmethod
    def _container(cid: str, pod: str, name: str, image: str, state: pb.ContainerState.ValueType,
                   age: int) -> pb.Container:
        return pb.Container(id=cid, pod_sandbox_id=pod, metadata=pb.ContainerMetadata(name=name),
                            image=pb.ImageSpec(image=image), state=state, created_at=NOW - age * SECOND,
                            labels={"name": name})

    def _record(self, method: str, request: Any) -> None:
        self.requests.append((method, request))

    def sent(self, method: str) -> list[Any]:
        return [r for m, r in self.requests if m == method]

    def _find(self, cid: str, context: grpc.ServicerContext) -> pb.Container:
        for c in self.containers:
            if c.id == cid:
                return c
        context.abort(grpc.StatusCode.NOT_FOUND, f"container {cid} not found")
        raise AssertionError("abort raises")

    def Version(self, request: pb.VersionRequest, context: grpc.ServicerContext) -> pb.VersionResponse:
        return pb.VersionResponse(version="0.1.0", runtime_name="fake", runtime_version="9.9", runtime_api_version="v1")

    def Status(self, request: pb.StatusRequest, context: grpc.ServicerContext) -> pb.StatusResponse:
        self._record("Status", request)
        status = pb.RuntimeStatus(conditions=[pb.RuntimeCondition(type="RuntimeReady", status=True)])
        return pb.StatusResponse(status=status, info={"config": '{"socket": "x"}', "note": '"hello"'})

    def ListPodSandbox(self, request: pb.ListPodSandboxRequest,
                       context: grpc.ServicerContext) -> pb.ListPodSandboxResponse:
        self._record("ListPodSandbox", request)
        f = request.filter
        items = [p for p in self.pods if (not f.HasField("state") or p.state == f.state.state)
                 and all(p.labels.get(k) == v for k, v in f.label_selector.items())]
        return pb.ListPodSandboxResponse(items=items)

    def PodSandboxStatus(self, request: pb.PodSandboxStatusRequest,
                         context: grpc.ServicerContext) -> pb.PodSandboxStatusResponse:
        self._record("PodSandboxStatus", request)
        pod = next(p for p in self.pods if p.id == request.pod_sandbox_id)
        return pb.PodSandboxStatusResponse(status=pb.PodSandboxStatus(id=pod.id, metadata=pod.metadata, state=pod.state),
                                           info={"info": '{"pid": 7}'})

    def ListContainers(self, request: pb.ListContainersRequest,
                       context: grpc.ServicerContext) -> pb.ListContainersResponse:
        self._record("ListContainers", request)
        f = request.filter
        found = [c for c in self.containers if (not f.HasField("state") or c.state == f.state.state)
                 and f.pod_sandbox_id in ("", c.pod_sandbox_id)
                 and all(c.labels.get(k) == v for k, v in f.label_selector.items())]
        return pb.ListContainersResponse(containers=found)

    def ContainerStatus(self, request: pb.ContainerStatusRequest,
                        context: grpc.ServicerContext) -> pb.ContainerStatusResponse:
        self._record("ContainerStatus", request)
        c = self._find(request.container_id, context)
        status = pb.ContainerStatus(id=c.id, metadata=c.metadata, state=c.state, created_at=c.created_at,
                                    image=c.image, log_path=self.log_path)
        return pb.ContainerStatusResponse(status=status, info={"info": '{"pid": 42}'} if request.verbose else {})

    def ExecSync(self, request: pb.ExecSyncRequest, context: grpc.ServicerContext) -> pb.ExecSyncResponse:
        self._record("ExecSync", request)
        return pb.ExecSyncResponse(stdout=b"out\n", stderr=b"err\n", exit_code=3)

    def RunPodSandbox(self, request: pb.RunPodSandboxRequest, context: grpc.ServicerContext) -> pb.RunPodSandboxResponse:
        self._record("RunPodSandbox", request)
        return pb.RunPodSandboxResponse(pod_sandbox_id="f" * 64)

    def CreateContainer(self, request: pb.CreateContainerRequest,
                        context: grpc.ServicerContext) -> pb.CreateContainerResponse:
        self._record("CreateContainer", request)
        return pb.CreateContainerResponse(container_id="9" * 64)

    def StartContainer(self, request: pb.StartContainerRequest,
                       context: grpc.ServicerContext) -> pb.StartContainerResponse:
        context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"container {request.container_id}: running, not created")
        raise AssertionError("abort raises")

    def StopContainer(self, request: pb.StopContainerRequest, context: grpc.ServicerContext) -> pb.StopContainerResponse:
        self._record("StopContainer", request)
        return pb.StopContainerResponse()

    def RemovePodSandbox(self, request: pb.RemovePodSandboxRequest,
                         context: grpc.ServicerContext) -> pb.RemovePodSandboxResponse:
        context.abort(grpc.StatusCode.NOT_FOUND, f"pod sandbox {request.pod_sandbox_id} not found")
        raise AssertionError("abort raises")

    def ListImages(self, request: pb.ListImagesRequest, context: grpc.ServicerContext) -> pb.ListImagesResponse:
        return pb.ListImagesResponse(images=[
            pb.Image(id=IMAGE_ID, repo_tags=["docker.io/library/nginx:1", "localhost:5000/nginx:latest"], size=2_220_000),
            pb.Image(id="sha256:" + "d" * 64, repo_digests=["docker.io/library/busybox@sha256:" + "a" * 64], size=999)])

    def ImageStatus(self, request: pb.ImageStatusRequest, context: grpc.ServicerContext) -> pb.ImageStatusResponse:
        if request.image.image != "nginx:1":
            return pb.ImageStatusResponse()
        return pb.ImageStatusResponse(image=pb.Image(id=IMAGE_ID, repo_tags=["docker.io/library/nginx:1"]),
                                      info={"info": '{"chainID": "x"}'})


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeCri]:
    fake = FakeCri(tmp_path)
    workers = futures.ThreadPoolExecutor(max_workers=2)
    server = grpc.server(workers)
    api_pb2_grpc.add_RuntimeServiceServicer_to_server(fake, server)
    api_pb2_grpc.add_ImageServiceServicer_to_server(fake, server)
    server.add_insecure_port(f"unix://{fake.socket}")
    server.start()
    try:
        yield fake
    finally:
        server.stop(grace=None).wait()
        workers.shutdown(wait=True)


def cri(fake: FakeCri, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["cri", args[0], "--socket", fake.socket, *args[1:]])
    out, err = capsys.readouterr()
    return code, out, err


def columns(line: str) -> list[str]:
    return re.split(r"  +", line)


# -- listing ----------------------------------------------------------------------------------

def test_pods_table_newest_first_and_aligned(fake: FakeCri, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cri(fake, capsys, "pods")
    header, web, db = out.splitlines()
    assert code == 0
    assert columns(header) == ["POD ID", "CREATED", "STATE", "NAME", "NAMESPACE", "ATTEMPT"]
    assert columns(web) == [POD_WEB[:13], "2 minutes ago", "Ready", "web", "default", "0"]
    assert columns(db) == [POD_DB[:13], "3 hours ago", "NotReady", "db", "kube-system", "1"]
    assert {header.index("NAME"), web.index("web "), db.index("db ")} == {header.index("NAME")}


def test_pods_filters(fake: FakeCri, capsys: pytest.CaptureFixture[str]) -> None:
    assert cri(fake, capsys, "pods", "-q", "--label", "app=web", "--state", "ready")[1] == POD_WEB + "\n"
    sent = fake.sent("ListPodSandbox")[-1].filter
    assert dict(sent.label_selector) == {"app": "web"} and sent.state.state == pb.SANDBOX_READY
    assert cri(fake, capsys, "pods", "-q", "--namespace", "^kube-")[1] == POD_DB + "\n"
    assert cri(fake, capsys, "pods", "-q", "--name", "we")[1] == POD_WEB + "\n"
    assert cri(fake, capsys, "pods", "-q", "--id", "aaaa2")[1] == POD_DB + "\n"
    assert cri(fake, capsys, "pods", "-q", "--id", "nothing") == (0, "", "")
    assert fake.sent("ListPodSandbox")[-1].filter.id == ""  # matched here: a service may want whole ids
    code, _, err = cri(fake, capsys, "pods", "--label", "app")
    assert code == 1 and "skiff cri pods: --label 'app': want key=value" in err


def test_ps_running_by_default_all_with_a(fake: FakeCri, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cri(fake, capsys, "ps")
    assert code == 0 and fake.sent("ListContainers")[-1].filter.state.state == pb.CONTAINER_RUNNING
    header, *rows = out.splitlines()
    assert columns(header) == ["CONTAINER", "IMAGE", "CREATED", "STATE", "NAME", "ATTEMPT", "POD ID"]
    assert [columns(r) for r in rows] == [
        [NGINX[:13], "docker.io/library/nginx:1", "About a minute ago", "Running", "nginx", "0", POD_WEB[:13]],
        [POSTGRES[:13], "docker.io/library/postgres:16", "About an hour ago", "Running", "postgres", "0", POD_DB[:13]],
    ]
    out = cri(fake, capsys, "ps", "-a")[1]
    assert not fake.sent("ListContainers")[-1].filter.HasField("state")
    assert columns(out.splitlines()[3])[:4] == [SIDECAR[:13], "e" * 13, "2 days ago", "Exited"]


def test_ps_filters_and_pod_prefix(fake: FakeCri, capsys: pytest.CaptureFixture[str]) -> None:
    assert cri(fake, capsys, "ps", "-a", "-q", "--pod", "aaaa1")[1] == f"{NGINX}\n{SIDECAR}\n"
    assert fake.sent("ListContainers")[-1].filter.pod_sandbox_id == POD_WEB
    assert cri(fake, capsys, "ps", "-q", "--label", "name=postgres")[1] == POSTGRES + "\n"
    assert dict(fake.sent("ListContainers")[-1].filter.label_selector) == {"name": "postgres"}
    assert cri(fake, capsys, "ps", "-q", "--state", "exited", "--name", "car$")[1] == SIDECAR + "\n"
    assert fake.sent("ListContainers")[-1].filter.state.state == pb.CONTAINER_EXITED


def test_images_version_info(fake: FakeCri, capsys: pytest.CaptureFixture[str]) -> None:
    header, *rows = cri(fake, capsys, "images")[1].splitlines()
    assert columns(header) == ["IMAGE", "TAG", "IMAGE ID", "SIZE"]
    assert [columns(r) for r in rows] == [["docker.io/library/nginx", "1", "e" * 13, "2.22MB"],
                                          ["localhost:5000/nginx", "latest", "e" * 13, "2.22MB"],
                                          ["docker.io/library/busybox", "<none>", "d" * 13, "999B"]]
    assert cri(fake, capsys, "version")[1].splitlines()[1] == "RuntimeName:  fake"
    info = json.loads(cri(fake, capsys, "info")[1])
    assert fake.sent("Status")[-1].verbose
    assert info["status"]["conditions"][0] == {"type": "RuntimeReady", "status": True, "reason": "", "message": ""}
    assert (info["config"], info["note"]) == ({"socket": "x"}, "hello")


# -- ids, inspect, errors ---------------------------------------------------------------------

def test_inspect_resolves_a_prefix(fake: FakeCri, capsys: pytest.CaptureFixture[str]) -> None:
    document = json.loads(cri(fake, capsys, "inspect", "cccc1")[1])
    request = fake.sent("ContainerStatus")[-1]
    assert (request.container_id, request.verbose) == (NGINX, True)
    assert document["status"]["state"] == "CONTAINER_RUNNING" and document["info"] == {"pid": 42}
    assert document["status"]["createdAt"].endswith("Z") and document["status"]["startedAt"] == "0"
    assert json.loads(cri(fake, capsys, "inspectp", "aaaa2")[1])["status"]["metadata"]["name"] == "db"
    assert fake.sent("PodSandboxStatus")[-1].pod_sandbox_id == POD_DB


def test_ambiguous_and_unknown_prefixes(fake: FakeCri, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cri(fake, capsys, "inspect", "cccc")
    assert code == 1
    assert err == (f"skiff cri inspect: container id prefix 'cccc' is ambiguous: 2 match "
                   f"({NGINX[:13]}, {SIDECAR[:13]})\n")
    code, _, err = cri(fake, capsys, "inspectp", "zz")
    assert (code, err) == (1, "skiff cri inspectp: no pod has an id starting with 'zz'\n")
    assert fake.sent("ContainerStatus") == []


def test_grpc_errors_name_the_code(fake: FakeCri, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cri(fake, capsys, "rmp", "aaaa2")
    assert (code, out) == (1, "")
    assert err == f"skiff cri rmp: NOT_FOUND: pod sandbox {POD_DB} not found\n"
    code, _, err = cri(fake, capsys, "start", "cccc1")
    assert (code, err) == (1, f"skiff cri start: FAILED_PRECONDITION: container {NGINX}: running, not created\n")
    code, _, err = cri(fake, capsys, "inspecti", "nothing:here")
    assert (code, err) == (1, "skiff cri inspecti: image 'nothing:here' not found\n")
    assert json.loads(cri(fake, capsys, "inspecti", "nginx:1")[1])["info"] == {"chainID": "x"}


def test_missing_socket(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKIFF_CRI_SOCKET", str(tmp_path / "none.sock"))
    assert main(["cri", "ps"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"skiff cri ps: {tmp_path}/none.sock: no CRI socket there")
    assert "`skiff cri serve`" in err


def test_subprocess_and_lazy_grpc(fake: FakeCri) -> None:
    done = subprocess.run([SKIFF, "cri", "pods", "-q", "--socket", f"unix://{fake.socket}"],
                          capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (0, f"{POD_WEB}\n{POD_DB}\n", "")
    probe = ("import sys; from skiff.cli import parser; parser().parse_args(['cri', 'ps', '-a']); "
             "print('grpc' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True).stdout == "False\n"


# -- exec, config files, actions --------------------------------------------------------------

def test_exec_exit_code_and_streams(fake: FakeCri, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cri(fake, capsys, "exec", "--timeout", "5", "dddd", "sh", "-c", "x")
    assert (code, out, err) == (3, "out\n", "err\n")
    request = fake.sent("ExecSync")[-1]
    assert (request.container_id, list(request.cmd), request.timeout) == (POSTGRES, ["sh", "-c", "x"], 5)


def test_runp_create_stop(fake: FakeCri, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    pod = tmp_path / "pod.json"
    pod.write_text(json.dumps({"metadata": {"name": "p", "namespace": "default"}, "logDirectory": "/var/log/pods/p",
                               "linux": {"security_context": {"namespace_options": {"network": "POD"}}}}))
    container = tmp_path / "container.json"
    container.write_text(json.dumps({"metadata": {"name": "c"}, "image": {"image": "nginx:1"},
                                     "command": ["sleep", "inf"], "log_path": "c.log"}))
    assert cri(fake, capsys, "runp", str(pod)) == (0, "f" * 64 + "\n", "")
    sent = fake.sent("RunPodSandbox")[-1].config
    assert sent.log_directory == "/var/log/pods/p" and sent.metadata.uid  # made up, as crictl does
    assert sent.linux.security_context.namespace_options.network == pb.POD
    assert cri(fake, capsys, "create", "aaaa1", str(container), str(pod)) == (0, "9" * 64 + "\n", "")
    created = fake.sent("CreateContainer")[-1]
    assert (created.pod_sandbox_id, created.config.image.image, created.sandbox_config.metadata.name) == (
        POD_WEB, "nginx:1", "p")
    assert cri(fake, capsys, "stop", "-t", "10", "cccc1") == (0, NGINX + "\n", "")
    assert (fake.sent("StopContainer")[-1].container_id, fake.sent("StopContainer")[-1].timeout) == (NGINX, 10)


def test_config_errors_name_file_and_field(fake: FakeCri, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    pod = tmp_path / "pod.json"
    pod.write_text(json.dumps({"metadata": {"name": "p", "namespace": "n", "nmae": "x"}}))
    code, _, err = cri(fake, capsys, "runp", str(pod))
    assert code == 1 and err.startswith(f"skiff cri runp: {pod}: ") and '"nmae"' in err and len(err.splitlines()) == 1
    pod.write_text("{")
    assert f"{pod}: not JSON" in cri(fake, capsys, "runp", str(pod))[2]
    pod.write_text(json.dumps({"metadata": {"name": "p"}}))
    assert "metadata.name and metadata.namespace must be set" in cri(fake, capsys, "runp", str(pod))[2]
    assert fake.sent("RunPodSandbox") == []


# -- logs -------------------------------------------------------------------------------------

def write_log(path: str, *lines: tuple[Stream, bytes, bool]) -> None:
    with open(path, "ab") as f:
        for i, (stream, text, partial) in enumerate(lines):
            f.write(format_line(stream, text, partial=partial, ts=NOW + i * SECOND))


def test_logs_join_pieces_and_split_streams(fake: FakeCri, capsys: pytest.CaptureFixture[str]) -> None:
    out, err = Stream.STDOUT, Stream.STDERR
    write_log(fake.log_path, (out, b"one", False), (out, b"long ", True), (err, b"oops", False),
              (out, b"line", False), (err, b"last", False))
    assert cri(fake, capsys, "logs", "cccc1") == (0, "one\nlong line\n", "oops\nlast\n")
    assert cri(fake, capsys, "logs", "--tail", "2", "cccc1") == (0, "long line\n", "last\n")
    _, stdout, stderr = cri(fake, capsys, "logs", "-t", "--tail", "1", "cccc1")
    assert (stdout, stderr) == ("", format_timestamp(NOW + 4 * SECOND).decode() + " last\n")
    stamped = cri(fake, capsys, "logs", "--timestamps", "cccc1")[1].splitlines()
    assert stamped[1] == format_timestamp(NOW + SECOND).decode() + " long line"  # the first piece's time


def test_logs_bad_lines_and_missing_file(fake: FakeCri, capsys: pytest.CaptureFixture[str]) -> None:
    assert cri(fake, capsys, "logs", "cccc1") == (1, "", f"skiff cri logs: {fake.log_path}: the container's log "
                                                         "file does not exist\n")
    with open(fake.log_path, "wb") as f:
        f.write(b"garbage\n")
    write_log(fake.log_path, (Stream.STDOUT, b"fine", False))
    code, out, err = cri(fake, capsys, "logs", "cccc1")
    assert (code, out) == (0, "fine\n") and err.startswith("skiff cri logs: skipping a line: log line b'garbage'")


def test_logs_follow_ends_when_the_container_exits(fake: FakeCri, capsys: pytest.CaptureFixture[str]) -> None:
    write_log(fake.log_path, (Stream.STDOUT, b"before", False))

    def container() -> None:
        time.sleep(0.3)
        write_log(fake.log_path, (Stream.STDOUT, b"during ", True))
        time.sleep(0.3)
        write_log(fake.log_path, (Stream.STDOUT, b"follow", False), (Stream.STDERR, b"bye", False))
        fake.containers[0].state = pb.CONTAINER_EXITED

    writer = threading.Thread(target=container)
    writer.start()
    try:
        started = time.monotonic()
        assert cri(fake, capsys, "logs", "-f", "cccc1") == (0, "before\nduring follow\n", "bye\n")
        assert time.monotonic() - started < 10
    finally:
        writer.join()
    assert fake.sent("ContainerStatus")[-1].container_id == NGINX


# -- formatting -------------------------------------------------------------------------------

@pytest.mark.parametrize(("seconds", "text"), [
    (0.5, "Less than a second"), (1, "1 second"), (59, "59 seconds"), (60, "About a minute"),
    (125, "2 minutes"), (3600, "About an hour"), (5 * 3600, "5 hours"), (3 * 86400, "3 days"),
    (20 * 86400, "2 weeks"), (90 * 86400, "3 months"), (800 * 86400, "2 years")])
def test_human_duration_as_crictl(seconds: float, text: str) -> None:
    assert human_duration(seconds) == text


def test_human_size_as_crictl() -> None:
    assert [human_size(n) for n in (0, 999, 1000, 2_220_000, 123_456_789_012)] == [
        "0B", "999B", "1kB", "2.22MB", "123GB"]
