"""Container logs in the CRI format: writing (re-exported from log_copier.py), parsing, following.

`2016-10-06T00:17:09.669794202Z stdout F the line\\n`, as kubelet
`pkg/kubelet/kuberuntime/logs/logs.go` (`parseCRILog`) reads it: timestamp, stream, tags
(`P` or `F`, maybe followed by `:`-separated others), then the bytes of the line.
"""

from __future__ import annotations

import calendar
import datetime
import os
import re
import time
from collections.abc import Callable, Generator, Iterator
from typing import NamedTuple

from skiff.cri.log_copier import (
    MAX_LINE_SIZE,
    LogWriter,
    Stream,
    format_line,
    format_timestamp,
)
from skiff.errors import InvalidArgument

__all__ = [
    "MAX_LINE_SIZE", "LogFormatError", "LogLine", "LogWriter", "Stream",
    "follow", "format_line", "format_timestamp", "parse_line", "parse_timestamp",
]


class LogFormatError(InvalidArgument):
    pass


class LogLine(NamedTuple):
    timestamp: int  # nanoseconds since the epoch
    stream: Stream
    partial: bool
    text: bytes


_TIMESTAMP = re.compile(
    rb"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:\d{2})\Z", re.IGNORECASE)


def parse_timestamp(value: bytes) -> int:
    """RFC 3339 (any fraction length, `Z` or an offset) to nanoseconds since the epoch."""
    m = _TIMESTAMP.match(value)
    if m is None:
        raise LogFormatError(f"log timestamp {value!r}: not RFC 3339")
    whole, fraction, zone = m.groups()
    try:
        base = datetime.datetime.strptime(whole.decode(), "%Y-%m-%dT%H:%M:%S")
    except ValueError as e:
        raise LogFormatError(f"log timestamp {value!r}: {e}") from e
    seconds = calendar.timegm(base.timetuple())
    if zone.upper() != b"Z":
        sign = -1 if zone[:1] == b"-" else 1
        seconds -= sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    return seconds * 1_000_000_000 + int((fraction or b"0").ljust(9, b"0"))


def parse_line(line: bytes) -> LogLine:
    """One line of a CRI log file, with or without its final `\\n`."""
    if line.endswith(b"\n"):
        line = line[:-1]
    parts = line.split(b" ", 3)
    if len(parts) < 4:
        raise LogFormatError(f"log line {line[:80]!r}: want 'TIMESTAMP STREAM TAGS TEXT'")
    ts, stream, tags, text = parts
    try:
        parsed_stream = Stream(stream.decode())
    except (ValueError, UnicodeDecodeError):
        raise LogFormatError(f"log line stream {stream[:20]!r}: want stdout or stderr") from None
    tag = tags.split(b":", 1)[0]
    if tag not in (b"P", b"F"):
        raise LogFormatError(f"log line tag {tags[:20]!r}: want P or F")
    return LogLine(parse_timestamp(ts), parsed_stream, tag == b"P", text)


def follow(path: str, *, until: Callable[[], bool] = lambda: False, poll_interval: float = 0.1,
           offset: int = 0) -> Generator[bytes, None, None]:
    """Yields the complete lines of `path` (with their `\\n`) from its start (or from byte
    `offset` of the file first found there), then new ones as they are written, like `tail -F`:
    after a rotation (the path names a new file) it finishes the old file, then reads the new
    one from its start; after a truncation it starts over. When the file is drained and
    `until()` is true, it returns; an unfinished last line is then yielded as it stands.
    """
    f: _Followed | None = None
    while f is None:
        f = _Followed.open(path, offset)
        if f is None:
            if until():
                return
            time.sleep(poll_interval)
    try:
        while True:
            got = False
            for line in f.read_lines():
                got = True
                yield line
            if got:
                continue
            # Drained: decide whether the path moved on before deciding whether to stop.
            done = until()
            successor = f.successor(path)
            if successor is not None:
                # The old file may have gained lines between the read and the check.
                yield from f.read_lines()
                if f.rest:
                    yield f.rest
                f.close()
                f = successor
                continue
            if done:
                yield from f.read_lines()
                if f.rest:
                    yield f.rest
                return
            time.sleep(poll_interval)
    finally:
        f.close()


class _Followed:
    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.rest = b""
        self.offset = 0

    @classmethod
    def open(cls, path: str, offset: int = 0) -> _Followed | None:
        try:
            f = cls(os.open(path, os.O_RDONLY | os.O_CLOEXEC))
        except FileNotFoundError:
            return None
        f.offset = os.lseek(f.fd, offset, os.SEEK_SET)
        return f

    def read_lines(self) -> Iterator[bytes]:
        if os.fstat(self.fd).st_size < self.offset:  # truncated in place (copytruncate)
            os.lseek(self.fd, 0, os.SEEK_SET)
            self.offset = 0
            self.rest = b""
        while chunk := os.read(self.fd, 64 * 1024):
            self.offset += len(chunk)
            lines = (self.rest + chunk).split(b"\n")
            self.rest = lines.pop()
            for line in lines:
                yield line + b"\n"

    def successor(self, path: str) -> _Followed | None:
        """The file now at `path`, when it is not this one."""
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None  # renamed, not yet reopened: keep reading the old one
        mine = os.fstat(self.fd)
        if (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino):
            return None
        return _Followed.open(path)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
