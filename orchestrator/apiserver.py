"""The API server: Kubernetes' REST shape over HTTP/JSON, on a unix socket (the default; the
file's mode guards it) and, when asked, on TCP with TLS and bearer tokens, where a request
without a valid token gets 401 and nothing else.

    GET    /api/v1/namespaces/{ns}/pods                   list (?labelSelector=&fieldSelector=)
    GET    /api/v1/pods                                   list in every namespace
    GET    /api/v1/namespaces/{ns}/pods?watch=true&resourceVersion=N   watch: one JSON event a line
    POST   /api/v1/namespaces/{ns}/pods                   create
    GET    /api/v1/namespaces/{ns}/pods/{name}            get
    PUT    /api/v1/namespaces/{ns}/pods/{name}            replace (optimistic with resourceVersion)
    DELETE /api/v1/namespaces/{ns}/pods/{name}            delete
    /apis/apps/v1/..., /apis/batch/v1/...                 the same for the grouped kinds
    GET    /api/v1/namespaces/{ns}/pods/{name}/log        a pod's log, from its node's agent
    POST   /api/v1/namespaces/{ns}/pods/{name}/exec       a command in it (subresources.py)
    POST   /api/v1/namespaces/{ns}/pods/{name}/portforward  where its ports are reached
    GET|POST .../exec, .../attach, .../portforward with Connection: Upgrade (kubectl's SPDY/3.1
           or WebSocket): carried to the node's CRI streaming server (upgrade_proxy.py)
    GET    /api, /apis, /api/v1, /apis/{group}/{version}, /version   discovery (api/discovery.py)

A GET of a list, an object or a watch whose Accept header asks for `as=Table;g=meta.k8s.io`
(kubectl get) is answered with a Table of kubectl's columns (api/tables.py); a watch's events
then carry a one-row Table each, the columns in the first only.

Errors are Kubernetes Status objects with the HTTP code kubectl expects: 400 Invalid, 404
NotFound, 405 MethodNotAllowed (an upgrade but by GET or POST), 409 AlreadyExists or Conflict,
410 Gone (a watch from a compacted revision), 401.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import os
import socket
import socketserver
import ssl
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from skiff.errors import (Aborted, AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, OutOfRange,
                          SkiffError, Unavailable)
from skiff.orchestrator import subresources, upgrade_proxy
from skiff.orchestrator.api import discovery, tables
from skiff.orchestrator.api.kinds import KINDS, Kind
from skiff.orchestrator.api.registry import FieldSelector, Registry
from skiff.orchestrator.http_server import JsonHandler, ServerThread, UnixServer, quiet_when_the_client_went
from skiff.orchestrator.labels import parse as parse_selector

WATCH_TIMEOUT = 300.0  # seconds without an event before a watch ends (kubectl watches again)

_STATUS: list[tuple[type[SkiffError], HTTPStatus, str]] = [
    (InvalidArgument, HTTPStatus.BAD_REQUEST, "Invalid"),
    (NotFound, HTTPStatus.NOT_FOUND, "NotFound"),
    (AlreadyExists, HTTPStatus.CONFLICT, "AlreadyExists"),
    (Aborted, HTTPStatus.CONFLICT, "Conflict"),
    (OutOfRange, HTTPStatus.GONE, "Expired"),
    (FailedPrecondition, HTTPStatus.UNPROCESSABLE_ENTITY, "Invalid"),
    (Unavailable, HTTPStatus.SERVICE_UNAVAILABLE, "ServiceUnavailable"),
]
_BY_PATH = {(k.api_version, k.resource): k for k in KINDS}


def status(code: HTTPStatus, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "code": int(code)}


def status_for(error: SkiffError) -> tuple[HTTPStatus, dict[str, Any]]:
    for cls, code, reason in _STATUS:
        if isinstance(error, cls):
            return code, status(code, reason, str(error))
    return HTTPStatus.INTERNAL_SERVER_ERROR, status(HTTPStatus.INTERNAL_SERVER_ERROR, "InternalError", str(error))


@dataclass(frozen=True, slots=True)
class Route:
    kind: Kind
    namespace: str | None   # None: every namespace (or a cluster-scoped kind)
    name: str | None


def route(path: str) -> Route:
    """`/api/v1/namespaces/ns/pods/web` -> (Pod, "ns", "web"); NotFound for what is not served."""
    parts = [urllib.parse.unquote(p) for p in path.strip("/").split("/")]
    if parts[:1] == ["api"] and len(parts) >= 3:
        version, rest = parts[1], parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 4:
        version, rest = f"{parts[1]}/{parts[2]}", parts[3:]
    else:
        raise NotFound(f"the server could not find the requested resource ({path})")
    namespace = None
    if len(rest) >= 3 and rest[0] == "namespaces" and (version, rest[2]) in _BY_PATH:
        namespace, rest = rest[1], rest[2:]
    kind = _BY_PATH.get((version, rest[0]))
    if kind is None or len(rest) > 2:
        raise NotFound(f"the server could not find the requested resource ({path})")
    if namespace is not None and not kind.namespaced:
        raise NotFound(f"{kind.resource} are not namespaced ({path})")
    return Route(kind=kind, namespace=namespace if kind.namespaced else None, name=rest[1] if len(rest) == 2 else None)


class _Handler(JsonHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
        pass  # requests are not logged: a watch per controller would fill the log

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def _serve(self, method: str) -> None:
        if not self._authorized():
            self.reply_json(HTTPStatus.UNAUTHORIZED, status(HTTPStatus.UNAUTHORIZED, "Unauthorized", "Unauthorized"))
            return
        url = urllib.parse.urlsplit(self.path)
        query = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query).items()}
        try:
            sub = subresources.match(url.path)
            if sub is not None and sub[2] != "log" and upgrade_proxy.is_upgrade(self.headers.items()):
                if method not in ("GET", "POST"):   # kube-apiserver's connect verbs
                    self.close_connection = True   # (its body, if any, is not read)
                    self.reply_json(HTTPStatus.METHOD_NOT_ALLOWED, status(
                        HTTPStatus.METHOD_NOT_ALLOWED, "MethodNotAllowed",
                        f"{method} {url.path}: an upgraded {sub[2]} takes GET or POST"))
                    return
                self._upgrade(method, *sub, urllib.parse.parse_qs(url.query))
                return
            if sub is not None:
                self._subresource(method, *sub, query)
                return
            found = discovery.document(url.path) if method == "GET" else None
            if found is not None:
                self.reply_json(HTTPStatus.OK, found)
                return
            r = route(url.path)
            if method == "GET" and r.name is None and query.get("watch") in ("true", "1"):
                self._watch(r, query)
                return
            code, body = self._call(method, r, query)
        except SkiffError as e:
            code, body = status_for(e)
        self.reply_json(code, body)

    def _authorized(self) -> bool:
        tokens = self.server.tokens
        if tokens is None:
            return True
        header = self.headers.get("Authorization", "")
        given = header[len("Bearer "):].strip() if header.startswith("Bearer ") else ""
        return bool(given) and any(hmac.compare_digest(given.encode(), t.encode()) for t in tokens)


    def _call(self, method: str, r: Route, query: dict[str, str]) -> tuple[HTTPStatus, dict[str, Any]]:
        registry = self.server.registry
        as_table = tables.accepted(self.headers.get("Accept", "")) if method == "GET" else None
        include = tables.include_object(query.get("includeObject")) if as_table is not None else ""
        if method == "GET" and r.name is None:
            listing = registry.list(r.kind, r.namespace, labels=parse_selector(query.get("labelSelector", ""),
                                                                                 "labelSelector"),
                                    fields=FieldSelector.parse(query.get("fieldSelector", "")))
            if as_table is not None:
                return HTTPStatus.OK, tables.table(r.kind, listing.items, version=as_table, include=include,
                                                   resource_version=str(listing.revision))
            return HTTPStatus.OK, {"kind": f"{r.kind.kind}List", "apiVersion": r.kind.api_version,
                                   "metadata": {"resourceVersion": str(listing.revision)}, "items": listing.items}
        if method == "GET":
            obj = registry.get(r.kind, r.namespace or "", str(r.name))
            if as_table is not None:
                return HTTPStatus.OK, tables.table(r.kind, [obj], version=as_table, include=include,
                                                   resource_version=str(obj["metadata"].get("resourceVersion", "")))
            return HTTPStatus.OK, obj
        if method == "POST" and r.name is None:
            return HTTPStatus.CREATED, registry.create(r.kind, self.read_json(), namespace=r.namespace)
        if method == "PUT" and r.name is not None:
            body = self.read_json()
            if (body.get("metadata") or {}).get("name") != r.name:
                raise InvalidArgument(f"metadata.name: {(body.get('metadata') or {}).get('name')!r} does not match "
                                      f"the name in the URL, {r.name!r}")
            return HTTPStatus.OK, registry.update(r.kind, body, namespace=r.namespace)
        if method == "DELETE" and r.name is not None:
            options = self.read_json() if int(self.headers.get("Content-Length") or 0) else {}
            preconditions = options.get("preconditions") or {}
            expected, uid = preconditions.get("resourceVersion"), preconditions.get("uid")
            grace = query.get("gracePeriodSeconds", options.get("gracePeriodSeconds"))
            try:
                seconds = None if grace is None or int(grace) == -1 else int(grace)   # -1: the pod's own
            except ValueError:
                raise InvalidArgument(f"gracePeriodSeconds: {grace!r}: not a number of seconds") from None
            return HTTPStatus.OK, registry.delete(r.kind, r.namespace or "", r.name, grace=seconds,
                                                  expected=str(expected) if expected else None,
                                                  uid=str(uid) if uid else None)
        raise InvalidArgument(f"{method} {self.path}: not supported (a name is needed for PUT and DELETE, "
                              "and none for POST)")

    def _subresource(self, method: str, namespace: str, name: str, what: str, query: dict[str, str]) -> None:
        """A pod's log, exec or port-forward, answered by the agent of the pod's node; an error
        before the log's first byte is a Status, after it the log just ends."""
        if (method, what) not in (("GET", "log"), ("POST", "exec"), ("POST", "attach"), ("POST", "portforward")):
            raise InvalidArgument(f"{method} {self.path}: not supported (GET a pod's log, POST its exec, attach or "
                                  "portforward)")
        if what in ("exec", "attach", "portforward"):
            body = self.read_json()
            if what == "portforward":
                t = subresources.target(self.server.registry, namespace, name, None)
                self.reply_json(HTTPStatus.OK, subresources.port_forward(t, body))
                return
            t = subresources.target(self.server.registry, namespace, name, str(body.get("container") or ""))
            self.reply_json(HTTPStatus.OK, (subresources.attach if what == "attach" else subresources.exec_in)(t, body))
            return
        t = subresources.target(self.server.registry, namespace, name, query.get("container", ""))
        with subresources.logs(t, query) as stream:
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            try:
                subresources.relay(stream, self.connection, self._chunk)
                self._chunk(b"")
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

    def _upgrade(self, method: str, namespace: str, name: str, what: str, query: dict[str, list[str]]) -> None:
        """kubectl's exec, attach or port-forward (SPDY/3.1 or WebSocket), carried to the CRI
        streaming server of the pod's node; an error before that is a Status, as for any request."""
        url = subresources.stream_url(self.server.registry, namespace, name, what, query)
        backend = upgrade_proxy.connect(url)
        try:
            client_ip = self.client_address[0] if self.connection.family != socket.AF_UNIX else None
            head = upgrade_proxy.request_head(method, url, self.headers.items(), client_ip)
            with self.server.session():
                self.close_connection = True   # the connection is the stream's now, to its end
                upgrade_proxy.pump(self.connection, backend, head + self._read_ahead(), subresources.IDLE,
                                   self.server.wake)
        finally:
            backend.close()

    def _read_ahead(self) -> bytes:
        """What the client sent past the request's head that rfile's buffer holds (a client may
        write before it sees the 101), without waiting for more."""
        self.connection.setblocking(False)
        try:
            return self.rfile.read1(65536) or b""
        except (ssl.SSLWantReadError, BlockingIOError):
            return b""

    def _watch(self, r: Route, query: dict[str, str]) -> None:
        registry = self.server.registry
        labels = parse_selector(query.get("labelSelector", ""), "labelSelector")
        fields = FieldSelector.parse(query.get("fieldSelector", ""))
        try:
            since = int(query.get("resourceVersion") or registry.list(r.kind, r.namespace).revision)
            timeout = float(query.get("timeoutSeconds") or WATCH_TIMEOUT)
        except ValueError:
            raise InvalidArgument("resourceVersion and timeoutSeconds: want numbers") from None
        as_table = tables.accepted(self.headers.get("Accept", ""))
        include = tables.include_object(query.get("includeObject")) if as_table is not None else ""
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for line in _watch_lines(registry, r, since, labels, fields, timeout, as_table, include):
                self._chunk(line)
            self._chunk(b"")
        except (BrokenPipeError, ConnectionResetError, ssl.SSLEOFError):   # (TLS: a client gone without close_notify)
            self.close_connection = True

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()



