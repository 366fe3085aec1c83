"""A CRI client for people, as crictl (not packaged for Debian) is: the gRPC calls on any CRI
socket and what `skiff cri pods|ps|inspect|logs|exec|...` print.

crictl is the model (kubernetes-sigs/cri-tools `cmd/crictl`): tables list the newest first
with ids cut to 13 characters and "2 minutes ago" times; name and namespace filters are
regular expressions matched client-side; inspect prints `{"status": ..., <verbose info>}`.
Unlike crictl, an id prefix is resolved here by listing, so it works with any server;
logs are read from the container's log file on this host, as crictl and kubelet read them.
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from itertools import islice
from typing import IO, Any, NamedTuple, TypeVar

import grpc
from cri_api.v1 import api_pb2 as pb
from cri_api.v1 import api_pb2_grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from skiff.cri.config import CriConfig
from skiff.cri.logs import LogFormatError, Stream, follow, format_timestamp, parse_line
from skiff.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from skiff.runtime.cli.main import table

SHORT_ID = 13  # crictl's truncatedIDLen
POD_STATES = {"ready": pb.SANDBOX_READY, "notready": pb.SANDBOX_NOTREADY}
CONTAINER_STATES = {"created": pb.CONTAINER_CREATED, "running": pb.CONTAINER_RUNNING,
                    "exited": pb.CONTAINER_EXITED, "unknown": pb.CONTAINER_UNKNOWN}

M = TypeVar("M", bound=Message)


def listening(path: str) -> bool:
    """Something accepts connections on the unix socket `path` (a killed daemon's socket
    file stays behind, and answers nothing)."""
    import socket

    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.connect(path)
        except OSError:
            return False
    return True


def socket_path(flag: str | None) -> str:
    """--socket, else $SKIFF_CRI_SOCKET, else the service's default; `unix://` is accepted."""
    path = flag or os.environ.get("SKIFF_CRI_SOCKET") or CriConfig().socket
    return path.removeprefix("unix://")


