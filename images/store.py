"""The content store: blobs by digest, image names in SQLite, garbage collection.

Layout under the root (default /var/lib/skiff/images):

    blobs/sha256/<hex>   committed blobs; a file here always holds exactly its digest's bytes
    ingest/<name>        blobs being written; `k-<sha256 of resume key>` survives the writer
                         so a later writer with the same key resumes, `t-<random>` does not
    images.db            image records (name -> manifest digest), SQLite, `PRAGMA user_version`
    gc.lock              flock: writers hold it shared, gc exclusive

Why each step (containerd `core/content/local/writer.go` and `store.go` work the same way):

- A blob is hashed as it is written and renamed into `blobs/` only after its digest and size
  check out and the data is fsynced, so a reader never sees a partial or wrong blob, whatever
  kills the writer. Two writers of one blob both succeed: the second rename replaces the
  first file with identical bytes.
- An ingest file is flocked by its writer. A second writer with the same resume key finds it
  locked and writes to a private ingest instead, rather than interleaving with the first.
  The lock is taken on an open file that may since have been renamed into `blobs/` or
  removed by gc, so the writer checks the path still names the file it locked.
- Resuming rehashes the bytes already there (hashlib cannot save its state); a resumed
  ingest that turns out wrong is deleted at commit, so the next attempt starts from zero.
- gc deletes what no image reaches. A blob just written is reached by nothing until its
  image is recorded, so whoever writes blobs holds the store (`hold()`, and every writer
  does) and gc waits for all holders: a pull wraps its blobs and `put_image` in one hold().
  The hold is a flock on an fd that is close-on-exec, but a child forked (not exec'd) while
  a hold is open shares it, and keeps gc waiting until the child exits.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import secrets
import threading
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from types import TracebackType
from typing import TYPE_CHECKING, BinaryIO

from skiff.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from skiff.oci import image as oci_image

if TYPE_CHECKING:
    import sqlite3

DEFAULT_ROOT = "/var/lib/skiff/images"
SCHEMA_VERSION = 1
# An ingest nobody has written to for this long belongs to a pull that will not come back.
STALE_INGEST_SECONDS = 24 * 3600
_CHUNK = 1 << 20


class InvalidDigestError(InvalidArgument):
    pass


class DigestMismatchError(InvalidArgument):
    def __init__(self, expected: str, actual: str) -> None:
        self.expected = expected
        self.actual = actual
        super().__init__(f"digest mismatch: expected {expected}, got {actual}")

    def __reduce__(self) -> tuple[object, ...]:
        return (DigestMismatchError, (self.expected, self.actual))


class SizeMismatchError(InvalidArgument):
    pass


class BlobNotFoundError(NotFound):
    pass


class ImageNotFoundError(NotFound):
    pass


class ImageInUseError(FailedPrecondition):
    pass


@dataclass(frozen=True, slots=True, kw_only=True)
class ImageRecord:
    name: str
    digest: str  # of the manifest or index the name points to
    media_type: str  # of that manifest or index
    created: datetime  # when the name was last pointed at `digest`, UTC


@dataclass(frozen=True, slots=True, kw_only=True)
class References:
    """What the recorded images reach: every blob digest, and the diff_ids of their layers
    (for whoever keeps unpacked layers by diff_id)."""

    blobs: frozenset[str]
    diff_ids: frozenset[str]


def check_digest(digest: str) -> str:
    """The hex part of a sha256 digest; InvalidDigestError naming anything else."""
    reason = oci_image.digest_error(digest)
    if reason is None and not digest.startswith("sha256:"):
        algorithm = digest.partition(":")[0]
        reason = (
            f"invalid digest {json.dumps(digest)}: unsupported algorithm {json.dumps(algorithm)},"
            " the store keeps sha256 only"
        )
    if reason is not None:
        raise InvalidDigestError(reason)
    return digest[len("sha256:") :]


def _os_error(action: str, e: OSError) -> Exception:
    """An OSError as a skiff error where it has a category; the caller raises it `from e`."""
    code = errno.errorcode.get(e.errno or 0, "")
    reason = f"{action}: {(e.strerror or str(e)).lower()}" + (f" ({code})" if code else "")
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return ResourceExhausted(reason)
    return OSError(e.errno, reason)


class BlobWriter:
    """One blob being written: `write` chunks from `offset` on, then `commit`. Leaving the
    `with` block without commit keeps a resumable ingest for the next writer with the same
    resume key and drops any other."""

    def __init__(
        self,
        store: ContentStore,
        *,
        expected_digest: str | None,
        expected_size: int | None,
        resume_key: str | None,
    ) -> None:
        if expected_digest is not None:
            check_digest(expected_digest)
        if expected_size is not None and expected_size < 0:
            raise InvalidArgument(f"expected size: must not be negative, got {expected_size}")
        self._store = store
        self._expected_digest = expected_digest
        self._expected_size = expected_size
        self._hash = hashlib.sha256()
        self._fd = -1
        self._done = False
        store._hold_acquire()
        self._held = True
        try:
            self._path, self._fd, self._keep = self._open_ingest(resume_key)
            self.offset = self._rehash()
        except BaseException:
            self.close()
            raise
        self.size = self.offset

    def _open_ingest(self, resume_key: str | None) -> tuple[str, int, bool]:
        ingest = self._store._ingest_dir
        if resume_key is not None:
            name = "k-" + hashlib.sha256(resume_key.encode()).hexdigest()
            path = os.path.join(ingest, name)
            for _ in range(10):
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    break  # another writer has this key: write privately
                try:
                    same = os.path.samestat(os.fstat(fd), os.stat(path))
                except FileNotFoundError:
                    same = False
                if same:
                    return path, fd, True
                os.close(fd)  # committed or collected between our open and our lock
        path = os.path.join(ingest, "t-" + secrets.token_hex(16))
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        # no other process knows the name yet, so this cannot block; it marks the file
        # as live for gc's abandoned-ingest sweep
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return path, fd, False

    def _rehash(self) -> int:
        size = os.fstat(self._fd).st_size
        if self._expected_size is not None and size > self._expected_size:
            os.ftruncate(self._fd, 0)  # longer than the blob: not a prefix of it
            return 0
        done = 0
        while done < size:
            chunk = os.pread(self._fd, min(_CHUNK, size - done), done)
            if not chunk:
                break
            self._hash.update(chunk)
            done += len(chunk)
        if done != size:
            os.ftruncate(self._fd, done)
        os.lseek(self._fd, done, os.SEEK_SET)  # writes go after what was hashed
        return done

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._done:
            raise FailedPrecondition("blob writer: already committed or closed")
        view = memoryview(data).cast("B")
        if self._expected_size is not None and self.size + len(view) > self._expected_size:
            self._discard()
            name = self._expected_digest or "being written"
            raise SizeMismatchError(f"blob {name}: more than the expected {self._expected_size} bytes")
        self._hash.update(view)
        try:
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
                self.size += n
        except OSError as e:
            # the hash now runs ahead of the file: this writer is done. What reached the
            # file is a true prefix, so a resumable ingest stays for the next writer, unless
            # the disk is full: then its space is worth more than the bytes
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                self._discard()
            self.close()
            raise _os_error(f"write {self._path}", e) from e

    def commit(self) -> str:
        """Check digest and size, then make the blob visible; its digest. On a mismatch
        the ingest is deleted and nothing of it stays."""
        if self._done:
            raise FailedPrecondition("blob writer: already committed or closed")
        actual = "sha256:" + self._hash.hexdigest()
        if self._expected_size is not None and self.size != self._expected_size:
            self._discard()
            name = self._expected_digest or actual
            raise SizeMismatchError(
                f"blob {name}: truncated, {self.size} of {self._expected_size} bytes"
            )
        if self._expected_digest is not None and actual != self._expected_digest:
            self._discard()
            raise DigestMismatchError(self._expected_digest, actual)
        target = self._store._blob_path(actual)
        try:
            os.fsync(self._fd)
            os.rename(self._path, target)
            self._store._sync_blob_dir()
        except OSError as e:
            self._discard()
            raise _os_error(f"commit {actual}", e) from e
        self._done = True
        self.close()
        return actual

    def _discard(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path)
        self._done = True
        self.close()

    def close(self) -> None:
        """Release the ingest: kept if resumable, else deleted. Idempotent."""
        if self._fd >= 0:
            if not self._done and not self._keep:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._path)
            os.close(self._fd)  # drops the flock
            self._fd = -1
        if self._held:
            self._held = False
            self._store._hold_release()
        self._done = True

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class ContentStore:
    """Blobs and image records under `root`. Safe to share between threads and processes."""

    def __init__(self, root: str = DEFAULT_ROOT) -> None:
        self.root = os.path.abspath(root)
        self._blob_dir = os.path.join(self.root, "blobs", "sha256")
        self._ingest_dir = os.path.join(self.root, "ingest")
        self._db_path = os.path.join(self.root, "images.db")
        self._lock_path = os.path.join(self.root, "gc.lock")
        os.makedirs(self._blob_dir, mode=0o755, exist_ok=True)
        os.makedirs(self._ingest_dir, mode=0o700, exist_ok=True)
        self._holds = 0
        self._hold_fd = -1
        self._hold_mutex = threading.Lock()
        self._schema_ready = False

    # --- blobs --------------------------------------------------------------------

    def _blob_path(self, digest: str) -> str:
        return os.path.join(self._blob_dir, check_digest(digest))

    def _sync_blob_dir(self) -> None:
        fd = os.open(self._blob_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def has(self, digest: str) -> bool:
        return os.path.exists(self._blob_path(digest))

    def path(self, digest: str) -> str:
        path = self._blob_path(digest)
        if not os.path.exists(path):
            raise BlobNotFoundError(f"blob {digest} not found")
        return path

    def size(self, digest: str) -> int:
        try:
            return os.stat(self._blob_path(digest)).st_size
        except FileNotFoundError:
            raise BlobNotFoundError(f"blob {digest} not found") from None

    def open(self, digest: str) -> BinaryIO:
        try:
            return open(self._blob_path(digest), "rb")
        except FileNotFoundError:
            raise BlobNotFoundError(f"blob {digest} not found") from None

    def read(self, digest: str) -> bytes:
        with self.open(digest) as f:
            return f.read()

    def writer(
        self,
        *,
        expected_digest: str | None = None,
        expected_size: int | None = None,
        resume_key: str | None = None,
    ) -> BlobWriter:
        """A writer for one blob. With `resume_key` (the expected digest is a good one), the
        bytes a killed or failed writer with the same key left are kept: `.offset` says how
        many, and the caller continues from there."""
        return BlobWriter(
            self, expected_digest=expected_digest, expected_size=expected_size, resume_key=resume_key
        )

    def put(self, data: bytes, expected_digest: str | None = None) -> str:
        if expected_digest is not None and self.has(expected_digest):
            # stored already: skip the write and fsync, but the caller's bytes must still
            # be what they claim, or a caller would go on to use bytes that are not the blob
            actual = "sha256:" + hashlib.sha256(data).hexdigest()
            if actual != expected_digest:
                raise DigestMismatchError(expected_digest, actual)
            return actual
        with self.writer(expected_digest=expected_digest, expected_size=None) as w:
            w.write(data)
            return w.commit()

    def blobs(self) -> list[str]:
        return sorted(
            "sha256:" + name
            for name in os.listdir(self._blob_dir)
            if oci_image.digest_error("sha256:" + name) is None
        )

    # --- holding off gc -----------------------------------------------------------

    def _hold_acquire(self) -> None:
        with self._hold_mutex:
            if self._holds == 0:
                fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_SH)
                except BaseException:
                    os.close(fd)
                    raise
                self._hold_fd = fd
            self._holds += 1

    def _hold_release(self) -> None:
        with self._hold_mutex:
            self._holds -= 1
            if self._holds == 0:
                os.close(self._hold_fd)
                self._hold_fd = -1

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """Keep gc (in any process) from running: wrap writing an image's blobs and
        recording it, so gc never sees the blobs before the image that reaches them."""
        self._hold_acquire()
        try:
            yield
        finally:
            self._hold_release()

    # --- image records ------------------------------------------------------------

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        import sqlite3  # only callers that touch records pay for it

        try:
            db = sqlite3.connect(self._db_path, timeout=30, isolation_level=None)
            try:
                if not self._schema_ready:
                    self._migrate(db)
                db.execute("BEGIN IMMEDIATE")
                try:
                    yield db
                except BaseException:
                    if db.in_transaction:  # sqlite may have rolled back already (SQLITE_FULL)
                        db.execute("ROLLBACK")
                    raise
                db.execute("COMMIT")
            finally:
                db.close()
        except sqlite3.Error as e:
            reason = f"{self._db_path}: {e}"
            name = getattr(e, "sqlite_errorname", "")
            if name == "SQLITE_FULL":
                raise ResourceExhausted(reason) from e
            if name in ("SQLITE_BUSY", "SQLITE_LOCKED"):
                raise Unavailable(reason) from e
            raise

    def _migrate(self, db: sqlite3.Connection) -> None:
        db.execute("BEGIN IMMEDIATE")
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise FailedPrecondition(
                    f"{self._db_path}: schema version {version} is newer than this skiff's {SCHEMA_VERSION}"
                )
            if version == 0:
                db.execute(
                    "CREATE TABLE images (name TEXT PRIMARY KEY, digest TEXT NOT NULL,"
                    " media_type TEXT NOT NULL, created_ns INTEGER NOT NULL)"
                )
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        self._schema_ready = True

    @staticmethod
    def _record(row: tuple[str, str, str, int]) -> ImageRecord:
        name, digest, media_type, created_ns = row
        created = datetime.fromtimestamp(created_ns / 1e9, tz=timezone.utc)
        return ImageRecord(name=name, digest=digest, media_type=media_type, created=created)

    def put_image(self, name: str, manifest_digest: str, media_type: str) -> ImageRecord:
        """Point `name` at a stored manifest or index, replacing what it pointed at."""
        if not name:
            raise InvalidArgument("image name: must not be empty")
        if media_type not in oci_image.MANIFEST_MEDIA_TYPES | oci_image.INDEX_MEDIA_TYPES:
            raise InvalidArgument(f"image {name!r}: media type {media_type!r} is not a manifest or index")
        with self.hold():
            self.path(manifest_digest)
            row = (name, manifest_digest, media_type, time.time_ns())
            with self._db() as db:
                db.execute("INSERT OR REPLACE INTO images VALUES (?, ?, ?, ?)", row)
        return self._record(row)

    def image(self, name: str) -> ImageRecord:
        with self._db() as db:
            row = db.execute("SELECT * FROM images WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise ImageNotFoundError(f"image {name!r} not found")
        return self._record(row)

    def images(self) -> list[ImageRecord]:
        with self._db() as db:
            rows = db.execute("SELECT * FROM images ORDER BY name").fetchall()
        return [self._record(row) for row in rows]

    def tag(self, source: str, target: str) -> ImageRecord:
        """Point `target` at what `source` points at."""
        record = self.image(source)
        return self.put_image(target, record.digest, record.media_type)

    def remove_image(
        self, name: str, *, in_use: Callable[[str], bool] | Collection[str] | None = None
    ) -> ImageRecord:
        """Forget `name` (its blobs stay until gc). `in_use` is asked about every blob the
        image reaches (manifest, config, layers); when one is in use and no other name
        reaches the same manifest, the removal is refused with ImageInUseError."""
        record = self.image(name)
        if in_use is not None:
            used = in_use if callable(in_use) else in_use.__contains__
            with self._db() as db:
                others = db.execute(
                    "SELECT count(*) FROM images WHERE digest = ? AND name != ?", (record.digest, name)
                ).fetchone()[0]
            if not others:
                blobs: set[str] = set()
                self._walk(record.digest, record.media_type, blobs, set())
                busy = sorted(d for d in blobs if used(d))
                if busy:
                    raise ImageInUseError(f"image {name!r} is in use ({busy[0]})")
        with self._db() as db:
            cur = db.execute("DELETE FROM images WHERE name = ? AND digest = ?", (name, record.digest))
            if cur.rowcount == 0:
                # renamed or re-pointed since we looked: let the caller decide again
                raise FailedPrecondition(f"image {name!r} changed while being removed")
        return record

    # --- garbage collection -------------------------------------------------------

    def _walk(self, digest: str, media_type: str, blobs: set[str], diff_ids: set[str]) -> None:
        """Add to `blobs` every stored blob `digest` reaches. Children of an index that were
        never pulled (other platforms) are simply absent. A blob that does not parse is
        kept, its children are not: the image is broken either way."""
        if digest in blobs or not self.has(digest):
            return
        blobs.add(digest)
        try:
            if media_type in oci_image.INDEX_MEDIA_TYPES:
                index = oci_image.parse_index(self.read(digest), source=digest)
                for d in index.manifests:
                    self._walk(d.digest, d.media_type, blobs, diff_ids)
            elif media_type in oci_image.MANIFEST_MEDIA_TYPES:
                manifest = oci_image.parse_manifest(self.read(digest), source=digest)
                self._walk(manifest.config.digest, manifest.config.media_type, blobs, diff_ids)
                for d in manifest.layers:
                    self._walk(d.digest, d.media_type, blobs, diff_ids)
            elif media_type in oci_image.CONFIG_MEDIA_TYPES:
                config = oci_image.parse_image(self.read(digest), source=digest)
                diff_ids.update(config.rootfs.diff_ids)
        except InvalidArgument:
            pass

    def references(self) -> References:
        blobs: set[str] = set()
        diff_ids: set[str] = set()
        for record in self.images():
            self._walk(record.digest, record.media_type, blobs, diff_ids)
        return References(blobs=frozenset(blobs), diff_ids=frozenset(diff_ids))

    def gc(self, *, stale_ingest_seconds: float = STALE_INGEST_SECONDS) -> list[str]:
        """Delete every blob no image reaches, and ingests abandoned for longer than
        `stale_ingest_seconds`; the digests deleted. Waits for every hold() to end."""
        with self._hold_mutex:
            if self._holds:
                raise FailedPrecondition("gc: this store is held by a writer in this process")
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            live = self.references().blobs
            removed = []
            for digest in self.blobs():
                if digest not in live:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self._blob_path(digest))
                    removed.append(digest)
            self._gc_ingests(stale_ingest_seconds)
            return removed
        finally:
            os.close(fd)

    def _gc_ingests(self, max_age: float) -> None:
        now = time.time()
        for name in os.listdir(self._ingest_dir):
            path = os.path.join(self._ingest_dir, name)
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if now - os.fstat(fd).st_mtime > max_age:
                    os.unlink(path)
            except (BlockingIOError, FileNotFoundError):
                pass  # a writer has it, or it just finished
            finally:
                os.close(fd)