def _watch_lines(registry: Registry, r: Route, since: int, labels: Any, fields: FieldSelector,
                 timeout: float, as_table: str | None = None, include: str = "") -> Iterator[bytes]:
    """`as_table`: each event's object a Table (of that meta.k8s.io version) of one row, the
    columns in the first event's only, as kube-apiserver sends them (handlers/watch.go)."""
    headers = True
    try:
        for event in registry.watch(r.kind, r.namespace, since, labels=labels, fields=fields, timeout=timeout):
            if r.name is None or event.object["metadata"]["name"] == r.name:
                obj = event.object
                if as_table is not None:
                    obj = tables.table(r.kind, [obj], version=as_table, include=include, headers=headers,
                                       resource_version=str(obj["metadata"].get("resourceVersion", "")))
                    headers = False
                yield json.dumps({"type": event.type.value, "object": obj}, separators=(",", ":")).encode() + b"\n"
    except SkiffError as e:  # the stream has begun: the error is its last event, as Kubernetes sends it
        yield json.dumps({"type": "ERROR", "object": status_for(e)[1]}).encode() + b"\n"


class _Server(socketserver.ThreadingMixIn, socketserver.BaseServer):
    daemon_threads = True
    registry: Registry
    tokens: tuple[str, ...] | None
    # The proxied sessions (upgrade_proxy.pump) are the handler threads that may outlive a
    # request by hours: ApiServer.stop writes `wake`, an eventfd in each pump's poll set (it
    # stays readable, so one write wakes them all), and waits for their threads.
    wake: int
    sessions: set[threading.Thread]
    sessions_lock: threading.Lock
    stopping: bool

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        with self.sessions_lock:
            if self.stopping:
                raise Unavailable("the API server is stopping")
            self.sessions.add(threading.current_thread())
        try:
            yield
        finally:
            with self.sessions_lock:
                self.sessions.discard(threading.current_thread())


