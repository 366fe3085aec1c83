"""skiff.oci: the config.json model, its parser and validator, `spec` and `features`.

Pure data: no root, no kernel features, nothing created on the host (runc, where
installed, only writes a config.json into tmp_path).
"""

import copy
import dataclasses
import json
import os
import pickle
import shutil
import subprocess
import sys
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from skiff import oci
from skiff.errors import InvalidArgument
from skiff.oci import spec as S
from skiff.oci.codec import from_json
from skiff.oci.validate import CAPABILITIES

# `runc spec` as runc 1.2 writes it (libcontainer/specconv/example.go) on a host without
# a pure cgroup v2 hierarchy (which would add a cgroup namespace).
RUNC_SPEC: dict[str, Any] = {
    "ociVersion": "1.2.0",
    "process": {
        "terminal": True,
        "user": {"uid": 0, "gid": 0},
        "args": ["sh"],
        "env": [
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "TERM=xterm",
        ],
        "cwd": "/",
        "capabilities": {
            "bounding": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
            "effective": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
            "permitted": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
        },
        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
        "noNewPrivileges": True,
    },
    "root": {"path": "rootfs", "readonly": True},
    "hostname": "runc",
    "mounts": [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {
            "destination": "/dev",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
        },
        {
            "destination": "/dev/pts",
            "type": "devpts",
            "source": "devpts",
            "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
        },
        {
            "destination": "/dev/shm",
            "type": "tmpfs",
            "source": "shm",
            "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        },
        {
            "destination": "/dev/mqueue",
            "type": "mqueue",
            "source": "mqueue",
            "options": ["nosuid", "noexec", "nodev"],
        },
        {
            "destination": "/sys",
            "type": "sysfs",
            "source": "sysfs",
            "options": ["nosuid", "noexec", "nodev", "ro"],
        },
        {
            "destination": "/sys/fs/cgroup",
            "type": "cgroup",
            "source": "cgroup",
            "options": ["nosuid", "noexec", "nodev", "relatime", "ro"],
        },
    ],
    "linux": {
        "resources": {"devices": [{"allow": False, "access": "rwm"}]},
        "namespaces": [
            {"type": "pid"},
            {"type": "network"},
            {"type": "ipc"},
            {"type": "uts"},
            {"type": "mount"},
        ],
        "maskedPaths": [
            "/proc/acpi",
            "/proc/asound",
            "/proc/kcore",
            "/proc/keys",
            "/proc/latency_stats",
            "/proc/timer_list",
            "/proc/timer_stats",
            "/proc/sched_debug",
            "/sys/firmware",
            "/proc/scsi",
            "/sys/devices/virtual/tpm",
        ],
        "readonlyPaths": [
            "/proc/bus",
            "/proc/fs",
            "/proc/irq",
            "/proc/sys",
            "/proc/sysrq-trigger",
        ],
    },
}

# Every field of every model set to something other than its default, with the JSON
# names written out from runtime-spec specs-go/config.go: a name skiff derives wrongly
# is dropped as unknown on parse and missing on output, so the round trip catches it.
FULL_SPEC: dict[str, Any] = {
    "ociVersion": "1.2.0",
    "process": {
        "terminal": True,
        "consoleSize": {"height": 24, "width": 80},
        "user": {
            "uid": 1000,
            "gid": 1000,
            "umask": 18,
            "additionalGids": [5, 6],
            "username": "someone",
        },
        "args": ["/bin/sh", "-c", "true"],
        "commandLine": "sh -c true",
        "env": ["PATH=/bin", "EMPTY="],
        "cwd": "/work",
        "capabilities": {
            "bounding": ["CAP_KILL"],
            "effective": ["CAP_KILL"],
            "inheritable": ["CAP_CHOWN"],
            "permitted": ["CAP_KILL"],
            "ambient": ["CAP_KILL"],
        },
        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 2048, "soft": 1024}],
        "noNewPrivileges": True,
        "apparmorProfile": "unconfined",
        "oomScoreAdj": 500,
        "scheduler": {
            "policy": "SCHED_DEADLINE",
            "nice": 5,
            "flags": ["SCHED_FLAG_RESET_ON_FORK"],
            "runtime": 10000,
            "deadline": 20000,
            "period": 30000,
        },
        "selinuxLabel": "system_u:system_r:container_t:s0",
        "ioPriority": {"class": "IOPRIO_CLASS_BE", "priority": 4},
    },
    "root": {"path": "/var/lib/rootfs", "readonly": True},
    "hostname": "box",
    "domainname": "example.org",
    "mounts": [
        {
            "destination": "/data",
            "type": "bind",
            "source": "/srv/data",
            "options": ["rbind", "ro"],
            "uidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}],
            "gidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}],
        }
    ],
    "hooks": {
        "prestart": [{"path": "/bin/a", "args": ["a", "1"], "env": ["X=1"], "timeout": 5}],
        "createRuntime": [{"path": "/bin/b"}],
        "createContainer": [{"path": "/bin/c"}],
        "startContainer": [{"path": "/bin/d"}],
        "poststart": [{"path": "/bin/e"}],
        "poststop": [{"path": "/bin/f"}],
    },
    "annotations": {"io.example.key": "value"},
    "linux": {
        "uidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}],
        "gidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}],
        "sysctl": {"net.ipv4.ip_forward": "1", "kernel.shmmax": "65536"},
        "resources": {
            "devices": [
                {"allow": False, "access": "rwm"},
                {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rw"},
            ],
            "memory": {
                "limit": 536870912,
                "reservation": 268435456,
                "swap": 1073741824,
                "kernel": -1,
                "kernelTCP": -1,
                "swappiness": 10,
                "disableOOMKiller": True,
                "useHierarchy": True,
                "checkBeforeUpdate": True,
            },
            "cpu": {
                "shares": 1024,
                "quota": 50000,
                "burst": 1000,
                "period": 100000,
                "realtimeRuntime": 950000,
                "realtimePeriod": 1000000,
                "cpus": "0-1",
                "mems": "0",
                "idle": 1,
            },
            "pids": {"limit": 64},
            "blockIO": {
                "weight": 500,
                "leafWeight": 300,
                "weightDevice": [{"major": 8, "minor": 0, "weight": 500, "leafWeight": 300}],
                "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 600}],
                "throttleWriteBpsDevice": [{"major": 8, "minor": 0, "rate": 700}],
                "throttleReadIOPSDevice": [{"major": 8, "minor": 0, "rate": 80}],
                "throttleWriteIOPSDevice": [{"major": 8, "minor": 0, "rate": 90}],
            },
            "hugepageLimits": [{"pageSize": "2MB", "limit": 209715200}],
            "network": {"classID": 1048577, "priorities": [{"name": "eth0", "priority": 500}]},
            "rdma": {"mlx5_1": {"hcaHandles": 3, "hcaObjects": 10000}},
            "unified": {"memory.high": "400000000"},
        },
        "cgroupsPath": "/skiff/box",
        "namespaces": [
            {"type": "pid"},
            {"type": "network"},
            {"type": "mount"},
            {"type": "ipc"},
            {"type": "uts"},
            {"type": "user"},
            {"type": "cgroup", "path": "/proc/1/ns/cgroup"},
            {"type": "time"},
        ],
        "devices": [
            {
                "path": "/dev/fuse",
                "type": "c",
                "major": 10,
                "minor": 229,
                "fileMode": 438,
                "uid": 0,
                "gid": 0,
            }
        ],
        "seccomp": {
            "defaultAction": "SCMP_ACT_ERRNO",
            "defaultErrnoRet": 1,
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
            "flags": ["SECCOMP_FILTER_FLAG_LOG"],
            "listenerPath": "/run/seccomp.sock",
            "listenerMetadata": "meta",
            "syscalls": [
                {
                    "names": ["personality"],
                    "action": "SCMP_ACT_ALLOW",
                    "errnoRet": 2,
                    "args": [{"index": 0, "value": 8, "valueTwo": 1, "op": "SCMP_CMP_EQ"}],
                },
                {"names": ["mkdir"], "action": "SCMP_ACT_NOTIFY"},
            ],
        },
        "rootfsPropagation": "rslave",
        "maskedPaths": ["/proc/kcore"],
        "readonlyPaths": ["/proc/sys"],
        "mountLabel": "system_u:object_r:container_file_t:s0",
        "personality": {"domain": "LINUX32", "flags": ["SOME_FLAG"]},
        "timeOffsets": {"monotonic": {"secs": 10, "nanosecs": 5}},
    },
}


