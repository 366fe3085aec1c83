"""Kubernetes' own client against skiff: kubectl 1.20 (Debian's kubernetes-client, which
speaks SPDY/3.1 for exec, attach and port-forward) with a kubeconfig for the API server on
TCP, TLS and a bearer token, over the cluster of test_orchestrator_logs_exec.py (API server,
node agent, CRI service in this process). kubectl reads discovery, gets the pod, then
upgrades its exec or port-forward request, which the API server carries to the node's CRI
streaming server (orchestrator/upgrade_proxy.py).

The kubectl binary is unpacked from Debian's package into a cache, not installed (a host may
have another kubectl on PATH, as the development machine's 1.32 that speaks WebSocket first):
`apt-get download` and `dpkg-deb -x`, as tests/vm/image.py unpacks its kernel."""

from __future__ import annotations

import fcntl
import os
import queue
import re
import signal
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cri_fixture import IMAGE
from orchestrator_fixture import eventually
from test_orchestrator_logs_exec import (Cluster, _connections, cluster,  # noqa: F401 (the fixture, reused)
                                        fetch_forwarded)

from skiff.orchestrator.api.kinds import BY_KIND
from skiff.orchestrator.api.tables import human_duration
from skiff.orchestrator.apiserver import ApiServer

PACKAGE = "kubernetes-client"   # Debian 12: kubectl 1.20
TOKEN = "kubectl-test-token"


def _cache() -> Path:
    return Path(os.environ.get("SKIFF_KUBECTL_CACHE", "/var/cache/skiff-kubectl"))


def _run(argv: list[str], cwd: Path | None = None) -> str:
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit status {done.returncode}: {done.stderr.strip()[-300:]}")
    return done.stdout


def _fetch(cache: Path) -> Path:
    """kubectl of the candidate version of PACKAGE, unpacked into `cache` once."""
    show = _run(["apt-cache", "show", "--no-all-versions", PACKAGE])
    version = next(line.split(":", 1)[1].strip() for line in show.splitlines() if line.startswith("Version:"))
    unpacked = cache / f"{PACKAGE}_{version}"
    if not unpacked.is_dir():
        with tempfile.TemporaryDirectory(prefix="fetch-", dir=cache) as tmp:
            _run(["apt-get", "download", "-q", f"{PACKAGE}={version}"], cwd=Path(tmp))
            (deb,) = Path(tmp).glob("*.deb")
            _run(["dpkg-deb", "-x", str(deb), f"{tmp}/unpacked"])
            Path(tmp, "unpacked").rename(unpacked)
    return unpacked / "usr/bin/kubectl"


@pytest.fixture(scope="session")
def kubectl_binary() -> Path:
    cache = _cache()
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            try:
                return _fetch(cache)
            except (RuntimeError, StopIteration):   # a fresh machine has no package lists yet
                subprocess.run(["apt-get", "update", "-qq"], capture_output=True, timeout=600)
                return _fetch(cache)
        except (RuntimeError, StopIteration, OSError) as e:
            cached = sorted(cache.glob(f"{PACKAGE}_*/usr/bin/kubectl"))
            if cached:   # offline: one fetched before is as good
                return cached[-1]
            pytest.skip(f"requires kubectl 1.20 (Debian package {PACKAGE}, fetched into {cache}): {e}")


