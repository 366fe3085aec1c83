"""GetContainerEvents (kubelet's evented PLEG): a container's life as CREATED, STARTED,
STOPPED (an exit on its own, seen without anyone asking) and DELETED events on a stream;
and a call kubelet makes that skiff answers with nothing to do."""

from __future__ import annotations

import threading

from cri_api.v1 import api_pb2 as pb
from cri_fixture import IMAGE, Cri
from orchestrator_fixture import eventually
from skiff.images.service import Images


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
