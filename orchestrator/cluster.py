"""`skiff cluster up|down|status`: a cluster of N nodes on this machine, for tests and demos.

    host netns                                   node<i> netns (<run>/node<i>/netns)
    control plane (API server, scheduler,        skiff cri serve --netns   (bridge skiff0, 10.244.<i>.1/24)
      controllers) on <run>/api.sock             skiff node-agent --netns  (InternalIP 10.200.0.<10+i>)
    bridge skc-<name> 10.200.0.1/24 ─── veth ─── eth0 10.200.0.<10+i>/24, default via 10.200.0.1
      routes: 10.244.<i>.0/24 via node i                 10.244.<j>.0/24 via node j (j != i)
              10.96.0.0/16 (services) via node 1  skiff proxy --netns    (table ip skiff-proxy)

Each node's CRI service runs in the node's network namespace, so its pods' bridge, host-network
pods and hostPorts are the node's; its image pulls still go out from the host's namespace, so a
registry on the host's loopback serves every node, and the nodes share the host's image store
(`--images-root`, default skiff's own): what the host has pulled, every node has.

The host routes the service range to node 1, whose proxy translates it like any node's: the
host reaches ClusterIPs, pod IPs and every node's NodePorts.

State: <run> = /run/skiff/clusters/<name> (cluster.json, sockets, the processes' logs), <data> =
/var/lib/skiff/clusters/<name> (the store, the agents' volumes, pod logs). `cluster.json` is
written before anything is made, so `down` undoes whatever part of an `up` happened, even after
a crash; `down` only touches what the file names.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from skiff.errors import FailedPrecondition, InvalidArgument, Unavailable
from skiff.images import service as images
from skiff.orchestrator.agent.node import HEARTBEAT
from skiff.orchestrator.controllers.nodelifecycle import EVICTION, GRACE

RUN_ROOT = Path("/run/skiff/clusters")
DATA_ROOT = Path("/var/lib/skiff/clusters")
NODE_NETWORK = ipaddress.IPv4Network("10.200.0.0/24")
CLUSTER_CIDR = ipaddress.IPv4Network("10.244.0.0/16")
SERVICE_CIDR = "10.96.0.0/16"
MAX_NODES = 200
READY_TIMEOUT = 90.0
BRIDGE_MARK = "skiff cluster"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Node:
    index: int
    cluster: str

    @property
    def name(self) -> str:
        return f"node{self.index}"

    @property
    def netns_path(self) -> str:
        """A bind mount pins it, as the CRI's pod namespaces are: `nsenter --net=PATH` enters it."""
        return str(RUN_ROOT / self.cluster / self.name / "netns")

    @property
    def address(self) -> str:
        return str(NODE_NETWORK.network_address + 10 + self.index)

    @property
    def pod_cidr(self) -> str:
        return str(list(CLUSTER_CIDR.subnets(new_prefix=24))[self.index])

    @property
    def veth(self) -> str:
        return f"skc{self.index}-{self.cluster}"[:15]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Cluster:
    name: str
    nodes: int
    images_root: str = images.DEFAULT_ROOT

    @property
    def run(self) -> Path:
        return RUN_ROOT / self.name

    @property
    def data(self) -> Path:
        return DATA_ROOT / self.name

    @property
    def api_socket(self) -> str:
        # the default cluster answers where skiff's CLI looks by default
        return "/run/skiff/api.sock" if self.name == "skiff" else str(self.run / "api.sock")

    @property
    def bridge(self) -> str:
        return f"skc-{self.name}"[:15]

    @property
    def gateway(self) -> str:
        return str(NODE_NETWORK.network_address + 1)

    def node_list(self) -> list[Node]:
        return [Node(index=i, cluster=self.name) for i in range(1, self.nodes + 1)]

    def cri_socket(self, node: Node) -> str:
        return str(self.run / node.name / "cri.sock")


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Timing:
    """How soon a silent node is noticed (control-plane and node-agent flags of those names)."""

    node_grace: float = GRACE
    pod_eviction: float = EVICTION
    heartbeat: float = HEARTBEAT

    def control_plane_flags(self) -> list[str]:
        return ["--node-monitor-grace-period", str(self.node_grace), "--pod-eviction-timeout", str(self.pod_eviction)]

    def agent_flags(self) -> list[str]:
        return ["--node-status-update-frequency", str(self.heartbeat)]