# --- runc spec -----------------------------------------------------------------------


def test_default_spec_is_runc_spec() -> None:
    spec = oci.default_spec(cgroup_ns=False)
    assert oci.spec_to_dict(spec) == RUNC_SPEC
    assert oci.parse_spec(RUNC_SPEC) == spec


def test_runc_spec_parses_to_the_model() -> None:
    spec = oci.parse_spec(RUNC_SPEC)
    assert spec.root == S.Root(path="rootfs", readonly=True)
    assert spec.process is not None and spec.process.args == ("sh",)
    assert spec.process.rlimits == (S.POSIXRlimit(type="RLIMIT_NOFILE", hard=1024, soft=1024),)
    assert spec.linux is not None
    assert [ns.type for ns in spec.linux.namespaces] == ["pid", "network", "ipc", "uts", "mount"]
    assert spec.linux.namespace(oci.LinuxNamespaceType.NETWORK) == S.LinuxNamespace(
        type=oci.LinuxNamespaceType.NETWORK
    )
    assert spec.linux.namespace(oci.LinuxNamespaceType.USER) is None
    assert spec.mounts[2].options[-1] == "gid=5"
    assert spec.linux.resources == S.LinuxResources(
        devices=(S.LinuxDeviceCgroup(allow=False, access="rwm"),)
    )


