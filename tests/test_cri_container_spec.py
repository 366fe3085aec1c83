"""cri/container_spec.py: CRI ContainerConfig + pod -> OCI spec. Unit checks on the spec built
from pb messages, then a few busybox containers run from such specs, checked from inside."""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TypeAlias

import pytest
from cri_api.v1 import api_pb2 as pb

from skiff.cri import container_spec as cs
from skiff.cri.container_spec import PodContext, container_spec
from skiff.cri.seccomp_default import runtime_default_profile
from skiff.errors import InvalidArgument
from skiff.oci import default_spec, spec_to_dict
from skiff.oci.image import ImageConfig
from skiff.oci.spec import LinuxNamespaceType, Mount, Spec
from skiff.runtime import seccomp

NS = {"network": "/run/pod/net", "ipc": "/run/pod/ipc", "uts": "/run/pod/uts", "pid": "/run/pod/pid"}
IMAGE = ImageConfig(entrypoint=("/bin/entry",), cmd=("serve",), env=("A=1",), working_dir="/srv")


# -- building messages -------------------------------------------------------------------

Mode: TypeAlias = pb.NamespaceMode.ValueType


def pod_config(*, network: Mode = pb.POD, ipc: Mode = pb.POD, pid: Mode = pb.CONTAINER,
               privileged: bool = False, hostname: str = "web-0") -> pb.PodSandboxConfig:
    return pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name="web", uid="uid-1", namespace="default"),
        hostname=hostname,
        linux=pb.LinuxPodSandboxConfig(
            security_context=pb.LinuxSandboxSecurityContext(
                namespace_options=pb.NamespaceOption(network=network, ipc=ipc, pid=pid),
                privileged=privileged),
            sysctls={"net.ipv4.ip_forward": "1"}))


def make_pod(pod_dir: Path, config: pb.PodSandboxConfig | None = None,
             paths: dict[str, str] | None = None) -> PodContext:
    return PodContext(sandbox_id="sandbox-1", config=config or pod_config(),
                      namespace_paths=NS if paths is None else paths, pod_dir=str(pod_dir), files_dir=str(pod_dir),
                      cgroups_path="kubepods/pod1/ctr1")


def ctr_config(**security: object) -> pb.ContainerConfig:
    return pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name="app"),
        image=pb.ImageSpec(image="docker.io/library/busybox:1"),
        linux=pb.LinuxContainerConfig(security_context=pb.LinuxContainerSecurityContext(**security)))  # type: ignore[arg-type]


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    """Enough of an image root to look users up in."""
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n")
    (root / "etc/group").write_text("root:x:0:\napp:x:1000:\nvideo:x:44:app\naudio:x:29:other\n")
    return root


@pytest.fixture
def pod_dir(tmp_path: Path) -> Path:
    d = tmp_path / "pod"
    d.mkdir()
    return d


def build(config: pb.ContainerConfig, pod: PodContext, rootfs: Path, image: ImageConfig | None = IMAGE) -> Spec:
    return container_spec(config, pod, image=image, rootfs=str(rootfs), container_id="ctr1")


def mount_at(spec: Spec, destination: str) -> Mount:
    found = [m for m in spec.mounts if m.destination == destination]
    assert len(found) == 1, found
    return found[0]


def invalid(match: str) -> AbstractContextManager[pytest.ExceptionInfo[InvalidArgument]]:
    return pytest.raises(InvalidArgument, match=match)


# -- process -----------------------------------------------------------------------------

