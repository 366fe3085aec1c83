"""An upgraded connection (exec, attach, port-forward) carried from a client to a node's CRI
streaming server, as kube-apiserver and kubelet carry it with their upgrade-aware proxy
(kubernetes `staging/src/k8s.io/apimachinery/pkg/util/proxy/upgradeaware.go`): the client's
request goes on to the streaming URL, with that URL's path and the client's own headers but
its credentials; the streaming server's answer (101 and then the SPDY or WebSocket session,
or an error) comes back as it is; then bytes are copied both ways until either side closes,
and both are closed (upgradeaware.go waits for one half too).

One thread copies both directions over non-blocking sockets: the client's socket is TLS, and
an OpenSSL connection is not to be read in one thread while another writes it."""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import urllib.parse
from collections.abc import Iterable

from skiff.errors import Unavailable

CONNECT_TIMEOUT = 10.0
CHUNK = 65536
BACKLOG = 1 << 20         # bytes held for a side that does not read before its peer is not read either
FLUSH_TIMEOUT = 5.0       # seconds to write what is held when the other side has closed
_DROPPED = {"host", "authorization"}   # the streaming URL's token is its only credential (tokens.py)


def is_upgrade(headers: Iterable[tuple[str, str]]) -> bool:
    """`Connection: Upgrade` with an Upgrade header: SPDY/3.1 or websocket."""
    found = {k.lower(): v.lower() for k, v in headers}
    return "upgrade" in [t.strip() for t in found.get("connection", "").split(",")] and bool(found.get("upgrade"))


def request_head(method: str, url: str, headers: Iterable[tuple[str, str]]) -> bytes:
    """The client's request as it goes to `url`: its path and query, its host."""
    parts = urllib.parse.urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    lines = [f"{method} {target} HTTP/1.1", f"Host: {parts.netloc}"]
    lines += [f"{k}: {v}" for k, v in headers if k.lower() not in _DROPPED]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def connect(url: str) -> socket.socket:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise Unavailable(f"streaming URL {url!r}: want http://HOST:PORT/... (the node's CRI streaming server)")
    try:
        return socket.create_connection((parts.hostname, parts.port or 80), timeout=CONNECT_TIMEOUT)
    except OSError as e:
        raise Unavailable(f"the node's streaming server at {parts.netloc}: {e.strerror or e}") from None


def pump(client: socket.socket, backend: socket.socket, to_backend: bytes, idle: float) -> None:
    """Copies between the two until one closes or errs, or neither says anything for `idle`
    seconds; `to_backend`: what goes first (the request's head). The caller closes both."""
    held = {client: bytearray(), backend: bytearray(to_backend)}   # what waits to be written to each
    peer = {client: backend, backend: client}
    by_fd = {client.fileno(): client, backend.fileno(): backend}
    for s in (client, backend):
        s.setblocking(False)
    poll = select.poll()
    while True:
        for s in (client, backend):
            poll.register(s, (select.POLLIN if len(held[peer[s]]) < BACKLOG else 0)
                          | (select.POLLOUT if held[s] else 0))
        # TLS may hold decrypted bytes of a record already read: the kernel shows nothing to read
        buffered = isinstance(client, ssl.SSLSocket) and client.pending() and len(held[backend]) < BACKLOG
        ready = [(client.fileno(), select.POLLIN)] if buffered else poll.poll(int(idle * 1000))
        if not ready:
            return
        for fd, events in ready:
            s = by_fd[fd]
            if events & select.POLLOUT and held[s]:
                try:
                    del held[s][:s.send(held[s])]
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                    pass
                except OSError:
                    return
            if events & (select.POLLIN | select.POLLHUP | select.POLLERR):
                try:
                    data = s.recv(CHUNK)
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                    continue
                except OSError:
                    data = b""
                if not data:
                    _flush(peer[s], held[peer[s]])
                    return
                held[peer[s]] += data


def _flush(s: socket.socket, data: bytearray) -> None:
    """What the side that closed said last, to the other side."""
    with contextlib.suppress(OSError):
        s.settimeout(FLUSH_TIMEOUT)
        s.sendall(data)
