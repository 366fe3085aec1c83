"""`skiff logs` and `skiff exec` the Kubernetes way: the client asks the API server, which
forwards to the agent of the pod's node, which reads the CRI log file or calls ExecSync. All
in this process (registry, API server, node agent and its server, CRI service), the CLI as a
process where its flags matter."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cri_fixture import IMAGE, Cri
from orchestrator_fixture import eventually, running

from skiff.errors import InvalidArgument, NotFound, Unavailable
from skiff.orchestrator import cli
from skiff.orchestrator.agent.node import AGENT_ENDPOINT, NodeStatus
from skiff.orchestrator.agent.pods import PodAgent
from skiff.orchestrator.agent.server import AgentServer
from skiff.orchestrator.api.kinds import BY_KIND
from skiff.orchestrator.api.registry import Registry
from skiff.orchestrator.apiserver import ApiServer
from skiff.orchestrator.client import ApiClient, _UnixConnection

PODS, NODES = BY_KIND["Pod"], BY_KIND["Node"]
SKIFF = os.path.join(os.path.dirname(sys.executable), "skiff")


class Cluster:
    def __init__(self, registry: Registry, api_socket: str, agent_socket: str) -> None:
        self.registry = registry
        self.api_socket = api_socket
        self.agent_socket = agent_socket
        self.client = ApiClient(api_socket)

    def run(self, name: str, *command: str, restart: str = "Never", phase: str = "Running",
            containers: list[dict[str, Any]] | None = None, volumes: list[dict[str, Any]] | None = None) -> None:
        self.registry.create(PODS, {"metadata": {"name": name}, "spec": {
            "nodeName": "node-1", "restartPolicy": restart, "volumes": volumes or [],
            "containers": containers or [{"name": "main", "image": IMAGE, "command": list(command)}]}})
        eventually(lambda: (self.registry.get(PODS, "default", name).get("status") or {}).get("phase") == phase)

    def logs(self, pod: str, **options: Any) -> bytes:
        out = io.BytesIO()
        cli.logs(self.client, pod, out, namespace=None, **options)
        return out.getvalue()

    def skiff(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([SKIFF, *args], capture_output=True, text=True, timeout=60)


@pytest.fixture
def cluster(registry: Registry, cri: Cri, tmp_path: Path) -> Iterator[Cluster]:
    api_socket, agent_socket = str(tmp_path / "api.sock"), str(tmp_path / "agent.sock")
    agent_server = AgentServer(cri.config.socket, agent_socket)
    status = NodeStatus(registry, "node-1", period=0.5, endpoint=agent_server.endpoint)
    api = ApiServer(registry, unix_socket=api_socket)
    agent_server.start()
    api.start()
    status.start()
    try:
        with running(registry, (PODS,), lambda inf: [PodAgent(
                registry, inf["Pod"], "node-1", cri.config.socket, log_root=cri.config.log_root,
                root=str(tmp_path / "agent"), resync=0.2, backoff_base=0.2)]):
            yield Cluster(registry, api_socket, agent_socket)
    finally:
        status.stop()
        api.stop()
        agent_server.stop()


def test_the_node_publishes_its_agent(cluster: Cluster) -> None:
    node = cluster.registry.get(NODES, "", "node-1")
    assert node["metadata"]["annotations"][AGENT_ENDPOINT] == f"unix:{cluster.agent_socket}"


def test_logs_whole_tail_and_previous(cluster: Cluster) -> None:
    cluster.run("echo", "sh", "-c", "for i in 1 2 3 4; do echo line $i; done; echo oops >&2; "
                "printf 'no newline'", phase="Succeeded")
    assert cluster.logs("echo") == b"line 1\nline 2\nline 3\nline 4\noops\nno newline"
    assert cluster.logs("echo", tail=2) == b"oops\nno newline"
    assert cluster.logs("echo", tail=0) == b""
    assert cluster.logs("echo", container="main", follow=True) == cluster.logs("echo")  # exited: ends at once
    with pytest.raises(InvalidArgument, match='previous terminated container "main" in pod "echo" not found'):
        cluster.logs("echo", previous=True)

    # Attempts count themselves in an emptyDir (it outlives them); the second one succeeds.
    count = "echo x >> /data/n; n=$(wc -l < /data/n); echo attempt $n; [ $n -ge 2 ]"
    cluster.run("again", restart="OnFailure", phase="Succeeded", containers=[
        {"name": "main", "image": IMAGE, "command": ["sh", "-c", count],
         "volumeMounts": [{"name": "data", "mountPath": "/data"}]}], volumes=[{"name": "data", "emptyDir": {}}])
    assert cluster.logs("again") == b"attempt 2\n"
    assert cluster.logs("again", previous=True) == b"attempt 1\n"

    done = cluster.skiff("logs", "echo", "--tail", "1", "--server", cluster.api_socket)
    assert (done.returncode, done.stdout) == (0, "no newline")


def test_follow_ends_with_the_container_or_the_client(cluster: Cluster) -> None:
    cluster.run("slow", "sh", "-c", "echo first; sleep 1; echo second; sleep 0.5")
    started = time.monotonic()
    assert cluster.logs("slow", follow=True) == b"first\nsecond\n"
    assert time.monotonic() - started < 10

    # A reader that goes away: the API server and the agent stop following for it.
    cluster.run("quiet", "sh", "-c", "echo hello; exec sleep 3600")
    reader = subprocess.Popen([SKIFF, "logs", "-f", "quiet", "--server", cluster.api_socket],
                              stdout=subprocess.PIPE)
    assert reader.stdout is not None
    assert reader.stdout.readline() == b"hello\n"
    assert _connections(cluster.agent_socket) == 2  # the listener, and the API server's request
    reader.send_signal(signal.SIGINT)
    assert reader.wait(10) == 130
    reader.stdout.close()
    eventually(lambda: _connections(cluster.agent_socket) == 1 and _connections(cluster.api_socket) == 1,
               timeout=10)


def _code(cluster: Cluster, method: str, path: str) -> tuple[int, str]:
    """The HTTP code and the Status reason of an API server's answer."""
    conn = _UnixConnection(cluster.api_socket, 10)
    try:
        conn.request(method, path, body=b"{}")
        reply = conn.getresponse()
        return reply.status, json.loads(reply.read())["reason"]
    finally:
        conn.close()


