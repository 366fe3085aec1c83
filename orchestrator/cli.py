"""The orchestrator's commands, shaped like kubectl's (`skiff apply -f`, `get`, `delete`), and the
control plane process (`skiff control-plane`: the API server, the scheduler and the
controllers over one store). `skiff` (the package's cli.py) parses; this module acts."""

from __future__ import annotations

import datetime
import json
import os
import signal
import sys
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from typing import IO, TYPE_CHECKING, Any

import yaml

from skiff.errors import InvalidArgument, NotFound, OutOfRange
from skiff.orchestrator.api import kinds
from skiff.orchestrator.agent.node import HEARTBEAT
from skiff.orchestrator.api.kinds import BY_KIND, KINDS, Kind
from skiff.orchestrator.api.manifests import Manifest, load
from skiff.orchestrator.api.registry import Api, FieldSelector, Registry
from skiff.orchestrator.client import ApiClient, RemoteRegistry
from skiff.orchestrator.controllers.nodelifecycle import EVICTION, GRACE
from skiff.orchestrator.labels import parse as parse_selector

if TYPE_CHECKING:
    from skiff.orchestrator.informer import Informer

DEFAULT_SERVER = os.environ.get("SKIFF_API", "/run/skiff/api.sock")
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


def connect(server: str, token: str | None, ca: str | None) -> RemoteRegistry:
    return RemoteRegistry(ApiClient(server, token=token, ca=ca))


# -- apply, get, delete ----------------------------------------------------------------------

def _manifests(path: str, namespace: str | None) -> list[Manifest]:
    if path == "-":
        return load(sys.stdin.read(), "<stdin>", namespace=namespace)
    try:
        with open(path) as f:
            return load(f.read(), path, namespace=namespace)
    except OSError as e:
        raise InvalidArgument(f"-f {path}: {e.strerror.lower() if e.strerror else e}") from None


def _label(kind: Kind) -> str:
    """As kubectl names it in its messages: `deployment.apps`, `pod`."""
    return kind.kind.lower() + (f".{kind.group}" if kind.group else "")


def apply(api: Api, path: str, namespace: str | None) -> list[str]:
    """Create what is new, merge the file into what exists, leave what is the same: one line
    each, as kubectl prints them. Every object is checked before any is written.

    kubectl's client-side three-way merge: what the server and the controllers filled in (a
    Service's clusterIP, a Deployment's revision, the status) stays, the file's fields win,
    and a field that was in the last applied file (kept in the object's annotation
    kubectl.kubernetes.io/last-applied-configuration, as kubectl keeps it) and is not in
    this one is taken out."""
    lines = []
    for m in _manifests(path, namespace):
        meta = m.object["metadata"]
        ns = meta.get("namespace", "")
        applied = {k: v for k, v in m.object.items() if k != "status"}
        record = json.dumps(applied, sort_keys=True, separators=(",", ":"))
        applied["metadata"] = {**meta, "annotations": {**(meta.get("annotations") or {}), LAST_APPLIED: record}}
        try:
            current = api.get(m.kind, ns, meta["name"])
        except NotFound:
            api.create(m.kind, {**m.object, "metadata": applied["metadata"]}, namespace=ns or None)
            lines.append(f"{_label(m.kind)}/{meta['name']} created")
            continue
        applied["metadata"] = {k: v for k, v in applied["metadata"].items() if k in ("labels", "annotations")}
        last = json.loads(((current["metadata"].get("annotations") or {}).get(LAST_APPLIED)) or "{}")
        # of the metadata, only labels and annotations are the file's to change
        last["metadata"] = {k: v for k, v in (last.get("metadata") or {}).items() if k in ("labels", "annotations")}
        wanted = _merge(current, applied, last)
        if wanted == current:
            lines.append(f"{_label(m.kind)}/{meta['name']} unchanged")
            continue
        api.update(m.kind, wanted)
        lines.append(f"{_label(m.kind)}/{meta['name']} configured")
    return lines


