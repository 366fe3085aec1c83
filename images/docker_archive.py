"""docker-archive tarballs, what `docker save` and `podman save` write, in and out of the
content store: `manifest.json` (a list of {Config, RepoTags, Layers}), the config JSON file
and one tar per layer, plain or gzip. Docker 25 and later also write an OCI layout alongside
(blobs/sha256/..., index.json), which manifest.json points into; older ones write
`<id>/layer.tar` and link a layer shared by two images to the first copy with a symlink.

Members are read as streams straight into the store's writer, never extracted by name:
a name with `..` or an absolute one is refused all the same, so that a crafted archive
says what it is rather than being half-used, and symlinks are followed inside the archive
only. Each image becomes a Docker schema 2 manifest over the blobs as they were in the
archive, so the config digest (the image ID) stays what docker or podman showed.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from skiff.errors import InvalidArgument, NotFound
from skiff.images import reference
from skiff.images.store import ContentStore, ImageRecord
from skiff.oci import image as oci

MANIFEST = "manifest.json"
_CHUNK = 1 << 20
_MAX_JSON = 16 << 20  # manifest.json and configs are read whole; real ones are kilobytes
_MAX_LINKS = 40
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class DockerArchiveError(InvalidArgument):
    """A docker-archive that is malformed, unsafe, or disagrees with itself."""


@dataclass(frozen=True, slots=True, kw_only=True)
class _Layer:
    descriptor: oci.Descriptor
    diff_id: str


def import_docker_archive(store: ContentStore, archive: str, *, name: str | None = None) -> list[ImageRecord]:
    """Copy every image of the docker-archive `archive` into the store and record it under
    each of its RepoTags (normalized: `busybox:1` -> `docker.io/library/busybox:1`), or under
    `name` alone (which then must pick out an archive with one image). Every layer is
    checked against its config's rootfs.diff_ids; on any error no image is recorded (blobs
    already written stay for gc)."""
    try:
        tar = tarfile.open(archive, "r:*")
    except FileNotFoundError:
        raise NotFound(f"{archive}: no such file") from None
    except tarfile.TarError as e:
        raise DockerArchiveError(f"{archive}: not a tar archive: {e}") from None
    with tar:
        members = _index(tar, archive)
        entries = _entries(_read_json(tar, members, archive, MANIFEST), archive)
        if name is not None and len(entries) != 1:
            raise DockerArchiveError(f"{archive}: holds {len(entries)} images; import it without a name")
        pending: list[tuple[list[str], str]] = []
        with store.hold():
            layers: dict[str, _Layer] = {}  # by member name: old docker lists a shared layer in each image
            for i, entry in enumerate(entries):
                where = f"{archive}: {MANIFEST}[{i}]"
                refs = [_normalize(name, f"{where} name")] if name is not None else [
                    _normalize(tag, f"{where}.RepoTags") for tag in entry["RepoTags"]]
                if not refs:
                    raise DockerArchiveError(f"{where}: no RepoTags; import it with a name")
                digest = _import_image(store, tar, members, archive, where, entry, layers)
                pending.append((refs, digest))
            # only now, so that a bad second image leaves the first unrecorded too
            return [store.put_image(ref, digest, oci.MEDIA_TYPE_DOCKER_MANIFEST_V2)
                    for refs, digest in pending for ref in refs]


def _normalize(name: str, what: str) -> str:
    try:
        ref = reference.parse(name)
    except InvalidArgument as e:
        raise DockerArchiveError(f"{what}: {e}") from None
    if ref.tag is None and ref.digest is None:
        ref = reference.Reference(domain=ref.domain, path=ref.path, tag="latest")
    return str(ref)


def _index(tar: tarfile.TarFile, archive: str) -> dict[str, tarfile.TarInfo]:
    """The members by cleaned name; refuses any name that could point outside the archive
    root, used or not."""
    members: dict[str, tarfile.TarInfo] = {}
    try:
        for member in tar:
            members[_clean(member.name, f"{archive}: member {member.name!r}")] = member
    except tarfile.TarError as e:
        raise DockerArchiveError(f"{archive}: corrupt tar: {e}") from None
    except (OSError, EOFError, zlib.error) as e:
        raise DockerArchiveError(f"{archive}: corrupt tar: {e}") from None
    return members


def _clean(name: str, what: str) -> str:
    if name.startswith("/"):
        raise DockerArchiveError(f"{what}: absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise DockerArchiveError(f"{what}: path with '..'")
    return "/".join(parts)


def _member(members: dict[str, tarfile.TarInfo], archive: str, path: str, what: str) -> tarfile.TarInfo:
    """The regular file `path` names, symlinks and hardlinks followed inside the archive."""
    name = _clean(path, f"{archive}: {what} {path!r}")
    for _ in range(_MAX_LINKS):
        member = members.get(name)
        if member is None:
            raise DockerArchiveError(f"{archive}: {what} {path!r}: no such member")
        if member.isfile():
            return member
        if member.issym():
            target = posixpath.normpath(posixpath.join(posixpath.dirname(name), member.linkname))
        elif member.islnk():
            target = member.linkname
        else:
            raise DockerArchiveError(f"{archive}: {what} {path!r}: not a regular file")
        if target.startswith("/") or target == ".." or target.startswith("../"):
            raise DockerArchiveError(f"{archive}: {what} {path!r}: links outside the archive")
        name = _clean(target, f"{archive}: {what} {path!r}")
    raise DockerArchiveError(f"{archive}: {what} {path!r}: too many levels of links")


@contextmanager
def _open(tar: tarfile.TarFile, member: tarfile.TarInfo, archive: str, what: str) -> Iterator[Any]:
    f = tar.extractfile(member)
    if f is None:  # _member returns regular files only
        raise DockerArchiveError(f"{archive}: {what} {member.name!r}: not a regular file")
    with f:
        yield f


def _read_json(tar: tarfile.TarFile, members: dict[str, tarfile.TarInfo], archive: str, path: str,
               what: str = "member") -> tuple[bytes, object]:
    if path == MANIFEST and MANIFEST not in members:
        raise DockerArchiveError(f"{archive}: no {MANIFEST}; not a docker-archive")
    member = _member(members, archive, path, what)
    if member.size > _MAX_JSON:
        raise DockerArchiveError(f"{archive}: {what} {path!r}: larger than {_MAX_JSON} bytes")
    try:
        with _open(tar, member, archive, what) as f:
            raw: bytes = f.read()
        return raw, json.loads(raw)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise DockerArchiveError(f"{archive}: {what} {path!r}: unreadable: {e}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DockerArchiveError(f"{archive}: {what} {path!r}: invalid json: {e}") from None


def _entries(manifest: tuple[bytes, object], archive: str) -> list[dict[str, Any]]:
    """manifest.json's entries, the shape checked: Config a string, Layers and RepoTags
    (null when saved by image ID) lists of strings."""
    data = manifest[1]
    if not isinstance(data, list) or not data:
        raise DockerArchiveError(f"{archive}: {MANIFEST}: expected a non-empty list of images")
    entries = []
    for i, entry in enumerate(data):
        where = f"{archive}: {MANIFEST}[{i}]"
        if not isinstance(entry, dict):
            raise DockerArchiveError(f"{where}: expected an object")
        if not isinstance(entry.get("Config"), str):
            raise DockerArchiveError(f"{where}.Config: expected a string")
        for key in ("Layers", "RepoTags"):
            value = entry.get(key) or []
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise DockerArchiveError(f"{where}.{key}: expected a list of strings")
        entries.append({"Config": entry["Config"], "Layers": entry.get("Layers") or [],
                        "RepoTags": entry.get("RepoTags") or []})
    return entries


def _import_image(store: ContentStore, tar: tarfile.TarFile, members: dict[str, tarfile.TarInfo],
                  archive: str, where: str, entry: dict[str, Any], layers: dict[str, _Layer]) -> str:
    """Config, layers, then the manifest over them, so the store never holds a manifest
    whose blobs are missing; the manifest's digest."""
    config_raw, _ = _read_json(tar, members, archive, entry["Config"], what="config")
    try:
        image = oci.parse_image(config_raw, source=f"{archive}: config {entry['Config']}")
    except InvalidArgument as e:
        raise DockerArchiveError(str(e)) from None
    diff_ids = image.rootfs.diff_ids
    if len(diff_ids) != len(entry["Layers"]):
        raise DockerArchiveError(f"{where}: {len(entry['Layers'])} layers but {len(diff_ids)} "
                                 f"diff_ids in config {entry['Config']!r}")
    descriptors = []
    for path, diff_id in zip(entry["Layers"], diff_ids):
        member = _member(members, archive, path, "layer")
        layer = layers.get(member.name)
        if layer is None:
            layer = layers[member.name] = _import_layer(store, tar, member, archive, path,
                                                        diff_id=diff_id, config=entry["Config"])
        if layer.diff_id != diff_id:
            raise DockerArchiveError(f"{archive}: layer {path!r}: diff_id {layer.diff_id} does not match "
                                     f"{diff_id} in config {entry['Config']!r}")
        descriptors.append(layer.descriptor)
    config_digest = store.put(config_raw)
    manifest = oci.Manifest(
        schema_version=2,
        media_type=oci.MEDIA_TYPE_DOCKER_MANIFEST_V2,
        config=oci.Descriptor(media_type=oci.MEDIA_TYPE_DOCKER_CONFIG, digest=config_digest,
                              size=len(config_raw)),
        layers=tuple(descriptors),
    )
    return store.put(json.dumps(oci.to_json(manifest), separators=(",", ":")).encode())


