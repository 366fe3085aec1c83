"""What the API server and the node agent's server share: an HTTP server on a unix socket that
only root can reach, a thread to serve it from, and JSON in and out of a request."""

from __future__ import annotations

import json
import os
import socket
import socketserver
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any

from skiff.errors import InvalidArgument

MAX_BODY = 3 * 1024 * 1024  # Kubernetes' own request limit


class JsonHandler(BaseHTTPRequestHandler):
    def read_json(self) -> dict[str, Any]:
        """The request's body, a JSON object (an empty body is none)."""
        length = int(self.headers.get("Content-Length") or 0)
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
    server left is replaced."""

    daemon_threads = True

    def __init__(self, path: str, handler: Any) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o755, exist_ok=True)
        if os.path.exists(path):
            os.unlink(path)
        old = os.umask(0o177)
        try:
            super().__init__(path, handler)
        finally:
            os.umask(old)

    def get_request(self) -> tuple[socket.socket, Any]:
        request, _ = self.socket.accept()
        return request, ("unix", 0)  # BaseHTTPRequestHandler wants an address it can print


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
        self.server.shutdown()
        self.server.server_close()
        if self._thread is not None:
            self._thread.join()
        if self.unlink is not None and os.path.exists(self.unlink):
            os.unlink(self.unlink)