class Cri:
    """One channel to a CRI socket: the RuntimeService and ImageService calls the commands
    make, with typed results."""

    def __init__(self, socket: str) -> None:
        if not os.path.exists(socket):
            raise Unavailable(f"{socket}: no CRI socket there; start the service with `skiff cri serve` "
                              "or name another socket with --socket")
        self.channel = grpc.insecure_channel(f"unix://{os.path.abspath(socket)}")
        self.runtime = api_pb2_grpc.RuntimeServiceStub(self.channel)
        self.images = api_pb2_grpc.ImageServiceStub(self.channel)

    def __enter__(self) -> Cri:
        return self

    def __exit__(self, *exc: object) -> None:
        self.channel.close()

    # -- listing and ids ----------------------------------------------------------------------

    def pods(self, *, state: str | None = None, labels: Mapping[str, str] | None = None) -> list[pb.PodSandbox]:
        wanted = pb.PodSandboxFilter(label_selector=labels)
        if state is not None:
            wanted.state.state = POD_STATES[state]
        response: pb.ListPodSandboxResponse = self.runtime.ListPodSandbox(pb.ListPodSandboxRequest(filter=wanted))
        return list(response.items)

    def containers(self, *, pod_id: str = "", state: str | None = None,
                   labels: Mapping[str, str] | None = None) -> list[pb.Container]:
        wanted = pb.ContainerFilter(pod_sandbox_id=pod_id, label_selector=labels)
        if state is not None:
            wanted.state.state = CONTAINER_STATES[state]
        response: pb.ListContainersResponse = self.runtime.ListContainers(pb.ListContainersRequest(filter=wanted))
        return list(response.containers)

    def pod_id(self, prefix: str) -> str:
        return unique_id(prefix, [p.id for p in self.pods()], "pod")

    def container_id(self, prefix: str) -> str:
        return unique_id(prefix, [c.id for c in self.containers()], "container")

    # -- status -------------------------------------------------------------------------------

    def container_status(self, container_id: str, *, verbose: bool = False) -> pb.ContainerStatusResponse:
        response: pb.ContainerStatusResponse = self.runtime.ContainerStatus(
            pb.ContainerStatusRequest(container_id=container_id, verbose=verbose))
        return response

    def pod_status(self, pod_id: str) -> pb.PodSandboxStatusResponse:
        response: pb.PodSandboxStatusResponse = self.runtime.PodSandboxStatus(
            pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id, verbose=True))
        return response

    def image_status(self, image: str) -> pb.ImageStatusResponse:
        response: pb.ImageStatusResponse = self.images.ImageStatus(
            pb.ImageStatusRequest(image=pb.ImageSpec(image=image), verbose=True))
        if not response.HasField("image"):  # the CRI answers an unknown image with an empty status
            raise NotFound(f"image {image!r} not found")
        return response

    def status(self) -> pb.StatusResponse:
        response: pb.StatusResponse = self.runtime.Status(pb.StatusRequest(verbose=True))
        return response

    def version(self) -> pb.VersionResponse:
        response: pb.VersionResponse = self.runtime.Version(pb.VersionRequest())
        return response

    def list_images(self) -> list[pb.Image]:
        response: pb.ListImagesResponse = self.images.ListImages(pb.ListImagesRequest())
        return list(response.images)

    def log_path(self, container_id: str) -> str:
        """Where the container's CRI log file is on this host (PodSandboxConfig.log_directory
        joined with ContainerConfig.log_path, as the service reports it)."""
        path = self.container_status(container_id).status.log_path
        if not os.path.isabs(path):
            raise FailedPrecondition(f"container {container_id}: the service gave log_path {path!r}, "
                                     "want an absolute path")
        return path

    def still_running(self, container_id: str) -> bool:
        """False once the container left RUNNING, or is gone."""
        try:
            return self.container_status(container_id).status.state == pb.CONTAINER_RUNNING
        except grpc.RpcError as e:
            if e.code() is grpc.StatusCode.NOT_FOUND:
                return False
            raise

    # -- actions ------------------------------------------------------------------------------

    def exec_sync(self, container_id: str, command: Sequence[str], timeout: int) -> pb.ExecSyncResponse:
        response: pb.ExecSyncResponse = self.runtime.ExecSync(
            pb.ExecSyncRequest(container_id=container_id, cmd=command, timeout=timeout))
        return response

    def run_pod(self, config: pb.PodSandboxConfig) -> str:
        response: pb.RunPodSandboxResponse = self.runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=config))
        return response.pod_sandbox_id

    def create_container(self, pod_id: str, config: pb.ContainerConfig, pod_config: pb.PodSandboxConfig) -> str:
        response: pb.CreateContainerResponse = self.runtime.CreateContainer(pb.CreateContainerRequest(
            pod_sandbox_id=pod_id, config=config, sandbox_config=pod_config))
        return response.container_id

    def start(self, container_id: str) -> None:
        self.runtime.StartContainer(pb.StartContainerRequest(container_id=container_id))

    def stop(self, container_id: str, timeout: int) -> None:
        self.runtime.StopContainer(pb.StopContainerRequest(container_id=container_id, timeout=timeout))

    def remove(self, container_id: str) -> None:
        self.runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=container_id))

    def stop_pod(self, pod_id: str) -> None:
        self.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod_id))

    def remove_pod(self, pod_id: str) -> None:
        self.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id))

    def pull(self, image: str) -> str:
        response: pb.PullImageResponse = self.images.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=image)))
        return response.image_ref


def unique_id(prefix: str, ids: Iterable[str], kind: str) -> str:
    """The one id that is `prefix` or starts with it."""
    if not prefix:
        raise InvalidArgument(f"{kind} id: must not be empty")
    ids = sorted(set(ids))
    if prefix in ids:
        return prefix
    matches = [i for i in ids if i.startswith(prefix)]
    if not matches:
        raise NotFound(f"no {kind} has an id starting with {prefix!r}")
    if len(matches) > 1:
        shown = ", ".join(short_id(m) for m in matches[:5]) + (", ..." if len(matches) > 5 else "")
        raise InvalidArgument(f"{kind} id prefix {prefix!r} is ambiguous: {len(matches)} match ({shown})")
    return matches[0]


def find_pods(cri: Cri, *, name: str | None = None, namespace: str | None = None, state: str | None = None,
              labels: Mapping[str, str] | None = None, id_prefix: str = "") -> list[pb.PodSandbox]:
    """`skiff cri pods`: state and labels go to the service, the rest is matched here."""
    name_ok, namespace_ok = name_filter(name, "--name"), name_filter(namespace, "--namespace")
    return newest_first(p for p in cri.pods(state=state, labels=labels) if p.id.startswith(id_prefix)
                        and name_ok(p.metadata.name) and namespace_ok(p.metadata.namespace))


def find_containers(cri: Cri, *, pod: str | None = None, name: str | None = None, state: str | None = None,
                    labels: Mapping[str, str] | None = None) -> list[pb.Container]:
    """`skiff cri ps`: the pod (an id prefix), state and labels go to the service."""
    name_ok = name_filter(name, "--name")
    pod_id = cri.pod_id(pod) if pod else ""
    return newest_first(c for c in cri.containers(pod_id=pod_id, state=state, labels=labels)
                        if name_ok(c.metadata.name))


# -- parsing the command line and config files -----------------------------------------------

