"""Network mode "cni": a standard CNI network configuration list run with its plugin binaries,
as containerd's CRI plugin runs one through go-cni and libcni (libcni/api.go).

The network is the first file of conf_dir, by name, ending in .conflist, .conf or .json (go-cni
sorts libcni's ConfFiles and, as containerd configures it, loads one network). A .conf or .json
holds a single plugin and becomes a list of one, named after it.

One plugin call (CNI spec 1.0, "Execution protocol"):

    environment   CNI_COMMAND=ADD|DEL|CHECK  CNI_CONTAINERID=<pod id>  CNI_NETNS=<path or "">
                  CNI_IFNAME=eth0  CNI_PATH=<bin_dir>  CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAMESPACE=..;
                  K8S_POD_NAME=..;K8S_POD_INFRA_CONTAINER_ID=<pod id>;K8S_POD_UID=..
                  (added to the daemon's own environment: plugins run iptables and ip from PATH)
    stdin         the plugin's object from the list, with the list's "name" and "cniVersion",
                  "prevResult" (see below) and "runtimeConfig" holding only the capability
                  arguments the plugin asks for in "capabilities" (here: portMappings)
    exit 0        ADD: the result on stdout; DEL, CHECK: nothing
    exit != 0     {"code": n, "msg": "..", "details": ".."} on stdout -> NetworkError

    ADD    plugins in list order, each one's result the next one's prevResult; the last result
           is the pod's, written to the cache
    DEL    plugins in reverse order, each given the cached result as prevResult (from spec 0.4.0)
    CHECK  plugins in list order with the cached result (from spec 0.4.0, unless disableCheck)

The cache (libcni keeps it in /var/lib/cni/results) is `<state_dir>/results/<pod id>-eth0.json`:
the list as ADD ran it, the CNI_ARGS, the capability arguments and the result. Teardown runs DEL
with the cached list rather than the one in conf_dir today (libcni uses today's; CRI-O's ocicni
falls back to the cached one): a changed or removed conf_dir must not leave a pod's veth,
address and port rules behind after a daemon restart. Without a cache entry teardown runs DEL
with today's list and no prevResult, as libcni does: DEL must tolerate what is already gone.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import subprocess
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from skiff.cri.network import NetworkError, PodNetwork, PortMapping
from skiff.errors import InvalidArgument
from skiff.runtime.undo import Undo

POD_INTERFACE = "eth0"
CONFIG_EXTENSIONS = (".conf", ".conflist", ".json")
CACHE_KIND = "cniCacheV1"  # libcni's; the layout below is skiff's own
_ANY_HOST_IP = (None, "", "0.0.0.0")
# libcni's utils.ValidateContainerID and ValidateNetworkName; the id also names the cache file.
_POD_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_NETWORK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
# A plugin type is a file name in bin_dir: no path may reach outside it.
_PLUGIN_TYPE = re.compile(r"[A-Za-z0-9_.+-]+")


@dataclass(frozen=True, slots=True, kw_only=True)
class CniConfig:
    conf_dir: str
    bin_dir: str  # CNI_PATH: one directory, or several joined with ':'
    state_dir: Path  # results/ (the cache) lives here


@dataclass(frozen=True, slots=True, kw_only=True)
class CniPlugin:
    type: str
    conf: Mapping[str, Any]  # the plugin's object from the list, as written; never mutated
    capabilities: frozenset[str]


@dataclass(frozen=True, slots=True, kw_only=True)
class CniNetwork:
    name: str
    cni_version: str
    plugins: tuple[CniPlugin, ...]
    disable_check: bool
    source: str  # the file it came from, for messages
    conf: Mapping[str, Any]  # the whole list, for the cache

    def at_least(self, version: str) -> bool:
        return _version(self.cni_version) >= _version(version)


@dataclass(frozen=True, slots=True, kw_only=True)
class _Call:
    """What one pod's calls share (libcni's RuntimeConf)."""

    container_id: str
    netns: str
    args: tuple[tuple[str, str], ...]
    capability_args: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class _Cached:
    network: CniNetwork
    call: _Call
    result: Mapping[str, Any] | None


# -- the configuration ---------------------------------------------------------------------

def _version(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split("."))
    except ValueError:
        return (0,)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_bytes())
    except OSError as e:
        raise InvalidArgument(f"cni config {path}: {(e.strerror or str(e)).lower()}") from e
    except ValueError as e:
        raise InvalidArgument(f"cni config {path}: not valid json: {e}") from e
    if not isinstance(data, dict):
        raise InvalidArgument(f"cni config {path}: must be a json object")
    return data


def _plugin(conf: Any, where: str) -> CniPlugin:
    if not isinstance(conf, dict):
        raise InvalidArgument(f"{where}: must be a json object")
    kind = conf.get("type")
    if not isinstance(kind, str) or not _PLUGIN_TYPE.fullmatch(kind) or kind in (".", ".."):
        raise InvalidArgument(f"{where}.type: {kind!r} is not a plugin name")
    capabilities = conf.get("capabilities", {})
    if not isinstance(capabilities, dict):
        raise InvalidArgument(f"{where}.capabilities: must be a json object")
    return CniPlugin(type=kind, conf=conf,
                     capabilities=frozenset(k for k, on in capabilities.items() if on is True))


def parse_network(data: Mapping[str, Any], source: str) -> CniNetwork:
    """A conflist, or a single plugin's conf (it has "type" and no "plugins") as a list of one."""
    single = "plugins" not in data
    plugins: tuple[CniPlugin, ...]
    name, version = data.get("name"), data.get("cniVersion", "0.1.0")
    if not isinstance(name, str) or not _NETWORK_NAME.fullmatch(name):
        raise InvalidArgument(f"cni config {source}: name: {name!r} is not a network name")
    if not isinstance(version, str) or _version(version) == (0,):
        raise InvalidArgument(f"cni config {source}: cniVersion: {version!r} is not a version")
    if single:
        if "type" not in data:
            raise InvalidArgument(f"cni config {source}: neither plugins nor type: not a cni network")
        plugins = (_plugin(dict(data), f"cni config {source}"),)
        conf: Mapping[str, Any] = {"cniVersion": version, "name": name, "plugins": [dict(data)]}
    else:
        listed = data["plugins"]
        if not isinstance(listed, list) or not listed:
            raise InvalidArgument(f"cni config {source}: plugins: must be a non-empty list")
        plugins = tuple(_plugin(p, f"cni config {source}: plugins[{i}]") for i, p in enumerate(listed))
        conf = data
    disable = data.get("disableCheck", False)
    if not isinstance(disable, bool):
        raise InvalidArgument(f"cni config {source}: disableCheck: must be true or false")
    return CniNetwork(name=name, cni_version=version, plugins=plugins, disable_check=disable,
                      source=source, conf=conf)


