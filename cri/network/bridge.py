"""The bridge network: one Linux bridge holding the gateway address, one veth pair per pod.

setup, in this order, each step undone if a later one fails (containerd sandbox_run.go):
  1. an address from IPAM (the pod's own again if a setup is retried)
  2. the bridge, created if missing, with the gateway address, up
  3. a veth pair: the host end `skv<12 hex of sha256(pod id)>` on the bridge and up, the peer
     made in the pod's netns as eth0, addressed, up; lo up; default via the gateway
  4. masquerade and hostPort rules (portmap.py)

Links skiff creates carry a mark in their alias (`ip link` shows it): teardown deletes a
host veth only if it has the pod's mark, and `remove_bridge` only a marked bridge without
ports. Inside the pod's netns, a netlink socket is opened by a short-lived thread that joins
that netns (a netns is per thread) rather than by forking, as pyroute2's `netns=` does: the
CRI daemon is threaded (gRPC), and a fork there can deadlock (pyroute2 #1213).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import ipaddress
import os
import socket
from collections.abc import Iterator, Sequence
from typing import Any

from pyroute2 import IPRoute  # type: ignore[import-untyped, unused-ignore]
from pyroute2.netlink.exceptions import NetlinkError  # type: ignore[import-untyped, unused-ignore]

from skiff.cri.network import BridgeConfig, NetworkError, PodNetwork, PortMapping, portmap
from skiff.cri.network.ipam import IPAM
from skiff.runtime import netns
from skiff.runtime.undo import Undo

IFF_UP = 0x1
IN6_ADDR_GEN_MODE_NONE = 1  # linux/if_link.h

# Bridges this process has checked or made (name, gateway, prefix) -> ifindex: a pod's setup
# then skips three netlink round trips; a veth that cannot join the bridge clears the entry.
_known_bridges: dict[tuple[str, str, int], int] = {}
POD_INTERFACE = "eth0"
BRIDGE_MARK = "skiff bridge"


def host_veth_name(pod_id: str) -> str:
    """15 characters at most (IFNAMSIZ - 1); a hash, since pod ids are longer."""
    return "skv" + hashlib.sha256(pod_id.encode()).hexdigest()[:12]


def ipam_for(config: BridgeConfig) -> IPAM:
    return IPAM(config.state_dir / "ipam", config.pod_cidr)


@contextlib.contextmanager
def netlink_step(what: str) -> Iterator[None]:
    """Netlink and OS errors become NetworkError naming the step and the errno."""
    try:
        yield
    except NetlinkError as e:
        name = errno.errorcode.get(e.code, str(e.code))
        raise NetworkError(f"{what}: {os.strerror(e.code).lower()} ({name})") from e
    except OSError as e:
        name = errno.errorcode.get(e.errno or 0, str(e.errno))
        raise NetworkError(f"{what}: {(e.strerror or str(e)).lower()} ({name})") from e


def _netns_socket(netns_path: str, interface: str | None = None) -> tuple[socket.socket, int | None]:
    """A NETLINK_ROUTE socket in the netns at netns_path, and the index of `interface` there
    (None if missing), from a thread that joins it and ends: the caller's own threads never
    change netns."""
    return netns.call_in(netns_path, lambda: (
        socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE),
        _if_index(interface) if interface else None))


def _if_index(name: str) -> int | None:
    """The index of a link in this thread's netns: an ioctl, where a netlink request through
    pyroute2 costs some 40 times as much."""
    try:
        return socket.if_nametoindex(name)
    except OSError as e:
        if e.errno in (None, errno.ENODEV):  # Python's "no interface with this name" has none
            return None
        raise


@contextlib.contextmanager
def _iproute() -> Iterator[Any]:
    ipr = IPRoute()
    try:
        yield ipr
    finally:
        ipr.close()


@contextlib.contextmanager
def _iproute_in(netns_path: str, interface: str, netlink: socket.socket | None = None
                ) -> Iterator[tuple[Any, int | None]]:
    """pyroute2 in the netns, and the index of `interface` there; on `netlink`, a socket
    made in that netns already (pod_namespaces.pin), no thread needs to join it."""
    if netlink is None:
        with netlink_step(f"join netns {netns_path}"):
            netlink, index = _netns_socket(netns_path, interface)
        ipr = IPRoute(fileno=netlink.detach())
    else:
        ipr = IPRoute(fileno=netlink.detach())
        try:
            index = ipr.link("get", ifname=interface)[0]["index"]
        except NetlinkError as e:
            if e.code != errno.ENODEV:
                ipr.close()
                raise NetworkError(f"look up {interface} in netns {netns_path}: {os.strerror(e.code).lower()}") from e
            index = None
    try:
        yield ipr, index
    finally:
        ipr.close()


def _index(name: str) -> int | None:
    """A host link's index by name (link_lookup would dump every link: 500 pods, 500 veths)."""
    with netlink_step(f"look up link {name}"):
        return _if_index(name)


