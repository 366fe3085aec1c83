"""A container's stdout and stderr copied into its CRI log file: the line format, the
splitting, the file, and the exit file. The container monitor (cri/monitor.py) runs one
`ContainerLog` per container and writes each init's end with `write_exit_file`:
`{"exit_code", "signal", "finished_at"}` (temp file and rename), so an exit while the daemon
is down is still known when it comes back, as conmon's exit file is for CRI-O. The daemon is
not in the data path, so lines keep flowing while it is down or restarting (containerd
copies in the daemon, `internal/cri/io/logger.go`, so its containers stall on full fifos
while it is down). A copy never blocks the container on the log file: when a write fails
(disk full) the line is dropped, said once on stderr. `skiff.cri.logs` re-exports the writer
next to the parser.

Line format, as kubelet `pkg/kubelet/kuberuntime/logs/logs.go` (`parseCRILog`) reads it:
`2016-10-06T00:17:09.669794202Z stdout F the line\\n`: RFC 3339 UTC with nanoseconds, the
stream, `F` for a full line or `P` for a piece of one (split at `MAX_LINE_SIZE`, or cut by
EOF), then the bytes of the line without its `\\n`. A `\\r` before it is kept as data
(containerd's `readLine` drops it; skiff keeps the container's bytes as they were written).
Splitting at `MAX_LINE_SIZE` and the P/F choice follow containerd's `redirectLogs`.
"""

from __future__ import annotations

import errno
import enum
import os
import time
from collections.abc import Callable

# containerd's default max_container_log_line_size: longer lines become P pieces.
MAX_LINE_SIZE = 16 * 1024

_READ_SIZE = 64 * 1024


class Stream(enum.Enum):
    STDOUT = "stdout"
    STDERR = "stderr"


def format_timestamp(ns: int) -> bytes:
    """RFC 3339 in UTC with all nine fraction digits, so lines sort as text too."""
    seconds, fraction = divmod(ns, 1_000_000_000)
    return (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{fraction:09d}Z").encode()


def format_line(stream: Stream, data: bytes, *, partial: bool, ts: int) -> bytes:
    """One log file line; `data` must not contain `\\n`, `ts` is nanoseconds since the epoch."""
    return b"%s %s %s %s\n" % (format_timestamp(ts), stream.value.encode(), b"P" if partial else b"F", data)


class LogWriter:
    """Turns chunks of each stream into log lines handed to `sink`, one call per line.

    Each stream keeps its own unfinished line, so stdout and stderr interleave by line while
    each stays in order. A line longer than `max_line` bytes goes out as `P` pieces of
    `max_line` bytes then an `F` rest; a line of exactly `max_line` bytes is one `F` (as
    containerd splits only when the length exceeds the limit). `close(stream)` at EOF sends
    an unfinished line as `P`.
    """

    def __init__(self, sink: Callable[[bytes], None], *, max_line: int = MAX_LINE_SIZE,
                 clock: Callable[[], int] = time.time_ns) -> None:
        if max_line < 1:
            raise ValueError(f"max_line: must be positive, got {max_line}")
        self._sink = sink
        self._max = max_line
        self._clock = clock
        self._pending = {stream: bytearray() for stream in Stream}

    def write(self, stream: Stream, data: bytes) -> None:
        pending = self._pending[stream]
        pending += data
        start = 0
        while (end := pending.find(b"\n", start)) >= 0:
            self._emit_line(stream, bytes(pending[start:end]), full=True)
            start = end + 1
        # Keep up to max_line bytes: the next byte may be the newline that makes them one F.
        while len(pending) - start > self._max:
            self._emit(stream, bytes(pending[start:start + self._max]), partial=True)
            start += self._max
        del pending[:start]

    def close(self, stream: Stream) -> None:
        self.flush(stream)

    def flush(self, stream: Stream) -> None:
        """The unfinished line goes out as P now."""
        pending = self._pending[stream]
        if pending:
            self._emit_line(stream, bytes(pending), full=False)
            pending.clear()

    def _emit_line(self, stream: Stream, line: bytes, *, full: bool) -> None:
        start = 0
        while len(line) - start > self._max:
            self._emit(stream, line[start:start + self._max], partial=True)
            start += self._max
        self._emit(stream, line[start:], partial=not full)

    def _emit(self, stream: Stream, data: bytes, *, partial: bool) -> None:
        self._sink(format_line(stream, data, partial=partial, ts=self._clock()))


def _say(message: str) -> None:
    """A note on the copier's stderr; nobody may be reading it, so failing to write is fine."""
    try:
        os.write(2, f"skiff log copier: {message}\n".encode(errors="replace"))
    except OSError:
        pass


class _LogFile:
    """The log file, written with O_APPEND so a rotation by rename never leaves a hole."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = -1
        self._failing = False
        self._dropped = 0
        self._torn = False  # a failed write left half a line: end it before the next one
        self.reopen()

    def reopen(self) -> None:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
        except OSError as e:
            # Keep the old file (if any): losing lines is worse than writing to a renamed file.
            _say(f"open {self.path}: {e.strerror}")
            return
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = fd
        self._torn = False

    def write(self, line: bytes) -> None:
        if self._fd < 0:
            self._drop(f"open {self.path}: no file")
            return
        data = b"\n" + line if self._torn else line
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view):]
        except OSError as e:
            if len(view) < len(data):
                self._torn = True
            self._drop(f"write {self.path}: {e.strerror}")
            return
        self._torn = False
        if self._failing:
            _say(f"write {self.path}: works again, {self._dropped} lines dropped")
            self._failing = False
            self._dropped = 0

    def _drop(self, why: str) -> None:
        self._dropped += 1
        if not self._failing:
            self._failing = True
            _say(f"{why}; dropping lines until writing works again")

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def write_exit_file(path: str, status: int, finished_at: int) -> None:
    """The init's end as the service reads it: exit code, or the signal that killed it."""
    signum = os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0
    code = 128 + signum if signum else os.WEXITSTATUS(status)
    tmp = f"{path}.tmp"
    data = b'{"exit_code": %d, "signal": %d, "finished_at": %d}\n' % (code, signum, finished_at)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)


class ContainerLog:
    """A container's stdout and stderr pipes, copied into its log file until both reach EOF."""

    def __init__(self, log_path: str, streams: dict[int, Stream], *, max_line: int = MAX_LINE_SIZE,
                 flush_partial: bool = False) -> None:
        """`flush_partial`: what a read ends with is written at once, as a P line, rather than
        kept until its newline (a terminal's prompt)."""
        self.file = _LogFile(log_path)
        self._writer = LogWriter(self.file.write, max_line=max_line)
        self._flush_partial = flush_partial
        self.streams = dict(streams)  # the pipes not at EOF yet

    def copy(self, fd: int) -> None:
        """Copy what `fd` holds; at EOF, send its unfinished line and close it."""
        try:
            data = os.read(fd, _READ_SIZE)
        except BlockingIOError:
            return
        except OSError as e:
            if e.errno != errno.EIO:
                raise
            data = b""   # a pty master once no process holds its terminal
        if data:
            self._writer.write(self.streams[fd], data)
            if self._flush_partial:
                self._writer.flush(self.streams[fd])
        else:
            self._writer.close(self.streams.pop(fd))
            os.close(fd)

    def close(self) -> None:
        """Stop: what the pipes still hold is not copied."""
        for fd, stream in self.streams.items():
            self._writer.close(stream)
            os.close(fd)
        self.streams.clear()
        self.file.close()
