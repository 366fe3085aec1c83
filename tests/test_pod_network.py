"""Built-in pod networking (skiff.cri.network) on the real kernel: IPAM files, the bridge and
veth pairs into network namespaces the tests create, and skiff's nftables table.

Every test uses its own bridge ("skt" + 8 hex) and a 10.244.X.0/24 no host route overlaps;
traffic goes only between the test's namespaces and the host over that bridge.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from support import free_subnet

from skiff.cri.network import BridgeConfig, NetworkError, PodNetwork, PortMapping, PortProtocol
from skiff.cri.network import bridge, portmap
from skiff.cri.network.ipam import IPAM
from skiff.errors import InvalidArgument, ResourceExhausted


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=30)


def pod_id() -> str:
    return uuid.uuid4().hex + uuid.uuid4().hex  # 64 hex, like a CRI sandbox id


def ns_exec(ns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run("ip", "netns", "exec", ns, *argv, check=check)


def ping(ns: str | None, address: ipaddress.IPv4Address) -> bool:
    argv = ["busybox", "ping", "-c1", "-W1", str(address)]
    done = ns_exec(ns, *argv, check=False) if ns else run(*argv, check=False)
    return done.returncode == 0


@dataclass
class Net:
    config: BridgeConfig
    netns: list[str] = field(default_factory=list)
    pods: list[str] = field(default_factory=list)

    def add_netns(self) -> str:
        name = f"skiff-test-{uuid.uuid4().hex[:8]}"
        run("ip", "netns", "add", name)
        self.netns.append(name)
        return name

    def setup(self, ns: str, pid: str | None = None, *ports: PortMapping) -> tuple[str, PodNetwork]:
        pid = pid or pod_id()
        self.pods.append(pid)
        return pid, bridge.setup(f"/run/netns/{ns}", pid, self.config, port_mappings=ports)


def _is_mount_point(path: str) -> bool:
    """From mountinfo: os.path.ismount misses a directory bind-mounted onto itself."""
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == path for line in f)


@pytest.fixture
def ip_forward() -> Iterator[str]:
    before = portmap.IP_FORWARD.read_text()
    yield before.strip()
    if portmap.IP_FORWARD.read_text() != before:
        portmap.IP_FORWARD.write_text(before)


@pytest.fixture
def net(tmp_path: Path, ip_forward: str) -> Iterator[Net]:
    if shutil.which("nft") is None:
        pytest.skip("requires nft (Debian package nftables)")
    if shutil.which("busybox") is None:
        pytest.skip("requires busybox (Debian busybox-static)")
    config = BridgeConfig(pod_cidr=str(free_subnet(244)), bridge=f"skt{uuid.uuid4().hex[:8]}",
                          state_dir=tmp_path / "network")
    n = Net(config)
    # `ip netns add` makes /run/netns a mount point the first time it runs on a machine:
    # that mount is this test's to undo, when it made it.
    had_netns_mount = _is_mount_point("/run/netns")
    had_netns_dir = os.path.isdir("/run/netns")
    try:
        yield n
    finally:
        errors = []
        for pid in n.pods:
            try:
                bridge.teardown(None, pid, config)
            except Exception as e:
                errors.append(e)
        try:
            bridge.remove_bridge(config)
        except Exception as e:
            errors.append(e)
        run("ip", "link", "del", config.bridge, check=False)  # the test's own, whatever happened
        for ns in n.netns:
            run("ip", "netns", "del", ns, check=False)
        if not had_netns_mount and _is_mount_point("/run/netns") and not os.listdir("/run/netns"):
            while _is_mount_point("/run/netns"):  # ip may have stacked a bind on a bind
                run("umount", "/run/netns")
            if not had_netns_dir:
                os.rmdir("/run/netns")
        if errors:
            raise ExceptionGroup("network cleanup", errors)


# -- IPAM --------------------------------------------------------------------------------

def test_ipam_gateway_first_then_pods_and_exhaustion(tmp_path: Path) -> None:
    ipam = IPAM(tmp_path, "10.244.1.0/30")
    assert ipam.gateway == ipaddress.IPv4Address("10.244.1.1")
    assert ipam.allocate("pod-a") == ipaddress.IPv4Address("10.244.1.2")
    with pytest.raises(ResourceExhausted) as e:
        ipam.allocate("pod-b")
    assert str(e.value) == "pod CIDR 10.244.1.0/30: no address left"
    assert ipam.allocate("pod-a") == ipaddress.IPv4Address("10.244.1.2")  # a retry: the same one


def test_ipam_survives_a_new_object_and_releases_by_owner(tmp_path: Path) -> None:
    first = IPAM(tmp_path, "10.244.2.0/29")
    a, b = first.allocate("pod-a"), first.allocate("pod-b")
    assert a != b
    again = IPAM(tmp_path, "10.244.2.0/29")
    assert again.allocations() == {a: "pod-a", b: "pod-b"}
    c = again.allocate("pod-c")
    assert c not in (a, b)
    assert again.release("pod-a") == [a]
    assert again.release("pod-a") == []
    assert set(IPAM(tmp_path, "10.244.2.0/29").allocations().values()) == {"pod-b", "pod-c"}
    # a released address is not handed out again at once
    assert again.allocate("pod-d") != a


def test_ipam_never_gives_one_address_to_two_processes(tmp_path: Path) -> None:
    script = (
        "import sys; from pathlib import Path; from skiff.cri.network.ipam import IPAM\n"
        "ipam = IPAM(Path(sys.argv[1]), '10.244.3.0/27')\n"
        "for i in range(8): print(ipam.allocate(f'{sys.argv[2]}-{i}'))\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path), f"p{n}"],
                              stdout=subprocess.PIPE, text=True) for n in range(3)]
    handed = []
    for p in procs:
        out, _ = p.communicate(timeout=60)
        assert p.returncode == 0
        handed += out.split()
    assert len(handed) == 24 and len(set(handed)) == 24
    assert len(IPAM(tmp_path, "10.244.3.0/27").allocations()) == 24


@pytest.mark.parametrize("cidr", ["10.244.1.1/24", "10.244.1.0/31", "not-a-cidr"])
def test_ipam_rejects_bad_cidr(tmp_path: Path, cidr: str) -> None:
    with pytest.raises(InvalidArgument, match=f"pod CIDR {cidr}"):
        IPAM(tmp_path, cidr)


# -- bridge and veth ---------------------------------------------------------------------

def test_two_pods_reach_each_other_and_the_host_reaches_them(net: Net) -> None:
    ns1, ns2 = net.add_netns(), net.add_netns()
    id1, pod1 = net.setup(ns1)
    id2, pod2 = net.setup(ns2)
    network = ipaddress.IPv4Network(net.config.pod_cidr)
    assert pod1.ip != pod2.ip and pod1.ip in network and pod2.ip in network
    assert pod1.gateway == network.network_address + 1 and pod1.prefix == 24
    assert pod1.interface == "eth0" and pod1.veth_host == bridge.host_veth_name(id1)
    assert len(pod1.veth_host) <= 15

    eth0 = json.loads(ns_exec(ns1, "ip", "-j", "addr", "show", "eth0").stdout)[0]
    assert {(a["local"], a["prefixlen"]) for a in eth0["addr_info"]} >= {(str(pod1.ip), 24)}
    assert "UP" in eth0["flags"]
    # IPv4 only: no link-local address, whose neighbour discovery the bridge would flood to every pod
    assert [a for a in eth0["addr_info"] if a["family"] == "inet6"] == []
    # lo: brought up where the pod's netns is made (pod_namespaces.py), for every network mode
    routes = json.loads(ns_exec(ns1, "ip", "-j", "route").stdout)
    assert {"dst": "default", "gateway": str(pod1.gateway)}.items() <= routes[0].items() or any(
        r["dst"] == "default" and r.get("gateway") == str(pod1.gateway) for r in routes)
    host = json.loads(run("ip", "-j", "link", "show", pod1.veth_host).stdout)[0]
    assert host["master"] == net.config.bridge and "UP" in host["flags"]

    assert ping(ns1, pod2.ip)
    assert ping(ns2, pod1.ip)
    assert ping(None, pod1.ip)  # kubelet's probes dial pod IPs from the host

    bridge.teardown(f"/run/netns/{ns1}", id1, net.config)
    bridge.teardown(f"/run/netns/{ns1}", id1, net.config)  # already gone is fine
    assert run("ip", "link", "show", pod1.veth_host, check=False).returncode != 0
    assert ns_exec(ns1, "ip", "link", "show", "eth0", check=False).returncode != 0
    assert bridge.ipam_for(net.config).allocations() == {pod2.ip: id2}
    assert ping(ns2, pod2.gateway)
    assert not ping(ns2, pod1.ip)  # and ping does fail where nothing answers


def test_netns_of_a_process(net: Net) -> None:
    """The CRI service hands over /proc/<pid>/ns/net of the pod's infra process."""
    holder = subprocess.Popen(["unshare", "--net", "sleep", "60"])
    try:
        own = os.readlink("/proc/self/ns/net")
        for _ in range(200):
            if os.readlink(f"/proc/{holder.pid}/ns/net") != own:
                break
            time.sleep(0.01)
        pid = pod_id()
        net.pods.append(pid)
        pod = bridge.setup(f"/proc/{holder.pid}/ns/net", pid, net.config)
        assert ping(None, pod.ip)
        bridge.teardown(f"/proc/{holder.pid}/ns/net", pid, net.config)
        assert not ping(None, pod.ip)
    finally:
        holder.kill()
        holder.wait()


