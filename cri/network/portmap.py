"""skiff's nftables table: masquerade for pod traffic leaving the pod CIDR, and hostPort DNAT.

Everything lives in one table of skiff's own, `ip skiff`, created by the first pod that needs
it and deleted when its last rule goes: skiff never edits another table. Each rule carries the
comment `skiff pod <id>`, so teardown deletes exactly the rules of its pod (by handle, in one
transaction). A file lock around each change keeps two processes from racing the "delete the
table when empty" check against an insert.

    chain prerouting  (nat, dstnat)  [ip daddr H] fib daddr type local tcp dport P dnat to IP:C
    chain output      (nat, -100)    the same, for connections the node itself opens
    chain postrouting (nat, srcnat)  ip saddr IP ip daddr != CIDR masquerade

Forwarding: pod traffic leaving the node and DNAT'd traffic need net.ipv4.ip_forward. It is
host state, so skiff turns it on only when it is off, records that it did (`ip_forward.skiff`
in the state dir, holding the old value), and puts the old value back when its table goes.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from skiff.cri.network import NetworkError, PortMapping, nftables
from skiff.errors import InvalidArgument

TABLE = "skiff"
IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")
_FORWARD_RECORD = "ip_forward.skiff"
_POD_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
_ANY = (None, "", "0.0.0.0")


def tag(pod_id: str) -> str:
    if not _POD_ID.fullmatch(pod_id):
        raise InvalidArgument(f"pod id {pod_id!r}: must be 1-100 of [A-Za-z0-9_.-]")
    return f"skiff pod {pod_id}"


@contextlib.contextmanager
def _locked(state_dir: Path) -> Iterator[None]:
    state_dir.mkdir(parents=True, exist_ok=True)
    with open(state_dir / "nft.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield  # the lock goes with the file


def _table_exists() -> bool:
    # Its chains, not `list tables`: nft 1.0.6 reads every rule for that (2 ms with 500 pods'
    # rules, against 0.1 ms for the chains, which skiff's table always has).
    listing = json.loads(nftables.run("list chains", json=True))
    return any(item.get("chain", {}).get("family") == "ip" and item["chain"].get("table") == TABLE
               for item in listing.get("nftables", []))


def _rules() -> list[dict[str, Any]]:
    if not _table_exists():
        return []
    listing = json.loads(nftables.run(f"list table ip {TABLE}", json=True, handles=True))
    return [item["rule"] for item in listing.get("nftables", []) if "rule" in item]


def _validate(mapping: PortMapping) -> None:
    for field in ("host_port", "container_port"):
        value = getattr(mapping, field)
        if not 0 < value < 65536:
            raise InvalidArgument(f"port_mappings.{field}: {value} is not a port (1-65535)")
    if mapping.host_ip not in _ANY:
        try:
            ipaddress.IPv4Address(mapping.host_ip)
        except ValueError:
            raise InvalidArgument(f"port_mappings.host_ip: {mapping.host_ip!r} is not an IPv4 address") from None


def pod_rules(pod_id: str, pod_ip: ipaddress.IPv4Address, network: ipaddress.IPv4Network,
              *, masquerade: bool, port_mappings: Sequence[PortMapping]) -> list[str]:
    """The nft `add rule` lines for one pod (without the table and chains)."""
    comment = f'comment "{tag(pod_id)}"'
    lines = []
    if masquerade:
        lines.append(f"add rule ip {TABLE} postrouting ip saddr {pod_ip} ip daddr != {network} "
                     f"masquerade {comment}")
    for m in port_mappings:
        _validate(m)
        match = "" if m.host_ip in _ANY else f"ip daddr {m.host_ip} "
        match += f"fib daddr type local {m.protocol.value} dport {m.host_port}"
        for chain in ("prerouting", "output"):
            lines.append(f"add rule ip {TABLE} {chain} {match} dnat to {pod_ip}:{m.container_port} {comment}")
    return lines


def add(state_dir: Path, pod_id: str, pod_ip: ipaddress.IPv4Address, network: ipaddress.IPv4Network,
        *, masquerade: bool, port_mappings: Sequence[PortMapping], fresh: bool = False) -> None:
    """Replaces the pod's rules with these, in one transaction; no rules: nothing to do.
    `fresh` says the pod cannot have rules yet, which saves listing them."""
    lines = pod_rules(pod_id, pod_ip, network, masquerade=masquerade, port_mappings=port_mappings)
    with _locked(state_dir):
        stale = [] if fresh else _delete_lines(pod_id)
        if not lines:
            if stale:
                nftables.run("\n".join(stale) + "\n")
                _drop_table_if_empty(state_dir)
            return
        _enable_forwarding(state_dir)
        rules = "\n".join([*stale, *lines]) + "\n"
        # Adding the table and its hooked chains again when they exist costs the kernel some
        # 14 ms (an RCU grace period) for nothing; rules alone cost 0.1 ms. Another skiff
        # with another state dir may drop the table meanwhile: then the rules fail, and the
        # whole script goes in.
        if _table_exists():
            try:
                nftables.run(rules)
                return
            except NetworkError:
                if _table_exists():
                    raise
        nftables.run("\n".join([
            f"add table ip {TABLE}",
            f"add chain ip {TABLE} prerouting {{ type nat hook prerouting priority dstnat; policy accept; }}",
            f"add chain ip {TABLE} output {{ type nat hook output priority -100; policy accept; }}",
            f"add chain ip {TABLE} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}",
        ]) + "\n" + rules)


def remove(state_dir: Path, pod_id: str) -> None:
    """Deletes the pod's rules, then the table if it is empty; none there is fine."""
    with _locked(state_dir):
        stale = _delete_lines(pod_id)
        if stale:
            nftables.run("\n".join(stale) + "\n")
        _drop_table_if_empty(state_dir)


def _delete_lines(pod_id: str) -> list[str]:
    wanted = tag(pod_id)
    return [f"delete rule ip {TABLE} {rule['chain']} handle {rule['handle']}"
            for rule in _rules() if rule.get("comment") == wanted]


def _drop_table_if_empty(state_dir: Path) -> None:
    if _table_exists():
        if _rules():
            return
        nftables.run(f"delete table ip {TABLE}")
    # No table, no pod needs forwarding (also after an add that failed past turning it on).
    _restore_forwarding(state_dir)


def _enable_forwarding(state_dir: Path) -> None:
    if IP_FORWARD.read_text().strip() != "0":
        return
    (state_dir / _FORWARD_RECORD).write_text("0\n")  # before the change: a crash still restores
    IP_FORWARD.write_text("1\n")


def _restore_forwarding(state_dir: Path) -> None:
    record = state_dir / _FORWARD_RECORD
    try:
        old = record.read_text().strip()
    except FileNotFoundError:
        return  # skiff did not change it
    IP_FORWARD.write_text(old + "\n")
    record.unlink()


def forwarding_changed(state_dir: Path) -> bool:
    """Whether skiff turned net.ipv4.ip_forward on and has not put it back yet."""
    return (state_dir / _FORWARD_RECORD).exists()
