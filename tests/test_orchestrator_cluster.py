"""`skiff cluster up`: several nodes on this machine, each a network namespace with its own CRI
service, node agent and service proxy, driven through the CLI as a user would. A Deployment of
busybox httpd behind a Service: the virtual IP and the node ports answer from every replica,
from the host and from a pod on another node; a killed process is restarted, a deleted pod
replaced, an image update rolled out and undone with the service answering throughout. A Job
runs to its completions. A node whose agent stops goes NotReady and its pods come back on the
others. `skiff cluster down` leaves nothing behind (the leak check)."""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cri_fixture import IMAGE
from orchestrator_fixture import eventually
from registry_fixture import Registry, registry, skopeo_copy  # noqa: F401 (registry: a fixture)

from skiff.orchestrator.api.kinds import BY_KIND
from skiff.orchestrator.client import ApiClient, RemoteRegistry
from skiff.orchestrator.controllers.base import is_ready

PODS, NODES, JOBS = BY_KIND["Pod"], BY_KIND["Node"], BY_KIND["Job"]
IMAGE_2 = IMAGE.replace(":1", ":2")
# httpd answers with its pod's name; on SIGTERM it keeps serving for a moment, as a pod with a
# preStop pause does, so that the proxies drop it before it goes.
SERVE = ("mkdir -p /www && hostname > /www/index.html && httpd -f -p 8080 -h /www & "
         "trap 'sleep 1; kill $!; exit 0' TERM; wait")
WEB = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 5
      containers:
      - name: httpd
        image: IMAGE
        command: [/bin/sh, -c, "SERVE"]
        ports: [{name: http, containerPort: 8080}]
        readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  type: NodePort
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
""".replace("IMAGE", IMAGE).replace("SERVE", SERVE)


@pytest.fixture(scope="module")
def second_tag(cri_images_root: str) -> str:
    """The test image under a second name: an "image update" for the rollout."""
    from skiff.images.service import Images

    Images(cri_images_root).store.tag(IMAGE, IMAGE_2)
    return IMAGE_2


class Cluster:
    def __init__(self, name: str, env: dict[str, str]) -> None:
        self.name = name
        self.env = env
        self.socket = f"/run/skiff/clusters/{name}/api.sock"
        self.api = RemoteRegistry(ApiClient(self.socket))

    def skiff(self, *args: str, stdin: str | None = None, check: bool = True) -> str:
        done = subprocess.run([sys.executable, "-m", "skiff.cli", *args], input=stdin, capture_output=True, text=True,
                              env={**os.environ, **self.env, "SKIFF_API": self.socket}, timeout=120)
        if check:
            assert done.returncode == 0, f"skiff {' '.join(args)}: {done.stderr}"
        return done.stdout

    def pods(self, label: str = "app=web") -> list[dict[str, Any]]:
        from skiff.orchestrator.labels import parse

        return [p for p in self.api.list(PODS, "default", labels=parse(label)).items
                if not p["metadata"].get("deletionTimestamp")]

    def serving(self, replicas: int) -> bool:
        pods = self.pods()
        return len(pods) == replicas and all(is_ready(p) for p in pods) and len(self.endpoints()) == replicas

    def endpoints(self) -> list[str]:
        try:
            subsets = self.api.get(BY_KIND["Endpoints"], "default", "web").get("subsets") or []
        except Exception:
            return []
        return [a["ip"] for s in subsets for a in s.get("addresses") or []]

    def node_port(self) -> int:
        return int(self.api.get(BY_KIND["Service"], "default", "web")["spec"]["ports"][0]["nodePort"])

    def cluster_ip(self) -> str:
        return str(self.api.get(BY_KIND["Service"], "default", "web")["spec"]["clusterIP"])

    def pids(self) -> dict[str, int]:
        return dict(json.loads(Path(f"/run/skiff/clusters/{self.name}/cluster.json").read_text())["pids"])


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=2) as reply:
        return str(reply.read().decode().strip())


def answers(url: str, tries: int = 60) -> set[str]:
    return {get(url) for _ in range(tries)}


@pytest.fixture
def local_registry(registry: Registry, cri_images_root: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The test image pushed to a registry on the host's loopback; the nodes are told it is
    plain HTTP (SKIFF_REGISTRIES, which `cluster up` passes on to their CRI services)."""
    skopeo_copy(Path(cri_images_root).parent / "layout", "1", registry, "skiff/busybox:1", tmp=tmp_path)
    config = tmp_path / "registries.toml"
    config.write_text(f'[registries."{registry.host}"]\ninsecure = true\n')
    monkeypatch.setenv("SKIFF_REGISTRIES", str(config))   # asked for before `cluster`, which passes it on
    return f"{registry.host}/skiff/busybox:1"


