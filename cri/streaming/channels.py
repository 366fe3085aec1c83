"""The remotecommand channel protocol over WebSocket (kubernetes
`staging/src/k8s.io/apimachinery/pkg/util/remotecommand`, `k8s.io/client-go/tools/remotecommand`):
every binary message starts with a byte naming its channel.

    0 stdin   1 stdout   2 stderr   3 error (the exit Status, JSON)   4 resize (TTY only)
    255 close: v5 only; its one data byte names the channel the client will send no more on
            (stdin's end; v4 has no way to say it but closing the connection)

The exit goes on channel 3 as a metav1.Status: Success, or Failure with reason
NonZeroExitCode and the code in details.causes, which kubectl turns into its own exit code.
"""

from __future__ import annotations

import fcntl
import json
import struct
import termios
from collections.abc import Iterator
from typing import Protocol

STDIN, STDOUT, STDERR, ERROR, RESIZE, CLOSE = 0, 1, 2, 3, 4, 255
V5, V4 = "v5.channel.k8s.io", "v4.channel.k8s.io"
PROTOCOLS = (V5, V4)   # the first the client offers that is here wins, in the client's order
PORT_FORWARD = "portforward.k8s.io"   # over SPDY (over WebSocket, port-forward speaks V4's framing)
PORT_FORWARD_TUNNEL = "SPDY/3.1+" + PORT_FORWARD   # SPDY's bytes in WebSocket binary messages


class Peer(Protocol):
    """A session's connection, as channels: a WebSocket's (websocket.py) or SPDY streams
    (spdy_peer.py)."""

    def frame(self, channel: int, data: bytes) -> None: ...
    def messages(self) -> Iterator[bytes]: ...
    def close(self) -> None: ...


def resize(terminal: int, message: bytes) -> None:
    """A resize message ({"Width": columns, "Height": rows}) applied to the pty; a malformed
    one is ignored, as kubelet does."""
    try:
        size = json.loads(message)
        columns, rows = int(size["Width"]), int(size["Height"])
    except (ValueError, KeyError, TypeError):
        return
    if 0 < columns < 65536 and 0 < rows < 65536:
        fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))


def status(exit_code: int) -> bytes:
    if exit_code == 0:
        return json.dumps({"metadata": {}, "status": "Success"}).encode()
    return json.dumps({
        "metadata": {}, "status": "Failure", "reason": "NonZeroExitCode",
        "message": f"command terminated with non-zero exit code: error executing command, exit status {exit_code}",
        "details": {"causes": [{"reason": "ExitCode", "message": str(exit_code)}]}}).encode()


def error(message: str) -> bytes:
    """A failure that is not the command's: it could not run."""
    return json.dumps({"metadata": {}, "status": "Failure", "reason": "InternalError", "message": message}).encode()