def parse_labels(pairs: Iterable[str]) -> dict[str, str]:
    labels = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key:
            raise InvalidArgument(f"--label {pair!r}: want key=value")
        labels[key] = value
    return labels


def name_filter(pattern: str | None, flag: str) -> Callable[[str], bool]:
    """crictl's name and namespace filters: a regular expression found anywhere in the name."""
    if not pattern:
        return lambda _: True
    try:
        search = re.compile(pattern).search
    except re.error as e:
        raise InvalidArgument(f"{flag} {pattern!r}: not a regular expression: {e}") from e
    return lambda name: search(name) is not None


def load_config(path: str, message: M) -> M:
    """A config file in the protobuf JSON mapping (snake_case or camelCase names, as crictl
    reads them); an unknown field is an error that names the file and the field."""
    with open(path) as f:
        text = f.read()
    try:
        data = json.loads(text)
    except ValueError as e:
        raise InvalidArgument(f"{path}: not JSON: {e}") from e
    if not isinstance(data, dict):
        raise InvalidArgument(f"{path}: want a JSON object, not {type(data).__name__}")
    try:
        json_format.ParseDict(data, message)
    except json_format.ParseError as e:
        # The first line names the field and where it is; the rest lists every valid field.
        raise InvalidArgument(f"{path}: {str(e).splitlines()[0]}") from e
    return message


def load_pod_config(path: str) -> pb.PodSandboxConfig:
    """As crictl's loadPodSandboxConfig: name and namespace are required, a missing uid is made up."""
    config = load_config(path, pb.PodSandboxConfig())
    if not config.metadata.name or not config.metadata.namespace:
        raise InvalidArgument(f"{path}: metadata.name and metadata.namespace must be set")
    if not config.metadata.uid:
        config.metadata.uid = str(uuid.uuid4())
    return config


def load_container_config(path: str) -> pb.ContainerConfig:
    config = load_config(path, pb.ContainerConfig())
    if not config.metadata.name:
        raise InvalidArgument(f"{path}: metadata.name must be set")
    return config


# -- output -----------------------------------------------------------------------------------

def short_id(full: str) -> str:
    return full.removeprefix("sha256:")[:SHORT_ID]


