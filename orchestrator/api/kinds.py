"""The kinds skiff serves: their group/version, resource name, short names (kubectl's), and
whether they live in a namespace. `resolve` reads what a user types: `po`, `pods`, `Pod`,
`deployments.apps`."""

from __future__ import annotations

from dataclasses import dataclass

from skiff.errors import InvalidArgument


@dataclass(frozen=True, slots=True, kw_only=True)
class Kind:
    kind: str
    api_version: str         # "v1" (the core group) or "apps/v1", "batch/v1"
    resource: str            # plural, lower case: the URL and store path segment
    short_names: tuple[str, ...] = ()
    namespaced: bool = True

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]

    def key(self, namespace: str, name: str) -> str:
        """The store key: /registry/<resource>/<namespace>/<name>, without the namespace for
        cluster-scoped kinds."""
        return f"/registry/{self.resource}/{namespace}/{name}" if self.namespaced else f"/registry/{self.resource}/{name}"

    def prefix(self, namespace: str | None) -> str:
        """Keys of this kind in `namespace` (None: in every namespace)."""
        if self.namespaced and namespace:
            return f"/registry/{self.resource}/{namespace}/"
        return f"/registry/{self.resource}/"


KINDS = (
    Kind(kind="Namespace", api_version="v1", resource="namespaces", short_names=("ns",), namespaced=False),
    Kind(kind="Node", api_version="v1", resource="nodes", short_names=("no",), namespaced=False),
    Kind(kind="Pod", api_version="v1", resource="pods", short_names=("po",)),
    Kind(kind="Service", api_version="v1", resource="services", short_names=("svc",)),
    Kind(kind="Endpoints", api_version="v1", resource="endpoints", short_names=("ep",)),
    Kind(kind="Secret", api_version="v1", resource="secrets"),
    Kind(kind="ConfigMap", api_version="v1", resource="configmaps", short_names=("cm",)),
    Kind(kind="ReplicaSet", api_version="apps/v1", resource="replicasets", short_names=("rs",)),
    Kind(kind="Deployment", api_version="apps/v1", resource="deployments", short_names=("deploy",)),
    Kind(kind="DaemonSet", api_version="apps/v1", resource="daemonsets", short_names=("ds",)),
    Kind(kind="Job", api_version="batch/v1", resource="jobs"),
)
BY_KIND = {k.kind: k for k in KINDS}
# What a namespace's end removes, controllers before what they make (they would remake it)
NAMESPACED_ORDER = tuple(BY_KIND[k] for k in ("Deployment", "DaemonSet", "ReplicaSet", "Job", "Pod", "Service",
                                                "Endpoints", "ConfigMap", "Secret"))


def for_object(api_version: object, kind: object, field: str) -> Kind:
    """The Kind of an object's apiVersion and kind, or an error naming the field."""
    if not isinstance(kind, str) or not kind:
        raise InvalidArgument(f"{field}kind: required")
    if not isinstance(api_version, str) or not api_version:
        raise InvalidArgument(f"{field}apiVersion: required")
    found = BY_KIND.get(kind)
    if found is None:
        raise InvalidArgument(f"{field}kind: unknown kind {kind!r} (skiff serves {', '.join(sorted(BY_KIND))})")
    if api_version != found.api_version:
        raise InvalidArgument(f"{field}apiVersion: {kind} is served as {found.api_version!r}, not {api_version!r}")
    return found


def resolve(name: str) -> Kind:
    """A resource as kubectl accepts it: plural, singular, short name or kind, any case,
    optionally with its group (`deployments.apps`)."""
    wanted, _, group = name.lower().partition(".")
    for k in KINDS:
        names = {k.resource, k.kind.lower(), *k.short_names}
        if wanted in names and (not group or group == k.group):
            return k
    raise InvalidArgument(f"the server doesn't have a resource type {name!r}")