def _check_name(name: str) -> None:
    if not name.isascii() or not name.replace("-", "").isalnum() or not 1 <= len(name) <= 10:
        raise InvalidArgument(f"cluster name {name!r}: 1-10 letters, digits or '-' (it names links and namespaces)")


def _state_file(name: str) -> Path:
    return RUN_ROOT / name / "cluster.json"


def _load(name: str) -> tuple[Cluster, dict[str, int]] | None:
    try:
        state = json.loads(_state_file(name).read_text())
    except FileNotFoundError:
        return None
    return (Cluster(name=state["name"], nodes=state["nodes"], images_root=state["images_root"]),
            dict(state.get("pids", {})))


def _save(cluster: Cluster, pids: dict[str, int]) -> None:
    cluster.run.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = cluster.run / "cluster.json.tmp"
    tmp.write_text(json.dumps({**dataclasses.asdict(cluster), "pids": pids}, indent=1))
    os.replace(tmp, _state_file(cluster.name))


def _alive(pid: int) -> bool:
    """Running, and skiff's: not a zombie, not a pid used again by something else. A process
    starting up may show an empty command line for a moment: that one counts as alive."""
    try:
        os.kill(pid, 0)
        with open(f"/proc/{pid}/stat", "rb") as f:
            if f.read().rpartition(b")")[2].split()[0] == b"Z":
                return False
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except (ProcessLookupError, FileNotFoundError):
        return False
    return not cmdline or b"skiff" in cmdline


# -- up ----------------------------------------------------------------------------------------

def up(name: str, nodes: int, *, images_root: str = images.DEFAULT_ROOT, timing: Timing = Timing()) -> str:
    _check_name(name)
    if not 1 <= nodes <= MAX_NODES:
        raise InvalidArgument(f"--nodes {nodes}: want 1 to {MAX_NODES}")
    found = _load(name)
    if found is not None:
        if any(_alive(pid) for pid in found[1].values()):
            raise FailedPrecondition(f"cluster {name} is up already (skiff cluster down --name {name} first)")
        down(name)   # what a crashed `up` or a reboot left
    cluster = Cluster(name=name, nodes=nodes, images_root=os.path.abspath(images_root))
    _check_free(cluster)
    shutil.rmtree(cluster.data, ignore_errors=True)   # a store of a cluster before a reboot: its nodes are gone
    pids: dict[str, int] = {}
    _save(cluster, pids)
    try:
        _network_up(cluster)
        pids["control-plane"] = _spawn(cluster, "control-plane", [
            "control-plane", "--store", f"sqlite:{cluster.data / 'state.db'}", "--listen", cluster.api_socket,
            *timing.control_plane_flags()])
        _save(cluster, pids)
        for node in cluster.node_list():
            config = _cri_config(cluster, node)
            pids[f"{node.name}/cri"] = _spawn(cluster, f"{node.name}/cri", ["cri", "serve", "--config", config])
            _save(cluster, pids)
        _wait(cluster, pids, "the API server", functools.partial(_listening, cluster.api_socket))
        for node in cluster.node_list():
            _wait(cluster, pids, f"{node.name}'s CRI service", functools.partial(_listening, cluster.cri_socket(node)))
            server = ["--server", cluster.api_socket]
            pids[f"{node.name}/agent"] = _spawn(cluster, f"{node.name}/agent", [
                "node-agent", *server, "--netns", node.netns_path, "--name", node.name,
                "--cri-socket", cluster.cri_socket(node), "--address", node.address, "--pod-cidr", node.pod_cidr,
                "--log-root", str(cluster.data / node.name / "pods"), "--root", str(cluster.data / node.name / "agent"),
                "--agent-listen", str(cluster.run / node.name / "agent.sock"),
                *timing.agent_flags()])
            pids[f"{node.name}/proxy"] = _spawn(cluster, f"{node.name}/proxy",
                                                ["proxy", *server, "--netns", node.netns_path])
            _save(cluster, pids)
        _wait(cluster, pids, "every node to be Ready (the agents' logs are in " + str(cluster.run) + ")",
              lambda: _ready_nodes(cluster) == cluster.nodes)
    except BaseException as e:
        try:
            down(name)
        except Exception as cleanup:
            e.add_note(f"and the clean-up after it: {cleanup}")
            for note in getattr(cleanup, "__notes__", ()):
                e.add_note(note)
        raise
    lines = [f"cluster {name}: {nodes} node{'s' if nodes > 1 else ''} Ready",
             f"  API server   {cluster.api_socket}"]
    if cluster.name != "skiff":
        lines.append(f"  export SKIFF_API={cluster.api_socket}")
    lines += [f"  {n.name:<8} {n.address:<12} pods {n.pod_cidr:<15} netns {n.netns_path}" for n in cluster.node_list()]
    lines.append(f"  services {SERVICE_CIDR} and pods are reachable from this host; skiff cluster down --name {name}")
    return "\n".join(lines)


