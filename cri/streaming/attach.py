"""An attach session: a running container's own streams (kubelet `AttachContainer`). Its stdin
is a pipe whose write end its monitor keeps (a container created with stdin, monitor.py); the
session gets a copy and writes what the client sends. Its output is what the monitor copies
into its CRI log file, followed from the file's end as it grows (and into the next file when
the log is rotated), each line on the channel of its stream. A container on a terminal (CRI
tty) has its pty master kept by the monitor instead: the session writes stdin to a copy of it
and applies resizes to it, and its output is logged as it comes (a prompt has no newline).

The session ends when the container has exited and its log is drained (a Success status on
the error channel then, as kubelet sends), or when the client goes. With stdin_once, a pipe's
stdin ends with the first session, or when the client closes it; a terminal stays, as
containerd leaves it (its end is the user's ^D to type).

The client's messages are read by a thread of their own, which alone writes the container's
stdin, without blocking: a container that stops reading holds up neither the session's end
nor the monitor."""

from __future__ import annotations

import contextlib
import os
import select
import threading
import time

from skiff.cri.logs import LogFormatError, Stream, follow, parse_line
from skiff.cri.monitor import read_exit
from skiff.cri.monitor_client import Monitors
from skiff.cri.streaming import channels
from skiff.cri.streaming.tokens import AttachRequest

POLL = 0.05
DRAIN_QUIET = 0.3   # seconds after the exit before the drained log ends the session


class AttachSession:
    def __init__(self, monitors: Monitors, request: AttachRequest, peer: channels.Peer) -> None:
        self.monitors = monitors
        self.request = request
        self.peer = peer
        self._stdin: int | None = None   # the reader thread's, until it has ended
        self._client_gone = threading.Event()
        self._ending = threading.Event()

    def run(self) -> None:
        r = self.request
        reader = threading.Thread(target=self._read_client, name="skiff-attach-stdin", daemon=True)
        try:
            # From the log's end as it is now, before any stdin reaches the container: what
            # the container answers to it is written after this point.
            start = os.stat(r.log_path).st_size
            if r.stdin or r.tty:   # a terminal's master takes the resizes too
                self._stdin = self.monitors.attach_stdin(r.monitor_pid, r.runtime_id)
                if self._stdin is not None:
                    os.set_blocking(self._stdin, False)
            reader.start()
            if self._follow(start):
                self.peer.frame(channels.ERROR, channels.status(0))
        finally:
            self._ending.set()
            self.peer.close()   # the reader's messages end with the connection
            if reader.is_alive():
                reader.join()
            if self._stdin is not None:
                os.close(self._stdin)
            if r.stdin and r.stdin_once and not r.tty:
                self.monitors.close_stdin(r.monitor_pid, r.runtime_id)

    def _follow(self, start: int) -> bool:
        """What the container writes from byte `start` of its log on, as kubelet's attach shows
        it, into the next file when kubelet rotates the log (logs.follow); True once the
        container has exited and its output is drained, False when the client went first."""
        r = self.request
        exited_at: float | None = None

        def done() -> bool:
            nonlocal exited_at
            if self._client_gone.is_set():
                return True
            if exited_at is None and read_exit(r.exit_file) is not None:
                exited_at = time.monotonic()
            # the monitor may still be copying what the container wrote last
            return exited_at is not None and time.monotonic() - exited_at >= DRAIN_QUIET

        for line in follow(r.log_path, until=done, poll_interval=POLL, offset=start):
            if self._client_gone.is_set():
                break
            with contextlib.suppress(LogFormatError):
                entry = parse_line(line)
                channel, wanted = ((channels.STDOUT, r.stdout) if entry.stream is Stream.STDOUT
                                   else (channels.STDERR, r.stderr))
                if wanted:
                    self.peer.frame(channel, entry.text + (b"" if entry.partial else b"\n"))
        return not self._client_gone.is_set()

    def _read_client(self) -> None:
        r = self.request
        try:
            for message in self.peer.messages():
                if self._stdin is None:
                    continue
                if message[:1] == bytes([channels.STDIN]) and r.stdin:
                    self._write_stdin(message[1:])
                elif message[:1] == bytes([channels.RESIZE]) and r.tty:
                    channels.resize(self._stdin, message[1:])
                elif message[:2] == bytes([channels.CLOSE, channels.STDIN]) and not r.tty:
                    os.close(self._stdin)
                    self._stdin = None
                    if r.stdin_once:   # the container's stdin ends now, as containerd's does
                        self.monitors.close_stdin(r.monitor_pid, r.runtime_id)
        finally:
            self._client_gone.set()

    def _write_stdin(self, data: bytes) -> None:
        """All of `data`, waiting for the container to read, unless the session ends first."""
        assert self._stdin is not None
        view = memoryview(data)
        while view and not self._ending.is_set():
            try:
                view = view[os.write(self._stdin, view):]
            except BlockingIOError:
                select.select([], [self._stdin], [], POLL)
            except OSError:   # the container's end is gone (a terminal reads EIO then)
                return
