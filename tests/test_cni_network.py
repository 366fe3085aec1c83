"""Network mode "cni" (skiff.cri.network.cni) with Debian's real plugins (containernetworking-
plugins in /usr/lib/cni): bridge + host-local, portmap and loopback, from a conflist the test
writes, into network namespaces the test makes (a netns bind-mounted onto a file in tmp_path).

Every test uses its own bridge ("skc" + 8 hex), network name and 10.99.X.0/24 that no host route
overlaps, and host-local keeps its reservations in tmp_path. What the plugins leave by design is
removed by the `cni` fixture: the bridge (the bridge plugin never deletes it), net.ipv4.ip_forward
(isGateway turns it on), and portmap's shared iptables chains CNI-HOSTPORT-* with the `nat`
tables iptables-nft made for them, when they were not there before the test.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from support import free_subnet

from skiff.cri.network import NetworkError, PodNetwork, PortMapping, PortProtocol
from skiff.cri.network import cni
from skiff.errors import InvalidArgument

BIN_DIR = "/usr/lib/cni"
IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")
NAT_FAMILIES = ("ip", "ip6")

requires_iptables = pytest.mark.skipif(
    shutil.which("iptables") is None, reason="requires iptables for the portmap plugin (Debian package iptables)")


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=60)


def pod_id() -> str:
    return uuid.uuid4().hex + uuid.uuid4().hex  # 64 hex, like a CRI sandbox id


def in_netns(netns: Path, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run("nsenter", f"--net={netns}", *argv, check=check)


def ping(netns: Path | None, address: ipaddress.IPv4Address) -> bool:
    argv = ("busybox", "ping", "-c1", "-W1", str(address))
    return (in_netns(netns, *argv, check=False) if netns else run(*argv, check=False)).returncode == 0


def link_exists(name: str) -> bool:
    return os.path.exists(f"/sys/class/net/{name}")


# -- the nat tables portmap and ipMasq use (through iptables-nft) --------------------------

def nat_chains() -> dict[str, set[str]]:
    """Chain names of each `nat` table there is, by family."""
    found: dict[str, set[str]] = {}
    tables = json.loads(run("nft", "-j", "list", "tables").stdout)["nftables"]
    for item in tables:
        table = item.get("table", {})
        if table.get("name") == "nat" and table.get("family") in NAT_FAMILIES:
            listing = json.loads(run("nft", "-j", "list", "table", table["family"], "nat").stdout)["nftables"]
            found[table["family"]] = {i["chain"]["name"] for i in listing if "chain" in i}
    return found


def nat_rules(family: str) -> list[dict[str, Any]]:
    listing = json.loads(run("nft", "-j", "-a", "list", "table", family, "nat").stdout)["nftables"]
    return [i["rule"] for i in listing if "rule" in i]


def _jumps_to(rule: dict[str, Any], chains: set[str]) -> bool:
    for expr in rule.get("expr", []):
        for verdict in ("jump", "goto"):
            if isinstance(expr, dict) and expr.get(verdict, {}).get("target") in chains:
                return True
    return False


def remove_new_cni_chains(before: dict[str, set[str]]) -> None:
    """Deletes the CNI-* chains that were not there before (and the rules jumping to them),
    then a nat table that was not there before and holds no rule any more."""
    for family, chains in nat_chains().items():
        new = {c for c in chains - before.get(family, set()) if c.startswith("CNI-")}
        script = [f"delete rule {family} nat {r['chain']} handle {r['handle']}"
                  for r in nat_rules(family) if r["chain"] in new or _jumps_to(r, new)]
        script += [f"delete chain {family} nat {c}" for c in sorted(new)]
        if script:
            subprocess.run(["nft", "-f", "-"], input="\n".join(script) + "\n", text=True, check=True)
        if family not in before and not nat_rules(family):
            run("nft", "delete", "table", family, "nat")


# -- fixtures ------------------------------------------------------------------------------

@dataclass
class Cni:
    tmp: Path
    subnet: ipaddress.IPv4Network
    bridge: str
    name: str
    config: cni.CniConfig
    netns: list[Path] = field(default_factory=list)
    pods: list[str] = field(default_factory=list)

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        return self.subnet.network_address + 1

    @property
    def ipam_dir(self) -> Path:
        return self.tmp / "ipam" / self.name  # host-local: <dataDir>/<network name>/<address>

    def reservations(self) -> set[str]:
        if not self.ipam_dir.exists():
            return set()
        return {p.name for p in self.ipam_dir.iterdir() if _is_address(p.name)}

    def plugins(self, *extra: dict[str, Any], portmap: bool = True) -> list[dict[str, Any]]:
        """bridge + host-local, then `extra`, then portmap and loopback."""
        bridge = {"type": "bridge", "bridge": self.bridge, "isGateway": True, "ipMasq": True,
                  "ipam": {"type": "host-local", "ranges": [[{"subnet": str(self.subnet)}]],
                           "routes": [{"dst": "0.0.0.0/0"}], "dataDir": str(self.tmp / "ipam")}}
        tail: list[dict[str, Any]] = [{"type": "loopback"}]
        if portmap:
            tail.insert(0, {"type": "portmap", "capabilities": {"portMappings": True}})
        return [bridge, *extra, *tail]

    def write(self, file_name: str = "10-skiff-test.conflist", *, plugins: list[dict[str, Any]] | None = None,
              version: str = "1.0.0") -> Path:
        path = Path(self.config.conf_dir) / file_name
        path.write_text(json.dumps({"cniVersion": version, "name": self.name,
                                    "plugins": self.plugins() if plugins is None else plugins}))
        return path

    def add_netns(self) -> Path:
        path = self.tmp / f"netns-{len(self.netns)}"
        path.touch()
        self.netns.append(path)
        run("unshare", f"--net={path}", "true")  # bind-mounts the new netns onto the file
        return path

    def setup(self, netns: Path, *ports: PortMapping, pid: str | None = None) -> tuple[str, PodNetwork]:
        pid = pid or pod_id()
        self.pods.append(pid)
        return pid, cni.setup(str(netns), pid, self.config, ports, pod_name="web", pod_namespace="default",
                              pod_uid=str(uuid.uuid4()))


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _is_mount_point(path: Path) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == str(path) for line in f)


@pytest.fixture
def cni_env(tmp_path: Path) -> Iterator[Cni]:
    for tool in ("nft", "busybox", "nsenter", "unshare"):
        if shutil.which(tool) is None:
            pytest.skip(f"requires {tool}")
    if not os.path.isfile(f"{BIN_DIR}/bridge"):
        pytest.skip(f"requires the CNI plugins in {BIN_DIR} (Debian package containernetworking-plugins)")
    (tmp_path / "net.d").mkdir()
    config = cni.CniConfig(conf_dir=str(tmp_path / "net.d"), bin_dir=BIN_DIR, state_dir=tmp_path / "state")
    env = Cni(tmp=tmp_path, subnet=free_subnet(99), bridge=f"skc{uuid.uuid4().hex[:8]}",
              name=f"skiff-test-{uuid.uuid4().hex[:8]}", config=config)
    forward = IP_FORWARD.read_text()
    chains = nat_chains()
    try:
        yield env
    finally:
        errors: list[Exception] = []
        for pid in env.pods:
            try:
                cni.teardown(None, pid, env.config)
            except Exception as e:
                errors.append(e)
        run("ip", "link", "del", env.bridge, check=False)  # the test's own; the plugin never deletes it
        for netns in env.netns:
            while _is_mount_point(netns):
                run("umount", str(netns))
        try:
            remove_new_cni_chains(chains)
        except Exception as e:
            errors.append(e)
        if IP_FORWARD.read_text() != forward:
            IP_FORWARD.write_text(forward)
        if errors:
            raise ExceptionGroup("cni cleanup", errors)


# -- configuration -------------------------------------------------------------------------

def test_first_config_file_by_name_and_a_conf_becomes_a_list(tmp_path: Path) -> None:
    conf = cni.CniConfig(conf_dir=str(tmp_path), bin_dir=BIN_DIR, state_dir=tmp_path / "state")
    (tmp_path / "README").write_text("not a config")
    (tmp_path / "20-b.conflist").write_text(json.dumps(
        {"cniVersion": "1.0.0", "name": "b", "plugins": [{"type": "bridge"}, {"type": "portmap"}]}))
    (tmp_path / "10-a.conf").write_text(json.dumps(
        {"cniVersion": "0.4.0", "name": "a", "type": "bridge", "bridge": "x0"}))
    network = cni.load_network(conf)
    assert network.name == "a" and network.cni_version == "0.4.0"
    assert [p.type for p in network.plugins] == ["bridge"]
    assert network.plugins[0].conf["bridge"] == "x0"
    assert network.source == str(tmp_path / "10-a.conf")
    (tmp_path / "10-a.conf").unlink()
    network = cni.load_network(conf)
    assert [p.type for p in network.plugins] == ["bridge", "portmap"]


@pytest.mark.parametrize("content, message", [
    ("{", "not valid json"),
    ('{"cniVersion": "1.0.0", "plugins": [{"type": "bridge"}]}', "name: None is not a network name"),
    ('{"cniVersion": "1.0.0", "name": "n", "plugins": []}', "plugins: must be a non-empty list"),
    ('{"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "../x"}]}', "plugins[0].type: '../x'"),
    ('{"cniVersion": "1.0.0", "name": "n"}', "plugins: missing from a .conflist"),
])
def test_a_bad_config_is_invalid_naming_the_file(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "10-bad.conflist").write_text(content)
    conf = cni.CniConfig(conf_dir=str(tmp_path), bin_dir=BIN_DIR, state_dir=tmp_path / "state")
    with pytest.raises(InvalidArgument, match=f"cni config {tmp_path}/10-bad.conflist: .*") as e:
        cni.load_network(conf)
    assert message in str(e.value)
    ok, reason = cni.ready(conf)
    assert not ok and "10-bad.conflist" in reason


def test_no_config_and_a_missing_plugin_are_not_ready(tmp_path: Path) -> None:
    conf = cni.CniConfig(conf_dir=str(tmp_path), bin_dir=BIN_DIR, state_dir=tmp_path / "state")
    with pytest.raises(InvalidArgument, match=f"cni conf_dir {tmp_path}: no network config"):
        cni.load_network(conf)
    ok, reason = cni.ready(conf)
    assert not ok and reason.startswith("cni plugin not initialized: ") and str(tmp_path) in reason
    (tmp_path / "10-x.conflist").write_text(json.dumps(
        {"cniVersion": "1.0.0", "name": "x", "plugins": [{"type": "bridge"}, {"type": "skiff-absent"}]}))
    ok, reason = cni.ready(conf)
    assert not ok and f"cni plugin skiff-absent (network x, {tmp_path}/10-x.conflist): not found in {BIN_DIR}" in reason
    with pytest.raises(NetworkError, match="cni plugin skiff-absent"):
        cni.setup("/proc/self/ns/net", pod_id(), conf)  # refused before any plugin runs
    assert not (tmp_path / "state").exists()


# -- pods ----------------------------------------------------------------------------------

def test_two_pods_get_addresses_reach_the_gateway_and_go_away(cni_env: Cni) -> None:
    cni_env.write()
    assert cni.ready(cni_env.config) == (True, "")
    ns1, ns2 = cni_env.add_netns(), cni_env.add_netns()
    id1, pod1 = cni_env.setup(ns1)
    id2, pod2 = cni_env.setup(ns2)
    assert pod1.ip in cni_env.subnet and pod2.ip in cni_env.subnet and pod1.ip != pod2.ip
    assert pod1.gateway == cni_env.gateway and pod1.prefix == 24 and pod1.interface == "eth0"
    assert pod1.veth_host and pod1.veth_host != pod2.veth_host
    host = json.loads(run("ip", "-j", "link", "show", pod1.veth_host).stdout)[0]
    assert host["master"] == cni_env.bridge
    assert cni_env.reservations() == {str(pod1.ip), str(pod2.ip)}

    eth0 = json.loads(in_netns(ns1, "ip", "-j", "addr", "show", "eth0").stdout)[0]
    assert (str(pod1.ip), 24) in {(a["local"], a["prefixlen"]) for a in eth0["addr_info"]}
    assert "UP" in json.loads(in_netns(ns1, "ip", "-j", "link", "show", "lo").stdout)[0]["flags"]
    assert ping(ns1, cni_env.gateway)
    assert ping(ns1, pod2.ip)
    assert ping(None, pod1.ip)

    cni.teardown(str(ns1), id1, cni_env.config)
    assert not link_exists(pod1.veth_host)
    assert in_netns(ns1, "ip", "link", "show", "eth0", check=False).returncode != 0
    assert cni_env.reservations() == {str(pod2.ip)}
    assert not ping(ns2, pod1.ip)
    assert ping(ns2, cni_env.gateway)
    cni.teardown(str(ns1), id1, cni_env.config)  # again: no cache entry, DEL is still fine
    cni.teardown(None, id1, cni_env.config)  # the netns gone too
    # CNI_NETNS="" tells the plugins the netns is gone (and its veth with it): they only
    # release the address, so a pod whose netns lives on is torn down with its path.
    cni.teardown(None, id2, cni_env.config)
    assert cni_env.reservations() == set() and link_exists(pod2.veth_host)
    cni.teardown(str(ns2), id2, cni_env.config)
    assert not link_exists(pod2.veth_host)


def test_check_compares_the_pod_with_the_cached_result(cni_env: Cni) -> None:
    # Without portmap: 1.1.1's CHECK also checks ip6tables chains an IPv4 pod never had.
    cni_env.write(plugins=cni_env.plugins(portmap=False))
    ns = cni_env.add_netns()
    pid, _ = cni_env.setup(ns)
    cni.check(str(ns), pid, cni_env.config)
    in_netns(ns, "ip", "link", "del", "eth0")
    with pytest.raises(NetworkError, match=r"cni plugin bridge \(network skiff-test-\w+\) check: "):
        cni.check(str(ns), pid, cni_env.config)
    cni.teardown(str(ns), pid, cni_env.config)
    with pytest.raises(NetworkError, match=f"cni check of pod {pid}: no cached result"):
        cni.check(str(ns), pid, cni_env.config)


def test_a_conf_with_cni_version_0_3_1_works_without_prev_result_on_del(cni_env: Cni) -> None:
    bridge = cni_env.plugins()[0]
    (Path(cni_env.config.conf_dir) / "10-single.conf").write_text(
        json.dumps({"cniVersion": "0.3.1", "name": cni_env.name, **bridge}))
    ns = cni_env.add_netns()
    pid, pod = cni_env.setup(ns)
    assert pod.ip in cni_env.subnet and ping(None, pod.ip)
    cni.teardown(str(ns), pid, cni_env.config)
    assert cni_env.reservations() == set() and not link_exists(pod.veth_host)


@requires_iptables
def test_host_port_mapping_comes_and_goes_with_the_pod(cni_env: Cni) -> None:
    cni_env.write()
    ns = cni_env.add_netns()
    pid, pod = cni_env.setup(ns, PortMapping(host_port=18090, container_port=80),
                             PortMapping(host_port=18053, container_port=53, protocol=PortProtocol.UDP,
                                         host_ip="127.0.0.1"))
    rules = run("nft", "list", "table", "ip", "nat").stdout
    assert f"dnat to {pod.ip}:80" in rules and "dport 18090" in rules
    assert f"dnat to {pod.ip}:53" in rules and "dport 18053" in rules
    cached = json.loads((cni_env.config.state_dir / "results" / f"{pid}-eth0.json").read_text())
    assert cached["capabilityArgs"]["portMappings"] == [
        {"hostPort": 18090, "containerPort": 80, "protocol": "tcp", "hostIP": ""},
        {"hostPort": 18053, "containerPort": 53, "protocol": "udp", "hostIP": "127.0.0.1"}]
    assert ["K8S_POD_INFRA_CONTAINER_ID", pid] in cached["cniArgs"]
    cni.teardown(str(ns), pid, cni_env.config)
    rules = run("nft", "list", "table", "ip", "nat").stdout
    assert str(pod.ip) not in rules and "18090" not in rules


@requires_iptables
def test_teardown_after_a_restart_needs_only_the_cache(cni_env: Cni) -> None:
    """Setup in another process; teardown here, with the config file gone meanwhile: only the
    cache on disk knows the network, its plugins and the pod's result."""
    conf_file = cni_env.write()
    ns = cni_env.add_netns()
    pid = pod_id()
    cni_env.pods.append(pid)
    script = ("import sys; from pathlib import Path; from skiff.cri.network import cni, PortMapping\n"
              "c = cni.CniConfig(conf_dir=sys.argv[1], bin_dir=sys.argv[2], state_dir=Path(sys.argv[3]))\n"
              "p = cni.setup(sys.argv[4], sys.argv[5], c, [PortMapping(host_port=18091, container_port=80)])\n"
              "print(p.ip, p.veth_host)\n")
    done = run(sys.executable, "-c", script, cni_env.config.conf_dir, BIN_DIR, str(cni_env.config.state_dir),
               str(ns), pid)
    ip, veth = done.stdout.split()
    assert link_exists(veth) and cni_env.reservations() == {ip}
    assert "dport 18091" in run("nft", "list", "table", "ip", "nat").stdout
    conf_file.unlink()

    cni.teardown(str(ns), pid, cni_env.config)
    assert not link_exists(veth)
    assert cni_env.reservations() == set()
    assert "18091" not in run("nft", "list", "table", "ip", "nat").stdout
    assert not (cni_env.config.state_dir / "results" / f"{pid}-eth0.json").exists()


