"""A client of the API server (apiserver.py), for the CLI, the controllers and the node agents:
requests over the unix socket, or over HTTPS with a bearer token; a non-2xx reply raises the
error its Status names, with the server's message."""

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
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


class ApiClient:
    """`address`: a unix socket path, or https://HOST:PORT (then `token`, and `ca` to verify the
    server's certificate with)."""

    def __init__(self, address: str, *, token: str | None = None, ca: str | None = None, timeout: float = 30.0) -> None:
        self.address = address
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

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        conn = self._connection(None)
        try:
            conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=self._headers())
            reply = conn.getresponse()
            data = reply.read()
        except OSError as e:
            raise Unavailable(f"API server at {self.address}: {e}") from None
        finally:
            conn.close()
        try:
            obj: dict[str, Any] = json.loads(data or b"{}")
        except ValueError:
            raise Unavailable(f"API server at {self.address}: {method} {path}: HTTP {reply.status}, not JSON") from None
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


def _error(status: dict[str, Any], code: int) -> SkiffError:
    cls = _ERRORS.get(str(status.get("reason")), SkiffError)
    return cls(str(status.get("message") or f"HTTP {code}"))
