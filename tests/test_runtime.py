"""The runtime library: lifecycle, namespaces seen from inside, process settings, errors."""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import signal
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from skiff.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from skiff.oci.spec import SpecError
from skiff.runtime.container import Status
from skiff.runtime.hooks import HookError
from skiff.runtime.spawn import ContainerInitError
from skiff.runtime.sync import Step
from support import Containers, Exited, namespaces

pytestmark = pytest.mark.requires("busybox")


def wait_for(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.02)


# -- lifecycle -----------------------------------------------------------------------------

def test_create_start_kill_delete(containers: Containers) -> None:
    rt = containers.runtime
    cid = containers.create("sleep", "60")
    state = rt.state(cid)
    assert state.status is Status.CREATED and state.pid > 0
    assert os.path.exists(f"/proc/{state.pid}")
    assert [s.id for s in rt.states()] == [cid]
    rt.start(cid)
    assert rt.state(cid).status is Status.RUNNING
    assert rt.ps(cid) == [state.pid]
    with pytest.raises(FailedPrecondition, match="not stopped: running"):
        rt.delete(cid)
    rt.kill(cid, signal.SIGKILL)
    wait_for(lambda: rt.state(cid).status is Status.STOPPED)
    assert rt.state(cid).pid == 0
    rt.delete(cid)
    with pytest.raises(NotFound, match=f"container '{cid}' does not exist"):
        rt.state(cid)
    assert rt.states() == []


def test_run_returns_the_exit_code(containers: Containers) -> None:
    assert containers.run("sh", "-c", "echo out; echo err >&2; exit 3") == Exited(3, "out\n", "err\n")


def test_run_reports_a_signal_as_128_plus(containers: Containers) -> None:
    # Not in a PID namespace: there the shell would be pid 1, which ignores unhandled signals.
    assert containers.run("sh", "-c", "kill -TERM $$", edit=_no_pid_ns).code == 128 + signal.SIGTERM


def test_start_twice_and_duplicate_ids(containers: Containers) -> None:
    rt = containers.runtime
    cid = containers.create("sleep", "60")
    with pytest.raises(AlreadyExists, match="already exists"):
        rt.create(cid, str(containers.bundle))
    rt.start(cid)
    with pytest.raises(FailedPrecondition, match="it is running, not created"):
        rt.start(cid)
    rt.delete(cid, force=True)


def test_delete_a_created_container_kills_its_init(containers: Containers) -> None:
    rt = containers.runtime
    cid = containers.create("sleep", "60")
    pid = rt.state(cid).pid
    rt.delete(cid)
    assert not os.path.exists(f"/proc/{pid}/stat") or b") Z " in Path(f"/proc/{pid}/stat").read_bytes()


def test_pause_resume_exec_ps(containers: Containers) -> None:
    rt = containers.runtime
    cid = containers.create("sleep", "60")
    rt.start(cid)
    rt.pause(cid)
    assert rt.state(cid).status is Status.PAUSED
    with pytest.raises(FailedPrecondition, match="is paused"):
        rt.exec(cid, _process(containers, "true"))
    rt.resume(cid)
    assert rt.state(cid).status is Status.RUNNING
    containers.capfd.readouterr()
    code = rt.exec(cid, _process(containers, "sh", "-c", "echo in $(hostname) as $$; exit 4"))
    out, _ = containers.capfd.readouterr()
    assert code == 4
    assert out == "in runc as 2\n"  # the default spec's hostname; pid 2 in the container's pid ns
    code = rt.exec(cid, _process(containers, "tty", terminal=True))
    assert (code, containers.capfd.readouterr().out) == (0, "/dev/pts/0\r\n")
    pid = rt.exec(cid, _process(containers, "sleep", "60"), detach=True)
    assert sorted(rt.ps(cid)) == sorted([rt.state(cid).pid, pid])
    rt.delete(cid, force=True)
    assert not os.path.exists(f"/proc/{pid}")  # delete reaped the exec'd process too


def _process(containers: Containers, *args: str, terminal: bool = False) -> Any:
    from skiff.oci import parse_process

    return parse_process(dict(containers.base["process"], args=list(args), terminal=terminal))