@requires_iptables
def test_a_daemon_killed_during_add_leaves_a_cache_that_undoes_the_ports(cni_env: Cni) -> None:
    """The setup's process dies after portmap's ADD (a plugin after it kills it): the entry
    written before the first ADD still has the port mappings, so DEL removes the DNAT."""
    killer = Path(cni_env.tmp) / "bin" / "skiff-killer"
    killer.parent.mkdir()
    # only on ADD: the teardown below runs its DEL in this very process
    killer.write_text('#!/bin/sh\nif [ "$CNI_COMMAND" = ADD ]; then kill -9 $PPID; sleep 5; fi\nexit 0\n')
    killer.chmod(0o755)
    for name in os.listdir(BIN_DIR):
        os.symlink(os.path.join(BIN_DIR, name), killer.parent / name)
    plugins = cni_env.plugins()
    cni_env.write(plugins=[*plugins[:-1], {"type": "skiff-killer"}, plugins[-1]])
    ns = cni_env.add_netns()
    pid = pod_id()
    config = cni.CniConfig(conf_dir=cni_env.config.conf_dir, bin_dir=str(killer.parent),
                           state_dir=cni_env.config.state_dir)
    script = ("import sys; from pathlib import Path; from skiff.cri.network import cni, PortMapping\n"
              "c = cni.CniConfig(conf_dir=sys.argv[1], bin_dir=sys.argv[2], state_dir=Path(sys.argv[3]))\n"
              "cni.setup(sys.argv[4], sys.argv[5], c, [PortMapping(host_port=18092, container_port=80)])\n")
    try:
        done = run(sys.executable, "-c", script, cni_env.config.conf_dir, str(killer.parent),
                   str(cni_env.config.state_dir), str(ns), pid, check=False)
        assert done.returncode == -9
        assert "dport 18092" in run("nft", "list", "table", "ip", "nat").stdout
    finally:
        cni.teardown(str(ns), pid, config)
    assert "18092" not in run("nft", "list", "table", "ip", "nat").stdout
    assert cni_env.reservations() == set()


