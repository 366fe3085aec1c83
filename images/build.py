"""Build an image from directories or tarballs, one layer each, into an OCI image layout.

The layout is what `skopeo copy oci:DIR:TAG ...` and skiff's own import read
(image-spec `image-layout.md`):

    DIR/oci-layout                 {"imageLayoutVersion": "1.0.0"}
    DIR/index.json                 one manifest descriptor per tag, the tag in the
                                   `org.opencontainers.image.ref.name` annotation
    DIR/blobs/sha256/<hex>         layers (tar+gzip), the image config, the manifest

Layers are reproducible: entries in sorted order, owners as numbers only (a host user name
would make tar readers map the owner through the image's /etc/passwd instead: Docker's
`FileInfoHeaderNoLookups` drops them for the same reason), mtimes from the files or one
fixed value, and a gzip header without name or time. The same tree with the same `mtime`
and `created` gives the same digests.

Files named `.wh.NAME` in a source directory go into the layer as they are, which is how a
test writes a whiteout.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import gzip
import hashlib
import io
import json
import os
import platform
import shutil
import stat
import tarfile
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import IO, BinaryIO

from skiff import demo
from skiff.errors import FailedPrecondition, InvalidArgument
from skiff.oci import image as oci
from skiff.oci.spec import SpecError

REF_NAME = "org.opencontainers.image.ref.name"
LAYOUT_VERSION = "1.0.0"
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Python's platform.machine() to GOARCH and variant, as image platforms name them
# (image-spec config.md points at Go's $GOARCH).
_GOARCH: dict[str, tuple[str, str | None]] = {
    "x86_64": ("amd64", None),
    "amd64": ("amd64", None),
    "aarch64": ("arm64", None),
    "arm64": ("arm64", None),
    "armv7l": ("arm", "v7"),
    "armv6l": ("arm", "v6"),
    "i386": ("386", None),
    "i686": ("386", None),
    "ppc64le": ("ppc64le", None),
    "s390x": ("s390x", None),
    "riscv64": ("riscv64", None),
}


class BuildError(InvalidArgument):
    """A layer source that cannot be read or is not a directory or tar archive."""


@dataclass(frozen=True, slots=True, kw_only=True)
class BuiltImage:
    layout: str
    tag: str
    manifest: oci.Descriptor  # as listed in index.json
    config: oci.Descriptor
    layers: tuple[oci.Descriptor, ...]
    image: oci.Image  # the config blob's content; image.rootfs.diff_ids per layer


def host_platform() -> oci.Platform:
    """linux and this machine's architecture, in GOARCH names."""
    machine = platform.machine()
    arch, variant = _GOARCH.get(machine, (machine, None))
    return oci.Platform(architecture=arch, os="linux", variant=variant)


def build(
    layout: str,
    sources: Sequence[str],
    *,
    tag: str = "latest",
    config: oci.ImageConfig | None = None,
    mtime: int | None = None,
    created: str | None = None,
    author: str | None = None,
    target: oci.Platform | None = None,
) -> BuiltImage:
    """Write an image with one layer per source (a directory, or a tar archive, plain or
    gzip) into the OCI layout `layout`, creating it if needed, under the ref name `tag`.
    A tag already in the layout now names the new image; other tags stay.

    `mtime` (seconds since the epoch) replaces every file's mtime in directory layers, and
    is the default for `created` (RFC 3339), which is otherwise now. `target` is the
    image's platform, this host's by default (a test makes foreign-platform images this
    way; nothing runs them).
    """
    _check_tag(tag)
    blobs = _init_layout(layout)
    if created is None:
        seconds = time.time() if mtime is None else mtime
        created = datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    target = target or host_platform()

    layers: list[oci.Descriptor] = []
    diff_ids: list[str] = []
    for source in sources:
        descriptor, diff_id = write_layer(source, blobs, mtime=mtime)
        layers.append(descriptor)
        diff_ids.append(diff_id)

    image = oci.Image(
        created=created,
        author=author,
        architecture=target.architecture,
        os=target.os,
        variant=target.variant,
        config=config,
        rootfs=oci.RootFS(type="layers", diff_ids=tuple(diff_ids)),
        history=tuple(oci.History(created=created, created_by="skiff build") for _ in sources),
    )
    config_desc = _put_json(blobs, oci.MEDIA_TYPE_OCI_CONFIG, oci.to_json(image))
    manifest = oci.Manifest(
        schema_version=2,
        media_type=oci.MEDIA_TYPE_OCI_MANIFEST,
        config=config_desc,
        layers=tuple(layers),
    )
    manifest_desc = _put_json(blobs, oci.MEDIA_TYPE_OCI_MANIFEST, oci.to_json(manifest))
    manifest_desc = _tagged(manifest_desc, tag)
    _add_to_index(layout, manifest_desc)
    return BuiltImage(
        layout=layout,
        tag=tag,
        manifest=manifest_desc,
        config=config_desc,
        layers=tuple(layers),
        image=image,
    )


