"""One open WebSocket, as the sessions (and skiff's own client, client.py) use it: channel
frames out (from any thread, one at a time), the other end's complete binary messages in
(pings answered on the way), and the close."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

from wsproto import WSConnection
from wsproto.events import BytesMessage, CloseConnection, Event, Message, Ping
from wsproto.utilities import LocalProtocolError, RemoteProtocolError


class WebSocketPeer:
    def __init__(self, sock: socket.socket, ws: WSConnection) -> None:
        self.sock = sock
        self.ws = ws
        self._lock = threading.Lock()

    def send(self, event: Event) -> None:
        """A client that is gone gets nothing; the session notices it on its reading side."""
        with self._lock, contextlib.suppress(OSError, LocalProtocolError):
            self.sock.sendall(self.ws.send(event))

    def frame(self, channel: int, data: bytes) -> None:
        self.send(Message(data=bytes([channel]) + data))   # binary: the channel protocol's frames

    def send_bytes(self, data: bytes) -> None:
        """A tunnelled protocol's bytes, in one binary message; raises OSError if the client
        is gone or has closed the WebSocket."""
        with self._lock:
            try:
                self.sock.sendall(self.ws.send(Message(data=data)))
            except LocalProtocolError as e:   # the client's close came in: nothing more may be sent
                raise ConnectionResetError(f"websocket closed: {e}") from None

    def messages(self) -> Iterator[bytes]:
        """The other end's binary messages, until it closes the connection or goes. Those
        already received come first: a server's may arrive in the same read as its 101, which
        the client's WSConnection keeps after the handshake."""
        pending = bytearray()
        with contextlib.suppress(OSError, RemoteProtocolError):
            while True:
                for event in self.ws.events():
                    if isinstance(event, BytesMessage):
                        pending += event.data
                        if event.message_finished:
                            yield bytes(pending)
                            pending.clear()
                    elif isinstance(event, Ping):
                        self.send(event.response())
                    elif isinstance(event, CloseConnection):
                        return
                data = self.sock.recv(65536)
                if not data:
                    return
                self.ws.receive_data(data)

    def close(self) -> None:
        self.send(CloseConnection(code=1000))
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
