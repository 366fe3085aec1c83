"""Copies a container's stdout and stderr into its CRI log file, one process per container.

The daemon is not in the data path: `start_log_copier` spawns this file as a script
(`python -I -S log_copier.py LOG_PATH`, the container's stdout pipe on fd 3 and its stderr
pipe on fd 4) in its own session, so lines keep flowing while the daemon is down or
restarting, as CRI-O's per-container conmon does (containerd copies in the daemon,
`internal/cri/io/logger.go`, so its containers stall on full fifos while it is down).
It exits when both pipes reach EOF.
SIGUSR1 reopens LOG_PATH (ReopenContainerLog: kubelet renames the file, then asks for a new one).

The CRI service's container monitor (cri/monitor.py) copies with `ContainerLog` too, for
every container at once, and writes each init's end with `write_exit_file`:
`{"exit_code", "signal", "finished_at"}` (temp file and rename), so an exit while the
daemon is down is still known when it comes back, as conmon's exit file is for CRI-O.

As a script it runs per container, so the module imports only the standard library's built-in modules
(no `skiff` package, no site-packages: `-S`), and it never blocks the container on the log
file: when a write fails (disk full) the line is dropped, said once on its stderr.
The line format and the splitting live here too, for the same reason; `skiff.cri.logs`
re-exports them next to the parser.

Line format, as kubelet `pkg/kubelet/kuberuntime/logs/logs.go` (`parseCRILog`) reads it:
`2016-10-06T00:17:09.669794202Z stdout F the line\\n`: RFC 3339 UTC with nanoseconds, the
stream, `F` for a full line or `P` for a piece of one (split at `MAX_LINE_SIZE`, or cut by
EOF), then the bytes of the line without its `\\n`. A `\\r` before it is kept as data
(containerd's `readLine` drops it; skiff keeps the container's bytes as they were written).
Splitting at `MAX_LINE_SIZE` and the P/F choice follow containerd's `redirectLogs`.
"""

from __future__ import annotations

import enum
import os
import select
import signal
import sys
import time
from collections.abc import Callable
from types import FrameType

# containerd's default max_container_log_line_size: longer lines become P pieces.
MAX_LINE_SIZE = 16 * 1024

STDOUT_FD = 3
STDERR_FD = 4
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

    def __init__(self, log_path: str, streams: dict[int, Stream], *, max_line: int = MAX_LINE_SIZE) -> None:
        self.file = _LogFile(log_path)
        self._writer = LogWriter(self.file.write, max_line=max_line)
        self.streams = dict(streams)  # the pipes not at EOF yet

    def copy(self, fd: int) -> None:
        """Copy what `fd` holds; at EOF, send its unfinished line and close it."""
        try:
            data = os.read(fd, _READ_SIZE)
        except BlockingIOError:
            return
        if data:
            self._writer.write(self.streams[fd], data)
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


def run(log_path: str, streams: dict[int, Stream], *, max_line: int = MAX_LINE_SIZE) -> None:
    """Copies each fd of `streams` into `log_path` until all reach EOF; SIGUSR1 reopens
    `log_path`."""
    log = ContainerLog(log_path, streams, max_line=max_line)
    reopen = False

    def on_usr1(signum: int, frame: FrameType | None) -> None:
        nonlocal reopen
        reopen = True

    # poll() is retried after a handler runs (PEP 475), so the handler's flag would wait for
    # the next output; the wakeup fd makes poll() return instead.
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    signal.signal(signal.SIGUSR1, on_usr1)
    # start_log_copier spawns us with SIGUSR1 blocked, so an early reopen request waits for
    # the handler instead of killing us.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR1})

    poller = select.poll()
    poller.register(wake_r, select.POLLIN)
    for fd in streams:
        poller.register(fd, select.POLLIN)
    while log.streams:
        for fd, _ in poller.poll():
            if fd == wake_r:
                try:
                    while os.read(wake_r, 512):
                        pass
                except BlockingIOError:
                    pass
                continue
            log.copy(fd)
            if fd not in log.streams:
                poller.unregister(fd)
        if reopen:
            reopen = False
            log.file.reopen()
    log.close()


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        _say("usage: log_copier.py LOG_PATH (stdout pipe on fd 3, stderr pipe on fd 4)")
        return 2
    # An inherited write end of some container's pipe would keep that pipe open forever.
    os.closerange(STDERR_FD + 1, os.sysconf("SC_OPEN_MAX"))
    run(argv[1], {STDOUT_FD: Stream.STDOUT, STDERR_FD: Stream.STDERR})
    return 0


def start_log_copier(log_path: str, *, stderr_fd: int = 2) -> tuple[int, int, int]:
    """Spawns a copier for `log_path`; returns (pid, stdout write fd, stderr write fd).

    The caller gives the write ends to the container as its stdout and stderr, then closes
    its own copies: the copier exits once every copy is closed. The caller should waitpid
    the copier; if the caller dies first, init reaps it. The log file is created here
    first, so a bad path fails now instead of in the copier. `stderr_fd` receives the
    copier's notes (dropped lines).
    """
    import fcntl

    from skiff.cri.logs import LogPathError

    try:
        os.close(os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640))
    except OSError as e:
        raise LogPathError(f"log_path {log_path}: {e.strerror}") from e
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    moved: list[int] = []
    try:
        # Move every source above 4 so the dup2s onto 0 to 4 cannot overwrite each other.
        for fd in (out_r, err_r, stderr_fd):
            moved.append(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10))
        devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        moved.append(devnull)
        pid = os.posix_spawn(
            sys.executable,
            [sys.executable, "-I", "-S", os.path.abspath(__file__), log_path],
            {"PATH": os.defpath, "LC_ALL": "C.UTF-8"},
            file_actions=[
                (os.POSIX_SPAWN_DUP2, devnull, 0),
                (os.POSIX_SPAWN_DUP2, devnull, 1),
                (os.POSIX_SPAWN_DUP2, moved[2], 2),
                (os.POSIX_SPAWN_DUP2, moved[0], STDOUT_FD),
                (os.POSIX_SPAWN_DUP2, moved[1], STDERR_FD),
            ],
            # Its own session: a signal to the daemon's process group (Ctrl-C) leaves it alone.
            setsid=True,
            setsigmask={signal.SIGUSR1},
            setsigdef=(signal.SIGUSR1, signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGPIPE),
        )
    except BaseException:
        os.close(out_w)
        os.close(err_w)
        raise
    finally:
        for fd in (out_r, err_r, *moved):
            os.close(fd)
    return pid, out_w, err_w


def request_reopen(pid: int, log_path: str, *, timeout: float = 2.0) -> bool:
    """Asks the copier `pid` to reopen `log_path` (after the caller renamed it) and waits up
    to `timeout` seconds for the new file; False if it did not appear."""
    os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + timeout
    while not os.path.exists(log_path):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.005)
    return True


if __name__ == "__main__":
    sys.exit(main(sys.argv))