def test_defaults_follow_containerd(rootfs: Path, pod_dir: Path) -> None:
    config = ctr_config()
    config.envs.add(key="B", value="2")
    config.annotations["team"] = "a"
    config.annotations[cs.SANDBOX_ID] = "forged"
    spec = build(config, make_pod(pod_dir), rootfs)
    assert spec.process is not None and spec.linux is not None
    assert spec.process.args == ("/bin/entry", "serve")
    assert spec.process.cwd == "/srv"
    assert spec.process.env[0] == "HOSTNAME=web-0"
    assert "A=1" in spec.process.env and "B=2" in spec.process.env
    assert spec.process.capabilities is not None
    assert set(spec.process.capabilities.bounding) == set(cs.DEFAULT_CAPABILITIES)
    assert spec.process.capabilities.ambient == ()
    assert spec.process.rlimits == () and not spec.process.no_new_privileges and not spec.process.terminal
    assert spec.process.oom_score_adj is None
    assert spec.hostname is None
    assert spec.root is not None and spec.root.path == str(rootfs) and not spec.root.readonly
    assert spec.linux.cgroups_path == "kubepods/pod1/ctr1"
    assert spec.linux.sysctl == {}
    assert spec.linux.seccomp is None  # neither seccomp nor seccomp_profile_path: unconfined
    assert spec.linux.masked_paths == default_spec().linux.masked_paths  # type: ignore[union-attr]
    assert spec.annotations == {
        "team": "a", cs.CONTAINER_TYPE: "container", cs.SANDBOX_ID: "sandbox-1",
        cs.SANDBOX_NAMESPACE: "default", cs.SANDBOX_UID: "uid-1", cs.SANDBOX_NAME: "web",
        cs.CONTAINER_NAME: "app", cs.IMAGE_NAME: "docker.io/library/busybox:1"}


def test_command_and_args_override_the_image(rootfs: Path, pod_dir: Path) -> None:
    config = ctr_config()
    config.args.extend(["-v"])
    assert build(config, make_pod(pod_dir), rootfs).process.args == ("/bin/entry", "-v")  # type: ignore[union-attr]
    config.command.extend(["/bin/other"])
    config.working_dir = "/tmp"
    spec = build(config, make_pod(pod_dir), rootfs)
    assert spec.process is not None
    assert spec.process.args == ("/bin/other", "-v") and spec.process.cwd == "/tmp"
    config.working_dir = "rel"
    with invalid("^working_dir 'rel': must be an absolute path"):
        build(config, make_pod(pod_dir), rootfs)
    bad = ctr_config()
    bad.envs.add(key="", value="x")
    with invalid(r"^envs\[0\]\.key: "):
        build(bad, make_pod(pod_dir), rootfs)


def test_users_and_groups(rootfs: Path, pod_dir: Path) -> None:
    pod = make_pod(pod_dir)
    spec = build(ctr_config(run_as_username="app"), pod, rootfs)
    assert spec.process is not None
    assert (spec.process.user.uid, spec.process.user.gid) == (1000, 1000)
    assert spec.process.user.additional_gids == (44, 1000)  # video lists app; primary kept
    assert dict(e.split("=", 1) for e in spec.process.env)["HOME"] == "/home/app"

    spec = build(ctr_config(run_as_user=pb.Int64Value(value=1000), run_as_group=pb.Int64Value(value=5),
                            supplemental_groups=[7, 44]), pod, rootfs)
    assert spec.process is not None
    assert (spec.process.user.uid, spec.process.user.gid) == (1000, 5)
    assert spec.process.user.additional_gids == (5, 7, 44)

    spec = build(ctr_config(run_as_user=pb.Int64Value(value=1000), supplemental_groups=[7],
                            supplemental_groups_policy=pb.Strict), pod, rootfs)
    assert spec.process is not None and spec.process.user.additional_gids == (7, 1000)

    # no user in the security context: the image's
    spec = build(ctr_config(), pod, rootfs, image=ImageConfig(user="app", cmd=("sh",)))
    assert spec.process is not None and spec.process.user.uid == 1000

    with invalid(r"^linux\.security_context\.run_as_group: needs run_as_user"):
        build(ctr_config(run_as_group=pb.Int64Value(value=5)), pod, rootfs)
    with invalid(r"^linux\.security_context\.run_as_user: must be between 0 and"):
        build(ctr_config(run_as_user=pb.Int64Value(value=-1)), pod, rootfs)
    with invalid(r"^linux\.security_context\.run_as_username: user 'nobody': no such user"):
        build(ctr_config(run_as_username="nobody"), pod, rootfs)
    with invalid(r"^linux\.security_context\.supplemental_groups\[1\]: "):
        build(ctr_config(supplemental_groups=[1, -3]), pod, rootfs)


