"""`skiff control-plane` as a process and the kubectl-shaped commands against it: apply, get
(tables, -l, -o yaml), delete, and a bad manifest refused whole."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from cri_fixture import Cri

SKIFF = os.path.join(os.path.dirname(sys.executable), "skiff")
APP = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 1
      containers: [{name: httpd, image: busybox, command: [httpd, -f]}]
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
"""


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[str]:
    sock = str(tmp_path / "api.sock")
    process = subprocess.Popen([SKIFF, "control-plane", "--store", f"sqlite:{tmp_path / 'state.db'}", "--listen", sock],
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    while not os.path.exists(sock):
        assert process.poll() is None and time.monotonic() < deadline, "the control plane did not start"
        time.sleep(0.05)
    yield sock
    process.send_signal(signal.SIGTERM)
    assert process.wait(20) == 0
    assert not os.path.exists(sock)
    assert process.stderr is not None
    process.stderr.close()


def skiff(sock: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SKIFF, *args, "--server", sock], input=stdin, capture_output=True, text=True, timeout=60)


def test_apply_get_delete(plane: str, tmp_path: Path) -> None:
    (tmp_path / "app.yaml").write_text(APP)
    done = skiff(plane, "apply", "-f", str(tmp_path / "app.yaml"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["deployment.apps/web created", "service/web created"]
    assert skiff(plane, "apply", "-f", "-", stdin=APP).stdout.splitlines() == [
        "deployment.apps/web unchanged", "service/web unchanged"]
    deadline = time.monotonic() + 20
    while len(skiff(plane, "get", "po", "-l", "app=web").stdout.splitlines()) != 3:
        assert time.monotonic() < deadline, skiff(plane, "get", "po").stdout
        time.sleep(0.1)
    table = skiff(plane, "get", "pods", "-l", "app=web").stdout.splitlines()
    assert table[0].split() == ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE"]
    assert all(line.split()[1:3] == ["0/1", "Pending"] for line in table[1:])  # no node yet
    assert skiff(plane, "get", "deploy").stdout.splitlines()[0].split() == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE",
                                                                            "AGE"]
    first = table[1].split()[0]
    described = skiff(plane, "describe", "po", first).stdout
    assert f"Name:           {first}" in described and "Controlled By:  ReplicaSet/web-" in described
    assert "PodScheduled   False    Unschedulable   0/0 nodes are available: no nodes registered." in described
    assert "Replicas:       2 desired" in skiff(plane, "describe", "deploy", "web").stdout
    svc = yaml.safe_load(skiff(plane, "get", "svc", "web", "-o", "yaml").stdout)
    assert svc["kind"] == "Service" and svc["spec"]["ports"][0]["port"] == 80
    assert "No resources found in kube-system namespace." in skiff(plane, "get", "po", "-n", "kube-system").stdout

    bad = APP.replace("replicas: 2", "replicas: -2") + "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: new}\n"
    refused = skiff(plane, "apply", "-f", "-", stdin=bad)
    assert refused.returncode == 1
    assert "document 1 (Deployment web): spec.replicas: -2: must be greater than or equal to 0" in refused.stderr
    assert "No resources found" in skiff(plane, "get", "cm").stdout  # nothing of it was applied

    assert skiff(plane, "delete", "-f", str(tmp_path / "app.yaml")).stdout.splitlines() == [
        'deployment.apps "web" deleted', 'service "web" deleted']
    while "No resources found" not in skiff(plane, "get", "po").stdout:
        assert time.monotonic() < deadline + 20, "the deployment's pods stayed"
        time.sleep(0.1)
    missing = skiff(plane, "get", "deploy", "web")
    assert missing.returncode == 1 and "deployments 'web' not found in namespace 'default'" in missing.stderr


def test_a_deployment_runs_on_a_node_agent(plane: str, cri: Cri, tmp_path: Path) -> None:
    """End to end: the control plane process, a node agent process on this host's CRI service
    (in the test's process), a Deployment applied with the CLI, its pods Running with IPs."""
    from cri_api.v1 import api_pb2 as pb
    from cri_fixture import IMAGE

    agent = subprocess.Popen([SKIFF, "node-agent", "--server", plane, "--name", "node-1", "--cri-socket",
                              cri.config.socket, "--log-root", cri.config.log_root, "--root", str(tmp_path / "agent")],
                             stderr=subprocess.PIPE, text=True)
    try:
        app = APP.replace("image: busybox, command: [httpd, -f]", f"image: {IMAGE}, command: [sleep, '3600']")
        assert skiff(plane, "apply", "-f", "-", stdin=app).returncode == 0
        deadline = time.monotonic() + 60
        while True:
            rows = [line.split() for line in skiff(plane, "get", "po", "-l", "app=web").stdout.splitlines()[1:]]
            if len(rows) == 2 and all(r[1:3] == ["1/1", "Running"] and r[6] == "node-1" for r in rows):
                break
            assert time.monotonic() < deadline, rows
            time.sleep(0.2)
        assert all(r[5].startswith("10.123.0.") for r in rows)
        assert skiff(plane, "get", "no").stdout.splitlines()[1].split()[:2] == ["node-1", "Ready"]
        assert skiff(plane, "scale", "deploy", "web", "--replicas", "3").stdout.strip() == "deployment.apps/web scaled"
        assert skiff(plane, "rollout", "status", "deployment/web").stdout.strip() == \
            'deployment "web" successfully rolled out'
        assert len(skiff(plane, "get", "po", "-l", "app=web").stdout.splitlines()) == 4
        assert skiff(plane, "apply", "-f", "-", stdin=app.replace("'3600'", "'3601'").replace(
            "replicas: 2", "replicas: 3")).returncode == 0
        assert "successfully rolled out" in skiff(plane, "rollout", "status", "deployment/web").stdout
        history = skiff(plane, "rollout", "history", "deployment/web").stdout.splitlines()
        assert [line.split()[0] for line in history[2:]] == ["1", "2"]
        assert skiff(plane, "rollout", "undo", "deployment/web").returncode == 0
        assert "successfully rolled out" in skiff(plane, "rollout", "status", "deployment/web").stdout
        assert [line.split()[0] for line in skiff(plane, "rollout", "history", "web").stdout.splitlines()[2:]] == ["2", "3"]
        assert skiff(plane, "delete", "deploy", "web").returncode == 0
        while cri.runtime.ListPodSandbox(pb.ListPodSandboxRequest()).items:
            assert time.monotonic() < deadline, "the pods' sandboxes stayed"
            time.sleep(0.2)
    finally:
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(30) == 0
        assert agent.stderr is not None
        agent.stderr.close()


def test_a_node_joins_over_tls_with_a_token(cri: Cri, tmp_path: Path) -> None:
    """`skiff control-plane --tcp` serves TLS with tokens; `skiff node join` runs pods from it;
    a wrong token gets nothing."""
    import socket

    from cri_api.v1 import api_pb2 as pb
    from cri_fixture import IMAGE

    cert, key, tokens = tmp_path / "tls.crt", tmp_path / "tls.key", tmp_path / "tokens"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    tokens.write_text("s3cret\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"https://127.0.0.1:{port}"
    sock = str(tmp_path / "api.sock")
    plane = subprocess.Popen([SKIFF, "control-plane", "--store", f"sqlite:{tmp_path / 'state.db'}", "--listen", sock,
                              "--tcp", f"127.0.0.1:{port}", "--tls-cert", str(cert), "--tls-key", str(key),
                              "--token-file", str(tokens)], stderr=subprocess.PIPE, text=True)
    node = None
    try:
        deadline = time.monotonic() + 20
        while not os.path.exists(sock):
            assert plane.poll() is None and time.monotonic() < deadline, "the control plane did not start"
            time.sleep(0.05)
        remote = ("--server", url, "--certificate-authority", str(cert))
        wrong = subprocess.run([SKIFF, "get", "ns", *remote, "--token", "guess"], capture_output=True, text=True)
        assert wrong.returncode == 1 and "Unauthorized" in wrong.stderr
        node = subprocess.Popen([SKIFF, "node", "join", url, "--token", "s3cret", "--certificate-authority", str(cert),
                                 "--name", "far", "--cri-socket", cri.config.socket, "--log-root", cri.config.log_root,
                                 "--root", str(tmp_path / "agent")], stderr=subprocess.PIPE, text=True)
        pod = (f"apiVersion: v1\nkind: Pod\nmetadata: {{name: p}}\nspec:\n  containers: [{{name: c, image: {IMAGE}, "
               "command: [sleep, '3600']}]\n")
        assert subprocess.run([SKIFF, "apply", "-f", "-", *remote, "--token", "s3cret"], input=pod, text=True,
                              capture_output=True).returncode == 0
        while "Running" not in skiff(sock, "get", "po", "p").stdout:
            assert time.monotonic() < deadline + 40, skiff(sock, "get", "po", "p").stdout
            time.sleep(0.2)
        assert skiff(sock, "get", "po", "p").stdout.splitlines()[1].split()[6] == "far"
        skiff(sock, "delete", "po", "p", "--grace-period", "1")
        while cri.runtime.ListPodSandbox(pb.ListPodSandboxRequest()).items:
            assert time.monotonic() < deadline + 60, "the pod's sandbox stayed"
            time.sleep(0.2)
    finally:
        for process in (node, plane):
            if process is not None:
                process.send_signal(signal.SIGTERM)
                assert process.wait(30) == 0
                assert process.stderr is not None
                process.stderr.close()


def test_get_watch_prints_a_line_per_change(plane: str) -> None:
    watching = subprocess.Popen([SKIFF, "get", "cm", "-w", "--server", plane], stdout=subprocess.PIPE, text=True)
    try:
        assert watching.stdout is not None
        assert watching.stdout.readline().split() == ["NAME", "AGE"]   # the table, empty
        for name in ("one", "two"):
            assert skiff(plane, "apply", "-f", "-", stdin=f"apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}}}\n"
                         ).returncode == 0
            assert watching.stdout.readline().split()[0] == name
        skiff(plane, "delete", "cm", "one")
        assert watching.stdout.readline().split()[0] == "one"            # its last state, as kubectl shows it
    finally:
        watching.terminate()
        watching.wait(10)
        if watching.stdout is not None:
            watching.stdout.close()


def test_apply_takes_out_what_the_last_applied_file_had(plane: str) -> None:
    first = """apiVersion: v1
kind: Service
metadata: {name: db, labels: {tier: data, team: a}}
spec: {type: NodePort, selector: {app: db}, ports: [{port: 5432}], sessionAffinity: ClientIP}
"""
    assert skiff(plane, "apply", "-f", "-", stdin=first).stdout.strip() == "service/db created"
    before = yaml.safe_load(skiff(plane, "get", "svc", "db", "-o", "yaml").stdout)
    second = first.replace(", team: a", "").replace(", sessionAffinity: ClientIP", "")
    assert skiff(plane, "apply", "-f", "-", stdin=second).stdout.strip() == "service/db configured"
    assert skiff(plane, "apply", "-f", "-", stdin=second).stdout.strip() == "service/db unchanged"
    after = yaml.safe_load(skiff(plane, "get", "svc", "db", "-o", "yaml").stdout)
    assert after["metadata"]["labels"] == {"tier": "data"} and "sessionAffinity" not in after["spec"]
    # what the server filled in stays: the virtual IP and the node port
    assert after["spec"]["clusterIP"] == before["spec"]["clusterIP"]
    assert after["spec"]["ports"][0]["nodePort"] == before["spec"]["ports"][0]["nodePort"]
    assert json.loads(after["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
                      )["metadata"]["labels"] == {"tier": "data"}
