"""The ways to start a container that the benchmark compares, behind one Protocol.

A runtime (skiff's library, skiff-runc, runc, crun) is timed from the call to the exit of
the workload, its container deleted (`run` in the foreground: create, start, wait, delete).
A CRI service has no foreground run: its sample is "pod ready", RunPodSandbox +
CreateContainer + StartContainer until ContainerStatus says RUNNING, as kubelet starts a
one-container pod; the pod is stopped and removed after the clock stops.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

from skiff.benchmark.bundles import SLEEP, Bundles
from skiff.errors import FailedPrecondition

if TYPE_CHECKING:
    from skiff.cri.client import Cri
    from skiff.runtime.container import Runtime

RUN_TO_EXIT = "run to exit"
POD_READY = "pod ready"
CALL_TIMEOUT = 60.0  # seconds, for one CRI call
POD_NAMESPACE = "skiff-bench"
POD_LABEL = "skiff-bench"  # its value: the run's id tag, so a run finds only its own pods


class BenchmarkError(FailedPrecondition):
    """A contender failed to start, run or delete a container."""


class Contender(Protocol):
    name: str
    sample: str    # what one sample times: RUN_TO_EXIT or POD_READY
    version: str

    def run_once(self, container_id: str) -> int:
        """One sample in nanoseconds; nothing of it is left afterwards."""
        ...

    def start_detached(self, container_id: str) -> None:
        """A background container running `sleep`, until `delete`."""
        ...

    def delete(self, container_id: str) -> None:
        """Gone, whatever its state; an unknown id is fine."""
        ...

    def leftovers(self) -> list[str]:
        """The ids of the benchmark's containers the runtime still has."""
        ...

    def close(self) -> None: ...


# -- skiff's library, in this process ------------------------------------------------------------

class Library:
    """`Runtime.run` in this process: no interpreter start, modules already imported. Its
    containers inherit this process's stdio: the caller points fd 1 at /dev/null (or, for a
    traced run, a pipe) around the runs. Under --concurrency, threads call it at once.

    `warm`: a Runtime that keeps container processes made ahead of time (runtime/prespawn.py)
    and its cgroup parents. After each sequential run it waits, outside the clock, until the
    process the run used is made again: the next contender's run must not share the CPU
    with that, and the next run starts with one ready. Under --concurrency it does not
    wait: the remaking competes with the starts, as it would."""

    sample = RUN_TO_EXIT

    def __init__(self, root: str, bundles: Bundles, name: str = "library", *, warm: bool = False) -> None:
        # Imported here, once the benchmark's mount namespace is set up: skiff caches the
        # cgroup layout it sees first.
        from skiff import __version__
        from skiff.runtime.container import Runtime

        self.name = name
        self.version = f"skiff {__version__} (in-process Runtime.run{', warm=1' if warm else ''})"
        self.bundles = bundles
        # a cgroup parent of its own: a cold runtime's deletes would remove the parent a
        # warm one keeps
        self.runtime: Runtime = Runtime(root, cgroup_parent=f"skiff-{name}", warm=1 if warm else 0)
        self._sigint = ForwardedSigint.share() if threading.current_thread() is threading.main_thread() else None

    def run_once(self, container_id: str) -> int:
        main = threading.current_thread() is threading.main_thread()
        start = time.perf_counter_ns()
        code = self._run(container_id, self.bundles.run, sigint=main)
        elapsed = time.perf_counter_ns() - start
        if main and self.runtime.prespawner is not None:
            self.runtime.prespawner.wait_ready(10)
        if code != 0:
            raise BenchmarkError(f"{self.name}: Runtime.run({container_id!r}) returned {code}")
        return elapsed

    def run_traced(self, container_id: str, stdout: int) -> list[tuple[str, int]]:
        """One run with the runtime's trace marks (runtime/trace.py), the workload's stdout on
        the fd `stdout` (dup2'd onto fd 1 for the call: the container inherits fd 1)."""
        trace: list[tuple[str, int]] = []
        saved = os.dup(1)
        os.dup2(stdout, 1)
        try:
            begin = time.monotonic_ns()
            code = self._run(container_id, self.bundles.run, trace=trace)
        finally:
            os.dup2(saved, 1)
            os.close(saved)
        if self.runtime.prespawner is not None:
            self.runtime.prespawner.wait_ready(10)
        if code != 0:
            raise BenchmarkError(f"{self.name}: Runtime.run({container_id!r}) returned {code}")
        return [("begin", begin), *trace]

    def start_detached(self, container_id: str) -> None:
        self._run(container_id, self.bundles.sleep, detach=True)

    def _run(self, container_id: str, bundle: str, *, detach: bool = False,
             trace: list[tuple[str, int]] | None = None, sigint: bool = True) -> int:
        sigint_seen = self._sigint if sigint else None
        if sigint_seen is not None:
            sigint_seen.clear()
        try:
            code = int(self.runtime.run(container_id, bundle, detach=detach, trace=trace))
        except Exception as e:
            raise BenchmarkError(f"{self.name}: Runtime.run({container_id!r}): {type(e).__name__}: {e}") from e
        if sigint_seen is not None:
            sigint_seen.check()
        return code

    def delete(self, container_id: str) -> None:
        try:
            self.runtime.delete(container_id, force=True)
        except Exception as e:
            raise BenchmarkError(f"{self.name}: delete {container_id}: {e}") from e

    def leftovers(self) -> list[str]:
        return [s.id for s in self.runtime.states()]

    def close(self) -> None:
        self.runtime.close()
        if self._sigint is not None:
            self._sigint.release()
            self._sigint = None


