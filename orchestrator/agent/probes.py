"""Liveness and readiness probes (kubelet `pkg/kubelet/prober/`): exec (ExecSync through the
CRI), httpGet (a GET on the pod's IP: 200 to 399 is a success) and tcpSocket (a connect).
Each probe runs every periodSeconds after initialDelaySeconds; failureThreshold failures in a
row make a container not ready, or for liveness, unhealthy: the agent stops it (within the
pod's grace period, in its own worker: a probe never waits for a kill) and restarts it by
the pod's restartPolicy. successThreshold successes make it ready again. A container
without a readiness probe is ready while it runs."""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from cri_api.v1 import api_pb2 as pb

from skiff.orchestrator.periodic import Periodic


@dataclass(slots=True)
class _Probe:
    kind: str                  # "readiness" or "liveness"
    spec: dict[str, Any]
    container_id: str
    ip: str
    pod_key: str
    next_at: float
    successes: int = 0
    failures: int = 0
    result: bool = False       # readiness starts not ready; liveness starts alive (see track)
    ports: dict[str, int] = field(default_factory=dict)


class Prober:
    """`changed(pod_key)` is called when a readiness result flips or a liveness probe stops a
    container: the agent then looks at the pod again."""

    def __init__(self, runtime: Any, changed: Callable[[str], None]) -> None:
        self.runtime = runtime
        self.changed = changed
        self._lock = threading.Lock()
        self._probes: dict[tuple[str, str], _Probe] = {}   # (container id, kind)
        self._loop = Periodic("prober", 0.1, self._round)

    def track(self, pod_key: str, container: dict[str, Any], container_id: str, ip: str) -> None:
        """Probe this running container (again a no-op for one already tracked)."""
        now = time.monotonic()
        ports = {p["name"]: int(p["containerPort"]) for p in container.get("ports") or [] if p.get("name")}
        with self._lock:
            for kind in ("readiness", "liveness"):
                spec = container.get(f"{kind}Probe")
                if spec is None or (container_id, kind) in self._probes:
                    continue
                delay = float(spec.get("initialDelaySeconds", 0))
                self._probes[(container_id, kind)] = _Probe(kind=kind, spec=spec, container_id=container_id, ip=ip,
                                                            pod_key=pod_key, next_at=now + delay,
                                                            result=kind == "liveness", ports=ports)

    def forget(self, keep: set[str]) -> None:
        """Drop the probes of containers not in `keep` (gone, or replaced by a restart)."""
        with self._lock:
            for key in [k for k in self._probes if k[0] not in keep]:
                del self._probes[key]

    def unhealthy(self, container_id: str) -> bool:
        """Its liveness probe failed: the agent is to stop it."""
        with self._lock:
            probe = self._probes.get((container_id, "liveness"))
            return probe is not None and not probe.result

    def ready(self, container_id: str, container: dict[str, Any]) -> bool:
        if container.get("readinessProbe") is None:
            return True
        with self._lock:
            probe = self._probes.get((container_id, "readiness"))
            return probe is not None and probe.result

    def start(self) -> None:
        self._loop.start()

    def stop(self) -> None:
        self._loop.stop()

    def _round(self) -> None:
        now = time.monotonic()
        with self._lock:
            due = [p for p in self._probes.values() if p.next_at <= now]
        for probe in due:
            ok = self._once(probe)
            probe.next_at = time.monotonic() + float(probe.spec.get("periodSeconds", 10))
            self._record(probe, ok)

    def _record(self, probe: _Probe, ok: bool) -> None:
        if ok:
            probe.successes, probe.failures = probe.successes + 1, 0
        else:
            probe.successes, probe.failures = 0, probe.failures + 1
        if not probe.result and ok and probe.successes >= int(probe.spec.get("successThreshold", 1)):
            probe.result = True
            self.changed(probe.pod_key)
        elif probe.result and not ok and probe.failures >= int(probe.spec.get("failureThreshold", 3)):
            probe.result = False
            self.changed(probe.pod_key)

    def _once(self, probe: _Probe) -> bool:
        timeout = float(probe.spec.get("timeoutSeconds", 1))
        try:
            if "exec" in probe.spec:
                reply = self.runtime.ExecSync(pb.ExecSyncRequest(
                    container_id=probe.container_id, cmd=list(probe.spec["exec"].get("command") or []),
                    timeout=max(1, int(timeout))), timeout=timeout + 5)
                return bool(reply.exit_code == 0)
            handler = probe.spec.get("httpGet") or probe.spec.get("tcpSocket") or {}
            port = handler.get("port")
            number = probe.ports.get(port, 0) if isinstance(port, str) else int(port or 0)
            if "tcpSocket" in probe.spec:
                with socket.create_connection((probe.ip, number), timeout=timeout):
                    return True
            conn = http.client.HTTPConnection(probe.ip, number, timeout=timeout)
            try:
                conn.request("GET", handler.get("path", "/"), headers={"User-Agent": "skiff-probe"})
                return 200 <= conn.getresponse().status < 400
            finally:
                conn.close()
        except (OSError, grpc.RpcError, http.client.HTTPException):
            return False
