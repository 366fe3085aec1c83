"""The CRI RuntimeService over its real unix socket, with the generated CRI stubs: pod
sandboxes, containers, exec, logs, stats, and what kubelet relies on."""

from __future__ import annotations

import os
import subprocess
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from cri_api.v1 import api_pb2 as pb
from cri_fixture import IMAGE, POD_CIDR, Cri

pytestmark = pytest.mark.requires("busybox")


def test_version_status_and_runtime_config(cri: Cri) -> None:
    version = cri.runtime.Version(pb.VersionRequest())
    assert (version.version, version.runtime_name, version.runtime_api_version) == ("0.1.0", "skiff", "v1")
    conditions = {c.type: c.status for c in cri.runtime.Status(pb.StatusRequest()).status.conditions}
    assert conditions == {"RuntimeReady": True, "NetworkReady": True}
    config = cri.runtime.RuntimeConfig(pb.RuntimeConfigRequest())
    assert config.linux.cgroup_driver == pb.CGROUPFS


def test_pod_lifecycle(cri: Cri) -> None:
    pod_id, pod = cri.run_pod("web", labels={"tier": "front"})
    status = cri.pod_status(pod_id)
    assert status.state == pb.SANDBOX_READY
    assert status.metadata.name == "web" and status.labels == {"tier": "front"}
    import ipaddress

    assert ipaddress.ip_address(status.network.ip) in ipaddress.ip_network(POD_CIDR)
    # PID 1 of its namespace: a signal without a handler would be ignored
    cid = cri.start(pod_id, pod, "main", "sh", "-c", "trap 'exit 3' TERM; while :; do sleep 0.05; done")
    got = cri.status(cid)
    assert got.state == pb.CONTAINER_RUNNING and got.started_at > 0
    assert got.labels == {"app": "main"} and got.image.image == IMAGE
    assert got.log_path.endswith("main/0.log")
    listed = cri.runtime.ListContainers(pb.ListContainersRequest()).containers
    assert [c.id for c in listed] == [cid]
    assert cri.exec(cid, "hostname").stdout == b"web\n"

    cri.runtime.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=5))
    stopped = cri.status(cid)
    assert stopped.state == pb.CONTAINER_EXITED
    assert stopped.exit_code == 3 and stopped.reason == "Error" and stopped.finished_at >= got.started_at
    cri.runtime.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=5))  # idempotent

    cri.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod_id))
    cri.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod_id))
    assert cri.pod_status(pod_id).state == pb.SANDBOX_NOTREADY
    cri.runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=cid))
    cri.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
    cri.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
    assert not cri.runtime.ListPodSandbox(pb.ListPodSandboxRequest()).items
    assert not os.listdir(os.path.join(cri.config.state_root, "pods"))


def _wait_for(check: object, timeout: float = 10.0) -> None:
    assert callable(check)
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {check}"
        time.sleep(0.05)


HTTPD = "mkdir -p /tmp/www && echo hello from $(hostname) > /tmp/www/index.html && exec httpd -f -p 8080 -h /tmp/www"


def _serving(cri: Cri, cid: str, address: str = "127.0.0.1") -> bool:
    return cri.exec(cid, "wget", "-qO-", f"http://{address}:8080/").exit_code == 0


def test_containers_of_a_pod_share_localhost_and_ipc(cri: Cri) -> None:
    pod_id, pod = cri.run_pod("shared")
    server = cri.start(pod_id, pod, "server", "sh", "-c", HTTPD)
    client = cri.start(pod_id, pod, "client", "sleep", "3600")
    _wait_for(lambda: _serving(cri, client))
    assert cri.exec(client, "wget", "-qO-", "http://127.0.0.1:8080/").stdout == b"hello from shared\n"
    ipc = {cri.exec(c, "readlink", "/proc/self/ns/ipc").stdout for c in (server, client)}
    assert len(ipc) == 1
    assert cri.exec(server, "sh", "-c", "echo shm > /dev/shm/x").exit_code == 0
    assert cri.exec(client, "cat", "/dev/shm/x").stdout == b"shm\n"
    # without a pod PID namespace each container has its own
    assert cri.exec(client, "ps").stdout.count(b"httpd") == 0


