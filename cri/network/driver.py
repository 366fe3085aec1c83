"""The pod network modes behind one Protocol: "bridge" (built in, bridge.py), "cni" (a
standard conflist, cni.py) and "none" (a pod netns with only `lo`)."""

from __future__ import annotations

import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from skiff.cri.config import NetworkConfig
from skiff.cri.network import BridgeConfig, PodNetwork, PortMapping


class PodNetworking(Protocol):
    def setup(self, netns_path: str, pod_id: str, port_mappings: Sequence[PortMapping], *,
              pod_name: str, pod_namespace: str, pod_uid: str,
              netlink: socket.socket | None = None) -> PodNetwork | None: ...

    def teardown(self, netns_path: str | None, pod_id: str) -> None:
        """Idempotent: a pod whose network is gone, or never was, is fine."""

    def ready(self) -> tuple[bool, str]:
        """For the CRI Status NetworkReady condition: (ready, why not)."""


class BridgeNetworking:
    def __init__(self, config: BridgeConfig) -> None:
        self.config = config

    def setup(self, netns_path: str, pod_id: str, port_mappings: Sequence[PortMapping], *,
              pod_name: str, pod_namespace: str, pod_uid: str,
              netlink: socket.socket | None = None) -> PodNetwork | None:
        from skiff.cri.network import bridge

        return bridge.setup(netns_path, pod_id, self.config, port_mappings, netlink=netlink)

    def teardown(self, netns_path: str | None, pod_id: str) -> None:
        from skiff.cri.network import bridge

        bridge.teardown(netns_path, pod_id, self.config)

    def ready(self) -> tuple[bool, str]:
        return True, ""


class CniNetworking:
    def __init__(self, conf_dir: str, bin_dir: str, state_dir: Path) -> None:
        from skiff.cri.network.cni import CniConfig

        self.config = CniConfig(conf_dir=conf_dir, bin_dir=bin_dir, state_dir=state_dir)

    def setup(self, netns_path: str, pod_id: str, port_mappings: Sequence[PortMapping], *,
              pod_name: str, pod_namespace: str, pod_uid: str,
              netlink: socket.socket | None = None) -> PodNetwork | None:
        from skiff.cri.network import cni

        return cni.setup(netns_path, pod_id, self.config, port_mappings, pod_name=pod_name,
                         pod_namespace=pod_namespace, pod_uid=pod_uid)

    def teardown(self, netns_path: str | None, pod_id: str) -> None:
        from skiff.cri.network import cni

        cni.teardown(netns_path, pod_id, self.config)

    def ready(self) -> tuple[bool, str]:
        from skiff.cri.network import cni

        return cni.ready(self.config)


class NoNetworking:
    """Pods get their own netns with `lo` up (pod_namespaces.py does that for every mode)
    and nothing else."""

    def setup(self, netns_path: str, pod_id: str, port_mappings: Sequence[PortMapping], *,
              pod_name: str, pod_namespace: str, pod_uid: str,
              netlink: socket.socket | None = None) -> PodNetwork | None:
        return None

    def teardown(self, netns_path: str | None, pod_id: str) -> None:
        pass

    def ready(self) -> tuple[bool, str]:
        return True, ""


def networking_for(config: NetworkConfig, state_dir: Path) -> PodNetworking:
    if config.mode == "bridge":
        return BridgeNetworking(BridgeConfig(pod_cidr=config.pod_cidr, bridge=config.bridge,
                                             state_dir=state_dir, cluster_cidr=config.cluster_cidr or None))
    if config.mode == "cni":
        return CniNetworking(config.cni_conf_dir, config.cni_bin_dir, state_dir)
    return NoNetworking()