def test_default_spec_args_and_cgroup_ns() -> None:
    spec = oci.default_spec(args=["/bin/true", "x"], cgroup_ns=True)
    assert spec.process is not None and spec.process.args == ("/bin/true", "x")
    assert spec.linux is not None and spec.linux.namespaces[-1].type == "cgroup"
    oci.validate_spec(spec)


def test_default_spec_rootless() -> None:
    spec = oci.default_spec(rootless=True, cgroup_ns=False)
    out = oci.spec_to_dict(spec)
    want = copy.deepcopy(RUNC_SPEC)
    want["mounts"][2]["options"].remove("gid=5")
    want["mounts"][5] = {
        "destination": "/sys",
        "type": "none",
        "source": "/sys",
        "options": ["rbind", "nosuid", "noexec", "nodev", "ro"],
    }
    linux = want["linux"]
    del linux["resources"]
    linux["namespaces"] = [{"type": t} for t in ("pid", "ipc", "uts", "mount", "user")]
    linux = {
        "uidMappings": [{"containerID": 0, "hostID": os.geteuid(), "size": 1}],
        "gidMappings": [{"containerID": 0, "hostID": os.getegid(), "size": 1}],
        **linux,
    }
    want["linux"] = linux
    assert out == want
    assert oci.parse_spec(out) == spec


@pytest.mark.skipif(shutil.which("runc") is None, reason="test requires runc")
@pytest.mark.parametrize("rootless", [False, True], ids=["root", "rootless"])
def test_default_spec_matches_installed_runc(tmp_path: Path, rootless: bool) -> None:
    subprocess.run(
        ["runc", "spec", *(["--rootless"] if rootless else [])], cwd=tmp_path, check=True
    )
    theirs = json.loads((tmp_path / "config.json").read_text())
    ours = oci.spec_to_dict(oci.default_spec(rootless=rootless))
    # Debian 12's runc 1.1 predates two changes of runc 1.2's example.go: ambient
    # capabilities were dropped from `runc spec`, /sys/devices/virtual/tpm was masked.
    theirs["ociVersion"] = ours["ociVersion"]
    theirs["process"]["capabilities"].pop("ambient", None)
    masked = theirs["linux"]["maskedPaths"]
    if "/sys/devices/virtual/tpm" not in masked:
        masked.append("/sys/devices/virtual/tpm")
    assert ours == theirs
    oci.parse_spec(theirs)


# --- round trip ----------------------------------------------------------------------


def test_full_spec_round_trip() -> None:
    spec = oci.parse_spec(FULL_SPEC)
    assert oci.spec_to_dict(spec) == FULL_SPEC
    assert oci.parse_spec(json.loads(json.dumps(oci.spec_to_dict(spec)))) == spec


def _models(cls: type[Any]) -> set[type[Any]]:
    """`cls` and every model type reachable from its fields."""
    found = {cls}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        for arg in [hints[f.name], *typing.get_args(hints[f.name])]:
            for inner in [arg, *typing.get_args(arg)]:
                is_model = isinstance(inner, type) and dataclasses.is_dataclass(inner)
                if is_model and inner not in found:
                    found |= _models(inner)
    return found


def test_full_spec_sets_every_field() -> None:
    # guards FULL_SPEC itself: a field left at its default would escape the round trip
    spec = oci.parse_spec(FULL_SPEC)
    seen: dict[type[Any], set[str]] = {}

    def walk(value: object) -> None:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            names = seen.setdefault(type(value), set())
            for f in dataclasses.fields(value):
                item = getattr(value, f.name)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    names.add(f.name)
                elif item != (f.default if f.default is not dataclasses.MISSING else {}):
                    names.add(f.name)
                walk(item)
        elif isinstance(value, (tuple, list)):
            for v in value:
                walk(v)
        elif isinstance(value, dict):
            for v in value.values():
                walk(v)

    walk(spec)
    assert set(seen) == _models(S.Spec)
    # SCHED_DEADLINE, the policy that takes runtime, deadline and period, takes no priority
    unset = {(S.Scheduler, "priority")}
    for cls, names in seen.items():
        want = {f.name for f in dataclasses.fields(cls)} - {n for c, n in unset if c is cls}
        assert names == want, cls.__name__


def test_unknown_fields_are_ignored() -> None:
    data = copy.deepcopy(RUNC_SPEC)
    data["windows"] = {"layerFolders": ["C:\\x"]}
    data["vm"] = {"kernel": {"path": "/vmlinuz"}}
    data["futureField"] = [1, 2]
    data["process"]["execCPUAffinity"] = {"initial": "0"}
    data["linux"]["intelRdt"] = {"closID": "x"}
    data["linux"]["namespaces"][0]["extra"] = True
    assert oci.parse_spec(data) == oci.parse_spec(RUNC_SPEC)


