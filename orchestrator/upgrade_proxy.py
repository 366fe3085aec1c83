"""An upgraded connection (exec, attach, port-forward) carried from a client to a node's CRI
streaming server, as kube-apiserver and kubelet carry it with their upgrade-aware proxy
(kubernetes `staging/src/k8s.io/apimachinery/pkg/util/proxy/upgradeaware.go`): the client's
request goes on to the streaming URL, with that URL's path and the client's end-to-end
headers but not its credentials; the streaming server's answer (101 and then the SPDY or
WebSocket session, or an error) comes back as it is; then bytes are copied both ways.

One thread copies both directions over non-blocking sockets: the client's socket is TLS, and
an OpenSSL connection is not to be read in one thread while another writes it. Unlike
upgradeaware.go, which closes both sides when either copy ends, a side that closes or fails
a write ends nothing at once, so that what its peer said last still arrives:

    event on side S                  then
    read: bytes                      held for S's peer (unless the peer closed or failed)
    read: EOF or error               S closed: write what is held for its peer, then end
    write: error (the peer's RST)    S failed: drop what is held for S, keep reading S to EOF
    the idle timeout, a wake-up      end at once

`kubectl exec -i pod -- head -1 < big` needs this: the streaming server closes with stdin
unread, so writes to it fail while its last output and the exit status are still to be read.
At the end both sockets are shut down; the caller closes them."""

from __future__ import annotations

import select
import socket
import ssl
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass, field

from skiff.errors import Unavailable

CONNECT_TIMEOUT = 10.0
CHUNK = 65536
BACKLOG = 1 << 20         # bytes held for a side that does not read before its peer is not read either
# Hop-by-hop headers (RFC 9110 7.6.1, Go's httputil.hopHeaders) are the API server's connection's
# own, besides those the Connection header names; Connection: Upgrade and Upgrade go on, since
# the streaming server upgrades. Host and Authorization: the streaming URL's own host, and its
# one-time token is its only credential (tokens.py); X-Forwarded-For is written anew.
_DROPPED = {"host", "authorization", "connection", "keep-alive", "te", "trailer", "transfer-encoding",
            "x-forwarded-for"}


def is_upgrade(headers: Iterable[tuple[str, str]]) -> bool:
    """`Connection: Upgrade` with an Upgrade header: SPDY/3.1 or websocket."""
    headers = list(headers)
    return "upgrade" in _connection_tokens(headers) and any(k.lower() == "upgrade" and v for k, v in headers)


def _connection_tokens(headers: list[tuple[str, str]]) -> set[str]:
    """What the Connection headers name, lower case (there may be several)."""
    return {t.strip().lower() for k, v in headers if k.lower() == "connection" for t in v.split(",")}