def _merge(live: Any, applied: Any, last: Any) -> Any:
    """`applied` over `live`: maps key by key, less the keys `last` (the last applied) had and
    `applied` has not; lists of maps of the same length item by item (a Service's ports keep
    their nodePorts); anything else replaced."""
    if isinstance(live, dict) and isinstance(applied, dict):
        before = last if isinstance(last, dict) else {}
        merged = {**live, **{k: _merge(live.get(k), v, before.get(k)) for k, v in applied.items()}}
        return {k: v for k, v in merged.items() if k in applied or k not in before}
    if (isinstance(live, list) and isinstance(applied, list) and len(live) == len(applied)
            and all(isinstance(x, dict) for x in live + applied)):
        before_items = last if isinstance(last, list) and len(last) == len(applied) else [None] * len(applied)
        return [_merge(a, b, c) for a, b, c in zip(live, applied, before_items)]
    return applied


def delete(api: Api, resource: str | None, names: list[str], path: str | None, namespace: str | None,
           grace: int | None = None) -> list[str]:
    """`grace`: a pod's grace period (0: at once, without waiting for its node agent)."""
    targets: list[tuple[Kind, str, str]] = []
    if path is not None:
        targets = [(m.kind, m.object["metadata"].get("namespace", ""), m.object["metadata"]["name"])
                   for m in _manifests(path, namespace)]
    elif resource is not None and names:
        kind = kinds.resolve(resource)
        targets = [(kind, namespace or "default" if kind.namespaced else "", n) for n in names]
    else:
        raise InvalidArgument("delete: give RESOURCE NAME... or -f FILE")
    lines = []
    for kind, ns, name in targets:
        api.delete(kind, ns, name, grace=grace)
        lines.append(f"{_label(kind)} \"{name}\" deleted")
    return lines