def config_file(config: CniConfig) -> Path:
    """The file containerd would pick: the first by name with a CNI extension."""
    try:
        names = sorted(os.listdir(config.conf_dir))
    except OSError as e:
        raise InvalidArgument(f"cni conf_dir {config.conf_dir}: {(e.strerror or str(e)).lower()}") from e
    for name in names:
        path = Path(config.conf_dir) / name
        if name.endswith(CONFIG_EXTENSIONS) and path.is_file():
            return path
    raise InvalidArgument(f"cni conf_dir {config.conf_dir}: no network config "
                          f"(no {', '.join('*' + e for e in CONFIG_EXTENSIONS)} file)")


def load_network(config: CniConfig) -> CniNetwork:
    path = config_file(config)
    data = _read_json(path)
    if path.suffix == ".conflist" and "plugins" not in data:
        raise InvalidArgument(f"cni config {path}: plugins: missing from a .conflist")
    return parse_network(data, str(path))


def _bin_dirs(config: CniConfig) -> list[str]:
    return [d for d in config.bin_dir.split(os.pathsep) if d]


def find_plugin(config: CniConfig, plugin: CniPlugin, network: CniNetwork) -> str:
    """The plugin's binary: the first regular file of that name in bin_dir (libcni FindInPath)."""
    for directory in _bin_dirs(config):
        path = os.path.join(directory, plugin.type)
        if os.path.isfile(path):
            return path
    raise NetworkError(f"cni plugin {plugin.type} (network {network.name}, {network.source}): "
                       f"not found in {config.bin_dir}")


def ready(config: CniConfig) -> tuple[bool, str]:
    """For the CRI NetworkReady condition: a network config loads and its plugins are there."""
    try:
        network = load_network(config)
        for plugin in network.plugins:
            find_plugin(config, plugin, network)
    except (InvalidArgument, NetworkError) as e:
        return False, f"cni plugin not initialized: {e}"
    return True, ""


# -- one plugin call -----------------------------------------------------------------------

