"""The CRI service over its real unix socket, with the generated stubs kubelet's protocol
uses: Version, Status, and the ImageService on images skiff built."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cri_api.v1 import api_pb2 as pb
from cri_api.v1 import api_pb2_grpc

from cri_fixture import in_process, service_config
from registry_fixture import Registry, secure_registry, single_image_layout, skopeo_copy  # noqa: F401
from skiff.demo import make_rootfs
from skiff.images.service import Images

pytestmark = pytest.mark.requires("busybox")


@pytest.fixture
def cri(tmp_path: Path) -> Iterator[tuple[api_pb2_grpc.RuntimeServiceStub, api_pb2_grpc.ImageServiceStub, Images]]:
    config = service_config(tmp_path, str(tmp_path / "images"), mode="none")
    with in_process(config) as service:
        assert stat.S_IMODE(os.stat(config.socket).st_mode) == 0o660
        yield service.runtime, service.images, Images(config.images_root)


def _build(images: Images, tmp_path: Path, name: str) -> None:
    from skiff.images import build, layout

    src = tmp_path / "src"
    if not src.exists():
        make_rootfs(str(src))
    build.build(str(tmp_path / "layout"), [str(src)], tag="t")
    layout.import_layout(images.store, str(tmp_path / "layout"), name=name)


def test_version_and_status(cri: tuple[object, object, Images]) -> None:
    runtime = cri[0]
    version = runtime.Version(pb.VersionRequest())  # type: ignore[attr-defined]
    assert (version.version, version.runtime_name, version.runtime_api_version) == ("0.1.0", "skiff", "v1")
    conditions = {c.type: c.status for c in runtime.Status(pb.StatusRequest()).status.conditions}  # type: ignore[attr-defined]
    assert conditions["RuntimeReady"] is True


def test_image_service(cri: tuple[object, object, Images], tmp_path: Path) -> None:
    _, image, images = cri
    _build(images, tmp_path, "docker.io/library/box:1")
    listed = image.ListImages(pb.ListImagesRequest()).images  # type: ignore[attr-defined]
    assert len(listed) == 1 and listed[0].repo_tags == ["docker.io/library/box:1"]
    assert listed[0].id.startswith("sha256:") and listed[0].size > 1_000_000
    status = image.ImageStatus(pb.ImageStatusRequest(image=pb.ImageSpec(image="box:1")))  # type: ignore[attr-defined]
    assert status.image.id == listed[0].id
    by_id = image.ImageStatus(pb.ImageStatusRequest(image=pb.ImageSpec(image=listed[0].id)))  # type: ignore[attr-defined]
    assert by_id.image.repo_tags == ["docker.io/library/box:1"]
    missing = image.ImageStatus(pb.ImageStatusRequest(image=pb.ImageSpec(image="nothing:here")))  # type: ignore[attr-defined]
    assert not missing.HasField("image")  # empty, not an error: kubelet pulls then
    fs = image.ImageFsInfo(pb.ImageFsInfoRequest()).image_filesystems[0]  # type: ignore[attr-defined]
    assert fs.used_bytes.value > 1_000_000
    image.RemoveImage(pb.RemoveImageRequest(image=pb.ImageSpec(image="box:1")))  # type: ignore[attr-defined]
    assert image.ListImages(pb.ListImagesRequest()).images == []  # type: ignore[attr-defined]
    image.RemoveImage(pb.RemoveImageRequest(image=pb.ImageSpec(image="box:1")))  # type: ignore[attr-defined]


def test_errors_carry_grpc_codes_and_name_the_field(cri: tuple[object, object, Images]) -> None:
    _, image, _ = cri
    with pytest.raises(grpc.RpcError) as err:
        image.ImageStatus(pb.ImageStatusRequest())  # type: ignore[attr-defined]
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "image.image: must name an image" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        image.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image="bad reference!")))  # type: ignore[attr-defined]
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT


def test_pull_image_with_the_request_credentials(secure_registry: Registry, tmp_path: Path) -> None:
    """kubelet passes an image pull secret's credentials in PullImageRequest.auth."""
    import base64
    import dataclasses

    reg = secure_registry
    single_image_layout(tmp_path / "layout", "v1", {"hello": b"private\n"})
    skopeo_copy(tmp_path / "layout", "v1", reg, "test/private:v1", tmp=tmp_path)
    registries = tmp_path / "registries.toml"
    registries.write_text(f'[registries."{reg.host}"]\nca_file = "{reg.ca_file}"\n')
    config = dataclasses.replace(service_config(tmp_path, str(tmp_path / "images"), mode="none"),
                                 registries=str(registries))
    image = pb.ImageSpec(image=f"{reg.host}/test/private:v1")
    assert reg.username is not None and reg.password is not None
    with in_process(config) as service:
        with pytest.raises(grpc.RpcError) as err:
            service.images.PullImage(pb.PullImageRequest(image=image))
        assert "credentials" in err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            service.images.PullImage(pb.PullImageRequest(image=image, auth=pb.AuthConfig(
                username=reg.username, password="wrong")))
        assert "unauthorized" in err.value.details()
        reply = service.images.PullImage(pb.PullImageRequest(image=image, auth=pb.AuthConfig(
            username=reg.username, password=reg.password)))
        assert reply.image_ref.startswith("sha256:")
        encoded = base64.b64encode(f"{reg.username}:{reg.password}".encode()).decode()
        again = service.images.PullImage(pb.PullImageRequest(image=image, auth=pb.AuthConfig(auth=encoded)))
        assert again.image_ref == reply.image_ref
        with pytest.raises(grpc.RpcError) as err:
            service.images.PullImage(pb.PullImageRequest(image=image, auth=pb.AuthConfig(registry_token="t")))
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT and "registry_token" in err.value.details()
