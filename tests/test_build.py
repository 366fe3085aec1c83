"""images/build.py (OCI layouts from directories and tarballs) and images/runtime_config.py
(an image config to a runtime spec)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import struct
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest

from skiff.images import build as image_build
from skiff.images.build import (
    REF_NAME,
    BuildError,
    build,
    build_busybox_layout,
    build_index,
    host_platform,
)
from skiff.images.runtime_config import (
    ExecUser,
    RuntimeConfigError,
    merge_args,
    merge_env,
    resolve_user,
    runtime_spec,
)
from skiff.oci import image as oci
from support import skopeo

MTIME = 1_700_000_000
needs_skopeo = pytest.mark.requires("skopeo")
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _json(path: Path) -> Any:
    return json.loads(path.read_bytes())


def _blob(layout: Path, digest: str) -> bytes:
    algorithm, _, hexdigest = digest.partition(":")
    data = (layout / "blobs" / algorithm / hexdigest).read_bytes()
    assert f"sha256:{hashlib.sha256(data).hexdigest()}" == digest
    return data


def _manifest(layout: Path, tag: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(index.json's descriptor for `tag`, the manifest), digests and sizes checked."""
    index = _json(layout / "index.json")
    [desc] = [d for d in index["manifests"] if d["annotations"][REF_NAME] == tag]
    data = _blob(layout, desc["digest"])
    assert desc["size"] == len(data)
    assert desc["mediaType"] == oci.MEDIA_TYPE_OCI_MANIFEST
    return desc, json.loads(data)


def _layer_tar(layout: Path, desc: dict[str, Any]) -> bytes:
    data = _blob(layout, desc["digest"])
    assert desc["size"] == len(data)
    assert data[4:8] == b"\0\0\0\0", "gzip header mtime must be 0"
    return gzip.decompress(data)


# --- build -----------------------------------------------------------------------------


@pytest.mark.requires("busybox")
def test_busybox_two_layers(tmp_path: Path) -> None:
    extra = tmp_path / "extra"
    (extra / "etc").mkdir(parents=True)
    (extra / "etc/motd").write_text("hello\n")
    os.chown(extra / "etc/motd", 1234, 4321)
    (extra / "bin").mkdir()
    (extra / "bin/.wh.vi").touch()  # deletes busybox's vi in the layer below
    (extra / "etc/motd-link").hardlink_to(extra / "etc/motd")
    config = oci.ImageConfig(
        entrypoint=("/bin/sh", "-c"),
        cmd=("echo hi",),
        env=("PATH=/bin", "GREETING=hello"),
        working_dir="/tmp",
        user="nobody",
        exposed_ports={"8080/tcp": oci.EmptyObject()},
        labels={"org.example": "yes"},
    )
    layout = tmp_path / "layout"
    built = build_busybox_layout(str(layout), "v1", config, extra_layers=[str(extra)], mtime=MTIME)

    assert _json(layout / "oci-layout") == {"imageLayoutVersion": "1.0.0"}
    index = _json(layout / "index.json")
    assert index["schemaVersion"] == 2 and index["mediaType"] == oci.MEDIA_TYPE_OCI_INDEX
    desc, manifest = _manifest(layout, "v1")
    assert desc["digest"] == built.manifest.digest
    assert manifest["schemaVersion"] == 2 and manifest["mediaType"] == oci.MEDIA_TYPE_OCI_MANIFEST
    assert [d["mediaType"] for d in manifest["layers"]] == [oci.MEDIA_TYPE_OCI_LAYER_GZIP] * 2
    assert [d["digest"] for d in manifest["layers"]] == [d.digest for d in built.layers]

    config_data = _blob(layout, manifest["config"]["digest"])
    assert manifest["config"]["size"] == len(config_data)
    assert manifest["config"]["mediaType"] == oci.MEDIA_TYPE_OCI_CONFIG
    image = json.loads(config_data)
    assert image["architecture"] == host_platform().architecture and image["os"] == "linux"
    assert image["created"] == "2023-11-14T22:13:20Z"  # from mtime
    assert image["config"] == {
        "User": "nobody",
        "ExposedPorts": {"8080/tcp": {}},
        "Env": ["PATH=/bin", "GREETING=hello"],
        "Entrypoint": ["/bin/sh", "-c"],
        "Cmd": ["echo hi"],
        "WorkingDir": "/tmp",
        "Labels": {"org.example": "yes"},
    }
    assert oci.parse_image(config_data).config == config
    assert len(image["history"]) == 2

    tars = [_layer_tar(layout, d) for d in manifest["layers"]]
    assert image["rootfs"] == {
        "type": "layers",
        "diff_ids": [f"sha256:{hashlib.sha256(t).hexdigest()}" for t in tars],
    }
    with tarfile.open(fileobj=io.BytesIO(tars[0])) as tar:
        busybox = tar.getmember("bin/busybox")
        assert busybox.isreg() and busybox.mode & 0o111 and busybox.size == os.path.getsize("/bin/busybox")
        assert tar.getmember("bin/sh").issym() and tar.getmember("bin/sh").linkname == "busybox"
        assert tar.getmember("etc/passwd").isreg()
        names = tar.getnames()
        assert names == sorted(names, key=lambda n: n.split("/")), "entries in sorted order, parents first"
    with tarfile.open(fileobj=io.BytesIO(tars[1])) as tar:
        assert tar.getnames() == ["bin", "bin/.wh.vi", "etc", "etc/motd", "etc/motd-link"]
        motd = tar.getmember("etc/motd")
        assert (motd.uid, motd.gid, motd.uname, motd.gname, motd.mtime) == (1234, 4321, "", "", MTIME)
        link = tar.getmember("etc/motd-link")
        assert link.islnk() and link.linkname == "etc/motd"
        assert tar.getmember("bin").isdir()