def build_index(layout: str, tag: str, images: Sequence[BuiltImage]) -> oci.Descriptor:
    """A multi-platform image: an image index over `images` (built into the same layout,
    each with its own platform), written as a blob and listed in index.json as `tag`."""
    _check_tag(tag)
    blobs = _init_layout(layout)
    manifests = tuple(
        oci.Descriptor(
            media_type=built.manifest.media_type,
            digest=built.manifest.digest,
            size=built.manifest.size,
            platform=oci.Platform(
                architecture=built.image.architecture, os=built.image.os, variant=built.image.variant
            ),
        )
        for built in images
    )
    index = oci.Index(schema_version=2, media_type=oci.MEDIA_TYPE_OCI_INDEX, manifests=manifests)
    desc = _put_json(blobs, oci.MEDIA_TYPE_OCI_INDEX, oci.to_json(index))
    desc = _tagged(desc, tag)
    _add_to_index(layout, desc)
    return desc


def write_layer(source: str, blobs: str, *, mtime: int | None = None) -> tuple[oci.Descriptor, str]:
    """Tar (a directory) or copy (a tar archive) `source` as a gzip layer blob into the
    directory `blobs`; its descriptor and its diff_id (the sha256 of the tar)."""
    try:
        st = os.stat(source)
    except OSError as e:
        raise BuildError(f"layer source {source}: {os.strerror(e.errno or 0).lower()}") from None
    try:
        with _blob_writer(blobs) as blob:
            with gzip.GzipFile(filename="", mode="wb", fileobj=blob, mtime=0, compresslevel=6) as gz:
                tar_out = _Digester(gz)
                if stat.S_ISDIR(st.st_mode):
                    _tar_directory(source, tar_out, mtime)
                else:
                    _copy_tarball(source, tar_out)
    except OSError as e:
        # an unreadable file in the source tree, or a full disk under the layout
        path = e.filename or source
        raise BuildError(f"layer source {source}: {path}: {os.strerror(e.errno or 0).lower()}") from None
    diff_id = f"sha256:{tar_out.sha256.hexdigest()}"
    layer = oci.Descriptor(media_type=oci.MEDIA_TYPE_OCI_LAYER_GZIP, digest=blob.digest, size=blob.size)
    return layer, diff_id


def busybox_rootfs(rootfs: str) -> str:
    """A busybox root filesystem in `rootfs` (created if needed), from Debian's
    busybox-static, with an /etc/passwd and /etc/group for root and nobody."""
    if not os.path.exists(demo.BUSYBOX):
        raise FailedPrecondition(f"{demo.BUSYBOX}: missing (Debian package busybox-static)")
    demo.make_rootfs(rootfs)
    return rootfs


def build_busybox_layout(
    layout: str,
    tag: str = "latest",
    config: oci.ImageConfig | None = None,
    *,
    extra_layers: Sequence[str] = (),
    mtime: int | None = None,
) -> BuiltImage:
    """A busybox image in the OCI layout `layout`: one busybox layer, then one layer per
    `extra_layers` source. `config` defaults to `Cmd ["sh"]` with the default PATH."""
    if config is None:
        config = oci.ImageConfig(env=(DEFAULT_PATH,), cmd=("sh",))
    with tempfile.TemporaryDirectory(prefix="skiff-busybox-") as tmp:
        rootfs = busybox_rootfs(os.path.join(tmp, "rootfs"))
        return build(layout, [rootfs, *extra_layers], tag=tag, config=config, mtime=mtime)


# --- layers --------------------------------------------------------------------------


class _Digester(io.RawIOBase):
    """A write-only stream that hashes and counts what passes through to `out`."""

    def __init__(self, out: IO[bytes] | BinaryIO | gzip.GzipFile) -> None:
        super().__init__()
        self._out = out
        self.sha256 = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: object) -> int:
        view = memoryview(data)  # type: ignore[arg-type]
        self.sha256.update(view)
        self._out.write(view)
        self.size += view.nbytes
        return view.nbytes


