"""The node agent's own HTTP server, as kubelet's on port 10250 (kubernetes
`pkg/kubelet/server/server.go`): the API server forwards a pod's log and exec subresources
here (orchestrator/subresources.py).

    GET  /containerLogs/{ns}/{pod}/{container}?follow=&tailLines=&previous=   the log's text, chunked
    POST /exec/{ns}/{pod}/{container}   {"command": [...], "timeout": S}  ->  {"stdout", "stderr", "exitCode"}
                                        {"command", "stream": true, "stdin", "tty", "stdout", "stderr"}  ->  {"url"}
    POST /attach/{ns}/{pod}/{container}  {"stdin", "tty", "stdout", "stderr"}  ->  {"url"}
    POST /portForward/{ns}/{pod}        {"ports": [...]}  ->  {"url"}

kubelet's /exec upgrades the connection to a stream (SPDY or WebSocket); skiff's is CRI
ExecSync's one request and one reply, so a command cannot be interactive. The output is text
in JSON: bytes that are not UTF-8 travel as surrogate escapes, which a Python client turns back
into the same bytes. Errors are Status objects, as the API server's.

It listens on a unix socket (mode 0600, as the API server's), so only an API server on this
machine reaches it: TCP would need what kubelet's port has, TLS and the API server's
credentials, which skiff does not have yet."""

from __future__ import annotations

import io
import os
import sys
import threading
import urllib.parse
from http import HTTPStatus
from typing import Any

import grpc
from cri_api.v1 import api_pb2 as pb

from skiff.cri.client import Cri, exit_watch, print_logs
from skiff.cri.grpc_errors import CODES
from skiff.errors import InvalidArgument, NotFound, SkiffError, Unavailable
from skiff.orchestrator.agent.pods import CONTAINER_NAME, POD_NAME, POD_NAMESPACE
from skiff.orchestrator.apiserver import status_for
from skiff.orchestrator.http_server import JsonHandler, ServerThread, UnixServer
from skiff.orchestrator.subresources import hung_up

_ERRORS = {code: cls for cls, code in CODES}


def default_socket(node: str) -> str:
    return f"/run/skiff/agent/{node}.sock"


class _Server(UnixServer):
    cri_socket: str
    _cri: Cri | None = None
    _lock = threading.Lock()

    def cri(self) -> Cri:
        """The CRI client, made at the first request: the agent may start before its CRI service."""
        with self._lock:
            if self._cri is None:
                self._cri = Cri(self.cri_socket)
            return self._cri


class AgentServer(ServerThread):
    """Serves the containers of the CRI service on `cri_socket` on the unix socket `path`."""

    def __init__(self, cri_socket: str, path: str) -> None:
        if "/" not in path:
            raise InvalidArgument(f"--agent-listen {path!r}: want a unix socket path (TCP, which needs TLS and "
                                  "the API server's credentials as kubelet's port has, is not supported yet)")
        server = _Server(path, _Handler, what="node agent")
        server.cri_socket = cri_socket
        super().__init__(server, "skiff-agent-server", unlink=path)
        self.path = path

    @property
    def endpoint(self) -> str:
        """The URL the Node publishes (node.py, AGENT_ENDPOINT)."""
        return f"unix:{self.path}"

    def stop(self) -> None:
        super().stop()
        assert isinstance(self.server, _Server)
        if self.server._cri is not None:
            self.server._cri.channel.close()


class _Chunks(io.RawIOBase):
    """The HTTP chunks of a reply, as a file that print_logs can write to."""

    def __init__(self, wfile: io.BufferedIOBase) -> None:
        self._wfile = wfile

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        data = bytes(data)
        if data:  # an empty chunk would end the reply
            self._wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self._wfile.flush()
        return len(data)


