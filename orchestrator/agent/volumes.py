"""A pod's volumes on this node (kubelet `pkg/volume/`): made before its containers, bound into
them by the CRI's mounts, gone with the pod.

    emptyDir    <root>/pods/<uid>/volumes/empty-dir/<name>/, a directory (a tmpfs for
                medium: Memory)
    secret      <root>/pods/<uid>/volumes/secret/<name>/, a tmpfs of the pod's own (secrets
                never touch the disk), one file per key, mode 0644 unless defaultMode says
    configMap   the same, under configmap/
    hostPath    the host's path itself

The tmpfs mounts are private and marked by their source name ("skiff-volume"), so that only
those this agent made are ever unmounted."""

from __future__ import annotations

import base64
import errno
import os
import shutil
from typing import Any

from skiff.errors import InvalidArgument, NotFound
from skiff.orchestrator.api.kinds import BY_KIND
from skiff.orchestrator.api.registry import Api
from skiff.runtime import libc

SOURCE = "skiff-volume"
SECRETS, CONFIG_MAPS = BY_KIND["Secret"], BY_KIND["ConfigMap"]


def pod_dir(root: str, uid: str) -> str:
    return os.path.join(root, "pods", uid)


def prepare(api: Api, root: str, pod: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """Every volume of the pod, made: volume name -> (host path, read-only: secrets and
    configMaps are, as Kubernetes mounts them)."""
    uid, namespace = pod["metadata"]["uid"], pod["metadata"]["namespace"]
    paths: dict[str, tuple[str, bool]] = {}
    for volume in pod["spec"].get("volumes") or []:
        name = volume["name"]
        if "hostPath" in volume:
            paths[name] = (volume["hostPath"]["path"], False)
            continue
        kind = "empty-dir" if "emptyDir" in volume else "secret" if "secret" in volume else "configmap"
        path = os.path.join(pod_dir(root, uid), "volumes", kind, name)
        os.makedirs(path, mode=0o750, exist_ok=True)
        memory = kind != "empty-dir" or (volume["emptyDir"] or {}).get("medium") == "Memory"
        if memory and not _mounted(path):
            libc.mount(SOURCE, path, "tmpfs", libc.MS_NOSUID | libc.MS_NODEV, "mode=0750")
            libc.mount(None, path, None, libc.MS_PRIVATE)
        if kind == "secret":
            _write(path, _secret_files(api, namespace, volume["secret"]), volume["secret"].get("defaultMode", 0o644))
        elif kind == "configmap":
            _write(path, _config_map_files(api, namespace, volume["configMap"]),
                   volume["configMap"].get("defaultMode", 0o644))
        paths[name] = (path, kind != "empty-dir")
    return paths


def mounts(container: dict[str, Any], paths: dict[str, tuple[str, bool]]) -> list[tuple[str, str, bool]]:
    """(host path, container path, read-only) of the container's volumeMounts."""
    out = []
    for m in container.get("volumeMounts") or []:
        path, readonly = paths[m["name"]]
        sub = m.get("subPath") or ""
        if sub.startswith("/") or ".." in sub.split("/"):
            raise InvalidArgument(f"volumeMounts {m['name']}: subPath {sub!r}: must stay inside the volume")
        out.append((os.path.join(path, sub) if sub else path, m["mountPath"], readonly or bool(m.get("readOnly"))))
    return out


def release(root: str, uid: str) -> None:
    """Unmount what prepare mounted for the pod and remove its directory; a pod without one is fine."""
    if not uid or "/" in uid or uid in (".", ".."):
        return
    base = pod_dir(root, uid)
    if not os.path.isdir(base):
        return
    for kind in ("empty-dir", "secret", "configmap"):
        directory = os.path.join(base, "volumes", kind)
        for name in os.listdir(directory) if os.path.isdir(directory) else ():
            path = os.path.join(directory, name)
            if _mounted(path):
                try:
                    libc.umount2(path, libc.MNT_DETACH)
                except OSError as e:
                    if e.errno not in (errno.EINVAL, errno.ENOENT):
                        raise
    shutil.rmtree(base)


def known_pods(root: str) -> list[str]:
    directory = os.path.join(root, "pods")
    return os.listdir(directory) if os.path.isdir(directory) else []


def _mounted(path: str) -> bool:
    """A tmpfs of ours on `path` (mountinfo: its mount point and the source we give)."""
    real = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            dash = fields.index("-")
            if fields[4].encode().decode("unicode_escape") == real and fields[dash + 2] == SOURCE:
                return True
    return False


def _write(path: str, files: dict[str, bytes], mode: int) -> None:
    for key, data in files.items():
        if "/" in key or key in (".", ".."):
            raise InvalidArgument(f"volume key {key!r}: must be a file name")
        tmp = os.path.join(path, f".{key}.tmp")
        with open(tmp, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, os.path.join(path, key))
    for stale in set(os.listdir(path)) - set(files):
        os.unlink(os.path.join(path, stale))


def _secret_files(api: Api, namespace: str, source: dict[str, Any]) -> dict[str, bytes]:
    try:
        secret = api.get(SECRETS, namespace, source["secretName"])
    except NotFound:
        raise NotFound(f"secret {source['secretName']!r} not found in namespace {namespace!r}") from None
    files = {k: base64.b64decode(v) for k, v in (secret.get("data") or {}).items()}
    files.update({k: v.encode() for k, v in (secret.get("stringData") or {}).items()})
    return files


def _config_map_files(api: Api, namespace: str, source: dict[str, Any]) -> dict[str, bytes]:
    try:
        config = api.get(CONFIG_MAPS, namespace, source["name"])
    except NotFound:
        raise NotFound(f"configmap {source['name']!r} not found in namespace {namespace!r}") from None
    files = {k: v.encode() for k, v in (config.get("data") or {}).items()}
    files.update({k: base64.b64decode(v) for k, v in (config.get("binaryData") or {}).items()})
    return files