def _alias(ipr: Any, index: int) -> str | None:
    link = ipr.link("get", index=index)[0]
    value = link.get("IFLA_IFALIAS")
    return str(value) if value is not None else None


def _kind(ipr: Any, index: int) -> str | None:
    info = ipr.link("get", index=index)[0].get("IFLA_LINKINFO")
    return str(info.get("IFLA_INFO_KIND")) if info is not None else None


def _ensure_bridge(ipr: Any, config: BridgeConfig, gateway: ipaddress.IPv4Address, prefix: int) -> int:
    name = config.bridge
    index = _index(name)
    if index is not None and _ready(ipr, index, gateway, prefix):
        return index
    if index is None:
        try:
            with netlink_step(f"create bridge {name}"):
                ipr.link("add", ifname=name, kind="bridge")
        except NetworkError as e:
            # Another process may have created it meanwhile; that is the same bridge.
            if not (isinstance(e.__cause__, NetlinkError) and e.__cause__.code == errno.EEXIST):
                raise
        index = _index(name)
        if index is None:
            raise NetworkError(f"bridge {name}: gone right after it was created")
        with netlink_step(f"mark bridge {name}"):
            ipr.link("set", index=index, ifalias=BRIDGE_MARK)
    if not _has_address(ipr, index, gateway, prefix):
        try:
            with netlink_step(f"add {gateway}/{prefix} to bridge {name}"):
                ipr.addr("add", index=index, address=str(gateway), prefixlen=prefix)
        except NetworkError as e:
            if not (isinstance(e.__cause__, NetlinkError) and e.__cause__.code == errno.EEXIST):
                raise
    with netlink_step(f"set bridge {name} up"):
        ipr.link("set", index=index, state="up")
    return index


def _has_address(ipr: Any, index: int, gateway: ipaddress.IPv4Address, prefix: int) -> bool:
    held = {(str(a.get("IFA_ADDRESS")), int(a["prefixlen"])) for a in ipr.get_addr(index=index, family=socket.AF_INET)}
    return (str(gateway), prefix) in held


def _ready(ipr: Any, index: int, gateway: ipaddress.IPv4Address, prefix: int) -> bool:
    """Up, with the gateway address: the common case, where setup has nothing to change."""
    link = ipr.link("get", index=index)[0]
    return bool(link["flags"] & IFF_UP) and _has_address(ipr, index, gateway, prefix)


def _delete_host_veth(pod_id: str) -> None:
    """Deletes the pod's host veth (its peer in the pod goes with it) if it is there and
    marked as this pod's; a link of that name without the mark is not skiff's to delete."""
    name = host_veth_name(pod_id)
    with _iproute() as ipr:
        index = _index(name)
        if index is None:
            return
        alias = _alias(ipr, index)
        # No alias at all on a veth of this name: a setup that died between creating it and
        # marking it (the name is a hash of the pod's id, no one else's)
        unmarked_own = alias is None and _kind(ipr, index) == "veth"
        if alias != portmap.tag(pod_id) and not unmarked_own:
            raise NetworkError(f"link {name}: exists but is not skiff's veth for pod {pod_id}")
    _delete_link(index, name)


