"""Unpack one OCI layer (tar, tar+gzip, tar+zstd) into its own directory, an overlay lower dir.

Modelled on containerd `pkg/archive/tar.go` (`applyNaive`, `createTarFile`), with two
differences that make escapes impossible by construction rather than by path arithmetic:

- every entry is created relative to a directory fd reached by walking its parent one
  component at a time with O_NOFOLLOW; a symlink met on the way (created by an earlier entry)
  is followed by hand, and refused if it is absolute or climbs above the layer root (containerd
  re-roots such links at the layer root; a layer that relies on that is refused here);
- absolute names, `..` components and hardlinks to anything but an earlier entry of the same
  layer are refused outright.

tarfile's `extract` and its `data` filter are not used: the filter checks names and link
targets, but not parents reached through symlinks created by earlier entries of the same
archive, and it does not know whiteouts.

Whiteouts become what overlayfs reads (kernel Documentation/filesystems/overlayfs.rst):
`.wh.<name>` a 0:0 character device `<name>`, `.wh..wh..opq` the xattr
`trusted.overlay.opaque=y` on its directory.

On any error `dest` is left half-written for the caller to remove; nothing outside it was
written. A tar cut short at a header boundary reads as a shorter tar (tarfile stops there
silently): the caller must compare the returned diff_id with the image config's
rootfs.diff_ids.
"""

from __future__ import annotations

import collections
import errno
import gzip
import hashlib
import os
import stat
import tarfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO

from skiff.errors import InvalidArgument, NotFound
from skiff.oci import image

_COMPRESSION = {
    image.MEDIA_TYPE_OCI_LAYER: "tar",
    image.MEDIA_TYPE_OCI_LAYER_GZIP: "gzip",
    image.MEDIA_TYPE_OCI_LAYER_ZSTD: "zstd",
    # Non-distributable layers are the same bytes under another name (image-spec layer.md).
    image.MEDIA_TYPE_OCI_LAYER_NONDISTRIBUTABLE: "tar",
    image.MEDIA_TYPE_OCI_LAYER_NONDISTRIBUTABLE_GZIP: "gzip",
    image.MEDIA_TYPE_OCI_LAYER_NONDISTRIBUTABLE_ZSTD: "zstd",
    image.MEDIA_TYPE_DOCKER_LAYER: "tar",
    image.MEDIA_TYPE_DOCKER_LAYER_GZIP: "gzip",
    image.MEDIA_TYPE_DOCKER_LAYER_FOREIGN_GZIP: "gzip",
}

DEFAULT_MAX_SIZE = 64 << 30  # uncompressed bytes; bigger than any sane layer, smaller than a disk
_CHUNK = 1 << 20
_MAX_SYMLINKS = 40  # the kernel's limit (MAXSYMLINKS)
_WHITEOUT = ".wh."
_OPAQUE = ".wh..wh..opq"
_OVERLAY_OPAQUE = "trusted.overlay.opaque"
_XATTR_PAX = "SCHILY.xattr."
# overlayfs keeps its own state in these (redirect, origin, metacopy): a layer setting them
# could make the kernel look up paths the layer does not own.
_OVERLAY_XATTRS = "trusted.overlay."
_PARENT_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class UnpackError(InvalidArgument):
    """A layer that is malformed, unsafe or too big."""


class _Limited:
    """The uncompressed stream: hashes every byte for the diff_id and stops at max_size, so a
    decompression bomb costs at most max_size bytes of work."""

    def __init__(self, inner: BinaryIO, max_size: int,
                 corrupt: tuple[type[Exception], ...] = (OSError, EOFError, zlib.error)) -> None:
        self.inner = inner
        self.corrupt = corrupt
        self.max_size = max_size
        self.count = 0
        self.digest = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            n = _CHUNK
        try:
            data = self.inner.read(n)
        except self.corrupt as e:
            raise UnpackError(f"layer blob: corrupt compressed data: {e}") from None
        self.count += len(data)
        if self.count > self.max_size:
            raise UnpackError(f"layer blob: uncompressed size exceeds the limit of {self.max_size} bytes")
        self.digest.update(data)
        return data


_Decompressed = tuple[BinaryIO, tuple[type[Exception], ...]]