def test_setup_again_starts_over(cni_env: Cni) -> None:
    cni_env.write(plugins=cni_env.plugins(portmap=False))
    ns = cni_env.add_netns()
    pid, first = cni_env.setup(ns)
    _, second = cni_env.setup(ns, pid=pid)  # host-local alone would refuse a second ADD
    assert cni_env.reservations() == {str(second.ip)}
    assert not link_exists(first.veth_host) or first.veth_host == second.veth_host
    assert ping(None, second.ip)


def test_a_failing_plugin_names_itself_and_leaves_nothing(cni_env: Cni) -> None:
    bin_dir = cni_env.tmp / "bin"
    bin_dir.mkdir()
    log = cni_env.tmp / "broken.log"
    broken = bin_dir / "skiff-broken"
    broken.write_text(
        "#!/bin/sh\n"
        f'echo "$CNI_COMMAND $CNI_CONTAINERID" >> {log}\n'
        'cat > /dev/null\n'
        'if [ "$CNI_COMMAND" = ADD ]; then\n'
        '  echo \'{"cniVersion": "1.0.0", "code": 999, "msg": "skiff test failure", "details": "on purpose"}\'\n'
        '  exit 1\n'
        'fi\n')
    broken.chmod(0o755)
    cni_env.config = cni.CniConfig(conf_dir=cni_env.config.conf_dir, bin_dir=f"{bin_dir}:{BIN_DIR}",
                                   state_dir=cni_env.config.state_dir)
    cni_env.write(plugins=cni_env.plugins({"type": "skiff-broken"}, portmap=False))
    ns = cni_env.add_netns()
    pid = pod_id()
    cni_env.pods.append(pid)
    with pytest.raises(NetworkError) as e:
        cni.setup(str(ns), pid, cni_env.config)
    assert str(e.value) == (f"cni plugin skiff-broken (network {cni_env.name}) add: "
                            "skiff test failure: on purpose (code 999)")
    assert log.read_text().split("\n")[:2] == [f"ADD {pid}", f"DEL {pid}"]  # undone, in reverse
    assert cni_env.reservations() == set()
    ports = json.loads(run("ip", "-j", "link", "show", "master", cni_env.bridge).stdout)
    assert ports == []
    assert in_netns(ns, "ip", "link", "show", "eth0", check=False).returncode != 0
    assert not (cni_env.config.state_dir / "results" / f"{pid}-eth0.json").exists()