@dataclass
class Kubectl:
    binary: Path
    home: Path
    cluster: Cluster

    def argv(self, *args: str) -> list[str]:
        return [str(self.binary), f"--kubeconfig={self.home / 'config'}", *args]

    def env(self) -> dict[str, str]:
        """HOME the test's own: kubectl keeps its discovery cache under it."""
        return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.home)}

    def run(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:  # noqa: A002
        return subprocess.run(self.argv(*args), input=input, capture_output=True, text=True, timeout=60,
                              env=self.env())

    def start(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(self.argv(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=self.env())


@pytest.fixture
def kubectl(kubectl_binary: Path, cluster: Cluster, tmp_path: Path) -> Iterator[Kubectl]:  # noqa: F811
    """kubectl 1.20 with a kubeconfig for the cluster's API server, served on TCP as well."""
    home = tmp_path / "kubectl"
    home.mkdir()
    cert, key = home / "tls.crt", home / "tls.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    server = ApiServer(cluster.registry, tcp=("127.0.0.1", 0), tls=(str(cert), str(key)), tokens=(TOKEN,))
    server.start()
    (home / "config").write_text(f"""apiVersion: v1
kind: Config
clusters:
- name: skiff
  cluster: {{server: "{server.address}", certificate-authority: "{cert}"}}
users:
- name: admin
  user: {{token: {TOKEN}}}
contexts:
- name: skiff
  context: {{cluster: skiff, user: admin, namespace: default}}
current-context: skiff
""")
    try:
        yield Kubectl(kubectl_binary, home, cluster)
    finally:
        server.stop()


def test_get_pods(kubectl: Kubectl) -> None:
    """Discovery: without /api and /api/v1, kubectl knows no resource type "pods"."""
    kubectl.cluster.run("web", "sleep", "3600")
    done = kubectl.run("get", "pods", "-o", "name")
    assert (done.returncode, done.stdout) == (0, "pod/web\n"), done.stderr


def test_get_all(kubectl: Kubectl) -> None:
    """`kubectl get all`: the resources whose discovery names the category "all"."""
    kubectl.cluster.run("web", "sleep", "3600")
    kubectl.cluster.registry.create(BY_KIND["Service"], {"metadata": {"name": "front"}, "spec": {
        "selector": {"app": "web"}, "ports": [{"port": 80}]}})
    done = kubectl.run("get", "all", "-o", "name")
    assert (done.returncode, done.stdout) == (0, "pod/web\nservice/front\n"), done.stderr


def _rows(out: str) -> list[list[str]]:
    """kubectl's table, each line split into its cells (columns are two spaces or more apart)."""
    return [re.split(r"\s{2,}", line.strip()) for line in out.splitlines()]


AGE = re.compile(r"\d+s")   # what a second-old object's AGE says


def test_get_pods_table(kubectl: Kubectl) -> None:
    """kubectl 1.20 prints what the server's Table says: without one, only NAME and AGE."""
    kubectl.cluster.run("web", "sleep", "3600")
    done = kubectl.run("get", "pods")
    assert done.returncode == 0, done.stderr
    header, row = _rows(done.stdout)
    assert header == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    assert row[:4] == ["web", "1/1", "Running", "0"] and AGE.fullmatch(row[4]), row

    one = kubectl.run("get", "pod", "web")   # one object: a Table of one row
    assert one.returncode == 0 and _rows(one.stdout)[1][:3] == ["web", "1/1", "Running"], (one.stdout, one.stderr)

    # -o wide: the columns of priority 1 too
    pod = kubectl.cluster.registry.get(BY_KIND["Pod"], "default", "web")
    wide = kubectl.run("get", "pods", "-o", "wide")
    assert wide.returncode == 0, wide.stderr
    header, row = _rows(wide.stdout)
    assert header == ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE", "NOMINATED NODE", "READINESS GATES"]
    assert row[5:] == [pod["status"].get("podIP", "<none>"), "node-1", "<none>", "<none>"], row

    # the rows carry the objects' metadata: what -A's NAMESPACE and --show-labels read
    labels = kubectl.run("get", "pods", "-A", "--show-labels")
    assert labels.returncode == 0, labels.stderr
    assert [r[0] for r in _rows(labels.stdout)] == ["NAMESPACE", "default"], labels.stdout
    assert _rows(labels.stdout)[0][-1] == "LABELS" and _rows(labels.stdout)[1][-1] == "<none>", labels.stdout


def test_get_services_and_deployments(kubectl: Kubectl) -> None:
    registry = kubectl.cluster.registry
    svc = registry.create(BY_KIND["Service"], {"metadata": {"name": "front"}, "spec": {
        "selector": {"app": "web"}, "ports": [{"name": "http", "port": 80}, {"name": "dns", "port": 53, "protocol": "UDP"}]}})
    done = kubectl.run("get", "services")
    assert done.returncode == 0, done.stderr
    header, row = _rows(done.stdout)
    assert header == ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"]
    assert row[:5] == ["front", "ClusterIP", svc["spec"]["clusterIP"], "<none>", "80/TCP,53/UDP"], row

    template = {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "main", "image": IMAGE, "command": ["sleep", "3600"]}]}}
    deployment = registry.create(BY_KIND["Deployment"], {"metadata": {"name": "web"}, "spec": {
        "replicas": 3, "selector": {"matchLabels": {"app": "web"}}, "template": template}})
    # no controllers run here: the status is the one a deployment controller would write
    registry.update(BY_KIND["Deployment"], {**deployment, "status": {
        "replicas": 3, "updatedReplicas": 3, "readyReplicas": 2, "availableReplicas": 2}})
    done = kubectl.run("get", "deployments", "-o", "wide")
    assert done.returncode == 0, done.stderr
    header, row = _rows(done.stdout)
    assert header == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE", "CONTAINERS", "IMAGES", "SELECTOR"]
    assert row[:4] == ["web", "2/3", "3", "2"] and row[5:] == ["main", IMAGE, "app=web"], row

    nodes = kubectl.run("get", "nodes")
    assert nodes.returncode == 0, nodes.stderr
    header, row = _rows(nodes.stdout)
    assert header == ["NAME", "STATUS", "ROLES", "AGE", "VERSION"]
    assert row[:3] == ["node-1", "Ready", "<none>"] and row[4] == "skiff", row