@pytest.fixture
def cluster(cri_images_root: str, tmp_path: Path) -> Iterator[Cluster]:
    name = f"t{uuid.uuid4().hex[:6]}"
    c = Cluster(name, {k: v for k, v in os.environ.items() if k == "SKIFF_REGISTRIES"})
    # Fast timings for the test: a node silent 3 s is NotReady, its pods go 2 s later.
    out = c.skiff("cluster", "up", "--name", name, "--nodes", "2", "--images-root", cri_images_root,
                  "--node-monitor-grace-period", "3", "--pod-eviction-timeout", "2",
                  "--node-status-update-frequency", "0.5")
    assert f"cluster {name}: 2 nodes Ready" in out
    try:
        yield c
    finally:
        down = c.skiff("cluster", "down", "--name", name)
        assert f"cluster {name}:" in down and "2 nodes down" in down
        assert not Path(f"/run/skiff/clusters/{name}").exists()


def exec_in(c: Cluster, pod: dict[str, Any], *command: str) -> str:
    return c.skiff("exec", pod["metadata"]["name"], "--", *command)


def http_from_pod(c: Cluster, pod: dict[str, Any], address: str, port: int) -> str:
    # busybox-static's wget crashes resolving; nc speaks HTTP/1.0 well enough
    return exec_in(c, pod, "sh", "-c", f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 {address} {port} | tail -1").strip()


def test_a_service_spans_nodes_through_restarts_and_rollouts(cluster: Cluster, second_tag: str) -> None:
    c = cluster
    assert [n.split()[:2] for n in c.skiff("get", "nodes").splitlines()[1:]] == [["node1", "Ready"], ["node2", "Ready"]]
    c.skiff("apply", "-f", "-", stdin=WEB)
    eventually(lambda: c.serving(3), timeout=60)
    pods = c.pods()
    names = {p["metadata"]["name"] for p in pods}
    assert {p["spec"]["nodeName"] for p in pods} == {"node1", "node2"}   # spread over the nodes
    assert {p["status"]["podIP"].rsplit(".", 1)[0] for p in pods} == {"10.244.1", "10.244.2"}

    # The virtual IP from the host (routed to node 1's proxy), a node port on each node.
    assert answers(f"http://{c.cluster_ip()}/") == names
    for node in ("10.200.0.11", "10.200.0.12"):
        assert answers(f"http://{node}:{c.node_port()}/", 30) <= names
    # From a pod: another node's pod directly, and the service (itself included: hairpin).
    one = next(p for p in pods if p["spec"]["nodeName"] == "node1")
    other = next(p for p in pods if p["spec"]["nodeName"] == "node2")
    assert http_from_pod(c, one, other["status"]["podIP"], 8080) == other["metadata"]["name"]
    seen = exec_in(c, one, "sh", "-c", "for i in $(seq 40); do printf 'GET / HTTP/1.0\\r\\n\\r\\n' | "
                   f"nc -w 2 {c.cluster_ip()} 80 | tail -1; echo; done").split()
    assert set(seen) == names

    # A killed process is restarted in place; a deleted pod is replaced.
    exec_in(c, one, "kill", "1")
    eventually(lambda: any(int(s.get("restartCount", 0)) >= 1
                           for p in c.pods() for s in p["status"].get("containerStatuses") or []), timeout=30)
    c.skiff("delete", "pod", other["metadata"]["name"])
    eventually(lambda: c.serving(3) and other["metadata"]["name"] not in {p["metadata"]["name"] for p in c.pods()},
               timeout=60)

    # An image update rolls out, and undo rolls back, the service answering all along.
    failures: collections.Counter[str] = collections.Counter()
    stop = threading.Event()

    def keep_asking() -> None:
        while not stop.is_set():
            try:
                get(f"http://{c.cluster_ip()}/")
                failures["ok"] += 1
            except OSError as e:
                failures[str(e)] += 1
            time.sleep(0.02)
    asking = threading.Thread(target=keep_asking)
    asking.start()
    try:
        c.skiff("apply", "-f", "-", stdin=WEB.replace(IMAGE, second_tag))
        assert "successfully rolled out" in c.skiff("rollout", "status", "deployment/web")
        eventually(lambda: c.serving(3) and {p["spec"]["containers"][0]["image"] for p in c.pods()} == {second_tag},
                   timeout=60)
        c.skiff("rollout", "undo", "deployment/web")
        assert "successfully rolled out" in c.skiff("rollout", "status", "deployment/web")
        eventually(lambda: c.serving(3) and {p["spec"]["containers"][0]["image"] for p in c.pods()} == {IMAGE},
                   timeout=60)
    finally:
        stop.set()
        asking.join()
    assert failures["ok"] > 50 and set(failures) == {"ok"}, failures

    # A Job with completions 5 and parallelism 2, and one that fails to its backoffLimit.
    c.skiff("apply", "-f", "-", stdin=f"""
apiVersion: batch/v1
kind: Job
metadata: {{name: five}}
spec:
  completions: 5
  parallelism: 2
  template:
    spec:
      restartPolicy: Never
      containers: [{{name: c, image: {IMAGE}, command: [sh, -c, "sleep 0.2"]}}]
---
apiVersion: batch/v1
kind: Job
metadata: {{name: broken}}
spec:
  backoffLimit: 1
  template:
    spec:
      restartPolicy: Never
      containers: [{{name: c, image: {IMAGE}, command: ["false"]}}]
""")
    eventually(lambda: (c.api.get(JOBS, "default", "five").get("status") or {}).get("succeeded") == 5, timeout=60)
    eventually(lambda: (c.api.get(JOBS, "default", "broken").get("status") or {}).get("failed") == 2, timeout=60)
    assert any(cond["reason"] == "BackoffLimitExceeded" for cond in c.api.get(JOBS, "default", "broken")["status"]["conditions"])


def test_the_pods_of_a_node_whose_agent_stops_come_back_elsewhere(cluster: Cluster) -> None:
    c = cluster
    c.skiff("apply", "-f", "-", stdin=WEB)
    eventually(lambda: c.serving(3), timeout=60)
    assert any(p["spec"]["nodeName"] == "node2" for p in c.pods())
    os.kill(c.pids()["node2/agent"], signal.SIGKILL)

    def node2() -> str:
        ready = [x for x in c.api.get(NODES, "", "node2")["status"]["conditions"] if x["type"] == "Ready"]
        return str(ready[0]["status"])
    eventually(lambda: node2() == "Unknown", timeout=20)
    eventually(lambda: c.serving(3) and {p["spec"]["nodeName"] for p in c.pods()} == {"node1"}, timeout=60)
    assert answers(f"http://{c.cluster_ip()}/", 30) <= {p["metadata"]["name"] for p in c.pods()}
    assert "NotReady" in c.skiff("get", "nodes", "node2")


def test_a_node_pulls_from_a_registry_on_the_hosts_loopback(local_registry: str, cluster: Cluster) -> None:
    """The node's CRI service runs in the node's network namespace, where 127.0.0.1 is the
    node's own; its pulls still go out from the host's."""
    c = cluster
    c.skiff("apply", "-f", "-", stdin=f"""
apiVersion: v1
kind: Pod
metadata: {{name: pulled, labels: {{app: pulled}}}}
spec:
  nodeSelector: {{kubernetes.io/hostname: node2}}
  terminationGracePeriodSeconds: 0
  containers: [{{name: c, image: "{local_registry}", imagePullPolicy: Always, command: [sleep, "3600"]}}]
""")
    eventually(lambda: (c.pods("app=pulled") or [{}])[0].get("status", {}).get("phase") == "Running", timeout=60)
    assert c.pods("app=pulled")[0]["spec"]["nodeName"] == "node2"
    assert exec_in(c, c.pods("app=pulled")[0], "echo", "pulled").strip() == "pulled"
    # interactive exec: the node's CRI streaming server listens on the node's address
    assert c.skiff("exec", "-i", "pulled", "--", "cat", stdin="from the host\n") == "from the host\n"