def human_duration(seconds: float) -> str:
    """docker's go-units HumanDuration, which crictl prints."""
    if int(seconds) < 1:
        return "Less than a second"
    if int(seconds) < 60:
        return "1 second" if int(seconds) == 1 else f"{int(seconds)} seconds"
    minutes = int(seconds // 60)
    if minutes < 60:
        return "About a minute" if minutes == 1 else f"{minutes} minutes"
    hours = int(seconds / 3600 + 0.5)
    if hours == 1:
        return "About an hour"
    for limit, unit, hours_each in ((48, "hours", 1), (24 * 14, "days", 24), (24 * 60, "weeks", 24 * 7),
                                    (24 * 730, "months", 24 * 30)):
        if hours < limit:
            return f"{hours // hours_each} {unit}"
    return f"{int(seconds // 3600) // (24 * 365)} years"


def ago(created_ns: int, now_ns: int) -> str:
    return human_duration((now_ns - created_ns) / 1e9) + " ago"


def human_size(size: int) -> str:
    """go-units HumanSizeWithPrecision(size, 3): decimal units, as `crictl images` shows."""
    value = float(size)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000:
            return f"{value:.3g}{unit}"
        value /= 1000
    return f"{value:.3g}PB"


def pods_table(pods: Iterable[pb.PodSandbox], now_ns: int | None = None) -> str:
    now_ns = time.time_ns() if now_ns is None else now_ns
    rows = [[short_id(p.id), ago(p.created_at, now_ns), "Ready" if p.state == pb.SANDBOX_READY else "NotReady",
             p.metadata.name, p.metadata.namespace, str(p.metadata.attempt)] for p in pods]
    return table(rows, ["POD ID", "CREATED", "STATE", "NAME", "NAMESPACE", "ATTEMPT"])


def containers_table(containers: Iterable[pb.Container], now_ns: int | None = None) -> str:
    now_ns = time.time_ns() if now_ns is None else now_ns
    rows = [[short_id(c.id), _image_column(c.image.image), ago(c.created_at, now_ns),
             pb.ContainerState.Name(c.state).removeprefix("CONTAINER_").title(), c.metadata.name,
             str(c.metadata.attempt), short_id(c.pod_sandbox_id)] for c in containers]
    return table(rows, ["CONTAINER", "IMAGE", "CREATED", "STATE", "NAME", "ATTEMPT", "POD ID"])


def _image_column(image: str) -> str:
    """kubelet puts the image id (a digest) in Container.image: cut it as crictl does."""
    return short_id(image) if re.fullmatch(r"sha256:[0-9a-f]{64}", image) else image


def images_table(images: Iterable[pb.Image]) -> str:
    rows = [[repo, tag, short_id(i.id), human_size(i.size)] for i in images for repo, tag in _repo_tags(i)]
    return table(rows, ["IMAGE", "TAG", "IMAGE ID", "SIZE"])


def _repo_tags(image: pb.Image) -> list[tuple[str, str]]:
    if image.repo_tags:
        return [(t.rpartition(":")[0], t.rpartition(":")[2]) for t in image.repo_tags]
    return [(d.partition("@")[0], "<none>") for d in image.repo_digests] or [("<none>", "<none>")]


def newest_first(items: Iterable[M]) -> list[M]:
    return sorted(items, key=lambda item: int(getattr(item, "created_at")), reverse=True)


def status_json(status: Message, info: Mapping[str, str]) -> str:
    return json.dumps(_status_document(status, info), indent=2)


def container_status_json(response: pb.ContainerStatusResponse) -> str:
    """As crictl: the three times in RFC 3339 rather than nanoseconds, when they are set."""
    document = _status_document(response.status, response.info)
    for field in ("createdAt", "startedAt", "finishedAt"):
        if ns := int(document["status"][field]):
            document["status"][field] = format_timestamp(ns).decode()
    return json.dumps(document, indent=2)


def _status_document(status: Message, info: Mapping[str, str]) -> dict[str, Any]:
    """crictl's inspect output: the status in the protobuf JSON mapping (zero values
    included) and each verbose info entry beside it, parsed when it is a JSON object."""
    document: dict[str, Any] = {"status": json_format.MessageToDict(status, always_print_fields_with_no_presence=True)}
    for key in sorted(info):
        document[key] = json.loads(info[key]) if info[key].startswith("{") else info[key].strip('"')
    return document


def version_text(version: pb.VersionResponse) -> str:
    return (f"Version:  {version.version}\nRuntimeName:  {version.runtime_name}\n"
            f"RuntimeVersion:  {version.runtime_version}\nRuntimeApiVersion:  {version.runtime_api_version}")


# -- logs -------------------------------------------------------------------------------------

class LogRecord(NamedTuple):
    """One line as the container wrote it: its `P` pieces joined, with the first one's time."""
    stream: Stream
    timestamp: int
    text: bytes  # ends in \n unless the file ends in the middle of the line


def log_records(lines: Iterable[bytes], *, warn: Callable[[str], None]) -> Iterator[LogRecord]:
    """`lines` of a CRI log file (from logs.follow) to records. Pieces are joined per stream:
    a long stdout line and a stderr line may interleave in the file."""
    pending: dict[Stream, list[bytes]] = {}
    started: dict[Stream, int] = {}
    for raw in lines:
        try:
            line = parse_line(raw)
        except LogFormatError as e:
            warn(f"skipping a line: {e}")
            continue
        pending.setdefault(line.stream, []).append(line.text)
        started.setdefault(line.stream, line.timestamp)
        if not line.partial:
            yield LogRecord(line.stream, started.pop(line.stream), b"".join(pending.pop(line.stream)) + b"\n")
    for stream, pieces in pending.items():  # the file ends inside a line: show it as it stands
        yield LogRecord(stream, started[stream], b"".join(pieces))


def print_logs(path: str, *, out: IO[bytes], err: IO[bytes], tail: int | None = None, timestamps: bool = False,
               until: Callable[[], bool] | None = None, warn: Callable[[str], None]) -> None:
    """The log at `path`: stdout lines to `out`, stderr lines to `err`. With `until`, follows
    the file until `until()` is true (the container exited) and the file is drained;
    without, it reads what is there. `tail` counts the lines there at the start."""
    if until is None and not os.path.exists(path):
        raise NotFound(f"{path}: the container's log file does not exist")
    skip = 0
    if tail is not None:
        skip = max(0, sum(1 for _ in log_records(follow(path, until=lambda: True), warn=lambda _: None)) - tail)
    records = log_records(follow(path, until=until or (lambda: True), poll_interval=0.2), warn=warn)
    for record in islice(records, skip, None):
        target = out if record.stream is Stream.STDOUT else err
        target.write(format_timestamp(record.timestamp) + b" " + record.text if timestamps else record.text)
        if until is not None:
            target.flush()


def exit_watch(cri: Cri, container_id: str, every: float = 1.0) -> Callable[[], bool]:
    """`until` for following a log: true once the container stopped running. It asks the
    service at most once per `every` seconds (logs.follow asks on each poll of a drained file)."""
    asked = 0.0

    def exited() -> bool:
        nonlocal asked
        if time.monotonic() - asked < every:
            return False
        asked = time.monotonic()
        return not cri.still_running(container_id)

    return exited
