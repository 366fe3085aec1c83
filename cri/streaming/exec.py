"""An exec session on an accepted connection (WebSocket or SPDY, as a channels.Peer): the
command runs through the fork server's exec job (as ExecSync's does) with pipes for the
streams the client asked for, or on a pty with a terminal; this thread sends its output as it
comes, a reader thread writes what the client sends on stdin and applies resizes. When the
command has exited and its output is drained, its exit Status goes on the error channel and
the connection is closed.

stdin ends when the client says so (v5's close message for channel 0, SPDY's FIN) or goes; a
client that goes also gets its command killed, as kubelet does, rather than left running
unseen: the reader thread kills it, and its exit ends the session as any exit does, without a
Status for a client that is not there."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading

from skiff.cri.exec_output import read_until_exit
from skiff.cri.streaming import channels
from skiff.cri.streaming.tokens import ExecRequest
from skiff.errors import SkiffError
from skiff.runtime.forkserver import ForkServer


class ExecSession:
    def __init__(self, forkserver: ForkServer, request: ExecRequest, peer: channels.Peer) -> None:
        self.forkserver = forkserver
        self.request = request
        self.peer = peer
        self._stdin: int | None = None          # our end of the process's stdin (no TTY)
        self._terminal: int | None = None       # the pty master (TTY)
        self._pid: int | None = None            # the command's, until its exit is read
        self._lock = threading.Lock()           # the three above: the reader thread's too
        self._client_gone = threading.Event()

    def run(self) -> None:
        try:
            self._run()
        finally:
            self.peer.close()

    def _run(self) -> None:
        r = self.request
        outputs: dict[int, int] = {}   # our read end -> its channel
        fds: list[int] = []            # what the job gets: stdin (if asked), stdout, stderr
        if not r.tty:
            stdin_r, self._stdin = os.pipe() if r.stdin else (None, None)
            out_r, out_w = os.pipe()
            err_r, err_w = os.pipe()
            outputs = {out_r: channels.STDOUT, err_r: channels.STDERR}
            fds = ([stdin_r] if stdin_r is not None else []) + [out_w, err_w]
        try:
            worker = self.forkserver.call("exec", r.job_args, fds=fds)
        except SkiffError as e:
            for fd in [*outputs, *([self._stdin] if self._stdin is not None else [])]:
                os.close(fd)
            self.peer.frame(channels.ERROR, channels.error(f"exec in container {r.container_id}: {e}"))
            return
        finally:
            for fd in fds:
                os.close(fd)
        with worker:
            try:
                reply, received = worker.receive(30.0)
                if r.tty:   # the pty master: the process's stdin, stdout and stderr all at once
                    self._terminal = received[0]
                    outputs = {self._terminal: channels.STDOUT}
                self._pid = int(reply["pid"])
                threading.Thread(target=self._read_client, name="skiff-exec-stdin", daemon=True).start()
                self._pump(outputs, worker.sock)
                exit_code = int(worker.receive(None)[0]["exit_code"])
            except SkiffError as e:
                self.peer.frame(channels.ERROR, channels.error(f"exec in container {r.container_id}: {e}"))
                return
            finally:
                self._close_stdin()
                with self._lock:
                    self._pid = None   # reaped by the worker: the number may soon be another's
                    for fd in outputs:
                        os.close(fd)
                    self._terminal = None
        if not self._client_gone.is_set():
            self.peer.frame(channels.ERROR, channels.status(exit_code))

    def _pump(self, outputs: dict[int, int], exit_reply: socket.socket) -> None:
        """The output to the client until the command has exited and its output has ended."""
        asked = {channels.STDOUT: self.request.stdout, channels.STDERR: self.request.stderr}

        def send(fd: int, data: bytes) -> None:
            if asked[outputs[fd]]:
                self.peer.frame(outputs[fd], data)
        read_until_exit(outputs, exit_reply, send)

    def _read_client(self) -> None:
        """What the client sends: stdin's data and end, resizes. Its going kills the command if
        it still runs (its exit then ends the session)."""
        try:
            for message in self.peer.messages():
                self._message(message)
        finally:
            self._client_gone.set()
            with self._lock:
                if self._pid is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(self._pid, signal.SIGKILL)
            self._close_stdin()

    def _message(self, message: bytes) -> None:
        if not message:
            return
        channel, data = message[0], message[1:]
        if channel == channels.STDIN:
            with self._lock:
                into = self._terminal if self._terminal is not None else self._stdin
                if into is not None and data:
                    try:
                        os.write(into, data)
                    except OSError:   # the command stopped reading, or its terminal is gone
                        pass
        elif channel == channels.RESIZE:
            with self._lock:
                if self._terminal is not None:
                    channels.resize(self._terminal, data)
        elif channel == channels.CLOSE and data[:1] == bytes([channels.STDIN]):
            self._close_stdin()   # a terminal stays: its end is the process's to make (^D)

    def _close_stdin(self) -> None:
        with self._lock:
            if self._stdin is not None:
                os.close(self._stdin)
                self._stdin = None