def test_capabilities(rootfs: Path, pod_dir: Path) -> None:
    pod = make_pod(pod_dir)

    def caps(**kw: list[str]) -> tuple[str, ...]:
        spec = build(ctr_config(capabilities=pb.Capability(**kw)), pod, rootfs)
        assert spec.process is not None and spec.process.capabilities is not None
        c = spec.process.capabilities
        assert c.effective == c.bounding == c.permitted
        return c.bounding

    got = caps(add_capabilities=["NET_ADMIN", "CAP_sys_time"], drop_capabilities=["chown", "CAP_KILL"])
    assert "CAP_NET_ADMIN" in got and "CAP_SYS_TIME" in got
    assert "CAP_CHOWN" not in got and "CAP_KILL" not in got and "CAP_SETUID" in got
    assert caps(drop_capabilities=["ALL"], add_capabilities=["NET_BIND_SERVICE"]) == ("CAP_NET_BIND_SERVICE",)
    everything = caps(add_capabilities=["ALL"], drop_capabilities=["SYS_ADMIN"])
    assert "CAP_SYS_ADMIN" not in everything and "CAP_SYS_MODULE" in everything

    spec = build(ctr_config(capabilities=pb.Capability(drop_capabilities=["ALL"],
                                                       add_ambient_capabilities=["NET_BIND_SERVICE"])), pod, rootfs)
    assert spec.process is not None and spec.process.capabilities is not None
    c = spec.process.capabilities
    assert c.ambient == c.inheritable == c.bounding == ("CAP_NET_BIND_SERVICE",)

    with invalid(r"^linux\.security_context\.capabilities\.drop_capabilities\[1\]: unknown capability 'FLY'"):
        caps(drop_capabilities=["KILL", "FLY"])


def test_oom_score_adj_is_clamped_not_fatal(rootfs: Path, pod_dir: Path) -> None:
    with open("/proc/self/oom_score_adj") as f:
        own = int(f.read())
    config = ctr_config()
    config.linux.resources.oom_score_adj = -999
    spec = build(config, make_pod(pod_dir), rootfs)
    assert spec.process is not None
    if cs._has_effective_capability(cs._CAP_SYS_RESOURCE):
        assert spec.process.oom_score_adj == -999
    else:
        assert spec.process.oom_score_adj == max(-999, own)
    config.linux.resources.oom_score_adj = 1000
    assert build(config, make_pod(pod_dir), rootfs).process.oom_score_adj == 1000  # type: ignore[union-attr]
    config.linux.resources.oom_score_adj = 1001
    with invalid(r"^linux\.resources\.oom_score_adj: must be between -1000 and 1000"):
        build(config, make_pod(pod_dir), rootfs)


def test_resources(rootfs: Path, pod_dir: Path) -> None:
    config = ctr_config()
    r = config.linux.resources
    r.cpu_period, r.cpu_quota, r.cpu_shares = 100000, 50000, 512
    r.cpuset_cpus, r.cpuset_mems = "0", "0"
    r.memory_limit_in_bytes = 64 << 20
    r.hugepage_limits.add(page_size="2MB", limit=0)
    r.unified["memory.high"] = "max"
    spec = build(config, make_pod(pod_dir), rootfs)
    assert spec.linux is not None and spec.linux.resources is not None
    res = spec.linux.resources
    assert res.cpu is not None and (res.cpu.period, res.cpu.quota, res.cpu.shares) == (100000, 50000, 512)
    assert (res.cpu.cpus, res.cpu.mems) == ("0", "0")
    assert res.memory is not None and res.memory.limit == 64 << 20
    # no swap limit given: swap capped at the limit where the host accounts swap
    assert res.memory.swap == (64 << 20 if cs._swap_accounted() else None)
    assert res.hugepage_limits[0].page_size == "2MB" and res.unified == {"memory.high": "max"}
    assert res.devices[0].allow is False  # runc's deny-all stays first

    r.cpu_shares = 1
    with invalid(r"^linux\.resources\.cpu_shares: must be between 2 and 262144"):
        build(config, make_pod(pod_dir), rootfs)
    r.cpu_shares = 512
    r.hugepage_limits[0].page_size = "huge"
    with invalid(r"^linux\.resources\.hugepage_limits\[0\]\.page_size: "):
        build(config, make_pod(pod_dir), rootfs)


# -- namespaces --------------------------------------------------------------------------

def ns_map(spec: Spec) -> dict[LinuxNamespaceType, str | None]:
    assert spec.linux is not None
    return {ns.type: ns.path for ns in spec.linux.namespaces}