@contextmanager
def _uncompressed(blob: BinaryIO, compression: str) -> Iterator[_Decompressed]:
    """The uncompressed stream, and the exceptions that mean its compressed data is corrupt."""
    if compression == "tar":
        yield blob, (OSError,)
    elif compression == "gzip":
        with gzip.GzipFile(fileobj=blob, mode="rb") as g:
            yield g, (OSError, EOFError, zlib.error)  # type: ignore[misc]
    else:
        try:
            import zstandard  # lazily: only zstd layers need it
        except ImportError:
            raise UnpackError("layer blob: zstd layers need the zstandard package") from None
        reader = zstandard.ZstdDecompressor().stream_reader(blob, read_across_frames=True)
        with reader:
            yield reader, (OSError, zstandard.ZstdError)


def unpack_layer(blob: BinaryIO | str, dest: str, *, media_type: str,
                 max_size: int = DEFAULT_MAX_SIZE) -> str:
    """Unpack the layer `blob` (a path or a binary stream, read once from where it is) into
    the empty directory `dest` and return its diff_id, `sha256:` of the uncompressed tar.

    Streams: neither the layer nor a file of it is ever held in memory whole. On error, raises
    UnpackError and leaves `dest` to the caller to remove."""
    compression = _COMPRESSION.get(media_type)
    if compression is None:
        raise UnpackError(f"media_type: unsupported layer media type {media_type!r}")
    try:
        if os.listdir(dest):
            raise UnpackError(f"dest {dest!r}: not an empty directory")
    except (FileNotFoundError, NotADirectoryError):
        raise NotFound(f"dest {dest!r}: no such directory") from None
    if isinstance(blob, str):
        with open(blob, "rb") as f:
            return _unpack(f, dest, compression, max_size)
    return _unpack(blob, dest, compression, max_size)


