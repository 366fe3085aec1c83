"""SPDY/3.1 framing, written here as no maintained Python library offers it (what kubectl and
crictl speak to a streaming server when they do not use WebSocket), from the SPDY draft 3
(https://www.chromium.org/spdy/spdy-protocol/spdy-protocol-draft3/) and 3.1's flow control.

    control frame: 1 | version 3 (15 bits) | type (16) | flags (8) | length (24) | payload
    data frame:    0 | stream id (31 bits)             | flags (8) | length (24) | data

Header blocks are name/value pairs (32-bit lengths), compressed with zlib against the
protocol's fixed dictionary, one compression context per direction for the connection's
life. Only what the remotecommand and port-forward protocols use is here: SYN_STREAM and
SYN_REPLY, DATA with FIN, RST_STREAM, PING, GOAWAY, WINDOW_UPDATE (received windows are
opened again as data is read; the peer's window is not enforced, as spdystream does not).
"""

from __future__ import annotations

import itertools
import socket
import struct
import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

VERSION = 3
SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS, PING, GOAWAY, HEADERS, WINDOW_UPDATE = 1, 2, 3, 4, 6, 7, 8, 9
FLAG_FIN = 0x01
RST_CANCEL = 5

_NAMES = ("options head post put delete trace accept accept-charset accept-encoding accept-language "
          "accept-ranges age allow authorization cache-control connection content-base content-encoding "
          "content-language content-length content-location content-md5 content-range content-type date etag "
          "expect expires from host if-match if-modified-since if-none-match if-range if-unmodified-since "
          "last-modified location max-forwards pragma proxy-authenticate proxy-authorization range referer "
          "retry-after server te trailer transfer-encoding upgrade user-agent vary via warning www-authenticate "
          "method get status").split() + ["200 OK", "version", "HTTP/1.1", "url", "public", "set-cookie",
                                         "keep-alive", "origin"]
_TAIL = ("100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505"
         "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request401 Unauthorized"
         "403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented503 Service Unavailable"
         "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT"
         "chunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,"
         "text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.")
# The draft's section 2.6.10.1: length-prefixed names and values, then plain text.
DICTIONARY = b"".join(struct.pack(">I", len(n)) + n.encode() for n in _NAMES) + _TAIL.encode()
assert len(DICTIONARY) == 1423


class ProtocolError(Exception):
    pass


@dataclass(slots=True)
class Frame:
    """A control frame (kind one of the types above) or a data frame (kind 0)."""

    kind: int
    flags: int
    stream_id: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    data: bytes = b""
    value: int = 0   # RST_STREAM's status, PING's id, GOAWAY's status, WINDOW_UPDATE's delta

    @property
    def fin(self) -> bool:
        return bool(self.flags & FLAG_FIN)