def test_a_plugin_without_a_json_error_is_reported_with_its_stderr(cni_env: Cni) -> None:
    bin_dir = cni_env.tmp / "bin"
    bin_dir.mkdir()
    (bin_dir / "skiff-crash").write_text("#!/bin/sh\necho 'panic: something broke' >&2\nexit 2\n")
    (bin_dir / "skiff-crash").chmod(0o755)
    cni_env.config = cni.CniConfig(conf_dir=cni_env.config.conf_dir, bin_dir=str(bin_dir),
                                   state_dir=cni_env.config.state_dir)
    cni_env.write(plugins=[{"type": "skiff-crash"}])
    with pytest.raises(NetworkError, match=r"cni plugin skiff-crash \(network .*\) add: exited with status 2: "
                                           r"panic: something broke") as e:
        cni.setup("/proc/self/ns/net", pod_id(), cni_env.config)
    assert "del: exited with status 2" in "".join(getattr(e.value, "__notes__", []))


def test_bad_arguments_are_refused_before_any_plugin_runs(cni_env: Cni) -> None:
    cni_env.write()
    with pytest.raises(InvalidArgument, match="pod id"):
        cni.setup("/proc/self/ns/net", "../x", cni_env.config)
    with pytest.raises(InvalidArgument, match="netns path 'netns': must be absolute"):
        cni.setup("netns", pod_id(), cni_env.config)
    with pytest.raises(InvalidArgument, match="K8S_POD_NAME: 'a;b'"):
        cni.setup("/proc/self/ns/net", pod_id(), cni_env.config, pod_name="a;b")
    with pytest.raises(InvalidArgument, match="port_mappings.host_port: 0 is not a port"):
        cni.setup("/proc/self/ns/net", pod_id(), cni_env.config, [PortMapping(host_port=0, container_port=1)])
    assert not link_exists(cni_env.bridge)