def _age(obj: dict[str, Any]) -> str:
    created = obj["metadata"].get("creationTimestamp")
    if not created:
        return "<unknown>"
    then = datetime.datetime.strptime(created, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)
    seconds = int((datetime.datetime.now(datetime.UTC) - then).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{max(0, seconds)}s"


def _pod_columns(p: dict[str, Any]) -> list[str]:
    statuses = (p.get("status") or {}).get("containerStatuses") or []
    ready = sum(1 for s in statuses if s.get("ready"))
    waiting = next((s["state"]["waiting"].get("reason") for s in statuses if "waiting" in s.get("state", {})), None)
    if p["metadata"].get("deletionTimestamp"):
        waiting = "Terminating"
    return [f"{ready}/{len(p['spec'].get('containers') or [])}", waiting or (p.get("status") or {}).get("phase", "Pending"),
            str(sum(int(s.get("restartCount", 0)) for s in statuses)), _age(p),
            (p.get("status") or {}).get("podIP", "<none>"), p["spec"].get("nodeName") or "<none>"]


def _status(obj: dict[str, Any], field: str) -> int:
    return int((obj.get("status") or {}).get(field, 0))


COLUMNS: dict[str, tuple[list[str], Callable[[dict[str, Any]], list[str]]]] = {
    "Pod": (["READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE"], _pod_columns),
    "Deployment": (["READY", "UP-TO-DATE", "AVAILABLE", "AGE"], lambda d: [
        f"{_status(d, 'readyReplicas')}/{d['spec'].get('replicas', 1)}", str(_status(d, "updatedReplicas")),
        str(_status(d, "availableReplicas")), _age(d)]),
    "ReplicaSet": (["DESIRED", "CURRENT", "READY", "AGE"], lambda r: [
        str(r["spec"].get("replicas", 1)), str(_status(r, "replicas")), str(_status(r, "readyReplicas")), _age(r)]),
    "Service": (["TYPE", "CLUSTER-IP", "PORT(S)", "AGE"], lambda s: [
        s["spec"].get("type", "ClusterIP"), s["spec"].get("clusterIP") or "<none>",
        ",".join(f"{p['port']}{':' + str(p['nodePort']) if p.get('nodePort') else ''}/{p.get('protocol', 'TCP')}"
                 for p in s["spec"].get("ports") or []), _age(s)]),
    "Node": (["STATUS", "AGE"], lambda n: [
        "Ready" if any(c.get("type") == "Ready" and c.get("status") == "True"
                       for c in (n.get("status") or {}).get("conditions") or []) else "NotReady", _age(n)]),
    "Job": (["COMPLETIONS", "AGE"], lambda j: [f"{_status(j, 'succeeded')}/{j['spec'].get('completions', 1)}", _age(j)]),
    "DaemonSet": (["DESIRED", "CURRENT", "READY", "AGE"], lambda d: [
        str(_status(d, "desiredNumberScheduled")), str(_status(d, "currentNumberScheduled")),
        str(_status(d, "numberReady")), _age(d)]),
}


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(_line(r, widths) for r in rows)


def _line(cells: list[str], widths: list[int]) -> str:
    return "   ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()


def get(api: Api, resource: str, name: str | None, *, namespace: str | None, all_namespaces: bool,
        selector: str, output: str) -> str:
    return "\n".join(_get(api, resource, name, namespace=namespace, all_namespaces=all_namespaces, selector=selector,
                          output=output, watch=False))


def watch(api: Api, resource: str, name: str | None, *, namespace: str | None, all_namespaces: bool,
          selector: str, output: str) -> Iterator[str]:
    """`get -w`: the objects, then a row (or a document) each time one changes, until ^C."""
    return _get(api, resource, name, namespace=namespace, all_namespaces=all_namespaces, selector=selector,
                output=output, watch=True)


def _get(api: Api, resource: str, name: str | None, *, namespace: str | None, all_namespaces: bool,
         selector: str, output: str, watch: bool) -> Iterator[str]:
    kind = kinds.resolve(resource)
    ns = None if all_namespaces or not kind.namespaced else (namespace or "default")
    labels = parse_selector(selector, "-l")
    listing = api.list(kind, ns, labels=labels, fields=FieldSelector())
    if name is not None:
        items = [api.get(kind, ns or "", name)]
    else:
        items = listing.items
    headers, columns = COLUMNS.get(kind.kind, (["AGE"], lambda o: [_age(o)]))
    lead = ["NAMESPACE"] if all_namespaces and kind.namespaced else []

    def row(obj: dict[str, Any]) -> list[str]:
        cells: list[str] = columns(obj)
        return ([obj["metadata"].get("namespace", "")] if lead else []) + [obj["metadata"]["name"]] + cells

    def document(obj: dict[str, Any]) -> str:
        return json.dumps(obj, indent=4) if output == "json" else yaml.safe_dump(obj, sort_keys=False).rstrip()
    structured = output in ("json", "yaml")
    rows = [lead + ["NAME"] + headers] + [row(o) for o in items]
    if not watch:
        if structured:
            yield document(items[0] if name is not None else {"apiVersion": "v1", "kind": "List", "items": items})
        else:
            yield table(rows) if items else f"No resources found{f' in {ns} namespace' if ns else ''}."
        return
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]

    def shown(obj: dict[str, Any]) -> str:
        """One object as it changed: a document (YAML ones apart by ---), or a row of the table."""
        if structured:
            return document(obj) + ("\n---" if output == "yaml" else "")
        return _line(row(obj), widths)
    if structured:
        yield from (shown(o) for o in items)
    else:
        yield table(rows)
    since = listing.revision
    while True:
        try:
            for event in api.watch(kind, ns, since, labels=labels, timeout=60):
                since = event.revision
                if name is None or event.object["metadata"]["name"] == name:
                    yield shown(event.object)
        except OutOfRange:   # compacted past where we were: every object as it is now, then on
            listing = api.list(kind, ns, labels=labels, fields=FieldSelector())
            since = listing.revision
            yield from (shown(o) for o in listing.items if name is None or o["metadata"]["name"] == name)


def scale(api: Api, resource: str, name: str, replicas: int, namespace: str | None) -> str:
    kind = kinds.resolve(resource)
    if kind.kind not in ("Deployment", "ReplicaSet"):
        raise InvalidArgument(f"scale: {kind.resource} cannot be scaled (deployments and replicasets can)")
    if replicas < 0:
        raise InvalidArgument(f"--replicas {replicas}: must be 0 or more")
    current = api.get(kind, namespace or "default", name)
    api.update(kind, {**current, "spec": {**current["spec"], "replicas": replicas}})
    return f"{_label(kind)}/{name} scaled"