def test_namespaces_join_the_pod(rootfs: Path, pod_dir: Path) -> None:
    got = ns_map(build(ctr_config(), make_pod(pod_dir), rootfs))
    assert got[LinuxNamespaceType.NETWORK] == NS["network"]
    assert got[LinuxNamespaceType.IPC] == NS["ipc"]
    assert got[LinuxNamespaceType.UTS] == NS["uts"]
    assert got[LinuxNamespaceType.PID] is None and got[LinuxNamespaceType.MOUNT] is None
    assert LinuxNamespaceType.USER not in got


def test_host_namespaces(rootfs: Path, pod_dir: Path) -> None:
    pod = make_pod(pod_dir, pod_config(network=pb.NODE, ipc=pb.NODE, pid=pb.NODE), paths={})
    spec = build(ctr_config(), pod, rootfs)
    assert set(ns_map(spec)) <= {LinuxNamespaceType.MOUNT, LinuxNamespaceType.CGROUP}
    assert spec.hostname is None
    assert mount_at(spec, "/dev/shm").source == "/dev/shm"  # host IPC: the host's shm


def test_pid_modes(rootfs: Path, pod_dir: Path) -> None:
    shared = make_pod(pod_dir, pod_config(pid=pb.POD))
    assert ns_map(build(ctr_config(), shared, rootfs))[LinuxNamespaceType.PID] == NS["pid"]
    # the container's own namespace_options decide pid
    own = ctr_config(namespace_options=pb.NamespaceOption(pid=pb.CONTAINER))
    assert ns_map(build(own, shared, rootfs))[LinuxNamespaceType.PID] is None
    target = ctr_config(namespace_options=pb.NamespaceOption(pid=pb.TARGET, target_id="other"))
    assert ns_map(build(target, shared, rootfs))[LinuxNamespaceType.PID] == NS["pid"]
    no_pid = make_pod(pod_dir, paths={k: v for k, v in NS.items() if k != "pid"})
    got = ns_map(build(target, no_pid, rootfs))
    assert LinuxNamespaceType.PID in got and got[LinuxNamespaceType.PID] is None


def test_missing_namespace_path(rootfs: Path, pod_dir: Path) -> None:
    pod = make_pod(pod_dir, paths={"network": "/run/pod/net", "uts": "/run/pod/uts"})
    with invalid(r"^sandbox_config\.linux\.security_context\.namespace_options\.ipc: POD mode, but the pod has no ipc"):
        build(ctr_config(), pod, rootfs)
    pod = make_pod(pod_dir, pod_config(pid=pb.POD), paths={k: v for k, v in NS.items() if k != "pid"})
    with invalid(r"namespace_options\.pid: POD mode, but the pod has no pid namespace"):
        build(ctr_config(), pod, rootfs)
    pod = make_pod(pod_dir, pod_config(network=pb.CONTAINER))
    with invalid(r"namespace_options\.network: CONTAINER is only valid for pid"):
        build(ctr_config(), pod, rootfs)
    userns = ctr_config(namespace_options=pb.NamespaceOption(
        pid=pb.CONTAINER, userns_options=pb.UserNamespace(mode=pb.POD)))
    with invalid(r"^linux\.security_context\.namespace_options\.userns_options: user namespaces"):
        build(userns, make_pod(pod_dir), rootfs)


# -- mounts ------------------------------------------------------------------------------

def test_pod_files_are_bound(rootfs: Path, pod_dir: Path) -> None:
    for name in ("hostname", "hosts", "resolv.conf"):
        (pod_dir / name).write_text(name)
    (pod_dir / "shm").mkdir()
    spec = build(ctr_config(readonly_rootfs=True), make_pod(pod_dir), rootfs)
    assert spec.root is not None and spec.root.readonly
    for name, target in (("hostname", "/etc/hostname"), ("hosts", "/etc/hosts"), ("resolv.conf", "/etc/resolv.conf")):
        m = mount_at(spec, target)
        assert (m.type, m.source, m.options) == ("bind", str(pod_dir / name), ("rbind", "rprivate", "ro"))
    shm = mount_at(spec, "/dev/shm")
    assert (shm.source, shm.options) == (str(pod_dir / "shm"), ("rbind", "rprivate", "rw"))