def _import_layer(store: ContentStore, tar: tarfile.TarFile, member: tarfile.TarInfo,
                  archive: str, path: str, *, diff_id: str, config: str) -> _Layer:
    """The layer blob as it is in the archive, its diff_id computed on the way (the bytes
    themselves for a plain tar, the gunzipped bytes for gzip) and checked before the blob
    is committed, so a layer that is not what its config says never enters the store."""
    what = f"{archive}: layer {path!r}"
    diff = hashlib.sha256()
    inflate: Any = None
    media_type = oci.MEDIA_TYPE_DOCKER_LAYER
    try:
        with _open(tar, member, archive, "layer") as f, store.writer(expected_size=member.size) as out:
            first = True
            while chunk := f.read(_CHUNK):
                if first:
                    first = False
                    if chunk.startswith(_ZSTD_MAGIC):
                        raise DockerArchiveError(f"{what}: zstd-compressed layers are not supported")
                    if chunk.startswith(_GZIP_MAGIC):
                        media_type = oci.MEDIA_TYPE_DOCKER_LAYER_GZIP
                        inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
                out.write(chunk)
                if inflate is None:
                    diff.update(chunk)
                    continue
                while chunk:
                    if inflate.eof:  # concatenated gzip members make one stream
                        inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
                    diff.update(inflate.decompress(chunk))
                    chunk = inflate.unused_data
            if inflate is not None:
                diff.update(inflate.flush())
                if not inflate.eof:
                    raise DockerArchiveError(f"{what}: gzip stream cut short")
            actual = "sha256:" + diff.hexdigest()
            if actual != diff_id:
                raise DockerArchiveError(f"{what}: diff_id {actual} does not match {diff_id} in config {config!r}")
            digest = out.commit()
    except zlib.error as e:
        raise DockerArchiveError(f"{what}: corrupt gzip: {e}") from None
    except (tarfile.TarError, EOFError) as e:
        raise DockerArchiveError(f"{what}: unreadable: {e}") from None
    return _Layer(descriptor=oci.Descriptor(media_type=media_type, digest=digest, size=member.size),
                  diff_id=actual)


