"""The service proxy (orchestrator/proxy): the rules it derives from Services and Endpoints, and
the `ip skiff-proxy` table it keeps in a network namespace, tried with real connections.

Each kernel test has a network namespace of its own, pinned at a file in tmp_path: one end of
a veth pair (this kernel has no dummy links) holds the endpoints' addresses and the node's,
and the service range is routed to it, so that a connection made in the namespace to a
clusterIP has a route, and the table's `output` nat chain sends it to an endpoint address of
the namespace (locally generated traffic: nothing crosses the veth). The endpoints are TCP
servers bound in that namespace, each answering its own address. The proxy's worker is started
from inside the namespace: a thread starts in its creator's, and the worker opens its nft
session there. The host's own nftables are never touched.
"""

from __future__ import annotations

import contextlib
import functools
import selectors
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from skiff.cri.network import nftables
from skiff.orchestrator.proxy import ruleset, service_proxy
from skiff.orchestrator.proxy.ruleset import Frontend
from skiff.orchestrator.proxy.service_proxy import Handler, ServiceProxy
from skiff.runtime import netns

T = TypeVar("T")

VIP = "10.96.0.10"
SERVICE_CIDR = "10.96.0.0/16"
ENDPOINTS = ("10.250.0.1", "10.250.0.2", "10.250.0.3")
NODE = "10.250.9.9"          # the node's own address, for NodePorts
TARGET = 8080
NODE_PORT = 30080
WEB = "default/web"


# -- Services and Endpoints ----------------------------------------------------------------

def service(name: str, *ports: dict[str, Any], cluster_ip: str = VIP, type_: str = "ClusterIP") -> dict[str, Any]:
    return {"metadata": {"namespace": "default", "name": name},
            "spec": {"type": type_, "clusterIP": cluster_ip, "ports": list(ports)}}


def endpoints(name: str, addresses: tuple[str, ...], *ports: dict[str, Any]) -> dict[str, Any]:
    subsets = [{"addresses": [{"ip": a} for a in addresses], "ports": list(ports)}] if addresses else []
    return {"metadata": {"namespace": "default", "name": name}, "subsets": subsets}


def web(*, type_: str = "ClusterIP") -> dict[str, Any]:
    port: dict[str, Any] = {"name": "http", "port": 80, "targetPort": TARGET, "protocol": "TCP"}
    if type_ == "NodePort":
        port["nodePort"] = NODE_PORT
    return service("web", port, type_=type_)


def web_endpoints(*addresses: str) -> dict[str, Any]:
    return endpoints("web", addresses, {"name": "http", "port": TARGET, "protocol": "TCP"})


class Cache:
    """An informer's cache as the proxy reads it (service_proxy.ObjectCache), changed by hand."""

    def __init__(self, *objects: dict[str, Any]) -> None:
        self._lock = threading.Lock()
        self._objects = {self._key(o): o for o in objects}
        self._handlers: list[Handler] = []

    @staticmethod
    def _key(obj: dict[str, Any]) -> str:
        return f"{obj['metadata']['namespace']}/{obj['metadata']['name']}"

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            return self._objects.get(key)

    def items(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._objects.values())

    def on_change(self, handler: Handler) -> None:
        self._handlers.append(handler)

    def put(self, obj: dict[str, Any]) -> None:
        key = self._key(obj)
        with self._lock:
            old, self._objects[key] = self._objects.get(key), obj
        for handler in self._handlers:
            handler(key, old, obj)

    def delete(self, key: str) -> None:
        with self._lock:
            old = self._objects.pop(key)
        for handler in self._handlers:
            handler(key, old, None)


# -- ruleset, without a kernel -------------------------------------------------------------

