"""OCI image layouts (a directory: oci-layout, index.json, blobs/) and oci-archive tarballs
(the same, as a tar) in and out of the content store. `skiff build` writes a layout, which
this imports; `skiff export` writes one (or its archive) for skopeo, podman or ctr."""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import tarfile
import tempfile
from typing import BinaryIO

from skiff.errors import InvalidArgument, NotFound
from skiff.images.store import ContentStore, ImageRecord
from skiff.oci import image as oci

REF_NAME = "org.opencontainers.image.ref.name"
_MAX_JSON = 4 << 20  # an index or manifest bigger than this is not one


def import_layout(store: ContentStore, layout: str, *, name: str | None = None) -> list[ImageRecord]:
    """Copy every image of the layout's index.json into the store (each blob verified against
    its digest), recorded under its ref-name annotation, or `name` (which then must pick out a
    layout with one image)."""
    try:
        with _open_regular(layout, "index.json") as f:
            index = oci.parse_index(f.read(_MAX_JSON), source=f"{layout}/index.json")
    except FileNotFoundError:
        raise NotFound(f"{layout}: not an OCI image layout (no index.json)") from None
    if name is not None and len(index.manifests) != 1:
        raise InvalidArgument(f"{layout}: holds {len(index.manifests)} images; name one of them by its ref name")
    records = []
    with store.hold():
        for descriptor in index.manifests:
            ref = name or descriptor.annotations.get(REF_NAME)
            if not ref:
                raise InvalidArgument(f"{layout}/index.json: manifest {descriptor.digest} has no {REF_NAME} to name it by")
            _copy_tree(store, layout, descriptor)
            records.append(store.put_image(ref, descriptor.digest, descriptor.media_type))
    return records


def _copy_tree(store: ContentStore, layout: str, descriptor: oci.Descriptor) -> None:
    """The descriptor's blob and, for a manifest or index, every blob it reaches; children first,
    so the store never holds a manifest whose blobs are missing."""
    path = f"{layout}/blobs/{descriptor.digest.replace(':', '/')}"
    if descriptor.media_type in oci.INDEX_MEDIA_TYPES:
        with _open_blob(layout, descriptor.digest) as f:
            for child in oci.parse_index(f.read(_MAX_JSON), source=path).manifests:
                _copy_tree(store, layout, child)
    elif descriptor.media_type in oci.MANIFEST_MEDIA_TYPES:
        with _open_blob(layout, descriptor.digest) as f:
            manifest = oci.parse_manifest(f.read(_MAX_JSON), source=path)
        for blob in (manifest.config, *manifest.layers):
            _copy_blob(store, layout, blob)
    _copy_blob(store, layout, descriptor)


def _copy_blob(store: ContentStore, layout: str, descriptor: oci.Descriptor) -> None:
    if store.has(descriptor.digest):
        return
    with _open_blob(layout, descriptor.digest) as src, store.writer(expected_digest=descriptor.digest,
                                                                    expected_size=descriptor.size) as out:
        while chunk := src.read(1 << 20):
            out.write(chunk)
        out.commit()


def _open_blob(layout: str, digest: str) -> BinaryIO:
    algorithm, _, hexdigest = digest.partition(":")
    if not hexdigest or "/" in hexdigest or "/" in algorithm or algorithm.startswith("."):
        raise InvalidArgument(f"{layout}: blob digest {digest!r} is malformed")
    try:
        return _open_regular(layout, "blobs", algorithm, hexdigest)
    except FileNotFoundError:
        raise NotFound(f"{layout}: blob {digest} is missing") from None


def _open_regular(layout: str, *parts: str) -> BinaryIO:
    """A regular file inside the layout, reached without following any symlink: a layout
    unpacked from someone's archive may hold links to host files or to /dev/zero."""
    fd = os.open(layout, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts[:-1]:
            next_fd = os.open(part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = next_fd
        try:
            file_fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=fd)
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOTDIR):
                raise InvalidArgument(f"{layout}/{'/'.join(parts)}: a symlink, not a file") from None
            raise
    except NotADirectoryError:
        raise InvalidArgument(f"{layout}/{'/'.join(parts)}: a path through something not a directory") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise InvalidArgument(f"{layout}/{'/'.join(parts)}: a path through a symlink") from None
        raise
    finally:
        os.close(fd)
    if not stat.S_ISREG(os.fstat(file_fd).st_mode):
        os.close(file_fd)
        raise InvalidArgument(f"{layout}/{'/'.join(parts)}: not a regular file")
    return os.fdopen(file_fd, "rb")


def export_layout(store: ContentStore, name: str, layout: str, *, tag: str | None = None) -> None:
    """Write the image `name` (every blob it reaches) into the layout directory `layout`,
    adding it to index.json under `tag` (default: the name's tag)."""
    record = store.image(name)
    os.makedirs(os.path.join(layout, "blobs", "sha256"), exist_ok=True)
    with open(os.path.join(layout, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    for digest in _reachable(store, record.digest, record.media_type):
        target = os.path.join(layout, "blobs", "sha256", digest.partition(":")[2])
        if not os.path.exists(target):
            shutil.copyfile(store.path(digest), target)
    index_path = os.path.join(layout, "index.json")
    index: dict[str, object] = {"schemaVersion": 2, "mediaType": oci.MEDIA_TYPE_OCI_INDEX, "manifests": []}
    if os.path.exists(index_path):
        with open(index_path) as f:
            index = json.load(f)
    if tag is None:
        last = name.rpartition("/")[2]
        tag = last.rpartition(":")[2] if ":" in last else "latest"
    manifests = [m for m in index["manifests"] if m.get("annotations", {}).get(REF_NAME) != tag]  # type: ignore[attr-defined]
    manifests.append({"mediaType": record.media_type, "digest": record.digest,
                      "size": os.path.getsize(store.path(record.digest)), "annotations": {REF_NAME: tag}})
    index["manifests"] = manifests
    with open(index_path, "w") as f:
        json.dump(index, f)


def _reachable(store: ContentStore, digest: str, media_type: str) -> list[str]:
    found = [digest]
    data = store.read(digest)
    if media_type in oci.INDEX_MEDIA_TYPES:
        for child in oci.parse_index(data).manifests:
            if store.has(child.digest):
                found += _reachable(store, child.digest, child.media_type)
    elif media_type in oci.MANIFEST_MEDIA_TYPES:
        manifest = oci.parse_manifest(data)
        found += [manifest.config.digest, *(layer.digest for layer in manifest.layers)]
    return found


def import_archive(store: ContentStore, archive: str, *, name: str | None = None) -> list[ImageRecord]:
    """An oci-archive: an OCI layout in a tar, unpacked with the layer unpacker, so that no
    member can write outside the temporary directory (Python 3.11.2 has no tarfile filters)."""
    from skiff.images.unpack import unpack_layer

    with tempfile.TemporaryDirectory(prefix="skiff-import-") as tmp:
        unpack_layer(archive, tmp, media_type=oci.MEDIA_TYPE_OCI_LAYER)
        return import_layout(store, tmp, name=name)


def export_archive(store: ContentStore, name: str, archive: str, *, tag: str | None = None) -> None:
    with tempfile.TemporaryDirectory(prefix="skiff-export-") as tmp:
        export_layout(store, name, tmp, tag=tag)
        with tarfile.open(archive, "w") as tar:
            for entry in sorted(os.listdir(tmp)):
                tar.add(os.path.join(tmp, entry), arcname=entry)
