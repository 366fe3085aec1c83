"""What the API server and the node agent's server share: an HTTP server on a unix socket that
only root can reach, and a thread to serve it from."""

from __future__ import annotations

import os
import socket
import socketserver
import threading
from typing import Any


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
