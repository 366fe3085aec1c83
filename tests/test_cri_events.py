"""GetContainerEvents (kubelet's evented PLEG): a container's life as CREATED, STARTED,
STOPPED (an exit on its own, seen without anyone asking) and DELETED events on a stream;
and a call kubelet makes that skiff answers with nothing to do."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import NoReturn

import pytest
from cri_api.v1 import api_pb2 as pb
from cri_fixture import IMAGE, Cri
from orchestrator_fixture import eventually
from skiff.images.service import Images
from skiff.images.store import ContentStore


def test_a_containers_life_arrives_as_events(cri: Cri) -> None:
    stream = cri.runtime.GetContainerEvents(pb.GetEventsRequest())
    seen: list[pb.ContainerEventResponse] = []

    def read() -> None:
        try:
            for event in stream:
                seen.append(event)
        except Exception:
            pass   # cancelled at the end
    reader = threading.Thread(target=read)
    reader.start()
    try:
        pod_id, pod = cri.run_pod("events")
        cid = cri.start(pod_id, pod, "main", "sleep", "0.2")

        def kinds() -> list[int]:
            return [e.container_event_type for e in seen if e.container_id == cid]
        # the exit is seen by the stream itself: nobody asks for the container's status
        eventually(lambda: pb.CONTAINER_STOPPED_EVENT in kinds(), timeout=10)
        cri.runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=cid))
        eventually(lambda: pb.CONTAINER_DELETED_EVENT in kinds(), timeout=5)
        assert kinds() == [pb.CONTAINER_CREATED_EVENT, pb.CONTAINER_STARTED_EVENT, pb.CONTAINER_STOPPED_EVENT,
                           pb.CONTAINER_DELETED_EVENT]
        assert all(e.pod_sandbox_status.id == pod_id and e.created_at for e in seen if e.container_id == cid)
    finally:
        stream.cancel()
        reader.join()
        cri.remove_all()


def test_runtime_config_updates_are_answered(cri: Cri) -> None:
    config = pb.RuntimeConfig(network_config=pb.NetworkConfig(pod_cidr="10.123.0.0/24"))
    cri.runtime.UpdateRuntimeConfig(pb.UpdateRuntimeConfigRequest(runtime_config=config))


def test_container_status_tells_the_image_id_and_the_user(cri: Cri) -> None:
    """image_id is the config digest; image_ref a repo digest, as containerd reports them."""
    record = Images(cri.config.images_root).store.image(IMAGE)
    pod_id, pod = cri.run_pod("who")
    cid = cri.start(pod_id, pod, "main", "sleep", "60")
    try:
        status = cri.status(cid)
        listed = cri.images.ImageStatus(pb.ImageStatusRequest(image=pb.ImageSpec(image=IMAGE))).image
        assert status.image_id.startswith("sha256:") and status.image_id == listed.id
        assert status.image_ref == f"skiff.test/busybox@{record.digest}" != status.image_id
        assert (status.user.linux.uid, status.user.linux.gid) == (0, 0)
        assert status.stop_signal == pb.RUNTIME_DEFAULT   # the image has no STOPSIGNAL
    finally:
        cri.remove_all()


def test_container_status_reads_the_image_names_from_the_record_alone(cri: Cri, monkeypatch: pytest.MonkeyPatch
                                                                        ) -> None:
    """CreateContainer keeps the image's name and repo digest in the record: kubelet's frequent
    ContainerStatus reads no image. A record an older skiff wrote, without them, still answers
    with what it has: the name asked by and, as image_ref, the image id."""
    digest = Images(cri.config.images_root).store.image(IMAGE).digest
    pod_id, pod = cri.run_pod("kept")
    cid = cri.start(pod_id, pod, "main", "sleep", "60")
    try:
        def no_images(*args: object, **kwargs: object) -> NoReturn:
            raise AssertionError("ContainerStatus read the image store")
        for method in ("image", "images", "read"):
            monkeypatch.setattr(ContentStore, method, no_images)
        status = cri.status(cid)
        assert (status.image.image, status.image_ref) == (IMAGE, f"skiff.test/busybox@{digest}")
        record_path = Path(cri.config.state_root) / "containers" / f"{cid}.json"
        record = json.loads(record_path.read_text())
        del record["image_name"], record["image_repo_digest"]
        record_path.write_text(json.dumps(record))
        older = cri.status(cid)
        assert (older.image.image, older.image_ref, older.image_id) == (IMAGE, status.image_id, status.image_id)
        assert older.state == pb.CONTAINER_RUNNING
        monkeypatch.undo()
    finally:
        cri.remove_all()
