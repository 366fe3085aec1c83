"""A Service's virtual IP and node ports, given by the API server as Kubernetes gives them:
spec.clusterIP from the service CIDR (the next free address, or the one asked for if it is
free; "None" for a headless service), and for type NodePort a nodePort from 30000-32767 for
each port without one. Both are kept across updates and may not be changed.

The registry allocates under its own lock: one API server writes a store (SQLite's case).
Several API servers on one etcd would need the allocation in the store, as Kubernetes keeps
its bitmaps there; skiff does not do that yet."""

from __future__ import annotations

import copy
import ipaddress
from collections.abc import Iterable
from typing import Any

from skiff.errors import AlreadyExists, InvalidArgument, ResourceExhausted

SERVICE_CIDR = "10.96.0.0/16"
NODE_PORTS = range(30000, 32768)


def allocate(service: dict[str, Any], existing: Iterable[dict[str, Any]], cidr: str = SERVICE_CIDR) -> dict[str, Any]:
    """`service` with its clusterIP and nodePorts filled; `existing`: every other Service."""
    network = ipaddress.ip_network(cidr)
    others = list(existing)
    taken_ips = {s["spec"].get("clusterIP") for s in others}
    taken_ports = {p.get("nodePort") for s in others for p in s["spec"].get("ports") or []}
    out = copy.deepcopy(service)
    spec = out["spec"]
    wanted = spec.get("clusterIP") or ""
    if wanted == "None":
        pass
    elif wanted:
        try:
            address = ipaddress.ip_address(wanted)
        except ValueError:
            raise InvalidArgument(f"spec.clusterIP: {wanted!r}: not an IP address") from None
        if address not in network or address in (network.network_address, network.broadcast_address):
            raise InvalidArgument(f"spec.clusterIP: {wanted}: not in the service range {cidr}")
        if wanted in taken_ips:
            raise AlreadyExists(f"spec.clusterIP: {wanted}: provided IP is already allocated")
    else:
        # the first address is left out, as Kubernetes keeps it for the API service
        free = next((str(a) for a in network.hosts() if str(a) not in taken_ips and a != network.network_address + 1),
                    None)
        if free is None:
            raise ResourceExhausted(f"spec.clusterIP: the service range {cidr} is full")
        spec["clusterIP"] = free
    if spec.get("type") == "NodePort":
        for n, port in enumerate(spec.get("ports") or []):
            if port.get("nodePort"):
                if port["nodePort"] in taken_ports:
                    raise AlreadyExists(f"spec.ports[{n}].nodePort: {port['nodePort']}: provided port is already "
                                        "allocated")
            else:
                free_port = next((p for p in NODE_PORTS if p not in taken_ports), None)
                if free_port is None:
                    raise ResourceExhausted(f"spec.ports[{n}].nodePort: no node port left in 30000-32767")
                port["nodePort"] = free_port
            taken_ports.add(port["nodePort"])
    return out


def keep(service: dict[str, Any], current: dict[str, Any]) -> dict[str, Any]:
    """An update: the clusterIP and nodePorts `current` has, unless the update leaves them
    out; a different clusterIP is refused (it is immutable)."""
    out = copy.deepcopy(service)
    spec, old = out["spec"], current["spec"]
    given = spec.get("clusterIP") or ""
    if given and given != old.get("clusterIP"):
        raise InvalidArgument(f"spec.clusterIP: {given}: field is immutable (it is {old.get('clusterIP')})")
    spec["clusterIP"] = old.get("clusterIP", "")
    old_ports = {(p.get("port"), p.get("protocol", "TCP")): p.get("nodePort") for p in old.get("ports") or []}
    if spec.get("type") == "NodePort":
        for port in spec.get("ports") or []:
            if not port.get("nodePort") and old_ports.get((port.get("port"), port.get("protocol", "TCP"))):
                port["nodePort"] = old_ports[(port.get("port"), port.get("protocol", "TCP"))]
    return out
