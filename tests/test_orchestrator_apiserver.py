"""The API server over real sockets: Kubernetes' paths and Status codes on the unix socket, a
watch stream, discovery, the TCP listener that refuses every request without a valid token,
and upgraded requests carried to a stand-in for a node's CRI streaming server."""

from __future__ import annotations

import json
import os
import socket
import ssl
import stat
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from skiff.errors import Aborted, AlreadyExists, InvalidArgument, NotFound, OutOfRange, Unavailable
from skiff.orchestrator import subresources, upgrade_proxy
from skiff.orchestrator.api.registry import Registry
from skiff.orchestrator.apiserver import ApiServer, route
from skiff.orchestrator.client import ApiClient

PODS = "/api/v1/namespaces/default/pods"


@pytest.fixture
def api(registry: Registry, tmp_path: Path) -> Iterator[ApiClient]:
    server = ApiServer(registry, unix_socket=str(tmp_path / "api.sock"))
    server.start()
    yield ApiClient(server.address)
    server.stop()


def make_cert(directory: Path) -> tuple[str, str]:
    cert, key = directory / "tls.crt", directory / "tls.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return str(cert), str(key)


def pod(name: str, **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]}}


def test_create_get_list_replace_delete(api: ApiClient, tmp_path: Path) -> None:
    assert stat.S_IMODE(os.stat(tmp_path / "api.sock").st_mode) == 0o600
    created = api.request("POST", PODS, pod("a", app="web"))
    api.request("POST", PODS, pod("b", app="db"))
    assert api.request("GET", f"{PODS}/a")["metadata"]["uid"] == created["metadata"]["uid"]
    listing = api.request("GET", f"{PODS}?labelSelector=app%3Dweb")
    assert listing["kind"] == "PodList" and [p["metadata"]["name"] for p in listing["items"]] == ["a"]
    assert int(listing["metadata"]["resourceVersion"]) >= int(created["metadata"]["resourceVersion"])
    assert len(api.request("GET", "/api/v1/pods")["items"]) == 2
    changed = api.request("PUT", f"{PODS}/a", {**created, "spec": {**created["spec"], "nodeName": "n1"}})
    assert changed["metadata"]["generation"] == 2
    with pytest.raises(Aborted, match="the object has been modified"):
        api.request("PUT", f"{PODS}/a", created)
    with pytest.raises(AlreadyExists, match="already exists"):
        api.request("POST", PODS, pod("b"))
    with pytest.raises(InvalidArgument, match=r"spec.containers\[0\].image: required"):
        api.request("POST", PODS, {"metadata": {"name": "c"}, "spec": {"containers": [{"name": "c"}]}})
    with pytest.raises(InvalidArgument, match="does not match the name in the URL"):
        api.request("PUT", f"{PODS}/b", created)
    marked = api.request("DELETE", f"{PODS}/a")   # on a node: Terminating, until its agent is done
    assert marked["metadata"]["deletionTimestamp"] and api.request("GET", f"{PODS}/a")["metadata"]["deletionTimestamp"]
    api.request("DELETE", f"{PODS}/a?gracePeriodSeconds=0")
    with pytest.raises(NotFound, match="pods 'a' not found in namespace 'default'"):
        api.request("GET", f"{PODS}/a")
    with pytest.raises(NotFound, match="namespaces 'shop' not found"):
        api.request("POST", "/api/v1/namespaces/shop/pods", pod("x"))
    deploy = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
              "spec": {"selector": {"matchLabels": {"app": "web"}},
                       "template": {"metadata": {"labels": {"app": "web"}}, "spec": pod("x")["spec"]}}}
    assert api.request("POST", "/apis/apps/v1/namespaces/default/deployments", deploy)["kind"] == "Deployment"
    with pytest.raises(NotFound, match="could not find the requested resource"):
        api.request("GET", "/apis/batch/v1/namespaces/default/deployments")