class ForwardedSigint:
    """A ^C that `Runtime.run` passed on to the container, noticed afterwards. In the
    foreground, `Runtime.run` forwards SIGINT to the container while it waits (as `runc run`
    does), so the benchmark would never see it and would go on. The wakeup fd is written by
    CPython's C-level handler for every signal with a Python handler, whichever one."""

    _shared: ForwardedSigint | None = None

    def __init__(self) -> None:
        self.read_end, self.write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.previous = signal.set_wakeup_fd(self.write_end, warn_on_full_buffer=False)
        self.users = 0

    @classmethod
    def share(cls) -> ForwardedSigint:
        """One per process (there is one wakeup fd), for every Library contender."""
        if cls._shared is None:
            cls._shared = cls()
        cls._shared.users += 1
        return cls._shared

    def release(self) -> None:
        self.users -= 1
        if self.users == 0:
            self.close()
            ForwardedSigint._shared = None

    def _drain(self) -> bytes:
        data = b""
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(self.read_end, 512):
                data += chunk
        return data

    def clear(self) -> None:
        self._drain()

    def check(self) -> None:
        if signal.SIGINT in self._drain():
            raise KeyboardInterrupt

    def close(self) -> None:
        signal.set_wakeup_fd(self.previous)
        os.close(self.read_end)
        os.close(self.write_end)


# -- runc's command line: skiff-runc, runc, crun -------------------------------------------------

