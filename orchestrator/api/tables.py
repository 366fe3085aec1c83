"""Server-side printing: the `meta.k8s.io` Table kubectl asks for with `Accept:
application/json;as=Table;v=v1;g=meta.k8s.io, ...`, and prints as it comes (kubectl 1.20 has
no printers of its own for built-in kinds: given a plain list it prints NAME and AGE).

The columns and cells are kube-apiserver 1.20's, `pkg/printers/internalversion/printers.go`:
the server always fills the wide (priority 1) columns too, and kubectl shows them with
`-o wide`. Each row's `object` is per `includeObject`: the object's metadata as a
PartialObjectMetadata (the default, what `-A` and `--show-labels` read), the whole object,
or nothing (apiserver `pkg/endpoints/handlers/response.go`, asTable). A kind without a
printer gets NAME and AGE.

skiff stores objects as written, without Kubernetes' defaulting, so the printers apply the
defaults themselves (a Service's type ClusterIP, a port's protocol TCP, one replica)."""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from skiff.errors import InvalidArgument
from skiff.orchestrator.api.kinds import Kind

VERSIONS = ("v1", "v1beta1")   # meta.k8s.io versions a Table is served in
INCLUDE = ("Metadata", "Object", "None")   # includeObject, the first the default

Cell = str | int


@dataclass(frozen=True, slots=True, kw_only=True)
class Column:
    name: str
    type: str = "string"
    priority: int = 0      # 1: shown by kubectl only with -o wide
    format: str = ""       # "name": the column kubectl replaces with kind/name when asked

    def definition(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "format": self.format, "description": "",
                "priority": self.priority}


NAME, AGE = Column(name="Name", format="name"), Column(name="Age")
TEMPLATE = (Column(name="Containers", priority=1), Column(name="Images", priority=1),
            Column(name="Selector", priority=1))


def accepted(accept: str) -> str | None:
    """The meta.k8s.io version of the Table the Accept header asks for, None for plain JSON:
    its media ranges in order, the first this server can answer winning (kubectl sends no
    q-values)."""
    for media_range in accept.split(","):
        media_type, *parameters = (p.strip() for p in media_range.split(";"))
        params = {key.strip(): value.strip() for key, _, value in (p.partition("=") for p in parameters)}
        if media_type not in ("application/json", "application/*", "*/*"):
            continue
        if params.get("as") != "Table":
            return None
        if params.get("g") == "meta.k8s.io" and params.get("v") in VERSIONS:
            return params["v"]
    return None


def include_object(value: str | None) -> str:
    """The query's includeObject, checked: what each row's `object` is."""
    if value and value not in INCLUDE:
        raise InvalidArgument(f"includeObject: unrecognized value {value!r} (want one of {', '.join(INCLUDE)})")
    return value or INCLUDE[0]


def table(kind: Kind, objects: list[dict[str, Any]], *, version: str, include: str, resource_version: str,
          headers: bool = True, now: datetime.datetime | None = None) -> dict[str, Any]:
    """The Table of `objects` of `kind`; `headers` False leaves the columns out, as in a
    watch's events after the first (kubectl keeps the columns it last saw)."""
    columns, cells = PRINTERS.get(kind.kind, DEFAULT)
    at = now or datetime.datetime.now(datetime.UTC)
    rows = []
    for obj in objects:
        row: dict[str, Any] = {"cells": [obj["metadata"]["name"], *cells(obj, at)]}
        if kind.kind == "Pod" and (phase := (obj.get("status") or {}).get("phase")) in ("Succeeded", "Failed"):
            row["conditions"] = [{"type": "Completed", "status": "True", "reason": phase,
                                  "message": "The pod has completed successfully." if phase == "Succeeded"
                                  else "The pod failed."}]
        if include == "Object":
            row["object"] = {**obj, "apiVersion": kind.api_version, "kind": kind.kind}
        elif include != "None":
            row["object"] = {"kind": "PartialObjectMetadata", "apiVersion": f"meta.k8s.io/{version}",
                             "metadata": obj["metadata"]}
        rows.append(row)
    return {"kind": "Table", "apiVersion": f"meta.k8s.io/{version}",
            "metadata": {"resourceVersion": resource_version},
            "columnDefinitions": [c.definition() for c in (NAME, *columns)] if headers else [], "rows": rows}