def test_kill_all_reaches_every_process(containers: Containers) -> None:
    rt = containers.runtime
    cid = containers.create("sh", "-c", "sleep 60 & sleep 60 & wait", edit=_no_pid_ns)
    rt.start(cid)
    wait_for(lambda: len(rt.ps(cid)) == 3)
    rt.kill(cid, signal.SIGKILL, all=True)
    wait_for(lambda: rt.state(cid).status is Status.STOPPED)
    wait_for(lambda: rt.ps(cid) == [])
    rt.delete(cid)


def _no_pid_ns(config: dict[str, Any]) -> None:
    config["linux"]["namespaces"] = [ns for ns in namespaces(config) if ns["type"] != "pid"]


# -- namespaces, seen from inside ---------------------------------------------------------

def test_dev_has_the_default_devices_and_links(containers: Containers) -> None:
    out = containers.run("sh", "-c", "stat -c '%n %F %t:%T %a' /dev/null /dev/zero /dev/full /dev/random"
                                     " /dev/urandom /dev/tty; for l in fd stdin ptmx; do readlink /dev/$l; done").out
    assert out.splitlines() == [
        "/dev/null character special file 1:3 666", "/dev/zero character special file 1:5 666",
        "/dev/full character special file 1:7 666", "/dev/random character special file 1:8 666",
        "/dev/urandom character special file 1:9 666", "/dev/tty character special file 5:0 666",
        "/proc/self/fd", "/proc/self/fd/0", "pts/ptmx"]


def test_spec_devices_get_their_mode_and_owner_and_may_replace_a_default(containers: Containers) -> None:
    def edit(c: dict[str, Any]) -> None:
        c["linux"]["devices"] = [
            {"path": "/dev/mine", "type": "c", "major": 1, "minor": 5, "fileMode": 0o640, "uid": 1000, "gid": 1001},
            {"path": "/dev/null", "type": "c", "major": 1, "minor": 3, "fileMode": 0o600}]

    result = containers.run("stat", "-c", "%n %t:%T %a %u:%g", "/dev/mine", "/dev/null", edit=edit)
    assert result.out.splitlines() == ["/dev/mine 1:5 640 1000:1001", "/dev/null 1:3 600 0:0"], result.err


def test_env_and_args_reach_the_process(containers: Containers) -> None:
    def edit(c: dict[str, Any]) -> None:
        c["process"]["env"] = ["PATH=/bin", "GREETING=hello world", "EMPTY="]

    assert containers.run("sh", "-c", 'echo "$GREETING|$EMPTY|$0|$1"', "arg0", "arg 1", edit=edit).out == \
        "hello world||arg0|arg 1\n"


def test_pid_namespace_makes_the_process_pid_1(containers: Containers) -> None:
    assert containers.run("sh", "-c", "echo $$; ps -o comm=; true").out.split() == ["1", "sh", "ps"]


@pytest.mark.parametrize("clone3", [True, False], ids=["clone3", "fork-then-unshare"])
def test_the_same_namespaces_whether_the_clone_or_the_child_makes_them(
        containers: Containers, monkeypatch: pytest.MonkeyPatch, clone3: bool) -> None:
    """clone3 makes the namespaces itself (no second fork for the PID namespace); where the
    kernel or a seccomp profile refuses clone3, fork, unshare and the second fork do."""
    from skiff.runtime import libc

    if not clone3:
        def refuse(flags: int, cgroup_fd: int | None) -> int:
            raise OSError(errno.ENOSYS, "clone3")

        monkeypatch.setattr(libc, "clone3", refuse)
    script = "echo $$; for ns in pid net ipc uts mnt; do readlink /proc/self/ns/$ns; done"
    result = containers.run("sh", "-c", script)
    assert result.code == 0, result.err
    pid, *inside = result.out.split()
    assert pid == "1"
    host = [os.readlink(f"/proc/self/ns/{ns}") for ns in ("pid", "net", "ipc", "uts", "mnt")]
    assert all(a != b for a, b in zip(inside, host))


def test_uts_namespace_sets_hostname_and_domainname(containers: Containers) -> None:
    def edit(c: dict[str, Any]) -> None:
        c["hostname"], c["domainname"] = "box", "example.org"

    assert containers.run("sh", "-c", "hostname; cat /proc/sys/kernel/domainname", edit=edit).out == "box\nexample.org\n"
    assert socket.gethostname() != "box"


