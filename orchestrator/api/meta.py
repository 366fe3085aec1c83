"""ObjectMeta: names, namespace, labels, annotations, ownerReferences, and the fields the server
sets (uid, creationTimestamp, generation). Name rules follow apimachinery `validation.go`: a
DNS-1123 subdomain for most kinds, a DNS-1123 label for namespaces and services (their names
become DNS labels)."""

from __future__ import annotations

import re
from typing import Any

from skiff.errors import InvalidArgument
from skiff.orchestrator.api.kinds import Kind
from skiff.orchestrator.labels import check_labels

_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
LABEL_NAMED = {"Namespace", "Service"}
DEFAULT_NAMESPACE = "default"


def check_dns_label(value: object, field: str) -> str:
    if not isinstance(value, str) or len(value) > 63 or not _LABEL.fullmatch(value):
        raise InvalidArgument(f"{field}: {value!r}: must be a DNS-1123 label: at most 63 lower case letters, "
                              "digits or '-', starting and ending with a letter or digit")
    return value


def check_subdomain(value: object, field: str) -> str:
    if not isinstance(value, str) or len(value) > 253 or not _SUBDOMAIN.fullmatch(value):
        raise InvalidArgument(f"{field}: {value!r}: must be a DNS-1123 subdomain: at most 253 lower case "
                              "letters, digits, '-' or '.', starting and ending with a letter or digit")
    return value


def check_metadata(obj: dict[str, Any], kind: Kind, field: str, *, namespace: str | None) -> dict[str, Any]:
    """The object's metadata, checked, with its namespace settled (`namespace`: the one the
    request names, which the object's own must agree with). Returns a new metadata dict."""
    metadata = obj.get("metadata")
    if not isinstance(metadata, dict):
        raise InvalidArgument(f"{field}metadata: required, an object with at least a name")
    name = metadata.get("name")
    if name is None:
        raise InvalidArgument(f"{field}metadata.name: required")
    (check_dns_label if kind.kind in LABEL_NAMED else check_subdomain)(name, f"{field}metadata.name")
    out = dict(metadata)
    if kind.namespaced:
        own = metadata.get("namespace")
        if own is not None:
            check_dns_label(own, f"{field}metadata.namespace")
            if namespace and own != namespace:
                raise InvalidArgument(f"{field}metadata.namespace: {own!r} does not match the namespace of the "
                                      f"request, {namespace!r}")
        out["namespace"] = own or namespace or DEFAULT_NAMESPACE
    else:
        out.pop("namespace", None)
    out["labels"] = check_labels(metadata.get("labels"), f"{field}metadata.labels")
    annotations = metadata.get("annotations") or {}
    if not isinstance(annotations, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                    for k, v in annotations.items()):
        raise InvalidArgument(f"{field}metadata.annotations: must be a map of strings to strings")
    out["annotations"] = dict(annotations)
    for n, ref in enumerate(metadata.get("ownerReferences") or []):
        where = f"{field}metadata.ownerReferences[{n}]"
        if not isinstance(ref, dict):
            raise InvalidArgument(f"{where}: must be an object")
        for required in ("apiVersion", "kind", "name", "uid"):
            if not isinstance(ref.get(required), str) or not ref[required]:
                raise InvalidArgument(f"{where}.{required}: required")
    if sum(1 for ref in metadata.get("ownerReferences") or [] if ref.get("controller")) > 1:
        raise InvalidArgument(f"{field}metadata.ownerReferences: only one reference can have controller set to true")
    return out