def rollout(api: Api, action: str, name: str, namespace: str | None, *, to_revision: int = 0,
            timeout: float = 300.0) -> str:
    """`rollout status` (waits until complete), `history` (the revisions), `undo`."""
    import time

    from skiff.orchestrator.controllers.deployment import REVISION, rollout_complete, undo

    deployments, replica_sets = BY_KIND["Deployment"], BY_KIND["ReplicaSet"]
    ns = namespace or "default"
    d = api.get(deployments, ns, name)
    owned = sorted((rs for rs in api.list(replica_sets, ns).items
                    if any(r.get("uid") == d["metadata"]["uid"] for r in rs["metadata"].get("ownerReferences") or [])),
                   key=lambda rs: int(rs["metadata"].get("annotations", {}).get(REVISION, "0")))
    if action == "history":
        rows = [["REVISION", "IMAGES"]] + [
            [rs["metadata"]["annotations"].get(REVISION, "?"),
             ",".join(c["image"] for c in rs["spec"]["template"]["spec"]["containers"])] for rs in owned]
        return f"deployment.apps/{name}\n" + table(rows)
    if action == "undo":
        undo(api, d, owned, to_revision)
        return f"deployment.apps/{name} rolled back"
    deadline = time.monotonic() + timeout
    while not rollout_complete(d):
        if time.monotonic() > deadline:
            raise InvalidArgument(f"deployment {name!r}: rollout not finished after {timeout:g}s: "
                                  f"{(d.get('status') or {}).get('updatedReplicas', 0)} of {d['spec'].get('replicas', 1)} "
                                  "updated replicas")
        time.sleep(0.5)
        d = api.get(deployments, ns, name)
    return f'deployment "{name}" successfully rolled out'


def describe(api: Api, resource: str, name: str, namespace: str | None) -> str:
    """A readable account of one object, as kubectl describe gives it: identity, labels, what it
    is for (per kind), and its status conditions."""
    kind = kinds.resolve(resource)
    obj = api.get(kind, (namespace or "default") if kind.namespaced else "", name)
    m, spec, status = obj["metadata"], obj.get("spec") or {}, obj.get("status") or {}
    rows: list[tuple[str, str]] = [("Name:", m["name"])]
    if kind.namespaced:
        rows.append(("Namespace:", m.get("namespace", "")))
    rows += [("Labels:", ", ".join(f"{k}={v}" for k, v in sorted((m.get("labels") or {}).items())) or "<none>"),
             ("Annotations:", ", ".join(f"{k}={v}" for k, v in sorted((m.get("annotations") or {}).items()))
              or "<none>"),
             ("Created:", m.get("creationTimestamp", "<unknown>"))]
    owner = next((r for r in m.get("ownerReferences") or [] if r.get("controller")), None)
    if owner is not None:
        rows.append(("Controlled By:", f"{owner['kind']}/{owner['name']}"))
    if kind.kind == "Pod":
        rows += [("Node:", spec.get("nodeName") or "<none>"), ("Status:", status.get("phase", "Pending")),
                 ("IP:", status.get("podIP", "<none>"))]
        by_name = {cs.get("name"): cs for cs in status.get("containerStatuses") or []}
        for c in spec.get("containers") or []:
            cs = by_name.get(c["name"], {})
            state = next(iter(cs.get("state") or {"waiting": {}}))
            rows += [(f"Container {c['name']}:", c["image"]),
                     ("  State:", state + (f" ({(cs['state'][state] or {}).get('reason')})"
                                           if (cs.get("state") or {}).get(state, {}).get("reason") else "")),
                     ("  Ready:", str(bool(cs.get("ready")))), ("  Restart Count:", str(cs.get("restartCount", 0)))]
    elif kind.kind in ("Deployment", "ReplicaSet"):
        selector = (spec.get("selector") or {}).get("matchLabels", {})
        updated = status.get("updatedReplicas", status.get("replicas", 0))
        rows += [("Selector:", ",".join(f"{k}={v}" for k, v in selector.items())),
                 ("Replicas:", f"{spec.get('replicas', 1)} desired | {updated} updated | {status.get('replicas', 0)} "
                               f"total | {status.get('availableReplicas', 0)} available")]
    elif kind.kind == "Service":
        rows += [("Type:", spec.get("type", "ClusterIP")), ("IP:", spec.get("clusterIP") or "<none>"),
                 ("Ports:", ", ".join(f"{p['port']}->{p.get('targetPort', p['port'])}/{p.get('protocol', 'TCP')}"
                                      for p in spec.get("ports") or []))]
    elif kind.kind == "Node":
        rows += [("Capacity:", ", ".join(f"{k}={v}" for k, v in (status.get("capacity") or {}).items())),
                 ("Taints:", ", ".join(f"{t['key']}:{t['effect']}" for t in spec.get("taints") or []) or "<none>")]
    out = [f"{label:<16}{value}" for label, value in rows]
    conditions = status.get("conditions") or []
    if conditions:
        out += ["Conditions:", *("  " + line for line in table(
            [["Type", "Status", "Reason", "Message"]] + [[c.get("type", ""), c.get("status", ""), c.get("reason", ""),
                                                          c.get("message", "")] for c in conditions]).splitlines())]
    return "\n".join(out)


