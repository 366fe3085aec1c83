"""A pod's log and exec subresources, as the API server serves them: it finds the pod's node, then
asks that node's agent (agent/server.py) at the endpoint the Node publishes (agent/node.py,
AGENT_ENDPOINT), as kube-apiserver asks the kubelet at the node's address and
status.daemonEndpoints.kubeletEndpoint.Port (kubernetes `pkg/registry/core/pod/strategy.go`,
LogLocation and ExecLocation).

    GET  /api/v1/namespaces/{ns}/pods/{name}/log?container=&follow=&tailLines=&previous=
         the log's text, chunked (a followed log ends when the container has exited and its
         file is drained, or when the client hangs up)
    POST /api/v1/namespaces/{ns}/pods/{name}/exec   {"container", "command": [...], "timeout": S}
         -> {"stdout", "stderr", "exitCode"}

That exec is skiff's own, not Kubernetes': one JSON request and one reply (CRI ExecSync). An
exec, attach or portforward request that upgrades its connection (kubectl's) is Kubernetes':
`stream_url` gets the node's CRI streaming URL for it, and the API server carries the
connection there (upgrade_proxy.py)."""

from __future__ import annotations

import re
import select
import socket
import threading
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from skiff.errors import InvalidArgument, NotFound, Unavailable
from skiff.orchestrator.agent.node import AGENT_ENDPOINT
from skiff.orchestrator.api.kinds import BY_KIND
from skiff.orchestrator.api.registry import Api
from skiff.orchestrator.client import ApiClient, Streamed

PODS, NODES = BY_KIND["Pod"], BY_KIND["Node"]
CALL = 30.0          # seconds for an agent's answer
IDLE = 4 * 3600.0    # seconds a followed log or an exec may be quiet: kubelet's streamingConnectionIdleTimeout
_PATH = re.compile(r"/api/v1/namespaces/([^/]+)/pods/([^/]+)/(log|exec|attach|portforward)/?")


def match(path: str) -> tuple[str, str, str] | None:
    """(namespace, pod, "log", "exec", "attach" or "portforward") when `path` names one of the
    subresources."""
    m = _PATH.fullmatch(path)
    if m is None:
        return None
    namespace, name, what = (urllib.parse.unquote(g) for g in m.groups())
    return namespace, name, what


@dataclass(frozen=True, slots=True)
class Target:
    """A pod's container and the agent of its node."""
    agent: ApiClient
    namespace: str
    pod: str
    container: str

    def path(self, what: str) -> str:
        return "/" + "/".join(urllib.parse.quote(p, safe="") for p in (what, self.namespace, self.pod, self.container))


def target(api: Api, namespace: str, name: str, container: str | None) -> Target:
    """None for `container`: the pod's, not one of its containers' (port-forward)."""
    pod = api.get(PODS, namespace, name)  # NotFound: 404, as for the pod itself
    names = [c["name"] for c in pod["spec"].get("containers") or []]
    if container is None:
        container = ""
    elif not container:
        if len(names) != 1:  # kubectl's words
            raise InvalidArgument(f"a container name must be specified for pod {name}, choose one of: "
                                  f"[{' '.join(names)}]")
        container = names[0]
    elif container not in names:
        raise InvalidArgument(f"container {container} is not valid for pod {name}")
    node = pod["spec"].get("nodeName")
    if not node:
        raise InvalidArgument(f"pod {name} is not scheduled to a node yet (spec.nodeName is empty)")
    try:
        annotations = api.get(NODES, "", node)["metadata"].get("annotations") or {}
    except NotFound:
        raise Unavailable(f"pod {name}: its node {node} is not registered") from None
    endpoint = annotations.get(AGENT_ENDPOINT, "")
    if not endpoint.startswith("unix:"):
        raise Unavailable(f"node {node}: its agent publishes no endpoint skiff can reach (annotation "
                          f"{AGENT_ENDPOINT}: {endpoint!r}, want unix:PATH)")
    agent = ApiClient(endpoint.removeprefix("unix:"), timeout=CALL, name=f"the agent of node {node}")
    return Target(agent=agent, namespace=namespace, pod=name, container=container)