def _connections(path: str) -> int:
    """Sockets bound to `path`, the listener and those it accepted (/proc/net/unix)."""
    with open("/proc/net/unix") as f:
        return sum(1 for line in f if line.split()[-1:] == [path])


def test_exec(cluster: Cluster) -> None:
    cluster.run("web", "sleep", "3600")
    assert cli.exec_in(cluster.client, "web", ["sh", "-c", "echo out; echo err >&2; exit 3"],
                       namespace="default") == (b"out\n", b"err\n", 3)
    assert cli.exec_in(cluster.client, "web", ["printf", "\\377"], namespace=None)[0] == b"\xff"  # not UTF-8

    done = cluster.skiff("exec", "web", "--server", cluster.api_socket, "-c", "main", "--", "sh", "-c",
                         "echo $0 $1; exit 7", "a", "--b")
    assert (done.returncode, done.stdout) == (7, "a --b\n")
    # -i: stdin through the node's CRI streaming server, the exit code back
    piped = subprocess.run([SKIFF, "exec", "-i", "web", "--server", cluster.api_socket, "--", "sh", "-c",
                            "tr a-z A-Z; exit 4"], input="through the stream\n", capture_output=True, text=True,
                           timeout=60)
    assert (piped.returncode, piped.stdout) == (4, "THROUGH THE STREAM\n"), piped.stderr

    cluster.run("done", "true", phase="Succeeded")
    with pytest.raises(InvalidArgument, match='container "main" in pod "done" is not running'):
        cli.exec_in(cluster.client, "done", ["true"], namespace=None)


