"""images/store.py (blobs, records, gc) and oci/image.py (the image-spec models).

No root features needed: everything lives under tmp_path. Other processes are forked with
multiprocessing, so a "killed writer" really is a process that died holding an ingest.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from skiff.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from skiff.images.store import (
    BlobNotFoundError,
    ContentStore,
    DigestMismatchError,
    ImageInUseError,
    ImageNotFoundError,
    InvalidDigestError,
    SizeMismatchError,
)
from skiff.oci import image as oi
from skiff.oci.spec import SpecError

_fork = multiprocessing.get_context("fork")


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def ingests(root: Path) -> list[str]:
    return os.listdir(root / "ingest")


def blob_files(root: Path) -> list[str]:
    return sorted(os.listdir(root / "blobs" / "sha256"))


def dumps(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


# --- blobs ----------------------------------------------------------------------------


def test_put_and_read(tmp_path: Path) -> None:
    store = ContentStore(str(tmp_path))
    data = b"hello blob"
    digest = store.put(data, expected_digest=sha(data))
    assert digest == sha(data)
    assert store.has(digest)
    assert store.path(digest) == str(tmp_path / "blobs" / "sha256" / digest[7:])
    with store.open(digest) as f:
        assert f.read() == data
    assert store.size(digest) == len(data)
    assert store.put(data) == digest  # again, without a digest to check against
    assert store.put(data, digest) == digest  # again, already there
    with pytest.raises(DigestMismatchError):
        store.put(b"other bytes", digest)
    assert blob_files(tmp_path) == [digest[7:]]
    assert ingests(tmp_path) == []


def test_writer_in_chunks_verifies_digest_and_size(tmp_path: Path) -> None:
    store = ContentStore(str(tmp_path))
    data = os.urandom(3 * 1024 * 1024 + 17)
    with store.writer(expected_digest=sha(data), expected_size=len(data)) as w:
        assert w.offset == 0
        for i in range(0, len(data), 65536):
            w.write(data[i : i + 65536])
        assert w.commit() == sha(data)
    assert store.read(sha(data)) == data
    assert ingests(tmp_path) == []


def test_digest_mismatch_leaves_nothing(tmp_path: Path) -> None:
    store = ContentStore(str(tmp_path))
    claimed = sha(b"what the manifest said")
    for resume_key in (None, claimed):
        with store.writer(expected_digest=claimed, resume_key=resume_key) as w:
            w.write(b"what the registry sent")
            with pytest.raises(DigestMismatchError) as e:
                w.commit()
        assert str(e.value) == f"digest mismatch: expected {claimed}, got {sha(b'what the registry sent')}"
        assert isinstance(e.value, InvalidArgument)
        assert blob_files(tmp_path) == [] and ingests(tmp_path) == []
        assert not store.has(claimed)


def test_truncated_write_leaves_nothing(tmp_path: Path) -> None:
    store = ContentStore(str(tmp_path))
    data = b"0123456789"
    with store.writer(expected_digest=sha(data), expected_size=10, resume_key=sha(data)) as w:
        w.write(data[:5])
        with pytest.raises(SizeMismatchError, match=rf"blob {sha(data)}: truncated, 5 of 10 bytes"):
            w.commit()
    assert blob_files(tmp_path) == [] and ingests(tmp_path) == []


def test_writing_past_the_expected_size_is_refused(tmp_path: Path) -> None:
    store = ContentStore(str(tmp_path))
    with store.writer(expected_size=4, resume_key="k") as w:
        w.write(b"abc")
        with pytest.raises(SizeMismatchError, match="more than the expected 4 bytes"):
            w.write(b"de")
        with pytest.raises(FailedPrecondition):
            w.commit()
    assert blob_files(tmp_path) == [] and ingests(tmp_path) == []


@pytest.mark.parametrize(
    ("digest", "reason"),
    [
        ("sha512:" + "a" * 128, 'unsupported algorithm "sha512", the store keeps sha256 only'),
        ("md5:" + "a" * 32, 'unsupported algorithm "md5"'),
        ("sha256:" + "A" * 64, "malformed sha256 hex"),
        ("sha256:../../etc/passwd", "malformed sha256 hex"),
        ("a" * 64, "expected algorithm:hex"),
    ],
)
def test_bad_digests_are_named(tmp_path: Path, digest: str, reason: str) -> None:
    store = ContentStore(str(tmp_path))
    for call in (store.has, store.path, store.open, lambda d: store.put(b"x", d),
                 lambda d: store.writer(expected_digest=d)):
        with pytest.raises(InvalidDigestError) as e:
            call(digest)
        assert str(e.value) == f"invalid digest {json.dumps(digest)}: {reason}"


def test_missing_blob(tmp_path: Path) -> None:
    store = ContentStore(str(tmp_path))
    digest = sha(b"nothing")
    assert not store.has(digest)
    for call in (store.path, store.open, store.size):
        with pytest.raises(BlobNotFoundError, match=f"^blob {digest} not found$"):
            call(digest)


def _write_half_then_die(root: str, data: bytes) -> None:
    store = ContentStore(root)
    w = store.writer(expected_digest=sha(data), expected_size=len(data), resume_key=sha(data))
    w.write(data[: len(data) // 2])
    os.kill(os.getpid(), signal.SIGKILL)


def test_resume_after_a_killed_writer(tmp_path: Path) -> None:
    data = os.urandom(1 << 20)
    p = _fork.Process(target=_write_half_then_die, args=(str(tmp_path), data))
    p.start()
    p.join()
    p.close()
    assert blob_files(tmp_path) == [] and len(ingests(tmp_path)) == 1

    store = ContentStore(str(tmp_path))
    with store.writer(expected_digest=sha(data), expected_size=len(data), resume_key=sha(data)) as w:
        assert w.offset == len(data) // 2
        w.write(data[w.offset :])
        assert w.commit() == sha(data)
    assert store.read(sha(data)) == data
    assert ingests(tmp_path) == []


def test_a_wrong_partial_ingest_is_discarded(tmp_path: Path) -> None:
    data = b"the real blob content"
    store = ContentStore(str(tmp_path))
    with store.writer(resume_key=sha(data)) as w:
        w.write(b"garbage from a broken mirror")  # more than the blob: not a prefix of it
    with store.writer(expected_size=len(data), resume_key=sha(data)) as w:
        assert w.offset == 0  # longer than expected: dropped at once
        w.write(b"XXX")
    with store.writer(expected_digest=sha(data), resume_key=sha(data)) as w:
        assert w.offset == 3
        w.write(data[3:])
        with pytest.raises(DigestMismatchError):
            w.commit()
    with store.writer(expected_digest=sha(data), resume_key=sha(data)) as w:
        assert w.offset == 0
        w.write(data)
        w.commit()
    assert blob_files(tmp_path) == [sha(data)[7:]] and ingests(tmp_path) == []


def test_dropping_a_writer_without_resume_key_leaves_nothing(tmp_path: Path) -> None:
    store = ContentStore(str(tmp_path))
    with store.writer() as w:
        w.write(b"half")
    with pytest.raises(RuntimeError), store.writer() as w:
        w.write(b"half")
        raise RuntimeError("download failed")
    assert ingests(tmp_path) == [] and blob_files(tmp_path) == []


def test_a_full_disk_is_resource_exhausted_and_leaves_nothing(tmp_path: Path) -> None:
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "skiff-test", str(small)], check=True)
    try:
        store = ContentStore(str(small))
        data = os.urandom(2 << 20)
        with store.writer(expected_digest=sha(data), resume_key=sha(data)) as w:
            with pytest.raises(ResourceExhausted, match="no space left on device \\(ENOSPC\\)"):
                w.write(data)
            with pytest.raises(FailedPrecondition):
                w.commit()
        assert blob_files(small) == [] and ingests(small) == []  # its space freed
        with open(small / "filler", "wb") as f:
            with pytest.raises(OSError):
                f.write(os.urandom(2 << 20))
        with pytest.raises(ResourceExhausted, match="images.db: database or disk is full"):
            store.images()
    finally:
        subprocess.run(["umount", str(small)], check=True)


def _write_same_blob(root: str, data: bytes, go: object, out: str) -> None:
    store = ContentStore(root)
    go.wait()  # type: ignore[attr-defined]
    with store.writer(expected_digest=sha(data), expected_size=len(data), resume_key=sha(data)) as w:
        for i in range(w.offset, len(data), 1 << 16):
            w.write(data[i : i + (1 << 16)])
        Path(out).write_text(w.commit())


def test_two_processes_write_the_same_blob(tmp_path: Path) -> None:
    root = tmp_path / "store"
    data = os.urandom(8 << 20)
    ContentStore(str(root))
    go = _fork.Event()  # not a Barrier: its shared memory outlives the test
    procs = [
        _fork.Process(target=_write_same_blob, args=(str(root), data, go, str(tmp_path / f"out{i}")))
        for i in range(2)
    ]
    for p in procs:
        p.start()
    go.set()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
        p.close()
    assert [(tmp_path / f"out{i}").read_text() for i in range(2)] == [sha(data)] * 2
    assert blob_files(root) == [sha(data)[7:]] and ingests(root) == []
    assert hashlib.sha256((root / "blobs" / "sha256" / sha(data)[7:]).read_bytes()).hexdigest() == sha(data)[7:]


def test_a_busy_resume_key_writes_privately(tmp_path: Path) -> None:
    store = ContentStore(str(tmp_path))
    data = b"same blob"
    with store.writer(resume_key=sha(data)) as first, store.writer(resume_key=sha(data)) as second:
        first.write(b"same ")
        assert second.offset == 0
        second.write(data)
        assert second.commit() == sha(data)
        first.write(b"blob")
        assert first.commit() == sha(data)
    assert blob_files(tmp_path) == [sha(data)[7:]] and ingests(tmp_path) == []


# --- image records ----------------------------------------------------------------------

LAYER_A = b"layer a tar"
LAYER_B = b"layer b tar"


def make_image(store: ContentStore, layers: list[bytes], arch: str = "amd64") -> tuple[str, str]:
    """An OCI image in the store: (manifest digest, config digest)."""
    config = dumps({
        "architecture": arch, "os": "linux",
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [sha(b"diff " + layer) for layer in layers]},
    })
    manifest = dumps({
        "schemaVersion": 2,
        "mediaType": oi.MEDIA_TYPE_OCI_MANIFEST,
        "config": {"mediaType": oi.MEDIA_TYPE_OCI_CONFIG, "digest": store.put(config), "size": len(config)},
        "layers": [
            {"mediaType": oi.MEDIA_TYPE_OCI_LAYER_GZIP, "digest": store.put(layer), "size": len(layer)}
            for layer in layers
        ],
    })
    return store.put(manifest), sha(config)


def test_image_records_and_tags(tmp_path: Path) -> None:
    store = ContentStore(str(tmp_path))
    manifest, _ = make_image(store, [LAYER_A])
    before = time.time()
    record = store.put_image("docker.io/library/busybox:latest", manifest, oi.MEDIA_TYPE_OCI_MANIFEST)
    assert record.digest == manifest and record.media_type == oi.MEDIA_TYPE_OCI_MANIFEST
    assert before - 1 < record.created.timestamp() <= time.time()

    again = ContentStore(str(tmp_path))  # records live on disk, not in the object
    assert again.image("docker.io/library/busybox:latest") == record
    tagged = again.tag("docker.io/library/busybox:latest", "localhost/mine:1")
    assert tagged.digest == manifest
    assert [r.name for r in store.images()] == ["docker.io/library/busybox:latest", "localhost/mine:1"]

    assert store.remove_image("docker.io/library/busybox:latest") == record
    with pytest.raises(ImageNotFoundError, match="^image 'docker.io/library/busybox:latest' not found$"):
        store.image("docker.io/library/busybox:latest")
    with pytest.raises(NotFound):
        store.remove_image("docker.io/library/busybox:latest")
    with pytest.raises(NotFound):
        store.tag("nope", "other")
    assert [r.name for r in store.images()] == ["localhost/mine:1"]


def test_put_image_needs_the_manifest_blob(tmp_path: Path) -> None:
    store = ContentStore(str(tmp_path))
    with pytest.raises(BlobNotFoundError):
        store.put_image("x", sha(b"absent"), oi.MEDIA_TYPE_OCI_MANIFEST)
    with pytest.raises(InvalidArgument, match="is not a manifest or index"):
        store.put_image("x", store.put(b"{}"), oi.MEDIA_TYPE_OCI_LAYER)
    assert store.images() == []


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    ContentStore(str(tmp_path)).images()
    with sqlite3.connect(tmp_path / "images.db") as db:
        db.execute("PRAGMA user_version = 99")
    db.close()
    with pytest.raises(FailedPrecondition, match="schema version 99 is newer than this skiff's 1"):
        ContentStore(str(tmp_path)).images()


def test_removing_an_image_in_use_is_refused(tmp_path: Path) -> None:
    store = ContentStore(str(tmp_path))
    manifest, config = make_image(store, [LAYER_A])
    store.put_image("busybox", manifest, oi.MEDIA_TYPE_OCI_MANIFEST)
    with pytest.raises(ImageInUseError, match=f"image 'busybox' is in use \\({config}\\)"):
        store.remove_image("busybox", in_use={config})
    with pytest.raises(ImageInUseError):
        store.remove_image("busybox", in_use=lambda d: d == sha(LAYER_A))
    store.tag("busybox", "alias")
    store.remove_image("busybox", in_use={config})  # "alias" still names the image
    with pytest.raises(ImageInUseError):
        store.remove_image("alias", in_use={manifest})
    store.remove_image("alias", in_use=set())
    assert store.images() == []


# --- gc ----------------------------------------------------------------------------------


def test_gc_removes_only_unreferenced_blobs(tmp_path: Path) -> None:
    store = ContentStore(str(tmp_path))
    kept_manifest, kept_config = make_image(store, [LAYER_A, LAYER_B])
    gone_manifest, gone_config = make_image(store, [LAYER_A, b"only in the removed image"], arch="arm64")
    amd64, amd64_config = make_image(store, [b"index child layer"])
    index = dumps({
        "schemaVersion": 2,
        "mediaType": oi.MEDIA_TYPE_OCI_INDEX,
        "manifests": [
            {"mediaType": oi.MEDIA_TYPE_OCI_MANIFEST, "digest": amd64, "size": store.size(amd64),
             "platform": {"architecture": "amd64", "os": "linux"}},
            # another platform that was never pulled
            {"mediaType": oi.MEDIA_TYPE_OCI_MANIFEST, "digest": sha(b"arm64 manifest"), "size": 14,
             "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"}},
        ],
    })
    index_digest = store.put(index)
    orphan = store.put(b"a blob no image has")
    store.put_image("kept", kept_manifest, oi.MEDIA_TYPE_OCI_MANIFEST)
    store.put_image("gone", gone_manifest, oi.MEDIA_TYPE_OCI_MANIFEST)
    store.put_image("multi", index_digest, oi.MEDIA_TYPE_OCI_INDEX)

    assert store.gc() == [orphan]
    store.remove_image("gone")
    removed = store.gc()
    assert sorted(removed) == sorted([gone_manifest, gone_config, sha(b"only in the removed image")])
    expected = {kept_manifest, kept_config, sha(LAYER_A), sha(LAYER_B),
                index_digest, amd64, amd64_config, sha(b"index child layer")}
    assert set(store.blobs()) == expected
    refs = store.references()
    assert refs.blobs == expected
    assert refs.diff_ids == {sha(b"diff " + layer) for layer in (LAYER_A, LAYER_B, b"index child layer")}

    store.remove_image("kept")
    store.remove_image("multi")
    assert len(store.gc()) == len(expected)
    assert blob_files(tmp_path) == []


def test_gc_clears_abandoned_ingests(tmp_path: Path) -> None:
    store = ContentStore(str(tmp_path))
    with store.writer(resume_key="abandoned") as w:
        w.write(b"partial")
    assert len(ingests(tmp_path)) == 1
    assert store.gc() == []
    assert len(ingests(tmp_path)) == 1  # fresh: a pull may still come back for it
    store.gc(stale_ingest_seconds=0)
    assert ingests(tmp_path) == []


def test_gc_waits_for_holders(tmp_path: Path) -> None:
    store = ContentStore(str(tmp_path))
    # exec'd, not forked: a forked child would inherit our hold's lock and wait on itself
    gc = [sys.executable, "-c", f"from skiff.images.store import ContentStore; ContentStore({str(tmp_path)!r}).gc()"]
    with store.hold():
        digest = store.put(b"not yet referenced")
        child = subprocess.Popen(gc)
        try:
            with pytest.raises(subprocess.TimeoutExpired):
                child.wait(1)  # blocked on our hold
            assert store.has(digest)
            with pytest.raises(FailedPrecondition, match="held by a writer in this process"):
                store.gc()
        except BaseException:
            child.kill()
            child.wait()
            raise
    assert child.wait(30) == 0
    assert not store.has(digest)


def _pull_and_collect(root: str, role: int, go: object) -> None:
    store = ContentStore(root)
    go.wait()  # type: ignore[attr-defined]
    for i in range(15):
        if role == 2:
            store.gc()
            continue
        with store.hold():  # as a pull does: blobs, then the record that reaches them
            manifest, _ = make_image(store, [LAYER_A, f"layer {i % 3}".encode()])
            store.put_image(f"img{role}-{i}", manifest, oi.MEDIA_TYPE_OCI_MANIFEST)
        store.put(f"garbage {role} {i}".encode())


def test_pulls_and_gc_in_parallel_keep_the_store_whole(tmp_path: Path) -> None:
    go = _fork.Event()
    procs = [_fork.Process(target=_pull_and_collect, args=(str(tmp_path), role, go)) for role in range(3)]
    for p in procs:
        p.start()
    go.set()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
        p.close()
    store = ContentStore(str(tmp_path))
    assert len(store.images()) == 30
    for record in store.images():  # gc took nothing an image needs
        manifest = oi.parse_manifest(store.read(record.digest))
        assert all(store.has(d.digest) for d in (manifest.config, *manifest.layers))
    for digest in store.blobs():
        assert sha(store.read(digest)) == digest
    live = store.references().blobs
    store.gc()
    assert set(store.blobs()) == live and ingests(tmp_path) == []


# --- models ------------------------------------------------------------------------------

OCI_MANIFEST = {
    "schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {
        "mediaType": "application/vnd.oci.image.config.v1+json",
        "digest": "sha256:b7b2b51b1b1ac5b2f9be3a8a4a4c4bd7c1f8c4ac5fa8e31b3e43b44f8bb81a1c",
        "size": 1469,
    },
    "layers": [
        {
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": "sha256:c8f3a2e1ca4a6e2d21fd4c7b9d4fbd4ae3e2ab9d5c5e5b1f3e7e2a1a5c9d8e7f",
            "size": 2152262,
        },
        {
            "mediaType": "application/vnd.oci.image.layer.v1.tar+zstd",
            "digest": "sha256:0f3c2b1a9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a",
            "size": 512,
            "annotations": {"org.opencontainers.image.title": "extra"},
        },
    ],
    "annotations": {"org.opencontainers.image.created": "2024-01-02T03:04:05Z"},
}

OCI_INDEX = {
    "schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.index.v1+json",
    "manifests": [
        {
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": "sha256:" + "1" * 64,
            "size": 1013,
            "platform": {"architecture": "amd64", "os": "linux"},
        },
        {
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": "sha256:" + "2" * 64,
            "size": 1013,
            "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"},
        },
        {
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": "sha256:" + "3" * 64,
            "size": 840,
            "annotations": {
                "vnd.docker.reference.digest": "sha256:" + "1" * 64,
                "vnd.docker.reference.type": "attestation-manifest",
            },
            "platform": {"architecture": "unknown", "os": "unknown"},
        },
    ],
}

DOCKER_MANIFEST = {
    "schemaVersion": 2,
    "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
    "config": {
        "mediaType": "application/vnd.docker.container.image.v1+json",
        "size": 1457,
        "digest": "sha256:" + "4" * 64,
    },
    "layers": [
        {
            "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
            "size": 2220094,
            "digest": "sha256:" + "5" * 64,
        }
    ],
}

DOCKER_LIST = {
    "schemaVersion": 2,
    "mediaType": "application/vnd.docker.distribution.manifest.list.v2+json",
    "manifests": [
        {
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "size": 527,
            "digest": "sha256:" + "6" * 64,
            "platform": {"architecture": "arm", "os": "linux", "variant": "v7"},
        },
        {
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "size": 527,
            "digest": "sha256:" + "7" * 64,
            "platform": {"architecture": "amd64", "os": "windows", "os.version": "10.0.17763.1935",
                         "os.features": ["win32k"]},
        },
    ],
}

DOCKER_CONFIG = {
    "architecture": "amd64",
    "config": {
        "Hostname": "",
        "Domainname": "",
        "User": "",
        "AttachStdin": False,
        "Tty": False,
        "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
        "Cmd": ["sh"],
        "Image": "sha256:" + "8" * 64,
        "Volumes": None,
        "WorkingDir": "",
        "Entrypoint": None,
        "OnBuild": None,
        "Labels": None,
        "ExposedPorts": {"80/tcp": {}, "53/udp": {}},
        "StopSignal": "SIGQUIT",
    },
    "container": "4a6e2b0c2e0b",
    "container_config": {"Cmd": ["/bin/sh", "-c", "#(nop) ", "CMD [\"sh\"]"]},
    "created": "2023-07-18T23:19:33.655005962Z",
    "docker_version": "20.10.23",
    "history": [
        {"created": "2023-07-18T23:19:33.538571854Z",
         "created_by": "/bin/sh -c #(nop) ADD file:7e9002edaafd4e4579b65c8f0aaabde1aeb7fd3f8d95579f7e3b5cb5d5d2b8b3 in / "},
        {"created": "2023-07-18T23:19:33.655005962Z",
         "created_by": "/bin/sh -c #(nop)  CMD [\"sh\"]", "empty_layer": True},
    ],
    "os": "linux",
    "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "9" * 64]},
}


def test_parse_oci_manifest() -> None:
    m = oi.parse_manifest(dumps(OCI_MANIFEST))
    assert m.schema_version == 2 and m.media_type == oi.MEDIA_TYPE_OCI_MANIFEST
    assert m.config.media_type == oi.MEDIA_TYPE_OCI_CONFIG and m.config.size == 1469
    assert [layer.media_type for layer in m.layers] == [oi.MEDIA_TYPE_OCI_LAYER_GZIP, oi.MEDIA_TYPE_OCI_LAYER_ZSTD]
    assert m.layers[1].annotations == {"org.opencontainers.image.title": "extra"}
    assert m.annotations["org.opencontainers.image.created"] == "2024-01-02T03:04:05Z"
    assert oi.to_json(m) == OCI_MANIFEST
    assert oi.parse_manifest(oi.to_json(m)) == m


def test_parse_oci_index() -> None:
    ix = oi.parse_index(json.dumps(OCI_INDEX))
    assert [(d.platform.architecture, d.platform.variant) for d in ix.manifests if d.platform] == [
        ("amd64", None), ("arm64", "v8"), ("unknown", None)
    ]
    assert oi.to_json(ix) == OCI_INDEX


def test_parse_docker_schema2() -> None:
    m = oi.parse_manifest(dumps(DOCKER_MANIFEST))
    assert m.media_type == oi.MEDIA_TYPE_DOCKER_MANIFEST_V2
    assert m.config.media_type == oi.MEDIA_TYPE_DOCKER_CONFIG
    assert m.layers[0].media_type == oi.MEDIA_TYPE_DOCKER_LAYER_GZIP and m.layers[0].size == 2220094

    lst = oi.parse_index(dumps(DOCKER_LIST))
    assert lst.media_type == oi.MEDIA_TYPE_DOCKER_MANIFEST_LIST
    windows = lst.manifests[1].platform
    assert windows is not None
    assert (windows.os, windows.os_version, windows.os_features) == ("windows", "10.0.17763.1935", ("win32k",))

    image = oi.parse_image(dumps(DOCKER_CONFIG))
    assert (image.architecture, image.os, image.created) == ("amd64", "linux", "2023-07-18T23:19:33.655005962Z")
    assert image.config == oi.ImageConfig(
        user="",
        env=("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",),
        cmd=("sh",),
        working_dir="",
        exposed_ports={"80/tcp": oi.EmptyObject(), "53/udp": oi.EmptyObject()},
        stop_signal="SIGQUIT",
    )
    assert image.config.entrypoint is None and image.config.volumes == {} and image.config.labels == {}
    assert image.rootfs == oi.RootFS(type="layers", diff_ids=("sha256:" + "9" * 64,))
    assert image.history[1].empty_layer is True and image.history[0].created_by is not None


def test_image_config_round_trip() -> None:
    image = oi.Image(
        architecture="amd64",
        os="linux",
        config=oi.ImageConfig(entrypoint=(), cmd=("/bin/true",), env=("A=1",), working_dir="/w",
                              exposed_ports={"8080/tcp": oi.EmptyObject()}),
        rootfs=oi.RootFS(type="layers", diff_ids=()),
    )
    data = oi.to_json(image)
    assert data == {
        "architecture": "amd64",
        "os": "linux",
        "config": {"ExposedPorts": {"8080/tcp": {}}, "Env": ["A=1"], "Entrypoint": [],
                   "Cmd": ["/bin/true"], "WorkingDir": "/w"},
        "rootfs": {"type": "layers", "diff_ids": []},
    }
    assert oi.parse_image(dumps(data)) == image  # an empty Entrypoint stays empty, not unset


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m.pop("config"), "src: config: required"),
        (lambda m: m.update(schemaVersion=1), "src: schemaVersion: expected 2, got 1"),
        (lambda m: m.update(mediaType=oi.MEDIA_TYPE_OCI_INDEX), "src: mediaType: expected "),
        (lambda m: m["layers"][1].update(digest="sha256:1234"),
         'src: layers[1].digest: invalid digest "sha256:1234": malformed sha256 hex'),
        (lambda m: m["layers"][0].update(size="12"), 'src: layers[0].size: expected an integer, got "12"'),
        (lambda m: m["layers"][0].update(size=-1), "src: layers[0].size: must not be negative, got -1"),
        (lambda m: m["config"].pop("mediaType"), "src: config.mediaType: required"),
    ],
)
def test_manifest_errors_name_the_field(change: object, message: str) -> None:
    data = json.loads(json.dumps(OCI_MANIFEST))
    change(data)  # type: ignore[operator]
    with pytest.raises(SpecError) as e:
        oi.parse_manifest(dumps(data), source="src")
    assert str(e.value).startswith(message)
    assert isinstance(e.value, InvalidArgument)


def test_model_parse_errors() -> None:
    with pytest.raises(SpecError, match="^m: invalid json at line 1 column 2"):
        oi.parse_manifest(b"{nope", source="m")
    with pytest.raises(SpecError, match=r"^manifests\[0\].platform.os: required$"):
        oi.parse_index({"schemaVersion": 2, "manifests": [
            {"mediaType": "x", "digest": "sha256:" + "1" * 64, "size": 1, "platform": {"architecture": "amd64"}}]})
    with pytest.raises(SpecError, match=r"^rootfs.diff_ids\[0\]: invalid digest"):
        oi.parse_image({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": ["x"]}})
    with pytest.raises(SpecError, match=r"^config.ExposedPorts\[\"80/tcp\"\]: expected an object"):
        oi.parse_image({"architecture": "a", "os": "linux", "config": {"ExposedPorts": {"80/tcp": 1}},
                        "rootfs": {"type": "layers", "diff_ids": []}})
    assert oi.parse_image_layout(b'{"imageLayoutVersion": "1.0.0"}').image_layout_version == "1.0.0"
