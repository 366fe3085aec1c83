"""The Endpoints controller (kubernetes `pkg/controller/endpoint/`): for each Service with a
selector, an Endpoints object of the same name listing the pods it selects: the ready ones
in `addresses`, the others that have an IP in `notReadyAddresses`, with the Service's ports
resolved against each pod's container ports (a named targetPort is looked up in the pod).
The service proxy programs the virtual IP from it."""

from __future__ import annotations

from typing import Any

from skiff.errors import NotFound
from skiff.orchestrator.api.kinds import BY_KIND
from skiff.orchestrator.api.registry import Api
from skiff.orchestrator.controllers.base import Controller, is_active, is_ready
from skiff.orchestrator.informer import Informer, object_key

SERVICES, ENDPOINTS = BY_KIND["Service"], BY_KIND["Endpoints"]


class EndpointsController(Controller):
    name = "endpoints"

    def __init__(self, registry: Api, services: Informer, pods: Informer, endpoints: Informer) -> None:
        super().__init__()
        self.registry = registry
        self.services = services
        self.pods = pods
        self.endpoints = endpoints
        services.on_change(lambda key, old, new: self.queue.add(key))
        endpoints.on_change(lambda key, old, new: self.queue.add(key))  # someone else changed ours
        pods.on_change(self._pod_changed)

    def _pod_changed(self, key: str, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        for pod in (old, new):
            if pod is None:
                continue
            labels = pod["metadata"].get("labels") or {}
            for svc in self.services.items():
                selector = svc["spec"].get("selector") or {}
                if (svc["metadata"]["namespace"] == pod["metadata"]["namespace"] and selector
                        and all(labels.get(k) == v for k, v in selector.items())):
                    self.queue.add(object_key(svc))

    def sync(self, key: str) -> None:
        namespace, _, name = key.partition("/")
        svc = self.services.get(key)
        if svc is None or not svc["spec"].get("selector"):
            if svc is None and self.endpoints.get(key) is not None:
                try:
                    self.registry.delete(ENDPOINTS, namespace, name)
                except NotFound:
                    pass
            return  # without a selector, the Endpoints are the user's to write
        selector = svc["spec"]["selector"]
        ready: list[tuple[dict[str, Any], dict[str, Any]]] = []   # (address, pod)
        not_ready: list[tuple[dict[str, Any], dict[str, Any]]] = []
        for pod in sorted(self.pods.items(), key=lambda p: p["metadata"]["name"]):
            labels = pod["metadata"].get("labels") or {}
            ip = (pod.get("status") or {}).get("podIP")
            if (pod["metadata"]["namespace"] != namespace or not ip or not is_active(pod)
                    or any(labels.get(k) != v for k, v in selector.items())):
                continue
            address = {"ip": ip, "nodeName": pod["spec"].get("nodeName", ""),
                       "targetRef": {"kind": "Pod", "namespace": namespace, "name": pod["metadata"]["name"],
                                     "uid": pod["metadata"]["uid"]}}
            (ready if is_ready(pod) else not_ready).append((address, pod))
        subsets = []
        for port in svc["spec"].get("ports") or []:
            by_number: dict[int, tuple[list[dict[str, Any]], list[dict[str, Any]]]] = {}
            for group, found in ((0, ready), (1, not_ready)):
                for address, pod in found:
                    number = _target_port(port, pod)
                    if number is not None:
                        by_number.setdefault(number, ([], []))[group].append(address)
            for number, (up, down) in sorted(by_number.items()):
                subset: dict[str, Any] = {"ports": [{"name": port.get("name", ""), "port": number,
                                                     "protocol": port.get("protocol", "TCP")}]}
                if up:
                    subset["addresses"] = up
                if down:
                    subset["notReadyAddresses"] = down
                subsets.append(subset)
        current = self.endpoints.get(key)
        if current is not None and current.get("subsets", []) == subsets:
            return
        wanted = {"apiVersion": "v1", "kind": "Endpoints",
                  "metadata": {"name": name, "namespace": namespace, "labels": dict(svc["metadata"].get("labels") or {})},
                  "subsets": subsets}
        if current is None:
            self.registry.create(ENDPOINTS, wanted)
        else:
            self.registry.update(ENDPOINTS, {**current, "subsets": subsets})


def _target_port(port: dict[str, Any], pod: dict[str, Any]) -> int | None:
    """The Service port's targetPort in this pod: a number as it is (the port itself when not
    given), a name looked up among the pod's container ports (None when it has no such port)."""
    target = port.get("targetPort", port.get("port"))
    if isinstance(target, int):
        return target
    for container in pod["spec"].get("containers") or []:
        for p in container.get("ports") or []:
            if p.get("name") == target and p.get("protocol", "TCP") == port.get("protocol", "TCP"):
                return int(p["containerPort"])
    return None