# -- logs, exec ------------------------------------------------------------------------------

def logs(client: ApiClient, pod: str, out: IO[bytes], *, namespace: str | None, container: str | None = None,
         follow: bool = False, tail: int | None = None, previous: bool = False) -> None:
    """A container's log, from the API server (which asks the agent of the pod's node), to `out`
    as it comes; with `follow`, until the container has exited (or the user stops it)."""
    from skiff.orchestrator.client import path
    from skiff.orchestrator.subresources import IDLE

    params = {"container": container or "", "follow": "true" if follow else "",
              "tailLines": "" if tail is None else str(tail), "previous": "true" if previous else ""}
    query = urllib.parse.urlencode({k: v for k, v in params.items() if v})
    with client.stream(f"{path(BY_KIND['Pod'], namespace or 'default', pod)}/log" + (f"?{query}" if query else ""),
                       timeout=IDLE if follow else client.timeout) as stream:
        for data in stream:
            out.write(data)
            out.flush()


def exec_in(client: ApiClient, pod: str, command: list[str], *, namespace: str | None,
            container: str | None = None, timeout: int = 0) -> tuple[bytes, bytes, int]:
    """`command` run in a container of `pod` (CRI ExecSync on its node, through the API
    server): its stdout, stderr and exit code. `timeout`: seconds, 0 for none."""
    from skiff.orchestrator.client import path
    from skiff.orchestrator.subresources import IDLE

    if not command:
        raise InvalidArgument("exec: name the command to run after --, e.g. skiff exec POD -- ls /")
    body: dict[str, Any] = {"command": command, "timeout": timeout, **({"container": container} if container else {})}
    reply = client.request("POST", f"{path(BY_KIND['Pod'], namespace or 'default', pod)}/exec", body,
                           timeout=(timeout or IDLE) + 60)
    # The agent sends bytes that are not UTF-8 as surrogate escapes (agent/server.py).
    return (str(reply.get("stdout", "")).encode(errors="surrogateescape"),
            str(reply.get("stderr", "")).encode(errors="surrogateescape"), int(reply.get("exitCode", 0)))


def exec_url(client: ApiClient, pod: str, command: list[str], *, namespace: str | None, container: str | None,
             stdin: bool, tty: bool) -> str:
    """Where an interactive `command` in `pod` runs: the URL of its node's CRI streaming server,
    which the client connects to itself (the API server does not carry the stream)."""
    from skiff.orchestrator.client import path

    if not command:
        raise InvalidArgument("exec: name the command to run after --, e.g. skiff exec -it POD -- sh")
    body: dict[str, Any] = {"command": command, "stream": True, "stdin": stdin, "tty": tty,
                            **({"container": container} if container else {})}
    reply = client.request("POST", f"{path(BY_KIND['Pod'], namespace or 'default', pod)}/exec", body)
    return str(reply["url"])


def attach_url(client: ApiClient, pod: str, *, namespace: str | None, container: str | None, stdin: bool) -> str:
    """Where a container's own streams are: its node's CRI streaming server."""
    from skiff.orchestrator.client import path

    body: dict[str, Any] = {"stdin": stdin, **({"container": container} if container else {})}
    reply = client.request("POST", f"{path(BY_KIND['Pod'], namespace or 'default', pod)}/attach", body)
    return str(reply["url"])


