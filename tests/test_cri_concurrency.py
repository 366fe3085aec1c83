"""The CRI service under many callers at once, as kubelet calls it: ten clients creating,
listing, exec-ing and removing pods together, with the state consistent afterwards; a
StopPodSandbox racing the creation and start of containers in the pod; an ExecSync on a
container that exits meanwhile. Each ends with a clear answer, never a hang or an INTERNAL."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import grpc
from cri_api.v1 import api_pb2 as pb
from cri_fixture import IMAGE, Cri

CLIENTS = 10
CLEAR = (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND)   # what a lost race may answer


def _code(call: Callable[[], object]) -> grpc.StatusCode:
    try:
        call()
        return grpc.StatusCode.OK
    except grpc.RpcError as e:
        return e.code()


def test_ten_clients_at_once_leave_a_consistent_state(cri: Cri) -> None:
    def client(n: int) -> tuple[str, str]:
        pod_id, pod = cri.run_pod(f"client-{n}")
        cid = cri.start(pod_id, pod, "main", "sleep", "60")
        listed = {p.id for p in cri.runtime.ListPodSandbox(pb.ListPodSandboxRequest()).items}
        assert pod_id in listed
        assert cri.exec(cid, "echo", f"hello {n}").stdout == f"hello {n}\n".encode()
        assert cri.status(cid).state == pb.CONTAINER_RUNNING
        cri.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod_id))
        cri.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
        return pod_id, cid

    with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
        done = list(pool.map(client, range(CLIENTS)))
    assert len({pod for pod, _ in done}) == CLIENTS
    assert not cri.runtime.ListPodSandbox(pb.ListPodSandboxRequest()).items
    assert not cri.runtime.ListContainers(pb.ListContainersRequest()).containers
    for pod_id, cid in done:   # each gone for good, and removing again is fine
        assert _code(lambda: cri.status(cid)) == grpc.StatusCode.NOT_FOUND
        assert _code(lambda: cri.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id))) \
            == grpc.StatusCode.OK


def test_a_stop_racing_container_creation_leaves_nothing_running(cri: Cri) -> None:
    pod_id, pod = cri.run_pod("racing")
    outcomes: list[grpc.StatusCode] = []
    go = threading.Event()

    def create(n: int) -> None:
        go.wait()
        outcomes.append(_code(lambda: cri.start(pod_id, pod, f"c{n}", "sleep", "60")))
    creators = [threading.Thread(target=create, args=(n,)) for n in range(4)]
    for t in creators:
        t.start()
    go.set()
    time.sleep(0.05)
    cri.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod_id))
    for t in creators:
        t.join()
    assert set(outcomes) <= {grpc.StatusCode.OK, *CLEAR}, outcomes
    running = [c for c in cri.runtime.ListContainers(pb.ListContainersRequest(
        filter=pb.ContainerFilter(pod_sandbox_id=pod_id))).containers if c.state == pb.CONTAINER_RUNNING]
    assert running == [] and cri.pod_status(pod_id).state == pb.SANDBOX_NOTREADY
    cri.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
    assert not cri.runtime.ListContainers(pb.ListContainersRequest()).containers


def test_exec_sync_on_a_container_that_exits_meanwhile(cri: Cri) -> None:
    pod_id, pod = cri.run_pod("short")
    cid = cri.start(pod_id, pod, "main", "sleep", "0.3")
    codes = [_code(lambda: cri.exec(cid, "sleep", "0.1")) for _ in range(10)]
    assert cri.wait_exited(cid).state == pb.CONTAINER_EXITED
    codes.append(_code(lambda: cri.exec(cid, "true")))
    assert set(codes) <= {grpc.StatusCode.OK, *CLEAR}, codes
    assert codes[-1] in CLEAR                          # once it has exited, a clear refusal
    cri.remove_all()