def _tar_directory(root: str, out: _Digester, mtime: int | None) -> None:
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for path, name in _walk(root, ""):
            info = tar.gettarinfo(path, arcname=name)
            if info is None:  # a socket: nothing a layer can carry (Docker skips them too)
                continue
            info.uname = info.gname = ""
            info.mtime = int(info.mtime) if mtime is None else mtime
            if not info.issym():
                info.pax_headers = _xattrs(path)
            if info.isreg():
                with open(path, "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)


def _xattrs(path: str) -> dict[str, str]:
    """The extended attributes a layer carries, as PAX `SCHILY.xattr.` records: file
    capabilities and user.* ones. security.selinux labels and trusted.* (overlayfs's own)
    belong to the host that wrote them, so they stay behind, as in Docker's layers."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return {}
        raise BuildError(f"layer source {path}: listxattr: {os.strerror(e.errno or 0).lower()}") from None
    records = {}
    for name in sorted(names):
        carried = name == "security.capability" or name.startswith("user.")
        if carried and not name.startswith("user.overlay."):
            value = os.getxattr(path, name, follow_symlinks=False)
            # tarfile writes a value that is not UTF-8 back as its bytes (hdrcharset=BINARY)
            records[f"SCHILY.xattr.{name}"] = value.decode("utf-8", "surrogateescape")
    return records


def _walk(directory: str, prefix: str) -> Iterator[tuple[str, str]]:
    """(path, name in the layer) below `directory`, parents first, in sorted order,
    without following symlinks."""
    for entry in sorted(os.listdir(directory)):
        path = os.path.join(directory, entry)
        name = prefix + entry
        yield path, name
        if stat.S_ISDIR(os.lstat(path).st_mode):
            yield from _walk(path, name + "/")


def _copy_tarball(source: str, out: _Digester) -> None:
    with open(source, "rb") as f:
        magic = f.read(4)
    if magic.startswith(b"\x28\xb5\x2f\xfd"):
        raise BuildError(f"layer source {source}: zstd archives are not supported, give a tar or tar.gz")
    # Read once through tarfile so that a file that is not a tar archive fails here, with
    # its name, rather than in whoever unpacks the layer.
    try:
        with tarfile.open(source, "r:*") as archive:
            for _ in archive:
                pass
    except (tarfile.TarError, EOFError, OSError) as e:
        raise BuildError(f"layer source {source}: not a tar archive: {e}") from None
    with open(source, "rb") as raw:
        tar: io.BufferedIOBase = gzip.GzipFile(fileobj=raw) if magic.startswith(b"\x1f\x8b") else raw
        shutil.copyfileobj(tar, out, 1 << 20)


# --- blobs and the layout ------------------------------------------------------------


class _BlobWriter(_Digester):
    digest: str


@contextlib.contextmanager
def _blob_writer(blobs: str) -> Iterator[_BlobWriter]:
    """A stream into a temporary file in `blobs`, renamed to its digest when the block
    ends without error, removed otherwise: no partial blob is ever under a digest name."""
    fd, tmp = tempfile.mkstemp(dir=blobs, prefix=".tmp-build-")
    try:
        with os.fdopen(fd, "wb") as f:
            writer = _BlobWriter(f)
            yield writer
        writer.digest = f"sha256:{writer.sha256.hexdigest()}"
        os.chmod(tmp, 0o644)
        os.replace(tmp, os.path.join(blobs, writer.sha256.hexdigest()))
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _put_json(blobs: str, media_type: str, value: object) -> oci.Descriptor:
    data = json.dumps(value, separators=(",", ":")).encode()
    with _blob_writer(blobs) as blob:
        blob.write(data)
    return oci.Descriptor(media_type=media_type, digest=blob.digest, size=blob.size)


def _check_tag(tag: str) -> None:
    if not tag or any(c.isspace() for c in tag):
        raise BuildError(f"tag {tag!r}: must be non-empty, without spaces")


def _tagged(desc: oci.Descriptor, tag: str) -> oci.Descriptor:
    return oci.Descriptor(
        media_type=desc.media_type, digest=desc.digest, size=desc.size, annotations={REF_NAME: tag}
    )


def _init_layout(layout: str) -> str:
    """Create the layout's oci-layout file and blob directory if missing; the blob
    directory for sha256."""
    blobs = os.path.join(layout, "blobs", "sha256")
    os.makedirs(blobs, exist_ok=True)
    marker = os.path.join(layout, "oci-layout")
    if os.path.exists(marker):
        with open(marker, "rb") as f:
            oci.parse_image_layout(f.read(), source=marker)
    else:
        _write_atomic(marker, {"imageLayoutVersion": LAYOUT_VERSION})
    return blobs


def _add_to_index(layout: str, manifest: oci.Descriptor) -> None:
    path = os.path.join(layout, "index.json")
    kept: tuple[oci.Descriptor, ...] = ()
    if os.path.exists(path):
        with open(path, "rb") as f:
            try:
                index = oci.parse_index(f.read(), source=path)
            except SpecError as e:
                raise BuildError(str(e)) from None
        tag = manifest.annotations[REF_NAME]
        kept = tuple(d for d in index.manifests if d.annotations.get(REF_NAME) != tag)
    index = oci.Index(schema_version=2, media_type=oci.MEDIA_TYPE_OCI_INDEX, manifests=(*kept, manifest))
    _write_atomic(path, oci.to_json(index))


def _write_atomic(path: str, value: object) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            json.dump(value, f, separators=(",", ":"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