def test_shared_pid_namespace(cri: Cri) -> None:
    pod_id, pod = cri.run_pod("pids", shared_pid=True)
    first = cri.start(pod_id, pod, "first", "sleep", "3601")
    second = cri.start(pod_id, pod, "second", "sleep", "3602")
    assert b"sleep 3601" in cri.exec(second, "ps").stdout
    assert b"sleep 3602" in cri.exec(first, "ps").stdout


def test_two_pods_reach_each_other_and_the_host_reaches_them(cri: Cri) -> None:
    a_id, a = cri.run_pod("pod-a")
    b_id, b = cri.run_pod("pod-b")
    a_ip, b_ip = cri.pod_status(a_id).network.ip, cri.pod_status(b_id).network.ip
    assert a_ip != b_ip
    server = cri.start(a_id, a, "server", "sh", "-c", HTTPD)
    client = cri.start(b_id, b, "client", "sleep", "3600")
    _wait_for(lambda: _serving(cri, client, a_ip))
    assert cri.exec(client, "wget", "-qO-", f"http://{a_ip}:8080/").stdout == b"hello from pod-a\n"
    with urllib.request.urlopen(f"http://{a_ip}:8080/", timeout=5) as reply:  # kubelet's HTTP probes
        assert reply.read() == b"hello from pod-a\n"
    assert cri.exec(server, "ping", "-c", "1", "-W", "2", b_ip).exit_code == 0


def test_host_port_reaches_the_pod(cri: Cri) -> None:
    mapping = pb.PortMapping(protocol=pb.TCP, container_port=8080, host_port=18080)
    pod_id, pod = cri.run_pod("ported", port_mappings=[mapping])
    cid = cri.start(pod_id, pod, "server", "sh", "-c", HTTPD)
    _wait_for(lambda: _serving(cri, cid))
    gateway = POD_CIDR.replace("0/24", "1")  # a local address of the node
    with urllib.request.urlopen(f"http://{gateway}:18080/", timeout=5) as reply:
        assert reply.read() == b"hello from ported\n"


def test_secret_volume_is_tmpfs_and_never_on_disk(cri: Cri, tmp_path: Path) -> None:
    from skiff.runtime import libc

    secret = tmp_path / "volumes" / "token"
    secret.mkdir(parents=True)
    libc.mount("tmpfs", str(secret), "tmpfs", libc.MS_NOSUID | libc.MS_NODEV, "mode=0700,size=1m")
    try:
        value = b"s3cr3t-" + os.urandom(8).hex().encode()
        (secret / "token").write_bytes(value)
        pod_id, pod = cri.run_pod("secretive")
        cid = cri.start(pod_id, pod, "reader", "sleep", "3600",
                        mounts=[pb.Mount(container_path="/var/run/secrets/app", host_path=str(secret), readonly=True)])
        assert cri.exec(cid, "cat", "/var/run/secrets/app/token").stdout == value
        mounts = cri.exec(cid, "cat", "/proc/mounts").stdout.decode()
        assert any(line.split()[1] == "/var/run/secrets/app" and line.split()[2] == "tmpfs"
                   for line in mounts.splitlines())
        assert cri.exec(cid, "sh", "-c", "echo x > /var/run/secrets/app/token").exit_code != 0
        for root in (cri.config.state_root, cri.config.log_root, cri.config.images_root):
            for directory, _, files in os.walk(root):
                for name in files:
                    path = os.path.join(directory, name)
                    if os.path.isfile(path) and not os.path.islink(path) and not directory.endswith("/ns"):
                        assert value not in Path(path).read_bytes(), path
        cri.remove_all()
    finally:
        libc.umount2(str(secret), libc.MNT_DETACH)


