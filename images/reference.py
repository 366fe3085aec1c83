"""Image references, normalized the way docker and containerd do
(distribution/reference `normalize.go`, `regexp.go`).

    busybox                          -> docker.io/library/busybox:latest
    localhost:5000/a/b:tag           -> localhost:5000/a/b:tag
    quay.io/x/y@sha256:<64 hex>      -> digest only, no tag
    registry.k8s.io/pause:3.9@sha256:...  -> tag kept for display, the digest is what is pulled

The first path component is a registry host when it contains a `.` or a `:`, or is
`localhost`; otherwise the reference is on docker.io, where one-component names live under
`library/`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from skiff.errors import InvalidArgument

DOCKER_HUB = "docker.io"
_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})

_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_DOMAIN = re.compile(
    r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
    r"|\[[0-9a-fA-F:]+\])(?::[0-9]+)?"
)
_TAG = re.compile(r"[\w][\w.-]{0,127}")
_DIGEST = re.compile(r"(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})")
_NAME_MAX = 255


class InvalidReferenceError(InvalidArgument):
    pass


@dataclass(frozen=True, slots=True, kw_only=True)
class Reference:
    domain: str           # "docker.io", "127.0.0.1:5000"
    path: str             # "library/busybox"
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        return f"{self.domain}/{self.path}"

    @property
    def object(self) -> str:
        """What goes after /manifests/: the digest wins over the tag."""
        if self.digest is not None:
            return self.digest
        return self.tag or "latest"

    def with_digest(self, digest: str) -> Reference:
        return Reference(domain=self.domain, path=self.path, tag=None, digest=digest)

    def __str__(self) -> str:
        out = self.name
        if self.tag is not None:
            out += f":{self.tag}"
        if self.digest is not None:
            out += f"@{self.digest}"
        return out


def parse(ref: str) -> Reference:
    """Parse and normalize `ref`; a reference with neither tag nor digest gets `latest`."""
    if not ref or ref != ref.strip():
        raise InvalidReferenceError(f"image reference {ref!r}: must be non-empty, without spaces")
    rest, digest = ref, None
    if "@" in rest:
        rest, digest = rest.split("@", 1)
        if not _DIGEST.fullmatch(digest):
            raise InvalidReferenceError(
                f"image reference {ref!r}: digest {digest!r} is not sha256:<64 hex> or sha512:<128 hex>")
    tag = None
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > slash:  # a colon after the last slash is a tag, before it a port
        rest, tag = rest[:colon], rest[colon + 1:]
        if not _TAG.fullmatch(tag):
            raise InvalidReferenceError(f"image reference {ref!r}: invalid tag {tag!r}")
    first, sep, remainder = rest.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        domain, path = first, remainder
        if not _DOMAIN.fullmatch(domain):
            raise InvalidReferenceError(f"image reference {ref!r}: invalid registry host {domain!r}")
    else:
        domain, path = DOCKER_HUB, rest
    if domain in _HUB_ALIASES:
        domain = DOCKER_HUB
        if "/" not in path:
            path = f"library/{path}"
    if not path or not all(_COMPONENT.fullmatch(c) for c in path.split("/")):
        raise InvalidReferenceError(
            f"image reference {ref!r}: repository {path!r} must be lower-case components "
            "of [a-z0-9] separated by '/', with '.', '_', '__' or '-' inside")
    if len(f"{domain}/{path}") > _NAME_MAX:
        raise InvalidReferenceError(f"image reference {ref!r}: name longer than {_NAME_MAX} characters")
    if tag is None and digest is None:
        tag = "latest"
    return Reference(domain=domain, path=path, tag=tag, digest=digest)