def test_xattrs(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "ping").touch()
    caps = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)  # cap_net_raw, effective
    try:
        os.setxattr(tree / "ping", "user.skiff", b"\xff\x00binary")
        os.setxattr(tree / "ping", "security.capability", caps)
    except OSError as e:
        pytest.skip(f"test requires xattrs on {tmp_path}: {os.strerror(e.errno or 0)}")
    layout = tmp_path / "layout"
    built = build(str(layout), [str(tree)])
    layer = {"digest": built.layers[0].digest, "size": built.layers[0].size}
    with tarfile.open(fileobj=io.BytesIO(_layer_tar(layout, layer))) as tar:
        headers = tar.getmember("ping").pax_headers
    # tarfile gives non-UTF-8 values back as surrogate-escaped text
    assert headers["SCHILY.xattr.user.skiff"].encode("utf-8", "surrogateescape") == b"\xff\x00binary"
    assert headers["SCHILY.xattr.security.capability"].encode("utf-8", "surrogateescape") == caps


@pytest.mark.requires("busybox")
def test_same_tree_same_digests(tmp_path: Path) -> None:
    a = build_busybox_layout(str(tmp_path / "a"), mtime=MTIME)
    b = build_busybox_layout(str(tmp_path / "b"), mtime=MTIME)
    assert a.manifest.digest == b.manifest.digest
    assert a.layers == b.layers


def test_tarball_layers(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "data").mkdir(parents=True)
    (tree / "data/file").write_text("content\n")
    plain = tmp_path / "layer.tar"
    with tarfile.open(plain, "w") as tar:
        tar.add(tree / "data", arcname="data")
    compressed = tmp_path / "layer.tar.gz"
    compressed.write_bytes(gzip.compress(plain.read_bytes()))
    layout = tmp_path / "layout"

    built = build(str(layout), [str(plain), str(compressed), str(tree)], tag="multi", mtime=MTIME)

    diff_id = f"sha256:{hashlib.sha256(plain.read_bytes()).hexdigest()}"
    assert built.image.rootfs.diff_ids[:2] == (diff_id, diff_id)
    assert built.layers[0] == built.layers[1]  # the same tar, the same gzip blob
    _, manifest = _manifest(layout, "multi")
    assert len(manifest["layers"]) == 3
    for desc, expected in zip(manifest["layers"], built.image.rootfs.diff_ids, strict=True):
        assert f"sha256:{hashlib.sha256(_layer_tar(layout, desc)).hexdigest()}" == expected