def test_memory_limit_gives_oomkilled(cri: Cri) -> None:
    pod_id, pod = cri.run_pod("hungry")
    # busybox tail keeps a line until its end: 256 MiB without a newline
    cid = cri.start(pod_id, pod, "eater", "sh", "-c", "head -c 268435456 /dev/zero | tail", memory=32 << 20)
    status = cri.wait_exited(cid, timeout=30)
    assert status.state == pb.CONTAINER_EXITED
    assert status.reason == "OOMKilled"
    assert status.exit_code == 137 or status.exit_code != 0


def test_completed_container_and_its_logs(cri: Cri) -> None:
    pod_id, pod = cri.run_pod("logger")
    cid = cri.start(pod_id, pod, "talker", "sh", "-c", "echo out; echo err >&2; printf partial")
    status = cri.wait_exited(cid)
    assert (status.exit_code, status.reason) == (0, "Completed")
    from skiff.cri.logs import parse_line

    lines = [parse_line(line) for line in Path(status.log_path).read_bytes().splitlines(keepends=True)]
    assert sorted((line.stream.value, line.partial, line.text) for line in lines) == [
        ("stderr", False, b"err"), ("stdout", False, b"out"), ("stdout", True, b"partial")]


def test_reopen_container_log(cri: Cri) -> None:
    pod_id, pod = cri.run_pod("rotating")
    cid = cri.start(pod_id, pod, "ticker", "sh", "-c", "while :; do echo tick; sleep 0.05; done")
    log_path = cri.status(cid).log_path
    _wait_for(lambda: os.path.exists(log_path) and os.path.getsize(log_path) > 0)
    os.rename(log_path, log_path + ".1")
    cri.runtime.ReopenContainerLog(pb.ReopenContainerLogRequest(container_id=cid))
    _wait_for(lambda: os.path.getsize(log_path) > 0)
    assert b"tick" in Path(log_path).read_bytes()


def test_label_filters_list_the_right_pods_and_containers(cri: Cri) -> None:
    front_id, front = cri.run_pod("front", labels={"tier": "front", "env": "prod"})
    back_id, _ = cri.run_pod("back", labels={"tier": "back", "env": "prod"})
    cid = cri.start(front_id, front, "web", "sleep", "3600")

    def pods(**labels: str) -> set[str]:
        f = pb.PodSandboxFilter(label_selector=labels)
        return {p.id for p in cri.runtime.ListPodSandbox(pb.ListPodSandboxRequest(filter=f)).items}

    assert pods(tier="front") == {front_id}
    assert pods(env="prod") == {front_id, back_id}
    assert pods(env="prod", tier="back") == {back_id}
    assert pods(tier="none") == set()
    by_state = pb.PodSandboxFilter(state=pb.PodSandboxStateValue(state=pb.SANDBOX_READY))
    assert len(cri.runtime.ListPodSandbox(pb.ListPodSandboxRequest(filter=by_state)).items) == 2
    f = pb.ContainerFilter(pod_sandbox_id=back_id)
    assert not cri.runtime.ListContainers(pb.ListContainersRequest(filter=f)).containers
    f = pb.ContainerFilter(label_selector={"app": "web"}, state=pb.ContainerStateValue(state=pb.CONTAINER_RUNNING))
    assert [c.id for c in cri.runtime.ListContainers(pb.ListContainersRequest(filter=f)).containers] == [cid]


def test_exec_sync_output_exit_code_and_timeout(cri: Cri) -> None:
    pod_id, pod = cri.run_pod("execs")
    cid = cri.start(pod_id, pod, "main", "sleep", "3600")
    reply = cri.exec(cid, "sh", "-c", "echo out; echo err >&2; exit 7")
    assert (reply.stdout, reply.stderr, reply.exit_code) == (b"out\n", b"err\n", 7)
    with pytest.raises(grpc.RpcError) as err:
        cri.exec(cid, "sleep", "30", timeout=1)
    assert err.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    with pytest.raises(grpc.RpcError) as err:
        cri.exec(cid, "/no/such/binary")
    assert err.value.code() is not grpc.StatusCode.INTERNAL