# -- through the CRI service ---------------------------------------------------------------

@pytest.mark.requires("busybox")
def test_cri_pods_on_a_cni_conflist(cni_env: Cni, tmp_path: Path, cri_images_root: str) -> None:
    import dataclasses

    from cri_api.v1 import api_pb2 as pb
    from cri_fixture import in_process, service_config

    cni_env.write()
    config = service_config(tmp_path, cri_images_root, mode="cni")
    config = dataclasses.replace(config, network=dataclasses.replace(
        config.network, cni_conf_dir=cni_env.config.conf_dir, cni_bin_dir=BIN_DIR))
    with in_process(config) as service:
        conditions = {c.type: c.status for c in service.runtime.Status(pb.StatusRequest()).status.conditions}
        assert conditions["NetworkReady"] is True
        pod_id, pod = service.run_pod("cni-pod")
        ip = ipaddress.IPv4Address(service.pod_status(pod_id).network.ip)
        assert ip in cni_env.subnet and cni_env.reservations() == {str(ip)}
        cid = service.start(pod_id, pod, "main", "sleep", "3600")
        assert service.exec(cid, "ping", "-c", "1", "-W", "2", str(cni_env.gateway)).exit_code == 0
        assert ping(None, ip)
        service.remove_all()
        assert cni_env.reservations() == set()