def _stdin(network: CniNetwork, plugin: CniPlugin, prev_result: Mapping[str, Any] | None,
           call: _Call) -> bytes:
    """libcni buildOneConfig: the list's name and version, prevResult, and the capability
    arguments the plugin declared (only those: a plugin may reject keys it does not know)."""
    conf = dict(plugin.conf)
    conf["name"] = network.name
    conf["cniVersion"] = network.cni_version
    if prev_result is not None:
        conf["prevResult"] = prev_result
    runtime = {k: v for k, v in call.capability_args.items() if k in plugin.capabilities}
    if runtime:
        conf["runtimeConfig"] = runtime
    return json.dumps(conf).encode()


def _failure(command: str, plugin: CniPlugin, network: CniNetwork,
             done: subprocess.CompletedProcess[bytes]) -> NetworkError:
    where = f"cni plugin {plugin.type} (network {network.name}) {command.lower()}"
    try:
        error = json.loads(done.stdout)
    except ValueError:
        error = None
    if isinstance(error, dict) and "msg" in error:
        text = str(error["msg"])
        if error.get("details"):
            text += f": {error['details']}"
        return NetworkError(f"{where}: {text} (code {error.get('code')})")
    out = (done.stderr or done.stdout).decode(errors="replace").strip()
    return NetworkError(f"{where}: exited with status {done.returncode}" + (f": {out}" if out else ""))


def _run(config: CniConfig, network: CniNetwork, plugin: CniPlugin, command: str, call: _Call,
         prev_result: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Runs one plugin; ADD returns its result."""
    binary = find_plugin(config, plugin, network)
    env = dict(os.environ)
    env.update({
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": call.container_id,
        "CNI_NETNS": call.netns,
        "CNI_IFNAME": POD_INTERFACE,
        "CNI_PATH": config.bin_dir,
        "CNI_ARGS": ";".join(f"{k}={v}" for k, v in call.args),
    })
    try:
        done = subprocess.run([binary], input=_stdin(network, plugin, prev_result, call),
                              capture_output=True, env=env, cwd="/")
    except OSError as e:
        raise NetworkError(f"cni plugin {plugin.type} (network {network.name}) {command.lower()}: "
                           f"{(e.strerror or str(e)).lower()}") from e
    if done.returncode != 0:
        raise _failure(command, plugin, network, done)
    if command != "ADD":
        return None
    try:
        result = json.loads(done.stdout)
    except ValueError:
        result = None
    if not isinstance(result, dict):
        raise NetworkError(f"cni plugin {plugin.type} (network {network.name}) add: "
                           f"result is not a json object: {done.stdout[:200]!r}")
    return result


def _delete(config: CniConfig, network: CniNetwork, plugins: Sequence[CniPlugin], call: _Call,
            result: Mapping[str, Any] | None) -> None:
    """DEL for the plugins in reverse order. All of them run even when one fails, so one
    plugin's error does not leave the others' resources behind; the first error is raised."""
    prev = result if network.at_least("0.4.0") else None
    errors: list[NetworkError] = []
    for plugin in reversed(plugins):
        try:
            _run(config, network, plugin, "DEL", call, prev)
        except NetworkError as e:
            errors.append(e)
    if errors:
        for later in errors[1:]:
            errors[0].add_note(f"also: {later}")
        raise errors[0]


# -- the cache -----------------------------------------------------------------------------

def _cache_path(config: CniConfig, pod_id: str) -> Path:
    return config.state_dir / "results" / f"{pod_id}-{POD_INTERFACE}.json"


def _write_cache(config: CniConfig, pod_id: str, cached: _Cached) -> None:
    """Atomically (temporary file, fsync, rename): a crash leaves the old entry or the new one."""
    path = _cache_path(config, pod_id)
    record = {
        "kind": CACHE_KIND,
        "containerId": cached.call.container_id,
        "ifName": POD_INTERFACE,
        "networkName": cached.network.name,
        "netns": cached.call.netns,
        "source": cached.network.source,
        "config": cached.network.conf,
        "cniArgs": [list(pair) for pair in cached.call.args],
        "capabilityArgs": cached.call.capability_args,
        "result": cached.result,
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        with open(tmp, "w") as f:
            json.dump(record, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise NetworkError(f"cni cache {path}: {(e.strerror or str(e)).lower()}") from e


def _read_cache(config: CniConfig, pod_id: str) -> _Cached | None:
    """The pod's cache entry; none, or one that does not parse, is None (libcni also goes on
    without a cached result it cannot read)."""
    path = _cache_path(config, pod_id)
    try:
        record = json.loads(path.read_bytes())
        if record.get("kind") != CACHE_KIND:
            return None
        network = parse_network(record["config"], str(record.get("source", path)))
        call = _Call(container_id=pod_id, netns=str(record.get("netns", "")),
                     args=tuple((str(k), str(v)) for k, v in record.get("cniArgs", [])),
                     capability_args=dict(record.get("capabilityArgs") or {}))
        result = record.get("result")
        return _Cached(network=network, call=call, result=result if isinstance(result, dict) else None)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, KeyError, AttributeError, InvalidArgument):
        return None


def _remove_cache(config: CniConfig, pod_id: str) -> None:
    try:
        _cache_path(config, pod_id).unlink()
    except FileNotFoundError:
        pass


# -- the result ----------------------------------------------------------------------------

def _interfaces(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    found = result.get("interfaces")
    return [i for i in found if isinstance(i, dict)] if isinstance(found, list) else []


def _ipv4s(result: Mapping[str, Any]) -> Iterator[tuple[ipaddress.IPv4Interface, str | None, int | None]]:
    """(address/prefix, gateway, interface index) for each IPv4 address: spec 0.3.0 and later
    list "ips", 0.1.0 and 0.2.0 had one "ip4"."""
    entries = result.get("ips")
    if not isinstance(entries, list):
        old = result.get("ip4")
        entries = [{"address": old.get("ip"), "gateway": old.get("gateway")}] if isinstance(old, dict) else []
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        try:
            address = ipaddress.ip_interface(str(entry.get("address")))
        except ValueError:
            continue
        if isinstance(address, ipaddress.IPv4Interface):
            index = entry.get("interface")
            yield address, entry.get("gateway"), index if isinstance(index, int) else None


def _host_veth(result: Mapping[str, Any]) -> str:
    """The host end of the pod's link: an interface of the result outside the pod that is
    not a bridge (the bridge plugin lists its bridge, the host veth, then the pod's eth0)."""
    for interface in _interfaces(result):
        name = interface.get("name")
        if (isinstance(name, str) and name and not interface.get("sandbox")
                and "/" not in name and not os.path.isdir(f"/sys/class/net/{name}/bridge")):
            return name
    return ""


def pod_network(result: Mapping[str, Any], network: CniNetwork) -> PodNetwork:
    """The pod's IPv4 address, preferring one on the pod's own interface."""
    interfaces = _interfaces(result)

    def in_pod(index: int | None) -> bool:
        return (index is not None and 0 <= index < len(interfaces)
                and interfaces[index].get("name") == POD_INTERFACE and bool(interfaces[index].get("sandbox")))

    found = sorted(_ipv4s(result), key=lambda a: not in_pod(a[2]))
    if not found:
        raise NetworkError(f"cni network {network.name} ({network.source}): the result has no ipv4 address")
    address, gateway, _ = found[0]
    try:
        gw = ipaddress.IPv4Address(gateway) if gateway else _default_gateway(result)
    except ValueError:
        gw = _default_gateway(result)
    return PodNetwork(ip=address.ip, gateway=gw, prefix=address.network.prefixlen,
                      interface=POD_INTERFACE, veth_host=_host_veth(result))


def _default_gateway(result: Mapping[str, Any]) -> ipaddress.IPv4Address:
    """The default route's gateway when the address has none; 0.0.0.0 when neither is there
    (PodNetwork has no "unknown", and CRI reports only the pod's IP)."""
    routes = result.get("routes")
    for route in routes if isinstance(routes, list) else []:
        if isinstance(route, dict) and route.get("dst") == "0.0.0.0/0" and route.get("gw"):
            try:
                return ipaddress.IPv4Address(route["gw"])
            except ValueError:
                continue
    return ipaddress.IPv4Address(0)


# -- the pod -------------------------------------------------------------------------------

def _check_pod_id(pod_id: str) -> None:
    if not _POD_ID.fullmatch(pod_id):
        raise InvalidArgument(f"pod id {pod_id!r}: must be [A-Za-z0-9_.-] and start with a letter or digit")


def _cni_args(pod_id: str, pod_name: str, pod_namespace: str, pod_uid: str) -> tuple[tuple[str, str], ...]:
    args = (("IgnoreUnknown", "1"), ("K8S_POD_NAMESPACE", pod_namespace), ("K8S_POD_NAME", pod_name),
            ("K8S_POD_INFRA_CONTAINER_ID", pod_id), ("K8S_POD_UID", pod_uid))
    for key, value in args:
        if ";" in value or "=" in value:
            raise InvalidArgument(f"{key}: {value!r} may not hold ';' or '=' (CNI_ARGS separators)")
    return args


def _port_mappings(mappings: Sequence[PortMapping]) -> list[dict[str, Any]]:
    """The portMappings capability argument, as containerd builds it; "" for any host address
    (portmap would take 0.0.0.0 as a literal destination)."""
    out = []
    for m in mappings:
        for name, port in (("host_port", m.host_port), ("container_port", m.container_port)):
            if not 0 < port < 65536:
                raise InvalidArgument(f"port_mappings.{name}: {port} is not a port (1-65535)")
        out.append({"hostPort": m.host_port, "containerPort": m.container_port,
                    "protocol": m.protocol.value,
                    "hostIP": "" if m.host_ip in _ANY_HOST_IP else m.host_ip})
    return out


def setup(netns_path: str, pod_id: str, config: CniConfig, port_mappings: Sequence[PortMapping] = (),
          *, pod_name: str = "", pod_namespace: str = "", pod_uid: str = "") -> PodNetwork:
    """ADD through the list. A setup that fails part way runs DEL for the plugins it called
    (the failing one too: it may have done part of its work), in reverse order. A pod already
    set up (a retried setup) is torn down first: host-local refuses a second ADD for one id."""
    _check_pod_id(pod_id)
    if not os.path.isabs(netns_path):
        raise InvalidArgument(f"netns path {netns_path!r}: must be absolute")
    network = load_network(config)
    call = _Call(container_id=pod_id, netns=netns_path,
                 args=_cni_args(pod_id, pod_name, pod_namespace, pod_uid),
                 capability_args={"portMappings": _port_mappings(port_mappings)} if port_mappings else {})
    for plugin in network.plugins:  # a missing binary fails before anything is made
        find_plugin(config, plugin, network)
    if _read_cache(config, pod_id) is not None:
        teardown(netns_path, pod_id, config)

    called: list[CniPlugin] = []
    result: dict[str, Any] | None = None

    def undo_add() -> None:
        _delete(config, network, called, call, result)

    with Undo() as undo:
        undo.callback(_remove_cache, config, pod_id)
        # Before the first ADD: a daemon killed during the ADDs leaves an entry whose DEL
        # still carries the port mappings (portmap's DEL without them removes nothing).
        _write_cache(config, pod_id, _Cached(network=network, call=call, result=None))
        undo.callback(undo_add)
        for plugin in network.plugins:
            called.append(plugin)  # before the call: a failing ADD may leave things behind
            result = _run(config, network, plugin, "ADD", call, result)
        assert result is not None  # the list is never empty
        pod = pod_network(result, network)
        _write_cache(config, pod_id, _Cached(network=network, call=call, result=result))
        undo.keep()
    return pod


def teardown(netns_path: str | None, pod_id: str, config: CniConfig) -> None:
    """DEL through the list, in reverse. Idempotent: no cache entry (never set up, or torn down
    already) runs DEL with today's list and no prevResult, which plugins must tolerate; no
    network config either leaves nothing to run. The entry is kept when a DEL fails, so a
    retry still has the result. netns_path None (the netns is gone) passes CNI_NETNS="": the
    plugins then only release what lives outside it (the address, port rules), and the pod's
    veth goes with the netns; the netns recorded at ADD is not reused, as its path may name
    another pod's netns by now."""
    _check_pod_id(pod_id)
    cached = _read_cache(config, pod_id)
    netns = netns_path or ""
    if cached is not None:
        call = _Call(container_id=pod_id, netns=netns, args=cached.call.args,
                     capability_args=cached.call.capability_args)
        _delete(config, cached.network, cached.network.plugins, call, cached.result)
    else:
        try:
            network = load_network(config)
        except InvalidArgument:
            return
        call = _Call(container_id=pod_id, netns=netns, args=_cni_args(pod_id, "", "", ""))
        _delete(config, network, network.plugins, call, None)
    _remove_cache(config, pod_id)


def check(netns_path: str, pod_id: str, config: CniConfig) -> None:
    """CHECK through the list with the cached result (spec 0.4.0 and later, unless the list
    says disableCheck); a NetworkError names the plugin that found the pod's network wrong."""
    _check_pod_id(pod_id)
    cached = _read_cache(config, pod_id)
    if cached is None:
        raise NetworkError(f"cni check of pod {pod_id}: no cached result in {_cache_path(config, pod_id)}")
    network = cached.network
    if not network.at_least("0.4.0") or network.disable_check:
        return
    call = _Call(container_id=pod_id, netns=netns_path, args=cached.call.args,
                 capability_args=cached.call.capability_args)
    for plugin in network.plugins:
        _run(config, network, plugin, "CHECK", call, cached.result)