class Connection:
    """Frames over a connected socket: read by one thread, written by any (one at a time)."""

    def __init__(self, read: Callable[[int], bytes], write: Callable[[bytes], None]) -> None:
        """`read(n)`: n bytes, fewer only at the end; `write(data)`: all of them."""
        self._read = read
        self._write = write
        self._lock = threading.Lock()
        self._compress = zlib.compressobj(9, zlib.DEFLATED, 15, 8, zlib.Z_DEFAULT_STRATEGY, DICTIONARY)
        self._decompress = zlib.decompressobj(zdict=DICTIONARY)

    @classmethod
    def over(cls, sock: socket.socket, received: bytes = b"") -> Connection:
        """On a connected socket; `received`: what was read past the HTTP upgrade already."""
        return cls.over_chunks(itertools.chain([received], iter(lambda: sock.recv(65536), b"")), sock.sendall)

    @classmethod
    def over_chunks(cls, chunks: Iterator[bytes], write: Callable[[bytes], None]) -> Connection:
        """On a byte stream that arrives in chunks (a socket's reads, or a WebSocket's messages
        when SPDY is tunnelled in one) and ends when they do."""
        pending = bytearray()

        def read(n: int) -> bytes:
            while len(pending) < n:
                data = next(chunks, None)
                if data is None:
                    break
                pending.extend(data)
            out = bytes(pending[:n])
            del pending[:n]
            return out
        return cls(read, write)

    # -- reading ---------------------------------------------------------------------------

    def _exactly(self, n: int) -> bytes:
        data = self._read(n)
        if len(data) < n:
            raise EOFError("the peer closed the connection")
        return data

    def read(self) -> Frame:
        head = self._exactly(8)
        first, flags_length = struct.unpack(">II", head)
        flags, length = flags_length >> 24, flags_length & 0xFFFFFF
        payload = self._exactly(length)
        if not first & 0x80000000:
            return Frame(kind=0, flags=flags, stream_id=first & 0x7FFFFFFF, data=payload)
        version, kind = (first >> 16) & 0x7FFF, first & 0xFFFF
        if version != VERSION:
            raise ProtocolError(f"SPDY version {version}: only 3 is spoken here")
        frame = Frame(kind=kind, flags=flags)
        if kind == SYN_STREAM:
            frame.stream_id = struct.unpack(">I", payload[:4])[0] & 0x7FFFFFFF
            frame.headers = self._headers(payload[10:])
        elif kind in (SYN_REPLY, HEADERS):
            frame.stream_id = struct.unpack(">I", payload[:4])[0] & 0x7FFFFFFF
            frame.headers = self._headers(payload[4:])
        elif kind in (RST_STREAM, WINDOW_UPDATE):
            stream, frame.value = struct.unpack(">II", payload[:8])
            frame.stream_id = stream & 0x7FFFFFFF
        elif kind == PING:
            frame.value = struct.unpack(">I", payload[:4])[0]
        elif kind == GOAWAY:
            frame.stream_id, frame.value = struct.unpack(">II", payload[:8])
        return frame

    def _headers(self, block: bytes) -> dict[str, str]:
        data = self._decompress.decompress(block)
        try:
            (count,), at = struct.unpack(">I", data[:4]), 4
            headers = {}
            for _ in range(count):
                (n,) = struct.unpack(">I", data[at:at + 4])
                name = data[at + 4:at + 4 + n].decode()
                at += 4 + n
                (n,) = struct.unpack(">I", data[at:at + 4])
                headers[name.lower()] = data[at + 4:at + 4 + n].decode()   # several values: \0 apart
                at += 4 + n
        except (struct.error, UnicodeDecodeError) as e:
            raise ProtocolError(f"a header block that does not parse: {e}") from None
        return headers

    # -- writing ---------------------------------------------------------------------------

    def _control(self, kind: int, flags: int, payload: bytes) -> None:
        self._send(_control_frame(kind, flags, payload))

    def _send(self, frame: bytes) -> None:
        with self._lock:
            self._write(frame)

    def _block(self, headers: dict[str, str]) -> bytes:
        raw = struct.pack(">I", len(headers)) + b"".join(
            struct.pack(">I", len(k)) + k.encode() + struct.pack(">I", len(v.encode())) + v.encode()
            for k, v in headers.items())
        return self._compress.compress(raw) + self._compress.flush(zlib.Z_SYNC_FLUSH)

    def syn_stream(self, stream_id: int, headers: dict[str, str]) -> None:
        with self._lock:   # the compression context is shared: blocks go out in the order made
            self._write(_control_frame(SYN_STREAM, 0, struct.pack(">IIBB", stream_id, 0, 0, 0) + self._block(headers)))

    def syn_reply(self, stream_id: int, headers: dict[str, str] | None = None) -> None:
        with self._lock:
            self._write(_control_frame(SYN_REPLY, 0, struct.pack(">I", stream_id) + self._block(headers or {})))

    def data(self, stream_id: int, data: bytes, *, fin: bool = False) -> None:
        for at in range(0, max(len(data), 1), 1 << 16):
            chunk = data[at:at + (1 << 16)]
            last = at + (1 << 16) >= len(data)
            flags = FLAG_FIN if fin and last else 0
            self._send(struct.pack(">II", stream_id, (flags << 24) | len(chunk)) + chunk)

    def window_update(self, stream_id: int, delta: int) -> None:
        self._control(WINDOW_UPDATE, 0, struct.pack(">II", stream_id, delta))

    def ping(self, ping_id: int) -> None:
        self._control(PING, 0, struct.pack(">I", ping_id))

    def rst_stream(self, stream_id: int, status: int = RST_CANCEL) -> None:
        self._control(RST_STREAM, 0, struct.pack(">II", stream_id, status))

    def goaway(self, last_stream_id: int = 0) -> None:
        self._control(GOAWAY, 0, struct.pack(">II", last_stream_id, 0))


def _control_frame(kind: int, flags: int, payload: bytes) -> bytes:
    """A control frame's bytes; the caller sends them (under the lock, with a header block
    when it made one)."""
    return struct.pack(">HHI", 0x8000 | VERSION, kind, (flags << 24) | len(payload)) + payload
