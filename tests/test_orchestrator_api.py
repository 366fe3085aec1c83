"""API objects from Kubernetes YAML and JSON: kinds, metadata and spec checks with field paths."""

from __future__ import annotations

import json

import pytest

from skiff.errors import InvalidArgument
from skiff.orchestrator.api import kinds, quantity
from skiff.orchestrator.api.manifests import load

APP = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web}
spec:
  replicas: 3
  selector:
    matchLabels: {app: web}
  strategy:
    rollingUpdate: {maxSurge: 1, maxUnavailable: "25%"}
  template:
    metadata:
      labels: {app: web, tier: front}
    spec:
      containers:
      - name: httpd
        image: skiff.local/busybox:1
        command: [httpd, -f, -p, "8080"]
        ports: [{containerPort: 8080}]
        resources: {requests: {cpu: 100m, memory: 16Mi}}
        readinessProbe: {httpGet: {path: /, port: 8080}, periodSeconds: 2}
        volumeMounts: [{name: config, mountPath: /etc/web}]
      volumes:
      - name: config
        configMap: {name: web}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  type: NodePort
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080, nodePort: 30080}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: web, namespace: shop}
data: {index.html: hello}
---
apiVersion: batch/v1
kind: Job
metadata: {name: once}
spec:
  completions: 5
  parallelism: 2
  backoffLimit: 3
  template:
    spec:
      restartPolicy: Never
      containers: [{name: c, image: busybox, command: ["true"]}]
---
apiVersion: v1
kind: Namespace
metadata: {name: shop, namespace: ignored}
"""


def test_a_manifest_of_several_kinds_loads_in_order() -> None:
    got = load(APP, "app.yaml")
    assert [m.kind.kind for m in got] == ["Deployment", "Service", "ConfigMap", "Job", "Namespace"]
    assert [m.key for m in got] == ["/registry/deployments/default/web", "/registry/services/default/web",
                                    "/registry/configmaps/shop/web", "/registry/jobs/default/once",
                                    "/registry/namespaces/shop"]
    assert "namespace" not in got[4].object["metadata"]
    assert got[0].object["spec"]["template"]["spec"]["containers"][0]["ports"] == [{"containerPort": 8080}]


def test_json_and_a_list_load_too() -> None:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
           "spec": {"containers": [{"name": "c", "image": "busybox"}]}}
    assert load(json.dumps(pod), "pod.json", namespace="team")[0].key == "/registry/pods/team/p"
    listing = {"apiVersion": "v1", "kind": "List", "items": [pod, {**pod, "metadata": {"name": "q"}}]}
    assert [m.object["metadata"]["name"] for m in load(json.dumps(listing), "list.json")] == ["p", "q"]


def _replace(old: str, new: str) -> str:
    assert old in APP
    return APP.replace(old, new, 1)


@pytest.mark.parametrize("text, message", [
    (_replace("kind: Deployment", "kind: Deploymnt"),
     r"app.yaml: document 1 \(Deploymnt web\): kind: unknown kind 'Deploymnt' \(skiff serves ConfigMap, "),
    (_replace("apiVersion: apps/v1", "apiVersion: v1"),
     r"document 1 \(Deployment web\): apiVersion: Deployment is served as 'apps/v1', not 'v1'"),
    (_replace("  replicas: 3", "  replicas: -1"),
     r"document 1 \(Deployment web\): spec.replicas: -1: must be greater than or equal to 0"),
    (_replace("    matchLabels: {app: web}", "    matchLabels: {app: api}"),
     r"spec.template.metadata.labels: .*: does not match the selector \(app=api\)"),
    (_replace("        image: skiff.local/busybox:1\n", ""),
     r"document 1 \(Deployment web\): spec.template.spec.containers\[0\].image: required"),
    (_replace("cpu: 100m", "cpu: lots"), r"spec.template.spec.containers\[0\].resources.requests.cpu: 'lots': "),
    (_replace("{name: config, mountPath: /etc/web}", "{name: conf, mountPath: /etc/web}"),
     r"containers\[0\].volumeMounts\[0\].name: 'conf': not found among the pod's volumes"),
    (_replace("maxSurge: 1", "maxSurge: many"), r"spec.strategy.rollingUpdate.maxSurge: 'many': must be an integer"),
    (_replace("  type: NodePort\n", ""), r"document 2 \(Service web\): spec.ports\[0\].nodePort: may only be given"),
    (_replace("nodePort: 30080", "nodePort: 80"), r"spec.ports\[0\].nodePort: 80: must be between 30000 and 32767"),
    (_replace("metadata: {name: web}", "metadata: {name: Web}"),
     r"document 2 \(Service Web\): metadata.name: 'Web': must be a DNS-1123 label"),
    (_replace("      restartPolicy: Never", "      restartPolicy: Always"),
     r"document 4 \(Job once\): spec.template.spec.restartPolicy: 'Always': supported values: 'OnFailure', 'Never'"),
    (_replace("  completions: 5", "  completions: five"), r"spec.completions: 'five': must be an integer"),
    (_replace("labels: {app: web}\nspec:", "labels: {app: web app}\nspec:"), r"metadata.labels.app: 'web app'"),
    ("kind: Pod\nmetadata: {name: [unclosed", r"app.yaml: not valid YAML \(line \d+, column \d+\): did not find expected"),
    ("- just\n- a list\n", r"app.yaml: must be an object with apiVersion, kind and metadata, not list"),
    ("---\n", r"app.yaml: no objects in it"),
])
def test_bad_objects_are_refused_with_the_document_and_field(text: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        load(text, "app.yaml")


def test_a_namespace_other_than_the_requests_is_refused() -> None:
    with pytest.raises(InvalidArgument, match=r"metadata.namespace: 'shop' does not match the namespace of the "
                                              r"request, 'default'"):
        load(APP, "app.yaml", namespace="default")


def test_secrets_and_config_maps() -> None:
    secret = "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\ndata: {password: '%s'}\n"
    assert load(secret % "aHVudGVyMg==", "s.yaml")[0].object["data"] == {"password": "aHVudGVyMg=="}
    with pytest.raises(InvalidArgument, match=r"data.password: not valid base64"):
        load(secret % "not base64!", "s.yaml")


def test_kinds_resolve_as_kubectl_names_them() -> None:
    for name in ("po", "pods", "Pod", "pod"):
        assert kinds.resolve(name).kind == "Pod"
    assert kinds.resolve("deployments.apps").kind == "Deployment"
    assert kinds.resolve("deploy").key("ns1", "web") == "/registry/deployments/ns1/web"
    assert kinds.resolve("no").key("", "n1") == "/registry/nodes/n1"
    with pytest.raises(InvalidArgument, match="the server doesn't have a resource type 'deployments.batch'"):
        kinds.resolve("deployments.batch")


@pytest.mark.parametrize("text, milli, units", [("100m", 100, 1), ("0.5", 500, 1), ("2", 2000, 2),
                                                 ("64Mi", 64 * 2**20 * 1000, 64 * 2**20), ("1G", 10**12, 10**9),
                                                 (3, 3000, 3), ("1e3", 10**6, 1000)])
def test_quantities(text: str | int, milli: int, units: int) -> None:
    assert quantity.milli(text, "q") == milli and quantity.units(text, "q") == units