class Command:
    """`<exe> --root ROOT run --bundle BUNDLE ID` in a new process (posix_spawn + waitpid),
    stdin and stdout on /dev/null, stderr in a memfd read only when the run fails. Each
    thread has its own memfd, so concurrent runs can share the object."""

    sample = RUN_TO_EXIT

    def __init__(self, name: str, exe: str, root: str, bundles: Bundles, env: dict[str, str],
                 version: str | None = None) -> None:
        self.name = name
        self.exe = exe
        self.root = root
        self.bundles = bundles
        self.env = env
        self.version = version or _first_line([exe, "--version"], env) + _debian_version(exe)
        self.devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        self._local = threading.local()
        self._memfds: list[int] = []
        self._lock = threading.Lock()

    def _stderr(self) -> int:
        fd: int | None = getattr(self._local, "fd", None)
        if fd is None:
            fd = os.memfd_create(f"skiff-bench-{self.name}-stderr", os.MFD_CLOEXEC)
            self._local.fd = fd
            with self._lock:
                self._memfds.append(fd)
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        return fd

    def _spawn(self, argv: list[str]) -> tuple[int, int]:
        """(elapsed ns, exit code); a failure raises, with the command's stderr."""
        err = self._stderr()
        actions = [(os.POSIX_SPAWN_DUP2, self.devnull, 0), (os.POSIX_SPAWN_DUP2, self.devnull, 1),
                   (os.POSIX_SPAWN_DUP2, err, 2)]
        start = time.perf_counter_ns()
        pid = os.posix_spawn(argv[0], argv, self.env, file_actions=actions)
        _, status = os.waitpid(pid, 0)
        elapsed = time.perf_counter_ns() - start
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            os.lseek(err, 0, os.SEEK_SET)
            stderr = os.read(err, 65536).decode(errors="replace").strip()
            raise BenchmarkError(f"{self.name}: `{' '.join(argv)}` exited with {code}: {stderr or '(no stderr)'}")
        return elapsed, code

    def run_once(self, container_id: str) -> int:
        return self._spawn([self.exe, "--root", self.root, "run", "--bundle", self.bundles.run, container_id])[0]

    def start_detached(self, container_id: str) -> None:
        self._spawn([self.exe, "--root", self.root, "run", "--detach", "--bundle", self.bundles.sleep, container_id])

    def delete(self, container_id: str) -> None:
        done = subprocess.run([self.exe, "--root", self.root, "delete", "--force", container_id], env=self.env,
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if done.returncode != 0 and container_id in self.leftovers():
            raise BenchmarkError(f"{self.name}: delete --force {container_id}: {done.stderr.strip()}")

    def leftovers(self) -> list[str]:
        if not os.path.isdir(self.root):
            return []  # nothing was ever created (runc makes --root on first use)
        done = subprocess.run([self.exe, "--root", self.root, "list", "-q"], env=self.env,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True)
        if done.returncode != 0:
            raise BenchmarkError(f"{self.name} list: exit {done.returncode}: {done.stderr.strip()}")
        return done.stdout.split()

    def close(self) -> None:
        os.close(self.devnull)
        for fd in self._memfds:
            os.close(fd)
        self._memfds.clear()


def _debian_version(exe: str) -> str:
    """", Debian <version>" when a Debian package owns the executable."""
    owner = subprocess.run(["dpkg-query", "-S", os.path.realpath(exe)], capture_output=True, text=True) \
        if shutil.which("dpkg-query") else None
    if owner is None or owner.returncode != 0:
        return ""
    package = owner.stdout.split(":", 1)[0]
    version = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True)
    return f", Debian {version.stdout.strip()}" if version.returncode == 0 and version.stdout.strip() else ""


def _first_line(argv: list[str], env: dict[str, str]) -> str:
    done = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    lines = done.stdout.splitlines()
    return lines[0] if done.returncode == 0 and lines else f"(`{' '.join(argv)}` failed)"


# -- a CRI service: pod ready ---------------------------------------------------------------------

