"""The container lifecycle as runc has it: create, start, state, kill, delete, exec,
pause/resume, ps, stats, events. The CLI (runtime/cli/) is a thin layer over `Runtime`.

    create ──> created ──start──> running ──(init exits)──> stopped ──delete──> (gone)
                  │                  │ ^
                  │               pause│ │resume
                  │                  v │
                  │                 paused
                  └──────────delete (kills the init)──────────────────────────> (gone)

The status is not stored: it is read from the kernel each time (is the recorded init alive,
with the recorded start time; is exec.fifo still there; is the cgroup frozen).
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
import signal
import threading
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Iterator

from skiff.errors import FailedPrecondition, NotFound
from skiff.oci.spec import LinuxResources, Process, Spec
from skiff.runtime import console, libc
from skiff.runtime.cgroups import CgroupDriver, load_cgroup, open_cgroup
from skiff.runtime.state import EXEC_FIFO, ContainerRecord, StateStore
from skiff.runtime.trace import StartTrace, Trace
from skiff.runtime.undo import Undo

if TYPE_CHECKING:
    from skiff.oci.spec import LinuxNamespaceType
    from skiff.runtime.prespawn import Prespawner, Slot

OCI_VERSION = "1.2.0"
_spawner_lock = threading.Lock()
DEFAULT_ROOT = "/run/skiff-runc"


class Status(enum.StrEnum):
    CREATING = "creating"
    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True, kw_only=True)
class ContainerState:
    """What `state` prints: runc's JSON, plus whether the kernel OOM-killed a process."""

    id: str
    pid: int
    status: Status
    bundle: str
    rootfs: str
    created: str
    owner: str
    annotations: dict[str, str]
    oom_killed: bool = False

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "ociVersion": OCI_VERSION, "id": self.id, "pid": self.pid, "status": str(self.status),
            "bundle": self.bundle, "rootfs": self.rootfs, "created": self.created, "owner": self.owner,
        }
        if self.annotations:
            out["annotations"] = self.annotations
        if self.oom_killed:
            out["oomKilled"] = True
        return out

    def hook_state(self) -> bytes:
        """The runtime-spec State that hooks read on stdin."""
        state: dict[str, Any] = {"ociVersion": OCI_VERSION, "id": self.id, "status": str(self.status),
                                 "pid": self.pid, "bundle": self.bundle}
        if self.annotations:
            state["annotations"] = self.annotations
        return json.dumps(state).encode()


def proc_start_time(pid: int) -> int | None:
    """starttime of /proc/<pid>/stat, or None when the process is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat[stat.rindex(b")") + 2:].split()
    if fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])


def _now() -> str:
    seconds, nanoseconds = divmod(time.time_ns(), 10**9)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{nanoseconds:09d}Z"


def _reap(pid: int) -> int | None:
    """Collect the init's exit status if it is our child (run, or the library in-process)."""
    try:
        done, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return None
    return os.waitstatus_to_exitcode(status) if done else None


PREPARED_FOR = 60.0  # seconds that what `prepare` made waits for its create


@dataclass(eq=False)
class _Prepared:
    """What Runtime.prepare made for a create to come: the cgroup, and a slot waiting in its
    cgroup2 part (none without one, or without a prespawner)."""
    cgroups_path: str | None
    cgroup: CgroupDriver
    slot: Slot | None
    deadline: float

    def take_slot(self) -> Slot | None:
        slot, self.slot = self.slot, None
        return slot

    def discard(self) -> None:
        """Kill the slot, if not taken, and remove the cgroup (and the parents it made, when empty)."""
        from skiff.runtime.spawn import kill_and_reap

        slot = self.take_slot()
        if slot is not None:
            slot.sock.close()
            kill_and_reap([slot.pid])
        self.cgroup.destroy()