def test_a_port_gets_the_endpoints_ports_of_its_name_and_protocol() -> None:
    svc = service("dns",
                  {"name": "dns", "port": 53, "protocol": "UDP"},
                  {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
                  {"name": "metrics", "port": 9153})            # protocol TCP by default
    eps = {"metadata": {"namespace": "default", "name": "dns"}, "subsets": [
        {"addresses": [{"ip": "10.1.0.2"}, {"ip": "10.1.0.1"}],
         "ports": [{"name": "dns", "port": 5353, "protocol": "UDP"},
                   {"name": "dns-tcp", "port": 5353, "protocol": "TCP"},
                   {"name": "dns", "port": 7777, "protocol": "TCP"}]},     # the name, not the protocol
        {"addresses": [{"ip": "10.1.0.3"}],
         "ports": [{"name": "dns", "port": 5353, "protocol": "UDP"}]},
        {"notReadyAddresses": [{"ip": "10.1.0.9"}],
         "ports": [{"name": "dns", "port": 5353, "protocol": "UDP"}]}]}
    assert ruleset.service_rules(svc, eps) == {
        Frontend("udp", 53, VIP): (("10.1.0.1", 5353), ("10.1.0.2", 5353), ("10.1.0.3", 5353)),
        Frontend("tcp", 53, VIP): (("10.1.0.1", 5353), ("10.1.0.2", 5353)),
        Frontend("tcp", 9153, VIP): (),
    }


def test_an_unnamed_port_matches_an_unnamed_endpoints_port_and_no_endpoints_is_empty() -> None:
    svc = service("one", {"port": 80})
    assert ruleset.service_rules(svc, endpoints("one", ("10.1.0.1",), {"port": 8080})) == {
        Frontend("tcp", 80, VIP): (("10.1.0.1", 8080),)}
    assert ruleset.service_rules(svc, None) == {Frontend("tcp", 80, VIP): ()}
    assert ruleset.service_rules(svc, endpoints("one", ())) == {Frontend("tcp", 80, VIP): ()}


@pytest.mark.parametrize("cluster_ip", ["None", "", "fd00::10"])
def test_headless_and_ipv6_services_have_no_rules(cluster_ip: str) -> None:
    svc = service("headless", {"name": "http", "port": 80}, cluster_ip=cluster_ip)
    assert ruleset.service_rules(svc, web_endpoints(*ENDPOINTS)) == {}


def test_an_unknown_protocol_is_skipped() -> None:
    svc = service("odd", {"name": "x", "port": 80, "protocol": "ICMP"}, {"name": "y", "port": 81})
    assert list(ruleset.service_rules(svc, None)) == [Frontend("tcp", 81, VIP)]


@pytest.mark.parametrize("type_", ["NodePort", "LoadBalancer"])
def test_node_port_services_get_a_node_port_frontend_with_the_same_endpoints(type_: str) -> None:
    svc = web(type_="NodePort")
    svc["spec"]["type"] = type_
    rules = ruleset.service_rules(svc, web_endpoints("10.250.0.1"))
    backends = (("10.250.0.1", TARGET),)
    assert rules == {Frontend("tcp", 80, VIP): backends, Frontend("tcp", NODE_PORT): backends}
    assert Frontend("tcp", NODE_PORT).node_port and not Frontend("tcp", 80, VIP).node_port
    assert Frontend("tcp", NODE_PORT).key() == f"tcp . {NODE_PORT}"
    assert Frontend("tcp", 80, VIP).key() == f"{VIP} . tcp . 80"


def test_a_cluster_ip_service_ignores_a_node_port_it_carries() -> None:
    svc = web(type_="NodePort")
    svc["spec"]["type"] = "ClusterIP"
    assert list(ruleset.service_rules(svc, web_endpoints("10.250.0.1"))) == [Frontend("tcp", 80, VIP)]


def test_changes_delete_before_they_add_and_leave_unchanged_frontends_alone() -> None:
    same, moved, emptied, gone, new = (Frontend("tcp", 80, "10.96.0.1"), Frontend("tcp", 80, "10.96.0.2"),
                                       Frontend("tcp", 80, "10.96.0.3"), Frontend("udp", 53, "10.96.0.4"),
                                       Frontend("tcp", NODE_PORT))
    old = {same: (("10.1.0.1", 80),), moved: (("10.1.0.1", 80), ("10.1.0.2", 80)),
           emptied: (("10.1.0.3", 80),), gone: ()}
    new_rules = {same: (("10.1.0.1", 80),), moved: (("10.1.0.2", 80),), emptied: (),
                 new: (("10.1.0.5", 8080),)}
    commands = ruleset.changes(old, new_rules)
    verbs = [c.split()[0] for c in commands]
    assert verbs == sorted(verbs, key=lambda v: v != "delete") and set(verbs) == {"delete", "add"}
    assert not any("10.96.0.1 " in c for c in commands)
    table = f"ip {ruleset.TABLE}"
    assert commands == [
        f"delete element {table} services {{ 10.96.0.2 . tcp . 80, 10.96.0.3 . tcp . 80 }}",
        f"delete element {table} backends {{ 10.96.0.2 . tcp . 80 . 0, 10.96.0.2 . tcp . 80 . 1, "
        "10.96.0.3 . tcp . 80 . 0 }",
        f"delete element {table} no_endpoints {{ 10.96.0.4 . udp . 53 }}",
        f"add element {table} services {{ 10.96.0.2 . tcp . 80 : goto lb1 }}",
        f"add element {table} backends {{ 10.96.0.2 . tcp . 80 . 0 : 10.1.0.2 . 80 }}",
        f"add element {table} no_endpoints {{ 10.96.0.3 . tcp . 80 }}",
        f"add element {table} nodeports {{ tcp . {NODE_PORT} : goto nplb1 }}",
        f"add element {table} nodeport_backends {{ tcp . {NODE_PORT} . 0 : 10.1.0.5 . 8080 }}",
    ]
    assert ruleset.changes(new_rules, new_rules) == []
    assert ruleset.changes({}, {}) == []


def test_a_service_port_equal_to_its_node_port_makes_changes() -> None:
    """The clusterIP frontend and the node port frontend share protocol and port: they are
    ordered without comparing an address with None."""
    svc = service("same", {"name": "http", "port": NODE_PORT, "nodePort": NODE_PORT}, type_="NodePort")
    rules = ruleset.service_rules(svc, endpoints("same", ("10.1.0.1",), {"name": "http", "port": 8080}))
    assert set(rules) == {Frontend("tcp", NODE_PORT, VIP), Frontend("tcp", NODE_PORT)}
    commands = ruleset.changes({}, rules)
    assert [c.split()[4] for c in commands] == ["nodeports", "nodeport_backends", "services", "backends"]
    assert ruleset.changes(rules, {})[0].startswith("delete element")


def test_balancer_chains_pick_among_n_endpoints() -> None:
    one, three = ruleset.balancer_chains([1]), ruleset.balancer_chains([3])
    assert "meta mark set 0 " in one[1] and "numgen" not in one[1]
    assert "meta mark set numgen random mod 3 " in three[1] and "@backends" in three[1]
    assert "nplb3" in three[2] and "@nodeport_backends" in three[3]


# -- a network namespace of the test's own -------------------------------------------------

class Scratch:
    """A pinned network namespace: lo up, a veth pair (this kernel has no dummy links) with
    the endpoints' and the node's addresses on one end, the service range routed to it."""

    def __init__(self, path: str) -> None:
        self.path = path

    def call(self, work: Callable[[], T]) -> T:
        return netns.call_in(self.path, work)

    def nft(self, commands: str) -> str:
        return self.call(functools.partial(nftables.run, commands))

    def tables(self) -> str:
        return self.nft("list tables")


def _network() -> None:
    from pyroute2 import IPRoute

    with contextlib.closing(IPRoute()) as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        ipr.link("add", ifname="proxy0", kind="veth", peer="proxy1")
        link, peer = ipr.link_lookup(ifname="proxy0")[0], ipr.link_lookup(ifname="proxy1")[0]
        for address in (*ENDPOINTS, NODE):
            ipr.addr("add", index=link, address=address, prefixlen=32)
        ipr.link("set", index=peer, state="up")
        ipr.link("set", index=link, state="up")
        ipr.route("add", dst=SERVICE_CIDR, oif=link)


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[Scratch]:
    path = str(tmp_path / "netns")
    netns.create_pinned(path)
    try:
        s = Scratch(path)
        s.call(_network)
        yield s
    finally:
        netns.unpin(path)


class Servers:
    """A TCP server on each address at TARGET, bound in the scratch namespace: it answers its
    own address and closes."""

    def __init__(self, scratch: Scratch, addresses: tuple[str, ...]) -> None:
        self._listeners = scratch.call(lambda: [_listen(a) for a in addresses])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="endpoints", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        with selectors.DefaultSelector() as selector:
            for listener in self._listeners:
                selector.register(listener, selectors.EVENT_READ, listener)
            while not self._stop.is_set():
                for key, _ in selector.select(0.05):
                    conn, _ = key.data.accept()
                    with conn:
                        conn.sendall(key.data.getsockname()[0].encode())

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        for listener in self._listeners:
            listener.close()


def _listen(address: str) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((address, TARGET))
    s.listen(64)
    return s


@pytest.fixture
def servers(scratch: Scratch) -> Iterator[Servers]:
    s = Servers(scratch, ENDPOINTS)
    yield s
    s.close()


def ask(address: str, port: int) -> str:
    """What answers a connection to address:port ("refused" when the connection is); run in
    the scratch namespace. A connection that hangs fails the test by its timeout."""
    try:
        with socket.create_connection((address, port), timeout=3) as s:
            answer = b""
            while chunk := s.recv(64):
                answer += chunk
            return answer.decode()
    except ConnectionRefusedError:
        return "refused"


def answers(scratch: Scratch, address: str = VIP, port: int = 80, times: int = 60) -> list[str]:
    return scratch.call(lambda: [ask(address, port) for _ in range(times)])


@contextlib.contextmanager
def running(scratch: Scratch, services: Cache, endpoints: Cache) -> Iterator[ServiceProxy]:
    """The proxy's worker started in the scratch namespace, its first (full) sync done."""
    proxy = ServiceProxy(services, endpoints)
    scratch.call(proxy.start)
    try:
        assert proxy.synced.wait(5), "no first sync"
        assert proxy.last_sync[0] == "full"
        yield proxy
    finally:
        proxy.stop()


def synced(proxy: ServiceProxy, change: Callable[[], None]) -> str:
    """Makes `change` to a cache and waits for the proxy to sync it; the kind of sync."""
    change()
    assert proxy.synced.wait(5), "the change was not synced"
    return proxy.last_sync[0]


# -- traffic -------------------------------------------------------------------------------

def test_a_cluster_ip_balances_over_its_endpoints_and_follows_their_changes(
        scratch: Scratch, servers: Servers) -> None:
    services, eps = Cache(web()), Cache(web_endpoints(*ENDPOINTS))
    with running(scratch, services, eps) as proxy:
        assert set(answers(scratch)) == set(ENDPOINTS)

        assert synced(proxy, lambda: eps.put(web_endpoints(*ENDPOINTS[:2]))) == "change"
        assert set(answers(scratch)) == set(ENDPOINTS[:2])

        assert synced(proxy, lambda: eps.put(web_endpoints(ENDPOINTS[2]))) == "change"
        assert set(answers(scratch, times=5)) == {ENDPOINTS[2]}

        assert synced(proxy, lambda: eps.put(web_endpoints())) == "change"
        assert answers(scratch, times=3) == ["refused"] * 3      # the reject rule, not a hang

        assert synced(proxy, lambda: eps.put(web_endpoints(*ENDPOINTS))) == "change"
        assert set(answers(scratch)) == set(ENDPOINTS)

        assert synced(proxy, lambda: services.delete(WEB)) == "change"
        assert "skiff-proxy" in scratch.tables()
        assert "10.96.0.10" not in scratch.nft(f"list table ip {ruleset.TABLE}")


def test_a_service_without_endpoints_refuses_connections(scratch: Scratch) -> None:
    with running(scratch, Cache(web(type_="NodePort")), Cache()):
        assert answers(scratch, times=2) == ["refused"] * 2
        assert answers(scratch, NODE, NODE_PORT, times=2) == ["refused"] * 2


def test_a_node_port_on_a_local_address_reaches_the_endpoints(scratch: Scratch, servers: Servers) -> None:
    services, eps = Cache(web(type_="NodePort")), Cache(web_endpoints(*ENDPOINTS))
    with running(scratch, services, eps) as proxy:
        assert set(answers(scratch, NODE, NODE_PORT)) == set(ENDPOINTS)
        assert set(answers(scratch, ENDPOINTS[0], NODE_PORT)) == set(ENDPOINTS)

        assert synced(proxy, lambda: eps.put(web_endpoints(ENDPOINTS[1]))) == "change"
        assert set(answers(scratch, NODE, NODE_PORT, times=5)) == {ENDPOINTS[1]}

        assert synced(proxy, lambda: services.put(web())) == "change"   # no longer a NodePort
        assert f"{NODE_PORT}" not in scratch.nft(f"list table ip {ruleset.TABLE}")
        assert set(answers(scratch, times=5)) == {ENDPOINTS[1]}


def test_services_added_after_the_first_sync_are_changes_to_the_table(
        scratch: Scratch, servers: Servers) -> None:
    services, eps = Cache(), Cache()
    with running(scratch, services, eps) as proxy:
        assert synced(proxy, lambda: services.put(web())) == "change"
        assert synced(proxy, lambda: eps.put(web_endpoints(*ENDPOINTS))) == "change"
        assert set(answers(scratch)) == set(ENDPOINTS)
        other = service("other", {"name": "http", "port": 80}, cluster_ip="10.96.0.11")
        assert synced(proxy, lambda: services.put(other)) == "change"
        assert answers(scratch, "10.96.0.11", 80, times=2) == ["refused"] * 2
        assert set(answers(scratch)) == set(ENDPOINTS)


def test_a_table_changed_behind_the_proxys_back_is_written_whole_again(
        scratch: Scratch, servers: Servers) -> None:
    services, eps = Cache(web()), Cache(web_endpoints(*ENDPOINTS))
    with running(scratch, services, eps) as proxy:
        scratch.nft(f"delete table ip {ruleset.TABLE}")
        assert "skiff-proxy" not in scratch.tables()
        assert synced(proxy, lambda: eps.put(web_endpoints(*ENDPOINTS[1:]))) == "full"
        assert set(answers(scratch)) == set(ENDPOINTS[1:])
        assert synced(proxy, lambda: eps.put(web_endpoints(*ENDPOINTS))) == "change"
        assert set(answers(scratch)) == set(ENDPOINTS)


def test_sync_in_the_calling_thread_writes_the_table_then_changes_it(scratch: Scratch) -> None:
    services, eps = Cache(web()), Cache(web_endpoints(*ENDPOINTS))
    proxy = ServiceProxy(services, eps)
    try:
        scratch.call(lambda: proxy.sync(set()))
        assert proxy.last_sync[0] == "full"
        eps.put(web_endpoints(ENDPOINTS[0]))
        scratch.call(lambda: proxy.sync({WEB}))
        assert proxy.last_sync[0] == "change"
        listing = scratch.nft(f"list map ip {ruleset.TABLE} backends")
        assert ENDPOINTS[0] in listing and ENDPOINTS[1] not in listing
    finally:
        assert proxy._session is not None
        proxy._session.close()


def test_a_udp_flow_leaves_an_endpoint_that_goes(scratch: Scratch) -> None:
    """A client that keeps sending from one socket (a resolver) is one conntrack entry: it goes
    on to the old endpoint unless the proxy forgets the flow (conntrack.py)."""
    def udp(address: str) -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((address, TARGET))
        return s
    listeners = scratch.call(lambda: [udp(a) for a in ENDPOINTS[:2]])
    stop = threading.Event()

    def serve() -> None:
        with selectors.DefaultSelector() as selector:
            for listener in listeners:
                selector.register(listener, selectors.EVENT_READ, listener)
            while not stop.is_set():
                for key, _ in selector.select(0.05):
                    _, peer = key.data.recvfrom(64)
                    key.data.sendto(key.data.getsockname()[0].encode(), peer)
    server = threading.Thread(target=serve, name="udp-endpoints")
    server.start()
    dns = service("dns", {"name": "dns", "port": 53, "protocol": "UDP"})

    def dns_endpoints(*addresses: str) -> dict[str, Any]:
        return endpoints("dns", addresses, {"name": "dns", "port": TARGET, "protocol": "UDP"})
    services, eps = Cache(dns), Cache(dns_endpoints(ENDPOINTS[0]))
    client = scratch.call(lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    try:
        client.settimeout(3)
        client.connect((VIP, 53))

        def query() -> str:
            client.send(b"q")
            return client.recv(64).decode()
        with running(scratch, services, eps) as proxy:
            assert query() == ENDPOINTS[0]
            assert synced(proxy, lambda: eps.put(dns_endpoints(ENDPOINTS[1]))) == "change"
            assert query() == ENDPOINTS[1]          # the same socket, so the same flow
    finally:
        client.close()
        stop.set()
        server.join()
        for listener in listeners:
            listener.close()


# -- remove --------------------------------------------------------------------------------

def test_stop_keeps_the_table_and_remove_deletes_it_once(scratch: Scratch) -> None:
    with running(scratch, Cache(web()), Cache(web_endpoints(*ENDPOINTS))):
        pass
    assert "skiff-proxy" in scratch.tables()          # services keep working across a restart
    assert scratch.call(service_proxy.remove) is True
    assert "skiff-proxy" not in scratch.tables()
    assert scratch.call(service_proxy.remove) is False
