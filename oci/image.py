"""The OCI image-spec (1.1) manifest, index, descriptor and image config, as frozen data.

Class names are the Go type names of opencontainers/image-spec `specs-go/v1`; attributes
are the snake_case of the JSON names, with the JSON name in the field's metadata where the
snake_case does not camelCase back to it (`os.version`, `diff_ids`, the capitalised keys of
ImageConfig). Docker's image manifest v2 schema 2, its manifest list and its image config use
the same JSON names, so they parse into the same classes; fields only Docker writes
(`container_config`, `Hostname`, ...) are ignored, as unknown fields are.

Parsing goes through `skiff.oci.codec.from_json`, so errors are `SpecError`s naming the JSON
path (`layers[2].digest: invalid digest "sha256:xyz": ...`). Data only: no I/O here.
"""

import json
import re
from dataclasses import field
from typing import Any, TypeVar

from skiff.oci.codec import decode_json, from_json, spec_to_dict
from skiff.oci.spec import SpecError, _model, _Model

MEDIA_TYPE_OCI_DESCRIPTOR = "application/vnd.oci.descriptor.v1+json"
MEDIA_TYPE_OCI_LAYOUT_HEADER = "application/vnd.oci.layout.header.v1+json"
MEDIA_TYPE_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_TYPE_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_TYPE_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_TYPE_OCI_EMPTY = "application/vnd.oci.empty.v1+json"
MEDIA_TYPE_OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
MEDIA_TYPE_OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_TYPE_OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
# deprecated by image-spec 1.1 but still in old images and still to be read
MEDIA_TYPE_OCI_LAYER_NONDISTRIBUTABLE = "application/vnd.oci.image.layer.nondistributable.v1.tar"
MEDIA_TYPE_OCI_LAYER_NONDISTRIBUTABLE_GZIP = (
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
)
MEDIA_TYPE_OCI_LAYER_NONDISTRIBUTABLE_ZSTD = (
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
)
MEDIA_TYPE_DOCKER_MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
MEDIA_TYPE_DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MEDIA_TYPE_DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
MEDIA_TYPE_DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
MEDIA_TYPE_DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
MEDIA_TYPE_DOCKER_LAYER_FOREIGN_GZIP = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"

MANIFEST_MEDIA_TYPES = frozenset({MEDIA_TYPE_OCI_MANIFEST, MEDIA_TYPE_DOCKER_MANIFEST_V2})
INDEX_MEDIA_TYPES = frozenset({MEDIA_TYPE_OCI_INDEX, MEDIA_TYPE_DOCKER_MANIFEST_LIST})
CONFIG_MEDIA_TYPES = frozenset({MEDIA_TYPE_OCI_CONFIG, MEDIA_TYPE_DOCKER_CONFIG})
LAYER_MEDIA_TYPES = frozenset(
    {
        MEDIA_TYPE_OCI_LAYER,
        MEDIA_TYPE_OCI_LAYER_GZIP,
        MEDIA_TYPE_OCI_LAYER_ZSTD,
        MEDIA_TYPE_OCI_LAYER_NONDISTRIBUTABLE,
        MEDIA_TYPE_OCI_LAYER_NONDISTRIBUTABLE_GZIP,
        MEDIA_TYPE_OCI_LAYER_NONDISTRIBUTABLE_ZSTD,
        MEDIA_TYPE_DOCKER_LAYER,
        MEDIA_TYPE_DOCKER_LAYER_GZIP,
        MEDIA_TYPE_DOCKER_LAYER_FOREIGN_GZIP,
    }
)

# image-spec descriptor.md: the registered algorithms and their encodings. Lower-case hex
# only: an upper-case digest names the same bytes but a different blob path.
_DIGEST_ENCODED = {"sha256": re.compile(r"[a-f0-9]{64}"), "sha512": re.compile(r"[a-f0-9]{128}")}
_DIGEST_ALGORITHM = re.compile(r"[a-z0-9]+(?:[+._-][a-z0-9]+)*")


def digest_error(digest: str) -> str | None:
    """Why `digest` is not a well-formed digest of a registered algorithm, or None.
    The message names the digest: `invalid digest "sha1:ab": unsupported algorithm "sha1"`."""
    shown = json.dumps(digest[:150])
    algorithm, sep, encoded = digest.partition(":")
    if not sep or not _DIGEST_ALGORITHM.fullmatch(algorithm):
        return f"invalid digest {shown}: expected algorithm:hex"
    pattern = _DIGEST_ENCODED.get(algorithm)
    if pattern is None:
        return f"invalid digest {shown}: unsupported algorithm {json.dumps(algorithm)}"
    if not pattern.fullmatch(encoded):
        return f"invalid digest {shown}: malformed {algorithm} hex"
    return None


@_model
class EmptyObject(_Model):
    """The value type of Go's `map[string]struct{}` (ExposedPorts, Volumes): always `{}`."""


@_model
class Platform(_Model):
    architecture: str
    os: str
    os_version: str | None = field(default=None, metadata={"json": "os.version"})
    os_features: tuple[str, ...] = field(default=(), metadata={"json": "os.features"})
    variant: str | None = None
    features: tuple[str, ...] = ()


@_model
class Descriptor(_Model):
    media_type: str
    digest: str
    size: int
    urls: tuple[str, ...] = ()
    annotations: dict[str, str] = field(default_factory=dict)
    data: str | None = None  # base64 of the content itself, image-spec 1.1
    platform: Platform | None = None
    artifact_type: str | None = None


@_model
class Manifest(_Model):
    """An image manifest: OCI, or Docker v2 schema 2."""

    schema_version: int
    media_type: str | None = None
    artifact_type: str | None = None
    config: Descriptor
    layers: tuple[Descriptor, ...]
    subject: Descriptor | None = None
    annotations: dict[str, str] = field(default_factory=dict)


