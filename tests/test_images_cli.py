"""`skiff` with images end to end: build, list, inspect, tag, export/import, run, rmi."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from skiff.demo import make_rootfs
from skiff.errors import FailedPrecondition
from registry_fixture import registry  # noqa: F401  (fixture)
from support import skopeo

pytestmark = pytest.mark.requires("busybox")

SKIFF = os.path.join(os.path.dirname(sys.executable), "skiff")


class Skiff:
    def __init__(self, tmp: Path) -> None:
        self.env = dict(os.environ, SKIFF_ROOT=str(tmp / "images"), SKIFF_STATE=str(tmp / "state"))
        self.root = tmp / "images"

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([SKIFF, *args], env=self.env, capture_output=True, text=True, timeout=120)
        if check and done.returncode != 0:
            raise AssertionError(f"skiff {' '.join(args)}: exit {done.returncode}: {done.stderr}")
        return done


@pytest.fixture
def skiff(tmp_path: Path) -> Skiff:
    s = Skiff(tmp_path)
    src = tmp_path / "src"
    make_rootfs(str(src))
    s("build", str(src), "-t", "localhost/box:1", "--cmd", '["sh", "-c", "echo hi from $(hostname); exit 3"]',
      "--env", "PATH=/bin", "--env", "GREETING=hello")
    return s


def test_build_list_inspect_tag(skiff: Skiff) -> None:
    assert skiff("images").stdout.splitlines()[1].split()[0] == "localhost/box:1"
    inspected = json.loads(skiff("inspect", "localhost/box:1").stdout)
    assert inspected["config"]["config"]["Env"] == ["PATH=/bin", "GREETING=hello"]
    assert len(inspected["manifest"]["layers"]) == 1
    skiff("tag", "localhost/box:1", "localhost/box:2")
    names = [line.split()[0] for line in skiff("images").stdout.splitlines()[1:]]
    assert names == ["localhost/box:1", "localhost/box:2"]
    missing = skiff("inspect", "localhost/nothing", check=False)
    assert missing.returncode == 1 and "image 'localhost/nothing:latest' not found" in missing.stderr


def test_build_without_env_sets_the_default_path(skiff: Skiff, tmp_path: Path) -> None:
    skiff("build", str(tmp_path / "src"), "-t", "localhost/plain:1")
    inspected = json.loads(skiff("inspect", "localhost/plain:1").stdout)
    assert inspected["config"]["config"]["Env"] == ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]


def test_run_gives_the_containers_output_and_exit_code(skiff: Skiff) -> None:
    done = skiff("run", "localhost/box:1", check=False)
    assert (done.returncode, done.stdout) == (3, "hi from runc\n")
    done = skiff("run", "-e", "GREETING=bye", "--memory", "64m", "localhost/box:1", "sh", "-c",
                 "echo $GREETING; touch /new && echo writable")
    assert done.stdout == "bye\nwritable\n"
    assert os.listdir(skiff.root / "snapshots") == []  # the container's snapshot went with it


def test_export_rmi_import_run(skiff: Skiff, tmp_path: Path) -> None:
    archive = tmp_path / "box.tar"
    skiff("run", "localhost/box:1", check=False)  # unpacks its layer
    assert len(_layers(skiff)) == 1
    skiff("export", "localhost/box:1", str(archive))
    skiff("rmi", "localhost/box:1")
    assert skiff("images").stdout.splitlines()[1:] == []
    assert _layers(skiff) == []  # gc took the unpacked layer too
    skiff("import", str(archive), "localhost/again:1")
    assert skiff("run", "localhost/again:1", check=False).returncode == 3
    docker = tmp_path / "box.docker.tar"
    skiff("export", "--format", "docker-archive", "localhost/again:1", str(docker))
    skiff("rmi", "localhost/again:1")
    assert skiff("import", str(docker)).stdout.startswith("localhost/again:1 sha256:")
    assert skiff("run", "localhost/again:1", check=False).returncode == 3


def _layers(skiff: Skiff) -> list[str]:
    return [n for n in os.listdir(skiff.root / "layers" / "sha256") if not n.startswith(".")]


@pytest.mark.requires("skopeo")
def test_skopeo_reads_what_skiff_exports(skiff: Skiff, tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    skiff("export", "--format", "oci", "localhost/box:1", str(layout))
    done = skopeo("inspect", f"oci:{layout}:1")
    assert json.loads(done.stdout)["Env"] == ["PATH=/bin", "GREETING=hello"]


def test_an_image_in_use_cannot_be_removed(skiff: Skiff) -> None:
    from skiff.images.service import Images

    images = Images(str(skiff.root))
    rootfs, _ = images.prepare("localhost/box:1", "user")
    try:
        assert os.path.exists(os.path.join(rootfs, "bin", "busybox"))
        with pytest.raises(FailedPrecondition, match="in use by a container"):
            images.remove("localhost/box:1")
    finally:
        images.release("user")
    images.remove("localhost/box:1")


def test_whiteouts_as_the_running_container_sees_them(skiff: Skiff, tmp_path: Path) -> None:
    """A file deleted and a directory made opaque by an upper layer, through the kernel's
    overlayfs in a running container."""
    lower = tmp_path / "lower"
    make_rootfs(str(lower))
    (lower / "etc" / "motd").write_text("old\n")
    (lower / "data").mkdir()
    (lower / "data" / "a").write_text("a")
    upper = tmp_path / "upper"
    (upper / "etc").mkdir(parents=True)
    (upper / "etc" / ".wh.motd").write_text("")
    (upper / "data").mkdir()
    (upper / "data" / ".wh..wh..opq").write_text("")
    (upper / "data" / "c").write_text("c")
    skiff("build", str(lower), str(upper), "-t", "localhost/layers:1")
    done = skiff("run", "localhost/layers:1", "sh", "-c", "ls /etc/motd; ls /data", check=False)
    assert done.stdout == "c\n"
    assert "/etc/motd: No such file or directory" in done.stderr


@pytest.mark.requires("registry", "skopeo")
def test_pull_from_a_registry_then_run(skiff: Skiff, tmp_path: Path, registry: Any) -> None:
    from registry_fixture import skopeo_copy

    from skiff.images.build import build_busybox_layout
    from skiff.oci import image as oci

    layout = tmp_path / "layout"
    build_busybox_layout(str(layout), "v1", oci.ImageConfig(env=("PATH=/bin",), cmd=("echo", "pulled")))
    skopeo_copy(layout, "v1", registry, "demo/busybox:v1", tmp=tmp_path)
    config = tmp_path / "registries.toml"
    config.write_text(f'[registries."{registry.host}"]\ninsecure = true\n')
    skiff.env["SKIFF_REGISTRIES"] = str(config)
    pulled = skiff("pull", f"{registry.host}/demo/busybox:v1")
    assert pulled.stdout.startswith(f"{registry.host}/demo/busybox:v1 sha256:")
    assert skiff("run", f"{registry.host}/demo/busybox:v1").stdout == "pulled\n"


def test_a_repeated_layer_and_a_shared_base(skiff: Skiff, tmp_path: Path) -> None:
    """An image whose layers repeat (one diff_id twice) still runs (overlayfs refuses a lower
    dir named twice), and an image sharing its base with a running one can be removed."""
    empty = tmp_path / "empty"
    empty.mkdir()
    skiff("build", str(tmp_path / "src"), str(empty), str(empty), "-t", "localhost/repeat:1", "--cmd", '["true"]')
    assert skiff("run", "localhost/repeat:1").returncode == 0
    from skiff.images.service import Images

    images = Images(str(skiff.root))
    images.prepare("localhost/box:1", "holder")
    try:
        images.remove("localhost/repeat:1")  # shares the busybox layer with box:1, which is in use
    finally:
        images.release("holder")


def test_run_reports_its_own_failures_as_125(skiff: Skiff) -> None:
    done = skiff("run", "localhost/absent:1", check=False)
    assert done.returncode == 125 and "image 'localhost/absent:1' not found" in done.stderr
    done = skiff("run", "--entrypoint", "not json", "localhost/box:1", check=False)
    assert done.returncode == 125 and "--entrypoint 'not json': not JSON" in done.stderr
