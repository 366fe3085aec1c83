"""Discovery: what kubectl reads before anything else, to learn which resources the server
has, at which path, and whether they are namespaced (kube-apiserver's
`staging/src/k8s.io/apiserver/pkg/endpoints/discovery/`). Without it kubectl answers every
command with `the server doesn't have a resource type "pods"`.

    GET /api                   APIVersions: the core group's versions ("v1")
    GET /apis                  APIGroupList: the named groups (apps, batch) and their version
    GET /api/v1, /apis/G/V     APIResourceList: the resources (with pods' subresources)
    GET /version               the version kubectl version prints
"""

from __future__ import annotations

from typing import Any

from skiff import __version__
from skiff.orchestrator.api.kinds import KINDS

VERBS = ["create", "delete", "get", "list", "update", "watch"]   # what apiserver.py's _call serves
# Pods' subresources (subresources.py): their kinds and verbs as kube-apiserver lists them
POD_SUBRESOURCES = {"log": ("Pod", ["get"]), "exec": ("PodExecOptions", ["create", "get"]),
                    "attach": ("PodAttachOptions", ["create", "get"]),
                    "portforward": ("PodPortForwardOptions", ["create", "get"])}
KUBERNETES_VERSION = ("1", "20")   # the API skiff's shapes follow: kubectl 1.20's
# The resources Kubernetes puts in the category "all" (`kubectl get all`), those skiff serves
# getting it: kube-apiserver's `pkg/registry/*/storage` (Categories() of pods, services, ...)
ALL = {"pods", "services", "replicationcontrollers", "replicasets", "deployments", "daemonsets", "statefulsets",
       "jobs", "cronjobs", "horizontalpodautoscalers"}


def document(path: str) -> dict[str, Any] | None:
    """The discovery document at `path`, None when `path` is not one."""
    path = "/" + path.strip("/")
    if path == "/version":
        major, minor = KUBERNETES_VERSION
        return {"major": major, "minor": minor, "gitVersion": f"v{major}.{minor}.0-skiff.{__version__}",
                "platform": "linux/amd64"}
    if path == "/api":
        return {"kind": "APIVersions", "versions": ["v1"]}   # (no serverAddressByClientCIDRs: the one dialled)
    if path == "/apis":
        groups: dict[str, list[str]] = {}   # each group once, its versions in KINDS' order, the first preferred
        for k in KINDS:
            if k.group and k.api_version not in groups.setdefault(k.group, []):
                groups[k.group].append(k.api_version)
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
            {"name": group, "versions": [{"groupVersion": gv, "version": gv.partition("/")[2]} for gv in versions],
             "preferredVersion": {"groupVersion": versions[0], "version": versions[0].partition("/")[2]}}
            for group, versions in sorted(groups.items())]}
    if path.startswith("/api/"):
        group_version = path.removeprefix("/api/")
        if "/" in group_version:
            return None   # /api/apps/v1: the named groups live under /apis
    elif path.startswith("/apis/"):
        group_version = path.removeprefix("/apis/")
    else:
        return None
    kinds = [k for k in KINDS if k.api_version == group_version]
    if not kinds:
        return None
    resources: list[dict[str, Any]] = []
    for k in kinds:
        resources.append({"name": k.resource, "singularName": k.kind.lower(), "namespaced": k.namespaced,
                          "kind": k.kind, "verbs": VERBS,
                          **({"shortNames": list(k.short_names)} if k.short_names else {}),
                          **({"categories": ["all"]} if k.resource in ALL else {})})
        if k.kind == "Pod":
            resources += [{"name": f"pods/{sub}", "singularName": "", "namespaced": True, "kind": kind,
                           "verbs": verbs} for sub, (kind, verbs) in POD_SUBRESOURCES.items()]
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources}