def setup(netns_path: str, pod_id: str, config: BridgeConfig,
          port_mappings: Sequence[PortMapping] = (), *, netlink: socket.socket | None = None) -> PodNetwork:
    """Connects the pod's netns to the bridge; a retry after a failed or interrupted setup of
    the same pod starts over and keeps the pod's address. The peer is created inside the
    pod's netns, already named eth0: moving and renaming it would cost two more kernel
    round trips, the move a slow one."""
    mark = portmap.tag(pod_id)  # validates the id before anything is created
    ipam = ipam_for(config)
    host_name = host_veth_name(pod_id)
    # Only a pod that holds an address can have left a veth or rules behind.
    retry = ipam.held(pod_id) is not None
    with Undo() as undo:
        ip = ipam.allocate(pod_id)
        undo.callback(ipam.release, pod_id)
        if retry:
            _delete_host_veth(pod_id)
        extra = {} if config.mtu is None else {"mtu": config.mtu}
        with _iproute() as ipr:
            key = (config.bridge, str(ipam.gateway), ipam.prefix)
            for attempt in (1, 2):
                bridge = _known_bridges.get(key) or _ensure_bridge(ipr, config, ipam.gateway, ipam.prefix)
                _known_bridges[key] = bridge
                try:
                    _add_veth(ipr, host_name, bridge, netns_path, extra,
                              f"create veth {host_name} on bridge {config.bridge} with its peer "
                              f"{POD_INTERFACE} in netns {netns_path}")
                    break
                except NetworkError:
                    # the bridge this process set up earlier may be gone (deleted by hand)
                    _known_bridges.pop(key, None)
                    if attempt == 2:
                        raise
            host = _index(host_name)
            if host is None:
                raise NetworkError(f"veth {host_name}: gone right after it was created")
            undo.callback(_delete_link, host, host_name)  # before the mark that teardown looks for
            with netlink_step(f"mark veth {host_name}"):
                ipr.link("set", index=host, ifalias=mark)
            with netlink_step(f"set hairpin mode on veth {host_name}"):
                # A pod that reaches itself through a service or hostPort: the DNAT'd packet
                # goes back out the bridge port it came in by (kubelet's hairpin-veth).
                ipr.brport("set", index=host, mode=1)
        with _iproute_in(netns_path, POD_INTERFACE, netlink) as (ns, inside):
            if inside is None:
                raise NetworkError(f"veth {POD_INTERFACE}: not found in netns {netns_path} after its creation")
            with netlink_step(f"add {ip}/{ipam.prefix} to {POD_INTERFACE} in netns {netns_path}"):
                ns.addr("add", index=inside, address=str(ip), prefixlen=ipam.prefix)
            with netlink_step(f"turn off IPv6 address generation on {POD_INTERFACE} in netns {netns_path}"):
                # The pod network is IPv4. An IPv6 link-local address would have the pod send
                # neighbour and router solicitations and multicast reports, which the bridge
                # floods to every other pod at each pod start.
                ns.link("set", index=inside, IFLA_AF_SPEC={"attrs": [["AF_INET6", {"attrs": [
                    ["IFLA_INET6_ADDR_GEN_MODE", IN6_ADDR_GEN_MODE_NONE]]}]]})
            with netlink_step(f"set {POD_INTERFACE} up in netns {netns_path}"):
                ns.link("set", index=inside, state="up")  # lo is up already (pod_namespaces.py)
            with netlink_step(f"add default route via {ipam.gateway} in netns {netns_path}"):
                ns.route("add", dst="0.0.0.0/0", gateway=str(ipam.gateway), oif=inside)
        cluster = ipaddress.IPv4Network(config.cluster_cidr) if config.cluster_cidr else ipam.network
        portmap.add(config.state_dir, pod_id, ip, cluster, masquerade=config.masquerade,
                    port_mappings=port_mappings, fresh=not retry)
        undo.callback(portmap.remove, config.state_dir, pod_id)
        undo.keep()
    return PodNetwork(ip=ip, gateway=ipam.gateway, prefix=ipam.prefix,
                      interface=POD_INTERFACE, veth_host=host_name)


def _add_veth(ipr: Any, host_name: str, bridge: int, netns_path: str, extra: dict[str, int], what: str) -> None:
    with netlink_step(what):
        nsfd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            ipr.link("add", ifname=host_name, kind="veth", master=bridge, state="up", **extra,
                     peer={"ifname": POD_INTERFACE, "net_ns_fd": nsfd, **extra})
        finally:
            os.close(nsfd)


def _delete_link(index: int, name: str) -> None:
    """Delete the veth (its peer goes with it); already gone is fine."""
    with _iproute() as ipr:
        try:
            with netlink_step(f"delete veth {name}"):
                ipr.link("del", index=index)
        except NetworkError as e:
            if not (isinstance(e.__cause__, NetlinkError) and e.__cause__.code == errno.ENODEV):
                raise


def teardown(netns_path: str | None, pod_id: str, config: BridgeConfig) -> None:
    """Removes the pod's veth, rules and address. Idempotent: what is already gone (the
    netns, the veth, the rules) is fine. netns_path is not needed (deleting the host end
    deletes the peer) and may be None once the pod's netns is gone."""
    portmap.tag(pod_id)
    _delete_host_veth(pod_id)
    portmap.remove(config.state_dir, pod_id)
    ipam_for(config).release(pod_id)


def remove_bridge(config: BridgeConfig) -> bool:
    """Deletes the bridge if skiff created it (its mark) and no port is left on it."""
    with _iproute() as ipr:
        index = _index(config.bridge)
        if index is None or _alias(ipr, index) != BRIDGE_MARK:
            return False
        if ipr.link_lookup(master=index):
            return False
        with netlink_step(f"delete bridge {config.bridge}"):
            ipr.link("del", index=index)
        for key in [k for k in _known_bridges if k[0] == config.bridge]:
            _known_bridges.pop(key, None)
        return True