def _check_free(cluster: Cluster) -> None:
    """Another cluster, or the host's own networks, on the addresses this one would take."""
    from pyroute2 import IPRoute  # type: ignore[import-untyped, unused-ignore]

    with contextlib.closing(IPRoute()) as ipr:
        for route in ipr.get_routes(family=socket.AF_INET):
            dst = route.get("RTA_DST")
            if dst is None:
                continue
            taken = ipaddress.IPv4Network(f"{dst}/{route['dst_len']}", strict=False)
            for ours in (NODE_NETWORK, CLUSTER_CIDR, ipaddress.IPv4Network(SERVICE_CIDR)):
                if taken.overlaps(ours):
                    raise FailedPrecondition(f"cluster {cluster.name}: {ours} is taken on this host (a route to "
                                             f"{taken}): another skiff cluster, or a network of the host's")
    if os.path.exists(cluster.api_socket) and _listening(cluster.api_socket):
        raise FailedPrecondition(f"cluster {cluster.name}: {cluster.api_socket}: an API server is listening there")


def _network_up(cluster: Cluster) -> None:
    from pyroute2 import IPRoute  # type: ignore[import-untyped, unused-ignore]

    from skiff.cri.network.bridge import netlink_step
    from skiff.runtime import netns

    prefix = NODE_NETWORK.prefixlen
    with contextlib.closing(IPRoute()) as ipr:
        with netlink_step(f"create bridge {cluster.bridge} with {cluster.gateway}/{prefix}"):
            ipr.link("add", ifname=cluster.bridge, kind="bridge")
            bridge = ipr.link_lookup(ifname=cluster.bridge)[0]
            ipr.link("set", index=bridge, ifalias=f"{BRIDGE_MARK} {cluster.name}")
            ipr.addr("add", index=bridge, address=cluster.gateway, prefixlen=prefix)
            ipr.link("set", index=bridge, state="up")
        for node in cluster.node_list():
            with netlink_step(f"{node.name}: a network namespace at {node.netns_path}"):
                netns.create_pinned(node.netns_path)
            with netlink_step(f"{node.name}: veth {node.veth} on {cluster.bridge}, its eth0 in the node"):
                fd = os.open(node.netns_path, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    ipr.link("add", ifname=node.veth, kind="veth", master=bridge, state="up",
                             peer={"ifname": "eth0", "net_ns_fd": fd})
                finally:
                    os.close(fd)
            with netlink_step(f"{node.name}: {node.address}, its routes and forwarding in the node"):
                netns.call_in(node.netns_path, functools.partial(_node_network, cluster, node))
            with netlink_step(f"route {node.pod_cidr} via {node.address}"):
                ipr.route("add", dst=node.pod_cidr, gateway=node.address)
        with netlink_step(f"route {SERVICE_CIDR} via node 1"):
            ipr.route("add", dst=SERVICE_CIDR, gateway=cluster.node_list()[0].address)


def _node_network(cluster: Cluster, node: Node) -> None:
    """In the node's namespace: its address, routes to the other nodes' pods, forwarding."""
    from pyroute2 import IPRoute  # type: ignore[import-untyped, unused-ignore]

    with contextlib.closing(IPRoute()) as ipr:
        lo = ipr.link_lookup(ifname="lo")[0]
        eth0 = ipr.link_lookup(ifname="eth0")[0]
        ipr.link("set", index=lo, state="up")
        ipr.addr("add", index=eth0, address=node.address, prefixlen=NODE_NETWORK.prefixlen)
        ipr.link("set", index=eth0, state="up")
        ipr.route("add", dst="0.0.0.0/0", gateway=cluster.gateway)
        for other in cluster.node_list():
            if other != node:
                ipr.route("add", dst=other.pod_cidr, gateway=other.address)
    with open("/proc/sys/net/ipv4/ip_forward", "w") as f:   # this namespace's own
        f.write("1")


def _cri_config(cluster: Cluster, node: Node) -> str:
    root = cluster.run / node.name
    root.mkdir(parents=True, exist_ok=True)
    path = root / "cri.toml"
    path.write_text("\n".join([
        f'socket = "{cluster.cri_socket(node)}"',
        f'images_root = "{cluster.images_root}"',
        f'state_root = "{root / "cri"}"',
        f'log_root = "{cluster.data / node.name / "pods"}"',
        f'netns = "{node.netns_path}"',
        f'stream_address = "{node.address}:0"',   # exec -it and port-forward reach it from the host
        "[network]",
        'mode = "bridge"',
        f'pod_cidr = "{node.pod_cidr}"',
        f'cluster_cidr = "{CLUSTER_CIDR}"',
        'bridge = "skiff0"', ""]))
    return str(path)


def _spawn(cluster: Cluster, what: str, args: list[str]) -> int:
    log = cluster.run / f"{what.replace('/', '-')}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        process = subprocess.Popen([sys.executable, "-m", "skiff.cli", *args], stdin=subprocess.DEVNULL,
                                   stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return process.pid


def _wait(cluster: Cluster, pids: dict[str, int], what: str, ready: Callable[[], bool]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while not ready():
        for component, pid in pids.items():
            if not _alive(pid):
                raise Unavailable(f"cluster {cluster.name}: {component} exited while waiting for {what}:\n"
                                  + _tail(cluster, component))
        if time.monotonic() > deadline:
            raise Unavailable(f"cluster {cluster.name}: timed out after {READY_TIMEOUT:.0f} s waiting for {what}")
        time.sleep(0.1)


def _tail(cluster: Cluster, component: str, lines: int = 15) -> str:
    try:
        text = (cluster.run / f"{component.replace('/', '-')}.log").read_text(errors="replace")
    except FileNotFoundError:
        return "  (no log)"
    return "\n".join("  " + line for line in text.splitlines()[-lines:])


def _listening(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX)
    try:
        probe.connect(path)
        return True
    except OSError:
        return False
    finally:
        probe.close()


def _ready_nodes(cluster: Cluster) -> int:
    from skiff.orchestrator.api.kinds import BY_KIND
    from skiff.orchestrator.client import ApiClient, RemoteRegistry

    api = RemoteRegistry(ApiClient(cluster.api_socket, timeout=5))
    return sum(1 for n in api.list(BY_KIND["Node"]).items
               if any(c.get("type") == "Ready" and c.get("status") == "True"
                      for c in (n.get("status") or {}).get("conditions") or []))


# -- down --------------------------------------------------------------------------------------

def down(name: str) -> str:
    """Every pod removed through its node's CRI service, every process stopped, the nodes'
    namespaces and the bridge deleted, the cluster's directories removed."""
    _check_name(name)
    found = _load(name)
    if found is None:
        raise FailedPrecondition(f"cluster {name}: not up (no {_state_file(name)})")
    cluster, pids = found
    failed: list[str] = []

    def step(what: str, work: Callable[[], object]) -> None:
        """Each step is tried whatever went wrong before it: as much goes as can."""
        try:
            work()
        except Exception as e:
            failed.append(f"{what}: {e}")

    # Nothing may start or restart pods while they go: the control plane, agents and proxies first.
    step("stop the control plane, agents and proxies",
         lambda: _stop([pid for component, pid in pids.items() if not component.endswith("/cri")]))
    removed = [0]
    for node in cluster.node_list():
        def remove(n: Node = node) -> None:
            socket_path = cluster.cri_socket(n)
            if not _listening(socket_path) and os.path.exists(cluster.run / n.name / "cri.toml"):
                # its CRI service died: a new one recovers its records, so that its pods can go
                pids[f"{n.name}/cri"] = _spawn(cluster, f"{n.name}/cri", ["cri", "serve", "--config",
                                                                        str(cluster.run / n.name / "cri.toml")])
                _wait(cluster, {f"{n.name}/cri": pids[f"{n.name}/cri"]}, f"{n.name}'s CRI service",
                      functools.partial(_listening, socket_path))
            if _listening(socket_path):
                removed[0] += _remove_pods(socket_path)
        step(f"remove the pods of {node.name}", remove)
    step("stop the CRI services", lambda: _stop([pid for component, pid in pids.items() if component.endswith("/cri")]))
    step("unmount what is left", lambda: _unmount_under(cluster.data, cluster.run))
    step("remove the nodes' network", lambda: _network_down(cluster))
    if failed:
        error = Unavailable(f"cluster {name}: not all of it is down; `skiff cluster down --name {name}` tries again")
        for note in failed:
            error.add_note(note)
        raise error
    for path in (cluster.data, cluster.run):
        shutil.rmtree(path, ignore_errors=True)
    return (f"cluster {name}: {removed[0]} pod{'' if removed[0] == 1 else 's'} removed, "
            f"{cluster.nodes} node{'' if cluster.nodes == 1 else 's'} down")


def _stop(pids: list[int], timeout: float = 15.0) -> None:
    live = [pid for pid in pids if _alive(pid)]
    for pid in live:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while live and time.monotonic() < deadline:
        live = [pid for pid in live if _alive(pid)]
        time.sleep(0.05)
    for pid in live:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _remove_pods(cri_socket: str) -> int:
    import grpc
    from cri_api.v1 import api_pb2 as pb
    from cri_api.v1 import api_pb2_grpc

    with grpc.insecure_channel(f"unix://{cri_socket}") as channel:
        runtime = api_pb2_grpc.RuntimeServiceStub(channel)
        pods = runtime.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=30).items
        for pod in pods:
            runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod.id), timeout=60)
            runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod.id), timeout=60)
        return len(pods)