def test_setup_again_keeps_the_address(net: Net) -> None:
    ns = net.add_netns()
    pid, first = net.setup(ns)
    _, second = net.setup(ns, pid)
    assert second.ip == first.ip
    assert ping(None, second.ip)


def test_failed_setup_leaves_nothing(net: Net) -> None:
    pid = pod_id()
    net.pods.append(pid)
    with pytest.raises(NetworkError, match="/run/netns/skiff-test-absent"):
        bridge.setup("/run/netns/skiff-test-absent", pid, net.config)
    assert bridge.ipam_for(net.config).allocations() == {}
    assert run("ip", "link", "show", bridge.host_veth_name(pid), check=False).returncode != 0
    assert portmap.tag(pid) not in run("nft", "list", "ruleset").stdout


def test_a_link_without_skiffs_mark_is_not_deleted(net: Net) -> None:
    pid = pod_id()
    name = bridge.host_veth_name(pid)
    run("ip", "link", "add", name, "type", "bridge")  # no dummy module here
    try:
        with pytest.raises(NetworkError, match=f"link {name}: exists but is not skiff's"):
            bridge.teardown(None, pid, net.config)
        assert run("ip", "link", "show", name, check=False).returncode == 0
    finally:
        run("ip", "link", "del", name)


def test_an_unmarked_veth_of_the_pod_is_one_a_setup_left_before_marking_it(net: Net) -> None:
    """A daemon killed between creating the veth and marking it: teardown removes it."""
    pid = pod_id()
    name = bridge.host_veth_name(pid)
    run("ip", "link", "add", name, "type", "veth", "peer", "name", f"skp{name[3:]}")
    try:
        bridge.teardown(None, pid, net.config)
        assert run("ip", "link", "show", name, check=False).returncode != 0
    finally:
        run("ip", "link", "del", name, check=False)


