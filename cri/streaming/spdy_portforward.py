"""Port-forward over SPDY/3.1 (kubelet `cri/streaming/portforward/httpstream.go`, the
portforward.k8s.io protocol): the client opens a pair of SPDY streams per connection it
forwards, an error stream and a data stream, both with headers `port` and `requestid`. Once
both of a request are open, the server connects to the port in the pod and carries the data
stream both ways; a failed connection is told on the error stream. A data stream's FIN
half-closes the connection in the pod; the pod's end is the stream's FIN. The session lasts
until the client goes."""

from __future__ import annotations

import contextlib
import socket
import threading
from dataclasses import dataclass, field
from functools import partial

from skiff.cri.streaming import spdy
from skiff.cri.streaming.portforward import close_pods, copy_from_pod, dial, dial_error
from skiff.cri.streaming.tokens import PortForwardRequest


@dataclass(slots=True)
class _Request:
    port: int
    streams: dict[str, int] = field(default_factory=dict)   # streamtype -> stream id
    pod: socket.socket | None = None


class SpdyPortForward:
    def __init__(self, request: PortForwardRequest, sock: socket.socket, conn: spdy.Connection) -> None:
        self.request = request
        self.sock = sock
        self.conn = conn
        self._requests: dict[str, _Request] = {}
        self._data: dict[int, _Request] = {}   # data stream id -> its request
        self._threads: list[threading.Thread] = []

    def run(self) -> None:
        try:
            with contextlib.suppress(OSError, EOFError, spdy.ProtocolError):
                while True:
                    frame = self.conn.read()
                    if frame.kind == spdy.SYN_STREAM:
                        self._opened(frame)
                    elif frame.kind == 0 and frame.stream_id in self._data:
                        self._to_pod(self._data[frame.stream_id], frame)
                    elif frame.kind == spdy.RST_STREAM and frame.stream_id in self._data:
                        self._close(self._data[frame.stream_id])
                    elif frame.kind == spdy.PING:
                        self.conn.ping(frame.value)
                    elif frame.kind == spdy.GOAWAY:
                        break
        finally:
            close_pods([r.pod for r in self._requests.values() if r.pod is not None], self._threads)
            with contextlib.suppress(OSError):
                self.conn.goaway()
                self.sock.shutdown(socket.SHUT_RDWR)

    def _opened(self, frame: spdy.Frame) -> None:
        kind, port, key = (frame.headers.get(h, "") for h in ("streamtype", "port", "requestid"))
        if kind not in ("error", "data") or not port.isdigit():
            self.conn.rst_stream(frame.stream_id, spdy.RST_CANCEL)
            return
        self.conn.syn_reply(frame.stream_id)
        request = self._requests.setdefault(key, _Request(port=int(port)))
        request.streams[kind] = frame.stream_id
        if kind == "data":
            self._data[frame.stream_id] = request
        if request.streams.keys() == {"error", "data"}:
            try:
                request.pod = dial(self.request, request.port)
            except OSError as e:
                self.conn.data(request.streams["error"], dial_error(self.request, request.port, e), fin=True)
                self.conn.data(request.streams["data"], b"", fin=True)
                return
            thread = threading.Thread(target=self._from_pod, args=(request,), name=f"skiff-forward-{port}",
                                      daemon=True)
            thread.start()
            self._threads.append(thread)

    def _to_pod(self, request: _Request, frame: spdy.Frame) -> None:
        if request.pod is None:
            return
        with contextlib.suppress(OSError):
            if frame.data:
                request.pod.sendall(frame.data)
                self.conn.window_update(frame.stream_id, len(frame.data))
            if frame.fin:
                request.pod.shutdown(socket.SHUT_WR)

    def _from_pod(self, request: _Request) -> None:
        assert request.pod is not None
        if not copy_from_pod(request.pod, partial(self.conn.data, request.streams["data"])):
            return   # a connection reset, or the client gone: no FIN
        with contextlib.suppress(OSError):
            self.conn.data(request.streams["data"], b"", fin=True)
            self.conn.data(request.streams["error"], b"", fin=True)

    def _close(self, request: _Request) -> None:
        if request.pod is not None:
            with contextlib.suppress(OSError):
                request.pod.shutdown(socket.SHUT_RDWR)