def port_forward_url(client: ApiClient, pod: str, port: int, *, namespace: str | None) -> str:
    """A new URL (each is good once) of the CRI streaming server of `pod`'s node for `port`."""
    from skiff.orchestrator.client import path

    reply = client.request("POST", f"{path(BY_KIND['Pod'], namespace or 'default', pod)}/portforward",
                           {"ports": [port]})
    return str(reply["url"])


# -- the control plane -----------------------------------------------------------------------

def control_plane(store_url: str, listen: str, *, tcp: tuple[str, int] | None = None,
                  tls: tuple[str, str] | None = None, tokens: tuple[str, ...] | None = None,
                  node_grace: float = GRACE, pod_eviction: float = EVICTION) -> int:
    """The API server, the scheduler and every controller in this process, until SIGINT or SIGTERM.
    `node_grace`, `pod_eviction`: the node lifecycle controller's (nodelifecycle.py)."""
    from skiff.orchestrator.apiserver import ApiServer
    from skiff.orchestrator.controllers.daemonset import DaemonSetController
    from skiff.orchestrator.controllers.deployment import DeploymentController
    from skiff.orchestrator.controllers.endpoints import EndpointsController
    from skiff.orchestrator.controllers.garbage import GarbageCollector
    from skiff.orchestrator.controllers.job import JobController
    from skiff.orchestrator.controllers.nodelifecycle import NodeLifecycleController
    from skiff.orchestrator.controllers.replicaset import ReplicaSetController
    from skiff.orchestrator.informer import Informer, stop_all
    from skiff.orchestrator.scheduler.loop import Scheduler

    store = open_store(store_url)
    registry = Registry(store)
    registry.bootstrap()
    servers = [ApiServer(registry, unix_socket=listen)]
    if tcp is not None:
        servers.append(ApiServer(registry, tcp=tcp, tls=tls, tokens=tokens))
    inf = {k.kind: Informer(registry, k) for k in KINDS}
    workers: list[Any] = [
        Scheduler(registry, inf["Node"], inf["Pod"]),
        ReplicaSetController(registry, inf["ReplicaSet"], inf["Pod"]),
        DeploymentController(registry, inf["Deployment"], inf["ReplicaSet"]),
        JobController(registry, inf["Job"], inf["Pod"]),
        DaemonSetController(registry, inf["DaemonSet"], inf["Pod"], inf["Node"]),
        EndpointsController(registry, inf["Service"], inf["Pod"], inf["Endpoints"]),
        GarbageCollector(registry, inf),
        NodeLifecycleController(registry, inf["Node"], inf["Pod"], grace=node_grace, eviction=pod_eviction,
                                period=min(5.0, node_grace / 4)),
    ]
    done = _signalled()
    for server in servers:
        server.start()
    try:
        for informer in inf.values():
            informer.start()
        for informer in inf.values():
            informer.synced.wait(30)
        for w in workers:
            w.start()
        print(f"skiff control plane: serving on {', '.join(s.address for s in servers)} (store {store_url})",
              file=sys.stderr, flush=True)
        done.wait()
    finally:
        for w in workers:
            w.stop()
        stop_all(inf.values())
        for server in servers:
            server.stop()
        store.close()
    return 0


