"""The streaming server: a TCP listener (127.0.0.1 and a port of the kernel's choosing unless
configured, as containerd's), a thread per connection. A connection is an HTTP request to
`/exec/<token>` asking for a WebSocket with one of the channel subprotocols; wsproto does the
handshake and the framing (and h11 the HTTP under it); the session then runs on that socket.
A request that is not one (an unknown token, no WebSocket, no protocol of ours) gets an HTTP
error that says what was wrong."""

from __future__ import annotations

import contextlib
import logging
import socket
import socketserver
import threading
import urllib.parse
from typing import Any

from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, RejectConnection, RejectData, Request
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from skiff.cri.streaming import channels
from skiff.cri.streaming.exec import ExecSession
from skiff.cri.streaming.portforward import PortForwardSession
from skiff.cri.streaming.tokens import ExecRequest, PortForwardRequest, Tokens
from skiff.cri.streaming.websocket import Peer
from skiff.errors import SkiffError
from skiff.runtime.forkserver import ForkServer

log = logging.getLogger("skiff.cri")
HANDSHAKE_TIMEOUT = 10.0


class StreamServer:
    def __init__(self, forkserver: ForkServer, address: str = "127.0.0.1:0") -> None:
        host, _, port = address.rpartition(":")
        self.forkserver = forkserver
        self.tokens = Tokens()
        self._server = _Server((host or "127.0.0.1", int(port or 0)), _Handler)
        self._server.owner = self
        self._thread = threading.Thread(target=self._server.serve_forever, name="skiff-streaming", daemon=True)
        self._thread.start()

    @property
    def base_url(self) -> str:
        host, port = self._server.socket.getsockname()[:2]
        return f"http://{host}:{port}"

    def exec_url(self, request: ExecRequest) -> str:
        return f"{self.base_url}/exec/{self.tokens.issue(request)}"

    def port_forward_url(self, request: PortForwardRequest) -> str:
        return f"{self.base_url}/portforward/{self.tokens.issue(request)}"

    def close(self) -> None:
        self._server.shutdown()
        self._thread.join()
        self._server.server_close()


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    owner: StreamServer


class _Handler(socketserver.BaseRequestHandler):
    server: _Server
    request: socket.socket

    def handle(self) -> None:
        sock = self.request
        ws = WSConnection(ConnectionType.SERVER)
        sock.settimeout(HANDSHAKE_TIMEOUT)
        try:
            request = _read_request(sock, ws)
        except RemoteProtocolError as e:   # HTTP, but no WebSocket upgrade: 400 and why
            with contextlib.suppress(OSError, LocalProtocolError):
                sock.sendall(ws.send(e.event_hint or RejectConnection(status_code=400)))
            return
        except OSError as e:
            log.debug("streaming: a connection that sent no request: %s", e)
            return
        if request is None:
            return
        url = urllib.parse.urlsplit(request.target)
        kind, _, token = url.path.lstrip("/").partition("/")
        # port-forward speaks v4's framing only: v5 adds nothing to it
        offered = channels.PROTOCOLS if kind == "exec" else (channels.V4,)
        chosen = next((p for p in request.subprotocols if p in offered), None)
        try:
            if kind not in ("exec", "portforward"):
                raise _Refusal(404, f"{url.path}: not served here (/exec/<token>, /portforward/<token>)")
            if chosen is None:
                raise _Refusal(400, f"subprotocols {request.subprotocols}: none of {', '.join(offered)}")
            session = self.server.owner.tokens.take(token)
            ports = tuple(int(p) for p in urllib.parse.parse_qs(url.query).get("port", []) if p.isdigit())
            if isinstance(session, PortForwardRequest) != (kind == "portforward"):
                raise _Refusal(404, f"{url.path}: the token is not for {kind}")
        except (_Refusal, SkiffError) as e:
            code = e.code if isinstance(e, _Refusal) else 404
            body = str(e).encode()
            with contextlib.suppress(OSError):
                sock.sendall(ws.send(RejectConnection(status_code=code, headers=[
                    (b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())], has_body=True)))
                sock.sendall(ws.send(RejectData(data=body)))
            return
        sock.sendall(ws.send(AcceptConnection(subprotocol=chosen)))
        sock.settimeout(None)
        peer = Peer(sock, ws)
        if isinstance(session, PortForwardRequest):
            # the ports the client asks for (kubectl's ?port=), else those of the call
            PortForwardSession(session, ports or session.ports, peer).run()
        else:
            ExecSession(self.server.owner.forkserver, session, peer, v5=chosen == channels.V5).run()


class _Refusal(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def _read_request(sock: socket.socket, ws: WSConnection) -> Any:
    """The WebSocket upgrade request, or None if the client went before sending one."""
    while True:
        data = sock.recv(65536)
        ws.receive_data(data or None)
        for event in ws.events():
            if isinstance(event, Request):
                return event
        if not data:
            return None
