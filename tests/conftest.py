"""Shared test machinery: the `requires` marker, the leak check that runs after every test,
and the busybox bundle.

Tests run as root against the real kernel. `@pytest.mark.requires("cgroup2", "userns")`
skips a test, naming what is missing, where the host lacks a feature (runc's
tests/integration/helpers.bash `requires`). Tests that need cgroup v2 run inside a QEMU VM
when this host has none (tests/vm).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from support import Containers

import pytest



def _statfs_type(path: str) -> str | None:
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                if fields[4] == path:
                    return fields[fields.index("-") + 1]
    except OSError:
        pass
    return None


def _v2_controllers() -> bool:
    try:
        with open("/sys/fs/cgroup/cgroup.controllers") as f:
            return bool(f.read().split())
    except OSError:
        return False


def _userns() -> bool:
    try:
        with open("/proc/sys/user/max_user_namespaces") as f:
            return int(f.read()) > 0
    except OSError:
        return False


def _seccomp() -> bool:
    with open("/proc/self/status") as f:
        return any(line.startswith("Seccomp:") for line in f)


FEATURES: dict[str, tuple[Callable[[], bool], str]] = {
    "cgroup2": (lambda: _statfs_type("/sys/fs/cgroup") == "cgroup2" and _v2_controllers(),
                "a pure cgroup v2 hierarchy with controllers"),
    "cgroup1": (lambda: _statfs_type("/sys/fs/cgroup/memory") == "cgroup", "cgroup v1 controllers"),
    "userns": (_userns, "user namespaces"),
    "seccomp": (_seccomp, "seccomp"),
    "busybox": (lambda: os.path.exists("/bin/busybox"), "/bin/busybox (Debian busybox-static)"),
    "runc": (lambda: shutil.which("runc") is not None, "runc on PATH"),
    "crun": (lambda: shutil.which("crun") is not None, "crun on PATH"),
    "skopeo": (lambda: shutil.which("skopeo") is not None, "skopeo (Debian package skopeo)"),
    "registry": (lambda: shutil.which("docker-registry") is not None, "docker-registry (Debian package docker-registry)"),
}


@cache
def has(feature: str) -> bool:
    return bool(FEATURES[feature][0]())


def missing(features: tuple[str, ...]) -> list[str]:
    unknown = [f for f in features if f not in FEATURES]
    if unknown:
        raise pytest.UsageError(f"requires: unknown feature(s) {unknown}; known: {sorted(FEATURES)}")
    return [f for f in features if not has(f)]


def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers("requires"):
        absent = missing(tuple(mark.args))
        if absent:
            pytest.skip("requires " + ", ".join(f"{f} ({FEATURES[f][1]})" for f in absent))


# -- the leak check ------------------------------------------------------------------------

@dataclass(frozen=True)
class HostSnapshot:
    mounts: frozenset[str]
    cgroups: frozenset[str]
    netns: frozenset[str]
    links: frozenset[str]
    nft_tables: frozenset[str]
    processes: frozenset[tuple[int, str]]
    fds: frozenset[int]


def _mounts() -> frozenset[str]:
    with open("/proc/self/mountinfo") as f:
        return frozenset(line.split()[4] for line in f)


def _skiff_cgroups() -> frozenset[str]:
    found = set()
    for top, dirs, _ in os.walk("/sys/fs/cgroup"):
        if top.count("/") > 12:
            dirs.clear()
        for d in dirs:
            if "skiff" in d:
                found.add(os.path.join(top, d))
    return frozenset(found)


def _listdir(path: str) -> frozenset[str]:
    try:
        return frozenset(os.listdir(path))
    except FileNotFoundError:
        return frozenset()


@cache
def _nft() -> str | None:
    return shutil.which("nft")


def _nft_tables() -> frozenset[str]:
    nft = _nft()
    if nft is None:
        return frozenset()
    out = subprocess.run([nft, "list", "tables"], capture_output=True, text=True).stdout
    return frozenset(out.splitlines())


def _processes() -> frozenset[tuple[int, str]]:
    """Our children, anything in another PID namespace (a container's processes that were
    reparented away from us), and any CRI container monitor (it runs in a session of its
    own, and outlives the fork server it is a child of)."""
    me = os.getpid()
    own_ns = os.readlink("/proc/self/ns/pid")
    found = set()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        pid = int(name)
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
            state, ppid_field = stat[stat.rindex(b")") + 2:].split()[:2]
            ppid = int(ppid_field)
            if state == b"Z" and ppid != me:
                continue  # dead: its reaper (host init or a subreaper) is not ours to wait for
            ns = os.readlink(f"/proc/{pid}/ns/pid")
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except (OSError, ValueError):
            continue
        if ppid == me or (ns != own_ns and pid != 1) or cmd.startswith("skiff-monitor"):
            found.add((pid, cmd))
    return frozenset(found)


def snapshot() -> HostSnapshot:
    return HostSnapshot(
        mounts=_mounts(),
        cgroups=_skiff_cgroups(),
        netns=_listdir("/run/netns"),
        links=_listdir("/sys/class/net"),
        nft_tables=_nft_tables(),
        processes=_processes(),
        fds=frozenset(int(fd) for fd in os.listdir("/proc/self/fd")),
    )


def leaks(before: HostSnapshot, after: HostSnapshot) -> list[str]:
    found = []
    for name in ("mounts", "cgroups", "netns", "links", "nft_tables", "processes"):
        new = getattr(after, name) - getattr(before, name)
        if new:
            found.append(f"{name}: {sorted(new)}")
    targets = []
    for fd in sorted(after.fds - before.fds):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # closed meanwhile
        # gRPC's core opens an epoll and eventfds in its own threads, for the life of the
        # process, lazily after its first calls: at moments no test controls. They are not
        # skiff's (skiff's own polling runs in `with` blocks), so they do not count.
        if "grpc" in sys.modules and target in ("anon_inode:[eventfd]", "anon_inode:[eventpoll]"):
            continue
        targets.append(f"{fd} -> {target}")
    if targets:
        found.append(f"fds: {targets}")
    return found


@pytest.fixture(autouse=True)
def no_leaks(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fails a test that leaves a mount, cgroup, netns, link, nft table, process or fd behind.
    It runs around the test's other fixtures, so their cleanup counts."""
    before = snapshot()
    yield
    found = leaks(before, snapshot())
    if found:
        pytest.fail("left behind on the host:\n  " + "\n  ".join(found), pytrace=False)


# -- containers ----------------------------------------------------------------------------

@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    """A busybox bundle with runc's default config.json (args: sh)."""
    if not has("busybox"):
        pytest.skip("requires busybox (/bin/busybox, Debian busybox-static)")
    from skiff.demo import make_bundle

    return Path(make_bundle(str(tmp_path / "bundle")))


# -- the cgroup v2 VM (tests/vm) -----------------------------------------------------------
# On a host without v2 controllers, the tests marked requires("cgroup2") run in one QEMU VM
# with a pure v2 hierarchy and report here; tests/vm/plugin.py says how.
pytest_plugins = ["vm.plugin", "cri_fixture", "orchestrator_fixture"]  # tests/ is on sys.path: it is the rootdir conftest's folder


@pytest.fixture(params=["cold", "warm"])
def containers(bundle: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str],
               request: pytest.FixtureRequest) -> Iterator[Containers]:
    """A cold runtime, and a warm one: its containers copy the mount namespace template
    (runtime/mount_template.py) and come from the prespawner."""
    c = Containers(bundle, tmp_path / "state", capfd, warm=1 if request.param == "warm" else 0)
    yield c
    c.cleanup()