class _Handler(JsonHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
        pass

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def _serve(self, method: str) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query).items()}
        parts = [urllib.parse.unquote(p) for p in url.path.strip("/").split("/")]
        try:
            try:
                if method == "GET" and len(parts) == 4 and parts[0] == "containerLogs":
                    self._logs(parts[1], parts[2], parts[3], query)
                    return
                if method == "POST" and len(parts) == 4 and parts[0] == "exec":
                    self.reply_json(HTTPStatus.OK, self._exec(parts[1], parts[2], parts[3]))
                    return
                if method == "POST" and len(parts) == 4 and parts[0] == "attach":
                    self.reply_json(HTTPStatus.OK, self._attach(parts[1], parts[2], parts[3]))
                    return
                if method == "POST" and len(parts) == 3 and parts[0] == "portForward":
                    self.reply_json(HTTPStatus.OK, self._port_forward(parts[1], parts[2]))
                    return
            except grpc.RpcError as e:
                raise _ERRORS.get(e.code(), Unavailable)(f"CRI: {e.details()}") from None
            raise NotFound(f"{method} {url.path}: not served here (GET /containerLogs/NS/POD/CONTAINER, "
                           "POST /exec/NS/POD/CONTAINER, POST /portForward/NS/POD)")
        except SkiffError as e:
            self.reply_json(*status_for(e))

    def _container(self, namespace: str, pod: str, container: str, *, previous: bool) -> pb.Container:
        """The container's latest attempt, or the one before (pods.py keeps that one for its logs)."""
        attempts = sorted(self.server.cri().containers(labels={POD_NAMESPACE: namespace, POD_NAME: pod,
                                                             CONTAINER_NAME: container}),
                          key=lambda c: c.metadata.attempt)
        if previous:
            if len(attempts) < 2:
                raise InvalidArgument(f'previous terminated container "{container}" in pod "{pod}" not found')
            return attempts[-2]
        if not attempts:
            raise InvalidArgument(f'container "{container}" in pod "{pod}" is waiting to start: ContainerCreating')
        return attempts[-1]

    def _logs(self, namespace: str, pod: str, container: str, query: dict[str, str]) -> None:
        previous = _flag(query, "previous")
        try:
            tail = int(query["tailLines"]) if query.get("tailLines") else None
        except ValueError:
            raise InvalidArgument(f"tailLines {query['tailLines']!r}: want a number") from None
        if tail is not None and tail < 0:
            tail = None  # kubectl's --tail=-1: all of it
        cri = self.server.cri()
        found = self._container(namespace, pod, container, previous=previous)
        path = cri.log_path(found.id)
        until = None
        if _flag(query, "follow"):
            exited = exit_watch(cri, found.id)
            # The API server hanging up (its client went away) ends a follow too.
            until = lambda: hung_up(self.connection) or exited()  # noqa: E731
        elif not os.path.exists(path):
            raise NotFound(f'container "{container}" in pod "{pod}": its log file {path} does not exist')
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        body = io.BufferedWriter(_Chunks(self.wfile), buffer_size=64 * 1024)
        try:
            print_logs(path, out=body, err=body, tail=tail, until=until,
                       warn=lambda message: print(f"skiff node agent: {path}: {message}", file=sys.stderr))
            body.flush()
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except SkiffError as e:  # the reply has begun: it can only end, early
            print(f"skiff node agent: logs of {namespace}/{pod}/{container}: {e}", file=sys.stderr)
            self.close_connection = True
        except grpc.RpcError as e:
            print(f"skiff node agent: logs of {namespace}/{pod}/{container}: CRI: {e.details()}", file=sys.stderr)
            self.close_connection = True
        finally:
            try:
                body.close()
            except OSError:
                pass  # the connection is gone: what was buffered has nowhere to go

    def _attach(self, namespace: str, pod: str, container: str) -> dict[str, Any]:
        """{"stdin", "stdout", "stderr", "tty"} -> {"url"}: the CRI streaming server's, for the
        container's own streams (stdout and stderr unless said otherwise)."""
        body = self.read_json()
        found = self._container(namespace, pod, container, previous=False)
        return {"url": self.server.cri().runtime.Attach(pb.AttachRequest(
            container_id=found.id, stdin=bool(body.get("stdin")), tty=bool(body.get("tty")),
            stdout=bool(body.get("stdout", True)), stderr=bool(body.get("stderr", True)))).url}

    def _port_forward(self, namespace: str, pod: str) -> dict[str, Any]:
        """{"ports": [...]} -> {"url"}: the CRI streaming server's, for the pod's ready sandbox.
        No ports is what kubectl's SPDY port-forward asks for: each of its streams names its port."""
        ports = self.read_json().get("ports")
        if not isinstance(ports, list) or not all(isinstance(p, int) and 0 < p < 65536 for p in ports):
            raise InvalidArgument(f"ports: {ports!r}: want a list of ports (1-65535)")
        ready = self.server.cri().pods(state="ready", labels={POD_NAMESPACE: namespace, POD_NAME: pod})
        if not ready:
            raise InvalidArgument(f'pod "{pod}" has no running sandbox on this node')
        return {"url": self.server.cri().runtime.PortForward(pb.PortForwardRequest(
            pod_sandbox_id=ready[0].id, port=ports)).url}

    def _exec(self, namespace: str, pod: str, container: str) -> dict[str, Any]:
        body = self.read_json()
        command, timeout = body.get("command"), body.get("timeout", 0)
        if not isinstance(command, list) or not command or not all(isinstance(a, str) for a in command):
            raise InvalidArgument(f"command: {command!r}: want a non-empty list of strings")
        if not isinstance(timeout, int) or timeout < 0:
            raise InvalidArgument(f"timeout: {timeout!r}: want a whole number of seconds, 0 for none")
        found = self._container(namespace, pod, container, previous=False)
        if found.state != pb.CONTAINER_RUNNING:
            state = pb.ContainerState.Name(found.state).removeprefix("CONTAINER_").lower()
            raise InvalidArgument(f'container "{container}" in pod "{pod}" is not running (it is {state})')
        if body.get("stream"):   # interactive: the CRI streaming server's URL, for the client to connect to
            stdin, tty = bool(body.get("stdin")), bool(body.get("tty"))
            url = self.server.cri().runtime.Exec(pb.ExecRequest(
                container_id=found.id, cmd=command, stdin=stdin, tty=tty, stdout=bool(body.get("stdout", True)),
                stderr=bool(body.get("stderr", not tty)) and not tty)).url
            return {"url": url}
        reply = self.server.cri().exec_sync(found.id, command, timeout)
        return {"stdout": reply.stdout.decode(errors="surrogateescape"),
                "stderr": reply.stderr.decode(errors="surrogateescape"), "exitCode": reply.exit_code}




def _flag(query: dict[str, str], name: str) -> bool:
    return query.get(name, "").lower() in ("true", "1")