def test_a_watch_streams_changes_from_a_revision(api: ApiClient) -> None:
    since = api.request("GET", PODS)["metadata"]["resourceVersion"]
    seen: list[tuple[str, str]] = []
    watcher = threading.Thread(target=lambda: seen.extend(
        (e["type"], e["object"]["metadata"]["name"])
        for e in api.watch(f"{PODS}?watch=true&resourceVersion={since}&timeoutSeconds=1&labelSelector=app%3Dweb",
                           timeout=1)))
    watcher.start()
    api.request("POST", PODS, pod("a", app="web"))
    api.request("POST", PODS, pod("b", app="db"))
    api.request("DELETE", f"{PODS}/a")
    watcher.join(10)
    assert seen == [("ADDED", "a"), ("DELETED", "a")]


def test_a_watch_from_a_compacted_revision_ends_with_410(api: ApiClient) -> None:
    obj = api.request("POST", PODS, pod("a"))
    for _ in range(2000):
        obj = api.request("PUT", f"{PODS}/a", obj)
    with pytest.raises(OutOfRange, match="too old"):
        list(api.watch(f"{PODS}?watch=true&resourceVersion=1&timeoutSeconds=1", timeout=1))


def test_routes() -> None:
    r = route("/api/v1/namespaces/ns1/services/web")
    assert (r.kind.kind, r.namespace, r.name) == ("Service", "ns1", "web")
    assert route("/api/v1/nodes/n1").kind.kind == "Node"
    assert route("/api/v1/namespaces/ns1").kind.kind == "Namespace" and route("/api/v1/namespaces/ns1").name == "ns1"
    with pytest.raises(NotFound):
        route("/api/v2/pods")


def test_tcp_needs_tls_and_a_valid_token(registry: Registry, tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path)
    with pytest.raises(InvalidArgument, match="needs a TLS certificate and key, and at least one token"):
        ApiServer(registry, tcp=("127.0.0.1", 0), tls=(str(cert), str(key)))
    server = ApiServer(registry, tcp=("127.0.0.1", 0), tls=(str(cert), str(key)), tokens=("s3cret-token",))
    server.start()
    try:
        good = ApiClient(server.address, token="s3cret-token", ca=str(cert))
        assert [n["metadata"]["name"] for n in good.request("GET", "/api/v1/namespaces")["items"]] == [
            "default", "kube-system"]
        for token in (None, "wrong"):
            request = urllib.request.Request(f"{server.address}/api/v1/namespaces",
                                             headers={"Authorization": f"Bearer {token}"} if token else {})
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(request, context=ssl.create_default_context(cafile=str(cert)))
            assert refused.value.code == 401
            assert json.loads(refused.value.read())["reason"] == "Unauthorized"
            refused.value.close()
    finally:
        server.stop()


def test_controllers_run_the_same_against_the_api_server(api: ApiClient) -> None:
    """The ReplicaSet controller and its informers over the unix socket (client.RemoteRegistry)."""
    import time

    from skiff.orchestrator.api.kinds import BY_KIND
    from skiff.orchestrator.client import RemoteRegistry
    from skiff.orchestrator.controllers.replicaset import ReplicaSetController
    from skiff.orchestrator.informer import Informer, stop_all

    remote = RemoteRegistry(api)
    informers = [Informer(remote, BY_KIND["ReplicaSet"]), Informer(remote, BY_KIND["Pod"])]
    controller = ReplicaSetController(remote, *informers)
    for informer in informers:
        informer.start()
        assert informer.synced.wait(5)
    controller.start()
    try:
        api.request("POST", "/apis/apps/v1/namespaces/default/replicasets", {
            "metadata": {"name": "web"},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}}, "spec": pod("x")["spec"]}}})
        deadline = time.monotonic() + 10
        while len(api.request("GET", PODS)["items"]) != 2:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        victim = api.request("GET", PODS)["items"][0]
        api.request("DELETE", f"{PODS}/{victim['metadata']['name']}")
        while {p["metadata"]["name"] for p in api.request("GET", PODS)["items"]} & {victim["metadata"]["name"]} or \
                len(api.request("GET", PODS)["items"]) != 2:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        with pytest.raises(Aborted):
            RemoteRegistry(api).delete(BY_KIND["Pod"], "default", api.request("GET", PODS)["items"][0]["metadata"]["name"],
                                       expected="1")
    finally:
        controller.stop()
        stop_all(informers)