def test_stats(cri: Cri) -> None:
    pod_id, pod = cri.run_pod("measured")
    cid = cri.start(pod_id, pod, "main", "sh", "-c", "x=$(head -c 4000000 /dev/urandom | wc -c); sleep 3600")
    time.sleep(0.3)
    stats = cri.runtime.ContainerStats(pb.ContainerStatsRequest(container_id=cid)).stats
    assert stats.attributes.id == cid
    assert stats.cpu.usage_core_nano_seconds.value > 0
    assert not stats.cpu.HasField("usage_nano_cores")    # one sample: no rate yet
    assert stats.memory.working_set_bytes.value > 0
    listed = cri.runtime.ListContainerStats(pb.ListContainerStatsRequest()).stats
    assert [s.attributes.id for s in listed] == [cid]
    assert listed[0].cpu.HasField("usage_nano_cores")   # the rate since the last sample
    pod_stats = cri.runtime.PodSandboxStats(pb.PodSandboxStatsRequest(pod_sandbox_id=pod_id)).stats
    assert pod_stats.linux.memory.working_set_bytes.value > 0
    assert [c.attributes.id for c in pod_stats.linux.containers] == [cid]
    assert pod_stats.linux.network.default_interface.name == "eth0"
    listed_pods = cri.runtime.ListPodSandboxStats(pb.ListPodSandboxStatsRequest()).stats
    assert [p.attributes.id for p in listed_pods] == [pod_id]


def test_update_container_resources(cri: Cri) -> None:
    pod_id, pod = cri.run_pod("resized")
    cid = cri.start(pod_id, pod, "main", "sleep", "3600", memory=64 << 20)
    resources = pb.LinuxContainerResources(memory_limit_in_bytes=128 << 20, cpu_shares=512)
    cri.runtime.UpdateContainerResources(pb.UpdateContainerResourcesRequest(container_id=cid, linux=resources))
    assert cri.status(cid).resources.linux.memory_limit_in_bytes == 128 << 20
    stats = cri.runtime.ContainerStats(pb.ContainerStatsRequest(container_id=cid)).stats
    assert stats.memory.available_bytes.value <= 128 << 20
    with pytest.raises(grpc.RpcError) as err:
        bad = pb.LinuxContainerResources(cpuset_cpus="4095")
        cri.runtime.UpdateContainerResources(pb.UpdateContainerResourcesRequest(container_id=cid, linux=bad))
    assert err.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION)
    assert "cpuset" in err.value.details()
    assert cri.status(cid).resources.linux.cpuset_cpus == ""  # a refused update changes nothing


def test_oom_score_adj_the_host_cannot_grant_is_clamped(cri: Cri) -> None:
    """Without CAP_SYS_RESOURCE nothing goes below this process's own value: kubelet's
    -997 for a guaranteed pod becomes that value instead of failing the container."""
    pod_id, pod = cri.run_pod("guaranteed")
    config = pb.ContainerConfig(metadata=pb.ContainerMetadata(name="main"), image=pb.ImageSpec(image=IMAGE),
                                command=["sleep", "3600"])
    config.linux.resources.oom_score_adj = -997
    cid = cri.runtime.CreateContainer(pb.CreateContainerRequest(pod_sandbox_id=pod_id, config=config)).container_id
    cri.runtime.StartContainer(pb.StartContainerRequest(container_id=cid))
    own = int(Path("/proc/self/oom_score_adj").read_text())
    got = int(cri.exec(cid, "cat", "/proc/self/oom_score_adj").stdout)
    assert got == -997 or got == own


