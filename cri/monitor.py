"""The container monitor: one process, started with the service, that creates the CRI
containers and stays their parent. It copies their output into their CRI logs, reaps their
inits and writes their exit files: CRI-O's conmon, for every container at once.

A container must outlive the daemon (kubelet restarts it, an upgrade replaces it), keep its
logs flowing meanwhile, and still report its exit code afterwards, so the monitor is not the
daemon: it is a fork-server job that runs in a session of its own and listens on
<state_root>/monitors/<pid>.sock (monitor_client.py is the daemon's side):

    {"op": "create", "args": {...}}   a thread runs Runtime.create with the container's
                                      stdout and stderr on two pipes; the init is the
                                      monitor's child → {"pid", "monitor_pid"}
    {"op": "prepare", "args": {...}}  CreateContainer, before its snapshot and spec: a thread
                                      runs Runtime.prepare (the cgroup, a process in its
                                      cgroup2 part); the create that follows uses them → {"ok"}
    {"op": "discard", "id"}           that create will not come → {"ok"}
    {"op": "reopen", "id"}            ReopenContainerLog → {"ok"}
    {"op": "release", "id", "timeout"} RemoveContainer: the reply comes once the container's
                                      init is reaped and its pipes are at EOF, or at the
                                      timeout, when what is left unread is dropped
    {"op": "attach", "id"}            a copy of the container's stdin (a pipe's write end, or its
                                      pty master) for an Attach session → {"stdin"}
    {"op": "close_stdin", "id"}       stdin_once: the first Attach ended; a pipe is closed (a
                                      terminal stays: the session typed ^D) → {"ok"}
    {"op": "detach"}                  the daemon is stopping → {"containers": N}

Why one monitor for all the containers, not one per container (CRI-O) or per pod
(containerd's shim): a Python process writes to about 1.5 MB of its pages even as a fork that
shares all it can, and a create in a fresh fork pays for copying every page it touches
(7 to 10 ms of a CreateContainer, measured). Here a create runs in a long-lived process
with a warm Runtime (runtime/prespawn.py): its container processes are made ahead of time,
or, for a cgroup with a cgroup2 part, cloned into it with the plan by a small prespawner.

What that costs: the monitor holds every container's output and exit status. If it dies,
the containers' output has no reader any more (a write to stdout or stderr fails, and kills
a process that does not handle SIGPIPE) and their exit codes are lost (the service reports
them exited with an unknown status once the runtime says they are stopped). So it runs none
of the containers' code and parses nothing of their output beyond splitting lines; an error
in handling one container or request is written to monitor.log and the loop goes on; each
create runs in a thread of its own, so one stuck in the kernel (a hung mount) holds up only
itself. It needs about three fds per container, four with a terminal (docs/skiff-cri.service
raises the limit).

Each daemon start starts a monitor of its own. An earlier one (the daemon was restarted or
upgraded) goes on for the containers it has, answers requests about them on its socket, and
exits once it has none left. The daemon keeps nothing in memory about them: the exit file is
the truth about an exited init, and the runtime's own state (runtime/state.py) about a live
one.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import queue
import select
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import setproctitle

from skiff.cri.log_copier import ContainerLog, Stream, write_exit_file
from skiff.errors import FailedPrecondition, InvalidArgument
from skiff.runtime import libc
from skiff.runtime.container import PREPARED_FOR, Runtime
from skiff.runtime.forkserver import Worker, error_message, receive_message, send_message

MONITOR_TITLE = "skiff-monitor"


@dataclass(frozen=True, slots=True, kw_only=True)
class ContainerExit:
    exit_code: int
    signal: int
    finished_at: int  # nanoseconds since the epoch


def read_exit(path: str) -> ContainerExit | None:
    """The exit file the monitor wrote, or None while the init runs (or if it never ran)."""
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read())
        return ContainerExit(exit_code=int(data["exit_code"]), signal=int(data["signal"]),
                             finished_at=int(data["finished_at"]))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as e:
        raise FailedPrecondition(f"exit file {path}: unreadable: {e}") from e


def socket_path(state_root: str, pid: int) -> str:
    return os.path.join(state_root, "monitors", f"{pid}.sock")


def serve(worker: Worker) -> None:
    """Job "monitor": args state_root, runtime_root, cgroup_parent. Replies {"pid"} once it
    listens, then monitors until the daemon has detached (or its end of this job's socket
    closed) and no container is left."""
    a = worker.args
    os.setsid()  # the daemon's process group and terminal are not the containers'
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # a daemon gone mid-reply is an EPIPE, not our end
    directory = os.path.join(a["state_root"], "monitors")
    os.makedirs(directory, mode=0o700, exist_ok=True)
    notes = os.open(os.path.join(directory, "monitor.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
                    0o600)
    devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    os.dup2(devnull, 0)
    os.dup2(notes, 1)
    os.dup2(notes, 2)
    # Whatever else this fork inherited (the fork server's and the daemon's files) is not ours.
    libc.close_all_but({worker.sock.fileno(), devnull})
    path = socket_path(a["state_root"], os.getpid())
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # a dead monitor's, whose pid this is now
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(path)
    os.chmod(path, 0o600)
    listener.listen(64)
    setproctitle.setproctitle(MONITOR_TITLE)
    # In the main thread: the processes it makes ahead of time die with the thread that made them.
    runtime = Runtime(a["runtime_root"], cgroup_parent=a.get("cgroup_parent"), warm=1)
    try:
        worker.reply({"pid": os.getpid()})
        _Monitor(listener, worker.sock, runtime, devnull).run()
    finally:
        runtime.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _note(text: str) -> None:
    """A line in monitor.log (its stderr); a full disk loses it, nothing more."""
    with contextlib.suppress(OSError):
        os.write(2, f"{time.strftime('%Y-%m-%dT%H:%M:%S')} skiff-monitor: {text}\n".encode(errors="replace"))


@dataclass(eq=False)
class _Container:
    id: str
    init: int
    pidfd: int  # -1 once the init is reaped
    log: ContainerLog
    exit_file: str
    releases: list[tuple[socket.socket, float]] = field(default_factory=list)  # (reply to, deadline)
    stdin: int = -1  # the write end of its stdin, for Attach: a pipe's, or its terminal's master
    terminal: bool = False  # it runs on a pty (CRI tty) whose master this monitor holds

    @property
    def done(self) -> bool:
        return self.pidfd < 0 and not self.log.streams


class _Monitor:
    """The main thread's loop: requests, the containers' pipes and pidfds, and the creates
    the threads finished (handed over on a queue, with a byte on a pipe to wake the poll)."""

    def __init__(self, listener: socket.socket, owner: socket.socket, runtime: Runtime, devnull: int) -> None:
        self.listener = listener
        self.owner = owner
        self.runtime = runtime
        self.devnull = devnull
        self.containers: dict[str, _Container] = {}
        self.releasing: dict[str, _Container] = {}  # those with a release waiting: the loop looks at these only
        self.creating = 0
        self.detached = False
        self.created: queue.SimpleQueue[tuple[socket.socket, dict[str, Any], _Container | None]] = queue.SimpleQueue()
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.poller = select.epoll()  # a wake-up costs what is ready, not every container's fds (poll)
        self.handlers: dict[int, Callable[[], None]] = {}

    def watch(self, fd: int, handler: Callable[[], None]) -> None:
        self.poller.register(fd, select.EPOLLIN)
        self.handlers[fd] = handler

    def unwatch(self, fd: int) -> None:
        self.poller.unregister(fd)
        del self.handlers[fd]

    def run(self) -> None:
        self.watch(self.listener.fileno(), self._accept)
        self.watch(self.owner.fileno(), self._owner_closed)
        self.watch(self.wake_r, self._finish_creates)
        while not (self.detached and not self.containers and not self.creating):
            for fd, _ in self.poller.poll(self._timeout()):
                handler = self.handlers.get(fd)  # an earlier handler of this round may have unwatched it
                if handler is not None:
                    self._guarded(handler)
            self._guarded(self._expire_releases)
            self._guarded(self.runtime.discard_prepared)  # a create that never came (its daemon died)

    def _guarded(self, handler: Callable[[], None]) -> None:
        """One container's or request's trouble (a full disk, no fds left) must not end the
        loop that every other container's output depends on."""
        try:
            handler()
        except Exception as e:  # noqa: BLE001 - noted, and the loop goes on
            _note(f"{type(e).__name__}: {e}")
            if isinstance(e, OSError) and e.errno in (errno.EMFILE, errno.ENFILE):
                time.sleep(0.05)  # out of fds: the listener stays readable; do not spin

    # -- requests ---------------------------------------------------------------------------

    def _accept(self) -> None:
        with contextlib.suppress(BlockingIOError, ConnectionAbortedError):
            conn, _ = self.listener.accept()
            self.watch(conn.fileno(), functools.partial(self._request, conn))

    def _owner_closed(self) -> None:
        # the daemon never writes on the job's socket: readable means it closed
        self.unwatch(self.owner.fileno())
        self.owner.close()
        self.detached = True

    def _request(self, conn: socket.socket) -> None:
        self.unwatch(conn.fileno())
        try:
            message, fds = receive_message(conn)
            for fd in fds:
                os.close(fd)
            if message is None:
                conn.close()
                return
            op = message.get("op")
            if op in ("create", "prepare"):
                threading.Thread(target=self._create if op == "create" else self._prepare,
                                 args=(conn, message.get("args") or {}), name=op, daemon=True).start()
                self.creating += 1
                return
            container = self.containers.get(str(message.get("id")))
            if op == "discard":
                self.runtime.discard(str(message.get("id")))
                self._reply(conn, {"ok": True})
            elif op == "reopen":
                if container is not None:
                    container.log.file.reopen()
                self._reply(conn, {"ok": container is not None})
            elif op == "release":
                if container is None:
                    self._reply(conn, {})
                else:
                    container.releases.append((conn, time.monotonic() + float(message.get("timeout", 5.0))))
                    self.releasing[container.id] = container
            elif op == "attach":   # a copy of the container's stdin, for an Attach session to write
                if container is None or container.stdin < 0:
                    self._reply(conn, {"stdin": False})
                else:
                    self._reply(conn, {"stdin": True}, fds=[container.stdin])
            elif op == "close_stdin":   # stdin_once: the first attach has ended
                # (a terminal is not closed: the session typed its EOF, ^D, into it)
                if container is not None and container.stdin >= 0 and not container.terminal:
                    os.close(container.stdin)
                    container.stdin = -1
                self._reply(conn, {"ok": True})
            elif op == "detach":
                self.detached = True
                self._reply(conn, {"containers": len(self.containers) + self.creating})
            else:
                raise InvalidArgument(f"container monitor: unknown request {op!r}")
        except Exception as e:  # the caller gets it; the monitor goes on for the others
            self._reply(conn, error_message(e))

    def _reply(self, conn: socket.socket, message: dict[str, Any], fds: list[int] | None = None) -> None:
        try:
            send_message(conn, message, fds or [])
        except Exception as e:  # noqa: BLE001 - the caller is gone, or the reply too big
            _note(f"reply {message!r:.200}: {e}")
        conn.close()

    # -- create (in a thread of its own) --------------------------------------------------------

    def _create(self, conn: socket.socket, a: dict[str, Any]) -> None:
        """args container_id, bundle, log_path, exit_file. Whatever happens, the main loop
        gets a reply to send (the daemon waits for it without a timeout)."""
        container = None
        try:
            container = self._create_container(a)
            reply: dict[str, Any] = {"pid": container.init, "monitor_pid": os.getpid()}
        except BaseException as e:
            reply = error_message(e)
        self.created.put((conn, reply, container))
        os.write(self.wake_w, b"\0")

    def _prepare(self, conn: socket.socket, a: dict[str, Any]) -> None:
        """args container_id, cgroups_path, new_namespaces (OCI type names); replied from
        the main loop, as a create is."""
        from skiff.oci.spec import LinuxNamespaceType

        try:
            self.runtime.prepare(str(a["container_id"]), cgroups_path=a.get("cgroups_path"),
                                 new_namespaces=tuple(LinuxNamespaceType(n) for n in a.get("new_namespaces", ())))
            reply: dict[str, Any] = {"ok": True}
        except BaseException as e:
            reply = error_message(e)
        self.created.put((conn, reply, None))
        os.write(self.wake_w, b"\0")

    def _create_container(self, a: dict[str, Any]) -> _Container:
        """args as `_create`'s, and stdin (bool): the container reads a pipe whose write end
        this monitor keeps for Attach (kept open, so that its reads wait rather than end); or
        terminal (bool): the container's init makes a pty (its spec says process.terminal)
        and sends the master here, which its output is read from and Attach writes to."""
        if a.get("terminal"):
            return self._create_on_terminal(a)
        container_id, bundle, log_path, exit_file = (str(a[k]) for k in ("container_id", "bundle", "log_path",
                                                                          "exit_file"))
        ours: list[int] = []     # closed if the create fails
        theirs: list[int] = []   # the init has its copies: closed whatever happens, so that EOF
        log = None               # comes when it and its children are gone
        try:
            out_r, out_w = os.pipe()
            ours.append(out_r)
            theirs.append(out_w)
            err_r, err_w = os.pipe()
            ours.append(err_r)
            theirs.append(err_w)
            in_r, in_w = os.pipe2(os.O_CLOEXEC) if a.get("stdin") else (self.devnull, -1)
            if in_w >= 0:
                ours.append(in_w)
                theirs.append(in_r)
            log = ContainerLog(log_path, {out_r: Stream.STDOUT, err_r: Stream.STDERR})
            ours = [fd for fd in ours if fd not in (out_r, err_r)]   # the log's now
            init, pidfd = self._create_init(container_id, bundle, stdio=(in_r, out_w, err_w))
            return _Container(id=container_id, init=init, pidfd=pidfd, log=log, exit_file=exit_file, stdin=in_w)
        except BaseException:
            if log is not None:
                log.close()
            for fd in ours:
                os.close(fd)
            raise
        finally:
            for fd in theirs:
                os.close(fd)

    def _create_on_terminal(self, a: dict[str, Any]) -> _Container:
        from skiff.runtime import console

        container_id, bundle, log_path, exit_file = (str(a[k]) for k in ("container_id", "bundle", "log_path",
                                                                          "exit_file"))
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        with ours, theirs:
            init, pidfd = self._create_init(container_id, bundle, stdio=(self.devnull,) * 3,
                                            console_fd=theirs.fileno())
            master, log = -1, None
            try:
                master = console.receive_master(ours)
                # a pty's output is copied as it comes, not by the line: an attached client
                # sees a shell's prompt (conmon writes its partial lines the same way)
                log = ContainerLog(log_path, {master: Stream.STDOUT}, flush_partial=True)
                return _Container(id=container_id, init=init, pidfd=pidfd, log=log, exit_file=exit_file,
                                  stdin=os.dup(master), terminal=True)
            except BaseException:
                if log is not None:
                    log.close()   # the master with it
                elif master >= 0:
                    os.close(master)
                os.close(pidfd)
                self.runtime.delete(container_id, force=True)
                raise

    def _create_init(self, container_id: str, bundle: str, *, stdio: tuple[int, int, int],
                     console_fd: int | None = None) -> tuple[int, int]:
        """(the init's pid, its pidfd)"""
        state = self.runtime.create(container_id, bundle, stdio=stdio, console_fd=console_fd)
        try:
            return state.pid, os.pidfd_open(state.pid)
        except BaseException:
            self.runtime.delete(container_id, force=True)
            raise

    def _finish_creates(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self.wake_r, 512):
                pass
        while True:
            try:
                conn, reply, container = self.created.get_nowait()
            except queue.Empty:
                return
            self.creating -= 1
            if container is not None:
                self.containers[container.id] = container
                for fd in container.log.streams:
                    self.watch(fd, functools.partial(self._copy, container, fd))
                self.watch(container.pidfd, functools.partial(self._reap, container))
            self._reply(conn, reply)

    # -- the containers ---------------------------------------------------------------------------

    def _copy(self, container: _Container, fd: int) -> None:
        container.log.copy(fd)
        if fd not in container.log.streams:
            self.unwatch(fd)
            self._end_if_done(container)

    def _reap(self, container: _Container) -> None:
        self.unwatch(container.pidfd)
        os.close(container.pidfd)
        container.pidfd = -1
        if container.stdin >= 0:   # nobody is left to read it
            os.close(container.stdin)
            container.stdin = -1
        _, status = os.waitpid(container.init, 0)
        try:
            write_exit_file(container.exit_file, status, time.time_ns())
        except OSError as e:  # its bundle removed already (a forced release): nobody asks any more
            _note(f"container {container.id}: exit file: {e}")
        self._end_if_done(container)

    def _end_if_done(self, container: _Container) -> None:
        if not container.done:
            return
        container.log.close()
        del self.containers[container.id]
        self.releasing.pop(container.id, None)
        for conn, _ in container.releases:
            self._reply(conn, {})

    def _timeout(self) -> float:
        """Seconds until the next release expires, or until it is time to look for what
        Runtime.prepare made and no create took."""
        deadlines = [d for c in self.releasing.values() for _, d in c.releases]
        return max(0.0, min(deadlines) - time.monotonic() + 0.001) if deadlines else PREPARED_FOR

    def _expire_releases(self) -> None:
        """A release past its timeout: something outside the container holds its pipes
        open. Stop copying them; the init, if not reaped yet, is still waited for."""
        now = time.monotonic()
        for container in list(self.releasing.values()):
            due = [conn for conn, deadline in container.releases if deadline <= now]
            if not due:
                continue
            for fd in list(container.log.streams):
                self.unwatch(fd)
            container.log.close()
            container.releases = [(c, d) for c, d in container.releases if d > now]
            if not container.releases:
                del self.releasing[container.id]
            for conn in due:
                self._reply(conn, {})
            self._end_if_done(container)
