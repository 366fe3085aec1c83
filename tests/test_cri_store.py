"""The CRI state store: records on disk, name reservations, prefixes, recovery of bad files,
and updates from two processes at once."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
from pathlib import Path

import pytest

from skiff.cri.store import CorruptRecord, UnsupportedRecordVersion
from skiff.cri.store.container import (ContainerRecord, ContainerState, ContainerStore,
                                       ExitReason, container_name)
from skiff.cri.store.sandbox import SandboxRecord, SandboxState, SandboxStore, sandbox_name
from skiff.errors import AlreadyExists, InvalidArgument, NotFound

from cri_api.v1 import api_pb2


def pod_config() -> bytes:
    config = api_pb2.PodSandboxConfig(
        metadata=api_pb2.PodSandboxMetadata(name="web", namespace="default", uid="u1",
                                            attempt=1),
        hostname="web", log_directory="/var/log/pods/x",
        labels={"app": "web"}, annotations={"a/b": "c\nd"},
    )
    data: bytes = config.SerializeToString()
    return data


def sandbox(id: str = "a1b2c3", **changes: object) -> SandboxRecord:
    record = SandboxRecord(
        id=id, name="web", namespace="default", uid="u1", attempt=1,
        labels={"app": "web"}, annotations={"a/b": "c\nd", "empty": ""},
        created_at=1_700_000_000_123_456_789, state=SandboxState.READY,
        infra_container_id="pause-" + id, namespace_paths={"network": "/run/netns/x"},
        netns_path="/run/netns/x", ip="10.88.0.2", additional_ips=("fd00::2",),
        log_directory="/var/log/pods/x", cgroup_parent="/kubepods/pod1", config=pod_config(),
    )
    return dataclasses.replace(record, **changes)  # type: ignore[arg-type]


def container(id: str = "c0ffee", **changes: object) -> ContainerRecord:
    record = ContainerRecord(
        id=id, sandbox_id="a1b2c3", name="app", attempt=0, image_ref="busybox:latest",
        image_id="sha256:" + "0" * 64, labels={"l": "1"}, annotations={"x": "y"},
        created_at=1, state=ContainerState.CREATED, log_path="app/0.log",
        runtime_id="rt-" + id, config=b"\x00\xff binary",
    )
    return dataclasses.replace(record, **changes)  # type: ignore[arg-type]


def test_sandbox_add_get_update_delete_list(tmp_path: Path) -> None:
    store = SandboxStore(tmp_path)
    record = sandbox()
    store.add(record)
    assert store.get(record.id) == record
    # the config survives byte for byte and still parses
    parsed = api_pb2.PodSandboxConfig.FromString(store.get(record.id).config)
    assert parsed.metadata.uid == "u1" and parsed.annotations["a/b"] == "c\nd"

    with pytest.raises(AlreadyExists, match='pod sandbox "a1b2c3" already exists'):
        store.add(record)

    updated = store.update(record.id,
                           lambda r: dataclasses.replace(r, state=SandboxState.NOTREADY))
    assert updated.state is SandboxState.NOTREADY
    assert store.get(record.id) == updated

    store.add(sandbox("ffff01"))
    assert [r.id for r in store.list()] == ["a1b2c3", "ffff01"]

    store.delete(record.id)
    store.delete(record.id)  # a missing record is fine
    with pytest.raises(NotFound, match='pod sandbox "a1b2c3" not found'):
        store.get(record.id)
    with pytest.raises(NotFound, match='pod sandbox "a1b2c3" not found'):
        store.update(record.id, lambda r: r)
    assert [r.id for r in store.list()] == ["ffff01"]


def test_container_round_trip_and_failed_update(tmp_path: Path) -> None:
    store = ContainerStore(tmp_path)
    store.add(container())
    exited = store.update("c0ffee", lambda r: dataclasses.replace(
        r, state=ContainerState.EXITED, started_at=2, finished_at=3, exit_code=137,
        reason=ExitReason.OOM_KILLED, message="killed by the kernel"))
    again = ContainerStore(tmp_path).get("c0ffee")
    assert again == exited and again.reason is ExitReason.OOM_KILLED
    assert again.config == b"\x00\xff binary"

    def boom(r: ContainerRecord) -> ContainerRecord:
        raise RuntimeError("no")

    with pytest.raises(RuntimeError):
        store.update("c0ffee", boom)
    assert store.get("c0ffee") == exited
    with pytest.raises(InvalidArgument, match="may not change the id"):
        store.update("c0ffee", lambda r: dataclasses.replace(r, id="other"))


def test_a_container_record_written_before_the_image_names_loads(tmp_path: Path) -> None:
    """image_name and image_repo_digest came later, in version 1 records: one written without
    them loads (both ""); a wrong value in one is refused as in any other field."""
    store = ContainerStore(tmp_path)
    old = container(image_name="skiff.test/busybox:1", image_repo_digest="skiff.test/busybox@sha256:" + "1" * 64)
    data = old.to_json()
    del data["image_name"], data["image_repo_digest"]
    (store.root / "c0ffee.json").write_text(json.dumps(data))
    assert store.load().records == (container(),)
    assert store.get("c0ffee") == container()
    data["image_name"] = 7
    (store.root / "c0ffee.json").write_text(json.dumps(data))
    report = store.load()
    assert report.records == () and len(report.problems) == 1, report
    assert "c0ffee.json: image_name: must be a string, not 7: skipped" in report.problems[0]
    store.delete("c0ffee")   # a corrupt record can be removed (RemoveContainer cleans it up)
    assert not (store.root / "c0ffee.json").exists()
    store.add(old)
    assert ContainerStore(tmp_path).get("c0ffee") == old


def test_bad_ids_are_refused(tmp_path: Path) -> None:
    store = SandboxStore(tmp_path)
    for bad in ("", "../x", ".hidden", "_names", "a/b"):
        with pytest.raises(InvalidArgument, match="pod sandbox id"):
            store.get(bad)


def test_name_reservation(tmp_path: Path) -> None:
    store = SandboxStore(tmp_path)
    name = sandbox_name(name="x", namespace="y", uid="uid", attempt=0)
    assert name == "x_y_uid_0"
    store.reserve_name(name, "id1")
    store.reserve_name(name, "id1")  # again for the same id is fine
    with pytest.raises(AlreadyExists) as info:
        store.reserve_name(name, "id2")
    assert str(info.value) == 'pod sandbox name "x_y_uid_0" is reserved for id1'

    # a failed create releases by name
    store.release_name(name)
    store.release_name(name)
    store.reserve_name(name, "id2")

    # the reservation survives a restart and is released when the record is deleted
    restarted = SandboxStore(tmp_path)
    with pytest.raises(AlreadyExists, match="reserved for id2"):
        restarted.reserve_name(name, "id3")
    restarted.add(sandbox("id2"))
    restarted.delete("id2")
    restarted.reserve_name(name, "id3")
    assert restarted.reserved_names() == {name: "id3"}

    containers = ContainerStore(tmp_path)
    cname = container_name(name="app", attempt=0, sandbox_name="x", sandbox_namespace="y",
                           sandbox_uid="uid")
    containers.reserve_name(cname, "c1")
    with pytest.raises(AlreadyExists, match=f'container name "{cname}" is reserved for c1'):
        containers.reserve_name(cname, "c2")


def test_persistence_across_restart(tmp_path: Path) -> None:
    SandboxStore(tmp_path).add(sandbox())
    ContainerStore(tmp_path).add(container())
    assert (tmp_path / "sandboxes" / "a1b2c3.json").exists()
    assert (tmp_path / "containers" / "c0ffee.json").exists()
    sandboxes = SandboxStore(tmp_path).load()
    containers = ContainerStore(tmp_path).load()
    assert sandboxes.records == (sandbox(),) and sandboxes.problems == ()
    assert containers.records == (container(),) and containers.problems == ()


def test_prefix_lookup(tmp_path: Path) -> None:
    store = ContainerStore(tmp_path)
    store.add(container("abc123"))
    store.add(container("abd456"))
    assert store.resolve("abc") == "abc123"
    assert store.resolve("abd456") == "abd456"
    with pytest.raises(NotFound, match='container "zz" not found'):
        store.resolve("zz")
    with pytest.raises(InvalidArgument, match='prefix "ab" is ambiguous: it matches abc123, abd456'):
        store.resolve("ab")
    with pytest.raises(InvalidArgument, match="must not be empty"):
        store.resolve("")


def test_corrupt_records_are_skipped_and_reported(tmp_path: Path) -> None:
    store = SandboxStore(tmp_path)
    store.add(sandbox())
    (store.root / "bad1.json").write_text("{not json")
    broken = sandbox("bad2").to_json()
    broken["attempt"] = "one"
    (store.root / "bad2.json").write_text(json.dumps(broken))
    moved = sandbox("bad3").to_json()  # a record copied under another file name
    (store.root / "bad4.json").write_text(json.dumps(moved))

    report = SandboxStore(tmp_path).load()
    assert report.records == (sandbox(),)
    assert len(report.problems) == 3
    assert "bad1.json: not JSON" in report.problems[0]
    assert "bad2.json: attempt: must be an integer, not 'one'" in report.problems[1]
    assert "bad4.json: id: 'bad3' does not match the file name" in report.problems[2]
    assert all(p.endswith("skipped") for p in report.problems)
    assert [r.id for r in store.list()] == ["a1b2c3"]
    with pytest.raises(CorruptRecord, match="bad1.json: not JSON"):
        store.get("bad1")
    store.delete("bad1")  # Remove still clears a corrupt record
    assert not (store.root / "bad1.json").exists()


def test_a_corrupt_reservation_is_reported_and_removed(tmp_path: Path) -> None:
    store = SandboxStore(tmp_path)
    store.reserve_name("n", "id1")
    [reservation] = (store.root / "_names").iterdir()
    reservation.write_text("[")
    report = store.load()
    assert len(report.problems) == 1 and "the reservation is removed" in report.problems[0]
    store.reserve_name("n", "id2")
    assert store.reserved_names() == {"n": "id2"}


def test_the_name_index_of_an_older_skiff_becomes_one_file_per_name(tmp_path: Path) -> None:
    store = SandboxStore(tmp_path)
    (store.root / "_names.json").write_text('{"version": 1, "names": {"n": "id1", "m": "id2"}}')
    assert store.load().problems == ()
    assert not (store.root / "_names.json").exists()
    assert store.reserved_names() == {"m": "id2", "n": "id1"}
    with pytest.raises(AlreadyExists, match="reserved for id1"):
        store.reserve_name("n", "id3")
    store.delete("id1")  # the owner's list was made with the files
    assert store.reserved_names() == {"m": "id2"}

    (store.root / "_names.json").write_text("[")
    report = store.load()
    assert len(report.problems) == 1 and "name reservations reset" in report.problems[0]
    assert store.reserved_names() == {"m": "id2"}


def test_newer_record_version_is_refused(tmp_path: Path) -> None:
    store = ContainerStore(tmp_path)
    store.add(container(version=2))
    with pytest.raises(UnsupportedRecordVersion,
                       match="record version 2 is newer than 1, the newest this skiff reads"):
        store.load()
    with pytest.raises(UnsupportedRecordVersion):
        store.get("c0ffee")


def test_interrupted_write_is_ignored_and_cleaned(tmp_path: Path) -> None:
    store = SandboxStore(tmp_path)
    store.add(sandbox())
    # what a crash between writing the temp file and the rename leaves behind
    tmp = store.root / ".a1b2c3.json.tmp"
    tmp.write_text('{"version": 1, "id": "a1b2c3", "na')
    (store.root / ".ffff02.json.tmp").write_text("{")
    assert store.get("a1b2c3") == sandbox()
    assert [r.id for r in store.list()] == ["a1b2c3"]
    report = SandboxStore(tmp_path).load()
    assert report.records == (sandbox(),) and report.problems == ()
    assert sorted(p.name for p in store.root.iterdir()) == [".lock", "a1b2c3.json"]


def _add_annotations(root: str, worker: int, count: int) -> None:
    store = ContainerStore(root)
    for n in range(count):
        store.update("c0ffee", lambda r: dataclasses.replace(
            r, annotations={**r.annotations, f"w{worker}-{n}": "1"},
            exit_code=r.exit_code + 1))


def test_concurrent_updates_from_two_processes(tmp_path: Path) -> None:
    store = ContainerStore(tmp_path)
    store.add(container(annotations={}))
    count = 100
    # fork, not spawn: spawn starts a resource tracker process that outlives the test
    ctx = multiprocessing.get_context("fork")
    workers = [ctx.Process(target=_add_annotations, args=(str(tmp_path), w, count))
               for w in range(2)]
    for p in workers:
        p.start()
    for p in workers:
        p.join(60)
    assert [p.exitcode for p in workers] == [0, 0]
    final = store.get("c0ffee")
    assert final.exit_code == 2 * count
    assert set(final.annotations) == {f"w{w}-{n}" for w in range(2) for n in range(count)}


def test_a_pods_containers_are_found_without_reading_every_record(tmp_path: Path) -> None:
    store = ContainerStore(tmp_path)
    store.add(container("aa01", sandbox_id="pod1"))
    store.add(container("aa02", sandbox_id="pod1"))
    store.add(container("bb01", sandbox_id="pod2"))
    assert [r.id for r in store.in_sandbox("pod1")] == ["aa01", "aa02"]
    assert store.in_sandbox("nopod") == []
    store.delete("aa01")
    store.delete("bb01")
    assert [r.id for r in store.in_sandbox("pod1")] == ["aa02"]
    assert sorted(os.listdir(tmp_path / "containers" / "_by_sandbox")) == ["pod1"]
    # an older skiff's record has no entry; an entry of a create cut short has no record
    entry = tmp_path / "containers" / "_by_sandbox" / "pod1" / "aa02"
    entry.unlink()
    (tmp_path / "containers" / "_by_sandbox" / "pod3").mkdir()
    (tmp_path / "containers" / "_by_sandbox" / "pod3" / "cc01").touch()
    assert store.in_sandbox("pod1") == [] and store.in_sandbox("pod3") == []
    store.load()
    assert [r.id for r in store.in_sandbox("pod1")] == ["aa02"]
    assert sorted(os.listdir(tmp_path / "containers" / "_by_sandbox")) == ["pod1"]
