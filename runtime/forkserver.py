"""A fork server: one single-threaded process, started before any thread, that forks a
worker for each request, so a threaded program (the gRPC daemon) never calls fork itself.

gRPC Python's core is threaded and supports fork only client-side (grpc
`doc/fork_support.md`); a fork from a threaded process may copy a lock some other thread
held (pyroute2 #1213, python/cpython#100228). The server is forked while the caller is still
single-threaded and then only forks itself.

    caller thread                     fork server (one thread)          worker (forked)
    socketpair (ours, theirs)
    [job, args] + fds (theirs, ...) ─► recvmsg, fork ───────────────────► jobs[job](Worker)
    close theirs                       close the fds, reap children       │
    WorkerCall.receive() ◄──────────────────── Worker.reply(message, fds) ┘
                                                 then exits, or goes on serving (the container monitor)

Every message is one SOCK_SEQPACKET packet: JSON, with fds as SCM_RIGHTS. A job that raises
sends {"error": {"kind": <skiff error category>, "message": ...}} and exits 1; the caller
raises that category again, so gRPC codes survive the trip. The server exits when the
caller's end of the control socket closes (the daemon died), leaving its workers running:
a container monitor must outlive the daemon.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import select
import signal
import socket
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from skiff import errors
from skiff.runtime import libc

MAX_MESSAGE = 64 * 1024
MAX_FDS = 16


class Worker:
    """A job's side of its call: the request and a way to answer."""

    def __init__(self, sock: socket.socket, args: dict[str, Any], fds: list[int]) -> None:
        self.sock = sock
        self.args = args
        self.fds = fds

    def reply(self, message: Mapping[str, Any], fds: Sequence[int] = ()) -> None:
        send_message(self.sock, message, fds)


Job = Callable[[Worker], None]


def send_message(sock: socket.socket, message: Mapping[str, Any], fds: Sequence[int] = ()) -> None:
    """One message: a SOCK_SEQPACKET packet of JSON, with `fds` as SCM_RIGHTS."""
    data = json.dumps(message).encode()
    if len(data) > MAX_MESSAGE:
        raise errors.InvalidArgument(f"fork server message of {len(data)} bytes: over {MAX_MESSAGE}")
    socket.send_fds(sock, [data], list(fds))


def receive_message(sock: socket.socket) -> tuple[dict[str, Any] | None, list[int]]:
    """The next message and its fds (close-on-exec); None at EOF."""
    data, fds, _, _ = socket.recv_fds(sock, MAX_MESSAGE, MAX_FDS)
    for fd in fds:
        os.set_inheritable(fd, False)
    if not data:
        for fd in fds:
            os.close(fd)
        return None, []
    message = json.loads(data)
    if not isinstance(message, dict):
        raise errors.SkiffError(f"fork server: a message must be a JSON object, got {data[:80]!r}")
    return message, fds


def error_message(error: BaseException) -> dict[str, Any]:
    """`error` as a reply: its skiff category and message (notes included)."""
    kind = next((cls.__name__ for cls in type(error).__mro__
                 if cls.__module__ == errors.__name__ and cls is not errors.SkiffError), "SkiffError")
    text = str(error) or type(error).__name__
    if isinstance(error, OSError):
        # the host refused something (a file, a limit): its state, not a skiff bug
        kind, text = "FailedPrecondition", f"{error.filename or 'system call'}: {(error.strerror or str(error)).lower()}"
    elif not isinstance(error, errors.SkiffError):
        text = f"{type(error).__name__}: {text}"
    notes = getattr(error, "__notes__", None) or []
    return {"error": {"kind": kind, "message": "; ".join([text, *notes])}}


def raise_error(error: Mapping[str, Any]) -> None:
    """The inverse of `error_message`: raise that category again."""
    cls = getattr(errors, str(error.get("kind")), errors.SkiffError)
    if not (isinstance(cls, type) and issubclass(cls, errors.SkiffError)):
        cls = errors.SkiffError
    raise cls(str(error.get("message", "worker failed")))


