"""runtime/forkserver.py: jobs run in forked workers, replies and fds come back, errors keep
their category, and the server goes away with its caller."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator

import pytest

from skiff.errors import InvalidArgument, SkiffError
from skiff.runtime.forkserver import ForkServer, Worker


def echo(worker: Worker) -> None:
    worker.reply({"args": worker.args, "pid": os.getpid()})


def write_to_fd(worker: Worker) -> None:
    os.write(worker.fds[0], worker.args["text"].encode())
    r, w = os.pipe()
    os.write(w, b"from the worker")
    os.close(w)
    worker.reply({"ok": True}, fds=[r])


def refuse(worker: Worker) -> None:
    raise InvalidArgument("process.args: must be a non-empty list")


def crash(worker: Worker) -> None:
    raise KeyError("boom")


def vanish(worker: Worker) -> None:
    os._exit(0)


JOBS = {"echo": echo, "write_to_fd": write_to_fd, "refuse": refuse, "crash": crash, "vanish": vanish}


@pytest.fixture
def server() -> Iterator[ForkServer]:
    fs = ForkServer.start(JOBS)
    try:
        yield fs
    finally:
        fs.stop()


def test_a_job_runs_in_its_own_process_and_replies(server: ForkServer) -> None:
    reply = server.run("echo", {"a": [1, 2]})
    assert reply["args"] == {"a": [1, 2]}
    assert reply["pid"] not in (os.getpid(), server.pid)


def test_fds_go_both_ways(server: ForkServer) -> None:
    r, w = os.pipe()
    try:
        with server.call("write_to_fd", {"text": "to the caller"}, fds=[w]) as worker:
            os.close(w)
            reply, fds = worker.receive(timeout=10)
        assert reply == {"ok": True} and len(fds) == 1
        assert os.read(r, 100) == b"to the caller"
        assert os.read(fds[0], 100) == b"from the worker"
        os.close(fds[0])
    finally:
        os.close(r)


def test_errors_keep_their_category_and_message(server: ForkServer) -> None:
    with pytest.raises(InvalidArgument, match="process.args: must be a non-empty list"):
        server.run("refuse")
    with pytest.raises(SkiffError, match="KeyError: 'boom'") as err:
        server.run("crash")
    assert type(err.value) is SkiffError
    with pytest.raises(InvalidArgument, match="unknown job 'nope'"):
        server.run("nope")
    with pytest.raises(SkiffError, match="exited without replying"):
        server.run("vanish")


def test_calls_from_many_threads(server: ForkServer) -> None:
    results: list[int] = []

    def call(i: int) -> None:
        results.append(server.run("echo", {"i": i})["args"]["i"])

    threads = [threading.Thread(target=call, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == list(range(16))


def test_the_server_exits_when_its_caller_goes() -> None:
    fs = ForkServer.start(JOBS)
    pid = fs.pid
    fs.stop()  # closes the control socket and reaps: the server saw EOF and exited
    assert not os.path.exists(f"/proc/{pid}")


def host_refuses(worker: Worker) -> None:
    open("/proc/no-such-file")


def test_an_os_error_is_the_hosts_state_not_a_bug() -> None:
    from skiff.errors import FailedPrecondition

    fs = ForkServer.start({"refused": host_refuses})
    try:
        with pytest.raises(FailedPrecondition, match="/proc/no-such-file: no such file or directory"):
            fs.run("refused")
    finally:
        fs.stop()