def test_errors(cluster: Cluster) -> None:
    with pytest.raises(NotFound, match="pods 'ghost' not found"):
        cluster.logs("ghost")
    with pytest.raises(NotFound, match="pods 'ghost' not found"):
        cli.exec_in(cluster.client, "ghost", ["true"], namespace=None)
    missing = cluster.skiff("logs", "ghost", "--server", cluster.api_socket)
    assert missing.returncode == 1 and "pods 'ghost' not found" in missing.stderr
    assert _code(cluster, "GET", "/api/v1/namespaces/default/pods/ghost/log") == (404, "NotFound")
    assert _code(cluster, "POST", "/api/v1/namespaces/default/pods/ghost/exec") == (404, "NotFound")

    two = [{"name": n, "image": IMAGE, "command": ["sh", "-c", f"echo {n}; exec sleep 3600"]} for n in ("a", "b")]
    cluster.run("two", containers=two)
    message = r"a container name must be specified for pod two, choose one of: \[a b\]"
    with pytest.raises(InvalidArgument, match=message):
        cluster.logs("two")
    assert _code(cluster, "GET", "/api/v1/namespaces/default/pods/two/log") == (400, "Invalid")
    with pytest.raises(InvalidArgument, match=message):
        cli.exec_in(cluster.client, "two", ["true"], namespace=None)
    eventually(lambda: cluster.logs("two", container="b") == b"b\n")
    with pytest.raises(InvalidArgument, match="container c is not valid for pod two"):
        cluster.logs("two", container="c")

    cluster.registry.create(PODS, {"metadata": {"name": "unbound"}, "spec": {
        "containers": [{"name": "main", "image": IMAGE}]}})
    with pytest.raises(InvalidArgument, match="pod unbound is not scheduled to a node yet"):
        cluster.logs("unbound")

    cluster.registry.create(NODES, {"metadata": {"name": "gone", "annotations": {
        AGENT_ENDPOINT: f"unix:{cluster.agent_socket}.gone"}}, "spec": {}})
    cluster.registry.create(PODS, {"metadata": {"name": "far"}, "spec": {
        "nodeName": "gone", "containers": [{"name": "main", "image": IMAGE}]}})
    with pytest.raises(Unavailable, match="the agent of node gone at .*agent.sock.gone: .*No such file"):
        cluster.logs("far")


def fetch_forwarded(local: int, expected: bytes) -> bytes:
    """GET / through a forwarded local port, until the answer has `expected` (httpd may not
    listen yet: each try is a new connection through the forward)."""
    answer = b""
    for _ in range(50):
        with socket.create_connection(("127.0.0.1", local), timeout=10) as s:
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            answer = b"".join(iter(lambda: s.recv(4096), b""))
        if expected in answer:
            break
        time.sleep(0.1)
    return answer


def test_port_forward(cluster: Cluster) -> None:
    cluster.run("www", "sh", "-c", "mkdir -p /www && echo served > /www/index.html && exec httpd -f -p 8080 -h /www")
    forward = subprocess.Popen([SKIFF, "port-forward", "www", "0:8080", "--server", cluster.api_socket],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert forward.stdout is not None
        line = forward.stdout.readline()
        assert line.startswith("Forwarding from 127.0.0.1:") and line.rstrip().endswith("-> 8080"), line
        answer = fetch_forwarded(int(line.split(":")[1].split()[0]), b"served")
        assert answer.startswith(b"HTTP/1.") and b"served" in answer
    finally:
        forward.terminate()
        forward.wait(10)
        for stream in (forward.stdout, forward.stderr):
            if stream is not None:
                stream.close()


def test_attach(cluster: Cluster) -> None:
    """`skiff attach -i`: the container's own stdin (its spec's stdin: true) and output."""
    cluster.run("reader", containers=[{"name": "main", "image": IMAGE, "stdin": True, "stdinOnce": True,
                                       "command": ["sh", "-c", "read x; echo heard $x"]}])
    done = subprocess.run([SKIFF, "attach", "-i", "reader", "--server", cluster.api_socket], input="you\n",
                          capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout) == (0, "heard you\n"), done.stderr