def test_bad_pod_id_is_refused_before_anything_is_made(net: Net) -> None:
    with pytest.raises(InvalidArgument, match="pod id"):
        bridge.setup("/run/netns/whatever", 'x" ; flush ruleset', net.config)


# -- nftables ----------------------------------------------------------------------------

def test_hostport_dnat_and_masquerade_come_and_go_with_the_pod(net: Net, ip_forward: str) -> None:
    ns = net.add_netns()
    pid, pod = net.setup(ns, None, PortMapping(host_port=18080, container_port=80),
                         PortMapping(host_port=15353, container_port=53, protocol=PortProtocol.UDP,
                                     host_ip="127.0.0.1"))
    table = run("nft", "list", "table", "ip", "skiff").stdout
    mine = [line.strip() for line in table.splitlines() if portmap.tag(pid) in line]
    assert any(f"tcp dport 18080 dnat to {pod.ip}:80" in line for line in mine)
    assert any(f"ip daddr 127.0.0.1" in line and f"udp dport 15353 dnat to {pod.ip}:53" in line for line in mine)
    assert any(f"ip saddr {pod.ip} ip daddr != {net.config.pod_cidr} masquerade" in line for line in mine)
    assert len(mine) == 5  # prerouting and output for each mapping, one masquerade
    assert portmap.IP_FORWARD.read_text().strip() == "1"
    assert portmap.forwarding_changed(net.config.state_dir) == (ip_forward == "0")

    bridge.teardown(f"/run/netns/{ns}", pid, net.config)
    bridge.teardown(f"/run/netns/{ns}", pid, net.config)
    assert portmap.tag(pid) not in run("nft", "list", "ruleset").stdout
    if "table ip skiff" not in run("nft", "list", "tables").stdout:
        # the table went with its last rule, and skiff put ip_forward back
        assert portmap.IP_FORWARD.read_text().strip() == ip_forward
        assert not portmap.forwarding_changed(net.config.state_dir)


def test_no_masquerade_and_no_ports_makes_no_table(tmp_path: Path, ip_forward: str) -> None:
    config = BridgeConfig(pod_cidr="10.244.9.0/24", state_dir=tmp_path, masquerade=False)
    pid = pod_id()
    portmap.add(config.state_dir, pid, ipaddress.IPv4Address("10.244.9.2"), config.network,
                masquerade=False, port_mappings=())
    assert portmap.tag(pid) not in run("nft", "list", "ruleset").stdout
    assert not portmap.forwarding_changed(tmp_path)


def test_bad_port_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="port_mappings.host_port: 0 is not a port"):
        portmap.pod_rules(pod_id(), ipaddress.IPv4Address("10.244.9.2"),
                          ipaddress.IPv4Network("10.244.9.0/24"), masquerade=True,
                          port_mappings=[PortMapping(host_port=0, container_port=80)])
