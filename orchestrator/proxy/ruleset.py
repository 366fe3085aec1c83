"""The service proxy's nftables table, `ip skiff-proxy`: what it holds for a set of Services and
their Endpoints, written whole (a full sync) or as the element changes from one state to the
next (one transaction each).

The layout keeps every service in maps, not in chains of its own, so that a change is a few
map elements and the table's size does not slow nft down:

    map services     clusterIP . proto . port        : goto lb<N>    (N: its ready endpoints)
    map backends     clusterIP . proto . port . slot : endpoint IP . port
    map nodeports    proto . nodePort                : goto nplb<N>
    map nodeport_backends  proto . nodePort . slot   : endpoint IP . port
    set no_endpoints / no_endpoint_nodeports            rejected (filter hooks), as kube-proxy does
    chain lb<N>      meta mark set numgen random mod N, ct mark |= MASQ, dnat through @backends

A chain per endpoint count is shared by every service with that many endpoints: numgen's
modulus is a constant of the rule. The slot goes through the packet mark because nft 1.0.6
cannot put numgen in a concatenation. The packet mark of a service connection's first packet
is therefore overwritten; the connection is marked (ct mark bit MASQ) for masquerade, so that
replies come back through this node whichever node the endpoint is on (NodePort, hairpin).

bench/service_proxy.py measures this layout against kube-proxy's (a chain per service and per
endpoint) at 1,000 and 10,000 services.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

TABLE = "skiff-proxy"
MASQ = 0x4000  # kube-proxy's masquerade bit, in the connection's mark here
PROTOCOLS = {"TCP": "tcp", "UDP": "udp", "SCTP": "sctp"}


@dataclass(frozen=True, slots=True)
class Frontend:
    """Where clients connect: a clusterIP's port, or a node port (address None) on every
    address of the node."""

    protocol: str          # "tcp", "udp" or "sctp"
    port: int
    address: str | None = None

    def key(self) -> str:
        return f"{self.address} . {self.protocol} . {self.port}" if self.address else f"{self.protocol} . {self.port}"

    @property
    def node_port(self) -> bool:
        return self.address is None


Backends = tuple[tuple[str, int], ...]   # (endpoint IP, port), sorted
Rules = dict[Frontend, Backends]


def service_rules(service: Mapping[str, Any], endpoints: Mapping[str, Any] | None) -> Rules:
    """The frontends of one Service and the ready endpoints behind each: a port's endpoints
    are the Endpoints ports of the same name and protocol (kube-proxy's matching)."""
    spec = service.get("spec") or {}
    address = spec.get("clusterIP") or ""
    if not address or address == "None":
        return {}   # headless: clients resolve the pods themselves
    if not _ipv4(address):
        return {}   # IPv6 clusterIPs: the table is `ip` only
    rules: Rules = {}
    subsets = (endpoints or {}).get("subsets") or []
    for port in spec.get("ports") or []:
        protocol = PROTOCOLS.get(port.get("protocol", "TCP"))
        if protocol is None:
            continue
        found = {(a["ip"], int(p["port"])) for s in subsets for p in s.get("ports") or []
                 if (p.get("name", ""), p.get("protocol", "TCP")) == (port.get("name", ""), port.get("protocol", "TCP"))
                 for a in s.get("addresses") or [] if _ipv4(a.get("ip"))}
        backends = tuple(sorted(found))
        rules[Frontend(protocol, int(port["port"]), address)] = backends
        if spec.get("type") in ("NodePort", "LoadBalancer") and port.get("nodePort"):
            rules[Frontend(protocol, int(port["nodePort"]))] = backends
    return rules


def _ipv4(address: object) -> bool:
    try:
        ipaddress.IPv4Address(str(address))
        return True
    except ValueError:
        return False


def table(rules: Rules) -> str:
    """The whole table, replacing whatever skiff-proxy table there is, in one transaction."""
    counts = sorted({len(b) for b in rules.values() if b})
    lines = [f"table ip {TABLE} {{}}", f"delete table ip {TABLE}", f"table ip {TABLE} {{",
             "  map services { type ipv4_addr . inet_proto . inet_service : verdict; }",
             "  map backends { type ipv4_addr . inet_proto . inet_service . mark : ipv4_addr . inet_service; }",
             "  map nodeports { type inet_proto . inet_service : verdict; }",
             "  map nodeport_backends { type inet_proto . inet_service . mark : ipv4_addr . inet_service; }",
             "  set no_endpoints { type ipv4_addr . inet_proto . inet_service; }",
             "  set no_endpoint_nodeports { type inet_proto . inet_service; }",
             "  chain services {",
             "    ip daddr . meta l4proto . th dport vmap @services",
             "    fib daddr type local meta l4proto . th dport vmap @nodeports",
             "  }",
             "  chain prerouting { type nat hook prerouting priority dstnat; jump services; }",
             "  chain output { type nat hook output priority -100; jump services; }",
             f"  chain postrouting {{ type nat hook postrouting priority srcnat; ct mark & {MASQ:#x} == {MASQ:#x} masquerade; }}",
             "  chain reject_services {",
             "    ip daddr . meta l4proto . th dport @no_endpoints reject",
             "    fib daddr type local meta l4proto . th dport @no_endpoint_nodeports reject",
             "  }",
             "  chain forward { type filter hook forward priority filter; jump reject_services; }",
             "  chain input { type filter hook input priority filter; jump reject_services; }",
             "  chain out { type filter hook output priority filter; jump reject_services; }",
             "}"]
    lines += balancer_chains(counts)
    lines += changes({}, rules)
    return "\n".join(lines) + "\n"


def balancer_chains(counts: Iterable[int]) -> list[str]:
    """The chains that pick one of N endpoints, for each N in `counts`."""
    out = []
    for n in counts:
        pick = f"meta mark set numgen random mod {n}" if n > 1 else "meta mark set 0"
        mark = f"ct mark set ct mark | {MASQ:#x}"
        out += [f"add chain ip {TABLE} lb{n}",
                f"add rule ip {TABLE} lb{n} {pick} {mark} dnat ip to ip daddr . meta l4proto . th dport . meta mark "
                "map @backends",
                f"add chain ip {TABLE} nplb{n}",
                f"add rule ip {TABLE} nplb{n} {pick} {mark} dnat ip to meta l4proto . th dport . meta mark "
                "map @nodeport_backends"]
    return out


def changes(old: Rules, new: Rules) -> list[str]:
    """The element commands that turn the table's `old` rules into `new`: a frontend that
    changed loses all its elements and gets its new ones, in the same transaction."""
    deletes: list[tuple[str, str]] = []
    adds: list[tuple[str, str]] = []
    # a node port (address None) sorts before the clusterIP ports of the same number: None and
    # a str do not compare
    for frontend in sorted(old.keys() | new.keys(), key=lambda f: (f.protocol, f.port, f.address or "")):
        before, after = old.get(frontend), new.get(frontend)
        if before == after:
            continue
        if before is not None:
            deletes += _elements(frontend, before, add=False)
        if after is not None:
            adds += _elements(frontend, after, add=True)
    return _batched(deletes, "delete") + _batched(adds, "add")


# The sets and maps of a frontend: (verdicts, backends, no endpoints, the balancer chain prefix).
_CLUSTER_IP = ("services", "backends", "no_endpoints", "lb")
_NODE_PORT = ("nodeports", "nodeport_backends", "no_endpoint_nodeports", "nplb")


def _elements(frontend: Frontend, backends: Backends, *, add: bool) -> list[tuple[str, str]]:
    """(set or map, element) for one frontend: its verdict and its backends by slot."""
    verdicts, backend_map, empty, chain = _NODE_PORT if frontend.node_port else _CLUSTER_IP
    key = frontend.key()
    if not backends:
        return [(empty, key)]
    out = [(verdicts, f"{key} : goto {chain}{len(backends)}" if add else key)]
    for slot, (ip, port) in enumerate(backends):
        out.append((backend_map, f"{key} . {slot} : {ip} . {port}" if add else f"{key} . {slot}"))
    return out


def _batched(elements: list[tuple[str, str]], verb: str) -> list[str]:
    """One command per set or map: nft parses one long element list faster than many."""
    by_set: dict[str, list[str]] = {}
    for name, element in elements:
        by_set.setdefault(name, []).append(element)
    return [f"{verb} element ip {TABLE} {name} {{ {', '.join(items)} }}" for name, items in by_set.items()]