def node_agent(api: Api, name: str, cri_socket: str, *, log_root: str, labels: dict[str, str],
               root: str = "/var/lib/skiff/agent", address: str = "127.0.0.1", pod_cidr: str = "",
               agent_listen: str | None = None, heartbeat: float = HEARTBEAT) -> int:
    """This machine as node `name` of the cluster `api` serves, its pods run by the CRI service
    on `cri_socket`, until SIGINT or SIGTERM. `address`: the node's InternalIP; `pod_cidr`:
    the addresses its CRI service gives pods; `agent_listen`: the unix socket of the agent's
    server (pods' logs and exec; default /run/skiff/agent/NAME.sock)."""
    from skiff.orchestrator.agent.node import NodeStatus
    from skiff.orchestrator.agent.pods import PodAgent
    from skiff.orchestrator.agent.server import AgentServer, default_socket
    from skiff.orchestrator.informer import Informer, stop_all

    server = AgentServer(cri_socket, agent_listen or default_socket(name))
    status = NodeStatus(api, name, labels=labels, address=address, pod_cidr=pod_cidr, endpoint=server.endpoint,
                        period=heartbeat)
    pods = Informer(api, BY_KIND["Pod"])
    agent = PodAgent(api, pods, name, cri_socket, log_root=log_root, root=root)
    done = _signalled()
    server.start()
    try:
        status.start()
    except BaseException:
        server.stop()
        raise
    try:
        pods.start()
        # Not before: on a partial cache, the agent would tear down the pods it does not see.
        if _synced([pods], done, "node agent"):
            agent.start()
            print(f"skiff node agent: node {name}, CRI {cri_socket}", file=sys.stderr, flush=True)
            done.wait()
    finally:
        agent.stop()
        stop_all([pods])
        status.stop()
        server.stop()
    return 0


def service_proxy(api: Api) -> int:
    """This node's service proxy (proxy/): the cluster's Services programmed into this network
    namespace's nftables, until SIGINT or SIGTERM. The rules stay when it stops, as
    kube-proxy's do, so that services keep working across a restart."""
    from skiff.orchestrator.informer import Informer, stop_all
    from skiff.orchestrator.proxy.service_proxy import ServiceProxy

    informers = [Informer(api, BY_KIND["Service"]), Informer(api, BY_KIND["Endpoints"])]
    proxy = ServiceProxy(*informers)
    done = _signalled()
    try:
        for informer in informers:
            informer.start()
        # Not before: a table written from a partial cache would drop services that work.
        if _synced(informers, done, "proxy"):
            proxy.start()
            print("skiff proxy: services go to nftables table ip skiff-proxy", file=sys.stderr, flush=True)
            done.wait()
    finally:
        proxy.stop()
        stop_all(informers)
    return 0


def tcp_options(tcp: str | None, cert: str | None, key: str | None,
                token_file: str | None) -> tuple[tuple[str, int] | None, tuple[str, str] | None, tuple[str, ...] | None]:
    """`--tcp HOST:PORT` with its certificate, key and token file, checked together."""
    if tcp is None:
        if cert or key or token_file:
            raise InvalidArgument("--tls-cert, --tls-key and --token-file go with --tcp")
        return None, None, None
    host, sep, port = tcp.rpartition(":")
    if not sep or not port.isdigit():
        raise InvalidArgument(f"--tcp {tcp!r}: want HOST:PORT")
    if not (cert and key and token_file):
        raise InvalidArgument("--tcp: needs --tls-cert, --tls-key and --token-file (nothing is served on TCP "
                              "without TLS and a token)")
    try:
        with open(token_file) as f:
            tokens = tuple(line.strip() for line in f if line.strip())
    except OSError as e:
        raise InvalidArgument(f"--token-file {token_file}: {e.strerror.lower() if e.strerror else e}") from None
    if not tokens:
        raise InvalidArgument(f"--token-file {token_file}: no token in it")
    return (host or "0.0.0.0", int(port)), (cert, key), tokens


def _synced(informers: list[Informer], done: threading.Event, who: str) -> bool:
    """Waits until every informer has its first list (saying so while the API server does not
    answer); False if stopped meanwhile."""
    said = False
    while not all(i.synced.wait(0 if said else 5) for i in informers):
        if not said:
            print(f"skiff {who}: waiting for the API server to list {', '.join(i.kind.resource for i in informers)}",
                  file=sys.stderr, flush=True)
            said = True
        if done.wait(1):
            return False
    return True


def _signalled() -> threading.Event:
    """Set by SIGINT or SIGTERM: a long-running command stops cleanly on either."""
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    return done


def open_store(url: str) -> Any:
    """`sqlite:PATH` (the default kind when no scheme is given) or `etcd:http://HOST:PORT`."""
    scheme, sep, rest = url.partition(":")
    if sep and scheme == "etcd":
        from skiff.orchestrator.store.etcd import EtcdStore

        return EtcdStore(rest)
    from skiff.orchestrator.store.sqlite import SqliteStore

    path = rest if sep and scheme == "sqlite" else url
    os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
    return SqliteStore(path)