class CriPods:
    """Pods of one `sleep` container through a CRI socket. The pods carry the label
    POD_LABEL=<the run's tag>, so leftovers() finds this run's pods only."""

    sample = POD_READY

    def __init__(self, name: str, socket: str, image: str, tag: str, log_root: str) -> None:
        from skiff.cri.client import Cri

        self.name = name
        self.image = image
        self.tag = tag
        self.log_root = log_root
        self.cri: Cri = Cri(socket)
        version = self.cri.version()
        self.version = f"{version.runtime_name} {version.runtime_version}"
        self._pods: dict[str, str] = {}  # container id (the pod's name) -> pod sandbox id
        self._lock = threading.Lock()

    @property
    def _rt(self) -> Any:
        return self.cri.runtime

    def ensure_image(self) -> None:
        """The image, pulled through the CRI's PullImage when the service lacks it."""
        from cri_api.v1 import api_pb2 as pb

        with self._errors(f"image {self.image}"):
            status = self.cri.images.ImageStatus(pb.ImageStatusRequest(image=pb.ImageSpec(image=self.image)),
                                                 timeout=CALL_TIMEOUT)
            if not status.HasField("image"):
                self.cri.images.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=self.image)), timeout=600)

    def _pod_config(self, container_id: str) -> Any:
        from cri_api.v1 import api_pb2 as pb

        pod = pb.PodSandboxConfig(
            metadata=pb.PodSandboxMetadata(name=container_id, namespace=POD_NAMESPACE, uid=container_id, attempt=0),
            hostname=container_id, log_directory=os.path.join(self.log_root, container_id),
            labels={POD_LABEL: self.tag})
        # The zero value of pid is POD; kubelet's default is a namespace per container.
        pod.linux.security_context.namespace_options.pid = pb.CONTAINER
        return pod

    def _start(self, container_id: str) -> None:
        from cri_api.v1 import api_pb2 as pb

        pod = self._pod_config(container_id)
        pod_id = str(self._rt.RunPodSandbox(pb.RunPodSandboxRequest(config=pod), timeout=CALL_TIMEOUT).pod_sandbox_id)
        with self._lock:
            self._pods[container_id] = pod_id
        config = pb.ContainerConfig(metadata=pb.ContainerMetadata(name="sleep", attempt=0),
                                    image=pb.ImageSpec(image=self.image), command=list(SLEEP),
                                    log_path="sleep.log")
        cid = self._rt.CreateContainer(pb.CreateContainerRequest(pod_sandbox_id=pod_id, config=config,
                                                                 sandbox_config=pod),
                                       timeout=CALL_TIMEOUT).container_id
        self._rt.StartContainer(pb.StartContainerRequest(container_id=cid), timeout=CALL_TIMEOUT)
        deadline = time.monotonic() + 30
        while True:
            status = self._rt.ContainerStatus(pb.ContainerStatusRequest(container_id=cid), timeout=CALL_TIMEOUT).status
            if status.state == pb.CONTAINER_RUNNING:
                return
            if status.state == pb.CONTAINER_EXITED:
                raise BenchmarkError(f"{self.name}: the container of pod {container_id} exited with "
                                     f"{status.exit_code}: {status.message or status.reason}")
            if time.monotonic() > deadline:
                raise BenchmarkError(f"{self.name}: the container of pod {container_id} is not running "
                                     "30 s after StartContainer")
            time.sleep(0.001)

    def run_once(self, container_id: str) -> int:
        start = time.perf_counter_ns()
        with self._errors(f"pod {container_id}"):
            self._start(container_id)
        elapsed = time.perf_counter_ns() - start
        self.delete(container_id)
        return elapsed

    def start_detached(self, container_id: str) -> None:
        with self._errors(f"pod {container_id}"):
            self._start(container_id)

    def delete(self, container_id: str) -> None:
        from cri_api.v1 import api_pb2 as pb

        with self._lock:
            pod_id = self._pods.pop(container_id, None)
        if pod_id is None:  # not started here (a leftover): found by its name
            pod_id = next((p.id for p in self.cri.pods(labels={POD_LABEL: self.tag})
                           if p.metadata.name == container_id), None)
        if pod_id is None:
            return
        with self._errors(f"pod {container_id}"):
            self._rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=CALL_TIMEOUT)
            self._rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=CALL_TIMEOUT)

    def leftovers(self) -> list[str]:
        return [p.metadata.name for p in self.cri.pods(labels={POD_LABEL: self.tag})]

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """A gRPC error as a BenchmarkError naming the pod (or image) and the status code."""
        import grpc

        try:
            yield
        except grpc.RpcError as e:
            raise BenchmarkError(f"{self.name}: {what}: {e.code().name}: {e.details()}") from e

    def close(self) -> None:
        self.cri.channel.close()