def test_get_watch_table(kubectl: Kubectl) -> None:
    """get -w: the list, then a row for each event (its Table without the columns: no second header)."""
    registry = kubectl.cluster.registry
    kubectl.cluster.run("web", "sleep", "3600")
    before = _sockets()
    watch = kubectl.start("get", "pods", "-w")
    assert watch.stdout is not None and watch.stderr is not None
    out = watch.stdout
    lines: queue.Queue[str] = queue.Queue()   # (a thread: a select on the pipe misses what is buffered)

    def read() -> None:
        for line in out:
            lines.put(line)
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        seen = [lines.get(timeout=20), lines.get(timeout=20)]
        registry.create(BY_KIND["Pod"], {"metadata": {"name": "later"}, "spec": {
            "containers": [{"name": "main", "image": IMAGE}]}})   # on no node: it stays Pending
        seen.append(lines.get(timeout=20))
    finally:
        watch.send_signal(signal.SIGINT)
        watch.wait(timeout=10)
        reader.join(10)
        watch.stdout.close()
        watch.stderr.close()
    header, first, later = _rows("".join(seen))
    assert header == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"] and first[:3] == ["web", "1/1", "Running"]
    assert later[:4] == ["later", "0/1", "Pending", "0"], seen

    def watch_ended() -> bool:
        """The API server learns that kubectl went when it writes the next event: events until then."""
        nudge = registry.create(BY_KIND["Pod"], {"metadata": {"generateName": "nudge-"},
                                                 "spec": {"containers": [{"name": "main", "image": IMAGE}]}})
        registry.delete(BY_KIND["Pod"], "default", nudge["metadata"]["name"])
        return not _sockets() - before
    eventually(watch_ended, timeout=10)


