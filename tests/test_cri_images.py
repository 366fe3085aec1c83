"""The CRI service over its real unix socket, with the generated stubs kubelet's protocol
uses: Version, Status, and the ImageService on images skiff built."""

from __future__ import annotations

import dataclasses
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cri_api.v1 import api_pb2 as pb
from cri_api.v1 import api_pb2_grpc

from cri_fixture import in_process, service_config
from registry_fixture import (OCI_INDEX, FakeRegistry, Registry, add_image, fake_registry,  # noqa: F401
                              multi_platform_layout, secure_registry, single_image_layout, skopeo_copy)
from skiff.cri.config import CriConfig
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


def test_a_name_with_tag_and_digest_is_found_by_its_digest(cri: tuple[object, object, Images], tmp_path: Path) -> None:
    """`name:tag@digest` names the content by its digest; the tag is not checked (containerd's
    ParseDockerRef drops it), so kubelet finds an image a pod pins that way."""
    _, image, images = cri
    _build(images, tmp_path, "docker.io/library/box:1")
    digest = images.store.image("docker.io/library/box:1").digest
    for name in (f"box:1@{digest}", f"box:other@{digest}", f"docker.io/library/box@{digest}"):
        found = image.ImageStatus(pb.ImageStatusRequest(image=pb.ImageSpec(image=name)))  # type: ignore[attr-defined]
        assert found.image.repo_digests == [f"docker.io/library/box@{digest}"], name
        listed = image.ListImages(pb.ListImagesRequest(filter=pb.ImageFilter(image=pb.ImageSpec(image=name))))  # type: ignore[attr-defined]
        assert [i.id for i in listed.images] == [found.image.id]
    other = "sha256:" + "0" * 64
    missing = image.ImageStatus(pb.ImageStatusRequest(image=pb.ImageSpec(image=f"box:1@{other}")))  # type: ignore[attr-defined]
    assert not missing.HasField("image")  # the tag alone does not find it
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
        assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED and "unauthorized" in err.value.details()
        reply = service.images.PullImage(pb.PullImageRequest(image=image, auth=pb.AuthConfig(
            username=reg.username, password=reg.password)))
        assert reply.image_ref.startswith("sha256:")
        encoded = base64.b64encode(f"{reg.username}:{reg.password}".encode()).decode()
        again = service.images.PullImage(pb.PullImageRequest(image=image, auth=pb.AuthConfig(auth=encoded)))
        assert again.image_ref == reply.image_ref


def _plain_http(tmp_path: Path, host: str) -> CriConfig:
    registries = tmp_path / "registries.toml"
    registries.write_text(f'[registries."{host}"]\ninsecure = true\n')
    return dataclasses.replace(service_config(tmp_path, str(tmp_path / "images"), mode="none"),
                               registries=str(registries))


def test_pull_image_with_a_registry_token(fake_registry: FakeRegistry, tmp_path: Path) -> None:
    """auth.registry_token is a bearer token got elsewhere (docker's RegistryToken): it goes to
    the registry as it is, the token realm is never asked; a wrong one is named in the error."""
    fake = fake_registry
    img = add_image(tmp_path / "layout", files={"hello": b"token\n"})
    fake.add_image("test/app", "v1", img)
    fake.token = "access-1"
    image = pb.ImageSpec(image=f"{fake.host}/test/app:v1")
    with in_process(_plain_http(tmp_path, fake.host)) as service:
        with pytest.raises(grpc.RpcError) as err:
            service.images.PullImage(pb.PullImageRequest(image=image, auth=pb.AuthConfig(registry_token="wrong")))
        assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED
        assert "unauthorized (repository test/app): the registry token was refused" in err.value.details()
        reply = service.images.PullImage(pb.PullImageRequest(image=image, auth=pb.AuthConfig(
            registry_token="access-1")))
        assert reply.image_ref == img.config_digest
    assert not [path for _, path, _ in fake.requests if path.startswith("/token")]
    assert any(headers.get("Authorization") == "Bearer access-1" for _, _, headers in fake.requests)