def test_host_network_pod(cri: Cri) -> None:
    pod_id, pod = cri.run_pod("hosted", host_network=True)
    assert cri.pod_status(pod_id).network.ip == ""
    cid = cri.start(pod_id, pod, "main", "sleep", "3600")
    assert cri.exec(cid, "readlink", "/proc/self/ns/net").stdout.strip() == os.readlink("/proc/self/ns/net").encode()


def _code(call: object) -> grpc.StatusCode:
    assert callable(call)
    with pytest.raises(grpc.RpcError) as err:
        call()
    code: grpc.StatusCode = err.value.code()
    return code


def test_bad_requests_get_the_right_codes_and_leave_nothing(cri: Cri) -> None:
    rt = cri.runtime
    no_name = pb.PodSandboxConfig(metadata=pb.PodSandboxMetadata(namespace="default", uid="u"))
    with pytest.raises(grpc.RpcError) as err:
        rt.RunPodSandbox(pb.RunPodSandboxRequest(config=no_name))
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "config.metadata.name" in err.value.details()
    assert _code(lambda: cri.pod_status("0123456789abcdef")) is grpc.StatusCode.NOT_FOUND
    assert _code(lambda: cri.status("0123456789abcdef")) is grpc.StatusCode.NOT_FOUND
    pod_id, pod = cri.run_pod("dup")
    assert _code(lambda: cri.run_pod("dup")) is grpc.StatusCode.ALREADY_EXISTS
    cri.start(pod_id, pod, "c", "sleep", "3600")
    assert _code(lambda: cri.start(pod_id, pod, "c", "sleep", "1")) is grpc.StatusCode.ALREADY_EXISTS
    assert _code(lambda: cri.start("0123456789abcdef", pod, "c", "sleep", "1")) is grpc.StatusCode.NOT_FOUND
    missing_image = pb.ContainerConfig(metadata=pb.ContainerMetadata(name="x"), image=pb.ImageSpec(image="no/such:image"))
    assert _code(lambda: rt.CreateContainer(pb.CreateContainerRequest(
        pod_sandbox_id=pod_id, config=missing_image))) is grpc.StatusCode.NOT_FOUND
    bad_mount = pb.ContainerConfig(metadata=pb.ContainerMetadata(name="y"), image=pb.ImageSpec(image=IMAGE),
                                   command=["true"], mounts=[pb.Mount(container_path="relative", host_path="/tmp")])
    with pytest.raises(grpc.RpcError) as err:
        rt.CreateContainer(pb.CreateContainerRequest(pod_sandbox_id=pod_id, config=bad_mount))
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT and "mounts[0].container_path" in err.value.details()
    # the failed creates left no record, name, bundle, snapshot or cgroup (the monitor's prepare)
    assert len(rt.ListContainers(pb.ListContainersRequest()).containers) == 1
    import glob

    pod_cgroups = glob.glob(f"/sys/fs/cgroup/**/pod-{pod_id}", recursive=True)
    assert pod_cgroups and all(len(next(os.walk(d))[1]) == 1 for d in pod_cgroups)
    assert len(os.listdir(os.path.join(cri.config.state_root, "bundles"))) == 1
    assert len(os.listdir(os.path.join(cri.config.images_root, "snapshots"))) == 1
    # a bad sysctl fails the pod and leaves nothing
    bad = pb.PodSandboxConfig(metadata=pb.PodSandboxMetadata(name="s", namespace="d", uid="u2"))
    bad.linux.sysctls["kernel.panic"] = "1"
    with pytest.raises(grpc.RpcError) as err:
        rt.RunPodSandbox(pb.RunPodSandboxRequest(config=bad))
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT and "kernel.panic" in err.value.details()
    assert len(rt.ListPodSandbox(pb.ListPodSandboxRequest()).items) == 1
    # unknown ids are fine for Remove and Stop, as kubelet expects
    rt.RemoveContainer(pb.RemoveContainerRequest(container_id="0123456789abcdef"))
    rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id="0123456789abcdef"))
    rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id="0123456789abcdef"))


