"""Images as a user sees them: pull, import, list, tag, remove, and a container's root
filesystem made from an image's layers. The skiff CLI (and later the CRI service) uses this;
it composes the content store, the registry client, the layer unpacker and snapshots.

    <root>/content/          blobs and image records (store.py)
    <root>/layers/sha256/<diff_id hex>/   each layer unpacked once, shared by every image
    <root>/snapshots/<container id>/rootfs   one overlay per container (and what it was made of)
    <root>/uppers/<container id>/{upper,work}   its writable directories (an older skiff put
                                                them in the snapshot directory)

Layers and upper directories are apart from the overlays mounted on rootfs/: a service binds
them onto themselves (runtime/own_mount.py), so that overlayfs' copy of their mounts does
not look at every container's rootfs mount.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

from skiff.errors import FailedPrecondition, InvalidArgument, NotFound, SkiffError
from skiff.images import reference
from skiff.images.hosts import Credentials
from skiff.images.store import ContentStore, ImageRecord
from skiff.oci import image as oci

DEFAULT_ROOT = "/var/lib/skiff"
DEFAULT_PLATFORM = "linux/amd64" if os.uname().machine == "x86_64" else "linux/arm64"


@dataclass(frozen=True, slots=True, kw_only=True)
class ResolvedImage:
    name: str
    digest: str               # of the platform manifest
    manifest: oci.Manifest
    image: oci.Image          # the config blob


def normalize(name: str) -> str:
    """`busybox` -> `docker.io/library/busybox:latest`, as records are keyed."""
    ref = reference.parse(name)
    if ref.tag is None and ref.digest is None:
        ref = reference.Reference(domain=ref.domain, path=ref.path, tag="latest")
    return str(ref)


class Images:
    def __init__(self, root: str = DEFAULT_ROOT, *, registries: str | None = None,
                 progress: bool = True) -> None:
        """`registries`: the registry configuration file (images/hosts.py; default its own
        default). `progress`: draw pull progress on stderr (a CLI), or not (a daemon)."""
        self.root = root
        self.store = ContentStore(os.path.join(root, "content"))
        self.layers = os.path.join(root, "layers", "sha256")
        self.snapshots = os.path.join(root, "snapshots")
        self.uppers = os.path.join(root, "uppers")
        self.registries = registries
        self.progress = progress

    @contextlib.contextmanager
    def _layers_lock(self, exclusive: bool) -> Iterator[None]:
        """Shared while a snapshot is being made from layers, exclusive while gc removes
        layers: gc never takes a layer a container is about to mount."""
        os.makedirs(self.layers, exist_ok=True)
        fd = os.open(os.path.join(self.layers, ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)

    # -- records -----------------------------------------------------------------------------

    def pull(self, name: str, *, platform: str | None = None,
             credentials: Credentials | None = None) -> ImageRecord:
        """`credentials`, when given, are used for this pull's registry instead of the
        configured ones (the CRI's PullImageRequest.auth)."""
        from dataclasses import replace

        from skiff.images import hosts, registry

        ref = normalize(name)
        config = hosts.load(self.registries)
        if credentials is not None:
            domain = reference.parse(ref).domain
            config = replace(config, hosts={**config.hosts, domain: replace(config.host(domain),
                                                                            credentials=credentials)})
        result = registry.pull(ref, self.store, platform=platform or DEFAULT_PLATFORM,
                               progress=registry.default_progress() if self.progress else None,
                               config=config)
        return self.store.image(str(result.reference))

    def resolve(self, name: str, *, platform: str | None = None) -> ResolvedImage:
        return self.resolve_record(self.store.image(normalize(name)), platform=platform)

    def resolve_record(self, record: ImageRecord, *, platform: str | None = None) -> ResolvedImage:
        """`resolve` for a record already read (a listing of the store's images)."""
        digest, media_type = record.digest, record.media_type
        if media_type in oci.INDEX_MEDIA_TYPES:
            from skiff.images.registry import parse_platform, select_platform

            index = oci.parse_index(self.store.read(digest), source=f"{record.name}@{digest}")
            chosen = select_platform(index, parse_platform(platform or DEFAULT_PLATFORM), source=record.name)
            digest, media_type = chosen.digest, chosen.media_type
        manifest = oci.parse_manifest(self.store.read(digest), source=f"{record.name}@{digest}")
        image = oci.parse_image(self.store.read(manifest.config.digest), source=manifest.config.digest)
        if len(image.rootfs.diff_ids) != len(manifest.layers):
            raise InvalidArgument(f"image {record.name}: {len(manifest.layers)} layers but "
                                  f"{len(image.rootfs.diff_ids)} diff_ids in its config")
        return ResolvedImage(name=record.name, digest=digest, manifest=manifest, image=image)

    def remove(self, name: str) -> ImageRecord:
        """Forget the name; refused while a container runs this very image (sharing base
        layers with it is fine: gc keeps layers that snapshots use)."""
        record = self.store.image(normalize(name))
        try:
            config = self.resolve_record(record).manifest.config.digest
        except SkiffError:  # a record that cannot be resolved here (another platform, a lost blob)
            return self.store.remove_image(record.name)
        if config in self._images_in_use():
            raise FailedPrecondition(f"image {record.name} is in use by a container")
        return self.store.remove_image(record.name)

    def gc(self) -> list[str]:
        """Blobs no image reaches, and unpacked layers no image or container uses."""
        removed = self.store.gc()
        with self._layers_lock(exclusive=True):
            keep = {_hex(d) for d in self.store.references().diff_ids} | self._layers_in_use()
            for name in _listdir(self.layers):
                if name not in keep and not name.startswith("."):
                    shutil.rmtree(os.path.join(self.layers, name))
                    removed.append(f"layer sha256:{name}")
        return removed

    # -- root filesystems ----------------------------------------------------------------------

    def unpack(self, image: ResolvedImage) -> list[str]:
        """The image's layer directories, bottom first, unpacking what is not yet there, the
        layers side by side (creating files is most of the work, and it runs outside the GIL)."""
        from concurrent.futures import ThreadPoolExecutor

        os.makedirs(self.layers, exist_ok=True)
        pairs = list(zip(image.manifest.layers, image.image.rootfs.diff_ids))
        dirs = [os.path.join(self.layers, _hex(diff_id)) for _, diff_id in pairs]
        missing = [(layer, diff_id, final) for (layer, diff_id), final in zip(pairs, dirs)
                   if not os.path.isdir(final)]
        if missing:
            with ThreadPoolExecutor(max_workers=min(4, len(missing)), thread_name_prefix="skiff-unpack") as pool:
                for done in [pool.submit(self._unpack_layer, *m) for m in missing]:
                    done.result()
        return dirs

    def _unpack_layer(self, layer: oci.Descriptor, diff_id: str, final: str) -> None:
        """Into a temporary directory, renamed into place: a crash or a concurrent unpack of
        the same layer never leaves a half layer under its name."""
        from skiff.images.unpack import unpack_layer

        tmp = tempfile.mkdtemp(prefix=".unpack-", dir=self.layers)
        try:
            got = unpack_layer(self.store.path(layer.digest), tmp, media_type=layer.media_type)
            if got != diff_id:
                raise InvalidArgument(f"layer {layer.digest}: its content is {got}, the image config says {diff_id}")
            try:
                os.rename(tmp, final)
            except OSError:  # another process unpacked it first: theirs is as good
                shutil.rmtree(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def prepare(self, image: str | ResolvedImage, container_id: str) -> tuple[str, ResolvedImage]:
        """A writable root filesystem for `container_id`: an overlay of the image's layers with
        the container's own upper directory. Returns its path and the image (`image`: a name,
        or one the caller resolved already)."""
        snapshot = self._snapshot_dir(container_id)
        resolved = image if isinstance(image, ResolvedImage) else self.resolve(image)
        with self._layers_lock(exclusive=False):
            # Top first, each layer once: overlayfs refuses a lowerdir named twice (ELOOP), and
            # the upper copy of a repeated layer already shows all of it.
            lower = list(dict.fromkeys(reversed(self.unpack(resolved))))
            return self._mount_snapshot(snapshot, container_id, lower, resolved), resolved

    def _mount_snapshot(self, snapshot: str, container_id: str, lower: list[str], resolved: ResolvedImage) -> str:
        from skiff.images.snapshot import mount_overlay

        os.makedirs(self.snapshots, exist_ok=True)
        try:
            os.mkdir(snapshot)
        except FileExistsError:
            raise FailedPrecondition(f"container {container_id!r}: a snapshot of that name exists") from None
        writable = os.path.join(self.uppers, container_id)
        try:
            os.mkdir(os.path.join(snapshot, "rootfs"))
            shutil.rmtree(writable, ignore_errors=True)  # the name is ours now: anything there is left over
            for part in ("upper", "work"):
                os.makedirs(os.path.join(writable, part))
            with open(os.path.join(snapshot, "layers"), "w") as f:
                f.write("\n".join(os.path.basename(d) for d in lower))
            with open(os.path.join(snapshot, "image"), "w") as f:
                f.write(resolved.manifest.config.digest)
            mount_overlay(lower, os.path.join(snapshot, "rootfs"), upper=os.path.join(writable, "upper"),
                          work=os.path.join(writable, "work"))
        except BaseException:
            shutil.rmtree(writable, ignore_errors=True)
            shutil.rmtree(snapshot, ignore_errors=True)
            raise
        return os.path.join(snapshot, "rootfs")

    def upper_dir(self, container_id: str) -> str:
        """What the container wrote: its overlay's upper directory."""
        upper = os.path.join(self.uppers, container_id, "upper")
        return upper if os.path.isdir(upper) else os.path.join(self._snapshot_dir(container_id), "upper")

    def release(self, container_id: str) -> None:
        """Unmount and remove the container's snapshot; a missing one is fine."""
        from skiff.images.snapshot import unmount

        snapshot = self._snapshot_dir(container_id)
        if not os.path.isdir(snapshot):
            return
        try:
            unmount(os.path.join(snapshot, "rootfs"))
        except NotFound:  # not mounted any more (a reboot, a killed `skiff run`): nothing to undo
            pass
        # the snapshot directory last: while it is there, a release that was cut short is done again
        shutil.rmtree(os.path.join(self.uppers, container_id), ignore_errors=True)
        shutil.rmtree(snapshot)

    def _snapshot_dir(self, container_id: str) -> str:
        if not container_id or "/" in container_id or container_id in (".", "..") or container_id.startswith("."):
            raise InvalidArgument(f"container id {container_id!r}: not a valid name for a snapshot")
        return os.path.join(self.snapshots, container_id)

    def _images_in_use(self) -> set[str]:
        """The config digests of the images that containers' snapshots were made from."""
        return self._snapshot_words("image")

    def _snapshot_words(self, name: str) -> set[str]:
        words: set[str] = set()
        for container_id in _listdir(self.snapshots):
            try:
                with open(os.path.join(self.snapshots, container_id, name)) as f:
                    words.update(f.read().split())
            except FileNotFoundError:
                continue
        return words

    def _layers_in_use(self) -> set[str]:
        """The diff_id hexes of the layers containers' snapshots are made of."""
        return self._snapshot_words("layers")


def _hex(digest: str) -> str:
    algorithm, _, value = digest.partition(":")
    if algorithm != "sha256" or len(value) != 64:
        raise InvalidArgument(f"digest {digest!r}: expected sha256:<64 hex digits>")
    return value


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []
