"""The CRI service's configuration: one TOML file (default /etc/skiff/cri.toml; a missing
default file means all defaults), flags on `skiff cri serve` override it.

    socket = "/run/skiff/skiff.sock"
    images_root = "/var/lib/skiff"          # the content store, layers and snapshots
    state_root = "/run/skiff/cri"           # sandbox and container records
    log_root = "/var/log/pods"              # where kubelet's log_path usually points
    registries = "/etc/skiff/registries.toml"   # mirrors, plain-HTTP hosts (images/hosts.py)
    cgroup_parent = "/kubepods"             # pods' cgroups go below it; default: skiff's own
    stream_address = "127.0.0.1:0"          # Exec's streaming server (port 0: the kernel picks one)
    netns = "/run/netns/node1"              # the node's network: pods' bridge, host-network pods and
                                            # hostPorts are there; pulls still go out from the
                                            # namespace the service started in (a one-host cluster)
    [network]
    mode = "bridge"                         # "bridge" (built in), "cni" or "none"
    pod_cidr = "10.88.0.0/16"
    cluster_cidr = "10.244.0.0/16"          # not masqueraded (every node's pods); default: pod_cidr
    bridge = "skiff0"
    cni_conf_dir = "/etc/cni/net.d"         # mode "cni": a standard conflist there
    cni_bin_dir = "/usr/lib/cni"
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from dataclasses import dataclass, field, fields
from typing import Any

from skiff.errors import InvalidArgument, NotFound

DEFAULT_PATH = "/etc/skiff/cri.toml"
NETWORK_MODES = ("bridge", "cni", "none")


@dataclass(frozen=True, slots=True, kw_only=True)
class NetworkConfig:
    mode: str = "bridge"
    pod_cidr: str = "10.88.0.0/16"
    cluster_cidr: str = ""
    bridge: str = "skiff0"
    cni_conf_dir: str = "/etc/cni/net.d"
    cni_bin_dir: str = "/usr/lib/cni"


@dataclass(frozen=True, slots=True, kw_only=True)
class CriConfig:
    socket: str = "/run/skiff/skiff.sock"
    images_root: str = "/var/lib/skiff"
    state_root: str = "/run/skiff/cri"
    log_root: str = "/var/log/pods"
    registries: str | None = None
    cgroup_parent: str | None = None
    netns: str | None = None
    stream_address: str = "127.0.0.1:0"
    network: NetworkConfig = field(default_factory=NetworkConfig)


def load(path: str | None = None) -> CriConfig:
    """The file at `path` (which must exist), else the default file if there is one."""
    chosen = path or DEFAULT_PATH
    try:
        with open(chosen, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        if path is not None:
            raise NotFound(f"{path}: no such CRI configuration file") from None
        return CriConfig()
    except tomllib.TOMLDecodeError as e:
        raise InvalidArgument(f"{chosen}: {e}") from e
    return parse(data, source=chosen)


def parse(data: dict[str, Any], *, source: str = "<config>") -> CriConfig:
    network = data.get("network", {})
    if not isinstance(network, dict):
        raise InvalidArgument(f"{source}: network: must be a table")
    top = {k: v for k, v in data.items() if k != "network"}
    config = CriConfig(**_checked(CriConfig, top, source, ""),
                       network=NetworkConfig(**_checked(NetworkConfig, network, source, "network.")))
    if config.network.mode not in NETWORK_MODES:
        raise InvalidArgument(f"{source}: network.mode: {config.network.mode!r} is not one of {', '.join(NETWORK_MODES)}")
    for name in ("pod_cidr", "cluster_cidr"):
        try:
            value = getattr(config.network, name)
            if value or name == "pod_cidr":
                ipaddress.ip_network(value)
        except ValueError as e:
            raise InvalidArgument(f"{source}: network.{name}: {e}") from e
    for name in ("socket", "images_root", "state_root", "log_root"):
        if not os.path.isabs(getattr(config, name)):
            raise InvalidArgument(f"{source}: {name}: must be an absolute path")
    host, sep, port = config.stream_address.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise InvalidArgument(f"{source}: stream_address: {config.stream_address!r}: want HOST:PORT (port 0: any)")
    return config


def _checked(cls: type, table: dict[str, Any], source: str, prefix: str) -> dict[str, Any]:
    known = {f.name for f in fields(cls) if f.name != "network"}
    for key, value in table.items():
        if key not in known:
            raise InvalidArgument(f"{source}: {prefix}{key}: unknown setting (known: {', '.join(sorted(known))})")
        if not isinstance(value, str):
            raise InvalidArgument(f"{source}: {prefix}{key}: expected a string, got {value!r}")
    return table
