"""Snapshots from unpacked layers, checked through what the kernel's overlayfs shows."""

from __future__ import annotations

import errno
import io
import os
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from skiff.errors import InvalidArgument, NotFound
from skiff.images.snapshot import Kind, mount_overlay, overlay_available, unmount
from skiff.images.unpack import unpack_layer
from skiff.oci.image import MEDIA_TYPE_OCI_LAYER

needs_overlay = pytest.mark.skipif(not overlay_available(), reason="requires overlayfs")


def tar(files: dict[str, bytes | None]) -> bytes:
    """A layer: a name ending in / is a directory, None an empty marker (whiteouts)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            if name.endswith("/"):
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                t.addfile(info)
            else:
                info.size = len(data or b"")
                t.addfile(info, io.BytesIO(data or b""))
    return buf.getvalue()


LOWER = {"etc/": None, "etc/passwd": b"root:x:0:0", "etc/group": b"root:x:0:",
         "opt/": None, "opt/a": b"a", "opt/b": b"b", "keep": b"lower"}
UPPER = {"etc/": None, "etc/.wh.passwd": None, "opt/": None, "opt/.wh..wh..opq": None,
         "opt/c": b"c", "keep": b"upper"}


@pytest.fixture
def layers(tmp_path: Path) -> Callable[..., list[str]]:
    def make(*contents: dict[str, bytes | None]) -> list[str]:
        """Unpack contents (bottom first); returns the dirs top first, as mount_overlay takes them."""
        dirs = []
        for i, files in enumerate(contents):
            d = tmp_path / f"layers/{i:03d}-{'f' * 40}"
            d.mkdir(parents=True)
            unpack_layer(io.BytesIO(tar(files)), str(d), media_type=MEDIA_TYPE_OCI_LAYER)
            dirs.append(str(d))
        return dirs[::-1]
    return make


@pytest.fixture
def target(tmp_path: Path) -> Iterator[Path]:
    t = tmp_path / "rootfs"
    t.mkdir()
    yield t
    # Whatever a failing test left mounted: the leak fixture must not see it.
    while mounted(t):
        unmount(str(t))


def mounted(path: Path) -> bool:
    """Also true for a bind of a directory over itself, which os.path.ismount misses."""
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == str(path) for line in f)


def check_merged(root: Path) -> None:
    assert not (root / "etc/passwd").exists()
    assert (root / "etc/group").read_bytes() == b"root:x:0:"
    assert sorted(os.listdir(root / "opt")) == ["c"]
    assert (root / "keep").read_bytes() == b"upper"


@needs_overlay
def test_writable_overlay_applies_whiteouts(layers: Callable[..., list[str]], target: Path,
                                            tmp_path: Path) -> None:
    upper, work = tmp_path / "upper", tmp_path / "work"
    upper.mkdir()
    work.mkdir()
    lower = layers(LOWER, UPPER)
    assert mount_overlay(lower, str(target), upper=str(upper), work=str(work)) is Kind.OVERLAY
    try:
        assert os.path.ismount(target)
        check_merged(target)
        (target / "new").write_text("written")
        (target / "etc/group").unlink()
    finally:
        unmount(str(target))
    assert not os.path.ismount(target)
    assert (upper / "new").read_text() == "written"
    assert not os.path.exists(Path(lower[0]) / "new")  # layers stay as unpacked
    assert (Path(lower[1]) / "etc/group").exists()


@needs_overlay
def test_read_only_view(layers: Callable[..., list[str]], target: Path) -> None:
    assert mount_overlay(layers(LOWER, UPPER), str(target), upper=None, work=None) is Kind.OVERLAY
    try:
        check_merged(target)
        with pytest.raises(OSError) as err:
            (target / "new").write_text("x")
        assert err.value.errno == errno.EROFS
    finally:
        unmount(str(target))


@needs_overlay
def test_read_only_single_layer_is_a_bind(layers: Callable[..., list[str]], target: Path) -> None:
    lower = layers(LOWER)
    assert mount_overlay(lower, str(target), upper=None, work=None) is Kind.BIND
    try:
        assert (target / "etc/passwd").read_bytes() == b"root:x:0:0"
        with pytest.raises(OSError) as err:
            (target / "new").write_text("x")
        assert err.value.errno == errno.EROFS
    finally:
        unmount(str(target))
    assert not os.path.ismount(target)


@needs_overlay
def test_many_layers_beyond_the_option_page(layers: Callable[..., list[str]], target: Path,
                                            tmp_path: Path) -> None:
    count = 200
    lower = layers(*({f"f{i}": str(i).encode(), "top": str(i).encode()} for i in range(count)))
    assert len("lowerdir=" + ":".join(lower)) > 4095
    upper, work = tmp_path / "upper", tmp_path / "work"
    upper.mkdir()
    work.mkdir()
    mount_overlay(lower, str(target), upper=str(upper), work=str(work))
    try:
        assert (target / "top").read_text() == str(count - 1)
        assert all((target / f"f{i}").read_text() == str(i) for i in range(count))
        assert not [p for p in os.listdir(tempfile_dir()) if p.startswith("skiff-lower-")]
        with open("/proc/self/mountinfo") as f:
            line = next(line for line in f if line.split()[4] == str(target))
        assert "lowerdir=0:1:2:" in line  # the short names: the long list would not fit
    finally:
        unmount(str(target))


def tempfile_dir() -> str:
    import tempfile
    return tempfile.gettempdir()


@pytest.mark.parametrize("writable", [True, False])
def test_copy_fallback(layers: Callable[..., list[str]], target: Path, tmp_path: Path,
                       writable: bool) -> None:
    lower = layers(LOWER, UPPER)
    upper = work = None
    if writable:
        upper, work = str(tmp_path / "upper"), str(tmp_path / "work")
        os.mkdir(upper)
        os.mkdir(work)
    assert mount_overlay(lower, str(target), upper=upper, work=work, force_copy=True) is Kind.COPY
    try:
        check_merged(target)
        assert mounted(target) is not writable
        if writable:
            (target / "new").write_text("x")
        else:
            with pytest.raises(OSError) as err:
                (target / "new").write_text("x")
            assert err.value.errno == errno.EROFS
    finally:
        unmount(str(target))
    assert os.listdir(target) == []
    assert not mounted(target)
    assert sorted(os.listdir(Path(lower[0]) / "opt")) == ["c"]  # layers stay as unpacked
    with pytest.raises(NotFound, match="not a skiff snapshot"):
        unmount(str(target))


def test_arguments(target: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="upper, work"):
        mount_overlay([str(tmp_path)], str(target), upper=str(tmp_path), work=None)
    with pytest.raises(InvalidArgument, match="cannot be passed to overlayfs"):
        mount_overlay(["/a:b"], str(target), upper=None, work=None)
    with pytest.raises(NotFound, match="no such directory"):
        mount_overlay([str(tmp_path / "missing")], str(target), upper=None, work=None)
