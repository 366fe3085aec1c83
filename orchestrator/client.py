"""A client of the API server (apiserver.py), for the CLI, the controllers and the node agents:
requests over the unix socket, or over HTTPS with a bearer token; a non-2xx reply raises the
error its Status names, with the server's message.

`RemoteRegistry` offers the Registry's methods over that client, so that controllers, the
scheduler and node agents run the same against the API server of another process or
machine as against the Registry in the API server's own process."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import urllib.parse
from collections.abc import Iterator
from typing import Any

from skiff.errors import (Aborted, AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, OutOfRange,
                          SkiffError, Unavailable)
from skiff.orchestrator.api.kinds import Kind
from skiff.orchestrator.api.registry import FieldSelector
from skiff.orchestrator.labels import EVERYTHING, Selector
from skiff.orchestrator.store import Event, EventType, Listing

_ERRORS: dict[str, type[SkiffError]] = {
    "Invalid": InvalidArgument, "BadRequest": InvalidArgument, "NotFound": NotFound, "AlreadyExists": AlreadyExists,
    "Conflict": Aborted, "Expired": OutOfRange, "Gone": OutOfRange, "ServiceUnavailable": Unavailable,
    "Unauthorized": FailedPrecondition,
}


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self._path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class ApiClient:
    """`address`: a unix socket path, or https://HOST:PORT (then `token`, and `ca` to verify the
    server's certificate with). `name` says in errors what is at `address` (a node's agent is
    asked through this client too)."""

    def __init__(self, address: str, *, token: str | None = None, ca: str | None = None, timeout: float = 30.0,
                 name: str = "API server") -> None:
        self.address = address
        self.name = name
        self.token = token
        self.timeout = timeout
        self._ca = ca

    def _connection(self, timeout: float | None) -> http.client.HTTPConnection:
        t = self.timeout if timeout is None else timeout
        if not self.address.startswith("https://"):
            return _UnixConnection(self.address, t)
        url = urllib.parse.urlsplit(self.address)
        context = ssl.create_default_context(cafile=self._ca)
        return http.client.HTTPSConnection(url.hostname or "", url.port or 443, timeout=t, context=context)

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def request(self, method: str, path: str, body: dict[str, Any] | None = None, *,
                timeout: float | None = None) -> dict[str, Any]:
        """`timeout`: seconds to wait for the reply, when not the client's own (an exec's can be long)."""
        conn = self._connection(timeout)
        try:
            conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=self._headers())
            reply = conn.getresponse()
            data = reply.read()
        except OSError as e:
            raise Unavailable(f"{self.name} at {self.address}: {e}") from None
        finally:
            conn.close()
        try:
            obj: dict[str, Any] = json.loads(data or b"{}")
        except ValueError:
            raise Unavailable(f"{self.name} at {self.address}: {method} {path}: HTTP {reply.status}, not JSON") from None
        if reply.status >= 300:
            raise _error(obj, reply.status)
        return obj

    def watch(self, path: str, *, timeout: float) -> Iterator[dict[str, Any]]:
        """The events of a watch (`path` with ?watch=true&...), until the server ends it; an
        ERROR event raises its Status."""
        conn = self._connection(timeout + 30)
        try:
            conn.request("GET", path, headers=self._headers())
            reply = conn.getresponse()
            if reply.status >= 300:
                raise _error(json.loads(reply.read() or b"{}"), reply.status)
            while line := reply.readline():
                if not line.strip():
                    continue
                event: dict[str, Any] = json.loads(line)
                if event.get("type") == "ERROR":
                    raise _error(event.get("object") or {}, 0)
                yield event
        finally:
            conn.close()

    def stream(self, path: str, *, timeout: float) -> Streamed:
        """A GET whose body is read as it comes (a followed log); a non-2xx reply raises its
        Status. `timeout`: seconds to wait for each piece."""
        conn = self._connection(timeout)
        try:
            conn.request("GET", path, headers={**self._headers(), "Accept": "text/plain, application/json"})
            reply = conn.getresponse()
            if reply.status >= 300:
                try:
                    status = json.loads(reply.read() or b"{}")
                except ValueError:
                    raise Unavailable(f"{self.name} at {self.address}: GET {path}: HTTP {reply.status}, "
                                      "not JSON") from None
                raise _error(status, reply.status)
        except OSError as e:
            conn.close()
            raise Unavailable(f"{self.name} at {self.address}: {e}") from None
        except BaseException:
            conn.close()
            raise
        return Streamed(conn, reply)


class Streamed:
    """A reply body read piece by piece, as the server sends it. abort(), from another thread,
    ends a read that waits (the reader then sees the end)."""

    def __init__(self, conn: http.client.HTTPConnection, reply: http.client.HTTPResponse) -> None:
        self._conn = conn
        self._reply = reply

    def __iter__(self) -> Iterator[bytes]:
        try:
            while data := self._reply.read1(64 * 1024):
                yield data
        except (OSError, http.client.HTTPException):
            return  # cut off (aborted, or the server went away): what came is all there is

    def abort(self) -> None:
        if self._conn.sock is not None:
            try:
                self._conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Streamed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _error(status: dict[str, Any], code: int) -> SkiffError:
    cls = _ERRORS.get(str(status.get("reason")), SkiffError)
    return cls(str(status.get("message") or f"HTTP {code}"))


def path(kind: Kind, namespace: str | None, name: str | None = None) -> str:
    """The REST path of a kind's collection (in `namespace`, or all of them) or of one object."""
    base = f"/api/{kind.api_version}" if "/" not in kind.api_version else f"/apis/{kind.api_version}"
    where = f"/namespaces/{urllib.parse.quote(namespace)}" if kind.namespaced and namespace else ""
    return f"{base}{where}/{kind.resource}" + (f"/{urllib.parse.quote(name)}" if name else "")


