"""CRI log files: the format kubelet reads, the splitting, the copy of a container's pipes, follow."""

from __future__ import annotations

import os
import select
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from skiff.cri.log_copier import ContainerLog
from skiff.cri.logs import (
    LogFormatError,
    LogLine,
    LogWriter,
    Stream,
    follow,
    format_line,
    parse_line,
)
from skiff.errors import InvalidArgument

TS = 1_475_713_029_669_794_202  # 2016-10-06T00:17:09.669794202Z


def collect(max_line: int = 16 * 1024) -> tuple[LogWriter, list[LogLine]]:
    lines: list[LogLine] = []
    ticks = iter(range(TS, TS + 10_000))
    writer = LogWriter(lambda raw: lines.append(parse_line(raw)), max_line=max_line,
                       clock=lambda: next(ticks))
    return writer, lines


def texts(lines: list[LogLine]) -> list[tuple[str, bool, bytes]]:
    return [(line.stream.value, line.partial, line.text) for line in lines]


# -- format and parse ----------------------------------------------------------------------

def test_format_matches_kubelet_example() -> None:
    assert format_line(Stream.STDOUT, b"the line", partial=False, ts=TS) == \
        b"2016-10-06T00:17:09.669794202Z stdout F the line\n"
    assert format_line(Stream.STDERR, b"", partial=True, ts=TS - 669794202) == \
        b"2016-10-06T00:17:09.000000000Z stderr P \n"


@pytest.mark.parametrize("text", [b"", b"x", b"a b  c ", b"caf\xc3\xa9 \xff\x00", b"tab\there", b"cr\r"])
@pytest.mark.parametrize("stream", list(Stream))
@pytest.mark.parametrize("partial", [False, True])
def test_round_trip(text: bytes, stream: Stream, partial: bool) -> None:
    raw = format_line(stream, text, partial=partial, ts=TS + 7)
    assert raw.endswith(b"\n") and raw.count(b"\n") == 1
    assert parse_line(raw) == LogLine(TS + 7, stream, partial, text)
    assert parse_line(raw[:-1]) == LogLine(TS + 7, stream, partial, text)


def test_parse_other_writers() -> None:
    # Go's RFC3339Nano trims zeros; CRI-O-style offsets; tags after the first one.
    assert parse_line(b"2016-10-06T00:17:09.6697942Z stdout F a\n").timestamp == TS - 2
    assert parse_line(b"2016-10-06T00:17:09Z stderr P:x b").timestamp == TS - 669794202
    assert parse_line(b"2016-10-06T02:17:09.669794202+02:00 stdout F c").timestamp == TS
    assert parse_line(b"2016-10-05T23:17:09.669794202-01:00 stdout F c").timestamp == TS


@pytest.mark.parametrize("raw", [
    b"", b"\n", b"2016-10-06T00:17:09Z stdout F", b"yesterday stdout F x",
    b"2016-10-06T00:17:09Z stdin F x", b"2016-10-06T00:17:09Z stdout X x",
    b"2016-13-06T00:17:09Z stdout F x", b"2016-10-06T00:17:09.1234567890Z stdout F x",
])
def test_parse_rejects(raw: bytes) -> None:
    with pytest.raises(LogFormatError) as e:
        parse_line(raw)
    assert isinstance(e.value, InvalidArgument)
    assert str(e.value).startswith("log ")


# -- the writer ----------------------------------------------------------------------------

def test_lines_and_chunks() -> None:
    w, lines = collect()
    w.write(Stream.STDOUT, b"one\ntw")
    w.write(Stream.STDOUT, b"o\n\nthree\n")
    assert texts(lines) == [("stdout", False, b"one"), ("stdout", False, b"two"),
                            ("stdout", False, b""), ("stdout", False, b"three")]
    assert [line.timestamp for line in lines] == sorted({line.timestamp for line in lines})


def test_long_lines_split_into_pieces() -> None:
    w, lines = collect(max_line=8)
    w.write(Stream.STDOUT, b"12345678\n")           # exactly the limit: one F
    w.write(Stream.STDOUT, b"abcdefghABCDEFGH\n")   # twice the limit: P then F
    w.write(Stream.STDERR, b"0123456789")           # over the limit, no newline yet
    w.write(Stream.STDERR, b"abcdefghijklmnopq\n")
    assert texts(lines) == [
        ("stdout", False, b"12345678"),
        ("stdout", True, b"abcdefgh"), ("stdout", False, b"ABCDEFGH"),
        ("stderr", True, b"01234567"), ("stderr", True, b"89abcdef"),
        ("stderr", True, b"ghijklmn"), ("stderr", False, b"opq"),
    ]


