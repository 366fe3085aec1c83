"""runtime.v1 ImageService on skiff's images (images/service.py).

CRI's image is the config blob: its id is the config digest, its repo_tags the names that
reach it, its repo_digests `name@<manifest digest>` (`_repo_names`, the one rule for both,
also what CreateContainer keeps for ContainerStatus through `named_image`). What kubelet
relies on: ImageStatus of a missing image is an empty answer (kubelet then pulls),
RemoveImage of a missing one succeeds.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import grpc
from cri_api.v1 import api_pb2 as pb
from cri_api.v1 import api_pb2_grpc

from skiff.errors import FailedPrecondition, InvalidArgument, SkiffError
from skiff.images import reference
from skiff.images.hosts import Credentials
from skiff.images.service import Images, ResolvedImage, normalize
from skiff.images.store import ImageRecord


log = logging.getLogger("skiff.cri")


@dataclass(frozen=True, slots=True, kw_only=True)
class _Entry:
    id: str                  # config digest
    tags: list[str]
    digests: list[str]       # name@digest; a digest a pull asked for (an index's) first
    size: int
    user: str


def _repo_names(record: ImageRecord) -> tuple[list[str], list[str]]:
    """The repo tags and repo digests one name of an image gives, as containerd shows them:
    the name if it has a tag (domain/path:tag), and domain/path@<the digest it points at>,
    last. A name pulled by an index's digest points at the platform's manifest, but the digest
    asked for names the image too, and comes first (containerd's repo digest is the index)."""
    ref = reference.parse(record.name)
    # in name:tag@digest the tag is only for show
    tags = [f"{ref.name}:{ref.tag}"] if ref.tag is not None and ref.digest is None else []
    digests = [f"{ref.name}@{record.digest}"]
    if ref.digest is not None and ref.digest != record.digest:
        digests.insert(0, f"{ref.name}@{ref.digest}")
    return tags, digests


@dataclass(frozen=True, slots=True, kw_only=True)
class NamedImage:
    """An image a container asked for, and how ContainerStatus names it."""
    resolved: ResolvedImage
    id: str                  # config digest
    asked_by: str            # the name or id that found it
    name: str                # the name it was asked by, else its first tag, else asked_by
    repo_digest: str         # name@digest, the index's if a pull named one


def named_image(images: Images, image: str, *, user_specified: str = "") -> NamedImage | None:
    """The image `image` names (a name, an id or a unique id prefix), with its name and repo
    digest; None if there is none. kubelet passes the id PullImage answered, with the pod's own
    name for the image in `user_specified`: a name resolves in one read; only an id without
    one (crictl, an older kubelet) costs a look at every image."""
    for name in dict.fromkeys(n for n in (user_specified, image) if n):
        try:
            record = images.store.image(normalize(name))
            resolved = images.resolve_record(record)
        except SkiffError:
            continue
        image_id = resolved.manifest.config.digest
        if name == image or image_id.removeprefix("sha256:").startswith(image.removeprefix("sha256:")):
            return NamedImage(resolved=resolved, id=image_id, asked_by=name, name=name,
                              repo_digest=_repo_names(record)[1][0])
    entry = ImageService(images).find(image)
    if entry is None:
        return None
    return NamedImage(resolved=images.resolve((entry.tags or entry.digests)[0]), id=entry.id, asked_by=image,
                      name=(entry.tags or [image])[0], repo_digest=entry.digests[0])


def _credentials(auth: pb.AuthConfig) -> Credentials | None:
    """kubelet's AuthConfig from an image pull secret, read as docker reads it: username and
    password, or `auth` (base64 "user:password", as in a docker config.json); a registry_token
    (a bearer token, sent as it is; it wins over the rest) or an identity_token (an OAuth2
    refresh token, traded at the registry's token realm). images/registry.py uses them."""
    username, password, basic = auth.username, auth.password, bool(auth.username)
    if auth.auth:
        import base64
        import binascii

        try:
            username, sep, password = base64.b64decode(auth.auth, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError) as e:
            raise InvalidArgument(f"auth.auth: not base64 of user:password: {e}") from e
        if not sep:
            raise InvalidArgument("auth.auth: must encode user:password")
        basic = True
    if not (basic or auth.registry_token or auth.identity_token):
        return None
    return Credentials(username=username if basic else "", password=password if basic else "",
                       registry_token=auth.registry_token, identity_token=auth.identity_token)


class ImageService(api_pb2_grpc.ImageServiceServicer):
    def __init__(self, images: Images) -> None:
        self.images = images

    def _entries(self) -> dict[str, _Entry]:
        """By image id, each with the repo tags and digests of every name that reaches it."""
        entries: dict[str, _Entry] = {}
        for record in self.images.store.images():
            try:
                resolved = self.images.resolve_record(record)
            except SkiffError as e:  # one broken record must not hide every other image
                log.warning("image %s: %s: left out of the CRI image list", record.name, e)
                continue
            config = resolved.manifest.config
            entry = entries.get(config.digest)
            if entry is None:
                size = config.size + sum(layer.size for layer in resolved.manifest.layers)
                user = resolved.image.config.user if resolved.image.config and resolved.image.config.user else ""
                entry = entries[config.digest] = _Entry(id=config.digest, tags=[], digests=[], size=size, user=user)
            tags, digests = _repo_names(record)
            entry.tags.extend(tags)
            entry.digests[:0] = digests[:-1]  # an index's digest a pull asked for, before every other
            entry.digests.append(digests[-1])
        return entries

    def find(self, image: str) -> _Entry | None:
        """By id, unique id prefix (as crictl passes them), or any name; in `name:tag@digest`
        the digest wins, the tag is not checked (containerd's ParseDockerRef)."""
        if not image:
            raise InvalidArgument("image.image: must name an image")
        entries = self._entries()
        hexdigits = image.removeprefix("sha256:")
        if all(c in "0123456789abcdef" for c in hexdigits) and len(hexdigits) >= 6:
            matches = [e for digest, e in entries.items() if digest.removeprefix("sha256:").startswith(hexdigits)]
            if len(matches) > 1:
                raise InvalidArgument(f"image.image: id prefix {image!r} matches {len(matches)} images")
            if matches:
                return matches[0]
        try:
            ref = reference.parse(normalize(image))
        except InvalidArgument:
            if image.startswith("sha256:"):
                return None
            raise
        name = str(ref.with_digest(ref.digest)) if ref.digest is not None else str(ref)
        return next((e for e in entries.values() if name in e.tags or name in e.digests), None)

    @staticmethod
    def _message(entry: _Entry) -> pb.Image:
        # `pinned` stays false: containerd pins its sandbox (pause) image against kubelet's image
        # gc, but skiff runs none (pods' namespaces are held by bind mounts, cri/pause.py is a
        # script), so no image here is needed by a pod that kubelet does not know of
        uid, username = (int(entry.user.split(":")[0]), "") if entry.user.split(":")[0].isdigit() else (0, entry.user)
        image = pb.Image(id=entry.id, repo_tags=entry.tags, repo_digests=sorted(set(entry.digests)),
                         size=entry.size, username=username, spec=pb.ImageSpec(image=entry.id))
        if entry.user.split(":")[0].isdigit():
            image.uid.value = uid
        return image

    def ListImages(self, request: pb.ListImagesRequest, context: grpc.ServicerContext) -> pb.ListImagesResponse:
        wanted = request.filter.image.image if request.HasField("filter") and request.filter.HasField("image") else ""
        entries = [self.find(wanted)] if wanted else list(self._entries().values())
        return pb.ListImagesResponse(images=[self._message(e) for e in entries if e is not None])

    def ImageStatus(self, request: pb.ImageStatusRequest, context: grpc.ServicerContext) -> pb.ImageStatusResponse:
        entry = self.find(request.image.image)
        if entry is None:
            return pb.ImageStatusResponse()  # kubelet pulls on an empty answer
        return pb.ImageStatusResponse(image=self._message(entry))

    def PullImage(self, request: pb.PullImageRequest, context: grpc.ServicerContext) -> pb.PullImageResponse:
        if not request.image.image:
            raise InvalidArgument("image.image: must name an image to pull")
        record = self.images.pull(request.image.image, credentials=_credentials(request.auth)
                                  if request.HasField("auth") else None)
        return pb.PullImageResponse(image_ref=self.images.resolve_record(record).manifest.config.digest)

    def RemoveImage(self, request: pb.RemoveImageRequest, context: grpc.ServicerContext) -> pb.RemoveImageResponse:
        entry = self.find(request.image.image)
        if entry is not None:  # removing a missing image succeeds (CRI)
            for name in {r.name for r in self.images.store.images()}:
                if self._belongs(name, entry):
                    self.images.remove(name)
            try:
                self.images.gc()
            except FailedPrecondition:  # a pull holds the store meanwhile: the next gc frees it
                pass
        return pb.RemoveImageResponse()

    def _belongs(self, name: str, entry: _Entry) -> bool:
        try:
            return self.images.resolve(name).manifest.config.digest == entry.id
        except SkiffError:
            return False

    def ImageFsInfo(self, request: pb.ImageFsInfoRequest, context: grpc.ServicerContext) -> pb.ImageFsInfoResponse:
        import time

        used = inodes = 0
        seen: set[tuple[int, int]] = set()
        for top, dirs, files in os.walk(self.images.root):
            if os.path.dirname(top) == self.images.snapshots:
                dirs[:] = [d for d in dirs if d != "rootfs"]  # overlay mounts: counted as layers
            for name in dirs + files:
                try:
                    st = os.lstat(os.path.join(top, name))
                except FileNotFoundError:
                    continue
                if (st.st_dev, st.st_ino) not in seen:  # hard links count once, by blocks
                    seen.add((st.st_dev, st.st_ino))
                    inodes += 1
                    used += st.st_blocks * 512
        usage = pb.FilesystemUsage(timestamp=time.time_ns(), fs_id=pb.FilesystemIdentifier(mountpoint=self.images.root))
        usage.used_bytes.value = used
        usage.inodes_used.value = inodes
        return pb.ImageFsInfoResponse(image_filesystems=[usage])