def test_pull_image_with_an_identity_token(fake_registry: FakeRegistry, tmp_path: Path) -> None:
    """auth.identity_token is an OAuth2 refresh token: traded at the challenge's realm by a
    POST with grant_type=refresh_token, as docker and containerd do; a refused one says so."""
    fake = fake_registry
    img = add_image(tmp_path / "layout", files={"hello": b"identity\n"})
    fake.add_image("test/app", "v1", img)
    fake.token, fake.refresh_token = "access-2", "refresh-2"
    image = pb.ImageSpec(image=f"{fake.host}/test/app:v1")
    with in_process(_plain_http(tmp_path, fake.host)) as service:
        with pytest.raises(grpc.RpcError) as err:
            service.images.PullImage(pb.PullImageRequest(image=image, auth=pb.AuthConfig(identity_token="stale")))
        assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED
        assert (f"http://{fake.host}/token: identity token refused for repository:test/app:pull "
                "(HTTP 400: invalid_grant (refresh token unknown))") in err.value.details()
        reply = service.images.PullImage(pb.PullImageRequest(image=image, auth=pb.AuthConfig(
            identity_token="refresh-2")))
        assert reply.image_ref == img.config_digest
    assert fake.token_forms[-1] == {"grant_type": "refresh_token", "refresh_token": "refresh-2",
                                    "service": "fake", "scope": "repository:test/app:pull",
                                    "client_id": "skiff"}
    assert not [path for method, path, _ in fake.requests if method == "GET" and path.startswith("/token")]


@pytest.mark.parametrize("realm, code, details", [
    # the realm redirects the refresh-token POST: not followed, the registry misbehaves
    ("own-redirecting", grpc.StatusCode.UNAVAILABLE, "identity token request redirected (HTTP 307"),
    # a plain-HTTP realm on another host than the insecure registry: never sent there
    ("other-host", grpc.StatusCode.FAILED_PRECONDITION,
     "an identity token is not sent to a plain-HTTP realm"),
])
def test_pull_image_identity_token_kept_from_other_hosts(fake_registry: FakeRegistry, tmp_path: Path,
                                                         realm: str, code: grpc.StatusCode,
                                                         details: str) -> None:
    """Neither is a refusal of the credentials, so neither is UNAUTHENTICATED (kubelet would
    report the pull secret as wrong); the refresh token reaches no one but the realm."""
    fake = fake_registry
    fake.add_image("test/app", "v1", add_image(tmp_path / "layout", files={"hello": b"id\n"}))
    fake.token, fake.refresh_token = "access-9", "refresh-9"
    other = f"http://localhost:{fake.host.rsplit(':', 1)[1]}"
    if realm == "own-redirecting":
        fake.redirects["/token"] = (307, f"{other}/stolen")
    else:
        fake.challenge = f'Bearer realm="{other}/token",service="fake"'
    image = pb.ImageSpec(image=f"{fake.host}/test/app:v1")
    with in_process(_plain_http(tmp_path, fake.host)) as service:
        with pytest.raises(grpc.RpcError) as err:
            service.images.PullImage(pb.PullImageRequest(image=image, auth=pb.AuthConfig(
                identity_token="refresh-9")))
    assert err.value.code() is code and details in err.value.details()
    assert not [path for _, path, _ in fake.requests if path.startswith("/stolen")]
    assert len(fake.token_forms) == 0


def test_an_image_pulled_by_its_index_digest_is_found_by_it(fake_registry: FakeRegistry, tmp_path: Path) -> None:
    """A pull by an index's digest records the platform's manifest; the index digest still
    finds the image (kubelet asks ImageStatus with the pod's image before pulling again) and is
    one of its repo digests, as containerd shows it."""
    fake = fake_registry
    index_digest, built = multi_platform_layout(tmp_path / "layout", "v1")
    index = (tmp_path / "layout" / "blobs" / "sha256" / index_digest.removeprefix("sha256:")).read_bytes()
    fake.manifests[("test/app", index_digest)] = (OCI_INDEX, index)
    for platform, img in built.items():
        fake.add_image("test/app", platform.replace("/", "-"), img)
    amd64 = built["linux/amd64"]
    image = pb.ImageSpec(image=f"{fake.host}/test/app@{index_digest}")
    with in_process(_plain_http(tmp_path, fake.host)) as service:
        reply = service.images.PullImage(pb.PullImageRequest(image=image))
        assert reply.image_ref == amd64.config_digest
        found = service.images.ImageStatus(pb.ImageStatusRequest(image=image)).image
        assert found.id == amd64.config_digest and not found.repo_tags
        assert sorted(found.repo_digests) == sorted([f"{fake.host}/test/app@{index_digest}",
                                                     f"{fake.host}/test/app@{amd64.manifest_digest}"])