def _sockets() -> set[str]:
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            found.add(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            pass   # (listdir's own)
    return {f for f in found if f.startswith("socket:")}


@pytest.mark.parametrize(("seconds", "shown"), [
    (5, "5s"), (119, "119s"), (190, "3m10s"), (600, "10m"), (3 * 3600 + 60, "3h1m"), (9 * 3600, "9h"),
    (2 * 86400 + 3 * 3600, "2d3h"), (10 * 86400, "10d"), (800 * 86400, "2y70d"), (-1, "0s"), (-5, "<invalid>")])
def test_human_duration(seconds: int, shown: str) -> None:
    """Ages as kubectl prints them (apimachinery duration.HumanDuration)."""
    assert human_duration(seconds) == shown


def test_exec(kubectl: Kubectl) -> None:
    kubectl.cluster.run("web", "sleep", "3600")
    done = kubectl.run("exec", "web", "--", "echo", "hi")
    assert (done.returncode, done.stdout) == (0, "hi\n"), done.stderr

    both = kubectl.run("exec", "web", "-c", "main", "--", "sh", "-c", "echo out; echo err >&2")
    assert (both.returncode, both.stdout, both.stderr) == (0, "out\n", "err\n")

    piped = kubectl.run("exec", "-i", "web", "--", "cat", input="through kubectl\nand back\n")
    assert (piped.returncode, piped.stdout) == (0, "through kubectl\nand back\n"), piped.stderr

    # kubectl exits with the command's code (the Status on the error stream says it)
    failed = kubectl.run("exec", "-i", "web", "--", "sh", "-c", "tr a-z A-Z; exit 3", input="shout\n")
    assert (failed.returncode, failed.stdout) == (3, "SHOUT\n"), failed.stderr

    # the command ends with most of its stdin unread: its output and exit code come back
    # (the streaming server closes with kubectl's stdin unread, and the API server's writes fail)
    big = "first\n" + ("x" * 1023 + "\n") * 8192   # 8 MiB
    head = kubectl.run("exec", "-i", "web", "--", "sh", "-c", "head -1; exit 4", input=big)
    assert (head.returncode, head.stdout) == (4, "first\n"), head.stderr

    missing = kubectl.run("exec", "ghost", "--", "true")
    assert missing.returncode == 1 and "pods 'ghost' not found" in missing.stderr, missing.stderr


def test_exec_with_a_terminal(kubectl: Kubectl) -> None:
    """-t wants a terminal on kubectl's side: `script` gives it one, of a size kubectl sends on."""
    kubectl.cluster.run("web", "sleep", "3600")
    command = " ".join(kubectl.argv("exec", "-it", "web", "--", "sh", "-c", "'tty; sleep 0.5; stty size; exit 5'"))
    # (the sleep: kubectl sends its terminal's size once the streams are up, as the command starts)
    done = subprocess.run(["script", "-qec", f"stty rows 33 cols 101; {command}", "/dev/null"], input="",
                          capture_output=True, text=True, timeout=60, env=kubectl.env())
    assert done.returncode == 5, (done.stdout, done.stderr)
    # (script's own terminal shows what came back; what it sends at its stdin's end echoes as ^@)
    assert "/dev/pts/0\n" in done.stdout and "33 101\n" in done.stdout, done.stdout


def test_attach(kubectl: Kubectl) -> None:
    """kubectl attach -i: its stdin to the container's (closed at its end: stdinOnce), the
    container's output back; kubectl ends with the container."""
    kubectl.cluster.run("echo", containers=[{
        "name": "main", "image": IMAGE, "stdin": True, "stdinOnce": True,
        "command": ["sh", "-c", "while read line; do echo got $line; done; echo bye"]}])
    done = kubectl.run("attach", "-i", "echo", input="one\ntwo\n")
    assert (done.returncode, done.stdout) == (0, "got one\ngot two\nbye\n"), done.stderr

    # -t: a shell on the container's own terminal, sized as kubectl's (script's) is
    kubectl.cluster.run("tty", containers=[{"name": "main", "image": IMAGE, "stdin": True, "tty": True,
                                            "command": ["sh"]}])
    command = " ".join(kubectl.argv("attach", "-it", "tty"))
    shell = subprocess.run(["script", "-qec", f"stty rows 33 cols 101; {command}", "/dev/null"],
                           input="stty size; exit 7\n", capture_output=True, text=True, timeout=60, env=kubectl.env())
    assert shell.returncode == 0 and "\n33 101\n" in shell.stdout, (shell.stdout, shell.stderr)


def test_port_forward(kubectl: Kubectl) -> None:
    kubectl.cluster.run("www", "sh", "-c", "mkdir -p /www && echo served > /www/index.html && "
                        "exec httpd -f -p 8080 -h /www")
    forward = kubectl.start("port-forward", "pod/www", ":8080")
    try:
        assert forward.stdout is not None
        line = forward.stdout.readline()
        assert line.startswith("Forwarding from 127.0.0.1:") and line.rstrip().endswith("-> 8080"), line
        local = int(line.split(":")[1].split()[0])
        for attempt in range(3):   # a connection each time, each a pair of SPDY streams
            answer = fetch_forwarded(local, b"served")
            assert answer.startswith(b"HTTP/1.") and answer.endswith(b"served\n"), (attempt, answer)
    finally:
        forward.send_signal(signal.SIGINT)
        _, err = forward.communicate(timeout=10)
    assert forward.returncode == 0, err


def test_logs_follow(kubectl: Kubectl) -> None:
    kubectl.cluster.run("talk", "sh", "-c", "echo first; sleep 1; echo second; sleep 0.5")
    done = kubectl.run("logs", "-f", "talk")
    assert (done.returncode, done.stdout) == (0, "first\nsecond\n"), done.stderr

    # A follower that goes away: the API server stops following for it.
    kubectl.cluster.run("quiet", "sh", "-c", "echo hello; exec sleep 3600")
    follower = kubectl.start("logs", "-f", "quiet")
    try:
        assert follower.stdout is not None
        assert follower.stdout.readline() == "hello\n"
    finally:
        follower.send_signal(signal.SIGINT)
        follower.communicate(timeout=10)
    eventually(lambda: _connections(kubectl.cluster.agent_socket) == 1, timeout=10)