# -- ages -----------------------------------------------------------------------------------------

def human_duration(seconds: float) -> str:
    """apimachinery `util/duration.HumanDuration`: two or three significant figures, 5s, 3m10s,
    2d3h; a clock up to a second behind the creator's still says 0s."""
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        return f"{minutes}m{s % 60}s" if s % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = s // 3600
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        return f"{hours // 24}d{hours % 24}h" if hours % 24 else f"{hours // 24}d"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        years, days = hours // 24 // 365, hours // 24 % 365
        return f"{years}y{days}d" if days else f"{years}y"
    return f"{hours // 24 // 365}y"


def _time(text: object) -> datetime.datetime | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def _since(text: object, now: datetime.datetime) -> str:
    then = _time(text)
    return "<unknown>" if then is None else human_duration((now - then).total_seconds())


def _age(obj: dict[str, Any], now: datetime.datetime) -> str:
    return _since(obj["metadata"].get("creationTimestamp"), now)


# -- what cells say -------------------------------------------------------------------------------

def _status(obj: dict[str, Any]) -> dict[str, Any]:
    return obj.get("status") or {}


def _spec(obj: dict[str, Any]) -> dict[str, Any]:
    return obj.get("spec") or {}


def _labels(labels: dict[str, str] | None) -> str:
    """labels.FormatLabels: k=v, sorted, comma-separated; <none> for none."""
    return ",".join(f"{k}={v}" for k, v in sorted((labels or {}).items())) or "<none>"


def _selector(selector: dict[str, Any] | None) -> str:
    """A LabelSelector as metav1.LabelSelectorAsSelector(...).String() writes it, requirements
    sorted by key; "" when it selects everything or nothing."""
    requirements = [(k, f"{k}={v}") for k, v in (selector or {}).get("matchLabels", {}).items()]
    for e in (selector or {}).get("matchExpressions") or []:
        key, values = e.get("key", ""), ",".join(sorted(e.get("values") or []))
        requirements.append((key, {"In": f"{key} in ({values})", "NotIn": f"{key} notin ({values})",
                                   "Exists": key, "DoesNotExist": f"!{key}"}.get(e.get("operator", ""), key)))
    return ",".join(text for _, text in sorted(requirements))


def _template(obj: dict[str, Any]) -> list[Cell]:
    """The wide cells of a workload: its template's container names and images, its selector."""
    containers = _spec(_spec(obj).get("template") or {}).get("containers") or []
    return [",".join(c.get("name", "") for c in containers), ",".join(c.get("image", "") for c in containers),
            _selector(_spec(obj).get("selector")) or "<none>"]


def _pod(pod: dict[str, Any], now: datetime.datetime) -> list[Cell]:
    """printPod: the last container's waiting or terminated reason over the phase, ready
    containers counted, Terminating once deleted. (skiff's pods have no init containers.)"""
    status, spec = _status(pod), _spec(pod)
    reason = status.get("reason") or status.get("phase") or "Pending"
    restarts = ready = 0
    running = False
    for c in reversed(status.get("containerStatuses") or []):
        restarts += int(c.get("restartCount", 0))
        state = c.get("state") or {}
        waiting, terminated = state.get("waiting"), state.get("terminated")
        if waiting is not None and waiting.get("reason"):
            reason = waiting["reason"]
        elif terminated is not None:
            reason = terminated.get("reason") or (f"Signal:{terminated['signal']}" if terminated.get("signal")
                                                  else f"ExitCode:{terminated.get('exitCode', 0)}")
        elif c.get("ready") and state.get("running") is not None:
            running = True
            ready += 1
    if reason == "Completed" and running:   # one container done, another still serving
        reason = "Running" if any(c.get("type") == "Ready" and c.get("status") == "True"
                                  for c in status.get("conditions") or []) else "NotReady"
    if pod["metadata"].get("deletionTimestamp"):
        reason = "Unknown" if status.get("reason") == "NodeLost" else "Terminating"
    gates = spec.get("readinessGates") or []
    true = {c.get("type") for c in status.get("conditions") or [] if c.get("status") == "True"}
    ip = (status.get("podIPs") or [{}])[0].get("ip") or status.get("podIP")
    return [f"{ready}/{len(spec.get('containers') or [])}", reason, restarts, _age(pod, now),
            ip or "<none>", spec.get("nodeName") or "<none>", status.get("nominatedNodeName") or "<none>",
            f"{sum(1 for g in gates if g.get('conditionType') in true)}/{len(gates)}" if gates else "<none>"]


