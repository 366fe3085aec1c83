"""The client side of the streaming server's sessions.

`run_exec` (`skiff exec -it`): this process's stdin to the command, its output to this
process's stdout and stderr, the terminal's size (now and on each SIGWINCH) when there is a
terminal, and the command's exit code at the end. On a terminal, the local one is put in raw
mode meanwhile, so that keys (^C, ^D) reach the command rather than this process.

`run_port_forward` (`skiff port-forward`): a local port, each of its connections carried to a
port in the pod."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import termios
import threading
import tty as ttymode
import urllib.parse
from collections.abc import Callable, Sequence
from typing import Any, BinaryIO

from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, RejectConnection, RejectData, Request

from skiff.cri.streaming import channels
from skiff.cri.streaming.websocket import WebSocketPeer
from skiff.errors import FailedPrecondition, Unavailable


def run_exec(url: str, *, stdin: BinaryIO | None, tty: bool, attach: bool = False) -> int:
    """The command's exit code; skiff's own failure (no connection, a refusal) raises. An
    attach session has no exit code of its own: 0 when it ends."""
    peer, accepted = _open(url, channels.PROTOCOLS)
    with peer.sock:
        v5 = accepted == channels.V5
        saved = termios.tcgetattr(0) if tty and stdin is not None and os.isatty(0) else None
        if saved is not None:
            ttymode.setraw(0)
            _resize(peer.frame)
        try:
            if stdin is not None:
                threading.Thread(target=_forward_stdin, args=(stdin, peer.frame, v5), daemon=True).start()
            if saved is not None:
                # each resize from a thread of its own: the handler runs in this thread, which
                # may hold the peer's send lock (answering a ping) when the signal comes
                signal.signal(signal.SIGWINCH, lambda *_: threading.Thread(
                    target=_resize, args=(peer.frame,), daemon=True).start())
            status: dict[str, Any] = {}
            for message in peer.messages():
                if not message:
                    continue
                channel, data = message[0], message[1:]
                if channel in (channels.STDOUT, channels.STDERR):
                    out = sys.stdout.buffer if channel == channels.STDOUT else sys.stderr.buffer
                    out.write(data)
                    out.flush()
                elif channel == channels.ERROR:
                    status = json.loads(data or b"{}")
        finally:
            if saved is not None:
                termios.tcsetattr(0, termios.TCSADRAIN, saved)
        peer.close()   # the server closed first: this answers its close
    return 0 if attach and not status else _exit_code(status)


def _open(url: str, protocols: Sequence[str]) -> tuple[WebSocketPeer, str]:
    """A WebSocket to a streaming URL, and the subprotocol the server chose of `protocols`.
    No connection raises Unavailable; a refusal FailedPrecondition, with the server's reason."""
    parts = urllib.parse.urlsplit(url)
    try:
        sock = socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80), timeout=30)
    except OSError as e:
        raise Unavailable(f"streaming server {parts.netloc}: {(e.strerror or str(e)).lower()}") from None
    with contextlib.ExitStack() as undo:
        undo.callback(sock.close)
        ws = WSConnection(ConnectionType.CLIENT)
        sock.sendall(ws.send(Request(host=parts.netloc, target=parts.path, subprotocols=list(protocols))))
        refused: tuple[int, bytes] | None = None
        while data := sock.recv(65536):
            ws.receive_data(data)
            for event in ws.events():
                if isinstance(event, AcceptConnection):
                    # what came after the 101 in the same read stays in ws: messages() starts there
                    sock.settimeout(None)
                    undo.pop_all()
                    return WebSocketPeer(sock, ws), event.subprotocol or ""
                if isinstance(event, RejectConnection):
                    refused = (event.status_code, b"")
                elif isinstance(event, RejectData) and refused is not None:
                    refused = (refused[0], refused[1] + event.data)
        why = refused[1].decode(errors="replace") if refused else "the connection closed"
        raise FailedPrecondition(f"exec: the streaming server refused ({refused[0] if refused else '-'}): {why}")


def _exit_code(status: dict[str, Any]) -> int:
    if status.get("status") == "Success":
        return 0
    causes = (status.get("details") or {}).get("causes") or []
    code = next((c.get("message") for c in causes if c.get("reason") == "ExitCode"), None)
    if status.get("reason") == "NonZeroExitCode" and code is not None:
        return int(code)
    raise FailedPrecondition(f"exec: {status.get('message') or 'the stream ended without an exit status'}")


Send = Callable[[int, bytes], None]


def _forward_stdin(stdin: BinaryIO, send: Send, v5: bool) -> None:
    """stdin to channel 0 until it ends; then v5's close of channel 0."""
    fd = stdin.fileno()
    while data := os.read(fd, 65536):
        send(channels.STDIN, data)
    if v5:
        send(channels.CLOSE, bytes([channels.STDIN]))


def _resize(send: Send) -> None:
    with contextlib.suppress(OSError):
        columns, rows = os.get_terminal_size(0)
        send(channels.RESIZE, json.dumps({"Width": columns, "Height": rows}).encode())


def run_port_forward(new_url: Callable[[], str], local: int, remote: int, *, address: str = "127.0.0.1",
                     ready: Callable[[int], None] | None = None, stop: threading.Event | None = None) -> None:
    """Connections to address:local, each carried to `remote` in the pod over a session of its
    own (a URL is good once: `new_url` asks for one per connection), until `stop` is set or
    this process is interrupted. `ready` is told the local port (0 asks the kernel for one)."""
    with socket.create_server((address, local)) as listener:
        listener.settimeout(0.5)
        if ready is not None:
            ready(listener.getsockname()[1])
        while stop is None or not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            conn.settimeout(None)
            threading.Thread(target=_forward_connection, args=(conn, new_url, remote), daemon=True).start()


def _forward_connection(conn: socket.socket, new_url: Callable[[], str], remote: int) -> None:
    """One local connection over one port-forward session: channel 0 its data, channel 1 the
    errors, each first carrying the port (port-forward's opening, skipped here)."""
    with conn:
        try:
            peer, _ = _open(new_url(), [channels.V4])
        except Exception as e:   # this connection fails; the others go on
            print(f"skiff port-forward: {e}", file=sys.stderr)
            return
        with peer.sock:

            def upstream() -> None:
                with contextlib.suppress(OSError):
                    while data := conn.recv(65536):
                        peer.frame(0, data)
                peer.send(CloseConnection(code=1000))   # the local end is done: so is the session
            threading.Thread(target=upstream, daemon=True).start()
            opened = {0: False, 1: False}
            for message in peer.messages():
                if not message:
                    continue
                channel, data = message[0], message[1:]
                if channel in opened and not opened[channel]:
                    opened[channel], data = True, data[2:]   # the port number opens each channel
                if channel == 0 and data:
                    with contextlib.suppress(OSError):
                        conn.sendall(data)
                elif channel == 1 and data:
                    print(f"skiff port-forward: {data.decode(errors='replace')}", file=sys.stderr)
                    break
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            peer.close()
