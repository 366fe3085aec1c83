"""An exec session's streams over SPDY/3.1 (kubelet `cri/streaming/remotecommand/httpstream.go`),
presented as the channels a WebSocket session has, so that exec.py runs the same over both.

After the upgrade the client opens one SPDY stream per stream it wants, each named by its
`streamtype` header: error, stdin, stdout, stderr, and resize with a terminal. The session
starts once all that the Exec call asked for are open (each answered with SYN_REPLY); stdin's
FIN is the end of stdin; the exit Status goes on the error stream, which then ends, and the
connection with it (GOAWAY)."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator

from skiff.cri.streaming import channels, spdy

STREAM_TYPES = {"error": channels.ERROR, "stdin": channels.STDIN, "stdout": channels.STDOUT,
                "stderr": channels.STDERR, "resize": channels.RESIZE}
SETUP_TIMEOUT = 30.0


class SpdyPeer:
    def __init__(self, sock: socket.socket, conn: spdy.Connection, wanted: set[int]) -> None:
        """`wanted`: the channels the session needs open before it starts."""
        self.sock = sock
        self.conn = conn
        self._streams: dict[int, int] = {}   # channel -> stream id
        self._early: list[spdy.Frame] = []   # data that came before the session started
        deadline = time.monotonic() + SETUP_TIMEOUT
        sock.settimeout(SETUP_TIMEOUT)
        while not wanted <= self._streams.keys():
            if time.monotonic() > deadline:
                raise TimeoutError(f"streams {sorted(wanted - self._streams.keys())} were not opened in time")
            frame = conn.read()
            if frame.kind == spdy.SYN_STREAM:
                kind = frame.headers.get("streamtype", "")
                if kind not in STREAM_TYPES:
                    conn.rst_stream(frame.stream_id)
                    continue
                self._streams[STREAM_TYPES[kind]] = frame.stream_id
                conn.syn_reply(frame.stream_id)
            elif frame.kind == spdy.PING:
                conn.ping(frame.value)
            elif frame.kind == 0:
                self._early.append(frame)
        sock.settimeout(None)

    def frame(self, channel: int, data: bytes) -> None:
        stream = self._streams.get(channel)
        if stream is not None:
            with contextlib.suppress(OSError):
                self.conn.data(stream, data)

    def messages(self) -> Iterator[bytes]:
        """The client's data as channel messages: stdin's (its FIN as the close of stdin, as
        v5 says it over WebSocket), and resizes."""
        by_stream = {stream: channel for channel, stream in self._streams.items()}
        with contextlib.suppress(OSError, EOFError, spdy.ProtocolError):
            while True:
                frame = self._early.pop(0) if self._early else self.conn.read()
                if frame.kind == 0:
                    channel = by_stream.get(frame.stream_id)
                    if channel is None:
                        continue
                    if frame.data:
                        yield bytes([channel]) + frame.data
                        self.conn.window_update(frame.stream_id, len(frame.data))
                    if frame.fin and channel == channels.STDIN:
                        yield bytes([channels.CLOSE, channels.STDIN])
                elif frame.kind == spdy.PING:
                    self.conn.ping(frame.value)
                elif frame.kind == spdy.GOAWAY:
                    return
                elif frame.kind == spdy.RST_STREAM and by_stream.get(frame.stream_id) == channels.ERROR:
                    return   # the client gave up on the session

    def close(self) -> None:
        with contextlib.suppress(OSError):
            for channel in (channels.STDOUT, channels.STDERR, channels.ERROR):
                if channel in self._streams:
                    self.conn.data(self._streams[channel], b"", fin=True)
            self.conn.goaway(max(self._streams.values(), default=0))
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
