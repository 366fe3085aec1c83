"""What the API server and the node agent's server share: an HTTP server on a unix socket that
only root can reach, a thread to serve it from, and JSON in and out of a request."""

from __future__ import annotations

import json
import os
import socket
import socketserver
import sys
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any

from skiff.cri.server import claim_socket
from skiff.errors import InvalidArgument

MAX_BODY = 3 * 1024 * 1024  # Kubernetes' own request limit


class JsonHandler(BaseHTTPRequestHandler):
    def read_json(self) -> dict[str, Any]:
        """The request's body, a JSON object (an empty body is none)."""
        given = self.headers.get("Content-Length") or "0"
        if not given.isdigit():
            raise InvalidArgument(f"Content-Length: {given!r}: not a number of bytes")
        length = int(given)
        if length > MAX_BODY:
            raise InvalidArgument(f"request body: {length} bytes, more than the {MAX_BODY} accepted")
        try:
            body = json.loads(self.rfile.read(length) or b"null")
        except ValueError as e:
            raise InvalidArgument(f"request body: not valid JSON: {e}") from None
        if not isinstance(body, dict):
            raise InvalidArgument("request body: must be a JSON object")
        return body

    def reply_json(self, code: HTTPStatus, body: dict[str, Any]) -> None:
        data = json.dumps(body, separators=(",", ":")).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """Mode 0600: the socket's file mode is the only access check. A socket file a stopped
    server left is replaced; a live server's is refused."""

    daemon_threads = True

    def __init__(self, path: str, handler: Any, *, what: str) -> None:
        claim_socket(path, what)
        old = os.umask(0o177)
        try:
            super().__init__(path, handler)
        finally:
            os.umask(old)

    def get_request(self) -> tuple[socket.socket, Any]:
        request, _ = self.socket.accept()
        return request, ("unix", 0)  # BaseHTTPRequestHandler wants an address it can print

    def handle_error(self, request: Any, client_address: Any) -> None:
        quiet_when_the_client_went(super().handle_error, request, client_address)


def quiet_when_the_client_went(report: Any, request: Any, client_address: Any) -> None:
    """socketserver prints every handler's exception; a client that hung up in the middle of a
    reply (a watch that was stopped) is no error of the server's."""
    if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
        report(request, client_address)


class ServerThread:
    """`server` served from a thread of its own until `stop`, which also removes the socket
    file `unlink` (the unix socket's path)."""

    def __init__(self, server: socketserver.TCPServer, name: str, *, unlink: str | None = None) -> None:
        self.server = server
        self.name = name
        self.unlink = unlink
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self.server.serve_forever, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:   # shutdown() waits for a serve_forever that never ran otherwise
            self.server.shutdown()
            self._thread.join()
        self.server.server_close()
        if self.unlink is not None and os.path.exists(self.unlink):
            os.unlink(self.unlink)
