"""The store in etcd (Debian's etcd-server), for a control plane that outgrows one machine,
through etcd's v3 JSON gateway (etcd3gw, the client OpenStack maintains).

As the Kubernetes API server keeps objects in etcd (apiserver `pkg/storage/etcd3/store.go`):
a value is the object without its resourceVersion, which is the key's mod_revision when it is
read; each write is one transaction whose compare says what must still be true (the key is
absent for a create, has the expected mod_revision for an update or delete). etcd's revision
is the store's revision, and old revisions are compacted as SqliteStore does, so a watch from
before them is refused the same way. Watches are streamed by the gateway itself; etcd3gw's
watcher runs a thread per watch and does not pass on a compaction.
"""

from __future__ import annotations

import base64
import json
import urllib.parse
from collections.abc import Iterator
from typing import Any

import requests
from etcd3gw import exceptions as etcd_errors
from etcd3gw.client import Etcd3Client

from skiff.errors import Aborted, AlreadyExists, InvalidArgument, NotFound, OutOfRange, Unavailable
from skiff.orchestrator.store import Event, EventType, Listing
from skiff.orchestrator.store.sqlite import KEEP_EVENTS


class EtcdStore:
    def __init__(self, url: str, *, keep_events: int = KEEP_EVENTS, timeout: float = 10.0) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidArgument(f"etcd url {url!r}: want http://HOST:PORT or https://HOST:PORT")
        self.url = url
        self.keep_events = keep_events
        self._client = Etcd3Client(host=parts.hostname, port=parts.port or 2379, protocol=parts.scheme,
                                               timeout=timeout, api_path="/v3/")

    def close(self) -> None:
        self._client.session.close()

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            reply: dict[str, Any] = self._client.post(self._client.get_url(path), json=body)
        except etcd_errors.Etcd3Exception as e:
            text = str(getattr(e, "detail_text", None) or e)
            raise Unavailable(f"etcd at {self.url}: {path}: {text.strip()}") from None
        return reply

    def _txn(self, compare: list[dict[str, Any]], success: list[dict[str, Any]],
             failure: list[dict[str, Any]]) -> dict[str, Any]:
        return self._post("/kv/txn", {"compare": compare, "success": success, "failure": failure})

    # -- writes --------------------------------------------------------------------------------

    def create(self, key: str, obj: dict[str, Any]) -> dict[str, Any]:
        value = _encode_object(key, obj)
        reply = self._txn([{"key": _b64(key), "result": "EQUAL", "target": "CREATE", "create_revision": "0"}],
                          [{"request_put": {"key": _b64(key), "value": value}}], [])
        if not reply.get("succeeded"):
            raise AlreadyExists(f"{key}: already exists")
        return self._written(obj, reply)

    def update(self, key: str, obj: dict[str, Any], *, expected: str | None = None) -> dict[str, Any]:
        value = _encode_object(key, obj)
        reply = self._txn(_still(key, expected), [{"request_put": {"key": _b64(key), "value": value}}],
                          [{"request_range": {"key": _b64(key)}}])
        if not reply.get("succeeded"):
            _refused(key, expected, reply)
        return self._written(obj, reply)

    def delete(self, key: str, *, expected: str | None = None) -> dict[str, Any]:
        reply = self._txn(_still(key, expected), [{"request_delete_range": {"key": _b64(key), "prev_kv": True}}],
                          [{"request_range": {"key": _b64(key)}}])
        if not reply.get("succeeded"):
            _refused(key, expected, reply)
        previous = reply["responses"][0]["response_delete_range"]["prev_kvs"][0]
        return self._written(_decode_object(previous["value"], 0), reply)

    def _written(self, obj: dict[str, Any], reply: dict[str, Any]) -> dict[str, Any]:
        revision = int(reply["header"]["revision"])
        if revision % 1000 == 0 and revision > self.keep_events:
            self._post("/kv/compaction", {"revision": str(revision - self.keep_events)})
        return _with_version(obj, revision)

    # -- reads ---------------------------------------------------------------------------------

    def get(self, key: str) -> dict[str, Any]:
        kvs = self._post("/kv/range", {"key": _b64(key)}).get("kvs") or []
        if not kvs:
            raise NotFound(f"{key}: not found")
        return _decode_object(kvs[0]["value"], int(kvs[0]["mod_revision"]))

    def list(self, prefix: str) -> Listing:
        reply = self._post("/kv/range", {"key": _b64(prefix), "range_end": _b64(_end(prefix))})
        items = [_decode_object(kv["value"], int(kv["mod_revision"])) for kv in reply.get("kvs") or []]
        return Listing(items=items, revision=int(reply["header"]["revision"]))

    def watch(self, prefix: str, since: int, *, timeout: float) -> Iterator[Event]:
        # One streamed POST to the gateway; its read timeout is the watch's: it ends the
        # stream after `timeout` seconds without a line. Not under 2 s: the gateway's first
        # answer (the watch created, or its revision compacted) can take longer on a busy host.
        body: dict[str, Any] = {"create_request": {"key": _b64(prefix), "range_end": _b64(_end(prefix)),
                                                   "start_revision": str(since + 1), "prev_kv": True}}
        try:
            with self._client.session.post(self._client.get_url("/watch"), json=body, stream=True,
                                           timeout=(self._client.timeout, max(timeout, 2.0))) as stream:
                for line in stream.iter_lines():
                    result = json.loads(line).get("result", {}) if line.strip() else {}
                    if result.get("compact_revision"):
                        raise OutOfRange(f"watch from resourceVersion {since}: too old, etcd keeps the revisions "
                                         f"from {result['compact_revision']}: list again and watch from there")
                    for raw in result.get("events") or []:
                        yield _event(raw)
        except requests.exceptions.ConnectionError as e:
            if "timed out" not in str(e).lower():
                raise Unavailable(f"etcd at {self.url}: watch {prefix}: {e}") from None


