"""The streaming server: a TCP listener (127.0.0.1 and a port of the kernel's choosing unless
configured, as containerd's), a thread per connection. A connection is an HTTP request to
`/exec/`, `/attach/` or `/portforward/<token>` that upgrades to a WebSocket with one of the channel
subprotocols (wsproto does the handshake and the framing) or to SPDY/3.1 (h11 answers the
upgrade, spdy.py frames the streams); the session then runs on that socket. A port-forward may
also tunnel SPDY in the WebSocket (`SPDY/3.1+portforward.k8s.io`, what kubectl 1.31 and later
ask the API server for first). A request that is
not one (an unknown token, no upgrade, no protocol of ours) gets an HTTP error that says what
was wrong."""

from __future__ import annotations

import contextlib
import logging
import socket
import socketserver
import threading
import urllib.parse

import h11
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, RejectConnection, RejectData, Request
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from skiff.cri.streaming import channels, spdy
from skiff.cri.streaming.exec import ExecSession
from skiff.cri.streaming.portforward import PortForwardSession
from skiff.cri.streaming.spdy_peer import SpdyPeer
from skiff.cri.streaming.spdy_portforward import SpdyPortForward
from skiff.cri.monitor_client import Monitors
from skiff.cri.streaming.attach import AttachSession
from skiff.cri.streaming.tokens import AttachRequest, ExecRequest, PortForwardRequest, Tokens
from skiff.cri.streaming.websocket import WebSocketPeer
from skiff.errors import SkiffError
from skiff.runtime.forkserver import ForkServer

log = logging.getLogger("skiff.cri")
HANDSHAKE_TIMEOUT = 10.0
MAX_HEAD = 64 * 1024


