"""The daemon's side of the container monitor (monitor.py): its own monitor, started with the
service and again if it died, and requests to any monitor by pid, an earlier daemon's too."""

from __future__ import annotations

import contextlib
import os
import select
import socket
import threading
from typing import Any

from skiff.cri.monitor import socket_path
from skiff.errors import SkiffError, Unavailable
from skiff.runtime.container import proc_start_time
from skiff.runtime.forkserver import ForkServer, WorkerCall

START_TIMEOUT = 30.0


class Monitors:
    def __init__(self, forkserver: ForkServer, *, state_root: str, runtime_root: str,
                 cgroup_parent: str | None) -> None:
        self._forkserver = forkserver
        self._args = {"state_root": state_root, "runtime_root": runtime_root, "cgroup_parent": cgroup_parent}
        self.state_root = state_root
        self._lock = threading.Lock()
        self._owner: WorkerCall | None = None  # the job's socket: closed, it tells the monitor we are gone
        self.pid = 0
        self._start_time: int | None = None

    @staticmethod
    def alive(pid: int, start_time: int | None) -> bool:
        """Is `pid` still the monitor that started at `start_time` (a pid may be reused)?"""
        return bool(pid) and proc_start_time(pid) == start_time

    def current(self) -> int:
        """This daemon's monitor, started if there is none (or it died)."""
        with self._lock:
            if not self.alive(self.pid, self._start_time):
                if self._owner is not None:
                    self._owner.close()
                call = self._forkserver.call("monitor", self._args)
                try:
                    reply, _ = call.receive(START_TIMEOUT)
                except BaseException:
                    call.close()
                    raise
                self._owner, self.pid = call, int(reply["pid"])
                self._start_time = proc_start_time(self.pid)
            return self.pid

    def request(self, pid: int, message: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        """One request to monitor `pid`, on a connection of its own."""
        with self._send(pid, message) as call:
            return _reply(call, timeout)

    def _send(self, pid: int, message: dict[str, Any]) -> WorkerCall:
        call = WorkerCall(socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET))
        try:
            call.sock.connect(socket_path(self.state_root, pid))
            call.send(message)
        except OSError as e:
            call.close()
            raise Unavailable(f"container monitor {pid}: {e.strerror or e}") from None
        return call

    def prepare(self, args: dict[str, Any]) -> Preparing:
        """Ask this daemon's monitor to make a container's cgroup and first process
        (Runtime.prepare: args container_id, cgroups_path, new_namespaces) while the caller
        makes the snapshot and the spec; `create` then uses them."""
        pid = self.current()
        try:
            call: WorkerCall | None = self._send(pid, {"op": "prepare", "args": args})
        except Unavailable:
            call = None  # the create starts a monitor again and makes its own
        return Preparing(self, pid, str(args["container_id"]), call)

    def create(self, args: dict[str, Any]) -> dict[str, Any]:
        # no timeout: given up on, the monitor would go on to create a container nobody owns
        return self.request(self.current(), {"op": "create", "args": args})

    def reopen(self, pid: int, container_id: str) -> bool:
        return bool(self.request(pid, {"op": "reopen", "id": container_id}, timeout=10).get("ok"))

    def attach_stdin(self, pid: int, container_id: str) -> int | None:
        """A copy of the write end of the container's stdin (the caller closes it); None when
        the container was created without stdin or has exited."""
        with self._send(pid, {"op": "attach", "id": container_id}) as call:
            reply, fds = call.receive(10)
        if not reply.get("stdin"):
            for fd in fds:
                os.close(fd)
            return None
        return fds[0]

    def close_stdin(self, pid: int, container_id: str) -> None:
        """The container's stdin ends (its monitor closes the write end it keeps)."""
        with contextlib.suppress(Unavailable, ConnectionError):
            self.request(pid, {"op": "close_stdin", "id": container_id}, timeout=10)

    def release(self, pid: int, container_id: str, timeout: float = 5.0) -> None:
        """Wait until monitor `pid` is done with the container: its init reaped, its output
        copied (or, past `timeout`, given up on). A monitor that is gone is done."""
        with contextlib.suppress(Unavailable, ConnectionError):
            self.request(pid, {"op": "release", "id": container_id, "timeout": timeout}, timeout=timeout + 10)

    def close(self, timeout: float = 5.0) -> None:
        """Detach from this daemon's monitor; if it had no container it exits, and this
        waits for that (a stopped service leaves no process of its own behind)."""
        with self._lock:
            if self._owner is None:
                return
            pid, owner, self._owner = self.pid, self._owner, None
            try:
                pidfd = os.pidfd_open(pid) if self.alive(pid, self._start_time) else -1
            except ProcessLookupError:
                pidfd = -1
            try:
                left = -1
                with contextlib.suppress(SkiffError, OSError):
                    left = int(self.request(pid, {"op": "detach"}, timeout=timeout).get("containers", -1))
                owner.close()
                if left == 0 and pidfd >= 0:
                    poller = select.poll()
                    poller.register(pidfd, select.POLLIN)
                    poller.poll(timeout * 1000)  # readable once it has exited
            finally:
                if pidfd >= 0:
                    os.close(pidfd)


def _reply(call: WorkerCall, timeout: float | None) -> dict[str, Any]:
    reply, fds = call.receive(timeout)
    for fd in fds:
        os.close(fd)
    return reply


class Preparing:
    """A prepare sent to monitor `pid` (Monitors.prepare), its reply not read yet."""

    def __init__(self, monitors: Monitors, pid: int, container_id: str, call: WorkerCall | None) -> None:
        self._monitors = monitors
        self.pid = pid
        self.container_id = container_id
        self._call = call

    def wait(self) -> None:
        """Until the monitor is done: the create must find what it made. A prepare that
        failed is no error: the create makes its own."""
        if self._call is not None:
            with self._call as call, contextlib.suppress(SkiffError, OSError):
                _reply(call, START_TIMEOUT)
            self._call = None

    def discard(self) -> None:
        """The create will not come: the monitor removes what it made."""
        self.wait()
        with contextlib.suppress(SkiffError, OSError):
            self._monitors.request(self.pid, {"op": "discard", "id": self.container_id}, timeout=START_TIMEOUT)
