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
from collections.abc import Mapping, Sequence

import h11
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, RejectConnection, Request
from wsproto.utilities import RemoteProtocolError

from skiff.cri.monitor_client import Monitors
from skiff.cri.streaming import channels, spdy
from skiff.cri.streaming.attach import AttachSession
from skiff.cri.streaming.exec import ExecSession
from skiff.cri.streaming.portforward import PortForwardSession
from skiff.cri.streaming.spdy_peer import SpdyPeer
from skiff.cri.streaming.spdy_portforward import SpdyPortForward
from skiff.cri.streaming.tokens import AttachRequest, ExecRequest, PortForwardRequest, Session, Tokens
from skiff.cri.streaming.websocket import WebSocketPeer
from skiff.errors import NotFound
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
        try:
            if _upgrade(head) == b"spdy/3.1":
                self._spdy(sock, head)
            else:
                self._websocket(sock, head)
        except _Refusal as refusal:
            with contextlib.suppress(OSError):
                sock.sendall(refusal.response())

    def _websocket(self, sock: socket.socket, head: bytes) -> None:
        """An exec, an attach or a port-forward over WebSocket: the upgrade answered by
        wsproto, then the channels (websocket.py)."""
        ws = WSConnection(ConnectionType.SERVER)
        try:
            ws.receive_data(head)   # a complete head: its Request, or this raises
        except RemoteProtocolError as e:   # HTTP, but no WebSocket upgrade
            hint = e.event_hint if isinstance(e.event_hint, RejectConnection) else RejectConnection()
            # wsproto's "Bad HTTP message" has h11's reason as its context
            raise _Refusal(hint.status_code, f"{e}: {e.__context__}" if e.__context__ else str(e),
                           hint.headers) from None
        request = next(ws.events())
        assert isinstance(request, Request)
        session, chosen = self._admit(request.target, "subprotocols", request.subprotocols, _WEBSOCKET_PROTOCOLS)
        sock.sendall(ws.send(AcceptConnection(subprotocol=chosen)))
        sock.settimeout(None)
        peer = WebSocketPeer(sock, ws)
        if not isinstance(session, PortForwardRequest):
            self._run_session(session, peer)
        elif chosen == channels.PORT_FORWARD_TUNNEL:
            # SPDY's bytes in binary messages (client-go's tunneling_connection.go): the same
            # session as over an upgraded connection, without its HTTP upgrade. kube-apiserver
            # turns the tunnel back into SPDY for kubelet; skiff's API server carries the bytes
            # as they are (upgrade_proxy.py), so the tunnel arrives here
            conn = spdy.Connection.over_chunks(peer.messages(), peer.send_bytes)
            SpdyPortForward(session, sock, conn).run()
        else:
            # the ports the client asks for (kubectl's ?port=), else those of the call
            PortForwardSession(session, _ports(request.target) or session.ports, peer).run()

    def _spdy(self, sock: socket.socket, head: bytes) -> None:
        """An exec, an attach or a port-forward over SPDY/3.1: the upgrade answered by h11,
        then the streams (spdy_peer.py, spdy_portforward.py)."""
        http = h11.Connection(h11.SERVER)
        http.receive_data(head)
        try:
            request = http.next_event()   # a complete head: its Request, or this raises
        except h11.RemoteProtocolError as e:   # not HTTP/1.1 as h11 reads it (no Host header, say)
            raise _Refusal(e.error_status_hint, f"the upgrade to SPDY/3.1: {e}") from None
        assert isinstance(request, h11.Request)
        offered = [v.strip() for name, value in request.headers if name == b"x-stream-protocol-version"
                   for v in value.decode(errors="replace").split(",")]
        session, protocol = self._admit(request.target.decode(errors="replace"), "X-Stream-Protocol-Version",
                                        offered, _SPDY_PROTOCOLS)
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
        self._run_session(session, peer)

    def _admit(self, target: str, header: str, offered: Sequence[str],
               protocols: Mapping[str, Sequence[str]]) -> tuple[Session, str]:
        """The session the target's token is for, and the first protocol the client offers
        (in `header`) that the session's kind speaks here (`protocols`: kind -> those);
        anything else raises _Refusal."""
        path = urllib.parse.urlsplit(target).path
        kind, _, token = path.lstrip("/").partition("/")
        ours = protocols.get(kind)
        if ours is None:
            raise _Refusal(404, f"{path}: not served here (/exec/, /attach/, /portforward/<token>)")
        chosen = next((p for p in offered if p in ours), None)
        if chosen is None:
            raise _Refusal(400, f"{header} {list(offered)}: none of {', '.join(ours)}")
        try:
            session = self.server.owner.tokens.take(token)
        except NotFound as e:
            raise _Refusal(404, str(e)) from None
        if _KINDS[type(session)] != kind:
            raise _Refusal(404, f"{path}: the token is not for {kind}")
        return session, chosen

    def _run_session(self, session: ExecRequest | AttachRequest, peer: channels.Peer) -> None:
        """An exec or an attach session on an upgraded connection's channels, to its end."""
        if isinstance(session, AttachRequest):
            AttachSession(self.server.owner.monitors, session, peer).run()
        else:
            ExecSession(self.server.owner.forkserver, session, peer).run()


_KINDS = {ExecRequest: "exec", AttachRequest: "attach", PortForwardRequest: "portforward"}
# What each kind speaks, by transport. Over WebSocket port-forward speaks v4's framing, or SPDY
# tunnelled in the WebSocket (kubectl 1.31+).
_WEBSOCKET_PROTOCOLS = {"exec": channels.PROTOCOLS, "attach": channels.PROTOCOLS,
                        "portforward": (channels.V4, channels.PORT_FORWARD_TUNNEL)}
_SPDY_PROTOCOLS = {"exec": (channels.V4,), "attach": (channels.V4,), "portforward": (channels.PORT_FORWARD,)}


class _Refusal(Exception):
    """A request that is not upgraded: its HTTP status, and why (the response's body)."""

    def __init__(self, code: int, message: str, headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
        super().__init__(message)
        self.code = code
        self.headers = list(headers)

    def response(self) -> bytes:
        """The HTTP response that says it (the connection is closed after it). A fresh h11
        connection makes it: a server may answer even a request h11 could not parse."""
        body = str(self).encode()
        http = h11.Connection(h11.SERVER)
        head = h11.Response(status_code=self.code, headers=[
            *self.headers, (b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())])
        return b"".join(http.send(event) or b"" for event in (head, h11.Data(data=body), h11.EndOfMessage()))


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


def _ports(target: str) -> tuple[int, ...]:
    """The ports a WebSocket port-forward asks for in its query (kubectl's ?port=80&port=443)."""
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(target).query)
    return tuple(int(p) for p in query.get("port", []) if p.isdigit())
