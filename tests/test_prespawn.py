"""A warm Runtime: container processes made by the prespawner (runtime/prespawn.py), ahead of
time or, where a container's cgroup has a cgroup2 part, launched with the plan (for a caller
with threads), give the same container a fork would."""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from support import Containers

T = TypeVar("T")


@pytest.fixture
def warm(bundle: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> Iterator[Containers]:
    c = Containers(bundle, tmp_path / "state", capfd, warm=1)
    yield c
    c.cleanup()


def _slots_wait() -> bool:
    """Slots are made ahead of time only where a container's cgroup is all v1; a cgroup2
    part (a v2 or hybrid host) gets a slot cloned into it when the create comes."""
    from skiff.runtime.cgroups import CgroupMode, detect_mode

    return detect_mode() is CgroupMode.LEGACY


def _ready(c: Containers) -> list[int]:
    """Run one container so the runtime knows the kind, and wait for its next slot; the
    slots waiting (none where they are made on demand)."""
    assert c.run("true").code == 0
    prespawner = c.runtime.prespawner
    assert prespawner is not None and prespawner.wait_ready(10)
    waiting = prespawner.waiting()
    assert len(waiting) == (1 if _slots_wait() else 0)
    return waiting


def _in_thread(fn: Callable[[], T]) -> T:
    """`fn()` from a second thread: where slots do not wait (a cgroup2 part), only a caller
    with threads goes through the prespawner; a single-threaded one clones by itself."""
    results: list[T] = []
    thread = threading.Thread(target=lambda: results.append(fn()))
    thread.start()
    thread.join()
    assert results, "the call raised in its thread (its traceback is above)"
    return results[0]


def _taken(c: Containers) -> int:
    assert c.runtime.prespawner is not None
    return c.runtime.prespawner.taken


def test_create_hands_its_plan_to_a_prespawned_process(warm: Containers) -> None:
    waiting, taken = _ready(warm), _taken(warm)
    cid = _in_thread(lambda: warm.create(
        "sh", "-c", "echo $$; for ns in pid net ipc uts mnt; do readlink /proc/self/ns/$ns; done"))
    state = warm.runtime.state(cid)
    assert _taken(warm) == taken + 1  # the exec fifo's directory went along with the plan
    assert state.pid in waiting or not _slots_wait()
    warm.capfd.readouterr()
    warm.runtime.start(cid)
    os.waitpid(state.pid, 0)
    out = warm.capfd.readouterr().out.split()
    assert out[0] == "1"
    host = [os.readlink(f"/proc/self/ns/{ns}") for ns in ("pid", "net", "ipc", "uts", "mnt")]
    assert all(a != b for a, b in zip(out[1:], host))
    warm.runtime.delete(cid)


def test_a_plan_with_a_seccomp_filter_goes_to_a_prespawned_process(warm: Containers) -> None:
    """The compiled filter travels with the plan (as its BPF program) and is loaded there."""
    def edit(c: dict[str, Any]) -> None:
        c["linux"]["seccomp"] = {"defaultAction": "SCMP_ACT_ALLOW",
                                 "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}]}

    warm.run("true", edit=edit)  # the first of its kind: forked, and the kind is seen
    prespawner = warm.runtime.prespawner
    assert prespawner is not None and prespawner.wait_ready(10)
    waiting, taken = prespawner.waiting(), _taken(warm)
    cid = _in_thread(lambda: warm.create("sh", "-c", "grep Seccomp: /proc/self/status; mkdir /tmp/x", edit=edit))
    pid = warm.runtime.state(cid).pid
    assert _taken(warm) == taken + 1 and (pid in waiting or not _slots_wait())
    warm.capfd.readouterr()
    warm.runtime.start(cid)
    _, status = os.waitpid(pid, 0)
    out, err = warm.capfd.readouterr()
    assert out.split() == ["Seccomp:", "2"]
    assert "Operation not permitted" in err and os.waitstatus_to_exitcode(status) != 0
    warm.runtime.delete(cid)


def test_the_stdio_of_the_run_reaches_the_container_not_that_of_the_slot(warm: Containers) -> None:
    """The slot was made before fd 1 pointed at this pipe: the plan brings the stdio along."""
    _ready(warm)
    r, w = os.pipe()
    saved = os.dup(1)
    try:
        os.dup2(w, 1)
        os.close(w)
        code = warm.runtime.run(warm.next_id(), str(warm.configure(("echo", "through the pipe"))))
    finally:
        os.dup2(saved, 1)
        os.close(saved)
    with os.fdopen(r) as pipe:
        assert pipe.read() == "through the pipe\n"
    assert code == 0


def test_a_slot_killed_while_it_waits_is_replaced_by_a_fork(warm: Containers) -> None:
    if not _slots_wait():
        pytest.skip("no slot waits here: a container's cgroup has a cgroup2 part (a v2 or hybrid host), "
                    "so each process is launched into it with its plan")
    [pid] = _ready(warm)
    os.kill(pid, signal.SIGKILL)
    result = warm.run("sh", "-c", "echo $$")
    assert (result.code, result.out) == (0, "1\n")


def test_without_its_prespawner_a_warm_runtime_forks(warm: Containers) -> None:
    """The prespawner killed (or failing to start): starts go on, by fork."""
    _ready(warm)
    prespawner = warm.runtime.prespawner
    assert prespawner is not None
    os.kill(prespawner._process.pid, signal.SIGKILL)
    prespawner._process.wait()
    for _ in range(2):
        result = warm.run("sh", "-c", "echo $$")
        assert (result.code, result.out) == (0, "1\n")


def test_a_detached_container_outlives_the_warm_runtime(warm: Containers, tmp_path: Path) -> None:
    from skiff.runtime.container import Runtime, Status

    _ready(warm)
    cid = warm.create("sleep", "30")
    warm.runtime.start(cid)
    warm.runtime.close()  # ends the slots (PDEATHSIG is off for a taken one) and the prespawner
    cold = Runtime(str(tmp_path / "state"))
    assert cold.state(cid).status is Status.RUNNING
    cold.delete(cid, force=True)  # a cold runtime removes the parents the warm one kept


def test_a_user_namespace_plan_is_forked_not_prespawned(warm: Containers) -> None:
    """The parent maps a new user namespace's ids before anything else is made in it."""
    import shutil
    import tempfile

    from skiff.demo import make_bundle

    from support import namespaces

    top = Path(tempfile.mkdtemp(prefix="skiff-userns-"))
    top.chmod(0o755)  # the mapped root must reach the rootfs: pytest's directories are 0700
    try:
        warm.bundle = Path(make_bundle(str(top / "bundle")))

        def edit(c: dict[str, Any]) -> None:
            namespaces(c).append({"type": "user"})
            c["linux"]["uidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 65536}]
            c["linux"]["gidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 65536}]

        result = warm.run("cat", "/proc/self/uid_map", edit=edit)
    finally:
        shutil.rmtree(top)
    assert result.code == 0, result.err
    assert result.out.split() == ["0", "100000", "65536"]
    assert warm.runtime.prespawner is not None and warm.runtime.prespawner.waiting() == []


def test_the_mount_namespace_template_holds_nothing_of_the_host(warm: Containers) -> None:
    """A warm runtime's containers copy this namespace instead of the host's, whose mount
    table grows with every pod (runtime/mount_template.py): one tmpfs, with an empty
    directory where a container attaches its rootfs."""
    from skiff.runtime import libc

    template = warm.runtime.mount_template
    assert template is not None

    def look() -> tuple[list[str], list[str]]:
        libc.unshare(0x200)  # CLONE_FS: this thread alone joins the template
        libc.setns(template, libc.CLONE_NEWNS)
        return os.listdir("/"), os.listdir("/rootfs")

    assert _in_thread(look) == (["rootfs"], [])
    warm.runtime.close()
    assert warm.runtime.mount_template is None


@pytest.mark.requires("cgroup2")
def test_a_launched_process_is_cloned_into_its_cgroup(warm: Containers) -> None:
    """Made when the create came, cloned into its container's cgroup (CLONE_INTO_CGROUP)."""
    def edit(c: dict[str, Any]) -> None:  # without a cgroup namespace, the full path shows
        c["linux"]["namespaces"] = [ns for ns in c["linux"]["namespaces"] if ns["type"] != "cgroup"]

    _ready(warm)
    taken = _taken(warm)
    result = _in_thread(lambda: warm.run("cat", "/proc/self/cgroup", edit=edit))
    assert result.code == 0, result.err
    assert _taken(warm) == taken + 1
    assert result.out.endswith(f"/skiff/{warm.last_id}\n")



# this hybrid (or v1) host, and the VM's pure cgroup v2 (tests/vm)
_HOSTS = pytest.mark.parametrize("host", ["host", pytest.param("v2", marks=pytest.mark.requires("cgroup2"))])


def _prepare(c: Containers, cgroups_path: str | None = None) -> tuple[str, Any]:
    """Runtime.prepare for the next container of the test's bundle: (its id, what was made)."""
    from skiff.oci.spec import LinuxNamespaceType

    cid = c.next_id()
    new = tuple(LinuxNamespaceType(ns["type"]) for ns in c.base["linux"]["namespaces"] if not ns.get("path"))
    _in_thread(lambda: c.runtime.prepare(cid, cgroups_path=cgroups_path, new_namespaces=new))
    return cid, c.runtime._prepared[cid]


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@_HOSTS
def test_a_prepared_create_takes_the_cgroup_and_the_process_made_for_it(warm: Containers, host: str) -> None:
    """Runtime.prepare (the CRI's, while it makes the snapshot and the spec): the cgroup is
    made and, with a cgroup2 part, a process waits in it; the create takes both."""
    def edit(c: dict[str, Any]) -> None:  # without a cgroup namespace, the full path shows
        c["linux"]["namespaces"] = [ns for ns in c["linux"]["namespaces"] if ns["type"] != "cgroup"]

    edit(warm.base)
    cid, prepared = _prepare(warm)
    assert all(os.path.isdir(d) for _, d in prepared.cgroup.mounts())
    slot = prepared.slot
    assert (slot is not None) == (not _slots_wait())  # a slot only where a clone into a cgroup2 part pays
    bundle = warm.configure(("cat", "/proc/self/cgroup"))
    _in_thread(lambda: warm.runtime.create(cid, str(bundle)))
    assert cid not in warm.runtime._prepared
    state = warm.runtime.state(cid)
    if slot is not None:
        assert state.pid == slot.pid
    warm.capfd.readouterr()
    warm.runtime.start(cid)
    _, status = os.waitpid(state.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    cgroups = dict(line.split(":", 2)[1:] for line in warm.capfd.readouterr().out.splitlines())
    if slot is not None:
        assert cgroups[""].endswith(f"/{cid}")  # cloned into the cgroup2 part
    assert cgroups.get("memory", f"/{cid}").endswith(f"/{cid}")  # a v1 hierarchy: joined
    warm.runtime.delete(cid)


@_HOSTS
def test_what_no_create_takes_is_removed(warm: Containers, host: str) -> None:
    """discard, an expired prepare, a create with another cgroupsPath and close each remove
    the prepared cgroup and end its process."""
    def made(prepared: Any) -> list[str]:
        return [d for _, d in prepared.cgroup.mounts()]

    def removed(prepared: Any, dirs: list[str]) -> bool:
        return not any(os.path.exists(d) for d in dirs) and (prepared.slot is None or _gone(prepared.slot.pid))

    cid, prepared = _prepare(warm)
    dirs, slot = made(prepared), prepared.slot
    warm.runtime.discard(cid)
    assert not any(os.path.exists(d) for d in dirs) and (slot is None or _gone(slot.pid))

    cid, prepared = _prepare(warm)
    dirs, slot = made(prepared), prepared.slot
    prepared.deadline = 0.0
    warm.runtime.discard_prepared()
    assert cid not in warm.runtime._prepared
    assert not any(os.path.exists(d) for d in dirs) and (slot is None or _gone(slot.pid))

    cid, prepared = _prepare(warm, cgroups_path=f"skiff-test-prepared/{os.getpid()}")
    dirs, slot = made(prepared), prepared.slot
    bundle = warm.configure(("true",))
    assert _in_thread(lambda: warm.runtime.run(cid, str(bundle))) == 0  # its spec names no cgroupsPath
    assert not any(os.path.exists(d) for d in dirs) and (slot is None or _gone(slot.pid))

    cid, prepared = _prepare(warm)
    dirs, slot = made(prepared), prepared.slot
    warm.runtime.close()
    assert not any(os.path.exists(d) for d in dirs) and (slot is None or _gone(slot.pid))

def test_a_run_from_another_thread_starts_with_default_signals(warm: Containers) -> None:
    """A child cloned from a thread is not Python's main thread: its signal set-up must not
    need to be. And the container gets no blocked or ignored signal of the runtime's."""
    import threading

    for _ in range(2):  # forked, then prespawned
        results: list[int] = []
        # grep itself (a shell in between may ignore signals of its own)
        bundle = warm.configure(("grep", "-E", "^Sig(Blk|Ign)", "/proc/self/status"))
        warm.capfd.readouterr()
        thread = threading.Thread(target=lambda: results.append(warm.runtime.run(warm.next_id(), str(bundle))))
        thread.start()
        thread.join()
        assert results == [0]
        assert warm.capfd.readouterr().out.split() == ["SigBlk:", "0000000000000000", "SigIgn:", "0000000000000000"]
        assert warm.runtime.prespawner is not None and warm.runtime.prespawner.wait_ready(10)


def test_threads_share_one_warm_runtime(warm: Containers) -> None:
    """Runtime.run from several threads at once: each start takes a waiting process or forks."""
    import threading

    _ready(warm)
    bundle = str(warm.configure(("true",)))
    codes: list[int] = []
    errors: list[BaseException] = []

    def runs(t: int) -> None:
        try:
            for i in range(5):
                codes.append(warm.runtime.run(f"{warm.last_id}-t{t}-{i}", bundle))
        except BaseException as e:  # noqa: BLE001 - reported below, in the test's thread
            errors.append(e)

    threads = [threading.Thread(target=runs, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and codes == [0] * 20


_V1_ONLY_SCRIPT = r"""
import os, signal, sys
from skiff.benchmark.hostns import hide_unified
from skiff.runtime.container import Runtime

host_ns, bundle, root = int(sys.argv[1]), sys.argv[2], sys.argv[3]
hide_unified(host_ns)  # this namespace's view: cgroup v1 only
out = os.open(os.devnull, os.O_WRONLY)
os.dup2(out, 1)
with Runtime(root, warm=1) as runtime:
    assert runtime.run("first", bundle) == 0  # the kind is seen
    assert runtime.prespawner.wait_ready(10)
    [waiting] = runtime.prespawner.waiting()
    state = runtime.create("taken", bundle)
    assert state.pid == waiting, (state.pid, waiting)
    runtime.start("taken")
    os.waitpid(state.pid, 0)
    runtime.delete("taken")
    assert runtime.prespawner.wait_ready(10)
    [waiting] = runtime.prespawner.waiting()
    os.kill(waiting, signal.SIGKILL)  # killed while it waits: the start forks instead
    assert runtime.run("forked", bundle) == 0
print("ok", file=sys.stderr)
"""


def test_slots_wait_where_cgroups_are_v1_only(bundle: Path, tmp_path: Path) -> None:
    """A hybrid host seen without its unified/ group (a private mount namespace, as the
    benchmark measures): slots are made ahead of time, a create takes the waiting one, and
    one killed while it waits is replaced by a fork."""
    import subprocess
    import sys

    from skiff.benchmark.hostns import is_hybrid

    if not _slots_wait() and not is_hybrid():
        pytest.skip("no cgroup v1 hierarchies here (a cgroup v2 host): slots are always made on demand")
    config = json.loads((bundle / "config.json").read_text())
    config["process"]["args"] = ["true"]
    (bundle / "config.json").write_text(json.dumps(config))
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", sys.executable, "-c", _V1_ONLY_SCRIPT,
                           str(os.stat("/proc/self/ns/mnt").st_ino), str(bundle), str(tmp_path / "state")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stderr.strip().endswith("ok"), done.stderr