def _unpack(blob: BinaryIO, dest: str, compression: str, max_size: int) -> str:
    root = os.open(dest, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        with _uncompressed(blob, compression) as (raw, corrupt):
            stream = _Limited(raw, max_size, corrupt)
            _Extractor(root, stream).run()
            while stream.read(_CHUNK):  # the tar's trailing padding counts in the diff_id
                pass
            return "sha256:" + stream.digest.hexdigest()
    finally:
        os.close(root)


def _clean(name: str, what: str) -> list[str]:
    """The components of a tar name, or UnpackError for a name that could leave the root."""
    if name.startswith("/"):
        raise UnpackError(f"layer entry {what!r}: absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnpackError(f"layer entry {what!r}: path escapes the layer root")
    return parts


class _Extractor:
    def __init__(self, root: int, stream: _Limited) -> None:
        self.root = root
        self.stream = stream
        self.dirs: list[tuple[list[str], int]] = []  # mtimes set last, after their contents

    def run(self) -> None:
        try:
            tar = tarfile.open(fileobj=self.stream, mode="r|")  # type: ignore[call-overload]
        except tarfile.TarError as e:
            raise UnpackError(f"layer blob: not a tar archive: {e}") from None
        with tar:
            while True:
                try:
                    member = tar.next()
                except tarfile.TarError as e:
                    raise UnpackError(f"layer blob: corrupt tar archive: {e}") from None
                if member is None:
                    break
                try:
                    self._entry(tar, member)
                except OSError as e:
                    code = errno.errorcode.get(e.errno or 0, str(e.errno))
                    raise UnpackError(f"layer entry {member.name!r}: {e.strerror} ({code})") from None
                except tarfile.TarError as e:  # a file's data cut short
                    raise UnpackError(f"layer entry {member.name!r}: corrupt tar archive: {e}") from None
                tar.members.clear()  # the stream is read once; keeping headers would grow without bound
        for parts, mtime in self.dirs:
            try:
                parent = self._parent(parts, parts[-1], create=False)
            except (OSError, UnpackError):
                continue  # removed or replaced by a later entry: only its time was left to set
            try:
                os.utime(parts[-1], ns=(mtime, mtime), dir_fd=parent, follow_symlinks=False)
            except OSError:
                pass
            finally:
                os.close(parent)

    def _parent(self, parts: list[str], entry: str, *, create: bool) -> int:
        """An O_PATH fd on the directory holding parts[-1], inside the root. Symlinks on the way
        are followed by hand, and refused when they point outside the root."""
        pending = collections.deque(parts[:-1])
        stack: list[str] = []
        fd = os.dup(self.root)
        links = 0
        try:
            while pending:
                comp = pending.popleft()
                if comp == "..":
                    if not stack:
                        raise UnpackError(f"layer entry {entry!r}: path escapes the layer root")
                    stack.pop()
                    os.close(fd)
                    fd = os.dup(self.root)
                    for name in stack:
                        fd = self._step(fd, name)
                    continue
                try:
                    fd = self._step(fd, comp)
                    stack.append(comp)
                    continue
                except FileNotFoundError:
                    if not create:
                        raise
                    # Parents missing from the archive: containerd's mkparent uses 0755 too.
                    os.mkdir(comp, 0o755, dir_fd=fd)
                    fd = self._step(fd, comp)
                    stack.append(comp)
                    continue
                except OSError as e:
                    if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                st = os.stat(comp, dir_fd=fd, follow_symlinks=False)
                if not stat.S_ISLNK(st.st_mode):
                    raise UnpackError(f"layer entry {entry!r}: parent {'/'.join(stack + [comp])!r} "
                                      f"is not a directory")
                links += 1
                if links > _MAX_SYMLINKS:
                    raise UnpackError(f"layer entry {entry!r}: too many levels of symbolic links")
                target = os.readlink(comp, dir_fd=fd)
                if target.startswith("/"):
                    raise UnpackError(f"layer entry {entry!r}: path escapes the layer root "
                                      f"through symlink {'/'.join(stack + [comp])!r} -> {target!r}")
                pending.extendleft(reversed([p for p in target.split("/") if p not in ("", ".")]))
            result, fd = fd, -1
            return result
        finally:
            if fd >= 0:
                os.close(fd)

    @staticmethod
    def _step(fd: int, name: str) -> int:
        """Open name under fd without following a symlink; fd is closed on success only, so
        the caller still holds it to create the missing name or read the link."""
        new = os.open(name, _PARENT_FLAGS, dir_fd=fd)
        os.close(fd)
        return new

    def _entry(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        parts = _clean(member.name, member.name)
        if not parts:
            return  # the root itself: dest keeps the mode its owner gave it
        base = parts[-1]
        parent = self._parent(parts, member.name, create=True)
        try:
            if base == _OPAQUE:
                # An O_PATH fd takes no fsetxattr; its /proc link does.
                os.setxattr(f"/proc/self/fd/{parent}", _OVERLAY_OPAQUE, b"y")
            elif base.startswith(_WHITEOUT + _WHITEOUT):
                pass  # other AUFS metadata (.wh..wh.plnk): meaningless to overlayfs
            elif base.startswith(_WHITEOUT):
                name = base[len(_WHITEOUT):]
                if name in ("", ".", ".."):
                    raise UnpackError(f"layer entry {member.name!r}: invalid whiteout")
                self._remove(parent, name)
                os.mknod(name, stat.S_IFCHR | 0o000, os.makedev(0, 0), dir_fd=parent)
            else:
                self._create(tar, member, parts, parent)
        finally:
            os.close(parent)

    def _remove(self, parent: int, name: str) -> None:
        """Replace what an earlier entry put at name (containerd: remove unless both are dirs)."""
        try:
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
            try:
                _empty(fd)
            finally:
                os.close(fd)
            os.rmdir(name, dir_fd=parent)
        else:
            os.unlink(name, dir_fd=parent)

    def _create(self, tar: tarfile.TarFile, member: tarfile.TarInfo, parts: list[str], parent: int) -> None:
        base = parts[-1]
        mode = member.mode & 0o7777
        existing: os.stat_result | None
        try:
            existing = os.stat(base, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            existing = None
        if existing is not None and not (member.isdir() and stat.S_ISDIR(existing.st_mode)):
            self._remove(parent, base)
            existing = None

        if member.isreg():
            fd = os.open(base, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o600, dir_fd=parent)
            try:
                src = tar.extractfile(member)
                assert src is not None
                while chunk := src.read(_CHUNK):
                    _write_all(fd, chunk)
                self._metadata_fd(fd, member, mode)
                os.utime(fd, ns=(_ns(member), _ns(member)))
            finally:
                os.close(fd)
            return
        if member.isdir():
            if existing is None:
                os.mkdir(base, 0o700, dir_fd=parent)
            fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
            try:
                self._metadata_fd(fd, member, mode)
            finally:
                os.close(fd)
            self.dirs.append((parts, _ns(member)))
            return
        if member.issym():
            os.symlink(member.linkname, base, dir_fd=parent)
        elif member.islnk():
            self._hardlink(member, base, parent)
            return  # a hardlink shares its target's inode: owner, mode and times are the target's
        elif member.ischr() or member.isblk():
            kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK
            os.mknod(base, kind | mode, os.makedev(member.devmajor, member.devminor), dir_fd=parent)
        elif member.isfifo():
            os.mkfifo(base, mode, dir_fd=parent)
        else:
            raise UnpackError(f"layer entry {member.name!r}: unsupported tar entry type {member.type!r}")
        os.chown(base, member.uid, member.gid, dir_fd=parent, follow_symlinks=False)
        # xattrs by a path through the parent fd: there is no *xattrat before Linux 6.13.
        path = f"/proc/self/fd/{parent}/{base}"
        self._xattrs(path, member)
        if not member.issym():  # a symlink's mode is always 0777 on Linux
            # After chown, which clears setuid; the node was created here and is no symlink.
            os.chmod(base, mode, dir_fd=parent)
        os.utime(base, ns=(_ns(member), _ns(member)), dir_fd=parent, follow_symlinks=False)

    def _hardlink(self, member: tarfile.TarInfo, base: str, parent: int) -> None:
        try:
            target = _clean(member.linkname, member.name)
        except UnpackError:
            raise UnpackError(f"layer entry {member.name!r}: hardlink target {member.linkname!r} "
                              f"is outside the layer") from None
        if not target:
            raise UnpackError(f"layer entry {member.name!r}: hardlink to the layer root")
        try:
            tparent = self._parent(target, member.name, create=False)
        except FileNotFoundError:
            raise UnpackError(f"layer entry {member.name!r}: hardlink target {member.linkname!r} "
                              f"is not in the layer") from None
        try:
            # dest starts empty, so whatever is found inside it came from this layer.
            os.link(target[-1], base, src_dir_fd=tparent, dst_dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            raise UnpackError(f"layer entry {member.name!r}: hardlink target {member.linkname!r} "
                              f"is not in the layer") from None
        finally:
            os.close(tparent)

    def _metadata_fd(self, fd: int, member: tarfile.TarInfo, mode: int) -> None:
        os.fchown(fd, member.uid, member.gid)
        self._xattrs(fd, member)
        os.fchmod(fd, mode)  # after chown, which clears setuid and setgid

    @staticmethod
    def _xattrs(target: int | str, member: tarfile.TarInfo) -> None:
        for key, value in member.pax_headers.items():
            if not key.startswith(_XATTR_PAX):
                continue
            name = key[len(_XATTR_PAX):]
            if name.startswith(_OVERLAY_XATTRS):
                continue
            # tarfile decodes PAX values as UTF-8 with surrogateescape: this gives the bytes back.
            data = value.encode("utf-8", "surrogateescape")
            try:
                if isinstance(target, int):
                    os.setxattr(target, name, data)
                else:
                    os.setxattr(target, name, data, follow_symlinks=False)
            except OSError as e:
                # user.* is not allowed on symlinks and devices, and some filesystems lack
                # xattrs: containerd skips both the same way.
                if e.errno in (errno.ENOTSUP, errno.EPERM) and name.startswith("user."):
                    continue
                if e.errno == errno.ENOTSUP:
                    continue
                raise


def _ns(member: tarfile.TarInfo) -> int:
    return int(member.mtime * 1_000_000_000)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _empty(dirfd: int) -> None:
    """Remove everything under an open directory, never following a symlink."""
    for entry in os.scandir(dirfd):
        if entry.is_dir(follow_symlinks=False):
            fd = os.open(entry.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                         dir_fd=dirfd)
            try:
                _empty(fd)
            finally:
                os.close(fd)
            os.rmdir(entry.name, dir_fd=dirfd)
        else:
            os.unlink(entry.name, dir_fd=dirfd)
