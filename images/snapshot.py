"""A container rootfs from unpacked layer directories: an overlay mount, a read-only view, or a
copy where overlayfs is missing.

Long lowerdir lists: the legacy mount(2) copies at most one page of options (4095 bytes and
a NUL), about 60 layers at /var/lib/... path lengths. Past that, the layers get short
symlinks (`0`, `1`, ...) in a scratch directory and the mount is made by a helper process
whose working directory is that scratch directory, so lowerdir holds `0:1:...`; overlayfs
resolves the paths once at mount time, after which the scratch directory is removed. A helper
process rather than chdir here: the working directory is shared by every thread of the
daemon.
"""

from __future__ import annotations

import ctypes
import enum
import errno
import os
import shutil
import stat
import subprocess
import sys
import tempfile

from skiff.errors import FailedPrecondition, InvalidArgument, NotFound, SkiffError

MS_RDONLY = 0x1
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MNT_DETACH = 0x2
UMOUNT_NOFOLLOW = 0x8
_OPTIONS_MAX = 4095  # one page with its NUL
_OPAQUE = "trusted.overlay.opaque"
# Marks a copy-fallback rootfs so that unmount knows it may empty the directory.
_COPY_MARK = "trusted.skiff.snapshot"

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p)
_libc.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)


class SnapshotError(SkiffError):
    """A mount or unmount the kernel refused."""


class Kind(enum.Enum):
    OVERLAY = "overlay"
    BIND = "bind"        # a read-only view of a single layer
    COPY = "copy"        # the fallback: layers copied into target


def _mount(source: str, target: str, fstype: str | None, flags: int, data: str | None) -> None:
    if _libc.mount(source.encode(), target.encode(), fstype.encode() if fstype else None, flags,
                   data.encode() if data is not None else None) != 0:
        err = ctypes.get_errno()
        raise SnapshotError(f"mount {fstype or 'bind'} on {target!r}: {os.strerror(err).lower()} "
                            f"({errno.errorcode.get(err, err)}): src={source}, data={data}")


def overlay_available() -> bool:
    try:
        with open("/proc/filesystems") as f:
            return any(line.split()[-1:] == ["overlay"] for line in f)
    except OSError:
        return False


def mount_overlay(lower: list[str], target: str, *, upper: str | None, work: str | None,
                  force_copy: bool = False) -> Kind:
    """Mount the layers `lower` (top layer first) on `target`, an existing directory.

    With `upper` and `work` the mount is writable (a container rootfs); without them it is a
    read-only view (a read-only bind mount when there is a single layer). Where overlayfs is
    unavailable, or with `force_copy`, the layers are copied into the empty `target` instead
    (then bound read-only over itself for a view); `unmount` undoes each of these."""
    if not lower:
        raise InvalidArgument("lower: at least one layer directory is needed")
    if (upper is None) != (work is None):
        raise InvalidArgument("upper, work: give both for a writable snapshot, or neither")
    for path in [*lower, target, *([upper, work] if upper and work else [])]:
        if not os.path.isabs(path):
            raise InvalidArgument(f"snapshot path {path!r}: must be absolute")
        if "," in path or ":" in path:
            raise InvalidArgument(f"snapshot path {path!r}: ',' and ':' cannot be passed to overlayfs")
        if not os.path.isdir(path):
            raise NotFound(f"snapshot path {path!r}: no such directory")
    if force_copy or not overlay_available():
        _copy_layers(lower, target)
        if upper is None:
            _bind_read_only(target, target)
        return Kind.COPY
    if upper is None and len(lower) == 1:
        # overlayfs wants two lower dirs without an upper one; a read-only bind is the same view.
        _bind_read_only(lower[0], target)
        return Kind.BIND
    tail = f",upperdir={upper},workdir={work}" if upper and work else ""
    options = "lowerdir=" + ":".join(lower) + tail
    if len(options) <= _OPTIONS_MAX:
        _mount("overlay", target, "overlay", 0, options)
    else:
        _mount_short(lower, target, tail)
    return Kind.OVERLAY


def _bind_read_only(source: str, target: str) -> None:
    _mount(source, target, None, MS_BIND, None)
    try:
        # A bind mount takes MS_RDONLY only on a remount (mount(2)).
        _mount("none", target, None, MS_BIND | MS_REMOUNT | MS_RDONLY, None)
    except SkiffError:
        _libc.umount2(target.encode(), UMOUNT_NOFOLLOW)
        raise


_HELPER = """\
import ctypes, errno, os, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.mount(b"overlay", sys.argv[1].encode(), b"overlay", 0, sys.argv[2].encode()) != 0:
    err = ctypes.get_errno()
    sys.stderr.write(f"{os.strerror(err).lower()} ({errno.errorcode.get(err, err)})")
    sys.exit(1)
"""