def test_missing_pod_files_keep_defaults(rootfs: Path, pod_dir: Path) -> None:
    spec = build(ctr_config(), make_pod(pod_dir), rootfs)
    assert not [m for m in spec.mounts if m.destination.startswith("/etc/")]
    assert mount_at(spec, "/dev/shm").type == "tmpfs"


def test_cri_mounts(rootfs: Path, pod_dir: Path, tmp_path: Path) -> None:
    (pod_dir / "hosts").write_text("pod")
    own_hosts = tmp_path / "my-hosts"
    own_hosts.write_text("mine")
    missing = tmp_path / "volumes" / "data"
    config = ctr_config()
    config.mounts.add(container_path="/data/sub", host_path=str(tmp_path), readonly=True)
    config.mounts.add(container_path="/data", host_path=str(missing))
    config.mounts.add(container_path="/etc/hosts", host_path=str(own_hosts))
    spec = build(config, make_pod(pod_dir), rootfs)
    assert missing.is_dir()  # created, as containerd does
    assert mount_at(spec, "/etc/hosts").source == str(own_hosts)  # the container's wins
    order = [m.destination for m in spec.mounts]
    assert order.index("/data") < order.index("/data/sub")  # shallow first
    assert mount_at(spec, "/data/sub").options == ("rbind", "rprivate", "ro")
    assert spec.linux is not None and spec.linux.rootfs_propagation is None

    # a /dev mount replaces every default below /dev
    dev = ctr_config()
    dev.mounts.add(container_path="/dev", host_path="/dev")
    assert [m.destination for m in build(dev, make_pod(pod_dir), rootfs).mounts if m.destination.startswith("/dev")] == ["/dev"]

    bad = ctr_config()
    bad.mounts.add(container_path="/ok", host_path=str(tmp_path))
    bad.mounts.add(container_path="data", host_path=str(tmp_path))
    with invalid(r"^mounts\[1\]\.container_path: must be an absolute path"):
        build(bad, make_pod(pod_dir), rootfs)