def _event(raw: dict[str, Any]) -> Event:
    kv = raw["kv"]
    revision = int(kv["mod_revision"])
    key = base64.b64decode(kv["key"]).decode()
    if raw.get("type") == "DELETE":  # the JSON gateway leaves out PUT, the enum's zero value
        return Event(type=EventType.DELETED, key=key, object=_decode_object(raw["prev_kv"]["value"], revision),
                     revision=revision)
    kind = EventType.ADDED if kv.get("create_revision") == kv.get("mod_revision") else EventType.MODIFIED
    return Event(type=kind, key=key, object=_decode_object(kv["value"], revision), revision=revision)


def _still(key: str, expected: str | None) -> list[dict[str, Any]]:
    """The compare of an update or delete: the key is there, at `expected` if given."""
    if expected:
        return [{"key": _b64(key), "result": "EQUAL", "target": "MOD", "mod_revision": expected}]
    return [{"key": _b64(key), "result": "GREATER", "target": "CREATE", "create_revision": "0"}]


def _refused(key: str, expected: str | None, reply: dict[str, Any]) -> None:
    kvs = reply["responses"][0]["response_range"].get("kvs") or []
    if not kvs:
        raise NotFound(f"{key}: not found")
    raise Aborted(f"{key}: the object has been modified (resourceVersion {expected} was read, it is now "
                  f"{kvs[0]['mod_revision']}): read it again and apply the change to the latest version")


def _encode_object(key: str, obj: dict[str, Any]) -> str:
    metadata = obj.get("metadata")
    if not isinstance(metadata, dict):
        raise InvalidArgument(f"{key}: metadata: required, an object")
    stored = {**obj, "metadata": {k: v for k, v in metadata.items() if k != "resourceVersion"}}
    return _b64(json.dumps(stored, separators=(",", ":")))


def _decode_object(value: str, revision: int) -> dict[str, Any]:
    return _with_version(json.loads(base64.b64decode(value)), revision)


def _with_version(obj: dict[str, Any], revision: int) -> dict[str, Any]:
    return {**obj, "metadata": {**obj["metadata"], "resourceVersion": str(revision)}}


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _end(prefix: str) -> str:
    """etcd's range end for a prefix: the prefix with its last byte one higher."""
    raw = prefix.encode()
    return (raw[:-1] + bytes([raw[-1] + 1])).decode()
