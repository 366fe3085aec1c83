"""runtime.v1 ImageService on skiff's images (images/service.py).

CRI's image is the config blob: its id is the config digest, its repo_tags the names that
reach it, its repo_digests `name@<manifest digest>`. What kubelet relies on: ImageStatus of a
missing image is an empty answer (kubelet then pulls), RemoveImage of a missing one succeeds.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import grpc
from cri_api.v1 import api_pb2 as pb
from cri_api.v1 import api_pb2_grpc

from skiff.errors import InvalidArgument, NotFound
from skiff.images.service import Images, normalize


@dataclass(frozen=True, slots=True, kw_only=True)
class _Entry:
    id: str                  # config digest
    tags: list[str]
    digests: list[str]
    size: int
    user: str


class ImageService(api_pb2_grpc.ImageServiceServicer):
    def __init__(self, images: Images) -> None:
        self.images = images

    def _entries(self) -> dict[str, _Entry]:
        entries: dict[str, _Entry] = {}
        for record in self.images.store.images():
            try:
                resolved = self.images.resolve(record.name)
            except NotFound:
                continue  # a record whose platform manifest is missing: not runnable here
            config = resolved.manifest.config
            entry = entries.get(config.digest)
            if entry is None:
                size = config.size + sum(layer.size for layer in resolved.manifest.layers)
                user = resolved.image.config.user if resolved.image.config and resolved.image.config.user else ""
                entry = entries[config.digest] = _Entry(id=config.digest, tags=[], digests=[], size=size, user=user)
            entry.tags.append(record.name)
            entry.digests.append(f"{record.name.rpartition(':')[0] if '@' not in record.name else record.name.partition('@')[0]}@{resolved.digest}")
        return entries

    def _find(self, image: str) -> _Entry | None:
        if not image:
            raise InvalidArgument("image.image: must name an image")
        entries = self._entries()
        if image in entries:
            return entries[image]
        if image.startswith("sha256:") or len(image) == 64:
            wanted = image if image.startswith("sha256:") else f"sha256:{image}"
            return entries.get(wanted)
        name = normalize(image)
        return next((e for e in entries.values() if name in e.tags or name in e.digests), None)

    @staticmethod
    def _message(entry: _Entry) -> pb.Image:
        uid, username = (int(entry.user.split(":")[0]), "") if entry.user.split(":")[0].isdigit() else (0, entry.user)
        image = pb.Image(id=entry.id, repo_tags=entry.tags, repo_digests=sorted(set(entry.digests)),
                         size=entry.size, username=username, spec=pb.ImageSpec(image=entry.id))
        if entry.user.split(":")[0].isdigit():
            image.uid.value = uid
        return image

    def ListImages(self, request: pb.ListImagesRequest, context: grpc.ServicerContext) -> pb.ListImagesResponse:
        wanted = request.filter.image.image if request.HasField("filter") and request.filter.HasField("image") else ""
        entries = [self._find(wanted)] if wanted else list(self._entries().values())
        return pb.ListImagesResponse(images=[self._message(e) for e in entries if e is not None])

    def ImageStatus(self, request: pb.ImageStatusRequest, context: grpc.ServicerContext) -> pb.ImageStatusResponse:
        entry = self._find(request.image.image)
        if entry is None:
            return pb.ImageStatusResponse()  # kubelet pulls on an empty answer
        return pb.ImageStatusResponse(image=self._message(entry))

    def PullImage(self, request: pb.PullImageRequest, context: grpc.ServicerContext) -> pb.PullImageResponse:
        if not request.image.image:
            raise InvalidArgument("image.image: must name an image to pull")
        if request.HasField("auth") and (request.auth.username or request.auth.auth or request.auth.registry_token):
            raise InvalidArgument("auth: credentials in the request are not supported yet; "
                                  "put them in the registry configuration")
        record = self.images.pull(request.image.image)
        return pb.PullImageResponse(image_ref=self.images.resolve(record.name).manifest.config.digest)

    def RemoveImage(self, request: pb.RemoveImageRequest, context: grpc.ServicerContext) -> pb.RemoveImageResponse:
        entry = self._find(request.image.image)
        if entry is not None:  # removing a missing image succeeds (CRI)
            for tag in entry.tags:
                self.images.remove(tag)
            self.images.gc()
        return pb.RemoveImageResponse()

    def ImageFsInfo(self, request: pb.ImageFsInfoRequest, context: grpc.ServicerContext) -> pb.ImageFsInfoResponse:
        import time

        used = inodes = 0
        for top, dirs, files in os.walk(self.images.root):
            inodes += len(dirs) + len(files)
            for name in files:
                try:
                    used += os.lstat(os.path.join(top, name)).st_size
                except FileNotFoundError:
                    pass
        usage = pb.FilesystemUsage(timestamp=time.time_ns(), fs_id=pb.FilesystemIdentifier(mountpoint=self.images.root))
        usage.used_bytes.value = used
        usage.inodes_used.value = inodes
        return pb.ImageFsInfoResponse(image_filesystems=[usage])