@_model
class Index(_Model):
    """An image index: OCI, or a Docker manifest list."""

    schema_version: int
    media_type: str | None = None
    artifact_type: str | None = None
    manifests: tuple[Descriptor, ...]
    subject: Descriptor | None = None
    annotations: dict[str, str] = field(default_factory=dict)


@_model
class ImageConfig(_Model):
    """What a container of the image runs. Go writes these keys capitalised."""

    user: str | None = field(default=None, metadata={"json": "User"})
    exposed_ports: dict[str, EmptyObject] = field(
        default_factory=dict, metadata={"json": "ExposedPorts"}
    )
    env: tuple[str, ...] = field(default=(), metadata={"json": "Env"})
    # None and () differ: an empty Entrypoint clears the base image's, a missing one keeps it
    entrypoint: tuple[str, ...] | None = field(default=None, metadata={"json": "Entrypoint"})
    cmd: tuple[str, ...] | None = field(default=None, metadata={"json": "Cmd"})
    volumes: dict[str, EmptyObject] = field(default_factory=dict, metadata={"json": "Volumes"})
    working_dir: str | None = field(default=None, metadata={"json": "WorkingDir"})
    labels: dict[str, str] = field(default_factory=dict, metadata={"json": "Labels"})
    stop_signal: str | None = field(default=None, metadata={"json": "StopSignal"})
    args_escaped: bool | None = field(default=None, metadata={"json": "ArgsEscaped"})


@_model
class RootFS(_Model):
    type: str
    diff_ids: tuple[str, ...] = field(metadata={"json": "diff_ids"})


@_model
class History(_Model):
    created: str | None = None
    created_by: str | None = field(default=None, metadata={"json": "created_by"})
    author: str | None = None
    comment: str | None = None
    empty_layer: bool | None = field(default=None, metadata={"json": "empty_layer"})


@_model
class Image(_Model):
    """The image config blob (`application/vnd.oci.image.config.v1+json`)."""

    created: str | None = None  # RFC 3339, kept as written
    author: str | None = None
    architecture: str
    os: str
    os_version: str | None = field(default=None, metadata={"json": "os.version"})
    os_features: tuple[str, ...] = field(default=(), metadata={"json": "os.features"})
    variant: str | None = None
    config: ImageConfig | None = None
    rootfs: RootFS
    history: tuple[History, ...] = ()


@_model
class ImageLayout(_Model):
    """The `oci-layout` file at the top of an image layout directory."""

    image_layout_version: str


# --- parsing --------------------------------------------------------------------------

_M = TypeVar("_M")


def _decode(raw: bytes | str | object, source: str | None) -> object:
    return decode_json(raw, source) if isinstance(raw, (bytes, str)) else raw


def _parse(cls: type[_M], raw: bytes | str | object, source: str | None) -> _M:
    data = _decode(raw, source)
    try:
        return from_json(cls, data)
    except SpecError as e:
        raise SpecError(e.field, e.reason, source=source or e.source) from None


def _check_descriptor(d: Descriptor, path: str, source: str | None) -> None:
    reason = digest_error(d.digest)
    if reason is not None:
        raise SpecError(f"{path}.digest", reason, source=source)
    if d.size < 0:
        raise SpecError(f"{path}.size", f"must not be negative, got {d.size}", source=source)


def _check_top(
    schema_version: int,
    media_type: str | None,
    allowed: frozenset[str],
    source: str | None,
) -> None:
    if schema_version != 2:
        raise SpecError("schemaVersion", f"expected 2, got {schema_version}", source=source)
    if media_type is not None and media_type not in allowed:
        expected = " or ".join(sorted(allowed))
        raise SpecError("mediaType", f"expected {expected}, got {json.dumps(media_type)}", source=source)


def parse_manifest(raw: bytes | str | object, *, source: str | None = None) -> Manifest:
    """A Manifest from its JSON (bytes, text or decoded), with every descriptor's digest
    and size checked. `source` (a digest, file or URL) prefixes error messages."""
    m = _parse(Manifest, raw, source)
    _check_top(m.schema_version, m.media_type, MANIFEST_MEDIA_TYPES, source)
    _check_descriptor(m.config, "config", source)
    for i, layer in enumerate(m.layers):
        _check_descriptor(layer, f"layers[{i}]", source)
    if m.subject is not None:
        _check_descriptor(m.subject, "subject", source)
    return m


def parse_index(raw: bytes | str | object, *, source: str | None = None) -> Index:
    """An Index (or Docker manifest list) from its JSON, descriptors checked."""
    ix = _parse(Index, raw, source)
    _check_top(ix.schema_version, ix.media_type, INDEX_MEDIA_TYPES, source)
    for i, d in enumerate(ix.manifests):
        _check_descriptor(d, f"manifests[{i}]", source)
    if ix.subject is not None:
        _check_descriptor(ix.subject, "subject", source)
    return ix


def parse_image(raw: bytes | str | object, *, source: str | None = None) -> Image:
    """An image config blob (OCI or Docker) from its JSON; diff_ids checked."""
    image = _parse(Image, raw, source)
    for i, diff_id in enumerate(image.rootfs.diff_ids):
        reason = digest_error(diff_id)
        if reason is not None:
            raise SpecError(f"rootfs.diff_ids[{i}]", reason, source=source)
    return image


def parse_image_layout(raw: bytes | str | object, *, source: str | None = None) -> ImageLayout:
    return _parse(ImageLayout, raw, source)


def to_json(obj: object) -> dict[str, Any]:
    """Any model here as its JSON object, fields at their default omitted (Go's omitempty).
    Encode with `json.dumps(..., separators=(",", ":"))` for a compact, stable blob."""
    return spec_to_dict(obj)