def test_null_means_unset() -> None:
    data = copy.deepcopy(RUNC_SPEC)
    data["hostname"] = None
    data["hooks"] = None
    data["process"]["env"] = None
    data["linux"]["sysctl"] = None
    spec = oci.parse_spec(data)
    assert spec.hostname is None and spec.hooks is None
    assert spec.process is not None and spec.process.env == ()
    assert spec.linux is not None and spec.linux.sysctl == {}


def test_models_are_frozen_values() -> None:
    spec = oci.parse_spec(FULL_SPEC)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.hostname = "other"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        assert spec.root is not None
        del spec.root.path
    assert pickle.loads(pickle.dumps(spec)) == spec
    assert copy.deepcopy(spec) == spec
    changed = dataclasses.replace(spec, hostname="other")
    assert changed != spec and changed.hostname == "other" and spec.hostname == "box"
    assert hash(S.Root(path="/r")) == hash(S.Root(path="/r"))
    assert S.Root(path="/r") != S.Root(path="/r", readonly=True)
    assert repr(S.Root(path="/r")) == "Root(path='/r', readonly=False)"


def test_state_round_trip() -> None:
    data = {
        "ociVersion": "1.2.0",
        "id": "box",
        "status": "running",
        "pid": 4422,
        "bundle": "/containers/box",
        "annotations": {"a": "b"},
    }
    state = oci.parse_state(data)
    assert state.status is oci.ContainerState.RUNNING and state.pid == 4422
    assert oci.spec_to_dict(state) == data
    stopped = dataclasses.replace(state, status=oci.ContainerState.STOPPED, pid=None)
    assert "pid" not in oci.spec_to_dict(stopped)
    with pytest.raises(oci.SpecError, match=r'^status: unknown container status "paused"$'):
        oci.parse_state({**data, "status": "paused"})


def test_parse_process() -> None:
    process = oci.parse_process({"args": ["ps"], "cwd": "/", "user": {"uid": 0, "gid": 0}})
    assert process.args == ("ps",)
    with pytest.raises(oci.SpecError, match=r"^args: must be a non-empty list$"):
        oci.parse_process({"args": [], "cwd": "/", "user": {"uid": 0, "gid": 0}})


