"""Layer unpacking against the real filesystem: what a layer may create, and what it may not."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from skiff.images.unpack import UnpackError, unpack_layer
from skiff.oci.image import MEDIA_TYPE_OCI_LAYER, MEDIA_TYPE_OCI_LAYER_GZIP, MEDIA_TYPE_OCI_LAYER_ZSTD
from skiff.errors import InvalidArgument

MTIME = 1_600_000_000


def entry(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", *, mode: int = 0o644,
          uid: int = 0, gid: int = 0, link: str = "", major: int = 0, minor: int = 0,
          xattrs: dict[str, bytes] | None = None) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.uid, info.gid = uid, gid
    info.mtime = MTIME
    info.linkname = link
    info.devmajor, info.devminor = major, minor
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    if xattrs:
        info.pax_headers = {"SCHILY.xattr." + k: v.decode("utf-8", "surrogateescape")
                            for k, v in xattrs.items()}
    return info, data


def layer(*entries: tuple[tarfile.TarInfo, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if info.type == tarfile.REGTYPE else None)
    return buf.getvalue()


def diff_id(tar: bytes) -> str:
    return "sha256:" + hashlib.sha256(tar).hexdigest()


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    d = tmp_path / "layer"
    d.mkdir()
    return d


@pytest.fixture
def canary(tmp_path: Path) -> Path:
    """A file outside dest that a malicious layer aims at; it must stay as it is."""
    c = tmp_path / "canary"
    c.write_text("untouched")
    return c


RICH = (
    entry("etc/", tarfile.DIRTYPE, mode=0o755),
    entry("etc/hosts", data=b"127.0.0.1 localhost\n", uid=12, gid=34),
    entry("bin/", tarfile.DIRTYPE, mode=0o750, uid=5, gid=6),
    entry("bin/su", data=b"\x7fELF", mode=0o4755),
    entry("bin/sh", tarfile.SYMTYPE, link="busybox", uid=7, gid=8),
    entry("bin/busybox", data=b"box" * 1000, mode=0o755),
    entry("bin/ls", tarfile.LNKTYPE, link="bin/busybox"),
    entry("dev/null", tarfile.CHRTYPE, mode=0o666, major=1, minor=3),
    entry("dev/loop0", tarfile.BLKTYPE, mode=0o660, major=7, minor=0),
    entry("run/fifo", tarfile.FIFOTYPE, mode=0o600),
    entry("usr/bin/ping", data=b"ping", mode=0o755, xattrs={
        "security.capability": b"\x01\x00\x00\x02\x00\x20\x00\x00" + b"\x00" * 12,
        "user.comment": b"caf\xc3\xa9"}),
)


def check_rich(root: Path) -> None:
    hosts = root / "etc/hosts"
    assert hosts.read_bytes() == b"127.0.0.1 localhost\n"
    st = hosts.lstat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode), st.st_mtime) == (12, 34, 0o644, MTIME)
    st = (root / "bin").lstat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode), st.st_mtime) == (5, 6, 0o750, MTIME)
    assert stat.S_IMODE((root / "bin/su").lstat().st_mode) == 0o4755
    sh = (root / "bin/sh").lstat()
    assert stat.S_ISLNK(sh.st_mode) and os.readlink(root / "bin/sh") == "busybox"
    assert (sh.st_uid, sh.st_gid, sh.st_mtime) == (7, 8, MTIME)
    assert (root / "bin/ls").lstat().st_ino == (root / "bin/busybox").lstat().st_ino
    assert (root / "bin/busybox").lstat().st_nlink == 2
    null = (root / "dev/null").lstat()
    assert stat.S_ISCHR(null.st_mode) and os.major(null.st_rdev) == 1 and os.minor(null.st_rdev) == 3
    assert stat.S_IMODE(null.st_mode) == 0o666
    assert stat.S_ISBLK((root / "dev/loop0").lstat().st_mode)
    assert stat.S_ISFIFO((root / "run/fifo").lstat().st_mode)
    ping = str(root / "usr/bin/ping")
    assert os.getxattr(ping, "security.capability")[:4] == b"\x01\x00\x00\x02"
    assert os.getxattr(ping, "user.comment") == "café".encode()
    assert stat.S_IMODE((root / "usr").lstat().st_mode) == 0o755  # parent missing from the tar


def test_plain_tar(dest: Path) -> None:
    tar = layer(*RICH)
    assert unpack_layer(io.BytesIO(tar), str(dest), media_type=MEDIA_TYPE_OCI_LAYER) == diff_id(tar)
    check_rich(dest)


def test_gzip_from_a_path(dest: Path, tmp_path: Path) -> None:
    tar = layer(*RICH)
    blob = tmp_path / "blob"
    blob.write_bytes(gzip.compress(tar))
    assert unpack_layer(str(blob), str(dest), media_type=MEDIA_TYPE_OCI_LAYER_GZIP) == diff_id(tar)
    check_rich(dest)


def test_zstd(dest: Path) -> None:
    import zstandard

    tar = layer(*RICH)
    blob = zstandard.ZstdCompressor().compress(tar)
    assert unpack_layer(io.BytesIO(blob), str(dest), media_type=MEDIA_TYPE_OCI_LAYER_ZSTD) == diff_id(tar)
    check_rich(dest)


def test_whiteouts_become_overlay_whiteouts(dest: Path) -> None:
    unpack_layer(io.BytesIO(layer(
        entry("etc/", tarfile.DIRTYPE, mode=0o755),
        entry("etc/.wh.passwd"),
        entry("opt/", tarfile.DIRTYPE, mode=0o755),
        entry("opt/.wh..wh..opq"),
        entry("opt/new", data=b"new"),
    )), str(dest), media_type=MEDIA_TYPE_OCI_LAYER)
    wh = (dest / "etc/passwd").lstat()
    assert stat.S_ISCHR(wh.st_mode) and wh.st_rdev == 0
    assert not (dest / "etc/.wh.passwd").exists()
    assert os.getxattr(dest / "opt", "trusted.overlay.opaque") == b"y"
    assert sorted(os.listdir(dest / "opt")) == ["new"]


def test_later_entry_replaces_earlier(dest: Path) -> None:
    unpack_layer(io.BytesIO(layer(
        entry("a", data=b"one"),
        entry("a", data=b"two"),
        entry("d/", tarfile.DIRTYPE, mode=0o700),
        entry("d/f", data=b"x"),
        entry("d/", tarfile.DIRTYPE, mode=0o755),  # a dir over a dir merges
    )), str(dest), media_type=MEDIA_TYPE_OCI_LAYER)
    assert (dest / "a").read_bytes() == b"two"
    assert (dest / "d/f").read_bytes() == b"x"
    assert stat.S_IMODE((dest / "d").lstat().st_mode) == 0o755


def test_relative_symlink_parent_inside_the_layer_is_followed(dest: Path) -> None:
    unpack_layer(io.BytesIO(layer(
        entry("usr/bin/", tarfile.DIRTYPE, mode=0o755),
        entry("bin", tarfile.SYMTYPE, link="usr/bin"),
        entry("bin/tool", data=b"t"),
    )), str(dest), media_type=MEDIA_TYPE_OCI_LAYER)
    assert (dest / "usr/bin/tool").read_bytes() == b"t"


MALICIOUS = {
    "dotdot": ((entry("../../canary", data=b"pwned"),), "path escapes the layer root"),
    "dotdot inside": ((entry("a/../../canary", data=b"pwned"),), "path escapes the layer root"),
    "absolute": ((entry("/etc/passwd", data=b"pwned"),), "absolute path"),
    "symlink to / then a file under it": (
        (entry("root", tarfile.SYMTYPE, link="/"), entry("root/tmp/pwned", data=b"pwned")),
        "path escapes the layer root through symlink 'root' -> '/'"),
    "relative symlink climbing out": (
        (entry("up", tarfile.SYMTYPE, link="../.."), entry("up/canary", data=b"pwned")),
        "path escapes the layer root"),
    "symlink directory path": (
        (entry("a/", tarfile.DIRTYPE), entry("a/b", tarfile.SYMTYPE, link="../../"),
         entry("a/b/canary", data=b"pwned")),
        "path escapes the layer root"),
    "hardlink to a host file": (
        (entry("passwd", tarfile.LNKTYPE, link="/etc/passwd"),),
        "hardlink target '/etc/passwd' is outside the layer"),
    "hardlink climbing out": (
        (entry("passwd", tarfile.LNKTYPE, link="../canary"),),
        "hardlink target '../canary' is outside the layer"),
    "hardlink to nothing in the layer": (
        (entry("passwd", tarfile.LNKTYPE, link="etc/passwd"),),
        "hardlink target 'etc/passwd' is not in the layer"),
    "hardlink through a symlink out": (
        (entry("r", tarfile.SYMTYPE, link="/"), entry("passwd", tarfile.LNKTYPE, link="r/etc/passwd")),
        "path escapes the layer root"),
}


@pytest.mark.parametrize("case", sorted(MALICIOUS))
def test_malicious_layer_is_refused(case: str, dest: Path, canary: Path) -> None:
    entries, message = MALICIOUS[case]
    passwd = Path("/etc/passwd").read_bytes()
    with pytest.raises(UnpackError, match="layer entry '.*': " + message.replace("(", r"\(")) as err:
        unpack_layer(io.BytesIO(layer(*entries)), str(dest), media_type=MEDIA_TYPE_OCI_LAYER)
    assert isinstance(err.value, InvalidArgument)
    assert canary.read_text() == "untouched"
    assert Path("/etc/passwd").read_bytes() == passwd
    assert not Path("/tmp/pwned").exists()
    assert sorted(os.listdir(canary.parent)) == ["canary", "layer"]


def test_message_names_the_entry(dest: Path) -> None:
    with pytest.raises(UnpackError) as err:
        unpack_layer(io.BytesIO(layer(entry("../../etc/passwd", data=b"x"))), str(dest),
                     media_type=MEDIA_TYPE_OCI_LAYER)
    assert str(err.value) == "layer entry '../../etc/passwd': path escapes the layer root"


def test_decompression_bomb(dest: Path, tmp_path: Path) -> None:
    # 64 MiB of zeros in one file gzip to about 64 KiB.
    big = 64 << 20
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb") as g:
        with tarfile.open(fileobj=g, mode="w|") as tar:
            info = tarfile.TarInfo("zeros")
            info.size = big

            class Zeros(io.RawIOBase):
                left = big

                def readinto(self, b: bytearray) -> int:  # type: ignore[override]
                    n = min(len(b), self.left)
                    b[:n] = bytes(n)
                    self.left -= n
                    return n

            tar.addfile(info, Zeros())
    blob = buf.getvalue()
    assert len(blob) < 200_000
    with pytest.raises(UnpackError, match="uncompressed size exceeds the limit of 1048576 bytes"):
        unpack_layer(io.BytesIO(blob), str(dest), media_type=MEDIA_TYPE_OCI_LAYER_GZIP, max_size=1 << 20)
    assert (dest / "zeros").stat().st_size <= 1 << 20


def test_corrupt_and_unknown(dest: Path) -> None:
    with pytest.raises(UnpackError, match="unsupported layer media type"):
        unpack_layer(io.BytesIO(b""), str(dest), media_type="application/x-rar")
    with pytest.raises(UnpackError, match="layer blob: corrupt"):
        unpack_layer(io.BytesIO(b"\x1f\x8b\x08\x00garbage" * 10), str(dest),
                     media_type=MEDIA_TYPE_OCI_LAYER_GZIP)


def test_dest_must_be_empty(dest: Path) -> None:
    (dest / "x").write_text("")
    with pytest.raises(UnpackError, match="not an empty directory"):
        unpack_layer(io.BytesIO(layer()), str(dest), media_type=MEDIA_TYPE_OCI_LAYER)


def test_symlink_replaced_by_a_file_is_not_followed(dest: Path, canary: Path) -> None:
    unpack_layer(io.BytesIO(layer(
        entry("x", tarfile.SYMTYPE, link=str(canary)),
        entry("x", data=b"file"),
        entry("d", tarfile.SYMTYPE, link=str(canary.parent)),
        entry("d/", tarfile.DIRTYPE, mode=0o755),
    )), str(dest), media_type=MEDIA_TYPE_OCI_LAYER)
    assert (dest / "x").read_bytes() == b"file" and not (dest / "x").is_symlink()
    assert (dest / "d").is_dir() and not (dest / "d").is_symlink()
    assert canary.read_text() == "untouched"


def test_truncated_and_corrupt_streams(dest: Path) -> None:
    import zstandard

    tar = layer(entry("big", data=os.urandom(100_000)))
    with pytest.raises(UnpackError, match="layer blob: corrupt compressed data|corrupt tar archive"):
        unpack_layer(io.BytesIO(gzip.compress(tar)[:5000]), str(dest), media_type=MEDIA_TYPE_OCI_LAYER_GZIP)
    for p in dest.iterdir():
        p.unlink()
    with pytest.raises(UnpackError, match="layer blob: corrupt compressed data"):
        blob = zstandard.ZstdCompressor(write_checksum=True).compress(tar)
        unpack_layer(io.BytesIO(blob[:1000] + bytes(100) + blob[1100:]), str(dest),
                     media_type=MEDIA_TYPE_OCI_LAYER_ZSTD)