class WorkerCall:
    """The caller's end of one worker: receive its replies, send it more."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def receive(self, timeout: float | None = None) -> tuple[dict[str, Any], list[int]]:
        """The worker's next reply; its error re-raised; EOF (the worker died without a
        word) is an error too. `timeout` None waits for ever."""
        self.sock.settimeout(timeout)
        try:
            message, fds = receive_message(self.sock)
        except TimeoutError:
            raise errors.Unavailable(f"fork server worker: no reply within {timeout:g}s") from None
        if message is None:
            raise errors.SkiffError("fork server worker exited without replying")
        if "error" in message:
            for fd in fds:
                os.close(fd)
            raise_error(message["error"])
        return message, fds

    def send(self, message: Mapping[str, Any], fds: Sequence[int] = ()) -> None:
        send_message(self.sock, message, fds)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> WorkerCall:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class ForkServer:
    """The caller's handle on a running fork server. `start` it while single-threaded."""

    def __init__(self, control: socket.socket, pid: int) -> None:
        self._control = control
        self._lock = threading.Lock()
        self.pid = pid

    @classmethod
    def start(cls, jobs: Mapping[str, Job]) -> ForkServer:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                ours.close()
                _serve(theirs, dict(jobs))
                code = 0
            finally:
                os._exit(code)
        theirs.close()
        return cls(ours, pid)

    def call(self, job: str, args: Mapping[str, Any] | None = None, fds: Sequence[int] = ()) -> WorkerCall:
        """Fork a worker running `job`; the fds are passed to it (the caller keeps its own)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            with self._lock:
                send_message(self._control, {"job": job, "args": dict(args or {})}, [theirs.fileno(), *fds])
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        return WorkerCall(ours)

    def run(self, job: str, args: Mapping[str, Any] | None = None, fds: Sequence[int] = (),
            timeout: float | None = None) -> dict[str, Any]:
        """`call` for a job that answers once and passes no fds back."""
        with self.call(job, args, fds) as worker:
            reply, got = worker.receive(timeout)
            for fd in got:
                os.close(fd)
            return reply

    def stop(self) -> None:
        """Close the control socket (the server exits on EOF) and reap the server."""
        self._control.close()
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass


def _serve(control: socket.socket, jobs: dict[str, Job]) -> None:
    """The server's loop: a request goes to the idle worker, forked before the request
    came, and a new idle worker is forked once it is on its way (or, without one, the
    request forks its worker). EOF on `control` ends it."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_IGN)  # the daemon's Ctrl-C is the daemon's to handle
    # Workers share this process's pages until they write to them; the collector must not
    # be what writes (it would walk, and so copy, every object): frozen objects it skips.
    gc.freeze()
    poller = select.poll()
    poller.register(control, select.POLLIN)
    idle: tuple[socket.socket, int] | None = None
    try:
        while True:
            if idle is None:
                idle = _fork_idle(control, jobs)
            events = poller.poll(500)
            _reap()
            if not events:
                continue
            try:
                message, fds = receive_message(control)
            except (ValueError, errors.SkiffError):
                continue  # not a request (a caller's bug): the server must go on for the others
            if message is None:
                return
            if not fds:
                continue
            try:
                if idle is None:
                    raise OSError("no idle worker")
                send_message(idle[0], message, fds)
            except (OSError, errors.SkiffError):
                _fork_worker(control, jobs, message, fds)
            finally:
                if idle is not None:
                    idle[0].close()  # the worker has the request, or died: either way, a new one
                    idle = None
                for fd in fds:
                    os.close(fd)
    finally:
        if idle is not None:
            idle[0].close()  # EOF: the idle worker exits; reaped here, not left to init
            with contextlib.suppress(ChildProcessError):
                os.waitpid(idle[1], 0)


def _fork_worker(control: socket.socket, jobs: dict[str, Job], message: dict[str, Any], fds: list[int]) -> None:
    try:
        pid = libc.fork()
    except OSError as e:
        # Out of pids (the service's TasksMax, pids.max) or memory: this request fails,
        # as data on its own socket; the server stays for the next one.
        with contextlib.suppress(OSError), socket.socket(fileno=os.dup(fds[0])) as caller:
            send_message(caller, error_message(errors.Unavailable(f"fork server: fork: {e.strerror or e}")))
        return
    if pid == 0:
        _work(control, jobs, message, fds)  # never returns


def _fork_idle(control: socket.socket, jobs: dict[str, Job]) -> tuple[socket.socket, int] | None:
    """A worker forked ahead of the next request, which it waits for on its own socket: a
    request then costs a message, not a fork. None if the fork fails (requests fork)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        pid = libc.fork()
    except OSError:
        ours.close()
        theirs.close()
        return None
    if pid == 0:
        code = 1
        try:
            ours.close()
            message, fds = receive_message(theirs)
            theirs.close()
            if message is None:
                code = 0
            else:
                _work(control, jobs, message, fds)  # never returns
        finally:
            os._exit(code)
    theirs.close()
    return ours, pid


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _work(control: socket.socket, jobs: dict[str, Job], message: dict[str, Any], fds: list[int]) -> None:
    code = 1
    try:
        control.close()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_DFL)
        sock = socket.socket(fileno=fds[0])
        worker = Worker(sock, message.get("args") or {}, fds[1:])
        try:
            job = jobs.get(str(message.get("job")))
            if job is None:
                raise errors.InvalidArgument(f"fork server: unknown job {message.get('job')!r}")
            job(worker)
            code = 0
        except BaseException as e:  # the caller gets every failure, as data
            try:
                send_message(sock, error_message(e))
            except OSError:
                pass
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)
