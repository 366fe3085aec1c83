"""The service proxy of one node (kube-proxy's job): Services and Endpoints watched, and the
node's `ip skiff-proxy` table (ruleset.py) kept in line with them, in this process's network
namespace.

The first sync writes the whole table in one transaction. After it, each change touches only
the services that changed: their old elements out and new ones in, again one transaction, so
a connection never sees half a change. Changes that arrive together go in one sync. If the
kernel refuses a change (the table was changed behind the proxy's back), the next sync
writes the whole table again. After a change, UDP flows to endpoints that went are forgotten
(conntrack.py).

The libnftables context is kept for the proxy's life (nftables.Session) and used only by its
worker thread, which is where the netlink socket is opened."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from skiff.cri.network import nftables
from skiff.orchestrator.proxy import conntrack, ruleset
from skiff.orchestrator.proxy.ruleset import Rules

log = logging.getLogger("skiff.orchestrator")
Handler = Callable[[str, dict[str, Any] | None, dict[str, Any] | None], None]


class ObjectCache(Protocol):
    """What the proxy reads of an informer (informer.py): objects by `namespace/name`."""

    def get(self, key: str) -> dict[str, Any] | None: ...
    def items(self) -> list[dict[str, Any]]: ...
    def on_change(self, handler: Handler) -> None: ...


class ServiceProxy:
    def __init__(self, services: ObjectCache, endpoints: ObjectCache) -> None:
        self.services = services
        self.endpoints = endpoints
        self._wake = threading.Condition()
        self._dirty: set[str] = set()
        self._full = True
        self._stop = False
        self._programmed: dict[str, Rules] = {}   # what the table holds, by service key
        self._chains: set[int] = set()            # the lb<N> chains it has
        self._session: nftables.Session | None = None
        self._thread: threading.Thread | None = None
        self.synced = threading.Event()           # set after each sync, for tests and the bench
        self.last_sync: tuple[str, float] = ("", 0.0)   # ("full" | "change", seconds)
        services.on_change(self._changed)
        endpoints.on_change(self._changed)

    def _changed(self, key: str, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        with self._wake:
            self._dirty.add(key)
            self.synced.clear()
            self._wake.notify()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="service-proxy", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stops syncing; the rules stay, so that services keep working across a restart (as
        kube-proxy's do). `remove` takes them away."""
        with self._wake:
            self._stop = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        try:
            while True:
                with self._wake:
                    while not (self._stop or self._dirty or self._full):
                        self._wake.wait()
                    if self._stop:
                        return
                    keys, self._dirty = self._dirty, set()
                try:
                    self.sync(keys)
                except Exception as e:  # the kernel or nft refused: write it all again, after a pause
                    log.warning("service proxy: %s; writing the whole table again", e)
                    self._full = True
                    time.sleep(1.0)
        finally:
            if self._session is not None:
                self._session.close()

    def sync(self, keys: set[str]) -> None:
        """Brings the table in line for the services `keys` (all of them on a full sync)."""
        if self._session is None:
            self._session = nftables.Session()
        started = time.perf_counter()
        if self._full:
            keys = {f"{s['metadata']['namespace']}/{s['metadata']['name']}" for s in self.services.items()}
        wanted = {key: self._rules(key) for key in keys}
        new: Rules = {f: b for rules in wanted.values() for f, b in rules.items()}
        if self._full:
            self._session.run(ruleset.table(new))
            self._programmed, self._chains = {}, {len(b) for b in new.values() if b}
            self._full = False
            kind = "full"
        else:
            old: Rules = {f: b for key in keys for f, b in self._programmed.get(key, {}).items()}
            counts = {len(b) for b in new.values() if b} - self._chains
            commands = ruleset.balancer_chains(sorted(counts)) + ruleset.changes(old, new)
            if commands:
                self._session.run("\n".join(commands))   # refused: _run writes it all again
                try:
                    conntrack.forget(conntrack.stale(old, new))
                except Exception as e:   # the rules are right; old UDP flows end by themselves
                    log.warning("service proxy: forgetting UDP flows to changed services: %s", e)
            self._chains |= counts
            kind = "change"
        for key, rules in wanted.items():
            if rules:
                self._programmed[key] = rules
            else:
                self._programmed.pop(key, None)
        self.last_sync = (kind, time.perf_counter() - started)
        with self._wake:
            if not self._dirty:
                self.synced.set()

    def _rules(self, key: str) -> Rules:
        """One service's rules; a service the proxy cannot make sense of is left out (and said
        so), not allowed to stop the others."""
        service = self.services.get(key)
        if service is None:
            return {}
        try:
            return ruleset.service_rules(service, self.endpoints.get(key))
        except (KeyError, TypeError, ValueError) as e:
            log.warning("service proxy: service %s left out: %s: %s", key, type(e).__name__, e)
            return {}


def remove() -> bool:
    """Deletes the proxy's table in this network namespace (`skiff proxy --cleanup`); False if
    there was none."""
    listing = json.loads(nftables.run("list tables", json=True))
    if not any(t.get("table", {}).get("family") == "ip" and t["table"].get("name") == ruleset.TABLE
               for t in listing.get("nftables", [])):
        return False
    nftables.run(f"delete table ip {ruleset.TABLE}")
    return True