class Runtime:
    def __init__(self, root: str = DEFAULT_ROOT, *, cgroup_parent: str | None = None, warm: int = 0) -> None:
        """`warm`: for a long-lived caller that starts many containers, keep that many
        container processes made ahead of time for each kind of namespace set
        (runtime/prespawn.py), and keep the cgroup parents skiff makes for its containers
        instead of making them again for each; `close` ends the one and removes the other.
        Make it in a thread that lives as long as it: the processes made ahead of time die
        with that thread (PR_SET_PDEATHSIG follows the thread)."""
        self.store = StateStore(root)
        self.cgroup_parent = cgroup_parent
        self.warm = warm
        self.prespawner: Prespawner | None = None
        self.mount_template: int | None = None
        self._prepared: dict[str, _Prepared] = {}
        self._prepared_lock = threading.Lock()
        if warm:
            from skiff.runtime import mount_template
            from skiff.runtime.prespawn import Prespawner

            self.prespawner = Prespawner(warm)
            with contextlib.suppress(OSError):  # a kernel without open_tree: containers copy ours
                self.mount_template = mount_template.make()

    def _spawner(self) -> Prespawner | None:
        """Where container processes come from: a warm runtime's prespawner, and for a
        process with threads one made on its first start. A fork from a threaded process
        may copy a lock another thread held, and a raw clone3 leaves the child waiting for
        the interpreter lock a waiting thread asked for: a prespawner is one thread."""
        if self.prespawner is None and not libc.single_threaded():
            with _spawner_lock:
                if self.prespawner is None:
                    from skiff.runtime.prespawn import Prespawner

                    self.prespawner = Prespawner(0)
        return self.prespawner

    def close(self) -> None:
        self.discard_prepared(expired_only=False)
        if self.mount_template is not None:
            os.close(self.mount_template)
            self.mount_template = None
        if self.prespawner is not None:
            self.prespawner.close()
            self.prespawner = None
        if self.warm:
            self.warm = 0
            with contextlib.suppress(Exception):  # none made, or in use by other containers
                open_cgroup(container_id="_", cgroups_path=None, parent=self.cgroup_parent).release_parents()

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- create and start ------------------------------------------------------------------

    def create(self, container_id: str, bundle: str, *, console_socket: str | None = None,
               console_fd: int | None = None, pid_file: str | None = None, preserve_fds: int = 0,
               spec: Spec | None = None, stdio: tuple[int, int, int] | None = None) -> ContainerState:
        """Set up the container and leave its init waiting for `start`. On any failure
        nothing is left: no process, cgroup, state directory. `stdio`: the init's stdin,
        stdout and stderr, if not this process's (a caller with threads cannot lend it fds 0
        to 2)."""
        try:
            record = self._create(container_id, bundle, console_socket=console_socket, console_fd=console_fd,
                                  pid_file=pid_file, preserve_fds=preserve_fds, spec=spec, config=None,
                                  tracer=None, stdio=stdio)
        finally:
            self._refill()
        return ContainerState(id=record.id, pid=record.pid, status=Status.CREATED, bundle=record.bundle,
                              rootfs=record.rootfs, created=record.created, owner=record.owner,
                              annotations=record.annotations)

    def prepare(self, container_id: str, *, cgroups_path: str | None,
                new_namespaces: tuple[LinuxNamespaceType, ...] = ()) -> None:
        """Make ahead what a create of `container_id` will need whatever its spec says: its
        cgroup (`cgroups_path` as the spec's linux.cgroupsPath will be), and where that has a
        cgroup2 part, a process cloned into it with `new_namespaces` (the ones the spec will
        make, not join) to wait for its plan. For a caller that knows of a create before it
        has the bundle (the CRI, while it makes the snapshot and the spec): the clone into a
        cgroup2 directory, which a waiting process cannot join as fast, is off the create's
        path. A create with another cgroupsPath, or a spec the process does not fit, makes
        its own; what is not used within PREPARED_FOR seconds is removed by
        `discard_prepared`, and `discard(container_id)` removes it at once."""
        from skiff.runtime.namespaces import FLAGS
        from skiff.runtime.prespawn import SLOT_NAMESPACES

        if container_id in self._prepared:
            raise FailedPrecondition(f"container {container_id!r}: prepared already")
        cgroup = self._unused_cgroup(container_id, cgroups_path)
        prepared = _Prepared(cgroups_path, cgroup, None, time.monotonic() + PREPARED_FOR)
        with Undo() as undo:
            undo.callback(cgroup.destroy)
            cgroup.create()
            cgroup_fd = cgroup.dirfd()
            if cgroup_fd is not None:
                try:
                    spawner = self._spawner()
                    if spawner is not None:
                        flags = 0
                        for kind in new_namespaces:
                            flags |= FLAGS[kind]
                        prepared.slot = spawner.slot_in(flags & SLOT_NAMESPACES, cgroup_fd)
                finally:
                    os.close(cgroup_fd)
            undo.keep()
        with self._prepared_lock:
            self._prepared[container_id] = prepared

    def discard(self, container_id: str) -> None:
        """Remove what `prepare` made for `container_id` and no create took; none is fine."""
        with self._prepared_lock:
            prepared = self._prepared.pop(container_id, None)
        if prepared is not None:
            prepared.discard()

    def discard_prepared(self, *, expired_only: bool = True) -> None:
        """Remove what `prepare` made and no create took within PREPARED_FOR seconds (or all)."""
        now = time.monotonic()
        with self._prepared_lock:
            gone = [k for k, p in self._prepared.items() if not expired_only or p.deadline <= now]
            done = [self._prepared.pop(k) for k in gone]
        for prepared in done:
            with contextlib.suppress(Exception):  # its cgroup removed by someone else, say
                prepared.discard()

    def _unused_cgroup(self, container_id: str, cgroups_path: str | None) -> CgroupDriver:
        cgroup = open_cgroup(container_id=container_id, cgroups_path=cgroups_path, parent=self.cgroup_parent)
        if cgroup.pids():  # someone else's: never join, limit or (on delete) kill it
            raise FailedPrecondition(f"container {container_id!r}: its cgroup already has processes "
                                     f"(linux.cgroupsPath {cgroups_path!r})")
        return cgroup

    def _take_prepared(self, container_id: str, cgroups_path: str | None) -> _Prepared | None:
        with self._prepared_lock:
            prepared = self._prepared.pop(container_id, None)
        if prepared is not None and prepared.cgroups_path != cgroups_path:
            prepared.discard()
            return None
        return prepared

    def _refill(self) -> None:
        """Make the prespawned processes the last start used, now that it is done: made
        during the start, they would compete with it for the CPU."""
        if self.prespawner is not None:
            self.prespawner.refill()

    def _create(self, container_id: str, bundle: str, *, console_socket: str | None, console_fd: int | None,
                pid_file: str | None, preserve_fds: int, spec: Spec | None, config: dict[str, Any] | None,
                tracer: StartTrace | None, start: bool = False,
                stdio: tuple[int, int, int] | None = None) -> ContainerRecord:
        """`start`: `run`'s create + start in one go. The init waits for the go-ahead on the
        sync socket, sent once the record is saved, instead of on exec.fifo."""
        from skiff.oci import read_spec, spec_to_dict
        from skiff.runtime.hooks import run_hooks
        from skiff.runtime.plan import plan_create
        from skiff.runtime.rootfs import with_device_rules
        from skiff.runtime.spawn import ContainerInitError, exit_status, kill_and_reap, spawn

        bundle = os.path.abspath(bundle)
        if spec is None:
            spec, config = read_spec(os.path.join(bundle, "config.json"))
        assert spec.root is not None
        state_dir = self.store.reserve(container_id)
        with Undo() as undo:
            undo.callback(self.store.remove, container_id)
            exec_fifo = None
            if not start:
                fifo = os.path.join(state_dir, EXEC_FIFO)
                os.mkfifo(fifo)
                os.chmod(fifo, 0o622)  # the init opens it after setuid: any user may write, not read
                dirfd = os.open(state_dir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
                undo.callback(os.close, dirfd)
                exec_fifo = (dirfd, EXEC_FIFO)
            linux = spec.linux
            prepared = self._take_prepared(container_id, linux.cgroups_path if linux else None)
            if prepared is not None:
                cgroup = prepared.cgroup
                undo.callback(prepared.discard)  # the slot, if spawn did not take it, and the cgroup
            else:
                cgroup = self._unused_cgroup(container_id, linux.cgroups_path if linux else None)
                undo.callback(cgroup.destroy)  # before create: it removes only what create made
                cgroup.create()
            cgroup.apply(with_device_rules(linux.resources if linux else None, linux.devices if linux else ()))
            if tracer:
                tracer.mark("cgroup")
            if console_socket:
                console_fd = console.connect(console_socket)
                undo.callback(os.close, console_fd)
            plan = plan_create(spec, bundle=bundle, cgroup_mounts=cgroup.mounts(), exec_fifo=exec_fifo,
                               start_sync=start, console_fd=console_fd, preserve_fds=preserve_fds,
                               trace_fd=tracer.child_fd if tracer else None, stdio=stdio,
                               mount_template=self.mount_template)
            state = ContainerState(id=container_id, pid=0, status=Status.CREATING, bundle=bundle,
                                   rootfs=plan.rootfs.path if plan.rootfs else "", created=_now(),
                                   owner="", annotations=dict(spec.annotations))
            hooks = spec.hooks
            saved: list[ContainerRecord] = []

            def on_hooks(pid: int) -> bytes:
                hook_state = replace(state, pid=pid).hook_state()
                if hooks is not None:
                    run_hooks("prestart", hooks.prestart, hook_state)
                    run_hooks("createRuntime", hooks.create_runtime, hook_state)
                return replace(state, pid=pid, status=Status.CREATED).hook_state()

            def on_ready(pid: int) -> None:
                start_time = proc_start_time(pid)
                if start_time is None:  # it failed right after READY, and told stderr why
                    raise ContainerInitError(f"container init exited right after it was ready: {exit_status(pid)}")
                record = ContainerRecord(
                    id=container_id, bundle=bundle, rootfs=state.rootfs, pid=pid, pid_start=start_time,
                    created=state.created, annotations=state.annotations, cgroup=cgroup.record(),
                    config=config if config is not None else spec_to_dict(spec))
                self.store.save(record)
                if pid_file:
                    _write_pid_file(pid_file, pid)
                if tracer:
                    tracer.mark("created")
                saved.append(record)

            try:
                pid = spawn(plan, cgroup, on_hooks, on_ready if start else None, self._spawner(),
                            prepared.take_slot() if prepared is not None else None)
                if tracer:
                    tracer.forked()
            except Exception as e:
                with contextlib.suppress(Exception):  # the report must not replace the cause
                    if cgroup.oom_kills():
                        e.add_note("the container's cgroup OOM-killed a process during create")
                raise
            undo.callback(kill_and_reap, [pid])
            if not start:
                on_ready(pid)
            undo.keep()
        if exec_fifo is not None:
            os.close(exec_fifo[0])
        if console_socket and console_fd is not None:
            os.close(console_fd)
        return saved[0]

    def start(self, container_id: str) -> None:
        self._start(self.store.load(container_id))

    def _start(self, record: ContainerRecord) -> None:
        container_id = record.id
        status = self._status(record)
        if status is not Status.CREATED:
            raise FailedPrecondition(f"cannot start container {container_id!r}: it is {status}, not created")
        fifo_path = os.path.join(self.store.dir(container_id), EXEC_FIFO)
        fifo = os.open(fifo_path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            # The init is blocked opening the fifo for writing; our open lets it through, and
            # its "0" says it went on to exec. Poll, in case it died meanwhile.
            import select

            poller = select.poll()
            poller.register(fifo, select.POLLIN)
            while not poller.poll(100):
                if proc_start_time(record.pid) != record.pid_start:
                    raise FailedPrecondition(f"cannot start container {container_id!r}: its init exited")
            if os.read(fifo, 1) != b"0":  # POLLHUP: it opened the fifo, then died
                raise FailedPrecondition(f"cannot start container {container_id!r}: its init exited")
        finally:
            os.close(fifo)
        os.unlink(fifo_path)
        self._warning_hooks("poststart", record)

    def run(self, container_id: str, bundle: str, *, detach: bool = False, pid_file: str | None = None,
            console_socket: str | None = None, preserve_fds: int = 0, trace: Trace | None = None) -> int:
        """create + start; in the foreground, wait for the init, delete, and return its exit
        code (128 + signal when killed, as a shell reports it). A terminal without a console
        socket is this process's own: its stdio is copied to and from the container's pty.
        `trace` gets the start's timestamps (trace.py), for a foreground run without a terminal."""
        from skiff.oci import read_spec

        spec, config = read_spec(os.path.join(os.path.abspath(bundle), "config.json"))
        own_terminal = spec.process is not None and spec.process.terminal and not console_socket
        if own_terminal and detach:
            raise FailedPrecondition("process.terminal: a detached container needs --console-socket for its terminal")
        if not own_terminal:
            tracer = StartTrace(trace) if trace is not None and not detach else None
            if tracer:
                tracer.mark("spec")
            try:
                record = self._create(container_id, bundle, console_socket=console_socket, console_fd=None,
                                      pid_file=pid_file, preserve_fds=preserve_fds, spec=spec, config=config,
                                      tracer=tracer, start=True)
                return self._start_and_wait(record, detach, master=None, tracer=tracer, started=True)
            finally:
                if tracer:
                    tracer.collect()
                self._refill()
        import socket

        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        with ours, theirs:
            record = self._create(container_id, bundle, console_socket=None, console_fd=theirs.fileno(),
                                  pid_file=pid_file, preserve_fds=preserve_fds, spec=spec, config=config, tracer=None)
            try:
                master = console.receive_master(ours)
            except BaseException:
                self.delete(container_id, force=True)
                raise
        try:
            return self._start_and_wait(record, detach, master)
        finally:
            os.close(master)

    def _start_and_wait(self, record: ContainerRecord, detach: bool, master: int | None,
                        tracer: StartTrace | None = None, started: bool = False) -> int:
        container_id, pid = record.id, record.pid
        try:
            if started:
                self._warning_hooks("poststart", record)
            else:
                self._start(record)
        except BaseException:
            self.delete(container_id, force=True)
            raise
        if detach:
            return 0
        if tracer:
            tracer.mark("started")
        if master is not None:
            console.copy_until_exit(master)
        code = _wait_forwarding_signals(pid)
        if tracer:
            tracer.mark("exited")
        self.delete(container_id, force=True)
        if tracer:
            tracer.mark("deleted")
        return code

    # -- queries -----------------------------------------------------------------------------

    def _status(self, record: ContainerRecord) -> Status:
        if proc_start_time(record.pid) != record.pid_start:
            return Status.STOPPED
        with contextlib.suppress(Exception):
            if self._cgroup(record).frozen():
                return Status.PAUSED
        if os.path.exists(os.path.join(self.store.dir(record.id), EXEC_FIFO)):
            return Status.CREATED
        return Status.RUNNING

    def _state(self, record: ContainerRecord) -> ContainerState:
        status = self._status(record)
        oom = False
        if status is Status.STOPPED:
            with contextlib.suppress(Exception):
                oom = self._cgroup(record).oom_kills() > 0
        return ContainerState(id=record.id, pid=0 if status is Status.STOPPED else record.pid, status=status,
                              bundle=record.bundle, rootfs=record.rootfs, created=record.created,
                              owner=record.owner, annotations=record.annotations, oom_killed=oom)

    def state(self, container_id: str) -> ContainerState:
        return self._state(self.store.load(container_id))

    def states(self) -> list[ContainerState]:
        states = []
        for container_id in self.store.ids():
            with contextlib.suppress(NotFound):
                states.append(self.state(container_id))
        return states

    def ps(self, container_id: str) -> list[int]:
        return self._cgroup(self.store.load(container_id)).pids()

    def stats(self, container_id: str) -> Any:
        return self._cgroup(self.store.load(container_id)).stats()

    def events(self, container_id: str, *, interval: float = 5.0, stats: bool = False) -> Iterator[dict[str, Any]]:
        """runc's events: with stats=True one stats event; otherwise a stats event every
        interval and an "oom" event whenever the OOM-kill count grows, until the container stops."""
        record = self.store.load(container_id)
        cgroup = self._cgroup(record)
        ooms = cgroup.oom_kills()
        while True:
            if stats:
                yield {"type": "stats", "id": container_id, "data": cgroup.stats().to_runc_json()}
                return
            deadline = time.monotonic() + interval
            while time.monotonic() < deadline:
                if self._status(record) is Status.STOPPED:
                    return
                now = cgroup.oom_kills()
                if now > ooms:
                    ooms = now
                    yield {"type": "oom", "id": container_id}
                time.sleep(min(0.2, interval))
            yield {"type": "stats", "id": container_id, "data": cgroup.stats().to_runc_json()}

    def _warning_hooks(self, kind: str, record: ContainerRecord) -> None:
        """poststart and poststop: a failure is a warning, not an error (runtime-spec)."""
        if not record.config.get("hooks", {}).get(kind):
            return
        from skiff.oci import parse_spec
        from skiff.runtime.hooks import HookError, run_hooks

        hooks = parse_spec(record.config).hooks
        assert hooks is not None
        try:
            run_hooks(kind, getattr(hooks, kind), self._state(record).hook_state())
        except HookError as e:
            _warn(str(e))

    def _cgroup(self, record: ContainerRecord) -> CgroupDriver:
        return load_cgroup(record.cgroup)

    # -- signals, pause, delete ----------------------------------------------------------------

    def kill(self, container_id: str, sig: int, *, all: bool = False) -> None:
        record = self.store.load(container_id)
        status = self._status(record)
        if status is Status.STOPPED and not all:
            # containerd's shim matches "container not running" (process/utils.go checkKillError)
            raise FailedPrecondition(f"cannot kill container {container_id!r}: container not running")
        if all:
            for pid in self._cgroup(record).pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
        else:
            os.kill(record.pid, sig)

    def update(self, container_id: str, resources: LinuxResources) -> None:
        """New limits for a live container's cgroup (runc `update`)."""
        record = self.store.load(container_id)
        if self._status(record) is Status.STOPPED:
            raise FailedPrecondition(f"cannot update container {container_id!r}: container not running")
        self._cgroup(record).apply(resources)

    def pause(self, container_id: str) -> None:
        record = self.store.load(container_id)
        status = self._status(record)
        if status is not Status.RUNNING:
            raise FailedPrecondition(f"cannot pause container {container_id!r}: it is {status}, not running")
        self._cgroup(record).freeze(True)

    def resume(self, container_id: str) -> None:
        record = self.store.load(container_id)
        if self._status(record) is not Status.PAUSED:
            raise FailedPrecondition(f"cannot resume container {container_id!r}: it is not paused")
        self._cgroup(record).freeze(False)

    def delete(self, container_id: str, *, force: bool = False) -> None:
        """Remove a stopped (or created) container; with force, kill it first. A missing
        container is an error unless forced, as in runc."""
        try:
            record = self.store.load(container_id)
        except NotFound:
            if force:
                self.store.remove(container_id)  # a create that died before its record
                return
            raise
        status = self._status(record)
        if status in (Status.RUNNING, Status.PAUSED) and not force:
            raise FailedPrecondition(f"cannot delete container {container_id!r} that is not stopped: {status}")
        from skiff.runtime.spawn import kill_and_reap

        cgroup = self._cgroup(record)
        if status is Status.PAUSED:
            cgroup.freeze(False)  # a frozen process cannot die
        alive = [pid for pid in cgroup.pids() if pid != record.pid]
        if status is not Status.STOPPED:
            alive.append(record.pid)
        # Without a PID namespace the init's death does not take the others with it, and
        # with one, its exit waits until every process in it is reaped: reap ours meanwhile.
        kill_and_reap(alive)
        _reap(record.pid)
        # A warm runtime keeps skiff's parents of its default placement for the next create.
        cgroup.destroy(keep_parents=bool(self.warm) and not record.config.get("linux", {}).get("cgroupsPath"))
        self._warning_hooks("poststop", record)
        self.store.remove(container_id)

    # -- exec ------------------------------------------------------------------------------------

    def exec(self, container_id: str, process: Process, *, console_socket: str | None = None,
             detach: bool = False, pid_file: str | None = None, preserve_fds: int = 0) -> int:
        """Run another process in the container. Detached: its pid; else its exit code. A
        terminal without a console socket is this process's own, as for `run`."""
        from skiff.oci import parse_spec
        from skiff.runtime.plan import plan_exec
        from skiff.runtime.spawn import spawn

        record = self.store.load(container_id)
        status = self._status(record)
        if status not in (Status.RUNNING, Status.CREATED):
            raise FailedPrecondition(f"cannot exec in container {container_id!r}: it is {status}")
        own_terminal = process.terminal and not console_socket
        if own_terminal and detach:
            raise FailedPrecondition("process.terminal: a detached process needs --console-socket for its terminal")
        spec = parse_spec(record.config)
        with contextlib.ExitStack() as stack:
            ours = None
            if own_terminal:
                import socket

                ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
                stack.enter_context(ours)
                stack.enter_context(theirs)
                console_fd: int | None = theirs.fileno()
            elif console_socket:
                console_fd = console.connect(console_socket)
                stack.callback(os.close, console_fd)
            else:
                console_fd = None
            plan = plan_exec(spec, process, init_pid=record.pid, console_fd=console_fd, preserve_fds=preserve_fds)
            pid = spawn(plan, self._cgroup(record))
            master = console.receive_master(ours) if ours is not None else None
        if pid_file:
            _write_pid_file(pid_file, pid)
        if detach:
            return pid
        if master is not None:
            try:
                console.copy_until_exit(master)
            finally:
                os.close(master)
        return _wait_forwarding_signals(pid)


def _wait_forwarding_signals(pid: int) -> int:
    """Wait for our child `pid`, passing on the signals a user sends to a foreground runtime."""
    forwarded = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)

    def forward(sig: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)

    try:
        previous = {sig: signal.signal(sig, forward) for sig in forwarded}
    except ValueError:  # not the main thread (a library caller's worker): nothing to forward
        return _exit_code(os.waitpid(pid, 0)[1])
    try:
        _, status = os.waitpid(pid, 0)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return _exit_code(status)


def _exit_code(status: int) -> int:
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def _write_pid_file(path: str, pid: int) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(str(pid))
    os.rename(tmp, path)


def _warn(message: str) -> None:
    import logging

    logging.getLogger("skiff.runtime").warning("%s", message)
