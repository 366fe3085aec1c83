"""The pods bound to this node, run through its CRI service (kubelet `pkg/kubelet/kuberuntime/`):
a sandbox per pod, its containers made and started in order, restarted by the pod's
restartPolicy with a doubling back-off (CrashLoopBackOff), and everything torn down when the
pod is deleted or bound elsewhere. Each pass reports the pod's phase, IP, conditions and
container statuses, written only when they changed.

What runs is found again from the CRI's labels (io.kubernetes.pod.uid and friends, as
kubelet labels them), so an agent restarted picks up its pods where they are. Container exits
are seen by looking again every `resync` seconds, as kubelet's PLEG relists."""

from __future__ import annotations

import copy
import datetime
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from cri_api.v1 import api_pb2 as pb
from cri_api.v1 import api_pb2_grpc

from skiff.errors import Aborted, NotFound, SkiffError, Unavailable
from skiff.orchestrator.agent import volumes
from skiff.orchestrator.agent.probes import Prober
from skiff.orchestrator.api import quantity
from skiff.orchestrator.api.kinds import BY_KIND
from skiff.orchestrator.api.registry import Api
from skiff.orchestrator.controllers.base import Controller
from skiff.orchestrator.informer import Informer, object_key
from skiff.orchestrator.periodic import Periodic

log = logging.getLogger("skiff.orchestrator")
PODS = BY_KIND["Pod"]
POD_NAME, POD_NAMESPACE, POD_UID = "io.kubernetes.pod.name", "io.kubernetes.pod.namespace", "io.kubernetes.pod.uid"
CONTAINER_NAME = "io.kubernetes.container.name"
BACKOFF_BASE, BACKOFF_MAX = 10.0, 300.0   # kubelet's CrashLoopBackOff
CALL = 60.0                               # seconds for one CRI call


