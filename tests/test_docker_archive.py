"""images/docker_archive.py: docker-archive tarballs (docker save / podman save) in and out
of the content store. Hand-made archives for the edge cases; skopeo for the real format."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any

import pytest

from skiff.errors import InvalidArgument, NotFound
from skiff.images.build import build_busybox_layout
from skiff.images.docker_archive import export_docker_archive, import_docker_archive
from skiff.images.layout import import_layout
from skiff.images.store import ContentStore
from skiff.images.unpack import unpack_layer
from skiff.oci import image as oci
from support import skopeo

needs_skopeo = pytest.mark.requires("skopeo", "busybox")


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _layer(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _config(diff_ids: list[str]) -> bytes:
    return json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["sh"]},
                       "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()


def _archive(path: Path, members: list[tuple[str, bytes | tarfile.TarInfo]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            if isinstance(data, tarfile.TarInfo):
                tar.addfile(data)
            else:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def _manifest(*entries: dict[str, Any]) -> bytes:
    return json.dumps(list(entries)).encode()


def _simple(path: Path, *, layer: bytes | None = None, diff_id: str | None = None,
            tags: list[str] | None = None) -> tuple[Path, bytes, bytes]:
    """An old-docker-style archive: <id>/layer.tar, <hex>.json, manifest.json."""
    plain = _layer({"hello": b"hi\n"})
    layer = plain if layer is None else layer
    config = _config([diff_id or _sha(plain)])
    archive = _archive(path, [
        ("abc/layer.tar", layer),
        (f"{_sha(config)[7:]}.json", config),
        ("manifest.json", _manifest({"Config": f"{_sha(config)[7:]}.json",
                                     "RepoTags": ["example:1"] if tags is None else tags,
                                     "Layers": ["abc/layer.tar"]})),
    ])
    return archive, layer, config


@pytest.fixture
def store(tmp_path: Path) -> ContentStore:
    return ContentStore(str(tmp_path / "store"))


def test_import_plain_layer(tmp_path: Path, store: ContentStore) -> None:
    archive, layer, config = _simple(tmp_path / "a.tar", tags=["example:1", "quay.io/x/y:2"])
    records = import_docker_archive(store, str(archive))
    assert [r.name for r in records] == ["docker.io/library/example:1", "quay.io/x/y:2"]
    assert {r.digest for r in records} == {records[0].digest}
    assert records[0].media_type == oci.MEDIA_TYPE_DOCKER_MANIFEST_V2
    manifest = oci.parse_manifest(store.read(records[0].digest))
    assert manifest.media_type == oci.MEDIA_TYPE_DOCKER_MANIFEST_V2
    assert manifest.config.media_type == oci.MEDIA_TYPE_DOCKER_CONFIG
    assert manifest.config.digest == _sha(config)  # the image ID stays what docker showed
    [desc] = manifest.layers
    assert (desc.media_type, desc.digest, desc.size) == (oci.MEDIA_TYPE_DOCKER_LAYER, _sha(layer), len(layer))
    assert store.read(desc.digest) == layer


def test_import_gzip_layer_and_name(tmp_path: Path, store: ContentStore) -> None:
    plain = _layer({"hello": b"hi\n"})
    gz = gzip.compress(plain)
    archive, _, _ = _simple(tmp_path / "a.tar", layer=gz, tags=[])
    [record] = import_docker_archive(store, str(archive), name="mine")
    assert record.name == "docker.io/library/mine:latest"
    [desc] = oci.parse_manifest(store.read(record.digest)).layers
    assert (desc.media_type, desc.digest) == (oci.MEDIA_TYPE_DOCKER_LAYER_GZIP, _sha(gz))
    out = tmp_path / "rootfs"
    out.mkdir()
    with store.open(desc.digest) as f:
        assert unpack_layer(f, str(out), media_type=desc.media_type) == _sha(plain)
    assert (out / "hello").read_bytes() == b"hi\n"


def test_import_gzipped_archive(tmp_path: Path, store: ContentStore) -> None:
    """`docker save | gzip` is loaded as readily."""
    archive, _, _ = _simple(tmp_path / "a.tar")
    zipped = tmp_path / "a.tar.gz"
    zipped.write_bytes(gzip.compress(archive.read_bytes()))
    [record] = import_docker_archive(store, str(zipped))
    assert record.name == "docker.io/library/example:1"


def test_import_multi_member_gzip(tmp_path: Path, store: ContentStore) -> None:
    plain = _layer({"hello": b"hi\n"})
    gz = gzip.compress(plain[:1000]) + gzip.compress(plain[1000:])
    archive, _, _ = _simple(tmp_path / "a.tar", layer=gz, diff_id=_sha(plain))
    import_docker_archive(store, str(archive))


def test_shared_layer_by_symlink(tmp_path: Path, store: ContentStore) -> None:
    """Old docker saves a layer two images share once and links the second copy to it."""
    plain = _layer({"a": b"1"})
    c1, c2 = _config([_sha(plain)]), _config([_sha(plain), _sha(plain)])
    link = tarfile.TarInfo("two/layer.tar")
    link.type, link.linkname = tarfile.SYMTYPE, "../one/layer.tar"
    archive = _archive(tmp_path / "a.tar", [
        ("one/layer.tar", plain), ("two/layer.tar", link), ("c1.json", c1), ("c2.json", c2),
        ("manifest.json", _manifest({"Config": "c1.json", "RepoTags": ["a:1"], "Layers": ["one/layer.tar"]},
                                    {"Config": "c2.json", "RepoTags": ["b:1"],
                                     "Layers": ["one/layer.tar", "two/layer.tar"]})),
    ])
    a, b = import_docker_archive(store, str(archive))
    assert (a.name, b.name) == ("docker.io/library/a:1", "docker.io/library/b:1")
    assert [d.digest for d in oci.parse_manifest(store.read(b.digest)).layers] == [_sha(plain)] * 2


def _fails(store: ContentStore, archive: Path, match: str, **kw: Any) -> None:
    with pytest.raises(InvalidArgument, match=match):
        import_docker_archive(store, str(archive), **kw)
    assert store.images() == []


def test_missing_manifest(tmp_path: Path, store: ContentStore) -> None:
    _fails(store, _archive(tmp_path / "a.tar", [("x.json", b"{}")]), "no manifest.json")


def test_missing_archive(tmp_path: Path, store: ContentStore) -> None:
    with pytest.raises(NotFound):
        import_docker_archive(store, str(tmp_path / "nope.tar"))


def test_layer_listed_but_absent(tmp_path: Path, store: ContentStore) -> None:
    config = _config([_sha(b"")])
    archive = _archive(tmp_path / "a.tar", [
        ("c.json", config),
        ("manifest.json", _manifest({"Config": "c.json", "RepoTags": ["a:1"], "Layers": ["gone/layer.tar"]})),
    ])
    _fails(store, archive, "layer 'gone/layer.tar': no such member")


@pytest.mark.parametrize("bad", ["../evil", "/etc/evil", "a/../../evil"])
def test_member_escaping(tmp_path: Path, store: ContentStore, bad: str) -> None:
    archive, _, _ = _simple(tmp_path / "a.tar")
    with tarfile.open(archive, "a") as tar:
        info = tarfile.TarInfo(bad)
        tar.addfile(info, io.BytesIO(b""))
    _fails(store, archive, f"member '{bad}'")


@pytest.mark.parametrize("target", ["../../etc/passwd", "/etc/passwd"])
def test_symlink_out_of_archive(tmp_path: Path, store: ContentStore, target: str) -> None:
    link = tarfile.TarInfo("one/layer.tar")
    link.type, link.linkname = tarfile.SYMTYPE, target
    config = _config([_sha(b"")])
    archive = _archive(tmp_path / "a.tar", [
        ("one/layer.tar", link), ("c.json", config),
        ("manifest.json", _manifest({"Config": "c.json", "RepoTags": ["a:1"], "Layers": ["one/layer.tar"]})),
    ])
    _fails(store, archive, "layer 'one/layer.tar'")


def test_diff_id_mismatch(tmp_path: Path, store: ContentStore) -> None:
    archive, layer, _ = _simple(tmp_path / "a.tar", diff_id=_sha(b"other"))
    _fails(store, archive, f"layer 'abc/layer.tar': diff_id {_sha(layer)} does not match")
    assert not store.has(_sha(layer))  # the bad layer never entered the store


def test_second_image_bad_records_neither(tmp_path: Path, store: ContentStore) -> None:
    plain = _layer({"a": b"1"})
    good, bad = _config([_sha(plain)]), _config([_sha(b"x")])
    archive = _archive(tmp_path / "a.tar", [
        ("l.tar", plain), ("good.json", good), ("bad.json", bad),
        ("manifest.json", _manifest({"Config": "good.json", "RepoTags": ["a:1"], "Layers": ["l.tar"]},
                                    {"Config": "bad.json", "RepoTags": ["b:1"], "Layers": ["l.tar"]})),
    ])
    _fails(store, archive, "layer 'l.tar': diff_id")


def test_layer_count_mismatch(tmp_path: Path, store: ContentStore) -> None:
    config = _config([])
    archive = _archive(tmp_path / "a.tar", [
        ("l.tar", _layer({})), ("c.json", config),
        ("manifest.json", _manifest({"Config": "c.json", "RepoTags": ["a:1"], "Layers": ["l.tar"]})),
    ])
    _fails(store, archive, r"manifest.json\[0\]: 1 layers but 0 diff_ids")


def test_no_tags_no_name(tmp_path: Path, store: ContentStore) -> None:
    archive, _, _ = _simple(tmp_path / "a.tar", tags=[])
    _fails(store, archive, r"manifest.json\[0\]: no RepoTags")


def test_corrupt_gzip(tmp_path: Path, store: ContentStore) -> None:
    plain = _layer({"hello": b"hi\n"})
    gz = gzip.compress(plain)
    archive, _, _ = _simple(tmp_path / "a.tar", layer=gz[:-20] + b"\0" * 20, diff_id=_sha(plain))
    _fails(store, archive, "layer 'abc/layer.tar'")


def test_bad_manifest_json(tmp_path: Path, store: ContentStore) -> None:
    _fails(store, _archive(tmp_path / "a.tar", [("manifest.json", b"{not json")]), "manifest.json'?: invalid json")
    _fails(store, _archive(tmp_path / "b.tar", [("manifest.json", b"{}")]), "expected a non-empty list")
    _fails(store, _archive(tmp_path / "c.tar", [("manifest.json", b'[{"Config": 1}]')]),
           r"\[0\].Config: expected a string")


def test_not_a_tar(tmp_path: Path, store: ContentStore) -> None:
    path = tmp_path / "a.tar"
    path.write_bytes(b"hello" * 100)
    _fails(store, path, "not a tar archive")


def test_export_round_trip(tmp_path: Path, store: ContentStore) -> None:
    plain = _layer({"hello": b"hi\n"})
    archive, _, config = _simple(tmp_path / "a.tar", layer=gzip.compress(plain), diff_id=_sha(plain))
    [record] = import_docker_archive(store, str(archive))
    out = tmp_path / "out.tar"
    export_docker_archive(store, record.name, str(out))
    with tarfile.open(out) as tar:
        names = tar.getnames()
        f = tar.extractfile("manifest.json")
        assert f is not None
        [entry] = json.load(f)
    assert entry["RepoTags"] == ["docker.io/library/example:1"]
    assert entry["Config"] == f"blobs/sha256/{_sha(config)[7:]}"
    assert set(names) >= {"manifest.json", entry["Config"], *entry["Layers"]}
    other = ContentStore(str(tmp_path / "other"))
    [again] = import_docker_archive(other, str(out))
    assert (again.name, again.digest) == (record.name, record.digest)
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".skiff-export-")]


def test_export_missing_image(tmp_path: Path, store: ContentStore) -> None:
    with pytest.raises(NotFound):
        export_docker_archive(store, "docker.io/library/nope:latest", str(tmp_path / "out.tar"))
    assert sorted(os.listdir(tmp_path)) == ["store"]


@needs_skopeo
def test_skopeo_docker_archive_imports(tmp_path: Path, store: ContentStore) -> None:
    layout = tmp_path / "layout"
    built = build_busybox_layout(str(layout), "latest")
    archive = tmp_path / "busybox.tar"
    skopeo("copy", f"oci:{layout}:latest", f"docker-archive:{archive}:example.com/demo:v1")
    [record] = import_docker_archive(store, str(archive))
    assert record.name == "example.com/demo:v1"
    manifest = oci.parse_manifest(store.read(record.digest))
    image = oci.parse_image(store.read(manifest.config.digest))
    assert len(manifest.layers) == len(image.rootfs.diff_ids) == 1
    assert image.rootfs.diff_ids == built.image.rootfs.diff_ids
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    with store.open(manifest.layers[0].digest) as f:
        assert unpack_layer(f, str(rootfs), media_type=manifest.layers[0].media_type) == image.rootfs.diff_ids[0]
    assert (rootfs / "bin" / "busybox").exists()


@needs_skopeo
def test_export_read_by_skopeo(tmp_path: Path, store: ContentStore) -> None:
    layout = tmp_path / "layout"
    build_busybox_layout(str(layout), "latest")
    [record] = import_layout(store, str(layout), name="example.com/demo:v1")
    archive = tmp_path / "out.tar"
    export_docker_archive(store, record.name, str(archive))
    info = json.loads(skopeo("inspect", f"docker-archive:{archive}").stdout)
    manifest = oci.parse_manifest(store.read(record.digest))
    image = oci.parse_image(store.read(manifest.config.digest))
    # skopeo serves docker-archive layers uncompressed, so lists them by diff_id
    assert info["Layers"] == list(image.rootfs.diff_ids)
    config = json.loads(skopeo("inspect", "--config", f"docker-archive:{archive}").stdout)
    assert config["rootfs"]["diff_ids"] == list(image.rootfs.diff_ids)
    assert config["config"]["Cmd"] == ["sh"]
    skopeo("inspect", f"docker-archive:{archive}:example.com/demo:v1")  # found by its RepoTag
    # and skopeo copies it out whole (it reads every layer)
    skopeo("copy", f"docker-archive:{archive}", f"oci:{tmp_path / 'again'}:v1")