def export_docker_archive(store: ContentStore, name: str, archive: str, *, tag: str | None = None,
                          platform: str | None = None) -> None:
    """Write the image `name` as a docker-archive that `docker load`, `podman load` and
    skopeo read, tagged `tag` (default: `name`, unless it is a digest reference). Docker 25's
    layout: every blob at blobs/sha256/<hex>, layers as stored (docker and podman load gzip
    layers as readily as plain ones). An index is narrowed to the manifest for `platform`
    (default: the host's). The archive appears whole or not at all."""
    record = store.image(name)
    digest, media_type = record.digest, record.media_type
    if media_type in oci.INDEX_MEDIA_TYPES:
        from skiff.images.registry import parse_platform, select_platform
        from skiff.images.service import DEFAULT_PLATFORM

        index = oci.parse_index(store.read(digest), source=f"{record.name}@{digest}")
        chosen = select_platform(index, parse_platform(platform or DEFAULT_PLATFORM), source=record.name)
        digest, media_type = chosen.digest, chosen.media_type
    if media_type not in oci.MANIFEST_MEDIA_TYPES:
        raise DockerArchiveError(f"image {record.name}: {media_type} is not an image manifest")
    manifest = oci.parse_manifest(store.read(digest), source=f"{record.name}@{digest}")
    for layer in manifest.layers:
        if layer.media_type in (oci.MEDIA_TYPE_OCI_LAYER_ZSTD, oci.MEDIA_TYPE_OCI_LAYER_NONDISTRIBUTABLE_ZSTD):
            raise DockerArchiveError(f"image {record.name}: layer {layer.digest} is zstd-compressed, "
                                     "which docker load does not read")
    repo_tag = tag if tag is not None else _repo_tag(record.name)
    entry = {
        "Config": _blob_name(manifest.config.digest),
        "RepoTags": [repo_tag] if repo_tag else None,
        "Layers": [_blob_name(layer.digest) for layer in manifest.layers],
    }
    directory = os.path.dirname(os.path.abspath(archive))
    fd, tmp = tempfile.mkstemp(prefix=".skiff-export-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f, tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tar:
            _add_dir(tar, "blobs")
            _add_dir(tar, "blobs/sha256")
            written: set[str] = set()
            for blob in (manifest.config, *manifest.layers):
                if blob.digest in written:
                    continue
                written.add(blob.digest)
                with store.open(blob.digest) as src:
                    _add_file(tar, _blob_name(blob.digest), store.size(blob.digest), src)
            data = json.dumps([entry], separators=(",", ":")).encode()
            with tempfile.SpooledTemporaryFile() as src:
                src.write(data)
                src.seek(0)
                _add_file(tar, MANIFEST, len(data), src)
        os.replace(tmp, archive)
    except BaseException:
        os.unlink(tmp)
        raise


def _repo_tag(name: str) -> str | None:
    """`name` as docker writes a RepoTag: repository:tag, no digest."""
    try:
        ref = reference.parse(name)
    except InvalidArgument:
        return None
    if ref.digest is not None:
        return None
    return str(reference.Reference(domain=ref.domain, path=ref.path, tag=ref.tag or "latest"))


def _blob_name(digest: str) -> str:
    algorithm, _, hexdigest = digest.partition(":")
    return f"blobs/{algorithm}/{hexdigest}"


def _add_dir(tar: tarfile.TarFile, path: str) -> None:
    info = tarfile.TarInfo(path)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    tar.addfile(info)


def _add_file(tar: tarfile.TarFile, path: str, size: int, src: Any) -> None:
    # mtime 0, root-owned: the same image always makes the same archive
    info = tarfile.TarInfo(path)
    info.size = size
    info.mode = 0o644
    tar.addfile(info, src)