def _time(nanos: int) -> str | None:
    if not nanos:
        return None
    return datetime.datetime.fromtimestamp(nanos / 1e9, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class PodAgent(Controller):
    name = "node-agent"

    def __init__(self, registry: Api, pods: Informer, node: str, cri_socket: str, *, log_root: str,
                 root: str = "/var/lib/skiff/agent", resync: float = 1.0, backoff_base: float = BACKOFF_BASE) -> None:
        """`root`: the pods' volumes (volumes.py)."""
        super().__init__()
        self.registry = registry
        self.root = root
        self.pods = pods
        self.node = node
        self.log_root = log_root
        self.resync = resync
        self.backoff_base = backoff_base
        self._channel = grpc.insecure_channel(f"unix://{cri_socket}")
        self.runtime = api_pb2_grpc.RuntimeServiceStub(self._channel)
        self.images = api_pb2_grpc.ImageServiceStub(self._channel)
        self._restarts: dict[tuple[str, str], float] = {}   # (pod uid, container) -> not before (monotonic)
        self._lock = threading.Lock()
        self._terminating: dict[str, threading.Thread] = {}   # pod uid -> its termination (_terminate_aside)
        self.prober = Prober(self.runtime, self.queue.add)
        self._relister = Periodic("node-agent-relist", resync, self._relist)
        pods.on_change(self._pod_changed)

    def _pod_changed(self, key: str, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        if any(p is not None and p["spec"].get("nodeName") == self.node for p in (old, new)):
            self.queue.add(key)

    def start(self, workers: int = 4) -> None:
        super().start(workers)
        self.prober.start()
        self._relister.start()

    def stop(self) -> None:
        self.prober.stop()
        self._relister.stop()
        super().stop()
        with self._lock:
            terminations = list(self._terminating.values())
        for thread in terminations:   # each within its pod's grace period
            thread.join()
        self._channel.close()

    def _relist(self) -> None:
        sandboxes = self.runtime.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=CALL).items
        running = self.runtime.ListContainers(pb.ListContainersRequest(filter=pb.ContainerFilter(
            state=pb.ContainerStateValue(state=pb.CONTAINER_RUNNING))), timeout=CALL).containers
        self.prober.forget({c.id for c in running})
        keys = {f"{s.labels[POD_NAMESPACE]}/{s.labels[POD_NAME]}" for s in sandboxes if POD_NAME in s.labels}
        mine = [p for p in self.pods.items() if p["spec"].get("nodeName") == self.node]
        keys |= {object_key(p) for p in mine}
        live = {p["metadata"]["uid"] for p in mine} | {s.labels.get(POD_UID) for s in sandboxes}
        for uid in set(volumes.known_pods(self.root)) - live:  # a pod gone while the agent was away
            volumes.release(self.root, uid)
        for key in keys:
            self.queue.add(key)

    # -- one pass over one pod ---------------------------------------------------------------------

    def sync(self, key: str) -> None:
        try:
            self._sync(key)
        except grpc.RpcError as e:
            raise Unavailable(f"CRI: {e.code().name}: {e.details()}") from None

    def _sync(self, key: str) -> None:
        namespace, _, name = key.partition("/")
        pod = self.pods.get(key)
        wanted = pod if pod is not None and pod["spec"].get("nodeName") == self.node else None
        uid = wanted["metadata"]["uid"] if wanted else None
        sandboxes = self.runtime.ListPodSandbox(pb.ListPodSandboxRequest(filter=pb.PodSandboxFilter(
            label_selector={POD_NAME: name, POD_NAMESPACE: namespace})), timeout=CALL).items
        for s in sandboxes:
            if s.labels.get(POD_UID) != uid:  # deleted, bound elsewhere, or a pod of the same name before
                self._tear_down(s.id)
                volumes.release(self.root, s.labels.get(POD_UID, ""))
        if wanted is None:
            return
        if wanted["metadata"].get("deletionTimestamp"):
            self._terminate_aside(key, wanted, sandboxes)
            return
        finished = (wanted.get("status") or {}).get("phase") in ("Succeeded", "Failed")
        live = [s for s in sandboxes if s.labels.get(POD_UID) == uid and s.state == pb.SANDBOX_READY]
        if finished:
            for s in live:
                self.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=s.id), timeout=CALL)
            return
        config = self._sandbox_config(wanted)
        sandbox_id = live[0].id if live else self.runtime.RunPodSandbox(
            pb.RunPodSandboxRequest(config=config), timeout=CALL).pod_sandbox_id
        ip = self.runtime.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id),
                                           timeout=CALL).status.network.ip
        containers = self.runtime.ListContainers(pb.ListContainersRequest(
            filter=pb.ContainerFilter(pod_sandbox_id=sandbox_id)), timeout=CALL).containers
        statuses = []
        for spec in wanted["spec"]["containers"]:
            mine = sorted((c for c in containers if c.labels.get(CONTAINER_NAME) == spec["name"]),
                          key=lambda c: c.metadata.attempt)
            latest = mine[-1] if mine else None
            if latest is None or self._restart_due(wanted, spec, latest, key):
                attempt = latest.metadata.attempt + 1 if latest is not None else 0
                paths = volumes.prepare(self.registry, self.root, wanted)
                self._start_container(wanted, spec, sandbox_id, config, attempt, paths)
                for old in mine[:-1]:  # the last dead one stays, for its logs
                    self.runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=old.id), timeout=CALL)
                containers = self.runtime.ListContainers(pb.ListContainersRequest(
                    filter=pb.ContainerFilter(pod_sandbox_id=sandbox_id)), timeout=CALL).containers
                latest = max((c for c in containers if c.labels.get(CONTAINER_NAME) == spec["name"]),
                             key=lambda c: c.metadata.attempt)
            status = self.runtime.ContainerStatus(pb.ContainerStatusRequest(container_id=latest.id),
                                                  timeout=CALL).status
            running = status.state == pb.CONTAINER_RUNNING
            if running and self.prober.unhealthy(latest.id):
                grace = int(wanted["spec"].get("terminationGracePeriodSeconds", 30))
                self.runtime.StopContainer(pb.StopContainerRequest(container_id=latest.id, timeout=grace),
                                           timeout=grace + CALL)
                self.queue.add(key)  # the next pass restarts it by the restartPolicy
                running = False
            elif running:
                self.prober.track(key, spec, latest.id, ip)
            statuses.append(_container_status(spec, status, ready=running and self.prober.ready(latest.id, spec)))
        self._report(wanted, statuses, ip)

    def _restart_due(self, pod: dict[str, Any], spec: dict[str, Any], latest: Any, key: str) -> bool:
        if latest.state != pb.CONTAINER_EXITED:
            return False
        status = self.runtime.ContainerStatus(pb.ContainerStatusRequest(container_id=latest.id), timeout=CALL).status
        policy = pod["spec"].get("restartPolicy", "Always")
        if policy == "Never" or (policy == "OnFailure" and status.exit_code == 0):
            return False
        token = (pod["metadata"]["uid"], spec["name"])
        delay = min(BACKOFF_MAX, self.backoff_base * 2 ** latest.metadata.attempt)
        not_before = self._restarts.setdefault(token, time.monotonic() + delay)
        if time.monotonic() < not_before:
            self.queue.add_after(key, not_before - time.monotonic())
            return False
        del self._restarts[token]
        return True

    def _start_container(self, pod: dict[str, Any], spec: dict[str, Any], sandbox_id: str,
                         sandbox: pb.PodSandboxConfig, attempt: int, paths: dict[str, tuple[str, bool]]) -> None:
        image = spec["image"]
        present = self.images.ImageStatus(pb.ImageStatusRequest(image=pb.ImageSpec(image=image)), timeout=CALL)
        image_id = present.image.id
        if spec.get("imagePullPolicy") == "Always" or not present.HasField("image"):
            image_id = self.images.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=image),
                                                                 sandbox_config=sandbox), timeout=600).image_ref
        config = pb.ContainerConfig(   # the image by its id, as kubelet names it: a tag moved meanwhile does not count
            metadata=pb.ContainerMetadata(name=spec["name"], attempt=attempt),
            image=pb.ImageSpec(image=image_id, user_specified_image=image),
            command=spec.get("command") or [], args=spec.get("args") or [], working_dir=spec.get("workingDir", ""),
            envs=[pb.KeyValue(key=e["name"], value=e.get("value", "")) for e in spec.get("env") or []],
            labels={CONTAINER_NAME: spec["name"], POD_UID: pod["metadata"]["uid"],
                    POD_NAME: pod["metadata"]["name"], POD_NAMESPACE: pod["metadata"]["namespace"]},
            log_path=f"{spec['name']}/{attempt}.log",
            stdin=bool(spec.get("stdin")), stdin_once=bool(spec.get("stdinOnce")), tty=bool(spec.get("tty")),
            mounts=[pb.Mount(host_path=host, container_path=inside, readonly=readonly)
                    for host, inside, readonly in volumes.mounts(spec, paths)])
        resources = spec.get("resources") or {}
        limits, requests = resources.get("limits") or {}, resources.get("requests") or {}
        where = f"pod {object_key(pod)}: containers {spec['name']}"
        if "memory" in limits:
            config.linux.resources.memory_limit_in_bytes = quantity.units(limits["memory"], where)
        if "cpu" in limits:
            config.linux.resources.cpu_period = 100_000
            config.linux.resources.cpu_quota = quantity.milli(limits["cpu"], where) * 100
        if "cpu" in requests or "cpu" in limits:
            config.linux.resources.cpu_shares = max(2, quantity.milli(requests.get("cpu", limits.get("cpu")),
                                                                       where) * 1024 // 1000)
        created = self.runtime.CreateContainer(pb.CreateContainerRequest(
            pod_sandbox_id=sandbox_id, config=config, sandbox_config=sandbox), timeout=CALL).container_id
        self.runtime.StartContainer(pb.StartContainerRequest(container_id=created), timeout=CALL)

    def _sandbox_config(self, pod: dict[str, Any]) -> pb.PodSandboxConfig:
        m, spec = pod["metadata"], pod["spec"]
        config = pb.PodSandboxConfig(
            metadata=pb.PodSandboxMetadata(name=m["name"], namespace=m["namespace"], uid=m["uid"], attempt=0),
            hostname=m["name"][:63], log_directory=f"{self.log_root}/{m['namespace']}_{m['name']}_{m['uid']}",
            labels={POD_NAME: m["name"], POD_NAMESPACE: m["namespace"], POD_UID: m["uid"]},
            port_mappings=[pb.PortMapping(protocol=pb.UDP if p.get("protocol") == "UDP" else pb.TCP,
                                          container_port=int(p["containerPort"]), host_port=int(p["hostPort"]))
                           for c in spec["containers"] for p in c.get("ports") or [] if p.get("hostPort")])
        options = config.linux.security_context.namespace_options
        options.pid = pb.POD if spec.get("shareProcessNamespace") else pb.CONTAINER
        if spec.get("hostNetwork"):
            options.network = pb.NODE
        return config

    def _terminate_aside(self, key: str, pod: dict[str, Any], sandboxes: list[Any]) -> None:
        """The pod's termination in a thread of its own (kubelet's pod workers): a grace period
        must not hold up a worker that other pods of the node wait for."""
        uid = pod["metadata"]["uid"]

        def terminate() -> None:
            try:
                self._terminate(pod, sandboxes)
            except Exception as e:
                log.warning("node agent: terminating pod %s: %s; again after a back-off", key, e)
                self.queue.add_rate_limited(key)
            finally:
                with self._lock:
                    self._terminating.pop(uid, None)
        with self._lock:
            if uid in self._terminating:
                return
            thread = self._terminating[uid] = threading.Thread(target=terminate, name=f"terminate-{key}", daemon=True)
        thread.start()

    def _terminate(self, pod: dict[str, Any], sandboxes: list[Any]) -> None:
        """A graceful delete: each container gets SIGTERM and the pod's grace period, then the
        pod is torn down and deleted for good (grace 0, this very pod), kubelet's killPod."""
        uid = pod["metadata"]["uid"]
        grace = int(pod["metadata"].get("deletionGracePeriodSeconds", 30))
        for s in (s for s in sandboxes if s.labels.get(POD_UID) == uid):
            containers = self.runtime.ListContainers(pb.ListContainersRequest(filter=pb.ContainerFilter(
                pod_sandbox_id=s.id, state=pb.ContainerStateValue(state=pb.CONTAINER_RUNNING))), timeout=CALL).containers
            with ThreadPoolExecutor(max_workers=max(1, len(containers))) as pool:   # all at once, as kubelet
                list(pool.map(lambda c: self.runtime.StopContainer(
                    pb.StopContainerRequest(container_id=c.id, timeout=grace), timeout=grace + CALL), containers))
            self._tear_down(s.id)
        volumes.release(self.root, uid)
        try:
            self.registry.delete(PODS, pod["metadata"]["namespace"], pod["metadata"]["name"], grace=0, uid=uid)
        except (NotFound, Aborted):
            pass   # gone already, or a new pod of the same name

    def _tear_down(self, sandbox_id: str) -> None:
        self.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=CALL)
        self.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=CALL)

    def _report(self, pod: dict[str, Any], statuses: list[dict[str, Any]], ip: str) -> None:
        policy = pod["spec"].get("restartPolicy", "Always")
        done = [s for s in statuses if "terminated" in s["state"] and (
            policy == "Never" or (policy == "OnFailure" and s["state"]["terminated"]["exitCode"] == 0))]
        if len(done) == len(statuses):
            phase = "Failed" if any(s["state"]["terminated"]["exitCode"] for s in done) else "Succeeded"
        elif any("running" in s["state"] for s in statuses):
            phase = "Running"
        else:
            phase = "Pending"
        ready = "True" if statuses and all(s["ready"] for s in statuses) else "False"
        old = pod.get("status") or {}
        status = {**old, "phase": phase, "hostIP": "127.0.0.1", "containerStatuses": statuses,
                  "conditions": [c for c in old.get("conditions") or [] if c.get("type") == "PodScheduled"] + [
                      {"type": "Initialized", "status": "True"},
                      {"type": "ContainersReady", "status": ready}, {"type": "Ready", "status": ready}]}
        if ip:
            status["podIP"] = ip
            status["podIPs"] = [{"ip": ip}]
        if status != old:
            current = copy.deepcopy(pod)
            current["status"] = status
            try:
                self.registry.update(PODS, current)
            except SkiffError:
                self.queue.add_after(object_key(pod), 0.1)  # changed meanwhile: report again on the new one


def _container_status(spec: dict[str, Any], status: pb.ContainerStatus, *, ready: bool) -> dict[str, Any]:
    if status.state == pb.CONTAINER_RUNNING:
        state: dict[str, Any] = {"running": {"startedAt": _time(status.started_at)}}
    elif status.state == pb.CONTAINER_EXITED:
        state = {"terminated": {"exitCode": status.exit_code, "reason": status.reason or "Completed",
                                "startedAt": _time(status.started_at), "finishedAt": _time(status.finished_at)}}
    else:
        state = {"waiting": {"reason": "ContainerCreating"}}
    return {"name": spec["name"], "image": spec["image"], "imageID": status.image_ref,
            "containerID": f"skiff://{status.id}", "restartCount": status.metadata.attempt,
            "ready": ready, "started": status.state == pb.CONTAINER_RUNNING,
            "state": state}
