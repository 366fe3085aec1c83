"""A port-forward session on an accepted WebSocket (kubelet `cri/streaming/portforward/
websocket.go`): for the i-th port, channel 2i carries its data and 2i+1 its errors, and the
server first sends the port number (2 bytes, little-endian) on both, which is how the client
learns the pairing. Each port is one TCP connection to 127.0.0.1:port inside the pod's network
namespace, made when the session starts; the session ends when the client closes it, or when
the pod has closed every one of them (a client opens a session per connection, as kubectl's
WebSocket port-forward does)."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterable
from functools import partial

from skiff.cri.streaming.tokens import PortForwardRequest
from skiff.cri.streaming.websocket import WebSocketPeer
from skiff.runtime import netns

CONNECT_TIMEOUT = 5.0


def dial(request: PortForwardRequest, port: int) -> socket.socket:
    """A connection to 127.0.0.1:port in the pod's network namespace (the socket stays there)."""
    connect = partial(socket.create_connection, ("127.0.0.1", port), CONNECT_TIMEOUT)
    pod = netns.call_in(request.netns, connect) if request.netns else connect()
    pod.settimeout(None)
    return pod


def dial_error(request: PortForwardRequest, port: int, e: OSError) -> bytes:
    """kubelet's words for a port that did not connect."""
    return (f"an error occurred forwarding {port} -> {port}: dial tcp 127.0.0.1:{port} in pod {request.sandbox_id}: "
            f"{(e.strerror or str(e)).lower()}").encode()


def copy_from_pod(pod: socket.socket, send: Callable[[bytes], None]) -> bool:
    """What the pod writes, to `send`, until it closes the connection (True) or either side
    fails (False)."""
    try:
        while data := pod.recv(65536):
            send(data)
    except OSError:
        return False
    return True


def close_pods(pods: Iterable[socket.socket], readers: Iterable[threading.Thread]) -> None:
    """The end of the connections in the pod: each is shut down, which ends its reader's recv,
    and closed only once every reader is done."""
    pods = list(pods)
    for pod in pods:
        with contextlib.suppress(OSError):
            pod.shutdown(socket.SHUT_RDWR)
    for reader in readers:
        reader.join()
    for pod in pods:
        pod.close()


class PortForwardSession:
    def __init__(self, request: PortForwardRequest, ports: tuple[int, ...], peer: WebSocketPeer) -> None:
        self.request = request
        self.ports = ports
        self.peer = peer
        self._lock = threading.Lock()
        self._pods: dict[int, socket.socket] = {}   # data channel -> the connection in the pod
        self._ended = 0                             # of those, how many the pod has closed

    def run(self) -> None:
        readers = []
        try:
            for i, port in enumerate(self.ports):
                data, errors = 2 * i, 2 * i + 1
                for channel in (data, errors):
                    self.peer.frame(channel, port.to_bytes(2, "little"))
                try:
                    self._pods[data] = dial(self.request, port)
                except OSError as e:
                    self.peer.frame(errors, dial_error(self.request, port, e))
                    continue
                reader = threading.Thread(target=self._from_pod, args=(data,), name=f"skiff-forward-{port}",
                                          daemon=True)
                reader.start()
                readers.append(reader)
            for message in self.peer.messages():
                self._to_pod(message)
        finally:
            close_pods(self._pods.values(), readers)
            self.peer.close()

    def _from_pod(self, channel: int) -> None:
        """The pod's data to the client; when every connection in the pod has ended, so does
        the session (the client's reading side sees it close)."""
        copy_from_pod(self._pods[channel], partial(self.peer.frame, channel))
        with self._lock:
            self._ended += 1
            last = self._ended == len(self._pods)
        if last:
            with contextlib.suppress(OSError):
                self.peer.sock.shutdown(socket.SHUT_RD)   # ends the wait for the client's messages

    def _to_pod(self, message: bytes) -> None:
        if len(message) < 2 or message[0] not in self._pods:
            return   # an error channel, or a port that did not connect
        with contextlib.suppress(OSError):
            self._pods[message[0]].sendall(message[1:])
