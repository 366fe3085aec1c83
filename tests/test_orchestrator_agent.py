"""The node agent against a real CRI service (in this process, over its unix socket) and a
real store: the Node registered with a heartbeat, a pod run to Running with its IP, restart
policies, and a deleted pod's sandbox gone."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from orchestrator_fixture import eventually, running
from cri_api.v1 import api_pb2 as pb
from cri_fixture import IMAGE, Cri

from skiff.orchestrator.agent.node import NodeStatus
from skiff.orchestrator.agent.pods import POD_NAME, PodAgent
from skiff.orchestrator.api.kinds import BY_KIND
from skiff.orchestrator.api.registry import Registry

PODS, NODES = BY_KIND["Pod"], BY_KIND["Node"]


@pytest.fixture
def node(registry: Registry, cri: Cri, tmp_path: Path) -> Iterator[Registry]:
    status = NodeStatus(registry, "node-1", period=0.2)
    status.start()
    with running(registry, (PODS,), lambda inf: [PodAgent(
            registry, inf["Pod"], "node-1", cri.config.socket, log_root=cri.config.log_root,
            root=str(tmp_path / "agent"), resync=0.2, backoff_base=0.2)]):
        yield registry
    status.stop()


def pod(name: str, *command: str, restart: str = "Always") -> dict[str, Any]:
    return {"metadata": {"name": name},
            "spec": {"nodeName": "node-1", "restartPolicy": restart,
                     "containers": [{"name": "main", "image": IMAGE, "command": list(command)}]}}


def status(registry: Registry, name: str) -> dict[str, Any]:
    return registry.get(PODS, "default", name).get("status") or {}


def test_the_node_registers_and_beats(node: Registry) -> None:
    registered = node.get(NODES, "", "node-1")
    assert int(registered["status"]["capacity"]["cpu"]) >= 1 and registered["status"]["capacity"]["memory"].endswith("Ki")
    assert registered["metadata"]["labels"]["kubernetes.io/hostname"] == "node-1"
    first = registered["metadata"]["resourceVersion"]
    eventually(lambda: node.get(NODES, "", "node-1")["metadata"]["resourceVersion"] != first, timeout=5)


def test_a_pod_runs_reports_and_goes(node: Registry, cri: Cri) -> None:
    node.create(PODS, pod("web", "sleep", "3600"))
    eventually(lambda: status(node, "web").get("phase") == "Running"
               and any(c["type"] == "Ready" and c["status"] == "True" for c in status(node, "web")["conditions"]))
    s = status(node, "web")
    assert s["podIP"].startswith("10.123.0.") and s["containerStatuses"][0]["restartCount"] == 0
    assert "running" in s["containerStatuses"][0]["state"]
    # A graceful delete: Terminating until the agent has stopped it (sleep, as PID 1, ignores
    # SIGTERM: the grace period runs out), then gone.
    marked = node.delete(PODS, "default", "web", grace=1)
    assert marked["metadata"]["deletionTimestamp"] and marked["metadata"]["deletionGracePeriodSeconds"] == 1

    def sandboxes() -> int:
        return len(cri.runtime.ListPodSandbox(pb.ListPodSandboxRequest(filter=pb.PodSandboxFilter(
            label_selector={POD_NAME: "web"}))).items)
    eventually(lambda: sandboxes() == 0 and not node.list(PODS).items)


def test_restart_policies(node: Registry) -> None:
    node.create(PODS, pod("crash", "sh", "-c", "exit 3"))
    node.create(PODS, pod("once", "true", restart="Never"))
    node.create(PODS, pod("fails", "sh", "-c", "exit 2", restart="Never"))
    eventually(lambda: status(node, "once").get("phase") == "Succeeded")
    eventually(lambda: status(node, "fails").get("phase") == "Failed")
    assert status(node, "fails")["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 2
    eventually(lambda: (status(node, "crash").get("containerStatuses") or [{}])[0].get("restartCount", 0) >= 2)
    assert status(node, "crash")["phase"] in ("Running", "Pending")


def probed(name: str, command: str, **probes: Any) -> dict[str, Any]:
    p = pod(name, "sh", "-c", command)
    p["spec"]["containers"][0].update(probes)
    p["spec"]["containers"][0]["ports"] = [{"name": "http", "containerPort": 8080}]
    return p


def ready(registry: Registry, name: str) -> bool:
    return bool((status(registry, name).get("containerStatuses") or [{}])[0].get("ready"))


def test_probes(node: Registry, cri: Cri) -> None:
    fast = {"periodSeconds": 1, "failureThreshold": 1}
    node.create(PODS, probed("late", "sleep 1; touch /tmp/ready; exec sleep 3600",
                             readinessProbe={"exec": {"command": ["cat", "/tmp/ready"]}, **fast}))
    node.create(PODS, probed("web", "echo hi > /tmp/index.html; exec httpd -f -p 8080 -h /tmp",
                             readinessProbe={"httpGet": {"path": "/index.html", "port": "http"}, **fast},
                             livenessProbe={"tcpSocket": {"port": 8080}, **fast}))
    dead = probed("dead", "exec sleep 3600", livenessProbe={"exec": {"command": ["false"]}, **fast})
    dead["spec"]["terminationGracePeriodSeconds"] = 1
    node.create(PODS, dead)
    eventually(lambda: status(node, "late").get("phase") == "Running")
    assert not ready(node, "late")  # running, but its probe has not passed yet
    eventually(lambda: ready(node, "late"))
    eventually(lambda: ready(node, "web"))
    eventually(lambda: (status(node, "dead").get("containerStatuses") or [{}])[0].get("restartCount", 0) >= 1)
    late = status(node, "late")["containerStatuses"][0]["containerID"].removeprefix("skiff://")
    cri.exec(late, "rm", "/tmp/ready")
    eventually(lambda: not ready(node, "late"))
    assert (status(node, "web").get("containerStatuses") or [{}])[0].get("restartCount") == 0


def test_volumes(node: Registry, cri: Cri, tmp_path: Path) -> None:
    node.create(BY_KIND["Secret"], {"metadata": {"name": "db"}, "data": {"password": "aHVudGVyMg=="}})
    node.create(BY_KIND["ConfigMap"], {"metadata": {"name": "web"}, "data": {"greeting": "hello"}})
    p = pod("vols", "sleep", "3600")
    p["spec"]["volumes"] = [{"name": "db", "secret": {"secretName": "db"}}, {"name": "web", "configMap": {"name": "web"}},
                            {"name": "scratch", "emptyDir": {}}]
    p["spec"]["containers"][0]["volumeMounts"] = [{"name": "db", "mountPath": "/etc/db"},
                                                  {"name": "web", "mountPath": "/etc/web"},
                                                  {"name": "scratch", "mountPath": "/scratch"}]
    node.create(PODS, p)
    eventually(lambda: status(node, "vols").get("phase") == "Running")
    cid = status(node, "vols")["containerStatuses"][0]["containerID"].removeprefix("skiff://")
    assert cri.exec(cid, "cat", "/etc/db/password").stdout == b"hunter2"
    assert cri.exec(cid, "cat", "/etc/web/greeting").stdout == b"hello"
    assert cri.exec(cid, "sh", "-c", "echo x > /etc/db/new").exit_code != 0  # read-only
    assert cri.exec(cid, "sh", "-c", "echo x > /scratch/new").exit_code == 0
    uid = node.get(PODS, "default", "vols")["metadata"]["uid"]
    secret_dir = tmp_path / "agent" / "pods" / uid / "volumes" / "secret" / "db"
    with open("/proc/self/mountinfo") as f:
        assert any(line.split()[4] == str(secret_dir) for line in f)  # a tmpfs: never on disk
    node.delete(PODS, "default", "vols", grace=0)  # at once: the agent tears it down when it is gone
    eventually(lambda: not (tmp_path / "agent" / "pods" / uid).exists())