def _mount_short(lower: list[str], target: str, tail: str) -> None:
    scratch = tempfile.mkdtemp(prefix="skiff-lower-")
    try:
        for i, path in enumerate(lower):
            os.symlink(path, os.path.join(scratch, str(i)))
        options = "lowerdir=" + ":".join(str(i) for i in range(len(lower))) + tail
        if len(options) > _OPTIONS_MAX:
            raise InvalidArgument(f"lower: {len(lower)} layers do not fit in one overlay mount")
        done = subprocess.run([sys.executable, "-I", "-c", _HELPER, target, options], cwd=scratch,
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise SnapshotError(f"mount overlay on {target!r}: {done.stderr.strip()}: "
                                f"{len(lower)} layers through {scratch}")
    finally:
        shutil.rmtree(scratch)


def unmount(target: str) -> None:
    """Undo mount_overlay on target: unmount it, and empty it if it was a copy."""
    if _libc.umount2(target.encode(), UMOUNT_NOFOLLOW) == 0:
        if _getxattr(target, _COPY_MARK) == b"copy":  # a read-only copy, bound over itself
            _empty_copy(target)
        return
    err = ctypes.get_errno()
    if err == errno.EINVAL:  # not a mount point: a writable copy, or nothing skiff made
        if _getxattr(target, _COPY_MARK) != b"copy":
            raise NotFound(f"unmount {target!r}: not a skiff snapshot")
        _empty_copy(target)
        return
    if err == errno.ENOENT:
        raise NotFound(f"unmount {target!r}: no such directory")
    if err == errno.EBUSY:
        raise FailedPrecondition(f"unmount {target!r}: still in use (EBUSY)")
    raise SnapshotError(f"unmount {target!r}: {os.strerror(err).lower()} ({errno.errorcode.get(err, err)})")


# -- the copy fallback -----------------------------------------------------------------------

def _copy_layers(lower: list[str], target: str) -> None:
    """Apply the layers bottom first, as overlayfs would show them: a 0:0 character device
    deletes, an opaque directory hides what is below it. Never follows a symlink in target."""
    if os.listdir(target):
        raise InvalidArgument(f"target {target!r}: not an empty directory")
    os.setxattr(target, _COPY_MARK, b"copy", follow_symlinks=False)
    for layer in reversed(lower):
        inodes: dict[tuple[int, int], str] = {}
        _copy_dir(layer, target, inodes)


def _copy_dir(src: str, dst: str, inodes: dict[tuple[int, int], str]) -> None:
    with os.scandir(src) as it:
        entries = list(it)
    for e in entries:
        s = os.path.join(src, e.name)
        d = os.path.join(dst, e.name)
        st = e.stat(follow_symlinks=False)
        if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
            _remove(d)
            continue
        try:
            existing: os.stat_result | None = os.lstat(d)
        except FileNotFoundError:
            existing = None
        if stat.S_ISDIR(st.st_mode):
            opaque = _getxattr(s, _OPAQUE) == b"y"
            if existing is not None and (opaque or not stat.S_ISDIR(existing.st_mode)):
                _remove(d)
                existing = None
            if existing is None:
                os.mkdir(d, 0o700)
            _copy_dir(s, d, inodes)
            _copy_meta(s, d, st)
            continue
        if existing is not None:
            _remove(d)
        key = (st.st_dev, st.st_ino)
        if st.st_nlink > 1 and key in inodes:
            os.link(inodes[key], d, follow_symlinks=False)
            continue
        if stat.S_ISREG(st.st_mode):
            shutil.copyfile(s, d, follow_symlinks=False)
        elif stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(s), d)
        elif stat.S_ISFIFO(st.st_mode):
            os.mkfifo(d, 0o600)
        elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            os.mknod(d, stat.S_IFMT(st.st_mode) | 0o600, st.st_rdev)
        else:
            continue  # sockets do not come from layers
        if st.st_nlink > 1:
            inodes[key] = d
        _copy_meta(s, d, st)


def _copy_meta(src: str, dst: str, st: os.stat_result) -> None:
    os.chown(dst, st.st_uid, st.st_gid, follow_symlinks=False)
    for name in os.listxattr(src, follow_symlinks=False):
        if name.startswith("trusted.overlay."):
            continue
        os.setxattr(dst, name, os.getxattr(src, name, follow_symlinks=False), follow_symlinks=False)
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(dst, stat.S_IMODE(st.st_mode))  # after chown, which clears setuid
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def _getxattr(path: str, name: str) -> bytes | None:
    try:
        return os.getxattr(path, name, follow_symlinks=False)
    except OSError:
        return None


def _remove(path: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def _empty_copy(path: str) -> None:
    for name in os.listdir(path):
        _remove(os.path.join(path, name))
    os.removexattr(path, _COPY_MARK, follow_symlinks=False)