def _job(job: dict[str, Any], now: datetime.datetime) -> list[Cell]:
    spec, status = _spec(job), _status(job)
    succeeded = int(status.get("succeeded", 0))
    if "completions" in spec:
        completions = f"{succeeded}/{spec['completions']}"
    elif int(spec.get("parallelism", 1)) > 1:
        completions = f"{succeeded}/1 of {spec['parallelism']}"
    else:
        completions = f"{succeeded}/1"
    start, end = _time(status.get("startTime")), _time(status.get("completionTime"))
    took = "" if start is None else human_duration(((end or now) - start).total_seconds())
    return [completions, took, _age(job, now), *_template(job)]


def _service(svc: dict[str, Any], now: datetime.datetime) -> list[Cell]:
    spec = _spec(svc)
    kind = spec.get("type") or "ClusterIP"
    cluster_ip = (spec.get("clusterIPs") or [spec.get("clusterIP")])[0] or "<none>"
    external = ",".join(spec.get("externalIPs") or []) or "<none>"   # (skiff has no LoadBalancer)
    ports = ",".join(f"{p.get('port')}{':' + str(p['nodePort']) if p.get('nodePort') else ''}/"
                     f"{p.get('protocol') or 'TCP'}" for p in spec.get("ports") or [])
    return [kind, cluster_ip, external, ports or "<none>", _age(svc, now), _labels(spec.get("selector"))]


def _endpoints(ep: dict[str, Any], now: datetime.datetime) -> list[Cell]:
    """formatEndpoints: the first three ip:port (ip alone for a subset without ports), then a count."""
    subsets = ep.get("subsets") or []
    shown: list[str] = []
    count, more = 0, False
    for subset in subsets:   # (where the count stops is kube-apiserver's)
        addresses = [a.get("ip", "") for a in subset.get("addresses") or []]
        for port in subset.get("ports") or [None]:
            count += len(addresses)
            for ip in addresses:
                if len(shown) == 3:
                    more = True
                    break
                shown.append(ip if port is None else f"{_host(ip)}:{port.get('port')}")
            if more:
                break
        if more and not subset.get("ports"):
            break
    text = ",".join(shown) + (f" + {count - 3} more..." if more else "")
    return [text if subsets else "<none>", _age(ep, now)]


def _host(ip: str) -> str:
    return f"[{ip}]" if ":" in ip else ip   # net.JoinHostPort


def _node(node: dict[str, Any], now: datetime.datetime) -> list[Cell]:
    status = _status(node)
    ready = [c for c in status.get("conditions") or [] if c.get("type") == "Ready"][-1:]   # the last wins
    states = ["Ready" if c.get("status") == "True" else "NotReady" for c in ready] or ["Unknown"]
    if _spec(node).get("unschedulable"):
        states.append("SchedulingDisabled")
    labels = node["metadata"].get("labels") or {}
    roles = sorted({k.removeprefix("node-role.kubernetes.io/") for k in labels
                    if k.startswith("node-role.kubernetes.io/") and k != "node-role.kubernetes.io/"}
                   | ({labels["kubernetes.io/role"]} if labels.get("kubernetes.io/role") else set()))
    info = status.get("nodeInfo") or {}
    addresses = {a.get("type"): a.get("address") for a in reversed(status.get("addresses") or [])}
    return [",".join(states), ",".join(roles) or "<none>", _age(node, now), info.get("kubeletVersion", ""),
            addresses.get("InternalIP") or "<none>", addresses.get("ExternalIP") or "<none>",
            info.get("osImage") or "<unknown>", info.get("kernelVersion") or "<unknown>",
            info.get("containerRuntimeVersion") or "<unknown>"]