def logs(t: Target, query: dict[str, str]) -> Streamed:
    params: dict[str, str] = {k: query[k] for k in ("follow", "tailLines", "previous") if k in query}
    return t.agent.stream(t.path("containerLogs") + ("?" + urllib.parse.urlencode(params) if params else ""),
                          timeout=IDLE)


def attach(t: Target, body: dict[str, Any]) -> dict[str, Any]:
    """{"stdin", "stdout", "stderr", "tty"} -> {"url"} of the node's CRI streaming server."""
    return t.agent.request("POST", t.path("attach"), {k: bool(body[k]) for k in ("stdin", "stdout", "stderr", "tty")
                                                      if k in body})


def port_forward(t: Target, body: dict[str, Any]) -> dict[str, Any]:
    """{"ports": [...]} -> {"url"} of the node's CRI streaming server."""
    return t.agent.request("POST", "/" + "/".join(urllib.parse.quote(p, safe="") for p in
                                                 ("portForward", t.namespace, t.pod)), body)


def exec_in(t: Target, body: dict[str, Any]) -> dict[str, Any]:
    timeout = body.get("timeout") or 0
    wait = (timeout if isinstance(timeout, int) and timeout > 0 else IDLE) + CALL
    return t.agent.request("POST", t.path("exec"), {k: v for k, v in body.items() if k != "container"}, timeout=wait)


def stream_url(api: Api, namespace: str, name: str, what: str, query: dict[str, list[str]]) -> str:
    """The node's CRI streaming server's URL for an upgraded exec, attach or portforward, from
    kubectl's query (kubelet `pkg/kubelet/server/server.go`, getExec, getAttach, getPortForward):
    command (repeated), container, stdin, stdout, stderr, tty; portforward's ports, which SPDY
    clients do not send (each stream names its port)."""
    def flag(key: str) -> bool:   # Go's strconv.ParseBool, as the query's decoder uses it
        return (query.get(key) or [""])[-1].lower() in ("1", "t", "true")

    if what == "portforward":
        words = [p for value in query.get("ports", []) for p in value.split(",")]
        if not all(p.strip().isdigit() for p in words):
            raise InvalidArgument(f"ports: {words}: want port numbers")
        return str(port_forward(target(api, namespace, name, None), {"ports": [int(p) for p in words]})["url"])
    t = target(api, namespace, name, (query.get("container") or [""])[-1])
    streams = {k: flag(k) for k in ("stdin", "stdout", "stderr", "tty")}
    if what == "attach":
        return str(attach(t, streams)["url"])
    return str(exec_in(t, {"command": query.get("command") or [], "stream": True, **streams})["url"])


def relay(stream: Streamed, client: socket.socket, write: Callable[[bytes], None]) -> None:
    """`stream` to `write` until it ends or `client` hangs up; then the agent's stream is cut
    too, so that the agent stops following a log nobody reads."""
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            if hung_up(client, 0.5):
                stream.abort()
                return

    watcher = threading.Thread(target=watch, name="skiff-log-hangup", daemon=True)
    watcher.start()
    try:
        for data in stream:
            write(data)
    finally:
        done.set()
        watcher.join()


def hung_up(sock: socket.socket, timeout: float = 0.0) -> bool:
    """The peer of `sock` closed its end, seen within `timeout` seconds. POLLRDHUP tells it even
    when the peer sent bytes before closing (a TLS close_notify), where a peek would see data."""
    poll = select.poll()
    poll.register(sock.fileno(), select.POLLRDHUP)
    return any(events & (select.POLLRDHUP | select.POLLHUP | select.POLLERR)
               for _, events in poll.poll(int(timeout * 1000)))
