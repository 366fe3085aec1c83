"""The mount points the CRI service makes in a container's snapshot (cri/mount_points.py): the
runtime's own, made the runtime's way, never through a symlink of the image."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from skiff.cri.mount_points import make_mount_points
from skiff.oci.spec import Mount


def _mounts(host_file: Path, host_dir: Path) -> list[Mount]:
    return [
        Mount(destination="/proc", type="proc", source="proc"),
        Mount(destination="/dev", type="tmpfs", source="tmpfs"),
        Mount(destination="/dev/shm", type="bind", source=str(host_dir), options=("rbind",)),  # in /dev's tmpfs
        Mount(destination="/etc/hosts", type="bind", source=str(host_file), options=("rbind",)),
        Mount(destination="/var/lib/data", source=str(host_dir), options=("rbind", "ro")),
        Mount(destination="/", type="bind", source=str(host_dir), options=("rbind",)),
    ]


def test_missing_mount_points_are_made_as_the_runtime_makes_them(tmp_path: Path) -> None:
    rootfs, host_file, host_dir = tmp_path / "rootfs", tmp_path / "hosts", tmp_path / "data"
    rootfs.mkdir()
    host_file.write_text("127.0.0.1 localhost\n")
    host_dir.mkdir()
    make_mount_points(str(rootfs), _mounts(host_file, host_dir))
    made = sorted(str(p.relative_to(rootfs)) for p in rootfs.rglob("*"))
    assert made == ["dev", "etc", "etc/hosts", "proc", "var", "var/lib", "var/lib/data"]
    modes = {p: stat.S_IMODE(os.lstat(rootfs / p).st_mode) for p in made}
    assert modes == {"dev": 0o755, "etc": 0o755, "etc/hosts": 0o644, "proc": 0o755, "var": 0o755,
                     "var/lib": 0o755, "var/lib/data": 0o755}
    assert (rootfs / "etc/hosts").is_file() and (rootfs / "etc/hosts").stat().st_size == 0


def test_symlinks_and_existing_files_of_the_image_are_left_to_the_runtime(tmp_path: Path) -> None:
    rootfs, outside, host_file, host_dir = tmp_path / "rootfs", tmp_path / "outside", tmp_path / "hosts", tmp_path / "data"
    for d in (rootfs, outside, host_dir):
        d.mkdir()
    host_file.write_text("x\n")
    (rootfs / "etc").symlink_to(outside)  # absolute, out of the rootfs: resolved in the container's root
    (rootfs / "var").mkdir()
    (rootfs / "var/lib").symlink_to("../../outside")
    (rootfs / "proc").write_text("a file where a directory goes\n")
    before = os.stat(rootfs / "proc")
    make_mount_points(str(rootfs), _mounts(host_file, host_dir))
    assert list(outside.iterdir()) == []
    after = os.stat(rootfs / "proc")
    assert (after.st_mtime_ns, after.st_size) == (before.st_mtime_ns, before.st_size)
    assert sorted(p.name for p in rootfs.iterdir()) == ["dev", "etc", "proc", "var"]