def _no_cells(obj: dict[str, Any], now: datetime.datetime) -> list[Cell]:
    return [_age(obj, now)]


Printer = tuple[tuple[Column, ...], Callable[[dict[str, Any], datetime.datetime], list[Cell]]]
PRINTERS: dict[str, Printer] = {
    "Pod": ((Column(name="Ready"), Column(name="Status"), Column(name="Restarts", type="integer"), AGE,
             Column(name="IP", priority=1), Column(name="Node", priority=1),
             Column(name="Nominated Node", priority=1), Column(name="Readiness Gates", priority=1)), _pod),
    "Deployment": ((Column(name="Ready"), Column(name="Up-to-date"), Column(name="Available"), AGE, *TEMPLATE),
                   lambda d, now: [f"{_status(d).get('readyReplicas', 0)}/{_spec(d).get('replicas', 1)}",
                                   int(_status(d).get("updatedReplicas", 0)),
                                   int(_status(d).get("availableReplicas", 0)), _age(d, now), *_template(d)]),
    "ReplicaSet": ((Column(name="Desired", type="integer"), Column(name="Current", type="integer"),
                    Column(name="Ready", type="integer"), AGE, *TEMPLATE),
                   lambda r, now: [int(_spec(r).get("replicas", 1)), int(_status(r).get("replicas", 0)),
                                   int(_status(r).get("readyReplicas", 0)), _age(r, now), *_template(r)]),
    "DaemonSet": ((Column(name="Desired", type="integer"), Column(name="Current", type="integer"),
                   Column(name="Ready", type="integer"), Column(name="Up-to-date", type="integer"),
                   Column(name="Available", type="integer"), Column(name="Node Selector"), AGE, *TEMPLATE),
                  lambda d, now: [*(int(_status(d).get(f, 0)) for f in (
                      "desiredNumberScheduled", "currentNumberScheduled", "numberReady", "updatedNumberScheduled",
                      "numberAvailable")), _labels(_spec(_spec(d).get("template") or {}).get("nodeSelector")),
                      _age(d, now), *_template(d)]),
    "Job": ((Column(name="Completions"), Column(name="Duration"), AGE, *TEMPLATE), _job),
    "Service": ((Column(name="Type"), Column(name="Cluster-IP"), Column(name="External-IP"), Column(name="Port(s)"),
                 AGE, Column(name="Selector", priority=1)), _service),
    "Endpoints": ((Column(name="Endpoints"), AGE), _endpoints),
    "Node": ((Column(name="Status"), Column(name="Roles"), AGE, Column(name="Version"),
              *(Column(name=n, priority=1) for n in ("Internal-IP", "External-IP", "OS-Image", "Kernel-Version",
                                                     "Container-Runtime"))), _node),
    # skiff's namespaces have no status.phase: one that exists is Active (its delete is at once)
    "Namespace": ((Column(name="Status"), AGE), lambda n, now: [_status(n).get("phase") or "Active", _age(n, now)]),
    "Secret": ((Column(name="Type"), Column(name="Data"), AGE),
               lambda s, now: [s.get("type") or "Opaque", len({*(s.get("data") or {}), *(s.get("stringData") or {})}),
                               _age(s, now)]),
    "ConfigMap": ((Column(name="Data"), AGE),
                  lambda c, now: [len(c.get("data") or {}) + len(c.get("binaryData") or {}), _age(c, now)]),
}
DEFAULT: Printer = ((AGE,), _no_cells)