def test_network_namespace_has_only_lo(containers: Containers) -> None:
    assert containers.run("ls", "/sys/class/net").out.split() == ["lo"]


def test_mount_namespace_shows_only_the_container_mounts(containers: Containers) -> None:
    mounts = [line.split()[1] for line in containers.run("cat", "/proc/self/mounts").out.splitlines()]
    assert mounts[0] == "/"
    assert {"/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys", "/sys/fs/cgroup"} <= set(mounts)
    assert not any(m.startswith(("/work", "/tmp/", "/home")) for m in mounts)


def test_ipc_namespace_hides_host_message_queues(containers: Containers) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    queue = libc.msgget(0, 0o600 | 0o1000)  # IPC_PRIVATE, IPC_CREAT
    assert queue >= 0
    try:
        host = Path("/proc/sysvipc/msg").read_text().splitlines()
        assert any(line.split()[1] == str(queue) for line in host[1:])
        inside = containers.run("cat", "/proc/sysvipc/msg").out.splitlines()
        assert inside[1:] == []
    finally:
        libc.msgctl(queue, 0, None)  # IPC_RMID


def test_joining_another_containers_namespaces(containers: Containers) -> None:
    rt = containers.runtime

    def first(c: dict[str, Any]) -> None:
        c["hostname"] = "first"

    cid = containers.create("sleep", "60", edit=first)
    rt.start(cid)
    pid = rt.state(cid).pid

    def join(c: dict[str, Any]) -> None:
        c["hostname"] = None
        for ns in namespaces(c):
            if ns["type"] in ("pid", "uts", "ipc", "network"):
                ns["path"] = f"/proc/{pid}/ns/{ {'pid': 'pid', 'uts': 'uts', 'ipc': 'ipc', 'network': 'net'}[ns['type']]}"

    result = containers.run("sh", "-c", "hostname; echo $(ps -o comm=); readlink /proc/self/ns/net",
                            edit=join)
    assert result.code == 0, result.err
    hostname, procs, net = result.out.splitlines()
    assert hostname == "first"
    assert "sleep" in procs.split()
    assert net == os.readlink(f"/proc/{pid}/ns/net")
    rt.delete(cid, force=True)


@pytest.mark.requires("userns")
def test_user_namespace_maps_root_to_an_unprivileged_host_uid(containers: Containers,
                                                              tmp_path_factory: pytest.TempPathFactory) -> None:
    # The mapped root (host uid 100000) must be able to reach the rootfs: pytest's own
    # temporary directories are 0700.
    top = Path(tempfile.mkdtemp(prefix="skiff-userns-"))
    top.chmod(0o755)
    try:
        _run_in_userns(containers, top)
    finally:
        shutil.rmtree(top)