# --- bad configs ---------------------------------------------------------------------


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A mutation setting the value at dotted `path` (list indexes as numbers); `...`
    deletes it."""

    def mutate(d: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = d
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
        if isinstance(node, list):
            node[int(last)] = value
        elif value is ...:
            del node[last]
        else:
            node[last] = value

    return mutate


def _ns(*types: str, **paths: str) -> Callable[[dict[str, Any]], None]:
    return _set(
        "linux.namespaces",
        [{"type": t, **({"path": paths[t]} if t in paths else {})} for t in types],
    )


def _sysctl(key: str) -> Callable[[dict[str, Any]], None]:
    return _set("linux.sysctl", {key: "1"})


def _both(*mutations: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    def mutate(d: dict[str, Any]) -> None:
        for m in mutations:
            m(d)

    return mutate


_ALL_NS = ("pid", "network", "ipc", "uts", "mount")
_MAP = [{"containerID": 0, "hostID": 1000, "size": 1}]

BAD = [
    # structure: types and required fields, found while parsing
    (_set("process.args", ...), "process.args", "must be a non-empty list"),
    (_set("process.args", []), "process.args", "must be a non-empty list"),
    (_set("process.args", "sh"), "process.args", 'expected a list, got "sh"'),
    (_set("process.args", ["sh", 1]), "process.args[1]", "expected a string, got 1"),
    (_set("process.args", [""]), "process.args[0]", "must not be empty"),
    (
        _set("linux.resources.memory", {"limit": "1g"}),
        "linux.resources.memory.limit",
        'expected an integer, got "1g"',
    ),
    (
        _set("linux.resources.memory", {"limit": 1.5}),
        "linux.resources.memory.limit",
        "expected an integer, got 1.5",
    ),
    (_set("process.user.uid", True), "process.user.uid", "expected an integer, got true"),
    (_set("process.terminal", "yes"), "process.terminal", 'expected a boolean, got "yes"'),
    (_set("process.user", ...), "process.user", "required"),
    (_set("process.cwd", ...), "process.cwd", "required"),
    (_set("ociVersion", ...), "ociVersion", "required"),
    (_set("root", ...), "root.path", "required"),
    (_set("root", {}), "root.path", "required"),
    (_set("process", ...), "process", "required to create a container"),
    (_set("mounts", {}), "mounts", "expected a list, got {}"),
    (_set("mounts.2", "devpts"), "mounts[2]", 'expected an object, got "devpts"'),
    (_set("mounts.2.destination", ...), "mounts[2].destination", "required"),
    (_set("annotations", {"io.x": 1}), 'annotations["io.x"]', "expected a string, got 1"),
    (
        _set("linux.namespaces.1.type", "foo"),
        "linux.namespaces[1].type",
        'unknown namespace type "foo"',
    ),
    (_set("linux.namespaces.1", {}), "linux.namespaces[1].type", "required"),
    # semantics
    (_set("ociVersion", "2.0.0"), "ociVersion", 'unsupported version "2.0.0"'),
    (_set("process.cwd", "work"), "process.cwd", 'must be an absolute path, got "work"'),
    (_set("process.env", ["PATH=/bin", "FOO"]), "process.env[1]", 'must be NAME=value, got "FOO"'),
    (_set("process.env", ["=x"]), "process.env[0]", "variable name must not be empty"),
    (_set("process.user.uid", -1), "process.user.uid", "must be between 0 and 4294967295"),
    (
        _set("mounts.2.destination", "dev/pts"),
        "mounts[2].destination",
        'must be an absolute path, got "dev/pts"',
    ),
    (
        _set("mounts.0.uidMappings", _MAP),
        "mounts[0].uidMappings",
        "idmapped mounts require a user namespace",
    ),
    (
        _set("process.capabilities.bounding", ["CAP_KILL", "CAP_FOO"]),
        "process.capabilities.bounding[1]",
        'unknown capability "CAP_FOO"',
    ),
    (
        _set("process.capabilities.ambient", ["KILL"]),
        "process.capabilities.ambient[0]",
        'unknown capability "KILL"',
    ),
    (
        _set("process.rlimits.0.type", "RLIMIT_FOO"),
        "process.rlimits[0].type",
        'unknown rlimit "RLIMIT_FOO"',
    ),
    (
        _set("process.rlimits.0.soft", 4096),
        "process.rlimits[0].soft",
        "must not exceed hard (4096 > 1024)",
    ),
    (
        _set("process.rlimits", [{"type": "RLIMIT_CORE", "hard": 0, "soft": 0}] * 2),
        "process.rlimits[1].type",
        'duplicate rlimit "RLIMIT_CORE"',
    ),
    (_set("process.oomScoreAdj", 1001), "process.oomScoreAdj", "must be between -1000 and 1000"),
    (
        _set("process.scheduler", {"policy": "SCHED_FAST"}),
        "process.scheduler.policy",
        'unknown scheduler policy "SCHED_FAST"',
    ),
    (
        _set("process.scheduler", {"policy": "SCHED_OTHER", "priority": 5}),
        "process.scheduler.priority",
        "only SCHED_FIFO and SCHED_RR take a priority",
    ),
    (
        _set("process.ioPriority", {"class": "IOPRIO_CLASS_X", "priority": 0}),
        "process.ioPriority.class",
        'unknown io priority class "IOPRIO_CLASS_X"',
    ),
    (
        _set("linux.namespaces", [{"type": "pid"}, {"type": "uts"}, {"type": "pid"}]),
        "linux.namespaces[2].type",
        'duplicate namespace type "pid"',
    ),
    (
        _ns(*_ALL_NS, network="netns/a"),
        "linux.namespaces[1].path",
        'must be an absolute path, got "netns/a"',
    ),
    (_ns(*_ALL_NS, network=""), "linux.namespaces[1].path", 'must be an absolute path, got ""'),
    (_set("linux.uidMappings", _MAP), "linux.uidMappings", "requires a user namespace"),
    (_set("linux.gidMappings", _MAP), "linux.gidMappings", "requires a user namespace"),
    (
        _both(_ns(*_ALL_NS, "user"), _set("linux.gidMappings", _MAP)),
        "linux.uidMappings",
        "required to create a user namespace",
    ),
    (
        _both(
            _ns(*_ALL_NS, "user"),
            _set("linux.uidMappings", [{"containerID": 0, "hostID": 1000, "size": 0}]),
            _set("linux.gidMappings", _MAP),
        ),
        "linux.uidMappings[0].size",
        "must be at least 1",
    ),
    (_ns("pid", "mount"), "hostname", "requires a uts namespace"),
    (
        _both(_set("hostname", ...), _set("domainname", "x"), _ns("pid", "mount")),
        "domainname",
        "requires a uts namespace",
    ),
    (_ns("pid", "uts"), "linux.maskedPaths", "requires a mount namespace"),
    (
        _set("linux.readonlyPaths", ["proc/sys"]),
        "linux.readonlyPaths[0]",
        'must be an absolute path, got "proc/sys"',
    ),
    (
        _set("linux.rootfsPropagation", "rshare"),
        "linux.rootfsPropagation",
        'unknown propagation "rshare"',
    ),
    (
        _both(_ns("pid", "ipc", "uts", "mount"), _sysctl("net.ipv4.ip_forward")),
        'linux.sysctl["net.ipv4.ip_forward"]',
        "requires a network namespace",
    ),
    (
        _both(_ns("pid", "ipc", "uts", "mount"), _sysctl("net/ipv4/ip_forward")),
        'linux.sysctl["net/ipv4/ip_forward"]',
        "requires a network namespace",
    ),
    (
        _both(_ns("pid", "network", "uts", "mount"), _sysctl("kernel.shmmax")),
        'linux.sysctl["kernel.shmmax"]',
        "requires an ipc namespace",
    ),
    (
        _both(_ns("pid", "network", "uts", "mount"), _sysctl("fs.mqueue.msg_max")),
        'linux.sysctl["fs.mqueue.msg_max"]',
        "requires an ipc namespace",
    ),
    (
        _sysctl("kernel.hostname"),
        'linux.sysctl["kernel.hostname"]',
        'conflicts with the "hostname" field',
    ),
    (
        _both(_ns("pid", "mount"), _set("hostname", ...), _sysctl("kernel.domainname")),
        'linux.sysctl["kernel.domainname"]',
        "requires a uts namespace",
    ),
    (
        _sysctl("vm.swappiness"),
        'linux.sysctl["vm.swappiness"]',
        "is not namespaced, it would change the host",
    ),
    (
        _set("hooks.prestart", [{"path": "hook.sh"}]),
        "hooks.prestart[0].path",
        'must be an absolute path, got "hook.sh"',
    ),
    (
        _set("hooks.poststop", [{"path": "/bin/true", "timeout": 0}]),
        "hooks.poststop[0].timeout",
        "must be greater than zero, got 0",
    ),
    (
        _set("hooks.createRuntime", [{"path": "/bin/true", "env": ["X"]}]),
        "hooks.createRuntime[0].env[0]",
        'must be NAME=value, got "X"',
    ),
    (
        _set("linux.resources.memory", {"limit": 1048576, "swap": 524288}),
        "linux.resources.memory.swap",
        "must be >= memory.limit, it counts memory+swap (524288 < 1048576)",
    ),
    (
        _set("linux.resources.memory", {"swap": 524288}),
        "linux.resources.memory.swap",
        "needs memory.limit to be set",
    ),
    (
        _set("linux.resources.memory", {"limit": -2}),
        "linux.resources.memory.limit",
        "must be -1 (unlimited) or a byte count, got -2",
    ),
    (
        _set("linux.resources.cpu", {"shares": 1}),
        "linux.resources.cpu.shares",
        "must be between 2 and 262144, got 1",
    ),
    (
        _set("linux.resources.cpu", {"quota": 500}),
        "linux.resources.cpu.quota",
        "must be -1 (unlimited) or at least 1000 (us), got 500",
    ),
    (
        _set("linux.resources.cpu", {"period": 100}),
        "linux.resources.cpu.period",
        "must be between 1000 and 1000000 (us), got 100",
    ),
    (
        _set("linux.resources.cpu", {"cpus": "0-"}),
        "linux.resources.cpu.cpus",
        'must be a list such as 0-3,5, got "0-"',
    ),
    (
        _set("linux.resources.cpu", {"mems": "3-1"}),
        "linux.resources.cpu.mems",
        'must be a list such as 0-3,5, got "3-1"',
    ),
    (_set("linux.resources.pids", {"limit": -5}), "linux.resources.pids.limit", "must be -1"),
    (_set("linux.resources.pids", {}), "linux.resources.pids.limit", "required"),
    (
        _set("linux.resources.blockIO", {"weight": 5}),
        "linux.resources.blockIO.weight",
        "must be between 10 and 1000, got 5",
    ),
    (
        _set("linux.resources.devices.0.access", ""),
        "linux.resources.devices[0].access",
        'must be a non-empty combination of r, w and m, got ""',
    ),
    (
        _set("linux.resources.devices.0", {"allow": True, "access": "rwx"}),
        "linux.resources.devices[0].access",
        'got "rwx"',
    ),
    (
        _set("linux.resources.devices.0", {"access": "r"}),
        "linux.resources.devices[0].allow",
        "required",
    ),
    (
        _set("linux.resources.hugepageLimits", [{"pageSize": "2M", "limit": 1}]),
        "linux.resources.hugepageLimits[0].pageSize",
        'must look like 2MB or 1GB, got "2M"',
    ),
    (
        _set("linux.resources.unified", {"../memory.max": "1"}),
        'linux.resources.unified["../memory.max"]',
        "must be a cgroup file name",
    ),
    (
        _set("linux.devices", [{"path": "/dev/x", "type": "x"}]),
        "linux.devices[0].type",
        'unknown device type "x", want c, b, u or p',
    ),
    (
        _set("linux.devices", [{"path": "dev/x", "type": "c", "major": 1, "minor": 3}]),
        "linux.devices[0].path",
        "must be an absolute path",
    ),
    (
        _set("linux.seccomp", {"defaultAction": "SCMP_ACT_DENY"}),
        "linux.seccomp.defaultAction",
        'unknown seccomp action "SCMP_ACT_DENY"',
    ),
    (_set("linux.seccomp", {}), "linux.seccomp.defaultAction", "required"),
    (
        _set("linux.seccomp", {"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["X86_64"]}),
        "linux.seccomp.architectures[0]",
        'unknown architecture "X86_64"',
    ),
    (
        _set(
            "linux.seccomp",
            {
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [
                    {"names": ["read"], "action": "SCMP_ACT_ERRNO"},
                    {"names": ["write"], "action": "SCMP_ACT_KILL_ALL"},
                ],
            },
        ),
        "linux.seccomp.syscalls[1].action",
        'unknown seccomp action "SCMP_ACT_KILL_ALL"',
    ),
    (
        _set(
            "linux.seccomp",
            {
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [
                    {
                        "names": ["kill"],
                        "action": "SCMP_ACT_ERRNO",
                        "args": [{"index": 1, "value": 9, "op": "SCMP_CMP_EQUAL"}],
                    }
                ],
            },
        ),
        "linux.seccomp.syscalls[0].args[0].op",
        'unknown seccomp operator "SCMP_CMP_EQUAL"',
    ),
    (
        _set(
            "linux.seccomp",
            {
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": [], "action": "SCMP_ACT_ERRNO"}],
            },
        ),
        "linux.seccomp.syscalls[0].names",
        "must be a non-empty list",
    ),
    (
        _set(
            "linux.seccomp",
            {
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_NOTIFY"}],
            },
        ),
        "linux.seccomp.listenerPath",
        "required when an action is SCMP_ACT_NOTIFY",
    ),
    (
        _set("linux.seccomp", {"defaultAction": "SCMP_ACT_ALLOW", "flags": ["SECCOMP_FILTER_X"]}),
        "linux.seccomp.flags[0]",
        'unknown seccomp flag "SECCOMP_FILTER_X"',
    ),
    (
        _set("linux.timeOffsets", {"monotonic": {"secs": 1}}),
        "linux.timeOffsets",
        "requires a time namespace",
    ),
    (
        _both(_ns(*_ALL_NS, "time"), _set("linux.timeOffsets", {"realtime": {"secs": 1}})),
        "linux.timeOffsets.realtime",
        'unknown clock "realtime"',
    ),
    (
        _set("linux.personality", {"domain": "LINUX64"}),
        "linux.personality.domain",
        'unknown domain "LINUX64"',
    ),
]


@pytest.mark.parametrize(("mutate", "field", "reason"), BAD, ids=[b[1] for b in BAD])
def test_bad_config(mutate: Callable[[dict[str, Any]], None], field: str, reason: str) -> None:
    data = copy.deepcopy(RUNC_SPEC)
    mutate(data)
    with pytest.raises(oci.SpecError) as info:
        oci.parse_spec(data)
    err = info.value
    assert err.field == field
    assert reason in err.reason
    assert str(err).startswith(f"{field}: ")
    assert isinstance(err, InvalidArgument)


def test_bad_top_level() -> None:
    with pytest.raises(oci.SpecError, match=r"^expected an object, got \[1\]$"):
        oci.parse_spec([1])


GOOD = [
    # joining a user namespace, with or without its mappings (containerd sends them)
    _ns(*_ALL_NS, "user", user="/proc/1/ns/user"),
    _both(
        _ns(*_ALL_NS, "user", user="/proc/1/ns/user"),
        _set("linux.uidMappings", _MAP),
        _set("linux.gidMappings", _MAP),
    ),
    _set("linux.sysctl", {"net.ipv4.ip_forward": "1", "kernel.msgmax": "8192"}),
    _set("linux.sysctl", {"kernel.domainname": "a", "net/ipv4/conf/eth0.100/rp_filter": "1"}),
    _set("linux.resources.memory", {"limit": -1, "swap": -1, "reservation": 0}),
    _set("linux.resources.memory", {"limit": 1048576, "swap": 1048576}),
    _set("linux.resources.cpu", {"shares": 0, "quota": -1, "period": 100000, "cpus": "0,2-3"}),
    _set("linux.seccomp", {"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 1}),
    _set("domainname", "example.org"),
    _both(_set("linux", ...), _set("hostname", ...)),  # no namespaces: no hostname either
]


@pytest.mark.parametrize("mutate", GOOD)
def test_good_config(mutate: Callable[[dict[str, Any]], None]) -> None:
    data = copy.deepcopy(RUNC_SPEC)
    mutate(data)
    oci.parse_spec(data)


def test_process_optional_when_not_creating() -> None:
    data = copy.deepcopy(RUNC_SPEC)
    del data["process"]
    assert oci.parse_spec(data, require_process=False).process is None


# --- files ---------------------------------------------------------------------------


def test_load_spec(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(FULL_SPEC, indent="\t"))
    assert oci.load_spec(path) == oci.parse_spec(FULL_SPEC)
    assert oci.load_spec(str(path)) == oci.parse_spec(FULL_SPEC)


def test_load_spec_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    with pytest.raises(oci.SpecError) as info:
        oci.load_spec(path)
    assert str(info.value) == f"{path}: cannot read: no such file or directory (ENOENT)"
    assert info.value.source == str(path)


def test_load_spec_bad_json(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text('{\n  "ociVersion": "1.2.0",\n  "root": {}\n  "process": {}\n}\n')
    with pytest.raises(oci.SpecError) as info:
        oci.load_spec(path)
    assert str(info.value) == (
        f"{path}: invalid json at line 4 column 3: expecting ',' delimiter"
    )
    path.write_bytes(b'{"ociVersion": "\xff"}')
    with pytest.raises(oci.SpecError, match="not utf-8"):
        oci.load_spec(path)


def test_load_spec_names_file_and_field(tmp_path: Path) -> None:
    data = copy.deepcopy(RUNC_SPEC)
    data["mounts"][2]["destination"] = "dev/pts"
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    with pytest.raises(oci.SpecError) as info:
        oci.load_spec(path)
    err = info.value
    assert (err.source, err.field) == (str(path), "mounts[2].destination")
    assert str(err) == f'{path}: mounts[2].destination: must be an absolute path, got "dev/pts"'


def test_load_process(tmp_path: Path) -> None:
    path = tmp_path / "process.json"
    path.write_text(json.dumps({"args": ["ps"], "cwd": "relative", "user": {"uid": 0, "gid": 0}}))
    with pytest.raises(oci.SpecError, match=r'process\.json: cwd: must be an absolute path, got "'):
        oci.load_process(path)


def test_spec_error_pickles() -> None:
    err = oci.SpecError("process.cwd", "required", source="/b/config.json")
    again = pickle.loads(pickle.dumps(err))
    assert (again.field, again.reason, again.source, str(again)) == (
        err.field,
        err.reason,
        err.source,
        "/b/config.json: process.cwd: required",
    )


# --- features ------------------------------------------------------------------------


def test_features() -> None:
    f = oci.features()
    assert json.loads(json.dumps(f)) == f
    assert (f["ociVersionMin"], f["ociVersionMax"]) == ("1.0.0", "1.2.0")
    assert f["hooks"] == [
        "prestart",
        "createRuntime",
        "createContainer",
        "startContainer",
        "poststart",
        "poststop",
    ]
    linux = f["linux"]
    assert linux["cgroup"] == {
        "v1": True,
        "v2": True,
        "systemd": False,
        "systemdUser": False,
        "rdma": False,
    }
    assert linux["apparmor"] == {"enabled": False} and linux["selinux"] == {"enabled": False}
    assert linux["capabilities"] == list(CAPABILITIES) and len(CAPABILITIES) == 41
    assert set(linux["namespaces"]) <= {t.value for t in oci.LinuxNamespaceType}
    assert set(f["mountOptions"]) >= {"ro", "nosuid", "rbind", "rprivate", "bind"}
    seccomp = linux["seccomp"]
    assert seccomp["enabled"] is True
    assert "SCMP_ACT_ERRNO" in seccomp["actions"] and "SCMP_CMP_MASKED_EQ" in seccomp["operators"]
    assert "SCMP_ARCH_X86_64" in seccomp["archs"]


def test_features_agree_with_validation() -> None:
    # whatever features advertises must pass validation
    f = oci.features()
    seccomp = f["linux"]["seccomp"]
    data = copy.deepcopy(RUNC_SPEC)
    data["process"]["capabilities"]["bounding"] = f["linux"]["capabilities"]
    data["linux"]["namespaces"] = [{"type": t} for t in f["linux"]["namespaces"] if t != "user"]
    data["linux"]["seccomp"] = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": seccomp["archs"],
        "flags": seccomp["knownFlags"],
        "syscalls": [
            {"names": ["read"], "action": a, "args": [{"index": 0, "value": 0, "op": op}]}
            for a in seccomp["actions"]
            for op in seccomp["operators"]
        ],
    }
    oci.parse_spec(data)


# --- cost ----------------------------------------------------------------------------


def test_import_is_light() -> None:
    # skiff.oci is on the start path of every skiff-runc command
    code = (
        "import sys, skiff.oci; "
        "heavy = {'subprocess', 'threading', 'asyncio', 'ctypes', 'socket', 'grpc', 'pyroute2'}; "
        "print(sorted(heavy & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_converters_cover_every_model() -> None:
    # from_json accepts any model type, not only Spec
    assert from_json(S.Root, {"path": "/r"}) == S.Root(path="/r")
    with pytest.raises(oci.SpecError, match=r"^root\.readonly: expected a boolean, got 1$"):
        from_json(S.Root, {"path": "/r", "readonly": 1}, "root")