def test_failed_network_setup_leaves_nothing(cri: Cri) -> None:
    taken = pb.PortMapping(protocol=pb.TCP, container_port=80, host_port=70000)
    with pytest.raises(grpc.RpcError) as err:
        cri.run_pod("badport", port_mappings=[taken])
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert not cri.runtime.ListPodSandbox(pb.ListPodSandboxRequest()).items
    assert not os.listdir(os.path.join(cri.config.state_root, "pods"))
    # and the name is free again
    cri.run_pod("badport")


def test_image_status_of_a_missing_image_is_empty(cri: Cri) -> None:
    reply = cri.images.ImageStatus(pb.ImageStatusRequest(image=pb.ImageSpec(image="not/here:1")))
    assert not reply.HasField("image")


def test_cli_client_on_the_real_service(cri: Cri) -> None:
    pod_id, pod = cri.run_pod("listed")
    cid = cri.start(pod_id, pod, "main", "sleep", "3600")
    skiff = [os.path.join(os.path.dirname(os.path.realpath(__import__("sys").executable)), "skiff")]
    env = {**os.environ, "SKIFF_CRI_SOCKET": cri.config.socket}
    import sys

    skiff = [os.path.join(os.path.dirname(sys.executable), "skiff")]
    pods = subprocess.run([*skiff, "cri", "pods"], env=env, capture_output=True, text=True, check=True).stdout
    assert pod_id[:13] in pods and "listed" in pods
    ps = subprocess.run([*skiff, "cri", "ps"], env=env, capture_output=True, text=True, check=True).stdout
    assert cid[:13] in ps and "Running" in ps or "RUNNING" in ps
    out = subprocess.run([*skiff, "cri", "exec", cid[:8], "echo", "hi"], env=env, capture_output=True, text=True)
    assert (out.returncode, out.stdout) == (0, "hi\n")


@pytest.mark.requires("cgroup2")
def test_pods_on_a_pure_cgroup2_host(tmp_path: Path, cri_images_root: str) -> None:
    from cri_fixture import in_process, service_config

    with in_process(service_config(tmp_path, cri_images_root, mode="none")) as v2:
        pod_id, pod = v2.run_pod("unified")
        cid = v2.start(pod_id, pod, "main", "sleep", "3600", memory=48 << 20)
        assert v2.exec(cid, "cat", "/sys/fs/cgroup/memory.max").stdout == str(48 << 20).encode() + b"\n"
        stats = v2.runtime.PodSandboxStats(pb.PodSandboxStatsRequest(pod_sandbox_id=pod_id)).stats
        assert stats.linux.memory.working_set_bytes.value > 0
        hungry = v2.start(pod_id, pod, "eater", "sh", "-c", "head -c 268435456 /dev/zero | tail", memory=32 << 20)
        assert v2.wait_exited(hungry, timeout=60).reason == "OOMKilled"
        # a pod PID namespace's pause has a cgroup of its own: the pod's can still hand
        # controllers to its containers ("no internal processes")
        shared_id, shared = v2.run_pod("shared-pid", shared_pid=True)
        limited = v2.start(shared_id, shared, "limited", "sleep", "3600", memory=40 << 20)
        assert v2.exec(limited, "cat", "/sys/fs/cgroup/memory.max").stdout == str(40 << 20).encode() + b"\n"
        assert b"pause.py" in v2.exec(limited, "ps").stdout


def test_exec_sync_returns_when_a_background_child_keeps_the_output_open(cri: Cri) -> None:
    pod_id, pod = cri.run_pod("daemonizer")
    cid = cri.start(pod_id, pod, "main", "sleep", "3600")
    started = time.monotonic()
    reply = cri.exec(cid, "sh", "-c", "sleep 60 & echo started", timeout=0)
    assert (reply.stdout, reply.exit_code) == (b"started\n", 0)
    assert time.monotonic() - started < 10