def test_not_a_tarball(tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar"
    junk.write_text("not a tar archive, not at all\n" * 40)
    layout = tmp_path / "layout"
    with pytest.raises(BuildError, match=f"layer source {junk}: not a tar archive"):
        build(str(layout), [str(junk)])
    assert not (layout / "index.json").exists()
    assert os.listdir(layout / "blobs/sha256") == [], "no partial blob is left"
    with pytest.raises(BuildError, match=f"layer source {tmp_path}/missing: no such file"):
        build(str(layout), [str(tmp_path / "missing")])


def test_tags_share_a_layout(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "a").write_text("a")
    layout = str(tmp_path / "layout")
    first = build(layout, [str(tree)], tag="one", config=oci.ImageConfig(cmd=("a",)), mtime=MTIME)
    build(layout, [str(tree)], tag="two", config=oci.ImageConfig(cmd=("b",)), mtime=MTIME)
    third = build(layout, [str(tree)], tag="one", config=oci.ImageConfig(cmd=("c",)), mtime=MTIME)
    assert first.manifest.digest != third.manifest.digest
    index = oci.parse_index((tmp_path / "layout/index.json").read_bytes())
    tags = {d.annotations[REF_NAME]: d.digest for d in index.manifests}
    assert tags["one"] == third.manifest.digest and set(tags) == {"one", "two"}
    with pytest.raises(BuildError, match="tag ''"):
        build(layout, [str(tree)], tag="")


def test_foreign_platform(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    target = oci.Platform(architecture="arm", os="linux", variant="v7")
    built = build(str(tmp_path / "layout"), [str(tree)], target=target)
    assert (built.image.architecture, built.image.variant) == ("arm", "v7")


@needs_skopeo
@pytest.mark.requires("busybox")
def test_skopeo_reads_the_layout(tmp_path: Path) -> None:
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "hello").write_text("hi\n")
    layout = tmp_path / "layout"
    built = build_busybox_layout(str(layout), "v1", extra_layers=[str(extra)])
    out = skopeo("inspect", f"oci:{layout}:v1").stdout
    inspected = json.loads(out)
    assert inspected["Digest"] == built.manifest.digest
    assert inspected["Layers"] == [d.digest for d in built.layers]
    assert inspected["Architecture"] == host_platform().architecture
    # a copy verifies every blob against its digest
    skopeo("copy", "--quiet", f"oci:{layout}:v1", f"dir:{tmp_path / 'copy'}")


@needs_skopeo
def test_multi_platform_index(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "file").write_text("x")
    layout = str(tmp_path / "layout")
    arm = oci.Platform(architecture="arm64", os="linux", variant="v8")
    platforms = (host_platform(), arm)
    images = [build(layout, [str(tree)], tag=f"multi-{p.architecture}", target=p) for p in platforms]
    desc = build_index(layout, "multi", images)
    assert desc.media_type == oci.MEDIA_TYPE_OCI_INDEX
    index = oci.parse_index(_blob(tmp_path / "layout", desc.digest))
    assert [d.digest for d in index.manifests] == [i.manifest.digest for i in images]
    assert index.manifests[1].platform == arm
    raw = skopeo("inspect", "--raw", f"oci:{layout}:multi").stdout.encode()
    assert f"sha256:{hashlib.sha256(raw).hexdigest()}" == desc.digest
    skopeo("copy", "--quiet", "--all", f"oci:{layout}:multi", f"oci:{tmp_path / 'copy'}:multi")


# --- runtime config --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entrypoint", "cmd", "args", "override", "expected"),
    [
        (("/bin/sh", "-c"), ("echo hi",), (), None, ("/bin/sh", "-c", "echo hi")),
        (("/bin/sh", "-c"), ("echo hi",), ("echo bye",), None, ("/bin/sh", "-c", "echo bye")),
        (None, ("sh",), (), None, ("sh",)),
        (None, ("sh",), ("ls", "-l"), None, ("ls", "-l")),
        (("/entry",), None, (), None, ("/entry",)),
        # a given entrypoint drops the image's Cmd
        (("/entry",), ("cmd",), (), ("/other",), ("/other",)),
        (("/entry",), ("cmd",), ("x",), ("/other",), ("/other", "x")),
        # an empty one clears the Entrypoint and keeps the Cmd
        (("/entry",), ("cmd",), (), (), ("cmd",)),
        # moby's cleared Entrypoint
        (("",), ("cmd",), (), None, ("cmd",)),
    ],
)
def test_merge_args(
    entrypoint: tuple[str, ...] | None,
    cmd: tuple[str, ...] | None,
    args: tuple[str, ...],
    override: tuple[str, ...] | None,
    expected: tuple[str, ...],
) -> None:
    config = oci.ImageConfig(entrypoint=entrypoint, cmd=cmd)
    assert merge_args(config, args=args, entrypoint=override) == expected