class StreamServer:
    def __init__(self, forkserver: ForkServer, monitors: Monitors, address: str = "127.0.0.1:0") -> None:
        host, _, port = address.rpartition(":")
        self.forkserver = forkserver
        self.monitors = monitors
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

    def attach_url(self, request: AttachRequest) -> str:
        return f"{self.base_url}/attach/{self.tokens.issue(request)}"

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
        sock.settimeout(HANDSHAKE_TIMEOUT)
        try:
            head = _read_head(sock)
        except OSError as e:
            log.debug("streaming: a connection that sent no request: %s", e)
            return
        if head is None:
            return
        if _upgrade(head) == b"spdy/3.1":
            self._spdy(sock, head)
            return
        ws = WSConnection(ConnectionType.SERVER)
        try:
            request = _websocket_request(ws, head)
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
        # port-forward speaks v4's framing, or SPDY tunnelled in the WebSocket (kubectl 1.31+)
        offered = channels.PROTOCOLS if kind in ("exec", "attach") else (channels.V4, channels.PORT_FORWARD_TUNNEL)
        chosen = next((p for p in request.subprotocols if p in offered), None)
        try:
            if kind not in ("exec", "attach", "portforward"):
                raise _Refusal(404, f"{url.path}: not served here (/exec/, /attach/, /portforward/<token>)")
            if chosen is None:
                raise _Refusal(400, f"subprotocols {request.subprotocols}: none of {', '.join(offered)}")
            session = self.server.owner.tokens.take(token)
            ports = tuple(int(p) for p in urllib.parse.parse_qs(url.query).get("port", []) if p.isdigit())
            if _KINDS[type(session)] != kind:
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
        peer = WebSocketPeer(sock, ws)
        if isinstance(session, PortForwardRequest) and chosen == channels.PORT_FORWARD_TUNNEL:
            # SPDY's bytes in binary messages (client-go's tunneling_connection.go): the same
            # session as over an upgraded connection, without its HTTP upgrade. kube-apiserver
            # turns the tunnel back into SPDY for kubelet; skiff's API server carries the bytes
            # as they are (upgrade_proxy.py), so the tunnel arrives here
            conn = spdy.Connection.over_chunks(peer.messages(), peer.send_bytes)
            SpdyPortForward(session, sock, conn).run()
        elif isinstance(session, PortForwardRequest):
            # the ports the client asks for (kubectl's ?port=), else those of the call
            PortForwardSession(session, ports or session.ports, peer).run()
        elif isinstance(session, AttachRequest):
            AttachSession(self.server.owner.monitors, session, peer).run()
        else:
            ExecSession(self.server.owner.forkserver, session, peer, stdin_closes=chosen == channels.V5).run()

    def _spdy(self, sock: socket.socket, head: bytes) -> None:
        """An exec, an attach or a port-forward over SPDY/3.1: the upgrade answered by h11,
        then the streams (spdy_peer.py, spdy_portforward.py)."""
        http = h11.Connection(h11.SERVER)
        http.receive_data(head)
        request = http.next_event()
        assert isinstance(request, h11.Request)
        url = urllib.parse.urlsplit(request.target.decode(errors="replace"))
        kind, _, token = url.path.lstrip("/").partition("/")
        offered = [v.strip() for name, value in request.headers if name == b"x-stream-protocol-version"
                   for v in value.decode(errors="replace").split(",")]
        protocol = {"exec": channels.V4, "attach": channels.V4, "portforward": channels.PORT_FORWARD}.get(kind, "")
        try:
            if not protocol:
                raise _Refusal(404, f"{url.path}: not served here (/exec/, /attach/, /portforward/<token>)")
            if protocol not in offered:
                raise _Refusal(400, f"X-Stream-Protocol-Version {offered}: want {protocol}")
            session = self.server.owner.tokens.take(token)
            if _KINDS[type(session)] != kind:
                raise _Refusal(404, f"{url.path}: the token is not for {kind}")
        except (_Refusal, SkiffError) as e:
            body = str(e).encode()
            with contextlib.suppress(OSError, h11.LocalProtocolError):
                sock.sendall(http.send(h11.Response(status_code=e.code if isinstance(e, _Refusal) else 404, headers=[
                    (b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())])))
                sock.sendall(http.send(h11.Data(data=body)) + http.send(h11.EndOfMessage()))
            return
        sock.sendall(http.send(h11.InformationalResponse(status_code=101, headers=[
            (b"connection", b"Upgrade"), (b"upgrade", b"SPDY/3.1"),
            (b"x-stream-protocol-version", protocol.encode())])))
        sock.settimeout(None)
        conn = spdy.Connection.over(sock, http.trailing_data[0])
        if isinstance(session, PortForwardRequest):
            SpdyPortForward(session, sock, conn).run()
            return
        wanted = {channels.ERROR} | {c for c, asked in ((channels.STDIN, session.stdin),
                                                         (channels.STDOUT, session.stdout),
                                                         (channels.STDERR, session.stderr and not session.tty),
                                                         (channels.RESIZE, session.tty)) if asked}
        try:
            peer = SpdyPeer(sock, conn, wanted)
        except (OSError, EOFError, spdy.ProtocolError) as e:
            log.debug("streaming: a SPDY session that did not open its streams: %s", e)
            return
        if isinstance(session, AttachRequest):
            AttachSession(self.server.owner.monitors, session, peer).run()
        else:
            ExecSession(self.server.owner.forkserver, session, peer, stdin_closes=True).run()


_KINDS = {ExecRequest: "exec", AttachRequest: "attach", PortForwardRequest: "portforward"}


class _Refusal(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def _read_head(sock: socket.socket) -> bytes | None:
    """The HTTP request's head (and whatever came after it in the same reads); None if the
    client went first."""
    head = b""
    while b"\r\n\r\n" not in head:
        data = sock.recv(65536)
        if not data:
            return None
        head += data
        if len(head) > MAX_HEAD:
            raise OSError(f"a request head of more than {MAX_HEAD} bytes")
    return head


def _upgrade(head: bytes) -> bytes:
    """The Upgrade header's value, lowercased (b"" when none)."""
    for line in head.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"upgrade":
            return value.strip().lower()
    return b""


def _websocket_request(ws: WSConnection, head: bytes) -> Request | None:
    """The WebSocket upgrade request in the request's head (wsproto raises if it is none)."""
    ws.receive_data(head)
    return next((e for e in ws.events() if isinstance(e, Request)), None)