def _run_in_userns(containers: Containers, top: Path) -> None:
    from skiff.demo import make_bundle

    containers.bundle = Path(make_bundle(str(top / "bundle")))

    def edit(c: dict[str, Any]) -> None:
        namespaces(c).append({"type": "user"})
        c["linux"]["uidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 65536}]
        c["linux"]["gidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 65536}]

    rt = containers.runtime
    cid = containers.create("sh", "-c", "id -u; cat /proc/self/uid_map; ls /dev/null", edit=edit)
    host_uid = Path(f"/proc/{rt.state(cid).pid}/status").read_text().split("Uid:")[1].split()[0]
    assert host_uid == "100000"
    containers.capfd.readouterr()
    rt.start(cid)
    wait_for(lambda: rt.state(cid).status is Status.STOPPED)
    out = containers.capfd.readouterr().out.split()
    assert out == ["0", "0", "100000", "65536", "/dev/null"]
    rt.delete(cid)


# -- the process -------------------------------------------------------------------------------

def test_capabilities_all_five_sets(containers: Containers) -> None:
    def edit(c: dict[str, Any]) -> None:
        c["process"]["capabilities"] = {
            "bounding": ["CAP_NET_BIND_SERVICE", "CAP_CHOWN", "CAP_KILL"],
            "effective": ["CAP_NET_BIND_SERVICE", "CAP_CHOWN"],
            "permitted": ["CAP_NET_BIND_SERVICE", "CAP_CHOWN"],
            "inheritable": ["CAP_NET_BIND_SERVICE"],
            "ambient": ["CAP_NET_BIND_SERVICE"],
        }

    status = dict(line.split(":\t") for line in containers.run("cat", "/proc/self/status", edit=edit).out.splitlines())
    # after exec as root: permitted/effective keep what was set; inheritable and ambient as set
    assert int(status["CapBnd"], 16) == 1 << 10 | 1 << 0 | 1 << 5
    assert int(status["CapInh"], 16) == 1 << 10
    assert int(status["CapAmb"], 16) == 1 << 10
    assert int(status["CapPrm"], 16) == 1 << 10 | 1 << 0
    assert int(status["CapEff"], 16) == 1 << 10 | 1 << 0


def test_user_groups_umask_cwd_and_no_new_privileges(containers: Containers) -> None:
    def edit(c: dict[str, Any]) -> None:
        c["process"]["user"] = {"uid": 1000, "gid": 1001, "additionalGids": [5, 7], "umask": 0o077}
        c["process"]["cwd"] = "/tmp"
        c["process"]["noNewPrivileges"] = True

    result = containers.run("sh", "-c", "id; umask; pwd; grep NoNewPrivs /proc/self/status; grep CapEff /proc/self/status",
                            edit=edit)
    assert result.out.splitlines() == ["uid=1000 gid=1001 groups=5,7", "0077", "/tmp", "NoNewPrivs:\t1",
                                       "CapEff:\t0000000000000000"]


def test_signals_start_with_default_dispositions(containers: Containers) -> None:
    """The runtime is Python, which ignores SIGPIPE and SIGXFSZ: the container must not inherit that."""
    status = containers.run("cat", "/proc/self/status").out
    assert "SigIgn:\t0000000000000000" in status and "SigBlk:\t0000000000000000" in status


def test_rlimits_and_oom_score_adj(containers: Containers) -> None:
    def edit(c: dict[str, Any]) -> None:
        c["process"]["rlimits"] = [{"type": "RLIMIT_NOFILE", "soft": 300, "hard": 400},
                                   {"type": "RLIMIT_NPROC", "soft": 77, "hard": 77}]
        c["process"]["oomScoreAdj"] = 500

    result = containers.run("sh", "-c", "ulimit -n; ulimit -Hn; ulimit -u; cat /proc/self/oom_score_adj", edit=edit)
    assert result.out.split() == ["300", "400", "77", "500"]


def test_negative_oom_score_adj_needs_cap_sys_resource(containers: Containers) -> None:
    """This host's bounding set lacks CAP_SYS_RESOURCE: the error must say which step and why."""
    if Path("/proc/self/oom_score_adj").read_text().strip() != "0":
        pytest.skip("the test process's own oom_score_adj is not 0")
    try:
        Path("/proc/self/oom_score_adj").write_text("-1")
        Path("/proc/self/oom_score_adj").write_text("0")
        pytest.skip("this host lets root lower oom_score_adj")
    except PermissionError:
        pass
    with pytest.raises(ContainerInitError, match=r"write oom_score_adj: -500: permission denied \(EACCES\)") as err:
        containers.run("true", edit=lambda c: c["process"].update(oomScoreAdj=-500))
    assert err.value.failure is not None and err.value.failure.step is Step.OOM_SCORE_ADJ


def test_readonly_root_and_masked_and_readonly_paths(containers: Containers) -> None:
    assert Path("/proc/timer_list").read_text()  # what the container must not see
    result = containers.run("sh", "-c", "touch /x; wc -c < /proc/timer_list; echo 1 > /proc/sys/vm/overcommit_memory")
    assert result.out == "0\n"
    assert result.err.splitlines() == ["touch: /x: Read-only file system",
                                       "sh: can't create /proc/sys/vm/overcommit_memory: Read-only file system"]


def test_masked_directories_are_empty_read_only_and_one_file_system(containers: Containers) -> None:
    """Every masked directory shows one empty read-only tmpfs (a file system fewer for each:
    the kernel walks every file system when it removes a memory cgroup)."""
    def edit(c: dict[str, Any]) -> None:
        c["linux"]["maskedPaths"] = ["/proc/tty", "/sys/kernel", "/proc/driver", "/proc/timer_list"]

    result = containers.run("sh", "-c", "ls -A /proc/tty /sys/kernel /proc/driver; wc -c < /proc/timer_list; "
                            "touch /sys/kernel/x; grep -E ' /(proc/tty|sys/kernel|proc/driver) ' /proc/self/mountinfo",
                            edit=edit)
    lines = result.out.splitlines()
    assert lines[:6] == ["/proc/driver:", "", "/proc/tty:", "", "/sys/kernel:", "0"], result.out
    assert result.err.strip() == "touch: /sys/kernel/x: Read-only file system"
    masks = [line.split() for line in lines[6:]]
    assert len(masks) == 3 and len({m[2] for m in masks}) == 1, masks  # one device
    assert all(m[m.index("-") + 1] == "tmpfs" for m in masks), masks


@pytest.mark.parametrize("propagation", [None, "rshared", "rprivate"])
def test_rootfs_propagation(containers: Containers, propagation: str | None) -> None:
    """The propagation of the container's "/" (mountinfo's optional fields). By default a
    slave (of the host's mount where that is shared, else private): never shared back."""
    def edit(c: dict[str, Any]) -> None:
        c["linux"]["rootfsPropagation"] = propagation

    root = next(line for line in containers.run("cat", "/proc/self/mountinfo", edit=edit).out.splitlines()
                if line.split()[4] == "/")
    optional = root.split(" - ")[0].split()[6:]
    shared = any(field.startswith("shared:") for field in optional)
    assert shared == (propagation == "rshared"), root
    if propagation == "rprivate":
        assert optional == []


def test_sysctl_in_the_network_namespace(containers: Containers) -> None:
    host = Path("/proc/sys/net/ipv4/ip_forward").read_text()

    def edit(c: dict[str, Any]) -> None:
        c["linux"]["sysctl"] = {"net.ipv4.ip_forward": "0" if host == "1\n" else "1"}

    assert containers.run("cat", "/proc/sys/net/ipv4/ip_forward", edit=edit).out != host
    assert Path("/proc/sys/net/ipv4/ip_forward").read_text() == host


@pytest.mark.requires("seccomp")
def test_seccomp_denies_a_syscall(containers: Containers) -> None:
    def edit(c: dict[str, Any]) -> None:
        c["linux"]["seccomp"] = {"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64"],
                                 "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}]}

    result = containers.run("sh", "-c", "mkdir /tmp/x; grep Seccomp: /proc/self/status", edit=edit)
    assert "Operation not permitted" in result.err
    assert result.out == "Seccomp:\t2\n"


def test_bind_mounts_ro_and_rw(containers: Containers, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "in").write_text("from the host\n")

    def edit(c: dict[str, Any]) -> None:
        c["mounts"] += [{"destination": "/ro", "type": "bind", "source": str(shared), "options": ["rbind", "ro"]},
                        {"destination": "/rw", "type": "bind", "source": str(shared), "options": ["bind"]}]

    result = containers.run("sh", "-c", "cat /ro/in; touch /ro/x; echo hi > /rw/out", edit=edit)
    assert result.out == "from the host\n"
    assert "Read-only file system" in result.err
    assert (shared / "out").read_text() == "hi\n"


def test_binds_carry_the_mounts_under_their_source_and_later_ones(containers: Containers, tmp_path: Path) -> None:
    """An rbind brings the mounts under its source along, a bind does not; a mount the host
    makes under a shared source once the container is set up reaches it as well (a warm
    runtime's containers attach detached copies of their sources: the same for each)."""
    from skiff.runtime import libc

    source = tmp_path / "source"
    mounted: list[Path] = []

    def mount_tmpfs(sub: str) -> None:
        (source / sub).mkdir()
        libc.mount("tmpfs", str(source / sub), "tmpfs", 0, "size=16k")
        mounted.append(source / sub)
        (source / sub / "f").write_text(f"in {sub}\n")

    def edit(c: dict[str, Any]) -> None:
        c["mounts"] += [{"destination": "/r", "type": "bind", "source": str(source), "options": ["rbind"]},
                        {"destination": "/b", "type": "bind", "source": str(source), "options": ["bind"]}]

    source.mkdir()
    try:
        libc.mount(str(source), str(source), None, libc.MS_BIND)
        mounted.append(source)
        libc.mount(None, str(source), None, libc.MS_SHARED)
        mount_tmpfs("sub")
        cid = containers.create("sh", "-c", "cat /r/sub/f; ls /b/sub; cat /r/later/f", edit=edit)
        mount_tmpfs("later")
        pid = containers.runtime.state(cid).pid
        containers.capfd.readouterr()
        containers.runtime.start(cid)
        os.waitpid(pid, 0)
        assert containers.capfd.readouterr().out == "in sub\nin later\n"
        containers.runtime.delete(cid)
    finally:
        for path in reversed(mounted):
            libc.umount2(str(path), 0)


def test_terminal_through_the_console_socket(containers: Containers, tmp_path: Path) -> None:
    path = str(tmp_path / "console.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    rt = containers.runtime

    def edit(c: dict[str, Any]) -> None:
        c["process"]["terminal"] = True
        c["process"]["consoleSize"] = {"height": 30, "width": 100}

    bundle = containers.configure(("sh", "-c", "tty; stty size"), edit)
    cid = containers.next_id()
    try:
        rt.create(cid, str(bundle), console_socket=path)
        conn, _ = server.accept()
        _, fds, _, _ = socket.recv_fds(conn, 1024, 1)
        conn.close()
        master = fds[0]
        rt.start(cid)
        out = b""
        while b"100" not in out:
            try:
                chunk = os.read(master, 1024)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        os.close(master)
        assert b"/dev/pts/0" in out and b"30 100" in out
    finally:
        server.close()
        rt.delete(cid, force=True)


# -- hooks ----------------------------------------------------------------------------------

def _hook_script(tmp_path: Path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return str(path)


def test_hooks_run_in_order_with_the_state_on_stdin(containers: Containers, tmp_path: Path) -> None:
    log = tmp_path / "hooks.log"
    hooks = {kind: [{"path": _hook_script(tmp_path, kind, f'echo {kind} $(cat) >> {log}')}]
             for kind in ("prestart", "createRuntime", "poststart", "poststop")}
    # createContainer and startContainer hooks run inside the container: they resolve there.
    in_container = {"createContainer": [{"path": "/bin/true"}], "startContainer": [{"path": "/bin/true"}]}
    result = containers.run("true", edit=lambda c: c.update(hooks={**hooks, **in_container}))
    assert result.code == 0
    lines = log.read_text().splitlines()
    assert [line.split()[0] for line in lines] == ["prestart", "createRuntime", "poststart", "poststop"]
    state = json.loads(lines[0].split(" ", 1)[1])
    assert state["status"] == "creating" and state["pid"] > 0 and state["id"].startswith("skiff-test-")


def test_a_failing_prestart_hook_fails_create_and_leaves_nothing(containers: Containers, tmp_path: Path) -> None:
    hook = _hook_script(tmp_path, "fail", "echo no network for you >&2; exit 3")
    with pytest.raises(HookError, match=f"prestart hook {hook} failed: exit status 3: no network for you"):
        containers.run("true", edit=lambda c: c.update(hooks={"prestart": [{"path": hook}]}))
    assert containers.runtime.states() == []
    assert os.listdir(containers.runtime.store.root) == []  # not even a half-made state directory


def test_a_failing_create_container_hook_names_the_step(containers: Containers) -> None:
    with pytest.raises(ContainerInitError, match="run hook: createContainer hook /bin/false failed: exit status 1"):
        containers.run("true", edit=lambda c: c.update(hooks={"createContainer": [{"path": "/bin/false"}]}))


# -- errors -------------------------------------------------------------------------------

def test_missing_executable_fails_create_with_the_step(containers: Containers) -> None:
    with pytest.raises(ContainerInitError, match=r'exec: "no-such-binary": executable file not found in \$PATH') as err:
        containers.run("no-such-binary")
    assert err.value.failure is not None and err.value.failure.step is Step.LOOKUP
    assert containers.runtime.states() == []


def test_bad_config_names_the_field_and_leaves_nothing(containers: Containers) -> None:
    with pytest.raises(SpecError, match=r"process.args: must be a non-empty list"):
        containers.run(edit=lambda c: c["process"].update(args=[]))
    with pytest.raises(SpecError, match=r"linux.resources.memory.limit: expected an integer"):
        containers.run("true", edit=lambda c: c["linux"].update(resources={"memory": {"limit": "1g"}}))
    assert containers.runtime.store.ids() == []


def test_a_mount_that_fails_in_the_child_names_source_target_and_errno(containers: Containers) -> None:
    def edit(c: dict[str, Any]) -> None:
        c["mounts"].append({"destination": "/bad", "type": "tmpfs", "source": "tmpfs", "options": ["size=bogus"]})

    with pytest.raises(ContainerInitError, match=r"mount: tmpfs on .*/rootfs/bad: invalid argument \(EINVAL\)") as err:
        containers.run("true", edit=edit)
    assert err.value.failure is not None and err.value.failure.step is Step.MOUNT


def test_a_bind_mount_of_a_missing_source_is_refused_before_fork(containers: Containers) -> None:
    def edit(c: dict[str, Any]) -> None:
        c["mounts"].append({"destination": "/x", "type": "bind", "source": "/no/such/dir", "options": ["bind"]})

    with pytest.raises(InvalidArgument, match=r"mounts\[\d+\].source: /no/such/dir: no such file or directory"):
        containers.run("true", edit=edit)


def test_a_mount_target_cannot_escape_the_rootfs_through_a_symlink(containers: Containers, tmp_path: Path) -> None:
    rootfs = containers.bundle / "rootfs"
    os.symlink("/../../../../../../tmp", rootfs / "escape")
    victim = Path("/tmp") / f"skiff-escape-{os.getpid()}"

    def edit(c: dict[str, Any]) -> None:
        c["mounts"].append({"destination": f"/escape/{victim.name}", "type": "tmpfs", "source": "tmpfs"})

    assert containers.run("true", edit=edit).code == 0
    assert not victim.exists()
    assert (rootfs / "tmp" / victim.name).is_dir()


def test_run_in_the_foreground_copies_its_own_terminal(containers: Containers) -> None:
    """terminal: true without a console socket, as `runc spec` writes it: the container gets
    a pty whose other end `run` copies to its own stdio."""
    result = containers.run("sh", "-c", "tty; echo done", edit=lambda c: c["process"].update(terminal=True))
    assert result.code == 0
    assert result.out.replace("\r", "").splitlines() == ["/dev/pts/0", "done"]


@pytest.mark.parametrize("destination, link", [
    ("/missing/../../../../../../tmp/{victim}", None),
    ("/etc2/{victim}", "missing/../../../../../../tmp"),
])
def test_missing_parts_of_a_mount_target_cannot_climb_out(containers: Containers, destination: str,
                                                          link: str | None) -> None:
    rootfs = containers.bundle / "rootfs"
    victim = f"skiff-escape-{os.getpid()}"
    if link:
        os.symlink(link, rootfs / "etc2")

    def edit(c: dict[str, Any]) -> None:
        c["mounts"].append({"destination": destination.format(victim=victim), "type": "tmpfs", "source": "tmpfs"})

    assert containers.run("true", edit=edit).code == 0
    assert not (Path("/tmp") / victim).exists()
    assert (rootfs / "tmp" / victim).is_dir()


def test_exec_reports_an_execve_failure(containers: Containers) -> None:
    """The lookup runs as root; execve as the process's user is what can still fail, and
    `exec` must say so instead of returning as if it ran."""
    rootfs = containers.bundle / "rootfs"
    (rootfs / "root-only").write_text("#!/bin/sh\necho should not run\n")
    (rootfs / "root-only").chmod(0o700)
    rt = containers.runtime
    cid = containers.create("sleep", "60")
    rt.start(cid)
    process = _process(containers, "/root-only")
    from dataclasses import replace

    assert process.user is not None
    with pytest.raises(ContainerInitError, match=r"execve: /root-only: permission denied \(EACCES\)"):
        rt.exec(cid, replace(process, user=replace(process.user, uid=1000, gid=1000)))
    rt.delete(cid, force=True)


def test_a_cgroup_that_already_has_processes_is_refused(containers: Containers) -> None:
    rt = containers.runtime
    path = f"shared-{os.getpid()}"
    first = containers.create("sleep", "60", edit=lambda c: c["linux"].update(cgroupsPath=path))
    with pytest.raises(FailedPrecondition, match="its cgroup already has processes"):
        containers.create("true", edit=lambda c: c["linux"].update(cgroupsPath=path))
    assert rt.state(first).status is Status.CREATED  # the refused create took nothing of the first's
    rt.delete(first)