def test_the_image_stop_signal_is_read_as_docker_reads_it() -> None:
    import signal

    from skiff.cri.service.container_stop import stop_signal

    assert stop_signal("SIGQUIT") == stop_signal("quit") == stop_signal("3") == signal.SIGQUIT
    assert stop_signal("") == stop_signal("SIGNOPE") == stop_signal("999") == signal.SIGTERM


def test_dns_config_sysctls_and_id_filters(cri: Cri) -> None:
    from cri_fixture import pod_config

    host_port_start = Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text()
    config = pod_config(cri.config, "tuned")
    config.dns_config.servers.extend(["10.96.0.10"])
    config.dns_config.searches.extend(["default.svc.cluster.local", "svc.cluster.local"])
    config.dns_config.options.extend(["ndots:5"])
    config.linux.sysctls["kernel.shm_rmid_forced"] = "1"
    config.linux.sysctls["net.ipv4.ip_unprivileged_port_start"] = "80"
    pod_id = cri.runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=config)).pod_sandbox_id
    cid = cri.start(pod_id, config, "main", "sleep", "3600")
    assert cri.exec(cid, "cat", "/etc/resolv.conf").stdout == (
        b"nameserver 10.96.0.10\nsearch default.svc.cluster.local svc.cluster.local\noptions ndots:5\n")
    assert cri.exec(cid, "cat", "/proc/sys/kernel/shm_rmid_forced").stdout == b"1\n"
    assert cri.exec(cid, "cat", "/proc/sys/net/ipv4/ip_unprivileged_port_start").stdout == b"80\n"
    # the pod's netns has its own value: the host's is untouched
    assert Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text() == host_port_start
    other_id, _ = cri.run_pod("plain")
    by_id = pb.PodSandboxFilter(id=pod_id[:12])
    assert [p.id for p in cri.runtime.ListPodSandbox(pb.ListPodSandboxRequest(filter=by_id)).items] == [pod_id]
    by_cid = pb.ContainerFilter(id=cid[:12])
    assert [c.id for c in cri.runtime.ListContainers(pb.ListContainersRequest(filter=by_cid)).containers] == [cid]
    assert other_id != pod_id


