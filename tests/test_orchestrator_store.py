"""The orchestrator's state store: one suite for both implementations, SQLite and a real etcd
(Debian's etcd-server, started by the fixture on loopback ports of its own)."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from skiff.errors import Aborted, AlreadyExists, InvalidArgument, NotFound, OutOfRange
from skiff.orchestrator.store import EventType, Store, resource_version
from skiff.orchestrator.store.etcd import EtcdStore
from skiff.orchestrator.store.sqlite import SqliteStore


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[str]:
    """A real etcd on 127.0.0.1, its data in tmp_path; its URL."""
    client, peer = _free_port(), _free_port()
    url = f"http://127.0.0.1:{client}"
    log = open(tmp_path / "etcd.log", "w")
    process = subprocess.Popen(
        ["etcd", "--name", "test", "--data-dir", str(tmp_path / "etcd"), "--listen-client-urls", url,
         "--advertise-client-urls", url, "--listen-peer-urls", f"http://127.0.0.1:{peer}",
         "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
         "--initial-cluster", f"test=http://127.0.0.1:{peer}"],
        stdout=subprocess.DEVNULL, stderr=log)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", client), timeout=0.5):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("etcd did not start: " + (tmp_path / "etcd.log").read_text()[-2000:])
                time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        process.wait(10)
        log.close()


@pytest.fixture(params=["sqlite", "etcd"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    s: Store
    if request.param == "sqlite":
        s = SqliteStore(str(tmp_path / "state.db"), keep_events=1000)
    else:
        s = EtcdStore(request.getfixturevalue("etcd"), keep_events=1000)
    yield s
    s.close()


def pod(name: str, **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default", "labels": labels},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]}}


KEY = "/registry/pods/default/"


def test_create_get_update_delete(store: Store) -> None:
    created = store.create(KEY + "a", pod("a"))
    assert resource_version(created) and store.get(KEY + "a") == created
    with pytest.raises(AlreadyExists, match="/registry/pods/default/a: already exists"):
        store.create(KEY + "a", pod("a"))
    changed = store.update(KEY + "a", {**created, "spec": {"containers": []}}, expected=resource_version(created))
    assert int(resource_version(changed)) > int(resource_version(created))
    with pytest.raises(Aborted, match=r"the object has been modified \(resourceVersion \d+ was read, it is now \d+\)"):
        store.update(KEY + "a", created, expected=resource_version(created))
    with pytest.raises(Aborted):
        store.delete(KEY + "a", expected=resource_version(created))
    gone = store.delete(KEY + "a", expected=resource_version(changed))
    assert gone["spec"] == {"containers": []}
    with pytest.raises(NotFound, match="/registry/pods/default/a: not found"):
        store.get(KEY + "a")
    with pytest.raises(NotFound):
        store.update(KEY + "a", created)
    with pytest.raises(NotFound):
        store.delete(KEY + "a")
    with pytest.raises(InvalidArgument, match="metadata: required"):
        store.create(KEY + "b", {"kind": "Pod"})


def test_list_by_prefix_with_the_revision_to_watch_from(store: Store) -> None:
    for name in ("b", "a", "c"):
        store.create(KEY + name, pod(name))
    store.create("/registry/pods/other/a", pod("a"))
    store.create("/registry/podsx/default/a", pod("a"))
    listing = store.list(KEY)
    assert [p["metadata"]["name"] for p in listing.items] == ["a", "b", "c"]
    assert len(store.list("/registry/pods/").items) == 4
    assert listing.revision == max(int(resource_version(o)) for o in store.list("/registry/").items)


def test_watch_from_a_revision_sees_every_change_under_the_prefix_in_order(store: Store) -> None:
    start = store.list(KEY).revision
    a = store.create(KEY + "a", pod("a"))
    store.create("/registry/services/default/a", {"metadata": {"name": "a"}})
    store.update(KEY + "a", {**a, "spec": {}})
    store.delete(KEY + "a")
    events = list(store.watch(KEY, start, timeout=0.1))
    assert [(e.type, e.key) for e in events] == [(EventType.ADDED, KEY + "a"), (EventType.MODIFIED, KEY + "a"),
                                                 (EventType.DELETED, KEY + "a")]
    assert [e.revision for e in events] == sorted(e.revision for e in events)
    assert events[-1].object["metadata"]["resourceVersion"] == str(events[-1].revision)
    assert list(store.watch(KEY, events[-1].revision, timeout=0.05)) == []


def test_a_watch_is_woken_by_a_write(store: Store) -> None:
    since = store.list(KEY).revision
    seen: list[str] = []
    watcher = threading.Thread(target=lambda: seen.extend(e.key for e in store.watch(KEY, since, timeout=1.0)))
    watcher.start()
    store.create(KEY + "late", pod("late"))
    watcher.join(5)
    assert seen == [KEY + "late"]


def test_a_watch_from_a_compacted_revision_is_refused(store: Store) -> None:
    first = store.create(KEY + "x", pod("x"))
    for _ in range(2000):
        first = store.update(KEY + "x", first)
    with pytest.raises(OutOfRange, match="watch from resourceVersion 1: too old.*list again"):
        next(iter(store.watch(KEY, 1, timeout=0.1)))
    assert next(iter(store.watch(KEY, int(resource_version(first)) - 1, timeout=0.1))).key == KEY + "x"


def test_concurrent_updates_from_one_read_one_wins(store: Store) -> None:
    read = store.create(KEY + "a", pod("a"))
    outcomes: list[str] = []

    def write(n: int) -> None:
        try:
            store.update(KEY + "a", {**read, "spec": {"n": n}}, expected=resource_version(read))
            outcomes.append("ok")
        except Aborted:
            outcomes.append("conflict")

    threads = [threading.Thread(target=write, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["conflict"] * 7 + ["ok"]


def test_what_is_written_survives_a_reopen(tmp_path: Path) -> None:
    path = str(tmp_path / "state.db")
    first = SqliteStore(path)
    created = first.create(KEY + "a", pod("a"))
    first.close()
    again = SqliteStore(path)
    try:
        assert again.get(KEY + "a") == created
        assert int(resource_version(again.create(KEY + "b", pod("b")))) == int(resource_version(created)) + 1
    finally:
        again.close()
