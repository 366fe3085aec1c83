"""The Node object of this node: registered with what the machine has, and its Ready condition
posted every `period` seconds (the heartbeat the node lifecycle controller watches).

Where the agent's own server (server.py) listens goes in the annotation AGENT_ENDPOINT, a URL
such as `unix:/run/skiff/agent/NAME.sock`: Kubernetes publishes only a port
(status.daemonEndpoints.kubeletEndpoint.Port, on the node's address), which cannot name a
unix socket."""

from __future__ import annotations

import copy
import os
import socket
from typing import Any

from skiff.errors import NotFound
from skiff.orchestrator.api.kinds import BY_KIND
from skiff.orchestrator.api.registry import Api, now
from skiff.orchestrator.periodic import Periodic

NODES = BY_KIND["Node"]
HEARTBEAT = 10.0  # seconds: kubelet's nodeStatusUpdateFrequency
AGENT_ENDPOINT = "node.skiff.io/agent-endpoint"


def capacity() -> dict[str, str]:
    with open("/proc/meminfo") as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith("MemTotal:"))
    return {"cpu": str(len(os.sched_getaffinity(0))), "memory": f"{kib}Ki", "pods": "110"}


class NodeStatus:
    def __init__(self, registry: Api, name: str, *, labels: dict[str, str] | None = None,
                 address: str = "127.0.0.1", runtime_version: str = "", period: float = HEARTBEAT,
                 endpoint: str | None = None, pod_cidr: str = "") -> None:
        """`endpoint`: the agent server's URL, published in the Node's annotations.
        `pod_cidr`: the node's pod addresses (spec.podCIDR), where its CRI hands them out."""
        self.registry = registry
        self.name = name
        self.labels = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", **(labels or {})}
        self.annotations = {AGENT_ENDPOINT: endpoint} if endpoint else {}
        self.address = address
        self.pod_cidr = pod_cidr
        self.runtime_version = runtime_version
        self._loop = Periodic("node-heartbeat", period, self.heartbeat)

    def _status(self) -> dict[str, Any]:
        have = capacity()
        return {"capacity": have, "allocatable": have,
                "addresses": [{"type": "InternalIP", "address": self.address},
                              {"type": "Hostname", "address": socket.gethostname()}],
                "nodeInfo": {"containerRuntimeVersion": self.runtime_version, "kubeletVersion": "skiff",
                             "operatingSystem": "linux", "architecture": os.uname().machine},
                "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                                "message": "skiff node agent is posting ready status",
                                "lastHeartbeatTime": now(), "lastTransitionTime": now()}]}

    def register(self) -> None:
        """Create the Node, or take over the one of the same name (an agent restarted)."""
        try:
            node = copy.deepcopy(self.registry.get(NODES, "", self.name))
        except NotFound:
            self.registry.create(NODES, {"apiVersion": "v1", "kind": "Node",
                                         "metadata": {"name": self.name, "labels": self.labels,
                                                      "annotations": self.annotations},
                                         "spec": {"podCIDR": self.pod_cidr} if self.pod_cidr else {},
                                         "status": self._status()})
            return
        node["metadata"]["labels"] = {**(node["metadata"].get("labels") or {}), **self.labels}
        if self.pod_cidr:
            node["spec"] = {**(node.get("spec") or {}), "podCIDR": self.pod_cidr}
        annotations = {k: v for k, v in (node["metadata"].get("annotations") or {}).items() if k != AGENT_ENDPOINT}
        node["metadata"]["annotations"] = {**annotations, **self.annotations}  # a stale endpoint goes
        self._post(node)

    def heartbeat(self) -> None:
        self._post(copy.deepcopy(self.registry.get(NODES, "", self.name)))

    def _post(self, node: dict[str, Any]) -> None:
        status = self._status()
        old = next((c for c in (node.get("status") or {}).get("conditions") or [] if c.get("type") == "Ready"), None)
        if old is not None and old.get("status") == "True":
            status["conditions"][0]["lastTransitionTime"] = old.get("lastTransitionTime", now())
        node["status"] = status
        self.registry.update(NODES, node)

    def start(self) -> None:
        self.register()
        self._loop.start()

    def stop(self) -> None:
        self._loop.stop()