def test_no_command() -> None:
    with pytest.raises(RuntimeConfigError, match="no command specified"):
        merge_args(oci.ImageConfig())


@pytest.mark.parametrize(
    ("image_env", "env", "expected"),
    [
        ((), (), (DEFAULT_PATH, "HOME=/h")),
        (("PATH=/bin", "A=1", "B=2"), ("A=3", "C=4"), ("PATH=/bin", "A=3", "B=2", "C=4", "HOME=/h")),
        (("HOME=/x",), ("PATH=/p", "EMPTY="), ("HOME=/x", "PATH=/p", "EMPTY=")),
        (("A=x=y",), (), ("A=x=y", DEFAULT_PATH, "HOME=/h")),
    ],
)
def test_merge_env(image_env: tuple[str, ...], env: tuple[str, ...], expected: tuple[str, ...]) -> None:
    assert merge_env(image_env, env, home="/h") == expected


def test_env_entry_without_value() -> None:
    with pytest.raises(RuntimeConfigError, match="env entry 'FOO': must be KEY=VALUE"):
        merge_env((), ("FOO",))


PASSWD = """root:x:0:0:root:/root:/bin/sh
# a comment
alice:x:1000:1000:Alice:/home/alice:/bin/sh
bob:x:1001:1001::/home/bob:/bin/sh

broken:x:notanumber:1::/:/bin/sh
"""
GROUP = """root:x:0:root
alice:x:1000:
bob:x:1001:
wheel:x:10:alice,bob
audio:x:29:alice
staff:x:50:bob,alice
again:x:10:alice
"""


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc/passwd").write_text(PASSWD)
    (root / "etc/group").write_text(GROUP)
    return root


@pytest.mark.parametrize(
    ("user", "expected"),
    [
        ("", ExecUser(uid=0, gid=0, home="/root")),
        ("root", ExecUser(uid=0, gid=0, home="/root")),
        ("alice", ExecUser(uid=1000, gid=1000, additional_gids=(10, 29, 50), home="/home/alice")),
        ("1000", ExecUser(uid=1000, gid=1000, additional_gids=(10, 29, 50), home="/home/alice")),
        ("bob", ExecUser(uid=1001, gid=1001, additional_gids=(10, 50), home="/home/bob")),
        # an explicit group is the whole group set
        ("1000:29", ExecUser(uid=1000, gid=29, home="/home/alice")),
        ("alice:wheel", ExecUser(uid=1000, gid=10, home="/home/alice")),
        ("bob:audio", ExecUser(uid=1001, gid=29, home="/home/bob")),
        ("alice:5555", ExecUser(uid=1000, gid=5555, home="/home/alice")),
        # numeric ids need no entry
        ("4242", ExecUser(uid=4242, gid=0)),
        ("4242:4343", ExecUser(uid=4242, gid=4343)),
        ("4242:staff", ExecUser(uid=4242, gid=50)),
        (":wheel", ExecUser(uid=0, gid=10, home="/root")),
    ],
)
def test_resolve_user(rootfs: Path, user: str, expected: ExecUser) -> None:
    assert resolve_user(str(rootfs), user) == expected


@pytest.mark.parametrize(
    ("user", "message"),
    [
        ("mallory", "user 'mallory': no such user in the image's /etc/passwd"),
        ("alice:nogroup", "group 'nogroup': no such group in the image's /etc/group"),
        ("broken", "user 'broken': invalid ids in the image's /etc/passwd"),
        ("99999999999", "user '99999999999': user id 99999999999 out of range"),
    ],
)
def test_resolve_user_errors(rootfs: Path, user: str, message: str) -> None:
    with pytest.raises(RuntimeConfigError) as caught:
        resolve_user(str(rootfs), user)
    assert str(caught.value).startswith(message)


