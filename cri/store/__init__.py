"""Persistent CRI state: one JSON file per pod sandbox or container, and the names they reserve.

Modelled on containerd `internal/cri/store/{sandbox,container}/` and its `registrar`, with
two differences. containerd keeps records in memory and rebuilds them from its metadata
store at start; skiff keeps no cache: every call reads the files under a lock, so a second
process (a CLI next to the daemon) never sees or writes stale state. And the name
reservations are persisted, because containerd's in-memory registrar is what left nodes on
"failed to reserve sandbox name" when its state and the kernel disagreed after a restart
(containerd/cri#1014, containerd #10842): `cri/recovery.py` checks these records against
the kernel and releases what the dead held.

Layout under a store's directory (`<state_root>/sandboxes/`, `<state_root>/containers/`):

    <id>.json        one record: {"version": 1, ...fields}
    _names/<sha256 of the name>   one reservation: {"version": 1, "name": ..., "id": ...}
    _owners/<id>/<sha256 of the name>   empty: the names <id> holds, which `delete` releases
    .<file>.tmp      a write in progress; a leftover one is an interrupted write, removed by load()
    .lock            flock'ed around every read-modify-write

Every write goes to the temp file, is fsync'ed and renamed over the record (STYLE.md §6),
so a reader sees the old record or the new one, never half of one.
A file per name, not one index of all: a reservation costs the same with 500 pods as with
none (an index rewritten whole took 0.6 ms more per create at 1,000 names). A skiff before
this kept the index in `_names.json`; `load` moves it into files.
`version` is the record format: a record written by a newer skiff is refused rather than
misread.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import enum
import fcntl
import hashlib
import json
import os
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from skiff.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound

RECORD_VERSION = 1
"""The record format this skiff writes and the newest it reads."""

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,199}")
_SUFFIX = ".json"
_NAMES = "_names"  # ids cannot start with "_": these never shadow a record
_OWNERS = "_owners"
_LEGACY_NAMES = "_names.json"
_TMP = ".tmp"


class RecordError(FailedPrecondition):
    """A record file that cannot be used as it is on disk."""


class CorruptRecord(RecordError):
    pass


class UnsupportedRecordVersion(RecordError):
    pass


class StoredRecord(Protocol):
    @property
    def id(self) -> str: ...

    def to_json(self) -> dict[str, Any]: ...


R = TypeVar("R", bound=StoredRecord)
E = TypeVar("E", bound=enum.Enum)


class Fields:
    """Typed reads from a decoded record, each failure naming the file and the field."""

    def __init__(self, data: Mapping[str, Any], source: str) -> None:
        self._data = data
        self._source = source

    def _get(self, key: str, kind: type | tuple[type, ...], what: str) -> Any:
        if key not in self._data:
            raise CorruptRecord(f"{self._source}: {key}: missing")
        value = self._data[key]
        # bool is an int to isinstance; a record never stores one where an int belongs
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
            raise CorruptRecord(f"{self._source}: {key}: must be {what}, not {value!r}")
        return value

    def text(self, key: str, *, added: bool = False) -> str:
        """`added`: a field added to this record version later, "" in a record written before
        it (an older skiff reads only the fields it knows, so it misreads nothing)."""
        if added and key not in self._data:
            return ""
        value: str = self._get(key, str, "a string")
        return value

    def integer(self, key: str) -> int:
        value: int = self._get(key, int, "an integer")
        return value

    def str_map(self, key: str) -> dict[str, str]:
        value: dict[str, Any] = self._get(key, dict, "an object")
        for k, v in value.items():
            if not isinstance(v, str):
                raise CorruptRecord(f"{self._source}: {key}.{k}: must be a string, not {v!r}")
        return dict(value)

    def strings(self, key: str) -> tuple[str, ...]:
        value: list[Any] = self._get(key, list, "a list")
        if not all(isinstance(v, str) for v in value):
            raise CorruptRecord(f"{self._source}: {key}: must be a list of strings")
        return tuple(value)

    def blob(self, key: str) -> bytes:
        text = self.text(key)
        try:
            return base64.b64decode(text, validate=True)
        except binascii.Error as e:
            raise CorruptRecord(f"{self._source}: {key}: not base64: {e}") from e

    def enum(self, key: str, kind: type[E]) -> E:
        name = self.text(key)
        try:
            return kind[name]
        except KeyError:
            raise CorruptRecord(
                f"{self._source}: {key}: {name!r} is not one of {', '.join(kind.__members__)}"
            ) from None


def encode_bytes(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadReport(Generic[R]):
    """What `RecordStore.load` found: the usable records and one line per skipped file."""

    records: tuple[R, ...]
    problems: tuple[str, ...]


def check_id(value: str, kind: str) -> str:
    if not _ID.fullmatch(value):
        raise InvalidArgument(
            f"{kind} id {value!r}: must be 1-200 letters, digits, '_', '.' or '-', "
            "not starting with '_', '.' or '-'"
        )
    return value


class RecordStore(Generic[R]):
    """Records of one kind under one directory, plus the names they reserve.

    Names follow containerd's registrar: `reserve_name` binds a name to one id (again for the
    same id is fine), `release_name` undoes it on a failed create, and `delete` releases every
    name of the id. Reserving is separate from `add` because the CRI reserves a name before it
    creates what the record will describe, so a racing create with the same name fails fast.
    """

    def __init__(self, root: str | os.PathLike[str], *, kind: str,
                 decode: Callable[[Fields], R]) -> None:
        self.root = Path(root)
        self.kind = kind
        self._decode = decode
        self._thread_lock = threading.Lock()
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)

    # -- locking and files ---------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # The thread lock serializes the daemon's own threads; flock (on a fresh open file
        # description each time) serializes against other processes sharing the directory.
        with self._thread_lock:
            fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)

    def _path(self, id: str) -> Path:
        return self.root / (check_id(id, self.kind) + _SUFFIX)

    def _write(self, path: Path, data: dict[str, Any]) -> None:
        tmp = path.with_name(f".{path.name}{_TMP}")
        # compact: with indent json falls back to its pure-Python encoder, 10x the CPU
        text = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(text)
            while view:  # a short write (ENOSPC on the way) must not leave a truncated record
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        # No fsync of the directory (containerd's atomicWriteFile has none either): the
        # rename reaches the disk with the next journal commit, and a power cut before it
        # leaves the previous record whole (or none, for a new one), and recovery checks the
        # records against the kernel anyway.
        os.rename(tmp, path)

    def _read(self, path: Path) -> R:
        """The record in `path`; FileNotFoundError if there is none."""
        raw = path.read_bytes()
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise CorruptRecord(f"{path}: not JSON: {e}") from e
        if not isinstance(data, dict):
            raise CorruptRecord(f"{path}: must hold a JSON object")
        fields = Fields(data, str(path))
        version = fields.integer("version")
        if version > RECORD_VERSION:
            raise UnsupportedRecordVersion(
                f"{path}: record version {version} is newer than {RECORD_VERSION}, "
                "the newest this skiff reads; was it written by a newer skiff?"
            )
        if version < 1:
            raise CorruptRecord(f"{path}: version: must be at least 1, not {version}")
        record = self._decode(fields)
        if record.id + _SUFFIX != path.name:
            raise CorruptRecord(f"{path}: id: {record.id!r} does not match the file name")
        return record

    def _name_path(self, name: str) -> Path:
        return self.root / _NAMES / hashlib.sha256(name.encode()).hexdigest()

    def _owner(self, name: str) -> str | None:
        """The id holding `name`; CorruptRecord for an unreadable reservation."""
        path = self._name_path(name)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        return self._read_reservation(path, raw)[1]

    def _read_reservation(self, path: Path, raw: bytes) -> tuple[str, str]:
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise CorruptRecord(f"{path}: not JSON: {e}") from e
        if not isinstance(data, dict):
            raise CorruptRecord(f"{path}: must hold a JSON object")
        fields = Fields(data, str(path))
        if fields.integer("version") > RECORD_VERSION:
            raise UnsupportedRecordVersion(
                f"{path}: version {data['version']} is newer than {RECORD_VERSION}, "
                "the newest this skiff reads; was it written by a newer skiff?"
            )
        return fields.text("name"), fields.text("id")

    def _hold(self, name: str, id: str) -> None:
        path = self._name_path(name)
        path.parent.mkdir(mode=0o700, exist_ok=True)
        self._write(path, {"version": RECORD_VERSION, "name": name, "id": id})
        self._index_owner(path.name, id)

    def _index_owner(self, reservation: str, id: str) -> None:
        """The owner's list is an index, made again from the reservations at `load`."""
        owned = self.root / _OWNERS / id
        owned.mkdir(mode=0o700, parents=True, exist_ok=True)
        (owned / reservation).touch()

    def _reservation_files(self) -> list[Path]:
        directory = self.root / _NAMES
        return sorted(p for p in directory.iterdir() if not p.name.startswith(".")) if directory.is_dir() else []

    def _drop(self, name: str, id: str) -> None:
        path = self._name_path(name)
        path.unlink(missing_ok=True)
        (self.root / _OWNERS / id / path.name).unlink(missing_ok=True)

    def _reservations(self) -> Iterator[tuple[Path, str, str]]:
        """(file, name, id) of every readable reservation."""
        for path in self._reservation_files():
            with contextlib.suppress(FileNotFoundError, CorruptRecord, InvalidArgument):
                yield (path, *self._read_reservation(path, path.read_bytes()))

    def _load_names(self) -> list[str]:
        """Under the lock, at start: reservations from an older skiff's index moved into files,
        unreadable ones removed, the owners' lists made whole again. The problems found."""
        problems = []
        legacy = self.root / _LEGACY_NAMES
        if legacy.exists():
            try:
                data = json.loads(legacy.read_bytes())
                names = Fields(data, str(legacy)).str_map("names") if isinstance(data, dict) else None
                if names is None:
                    raise CorruptRecord(f"{legacy}: must hold a JSON object")
            except (ValueError, UnicodeDecodeError, CorruptRecord, InvalidArgument) as e:
                problems.append(f"{legacy}: not readable ({e}); name reservations reset")
                names = {}
            for name, id in names.items():
                self._hold(name, id)
            legacy.unlink()
        directory = self.root / _NAMES
        for path in directory.glob(f".*{_TMP}") if directory.is_dir() else ():
            path.unlink(missing_ok=True)  # an interrupted reservation
        for path in self._reservation_files():
            try:
                _, id = self._read_reservation(path, path.read_bytes())
            except (CorruptRecord, InvalidArgument) as e:
                # Records are the truth; recovery re-reserves the names of the live ones.
                problems.append(f"{e}; the reservation is removed")
                path.unlink()
                continue
            self._index_owner(path.name, id)
        return problems

    def _ids(self) -> list[str]:
        return sorted(
            p.name[: -len(_SUFFIX)]
            for p in self.root.iterdir()
            if p.name.endswith(_SUFFIX) and p.name != _LEGACY_NAMES and not p.name.startswith(".")
        )

    # -- the API -------------------------------------------------------------------------

    def load(self) -> LoadReport[R]:
        """Start-up scan: remove the temp files of interrupted writes, read every record,
        skip corrupt ones naming why (one bad file must not keep the daemon down), and refuse
        a record from a newer skiff with `UnsupportedRecordVersion` (skipping it would let
        this skiff reuse its name or leak what it holds)."""
        problems: list[str] = []
        records: list[R] = []
        with self._locked():
            for p in self.root.iterdir():
                if p.name.startswith(".") and p.name.endswith(_TMP):
                    p.unlink(missing_ok=True)
            problems += self._load_names()
            for id in self._ids():
                try:
                    records.append(self._read(self._path(id)))
                except InvalidArgument as e:
                    problems.append(f"{self.root / (id + _SUFFIX)}: skipped: {e}")
                except CorruptRecord as e:
                    problems.append(f"{e}: skipped")
        return LoadReport(records=tuple(records), problems=tuple(problems))

    def add(self, record: R) -> None:
        path = self._path(record.id)
        with self._locked():
            if path.exists():
                raise AlreadyExists(f'{self.kind} "{record.id}" already exists')
            self._write(path, record.to_json())

    def get(self, id: str) -> R:
        path = self._path(id)
        with self._locked():
            try:
                return self._read(path)
            except FileNotFoundError:
                raise NotFound(f'{self.kind} "{id}" not found') from None

    def update(self, id: str, change: Callable[[R], R]) -> R:
        """Apply `change` to the current record and write the result, all under the lock,
        so concurrent updates from threads or processes are never lost. Nothing is written
        if `change` raises."""
        path = self._path(id)
        with self._locked():
            try:
                old = self._read(path)
            except FileNotFoundError:
                raise NotFound(f'{self.kind} "{id}" not found') from None
            new = change(old)
            if new.id != id:
                raise InvalidArgument(f"{self.kind} {id!r}: an update may not change the id "
                                      f"(to {new.id!r})")
            self._write(path, new.to_json())
            return new

    def delete(self, id: str) -> None:
        """Remove the record and release its names; an unknown id is fine, as CRI Remove of
        an unknown id succeeds."""
        path = self._path(id)
        with self._locked():
            owned = self.root / _OWNERS / id
            for entry in owned.iterdir() if owned.is_dir() else ():
                reservation = self.root / _NAMES / entry.name
                with contextlib.suppress(FileNotFoundError, CorruptRecord, InvalidArgument):
                    if self._read_reservation(reservation, reservation.read_bytes())[1] == id:
                        reservation.unlink()
                entry.unlink()
            with contextlib.suppress(FileNotFoundError):
                owned.rmdir()
            path.unlink(missing_ok=True)

    def list(self) -> list[R]:
        """Every readable record, by id; corrupt ones are left to `load`'s report."""
        records: list[R] = []
        with self._locked():
            for id in self._ids():
                with contextlib.suppress(FileNotFoundError, CorruptRecord, InvalidArgument):
                    records.append(self._read(self._path(id)))
        return records

    def resolve(self, prefix: str) -> str:
        """The id `prefix` itself, else the one id starting with it (crictl accepts unique
        prefixes)."""
        if not prefix:
            raise InvalidArgument(f"{self.kind} id: must not be empty")
        with self._locked():
            # A whole id (kubelet sends nothing else) wins without a look at every record.
            if _ID.fullmatch(prefix) and (self.root / (prefix + _SUFFIX)).exists():
                return prefix
            matches = [id for id in self._ids() if id.startswith(prefix)]
        if not matches:
            raise NotFound(f'{self.kind} "{prefix}" not found')
        if len(matches) > 1:
            raise InvalidArgument(
                f'{self.kind} id prefix "{prefix}" is ambiguous: it matches '
                f"{', '.join(matches[:5])}{', ...' if len(matches) > 5 else ''}"
            )
        return matches[0]

    def reserve_name(self, name: str, id: str) -> None:
        if not name:
            raise InvalidArgument(f"{self.kind} name: must not be empty")
        check_id(id, self.kind)
        with self._locked():
            owner = self._owner(name)
            if owner == id:
                return
            if owner is not None:
                raise AlreadyExists(f'{self.kind} name "{name}" is reserved for {owner}')
            self._hold(name, id)

    def release_name(self, name: str) -> None:
        """Free `name`; a name not reserved is fine."""
        with self._locked():
            try:
                owner = self._owner(name)
            except (CorruptRecord, InvalidArgument):
                owner = None
            if owner is not None:
                self._drop(name, owner)
            else:
                self._name_path(name).unlink(missing_ok=True)  # an unreadable one goes all the same

    def reserved_names(self) -> dict[str, str]:
        """Every reservation, name to id: recovery compares them with the records."""
        with self._locked():
            return {name: id for _, name, id in self._reservations()}