class RemoteRegistry:
    def __init__(self, client: ApiClient) -> None:
        self.client = client

    def create(self, kind: Kind, obj: dict[str, Any], *, namespace: str | None = None) -> dict[str, Any]:
        ns = namespace or (obj.get("metadata") or {}).get("namespace") or "default"
        return self.client.request("POST", path(kind, ns), obj)

    def update(self, kind: Kind, obj: dict[str, Any], *, namespace: str | None = None) -> dict[str, Any]:
        metadata = obj.get("metadata") or {}
        ns = namespace or metadata.get("namespace") or "default"
        return self.client.request("PUT", path(kind, ns, str(metadata.get("name"))), obj)

    def delete(self, kind: Kind, namespace: str, name: str, *, expected: str | None = None,
               grace: int | None = None, uid: str | None = None) -> dict[str, Any]:
        preconditions = {**({"resourceVersion": expected} if expected else {}), **({"uid": uid} if uid else {})}
        options = {"kind": "DeleteOptions", "apiVersion": "v1",
                   **({"preconditions": preconditions} if preconditions else {}),
                   **({"gracePeriodSeconds": grace} if grace is not None else {})}
        return self.client.request("DELETE", path(kind, namespace, name), options)

    def get(self, kind: Kind, namespace: str, name: str) -> dict[str, Any]:
        return self.client.request("GET", path(kind, namespace, name))

    def list(self, kind: Kind, namespace: str | None = None, *, labels: Selector = EVERYTHING,
             fields: FieldSelector = FieldSelector()) -> Listing:
        reply = self.client.request("GET", path(kind, namespace) + _query(labels, fields))
        return Listing(items=list(reply.get("items") or []), revision=int(reply["metadata"]["resourceVersion"]))

    def watch(self, kind: Kind, namespace: str | None, since: int, *, labels: Selector = EVERYTHING,
              fields: FieldSelector = FieldSelector(), timeout: float) -> Iterator[Event]:
        query = _query(labels, fields, watch="true", resourceVersion=str(since), timeoutSeconds=str(max(1, round(timeout))))
        for event in self.client.watch(path(kind, namespace) + query, timeout=timeout):
            obj = event["object"]
            yield Event(type=EventType(event["type"]), key=path(kind, obj["metadata"].get("namespace"),
                                                                 obj["metadata"]["name"]),
                        object=obj, revision=int(obj["metadata"]["resourceVersion"]))


def _query(labels: Selector, fields: FieldSelector, **more: str) -> str:
    params = dict(more)
    if not labels.empty:
        params["labelSelector"] = str(labels)
    if fields.terms:
        params["fieldSelector"] = ",".join(f"{p}{'=' if eq else '!='}{v}" for p, eq, v in fields.terms)
    return "?" + urllib.parse.urlencode(params) if params else ""
