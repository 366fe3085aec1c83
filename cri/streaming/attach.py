"""An attach session: a running container's own streams (kubelet `AttachContainer`). Its stdin
is a pipe whose write end its monitor keeps (a container created with stdin, monitor.py); the
session gets a copy and writes what the client sends. Its output is what the monitor copies
into its CRI log file, followed from the file's end as it grows, each line on the channel of
its stream. A container on a terminal (CRI tty) has its pty master kept by the monitor instead:
the session writes stdin to a copy of it and applies resizes to it, and its output is logged as
it comes (a prompt has no newline). The session ends when the container has exited and the log
is drained (a Success status on the error channel then, as kubelet sends), or when the client
goes. With stdin_once, the container's stdin ends with the first session."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from typing import BinaryIO

from skiff.cri.logs import LogFormatError, Stream, parse_line
from skiff.cri.monitor import read_exit
from skiff.cri.monitor_client import Monitors
from skiff.cri.streaming import channels
from skiff.cri.streaming.tokens import AttachRequest

POLL = 0.05


class AttachSession:
    def __init__(self, monitors: Monitors, request: AttachRequest, peer: channels.Peer) -> None:
        self.monitors = monitors
        self.request = request
        self.peer = peer
        self._stdin: int | None = None
        self._lock = threading.Lock()
        self._client_gone = threading.Event()

    def run(self) -> None:
        r = self.request
        try:
            with open(r.log_path, "rb") as log:
                # From its end as it is now, before any stdin reaches the container: what the
                # container answers to it is written after this point.
                log.seek(0, os.SEEK_END)
                if r.stdin or r.tty:   # a terminal's master takes the resizes too
                    self._stdin = self.monitors.attach_stdin(r.monitor_pid, r.runtime_id)
                threading.Thread(target=self._read_client, name="skiff-attach-stdin", daemon=True).start()
                if self._follow(log):
                    self.peer.frame(channels.ERROR, channels.status(0))
        finally:
            if r.stdin and r.stdin_once:
                self._end_stdin()
            self._close_stdin()
            self.peer.close()

    def _follow(self, log: BinaryIO) -> bool:
        """What the container writes from now on, as kubelet's attach shows it; False when the
        client went first."""
        r = self.request
        rest = b""
        while not self._client_gone.is_set():
            data = log.read(65536)
            if not data:
                if read_exit(r.exit_file) is not None:
                    data = log.read()   # the last lines written before the exit file
                    if not data:
                        return True
                else:
                    time.sleep(POLL)
                    continue
            *lines, rest = (rest + data).split(b"\n")
            for line in lines:
                with contextlib.suppress(LogFormatError):
                    entry = parse_line(line)
                    channel, wanted = ((channels.STDOUT, r.stdout) if entry.stream is Stream.STDOUT
                                       else (channels.STDERR, r.stderr))
                    if wanted:
                        self.peer.frame(channel, entry.text + (b"" if entry.partial else b"\n"))
        return False

    def _read_client(self) -> None:
        try:
            for message in self.peer.messages():
                if message[:1] == bytes([channels.STDIN]):
                    with self._lock:
                        if self._stdin is not None and self.request.stdin:
                            with contextlib.suppress(OSError):
                                os.write(self._stdin, message[1:])
                elif message[:1] == bytes([channels.RESIZE]):
                    with self._lock:
                        if self._stdin is not None and self.request.tty:
                            channels.resize(self._stdin, message[1:])
                elif message[:2] == bytes([channels.CLOSE, channels.STDIN]) and not self.request.tty:
                    # (a terminal stays: its end is ^D's to make)
                    if self.request.stdin_once:   # the container's stdin ends now, as containerd's does
                        self._end_stdin()
                    self._close_stdin()
        finally:
            self._client_gone.set()

    def _end_stdin(self) -> None:
        """stdin_once: the container's stdin ends with this session. A pipe's write end is
        closed by the monitor that keeps it; a terminal gets its EOF character typed, here,
        where a write that waits for the container to read holds up no other container."""
        r = self.request
        if r.tty:
            with self._lock:
                if self._stdin is not None:
                    with contextlib.suppress(OSError):
                        os.write(self._stdin, b"\x04")
        else:
            self.monitors.close_stdin(r.monitor_pid, r.runtime_id)

    def _close_stdin(self) -> None:
        with self._lock:
            if self._stdin is not None:
                os.close(self._stdin)
                self._stdin = None
