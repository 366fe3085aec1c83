"""The Node object of this node: registered with what the machine has, and its Ready condition
posted every `period` seconds (the heartbeat the node lifecycle controller watches)."""

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


def capacity() -> dict[str, str]:
    with open("/proc/meminfo") as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith("MemTotal:"))
    return {"cpu": str(len(os.sched_getaffinity(0))), "memory": f"{kib}Ki", "pods": "110"}


class NodeStatus:
    def __init__(self, registry: Api, name: str, *, labels: dict[str, str] | None = None,
                 address: str = "127.0.0.1", runtime_version: str = "", period: float = HEARTBEAT) -> None:
        self.registry = registry
        self.name = name
        self.labels = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", **(labels or {})}
        self.address = address
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
                                         "metadata": {"name": self.name, "labels": self.labels},
                                         "spec": {}, "status": self._status()})
            return
        node["metadata"]["labels"] = {**(node["metadata"].get("labels") or {}), **self.labels}
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