def test_a_created_container_holds_only_its_own_pipes(cri: Cri) -> None:
    """Created by the one monitor, which has every container's pipes open: until its start,
    a container's process holds its stdio, its sync socket and its state directory only, so
    another container's log still ends when that one's processes do."""
    import json

    pod_id, pod = cri.run_pod("fds")
    cri.start(pod_id, pod, "running", "sleep", "3600")
    created = str(cri.runtime.CreateContainer(pb.CreateContainerRequest(
        pod_sandbox_id=pod_id, sandbox_config=pod, config=pb.ContainerConfig(
            metadata=pb.ContainerMetadata(name="created"), image=pb.ImageSpec(image=IMAGE),
            command=["true"], log_path="created/0.log"))).container_id)
    pid = json.loads(cri.runtime.ContainerStatus(pb.ContainerStatusRequest(
        container_id=created, verbose=True)).info["info"])["pid"]
    fds = {int(fd): os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
    pipes = sorted(fd for fd, target in fds.items() if target.startswith("pipe:"))
    assert pipes == [1, 2], fds
    assert fds[0] == "/dev/null" and len(fds) <= 5, fds  # + the sync socket and the state directory


def test_create_container_by_image_id(cri: Cri) -> None:
    """kubelet names the image by the id PullImage answered and by the pod's name for it
    (user_specified_image); crictl by id or id prefix. ContainerStatus shows a name of the
    image either way, and a repo digest as its image_ref, as containerd does."""
    [image] = [i for i in cri.images.ListImages(pb.ListImagesRequest()).images if IMAGE in i.repo_tags]
    pod_id, pod = cri.run_pod("by-id")
    for ref, named in ((image.id, ""), (image.id.removeprefix("sha256:")[:12], ""), (image.id, IMAGE)):
        cid = str(cri.runtime.CreateContainer(pb.CreateContainerRequest(
            pod_sandbox_id=pod_id, sandbox_config=pod, config=pb.ContainerConfig(
                metadata=pb.ContainerMetadata(name=f"by-id-{len(ref)}-{bool(named)}"),
                image=pb.ImageSpec(image=ref, user_specified_image=named), command=["true"]))).container_id)
        cri.runtime.StartContainer(pb.StartContainerRequest(container_id=cid))
        status = cri.wait_exited(cid)
        assert status.exit_code == 0
        assert (status.image.image, status.image_ref, status.image_id) == (IMAGE, image.repo_digests[0], image.id)


def test_the_service_makes_the_mount_points_before_the_container_runs(cri: Cri) -> None:
    """cri/mount_points.py: made by the container's first process, in its cgroup, the mount
    points' inodes on a disk-backed snapshot kept its memory cgroup and the pod's alive,
    dying, after their removal (three a pod, until memory pressure). Made by the service,
    they are older than the bundle's config.json, which the service writes next."""
    pod_id, pod = cri.run_pod("points", host_network=True)
    cid = cri.start(pod_id, pod, "main", "sleep", "30")
    config = os.stat(os.path.join(cri.config.state_root, "bundles", cid, "config.json"))
    upper = os.path.join(cri.config.images_root, "uppers", cid, "upper")
    for name in ("etc/hostname", "etc/hosts", "etc/resolv.conf"):
        assert os.stat(os.path.join(upper, name)).st_ctime_ns <= config.st_mtime_ns, name


def test_what_containers_copy_is_on_mounts_of_their_own(cri: Cri) -> None:
    """runtime/own_mount.py: a container's binds of its pod's files, and its overlay's copies of
    the layers and its upper directory, copy mounts with nothing below them, not the ones that
    hold every pod's /dev/shm, namespaces and rootfs overlay. They go with the service."""
    files = os.path.join(cri.config.state_root, "pod-files")
    layers = os.path.join(cri.config.images_root, "layers", "sha256")
    uppers = os.path.join(cri.config.images_root, "uppers")
    with open("/proc/self/mountinfo") as f:
        points = {line.split()[4] for line in f}
    assert {os.path.realpath(p) for p in (files, layers, uppers)} <= points
    pod_id, pod = cri.run_pod("files")
    assert sorted(os.listdir(os.path.join(files, pod_id))) == ["hostname", "hosts", "resolv.conf"]
    cid = cri.start(pod_id, pod, "main", "sleep", "30")
    assert cri.exec(cid, "cat", "/etc/hostname").stdout == b"files\n"
    cri.exec(cid, "touch", "/written")
    assert os.path.exists(os.path.join(uppers, cid, "upper", "written"))
    cri.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod_id))
    cri.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
    assert os.listdir(files) == [] and os.listdir(uppers) == []


def test_an_empty_cgroup_left_in_a_pod_goes_with_the_pod(cri: Cri) -> None:
    """A monitor killed between its prepare and the create (Runtime.prepare) leaves the
    container's cgroup behind, empty: removing the pod removes it too."""
    from skiff.cri.service.sandbox_run import pod_cgroup_name
    from skiff.runtime.cgroups import open_cgroup

    pod_id, pod = cri.run_pod("leftover", host_network=True)
    left = open_cgroup(container_id="left", cgroups_path=f"{pod_cgroup_name(pod, pod_id)}/left",
                       parent=cri.config.cgroup_parent)
    left.create()
    dirs = [d for _, d in left.mounts()]
    assert dirs and all(os.path.isdir(d) for d in dirs)
    cri.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod_id))
    cri.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
    assert not any(os.path.exists(d) for d in dirs)
    assert not cri.runtime.ListPodSandbox(pb.ListPodSandboxRequest()).items