def test_mount_propagation(rootfs: Path, pod_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    slave = ctr_config()
    slave.mounts.add(container_path="/a", host_path=str(tmp_path), propagation=pb.PROPAGATION_HOST_TO_CONTAINER)
    point, optional = cs._mount_of(str(tmp_path.resolve()))
    if not any(o.startswith(("shared:", "master:")) for o in optional):
        with invalid(rf"^mounts\[0\]\.propagation: .* is on {point}, which is neither shared nor slave"):
            build(slave, make_pod(pod_dir), rootfs)
    # a host whose mount is shared (as systemd makes /)
    monkeypatch.setattr(cs, "_mount_of", lambda path: ("/", ["shared:1"]))
    spec = build(slave, make_pod(pod_dir), rootfs)
    assert mount_at(spec, "/a").options == ("rbind", "rslave", "rw")
    assert spec.linux is not None and spec.linux.rootfs_propagation == "rslave"
    slave.mounts.add(container_path="/b", host_path=str(tmp_path), propagation=pb.PROPAGATION_BIDIRECTIONAL)
    spec = build(slave, make_pod(pod_dir), rootfs)
    assert mount_at(spec, "/b").options[1] == "rshared"
    assert spec.linux is not None and spec.linux.rootfs_propagation == "rshared"


# -- devices -----------------------------------------------------------------------------

def test_devices(rootfs: Path, pod_dir: Path, tmp_path: Path) -> None:
    config = ctr_config()
    config.devices.add(container_path="/dev/mynull", host_path="/dev/null", permissions="rw")
    spec = build(config, make_pod(pod_dir), rootfs)
    assert spec.linux is not None and spec.linux.resources is not None
    (dev,) = spec.linux.devices
    assert (dev.path, dev.type, dev.major, dev.minor, dev.file_mode) == ("/dev/mynull", "c", 1, 3, 0o666)
    rule = spec.linux.resources.devices[-1]
    assert (rule.allow, rule.type, rule.major, rule.minor, rule.access) == (True, "c", 1, 3, "rw")

    plain = tmp_path / "file"
    plain.write_text("")
    bad = ctr_config()
    bad.devices.add(container_path="/dev/null", host_path="/dev/null")
    bad.devices.add(container_path="/dev/x", host_path=str(plain))
    with invalid(r"^devices\[1\]\.host_path: .* is not a device node"):
        build(bad, make_pod(pod_dir), rootfs)


# -- security ----------------------------------------------------------------------------

def test_privileged(rootfs: Path, pod_dir: Path) -> None:
    with invalid(r"^linux\.security_context\.privileged: the pod sandbox is not privileged"):
        build(ctr_config(privileged=True), make_pod(pod_dir), rootfs)
    pod = make_pod(pod_dir, pod_config(privileged=True))
    spec = build(ctr_config(privileged=True, seccomp=pb.SecurityProfile(profile_type=pb.SecurityProfile.RuntimeDefault),
                            capabilities=pb.Capability(drop_capabilities=["ALL"])), pod, rootfs)
    assert spec.process is not None and spec.process.capabilities is not None and spec.linux is not None
    assert "CAP_SYS_ADMIN" in spec.process.capabilities.bounding
    assert spec.linux.seccomp is None
    assert spec.linux.masked_paths == () and spec.linux.readonly_paths == ()
    assert "ro" not in mount_at(spec, "/sys").options
    assert spec.linux.resources is not None
    assert [(d.allow, d.type, d.access) for d in spec.linux.resources.devices] == [(True, None, "rwm")]
    assert LinuxNamespaceType.CGROUP not in ns_map(spec)


def test_masked_and_readonly_paths(rootfs: Path, pod_dir: Path) -> None:
    spec = build(ctr_config(masked_paths=["/proc/kcore"], readonly_paths=["/proc/sys"]), make_pod(pod_dir), rootfs)
    assert spec.linux is not None
    assert spec.linux.masked_paths == ("/proc/kcore",) and spec.linux.readonly_paths == ("/proc/sys",)
    with invalid(r"^linux\.security_context\.readonly_paths\[0\]: must be an absolute path"):
        build(ctr_config(readonly_paths=["proc"]), make_pod(pod_dir), rootfs)


def test_seccomp_profiles(rootfs: Path, pod_dir: Path, tmp_path: Path) -> None:
    pod = make_pod(pod_dir)

    def profile(**kw: object) -> object:
        spec = build(ctr_config(**kw), pod, rootfs)
        assert spec.linux is not None
        return spec.linux.seccomp

    default = profile(seccomp=pb.SecurityProfile(profile_type=pb.SecurityProfile.RuntimeDefault))
    assert default == runtime_default_profile(cs.DEFAULT_CAPABILITIES)
    assert profile(seccomp_profile_path="runtime/default") == default
    assert profile(seccomp=pb.SecurityProfile(profile_type=pb.SecurityProfile.Unconfined)) is None
    assert profile(seccomp_profile_path="unconfined") is None

    docker = {
        "defaultAction": "SCMP_ACT_ERRNO",
        "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86"]},
                    {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]}],
        "syscalls": [
            {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"},
            {"name": "ptrace", "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_PTRACE"]}},
            {"names": ["chown"], "action": "SCMP_ACT_ALLOW", "excludes": {"caps": ["CAP_CHOWN"]}},
            {"names": ["getpid"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_KILL"]}},
        ],
    }
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(docker))
    loaded = profile(seccomp=pb.SecurityProfile(profile_type=pb.SecurityProfile.Localhost, localhost_ref=str(path)))
    assert loaded is not None
    assert [rule.names for rule in loaded.syscalls] == [("read", "write"), ("getpid",)]  # type: ignore[attr-defined]
    if os.uname().machine == "x86_64":
        assert loaded.architectures == ("SCMP_ARCH_X86_64", "SCMP_ARCH_X86")  # type: ignore[attr-defined]
    assert profile(seccomp_profile_path=f"localhost/{path}") == loaded
    seccomp.compile_filter(loaded)  # type: ignore[arg-type]

    path.write_text(json.dumps({"defaultAction": "SCMP_ACT_NOPE"}))
    with invalid(rf"^linux\.security_context\.seccomp\.localhost_ref: {path}: .*defaultAction"):
        profile(seccomp=pb.SecurityProfile(profile_type=pb.SecurityProfile.Localhost, localhost_ref=str(path)))
    path.write_text("{")
    with invalid(rf"^linux\.security_context\.seccomp_profile_path: {path}: not JSON"):
        profile(seccomp_profile_path=f"localhost/{path}")
    with invalid(r"^linux\.security_context\.seccomp\.localhost_ref: /nope\.json: no such file"):
        profile(seccomp=pb.SecurityProfile(profile_type=pb.SecurityProfile.Localhost, localhost_ref="/nope.json"))
    with invalid(r"^linux\.security_context\.seccomp_profile_path: unknown seccomp profile 'docker/strict'"):
        profile(seccomp_profile_path="docker/strict")