class _UnixServer(_Server, UnixServer):
    pass


class _TcpServer(_Server, socketserver.TCPServer):
    allow_reuse_address = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        quiet_when_the_client_went(super().handle_error, request, client_address)


class ApiServer(ServerThread):
    """Serves `registry` on a unix socket (mode 0600) or on TCP with TLS and tokens."""

    def __init__(self, registry: Registry, *, unix_socket: str | None = None, tcp: tuple[str, int] | None = None,
                 tls: tuple[str, str] | None = None, tokens: tuple[str, ...] | None = None) -> None:
        if (unix_socket is None) == (tcp is None):
            raise InvalidArgument("api server: listen on a unix socket or on TCP, one of the two")
        server: _UnixServer | _TcpServer
        if unix_socket is not None:
            server = _UnixServer(unix_socket, _Handler, what="API server")
            server.tokens = tokens
        else:
            assert tcp is not None
            if tls is None or not tokens:
                raise InvalidArgument("api server on TCP: needs a TLS certificate and key, and at least one token")
            server = _TcpServer(tcp, _Handler)
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            server.socket = context.wrap_socket(server.socket, server_side=True)
            server.tokens = tokens
        server.registry = registry
        server.sessions, server.sessions_lock, server.stopping = set(), threading.Lock(), False
        server.wake = os.eventfd(0, os.EFD_CLOEXEC)
        super().__init__(server, "skiff-apiserver", unlink=unix_socket)
        self.server: _UnixServer | _TcpServer = server

    def stop(self) -> None:
        """Stops serving, ends the proxied sessions and waits for their threads; once."""
        with self.server.sessions_lock:
            stopped, self.server.stopping = self.server.stopping, True
            sessions = list(self.server.sessions)
        if stopped:
            return
        os.eventfd_write(self.server.wake, 1)
        super().stop()
        for thread in sessions:
            thread.join()
        os.close(self.server.wake)

    @property
    def address(self) -> str:
        if self.unlink is not None:
            return self.unlink
        host, port = self.server.socket.getsockname()[:2]
        return f"https://{host}:{port}"