def test_partial_line_at_eof() -> None:
    w, lines = collect(max_line=4)
    w.write(Stream.STDOUT, b"done\nno newline")
    w.close(Stream.STDOUT)
    w.close(Stream.STDERR)  # nothing pending: no line
    assert texts(lines) == [("stdout", False, b"done"), ("stdout", True, b"no n"),
                            ("stdout", True, b"ewli"), ("stdout", True, b"ne")]


def test_crlf_is_data() -> None:
    w, lines = collect()
    w.write(Stream.STDOUT, b"dos\r\nline\r")
    w.write(Stream.STDOUT, b"\n\r\r\n")
    assert texts(lines) == [("stdout", False, b"dos\r"), ("stdout", False, b"line\r"),
                            ("stdout", False, b"\r\r")]


def test_streams_interleave_by_line_in_order() -> None:
    w, lines = collect()
    w.write(Stream.STDOUT, b"o1 ")
    w.write(Stream.STDERR, b"e1\ne")
    w.write(Stream.STDOUT, b"still o1\no2\n")
    w.write(Stream.STDERR, b"2\n")
    assert texts(lines) == [("stderr", False, b"e1"), ("stdout", False, b"o1 still o1"),
                            ("stdout", False, b"o2"), ("stderr", False, b"e2")]


# -- the copier ----------------------------------------------------------------------------

def read_log(path: Path) -> list[tuple[str, bool, bytes]]:
    # Split on b"\n" only: bytes.splitlines also splits on \r, \x0b, \x1c and more.
    raw = path.read_bytes()
    assert raw == b"" or raw.endswith(b"\n")
    return texts([parse_line(line) for line in raw.split(b"\n")[:-1]])