def test_runtime_default_profile_compiles() -> None:
    names = {n for rule in runtime_default_profile(cs.DEFAULT_CAPABILITIES).syscalls for n in rule.names}
    assert {"mount", "unshare", "setns", "keyctl", "bpf", "ptrace", "kexec_load", "clone", "clone3"} <= names
    admin = {n for rule in runtime_default_profile(("CAP_SYS_ADMIN",)).syscalls for n in rule.names}
    assert "mount" not in admin and "clone" not in admin and "keyctl" in admin
    for caps in (cs.DEFAULT_CAPABILITIES, ("CAP_SYS_ADMIN", "CAP_SYS_PTRACE"), ()):
        assert seccomp.compile_filter(runtime_default_profile(caps)).bpf


# -- real containers ---------------------------------------------------------------------

@pytest.fixture
def busybox_root(tmp_path: Path) -> Path:
    from skiff.demo import make_rootfs

    root = tmp_path / "bundle" / "rootfs"
    make_rootfs(str(root))
    return root


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[object]:
    from skiff.runtime.container import Runtime

    rt = Runtime(str(tmp_path / "state"))
    yield rt
    for state in rt.states():
        rt.delete(state.id, force=True)


def run_spec(runtime: object, spec: Spec, bundle: Path, capfd: pytest.CaptureFixture[str]) -> tuple[int, str]:
    from skiff.runtime.container import Runtime

    assert isinstance(runtime, Runtime)
    (bundle / "config.json").write_text(json.dumps(spec_to_dict(spec)))
    capfd.readouterr()
    code = runtime.run(f"skiff-test-cri-{os.getpid()}", str(bundle))
    out, err = capfd.readouterr()
    return code, out + err


def host_pod(pod_dir: Path) -> PodContext:
    """A pod on the host's network and IPC, containers in their own pid namespace: no pinned
    namespaces needed to run one."""
    return PodContext(sandbox_id="sandbox-1", config=pod_config(network=pb.NODE, ipc=pb.NODE, pid=pb.CONTAINER),
                      namespace_paths={}, pod_dir=str(pod_dir), files_dir=str(pod_dir),
                      cgroups_path=f"skiff-test-cri-{os.getpid()}")


def shell(script: str, **security: object) -> pb.ContainerConfig:
    config = ctr_config(**security)
    config.command.extend(["sh", "-c", script])
    return config


@pytest.mark.requires("busybox")
def test_run_drops_capabilities_and_applies_user(busybox_root: Path, pod_dir: Path, runtime: object,
                                                  capfd: pytest.CaptureFixture[str]) -> None:
    config = shell("grep CapBnd /proc/self/status; id -u; id -g; id -G",
                   run_as_user=pb.Int64Value(value=65534), supplemental_groups=[1234],
                   capabilities=pb.Capability(drop_capabilities=["ALL"], add_capabilities=["KILL"]))
    spec = container_spec(config, host_pod(pod_dir), image=None, rootfs=str(busybox_root), container_id="c")
    code, out = run_spec(runtime, spec, busybox_root.parent, capfd)
    assert code == 0, out
    lines = out.split()
    assert int(lines[1], 16) == 1 << 5  # CAP_KILL alone
    assert lines[2:4] == ["65534", "65534"]
    assert set(lines[4:]) == {"65534", "1234"}


@pytest.mark.requires("busybox")
def test_run_readonly_rootfs_refuses_a_write(busybox_root: Path, pod_dir: Path, runtime: object,
                                             capfd: pytest.CaptureFixture[str]) -> None:
    config = shell("touch /newfile 2>&1; echo rc=$?", readonly_rootfs=True)
    spec = container_spec(config, host_pod(pod_dir), image=None, rootfs=str(busybox_root), container_id="c")
    code, out = run_spec(runtime, spec, busybox_root.parent, capfd)
    assert code == 0, out
    assert "Read-only file system" in out and "rc=1" in out
    assert not (busybox_root / "newfile").exists()


