"""UDP flows that must be forgotten when a service's endpoints change (kube-proxy's
conntrack clean-up). A UDP "connection" is a conntrack entry that lives while packets keep
coming: a client that keeps sending (a DNS resolver's socket) would go on to an endpoint that
is gone, or stay on the reject of a service that had none, however the rules change. TCP needs
nothing: a connection to a dead endpoint is reset, and a new one goes by the new rules.

Entries are deleted through conntrack's netlink (pyroute2), in the caller's network namespace.
"""

from __future__ import annotations

import contextlib
import socket

from pyroute2.conntrack import Conntrack, NFCTAttrTuple  # type: ignore[import-untyped, unused-ignore]

from skiff.orchestrator.proxy.ruleset import Frontend, Rules


def stale(old: Rules, new: Rules) -> dict[Frontend, set[str]]:
    """The UDP frontends whose endpoints changed, each with the endpoint addresses its flows
    may keep."""
    return {f: {ip for ip, _ in new.get(f, ())} for f in old.keys() | new.keys()
            if f.protocol == "udp" and old.get(f) != new.get(f)}


def forget(frontends: dict[Frontend, set[str]]) -> int:
    """Deletes the flows to each frontend that do not go to an endpoint it keeps; how many."""
    if not frontends:
        return 0
    deleted = 0
    with contextlib.closing(Conntrack()) as ct:
        for frontend, keep in frontends.items():
            to = NFCTAttrTuple(proto=socket.IPPROTO_UDP, dport=frontend.port,
                               **({"daddr": frontend.address} if frontend.address else {}))
            for entry in ct.dump_entries(tuple_orig=to):
                if entry.tuple_reply.saddr not in keep:   # the reply's source: the endpoint it went to
                    with contextlib.suppress(OSError):    # gone meanwhile
                        ct.delete(entry)
                        deleted += 1
    return deleted