def test_no_passwd_file(tmp_path: Path) -> None:
    assert resolve_user(str(tmp_path), "123:456") == ExecUser(uid=123, gid=456)
    with pytest.raises(RuntimeConfigError, match="user 'alice': no such user in the image's /etc/passwd"):
        resolve_user(str(tmp_path), "alice")


@pytest.mark.parametrize("kind", ["absolute", "relative", "etc-dir"])
def test_passwd_symlink_stays_in_the_rootfs(rootfs: Path, tmp_path: Path, kind: str) -> None:
    """A symlink in the image pointing at a host file is read as the image's path."""
    host = tmp_path / "host"
    host.mkdir()
    (host / "passwd").write_text("evil:x:7:7::/:/bin/sh\n")
    (rootfs / "etc/passwd").unlink()
    if kind == "absolute":
        (rootfs / "etc/passwd").symlink_to(host / "passwd")
    elif kind == "relative":
        (rootfs / "etc/passwd").symlink_to("../../../../../../host/passwd")
    else:
        shutil.rmtree(rootfs / "etc")
        (rootfs / "etc").symlink_to(host)
    with pytest.raises(RuntimeConfigError, match="user 'evil': no such user"):
        resolve_user(str(rootfs), "evil")


def test_passwd_symlink_inside_the_rootfs(rootfs: Path) -> None:
    (rootfs / "real-etc").mkdir()
    (rootfs / "etc/passwd").rename(rootfs / "real-etc/passwd")
    (rootfs / "etc/passwd").symlink_to("/real-etc/../real-etc/passwd")
    assert resolve_user(str(rootfs), "bob").uid == 1001


def test_passwd_not_a_file(rootfs: Path) -> None:
    (rootfs / "etc/passwd").unlink()
    os.mkfifo(rootfs / "etc/passwd")  # must not block on open
    with pytest.raises(RuntimeConfigError, match="image /etc/passwd: not a regular file"):
        resolve_user(str(rootfs), "alice")


def test_runtime_spec(rootfs: Path) -> None:
    config = oci.ImageConfig(
        entrypoint=("/bin/sh", "-c"), cmd=("echo hi",), env=("A=1",), working_dir="/srv", user="alice"
    )
    spec = runtime_spec(config, str(rootfs), args=("id",), env=("B=2",), hostname="box")
    assert spec.process is not None and spec.root is not None
    assert spec.process.args == ("/bin/sh", "-c", "id")
    assert spec.process.env == (
        "A=1", "B=2", DEFAULT_PATH, "HOME=/home/alice"
    )
    assert spec.process.cwd == "/srv"
    assert spec.process.terminal is False
    user = spec.process.user
    assert (user.uid, user.gid, user.additional_gids) == (1000, 1000, (10, 29, 50))
    assert (spec.root.path, spec.root.readonly, spec.hostname) == (str(rootfs), False, "box")
    assert spec.linux is not None and spec.linux.namespaces, "the rest is default_spec's"

    spec = runtime_spec(config, str(rootfs), user="bob:wheel", working_dir="/", readonly=True)
    assert spec.process is not None and spec.root is not None
    assert (spec.process.user.uid, spec.process.user.gid, spec.process.cwd) == (1001, 10, "/")
    assert spec.root.readonly


def test_runtime_spec_defaults(rootfs: Path) -> None:
    spec = runtime_spec(None, str(rootfs), args=("sh",))
    assert spec.process is not None
    assert (spec.process.user.uid, spec.process.user.gid, spec.process.cwd) == (0, 0, "/")
    with pytest.raises(RuntimeConfigError, match="image config WorkingDir 'srv': must be an absolute path"):
        runtime_spec(oci.ImageConfig(cmd=("sh",), working_dir="srv"), str(rootfs))
    with pytest.raises(RuntimeConfigError, match="no command specified"):
        runtime_spec(oci.ImageConfig(), str(rootfs))


@pytest.mark.requires("busybox")
def test_busybox_rootfs_users(tmp_path: Path) -> None:
    rootfs = image_build.busybox_rootfs(str(tmp_path / "rootfs"))
    assert resolve_user(rootfs, "nobody") == ExecUser(uid=65534, gid=65534, home="/")