@pytest.mark.requires("busybox", "seccomp", "userns")
def test_run_runtime_default_seccomp_refuses_unshare(busybox_root: Path, pod_dir: Path, runtime: object,
                                                     capfd: pytest.CaptureFixture[str]) -> None:
    # unshare -U needs no capability, so only seccomp can refuse it: Unconfined lets it pass
    script = "unshare -U true 2>&1; echo unshare=$?; mount -t tmpfs x /mnt 2>&1; echo mount=$?"
    pod = host_pod(pod_dir)
    unconfined = shell(script, seccomp=pb.SecurityProfile(profile_type=pb.SecurityProfile.Unconfined))
    spec = container_spec(unconfined, pod, image=None, rootfs=str(busybox_root), container_id="c")
    code, out = run_spec(runtime, spec, busybox_root.parent, capfd)
    assert code == 0 and "unshare=0" in out, out

    confined = shell(script, seccomp=pb.SecurityProfile(profile_type=pb.SecurityProfile.RuntimeDefault),
                     capabilities=pb.Capability(add_capabilities=["SYS_PTRACE"]))
    spec = container_spec(confined, pod, image=None, rootfs=str(busybox_root), container_id="c")
    code, out = run_spec(runtime, spec, busybox_root.parent, capfd)
    assert code == 0, out
    assert "unshare=1" in out and "mount=" in out and "mount=0" not in out
    assert os.strerror(errno.EPERM) in out


@pytest.mark.requires("busybox")
def test_run_sees_the_pod_files(busybox_root: Path, pod_dir: Path, runtime: object,
                                capfd: pytest.CaptureFixture[str]) -> None:
    (pod_dir / "hosts").write_text("10.1.2.3 web-0\n")
    (pod_dir / "hostname").write_text("web-0\n")
    config = shell("cat /etc/hosts /etc/hostname; echo $HOSTNAME; echo x > /etc/hosts 2>&1; echo rc=$?")
    spec = container_spec(config, host_pod(pod_dir), image=None, rootfs=str(busybox_root), container_id="c")
    code, out = run_spec(runtime, spec, busybox_root.parent, capfd)
    assert code == 0, out
    assert out.startswith("10.1.2.3 web-0\nweb-0\nweb-0\n"), out
    assert (pod_dir / "hosts").read_text() == "x\n"  # a writable bind: the rootfs is not read-only


@pytest.mark.requires("busybox")
def test_run_joins_the_pod_namespaces(busybox_root: Path, pod_dir: Path, tmp_path: Path, runtime: object,
                                      capfd: pytest.CaptureFixture[str]) -> None:
    """A pause-like container holds the pod's namespaces; the CRI container joins its
    network, ipc and uts namespaces by path and keeps its hostname."""
    import dataclasses

    from skiff.demo import make_rootfs
    from skiff.runtime.container import Runtime

    assert isinstance(runtime, Runtime)
    pause_root = tmp_path / "pause" / "rootfs"
    make_rootfs(str(pause_root))
    base = default_spec(args=("sleep", "60"))
    assert base.process is not None and base.root is not None
    pause = dataclasses.replace(base, hostname="pod-host",
                                process=dataclasses.replace(base.process, terminal=False),
                                root=dataclasses.replace(base.root, path=str(pause_root)))
    pause_id = f"skiff-test-pause-{os.getpid()}"
    state = runtime.create(pause_id, str(pause_root.parent), spec=pause)
    runtime.start(pause_id)
    assert state.pid is not None
    paths = {kind: f"/proc/{state.pid}/ns/{name}" for kind, name in
             (("network", "net"), ("ipc", "ipc"), ("uts", "uts"))}
    pod = dataclasses.replace(host_pod(pod_dir), config=pod_config(hostname="pod-host"), namespace_paths=paths)
    config = shell("hostname; for n in net ipc uts; do readlink /proc/self/ns/$n; done")
    spec = container_spec(config, pod, image=None, rootfs=str(busybox_root), container_id="c")
    try:
        code, out = run_spec(runtime, spec, busybox_root.parent, capfd)
        expected = [os.readlink(p) for p in paths.values()]
    finally:
        runtime.delete(pause_id, force=True)
    assert code == 0, out
    assert out.split() == ["pod-host", *expected]