def test_discovery(api: ApiClient) -> None:
    """`kubectl get all` reads the category "all" from the resources; each group once."""
    assert "serverAddressByClientCIDRs" not in api.request("GET", "/api")
    core = {r["name"]: r for r in api.request("GET", "/api/v1")["resources"]}
    assert core["pods"]["categories"] == core["services"]["categories"] == ["all"]
    assert "categories" not in core["secrets"] and "categories" not in core["pods/exec"]
    apps = {r["name"]: r for r in api.request("GET", "/apis/apps/v1")["resources"]}
    assert all(apps[n]["categories"] == ["all"] for n in ("replicasets", "deployments", "daemonsets"))
    groups = api.request("GET", "/apis")["groups"]
    assert [g["name"] for g in groups] == ["apps", "batch"]
    assert groups[0]["versions"] == [{"groupVersion": "apps/v1", "version": "v1"}]
    assert groups[0]["preferredVersion"] == {"groupVersion": "apps/v1", "version": "v1"}


# -- upgraded requests (exec, attach, port-forward) -----------------------------------------

TOKEN = "one-time-token"   # the streaming URL's, its only credential
EXEC = "/api/v1/namespaces/default/pods/web/exec?command=cat&stdin=true&stdout=true"


def echo(conn: socket.socket) -> None:
    """A session that echoes until the client's end."""
    conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\r\n")
    for data in iter(lambda: conn.recv(65536), b""):
        conn.sendall(data)


class Streaming:
    """A stand-in for a node's CRI streaming server, on loopback: keeps each connection's
    request head, then `answer` has the connection (one at a time)."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/exec/{TOKEN}"
        self.heads: list[bytes] = []
        self.answer: Callable[[socket.socket], None] = echo
        self.thread = threading.Thread(target=self._serve, name="test-streaming")
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return   # close(): the listener was shut down
            with conn:
                head = b""
                while b"\r\n\r\n" not in head and (data := conn.recv(65536)):
                    head += data
                self.heads.append(head)
                self.answer(conn)

    def close(self) -> None:
        self.listener.shutdown(socket.SHUT_RDWR)   # (wakes the accept)
        self.thread.join(10)
        self.listener.close()


@pytest.fixture
def streaming(monkeypatch: pytest.MonkeyPatch) -> Iterator[Streaming]:
    """Every pod's streaming URL is the stand-in's (no node: no agent to ask)."""
    stand_in = Streaming()
    monkeypatch.setattr(subresources, "stream_url", lambda *args: stand_in.url)
    yield stand_in
    stand_in.close()


def upgrade(sock: socket.socket, method: str = "POST", *headers: str) -> tuple[int, dict[str, Any] | None]:
    """Sends an upgrade request; the answer's code and, for any but 101, its Status."""
    sock.sendall("\r\n".join([f"{method} {EXEC} HTTP/1.1", "Host: api", "Connection: Upgrade",
                               "Upgrade: SPDY/3.1", *headers, "", ""]).encode())
    head = b""
    while b"\r\n\r\n" not in head:
        data = sock.recv(1)   # (one byte at a time: what follows the head is the session's)
        assert data, head
        head += data
    lines = head.decode().split("\r\n")
    code = int(lines[0].split()[1])
    if code == 101:
        return code, None
    length = next(int(line.split(":")[1]) for line in lines if line.lower().startswith("content-length:"))
    return code, json.loads(read(sock, length))


