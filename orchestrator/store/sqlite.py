"""The store in one SQLite file (the default): the objects, an event log for watches, and the
store's revision, each write one transaction.

    objects(key, revision, value)     the current object under each key
    events(revision, type, key, value)   every write, the last KEEP_EVENTS of them
    meta(name, value)                 'revision': the last one given; 'compacted': the
                                      newest revision no longer in events

WAL mode: readers (lists, watches) never wait for the writer. A watch in this process is
woken by the write; one in another process looks again every POLL seconds.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from skiff.errors import Aborted, AlreadyExists, InvalidArgument, NotFound, OutOfRange
from skiff.orchestrator.store import Event, EventType, Listing

KEEP_EVENTS = 10_000
POLL = 0.25  # seconds
_SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (key TEXT PRIMARY KEY, revision INTEGER NOT NULL, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (revision INTEGER PRIMARY KEY, type TEXT NOT NULL, key TEXT NOT NULL,
                                   value TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS events_by_key ON events (key, revision);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta VALUES ('revision', 0), ('compacted', 0);
"""


class SqliteStore:
    def __init__(self, path: str, *, keep_events: int = KEEP_EVENTS) -> None:
        self.path = path
        self.keep_events = keep_events
        # one connection, used under the lock: sqlite3 objects are not to be shared between
        # threads at once; autocommit, with explicit transactions for writes
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self._lock = threading.Lock()
        self._changed = threading.Condition()
        self._writes = 0
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")  # WAL: a power cut loses the last writes, never the file
            self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- writes --------------------------------------------------------------------------------

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        with self._changed:
            self._writes += 1
            self._changed.notify_all()

    def _write(self, db: sqlite3.Connection, kind: EventType, key: str, obj: dict[str, Any]) -> dict[str, Any]:
        revision = _meta(db, "revision") + 1
        metadata = obj.get("metadata")
        if not isinstance(metadata, dict):
            raise InvalidArgument(f"{key}: metadata: required, an object")
        written = {**obj, "metadata": {**metadata, "resourceVersion": str(revision)}}
        text = json.dumps(written, separators=(",", ":"))
        if kind is EventType.DELETED:
            db.execute("DELETE FROM objects WHERE key = ?", (key,))
        else:
            db.execute("INSERT OR REPLACE INTO objects VALUES (?, ?, ?)", (key, revision, text))
        db.execute("INSERT INTO events VALUES (?, ?, ?, ?)", (revision, kind.value, key, text))
        db.execute("UPDATE meta SET value = ? WHERE name = 'revision'", (revision,))
        if revision % 1000 == 0 and revision > self.keep_events:
            oldest_kept = revision - self.keep_events
            db.execute("DELETE FROM events WHERE revision <= ?", (oldest_kept,))
            db.execute("UPDATE meta SET value = ? WHERE name = 'compacted'", (oldest_kept,))
        return written

    def create(self, key: str, obj: dict[str, Any]) -> dict[str, Any]:
        with self._transaction() as db:
            if db.execute("SELECT 1 FROM objects WHERE key = ?", (key,)).fetchone():
                raise AlreadyExists(f"{key}: already exists")
            return self._write(db, EventType.ADDED, key, obj)

    def update(self, key: str, obj: dict[str, Any], *, expected: str | None = None) -> dict[str, Any]:
        with self._transaction() as db:
            _current(db, key, expected)
            return self._write(db, EventType.MODIFIED, key, obj)

    def delete(self, key: str, *, expected: str | None = None) -> dict[str, Any]:
        with self._transaction() as db:
            return self._write(db, EventType.DELETED, key, _current(db, key, expected))

    # -- reads ---------------------------------------------------------------------------------

    def get(self, key: str) -> dict[str, Any]:
        with self._lock:
            row = self._db.execute("SELECT value FROM objects WHERE key = ?", (key,)).fetchone()
        if row is None:
            raise NotFound(f"{key}: not found")
        return _load(row[0])

    def list(self, prefix: str) -> Listing:
        with self._lock:
            self._db.execute("BEGIN")  # the items and the revision from one snapshot
            try:
                rows = self._db.execute("SELECT value FROM objects WHERE key >= ? AND key < ? ORDER BY key",
                                        (prefix, _end(prefix))).fetchall()
                revision = _meta(self._db, "revision")
            finally:
                self._db.execute("COMMIT")
        return Listing(items=[_load(r[0]) for r in rows], revision=revision)

    def watch(self, prefix: str, since: int, *, timeout: float) -> Iterator[Event]:
        last = since
        deadline = time.monotonic() + timeout
        while True:
            with self._changed:
                writes = self._writes
            with self._lock:
                compacted = _meta(self._db, "compacted")
                rows = self._db.execute(
                    "SELECT revision, type, key, value FROM events WHERE revision > ? AND key >= ? AND key < ? "
                    "ORDER BY revision LIMIT 500", (last, prefix, _end(prefix))).fetchall()
            if last < compacted:
                raise OutOfRange(f"watch from resourceVersion {since}: too old, the store keeps the events "
                                 f"after {compacted}: list again and watch from there")
            for revision, kind, key, value in rows:
                last = revision
                yield Event(type=EventType(kind), key=key, object=_load(value), revision=revision)
            if rows:
                deadline = time.monotonic() + timeout
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            with self._changed:
                if self._writes == writes:
                    self._changed.wait(min(remaining, POLL))


def _current(db: sqlite3.Connection, key: str, expected: str | None) -> dict[str, Any]:
    row = db.execute("SELECT revision, value FROM objects WHERE key = ?", (key,)).fetchone()
    if row is None:
        raise NotFound(f"{key}: not found")
    if expected and expected != str(row[0]):
        raise Aborted(f"{key}: the object has been modified (resourceVersion {expected} was read, it is now "
                      f"{row[0]}): read it again and apply the change to the latest version")
    return _load(row[1])


def _meta(db: sqlite3.Connection, name: str) -> int:
    return int(db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()[0])


def _end(prefix: str) -> str:
    """The first key after every key starting with `prefix` (keys compare as UTF-8 bytes)."""
    return prefix + "\U0010ffff"


def _load(text: str) -> dict[str, Any]:
    obj: dict[str, Any] = json.loads(text)
    return obj

