"""Objects from what a user applies: YAML (one or more documents, as `kubectl apply -f` reads
them) or JSON, a `List` flattened into its items. Every object is checked before any is
returned, so an apply with one bad object applies nothing; each error names the document and
the field (`app.yaml: document 2 (Deployment web): spec.replicas: -1: must be greater than or
equal to 0`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import yaml

from skiff.errors import InvalidArgument
from skiff.orchestrator.api import kinds, validation
from skiff.orchestrator.api.meta import check_metadata


@dataclass(frozen=True, slots=True, kw_only=True)
class Manifest:
    kind: kinds.Kind
    object: dict[str, Any]   # metadata checked and its namespace settled

    @property
    def key(self) -> str:
        metadata = self.object["metadata"]
        return self.kind.key(metadata.get("namespace", ""), metadata["name"])


def load(text: str, source: str, *, namespace: str | None = None) -> list[Manifest]:
    """The objects in `text` (from `source`, named in errors), in order. `namespace`: the one
    the command names (`-n`); an object naming another one is refused."""
    documents = _documents(text, source)
    flat: list[tuple[str, Any]] = []
    for n, doc in enumerate(documents, start=1):
        where = f"{source}: document {n}" if len(documents) > 1 else source
        if isinstance(doc, dict) and doc.get("kind") == "List":
            items = doc.get("items")
            if not isinstance(items, list):
                raise InvalidArgument(f"{where}: items: a List must hold a list of objects")
            flat += [(f"{where}, items[{i}]", item) for i, item in enumerate(items)]
        elif doc is not None:  # an empty document (a trailing ---) is nothing to apply
            flat.append((where, doc))
    if not flat:
        raise InvalidArgument(f"{source}: no objects in it")
    return [_manifest(doc, where, namespace) for where, doc in flat]


def _documents(text: str, source: str) -> list[Any]:
    if text.lstrip().startswith(("{", "[")):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise InvalidArgument(f"{source}: not valid JSON: {e}") from None
        return data if isinstance(data, list) else [data]
    try:
        return list(yaml.load_all(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e)
        raise InvalidArgument(f"{source}: not valid YAML{line}: {problem}") from None


def _manifest(doc: Any, where: str, namespace: str | None) -> Manifest:
    if not isinstance(doc, dict):
        raise InvalidArgument(f"{where}: must be an object with apiVersion, kind and metadata, "
                              f"not {type(doc).__name__}")
    name = (doc.get("metadata") or {}).get("name") if isinstance(doc.get("metadata"), dict) else None
    label = f"{where} ({doc.get('kind')}{' ' + name if isinstance(name, str) else ''}): "
    kind = kinds.for_object(doc.get("apiVersion"), doc.get("kind"), label)
    obj = {**doc, "metadata": check_metadata(doc, kind, label, namespace=namespace)}
    validation.check(obj, label)
    return Manifest(kind=kind, object=obj)