def request_head(method: str, url: str, headers: Iterable[tuple[str, str]], client_ip: str | None) -> bytes:
    """The client's request as it goes to `url`: its path and query, its host, the client's
    end-to-end headers, and X-Forwarded-For with `client_ip` after those of earlier proxies
    (upgradeaware.go, utilnet.AppendForwardedForHeader; a unix socket's client has no IP)."""
    headers = list(headers)
    dropped = _DROPPED | (_connection_tokens(headers) - {"upgrade"})
    parts = urllib.parse.urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    lines = [f"{method} {target} HTTP/1.1", f"Host: {parts.netloc}", "Connection: Upgrade"]
    lines += [f"{k}: {v}" for k, v in headers if k.lower() not in dropped and not k.lower().startswith("proxy-")]
    forwarded = [v for k, v in headers if k.lower() == "x-forwarded-for"] + ([client_ip] if client_ip else [])
    if forwarded:
        lines.append(f"X-Forwarded-For: {', '.join(forwarded)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def connect(url: str) -> socket.socket:
    parts = urllib.parse.urlsplit(url)
    # the URL's path is the session's one-time token: errors name the host only
    if parts.scheme != "http" or not parts.hostname:
        raise Unavailable(f"streaming URL at {parts.netloc or '(no host)'}: want http://HOST:PORT/... "
                          "(the node's CRI streaming server)")
    try:
        return socket.create_connection((parts.hostname, parts.port or 80), timeout=CONNECT_TIMEOUT)
    except OSError as e:
        raise Unavailable(f"the node's streaming server at {parts.netloc}: {e.strerror or e}") from None


@dataclass(slots=True, eq=False)
class _Side:
    sock: socket.socket
    held: bytearray = field(default_factory=bytearray)   # what waits to be written to this side
    closed: bool = False   # read EOF or a read error: nothing more comes from it
    failed: bool = False   # a write failed: nothing more goes to it
    # what poll must report before the next read and write: TLS may need the other direction
    # (a renegotiation or key update: SSLWantWriteError on recv, SSLWantReadError on send)
    read_on: int = select.POLLIN
    write_on: int = select.POLLOUT

    def can_take(self) -> bool:
        return not self.closed and not self.failed

    def buffered(self) -> bool:
        """TLS holds decrypted bytes of a record already read: the kernel shows nothing to read."""
        return isinstance(self.sock, ssl.SSLSocket) and self.read_on == select.POLLIN and self.sock.pending() > 0


def pump(client: socket.socket, backend: socket.socket, to_backend: bytes, idle: float, wake: int) -> None:
    """Copies between the two until a side closes and what is held for the other is written,
    or neither moves for `idle` seconds, or `wake` (an eventfd) is readable: the server stops.
    `to_backend`: what goes first (the request's head). Shuts both down; the caller closes them."""
    sides = [_Side(client), _Side(backend, bytearray(to_backend))]
    peer = {sides[0]: sides[1], sides[1]: sides[0]}
    for s in sides:
        s.sock.setblocking(False)
    try:
        while True:
            if any(s.closed for s in sides) and not any(s.held for s in sides):
                return
            poll = select.poll()
            poll.register(wake, select.POLLIN)
            buffered = []
            for s in sides:
                reading, writing = _reads(s, peer[s], sides), bool(s.held)
                if reading and s.buffered():
                    buffered.append((s.sock.fileno(), select.POLLIN))
                events = (s.read_on if reading else 0) | (s.write_on if writing else 0)
                if events:   # (a socket with nothing asked still reports POLLHUP: it would spin)
                    poll.register(s.sock, events)
            ready = poll.poll(0 if buffered else int(idle * 1000)) + buffered
            if not ready or any(fd == wake for fd, _ in ready):
                return
            seen: dict[int, int] = {}
            for fd, e in ready:
                seen[fd] = seen.get(fd, 0) | e
            gone = select.POLLHUP | select.POLLERR
            for s in sides:   # each side's read before its write: a failed write must not hide it
                events = seen.get(s.sock.fileno(), 0)
                if events & (s.read_on | gone) and _reads(s, peer[s], sides):
                    _read(s, peer[s])
                if events & (s.write_on | gone) and s.held:
                    _write(s)
    finally:
        for s in sides:
            try:
                s.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def _reads(s: _Side, other: _Side, sides: list[_Side]) -> bool:
    """Whether to read `s`: not once a side has closed (what is held goes out, then the end),
    nor while more than BACKLOG waits for its peer."""
    return not any(x.closed for x in sides) and len(other.held) < BACKLOG


def _read(s: _Side, other: _Side) -> None:
    try:
        data = s.sock.recv(CHUNK)
        s.read_on = select.POLLIN
    except (ssl.SSLWantReadError, BlockingIOError):
        s.read_on = select.POLLIN
        return
    except ssl.SSLWantWriteError:
        s.read_on = select.POLLOUT
        return
    except OSError:
        data = b""
    if not data:
        s.closed = True
        s.held.clear()   # nothing more goes to a side that has gone
    elif other.can_take():
        other.held += data


def _write(s: _Side) -> None:
    try:
        del s.held[:s.sock.send(s.held)]
        s.write_on = select.POLLOUT
    except (ssl.SSLWantWriteError, BlockingIOError):
        s.write_on = select.POLLOUT
    except ssl.SSLWantReadError:
        s.write_on = select.POLLIN
    except OSError:
        s.failed = True
        s.held.clear()