def wait_for(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


class Copier:
    """A ContainerLog on two pipes, as the container monitor runs one per container, driven
    from the test: `pump` copies what the pipes hold, `finish` closes their write ends and
    copies up to EOF."""

    def __init__(self, log: Path) -> None:
        out_r, self.out = os.pipe()
        err_r, self.err = os.pipe()
        self.log = ContainerLog(str(log), {out_r: Stream.STDOUT, err_r: Stream.STDERR})

    def close(self, fd: int) -> None:
        if fd == self.out:
            self.out = -1
        if fd == self.err:
            self.err = -1
        os.close(fd)

    def pump(self) -> None:
        poller = select.poll()
        for fd in self.log.streams:
            poller.register(fd, select.POLLIN)
        while ready := poller.poll(0):
            for fd, _ in ready:
                self.log.copy(fd)
                if fd not in self.log.streams:
                    poller.unregister(fd)

    def finish(self) -> None:
        for fd in (self.out, self.err):
            if fd >= 0:
                self.close(fd)
        self.pump()
        assert not self.log.streams  # both at EOF
        self.log.close()


@pytest.fixture
def copiers() -> Iterator[Callable[[Path], Copier]]:
    started: list[Copier] = []

    def start(log: Path) -> Copier:
        started.append(Copier(log))
        return started[-1]

    yield start
    for c in started:
        for fd in (c.out, c.err):
            if fd >= 0:
                os.close(fd)
        c.log.close()


def test_copier_end_to_end(tmp_path: Path, copiers: Callable[[Path], Copier]) -> None:
    log = tmp_path / "c.log"
    c = copiers(log)
    subprocess.run(["sh", "-c", "echo out; echo err >&2; echo out2; printf 'no newline'"],
                   stdout=c.out, stderr=c.err, check=True)
    c.finish()
    lines = read_log(log)
    assert [x for x in lines if x[0] == "stdout"] == [
        ("stdout", False, b"out"), ("stdout", False, b"out2"), ("stdout", True, b"no newline")]
    assert [x for x in lines if x[0] == "stderr"] == [("stderr", False, b"err")]


def test_copier_long_line_and_binary(tmp_path: Path, copiers: Callable[[Path], Copier]) -> None:
    log = tmp_path / "c.log"
    c = copiers(log)
    payload = bytes(range(256)).replace(b"\n", b"") * 200  # ~51 KB, one line
    os.write(c.out, payload + b"\n")
    c.finish()
    lines = read_log(log)
    assert [partial for _, partial, _ in lines] == [True, True, True, False]
    assert all(len(text) == 16 * 1024 for _, _, text in lines[:3])
    assert b"".join(text for _, _, text in lines) == payload


def test_copier_goes_on_until_both_streams_close(tmp_path: Path, copiers: Callable[[Path], Copier]) -> None:
    log = tmp_path / "c.log"
    c = copiers(log)
    os.write(c.out, b"a\n")
    c.close(c.out)
    os.write(c.err, b"b\n")
    c.pump()
    assert list(c.log.streams.values()) == [Stream.STDERR]
    os.write(c.err, b"c\n")
    c.finish()
    assert read_log(log) == [("stdout", False, b"a"), ("stderr", False, b"b"), ("stderr", False, b"c")]


def test_copier_reopens_after_rename(tmp_path: Path, copiers: Callable[[Path], Copier]) -> None:
    log = tmp_path / "c.log"
    c = copiers(log)
    os.write(c.out, b"before\n")
    c.pump()
    log.rename(tmp_path / "c.log.1")
    os.write(c.out, b"late\n")  # still to the renamed file: the copier has not been told
    c.pump()
    c.log.file.reopen()
    os.write(c.out, b"after\n")
    os.write(c.err, b"err after\n")
    c.finish()
    assert read_log(tmp_path / "c.log.1") == [("stdout", False, b"before"), ("stdout", False, b"late")]
    assert sorted(read_log(log)) == [("stderr", False, b"err after"), ("stdout", False, b"after")]


def test_copier_drops_lines_when_disk_full(copiers: Callable[[Path], Copier],
                                           capfd: pytest.CaptureFixture[str]) -> None:
    # /dev/full fails every write with ENOSPC; the copier must keep draining the pipes.
    c = copiers(Path("/dev/full"))
    for i in range(2000):  # far more than a pipe holds: copied as it comes, or we would block
        os.write(c.out, b"line %d ................................................\n" % i)
        if i % 100 == 0:
            c.pump()
    c.finish()
    said = capfd.readouterr().err
    assert said.count("\n") == 1 and "No space left on device" in said and "dropping" in said


def test_copier_without_its_log_directory_drops_lines(tmp_path: Path, copiers: Callable[[Path], Copier],
                                                      capfd: pytest.CaptureFixture[str]) -> None:
    c = copiers(tmp_path / "missing" / "c.log")
    os.write(c.out, b"lost\n")
    c.finish()
    said = capfd.readouterr().err
    assert "missing/c.log" in said and "dropping" in said


# -- follow --------------------------------------------------------------------------------

def test_follow_across_rotation(tmp_path: Path) -> None:
    log = tmp_path / "c.log"
    done = threading.Event()

    def writer() -> None:
        with open(log, "ab", buffering=0) as f:
            f.write(b"one\n")
            time.sleep(0.05)
            log.rename(tmp_path / "c.log.1")
            time.sleep(0.05)
            f.write(b"two\n")  # late lines into the renamed file still count
        time.sleep(0.05)
        with open(log, "ab", buffering=0) as f:
            f.write(b"thr")
            time.sleep(0.05)
            f.write(b"ee\nfour")
        done.set()

    t = threading.Thread(target=writer)
    t.start()
    try:
        got = list(follow(str(log), until=done.is_set, poll_interval=0.01))
    finally:
        t.join()
    assert got == [b"one\n", b"two\n", b"three\n", b"four"]


def test_follow_waits_for_the_file_and_sees_truncation(tmp_path: Path) -> None:
    log = tmp_path / "c.log"
    assert list(follow(str(log), until=lambda: True)) == []
    log.write_bytes(b"a\nb\n")
    lines = follow(str(log), poll_interval=0.01)
    try:
        assert [next(lines), next(lines)] == [b"a\n", b"b\n"]
        with open(log, "r+b") as f:
            f.truncate(0)
            f.write(b"c\n")
        assert next(lines) == b"c\n"
    finally:
        lines.close()
