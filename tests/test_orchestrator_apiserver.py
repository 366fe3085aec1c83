"""The API server over real sockets: Kubernetes' paths and Status codes on the unix socket, a
watch stream, and the TCP listener that refuses every request without a valid token."""

from __future__ import annotations

import json
import os
import ssl
import stat
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from skiff.errors import Aborted, AlreadyExists, InvalidArgument, NotFound, OutOfRange
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
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
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
