"""Built-in pod networking: a bridge, a veth pair into each pod, addresses from the pod CIDR,
masquerade and hostPort through nftables.

    host                                  pod netns (/proc/<pid>/ns/net)
    skiff0 (bridge, gateway .1/16) ─┬─ skv<12 hex> ══ veth ══ eth0 (10.88.0.x/16), lo up
                                    └─ skv...                 default via 10.88.0.1

`ipam.py` hands out addresses (one file per address, survives restarts), `bridge.py` wires
links with pyroute2, `portmap.py` keeps skiff's nftables table (`ip skiff`), whose every
rule is tagged with its pod id so teardown removes exactly those.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from skiff.errors import Unavailable


class NetworkError(Unavailable):
    """The kernel refused a link, address, route or nftables change."""


class PortProtocol(enum.Enum):
    TCP = "tcp"
    UDP = "udp"
    SCTP = "sctp"


@dataclass(frozen=True, slots=True, kw_only=True)
class PortMapping:
    """A CRI PortMapping: traffic to host_port on the node goes to container_port in the pod."""

    host_port: int
    container_port: int
    protocol: PortProtocol = PortProtocol.TCP
    host_ip: str | None = None  # None or "" or "0.0.0.0": every local address


@dataclass(frozen=True, slots=True, kw_only=True)
class BridgeConfig:
    pod_cidr: str = "10.88.0.0/16"
    bridge: str = "skiff0"
    state_dir: Path = Path("/var/lib/skiff/network")  # ipam/ and the lock live here
    masquerade: bool = True  # source-NAT pod traffic leaving the pod CIDR
    mtu: int | None = None  # None: the kernel's default (1500)
    # Traffic to it is not masqueraded: the pod CIDRs of every node of a cluster (pods see
    # each other's own addresses, as Kubernetes wants). None: the pod CIDR only.
    cluster_cidr: str | None = None

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.pod_cidr, strict=True)


@dataclass(frozen=True, slots=True, kw_only=True)
class PodNetwork:
    ip: ipaddress.IPv4Address
    gateway: ipaddress.IPv4Address
    prefix: int
    interface: str  # inside the pod
    veth_host: str