def read(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size and (more := sock.recv(size - len(data))):
        data += more
    return data


def unix_client(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX)
    sock.settimeout(10)
    sock.connect(str(path))
    return sock


def test_an_upgrade_needs_a_valid_token_which_goes_no_further(registry: Registry, streaming: Streaming,
                                                               tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path)
    server = ApiServer(registry, tcp=("127.0.0.1", 0), tls=(cert, key), tokens=("s3cret-token",))
    server.start()
    tls = ssl.create_default_context(cafile=cert)
    host, port = server.server.socket.getsockname()[:2]

    def client() -> ssl.SSLSocket:
        return tls.wrap_socket(socket.create_connection((host, port), timeout=10), server_hostname="127.0.0.1")

    try:
        for given in ([], ["Authorization: Bearer wrong"]):
            with client() as sock:
                code, body = upgrade(sock, "POST", *given)
            assert (code, body and body["reason"]) == (401, "Unauthorized")
        assert streaming.heads == []   # never reached

        with client() as sock:
            assert upgrade(sock, "POST", "Authorization: Bearer s3cret-token", "Proxy-Authorization: Basic eA==",
                           "Keep-Alive: timeout=5", "X-Hop: 1", "Connection: X-Hop", "TE: trailers",
                           "X-Forwarded-For: 10.1.2.3", "X-Stream-Protocol-Version: v4.channel.k8s.io") == (101, None)
            sock.sendall(b"through")
            assert read(sock, 7) == b"through"
        (head,) = streaming.heads
        lines = head.decode().split("\r\n")
        assert lines[0] == f"POST /exec/{TOKEN} HTTP/1.1"
        names = [line.split(":")[0].lower() for line in lines[1:] if line]
        assert sorted(names) == ["connection", "host", "upgrade", "x-forwarded-for", "x-stream-protocol-version"]
        assert {"Connection: Upgrade", "Upgrade: SPDY/3.1", "X-Forwarded-For: 10.1.2.3, 127.0.0.1",
                f"Host: 127.0.0.1:{streaming.listener.getsockname()[1]}"} <= set(lines)
    finally:
        server.stop()


def test_an_upgrade_takes_get_or_post(api: ApiClient, streaming: Streaming, tmp_path: Path) -> None:
    for method in ("GET", "PUT", "DELETE"):
        with unix_client(tmp_path / "api.sock") as sock:
            code, body = upgrade(sock, method)
        if method == "GET":
            assert (code, body) == (101, None)
        else:
            assert (code, body and body["reason"]) == (405, "MethodNotAllowed"), body
    assert len(streaming.heads) == 1
    assert b"X-Forwarded-For" not in streaming.heads[0]   # a unix socket's client has no address


def test_what_the_streaming_server_said_last_arrives(api: ApiClient, streaming: Streaming, tmp_path: Path) -> None:
    """The streaming server answers and closes while the client still sends (`kubectl exec -i
    pod -- head -1 < big`): its close resets the connection, and writes to it fail, with its
    last words not yet read. They reach the client all the same."""
    last = b"".join(b"line %d\n" % i for i in range(3000))   # (what the proxy's receive window takes at once)

    def answer(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\n\r\n")
        conn.recv(1, socket.MSG_PEEK)   # the client's bytes come, and are left unread
        conn.sendall(last)

    streaming.answer = answer
    for attempt in range(5):   # (the proxy may see the reset before, with or after the last words)
        with unix_client(tmp_path / "api.sock") as sock:
            assert upgrade(sock) == (101, None)

            def send() -> None:
                try:
                    for _ in range(256):
                        sock.sendall(b"x" * 65536)
                except OSError:
                    pass   # the session's end

            sender = threading.Thread(target=send)
            sender.start()
            got = b""
            try:
                while data := sock.recv(65536):
                    got += data
            except ConnectionResetError:
                pass   # after the last byte: the API server closed with the client's bytes unread
            sender.join(10)
        assert got == last, attempt


def test_a_stop_ends_the_proxied_sessions(registry: Registry, streaming: Streaming, tmp_path: Path) -> None:
    server = ApiServer(registry, unix_socket=str(tmp_path / "own.sock"))
    server.start()
    try:
        with unix_client(tmp_path / "own.sock") as sock:
            assert upgrade(sock) == (101, None)
            sock.sendall(b"ping")
            assert read(sock, 4) == b"ping"
            started = time.monotonic()
            server.stop()
            assert time.monotonic() - started < 5
            assert sock.recv(1) == b""   # the session's end
    finally:
        server.stop()   # (again: a second stop is harmless)


def test_a_streaming_url_token_is_not_in_errors() -> None:
    with socket.create_server(("127.0.0.1", 0)) as spare:
        port = spare.getsockname()[1]   # free once closed: refused
    with pytest.raises(Unavailable, match=f"streaming server at 127.0.0.1:{port}: Connection refused") as refused:
        upgrade_proxy.connect(f"http://127.0.0.1:{port}/exec/{TOKEN}")
    with pytest.raises(Unavailable, match="streaming URL at node:1: want http://") as wrong:
        upgrade_proxy.connect(f"https://node:1/exec/{TOKEN}")
    assert TOKEN not in str(refused.value) + str(wrong.value)