def _unmount_under(*roots: Path) -> None:
    """Volumes an agent stopped before its pods went may have left (tmpfs secrets): only
    mounts under the cluster's own directories, deepest first."""
    from skiff.runtime import libc

    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4].replace("\\040", " ") for line in f]
    mine = [p for p in points if any(p == str(r) or p.startswith(f"{r}/") for r in roots)]
    for point in sorted(mine, key=len, reverse=True):
        with contextlib.suppress(OSError):
            libc.umount2(point, libc.MNT_DETACH)


def _network_down(cluster: Cluster) -> None:
    from pyroute2 import IPRoute  # type: ignore[import-untyped, unused-ignore]

    from skiff.runtime import netns

    for node in cluster.node_list():
        netns.unpin(node.netns_path)
    with contextlib.closing(IPRoute()) as ipr:
        for index in ipr.link_lookup(ifname=cluster.bridge):
            alias = ipr.link("get", index=index)[0].get("IFLA_IFALIAS")
            if alias == f"{BRIDGE_MARK} {cluster.name}":
                ipr.link("del", index=index)   # its routes go with it
        # A veth goes with its node's namespace, which the kernel dismantles in the background.
        deadline = time.monotonic() + 10
        while any(ipr.link_lookup(ifname=n.veth) for n in cluster.node_list()) and time.monotonic() < deadline:
            time.sleep(0.05)


# -- status ------------------------------------------------------------------------------------

def status(name: str) -> str:
    _check_name(name)
    found = _load(name)
    if found is None:
        return f"cluster {name}: not up"
    cluster, pids = found
    from skiff.orchestrator.cli import table

    rows = [["COMPONENT", "PID", "STATE"]] + [[c, str(p), "running" if _alive(p) else "exited"]
                                               for c, p in sorted(pids.items())]
    nodes = [["NODE", "ADDRESS", "POD CIDR", "NETNS"]] + [[n.name, n.address, n.pod_cidr, n.netns_path]
                                                          for n in cluster.node_list()]
    return f"cluster {name}: API server {cluster.api_socket}\n\n{table(rows)}\n\n{table(nodes)}"
