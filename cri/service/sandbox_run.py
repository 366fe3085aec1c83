"""RunPodSandbox (containerd `internal/cri/server/sandbox_run.go`).

Order, each undo known before the step that needs it:
  reserve the name → record (UNKNOWN: recovery finds a crash from here on) → pod dir with
  hostname, hosts, resolv.conf → shm tmpfs (pod IPC) → pod cgroup → namespaces pinned by a
  fork-server worker (+ pause for a pod PID namespace) → network → record READY.
On failure `teardown_sandbox` undoes whatever exists, the same code Stop and Remove use; if
that fails too, the record stays (UNKNOWN) so a RemovePodSandbox can finish the job.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import time

from cri_api.v1 import api_pb2 as pb

from skiff.cri import pod_namespaces
from skiff.cri.container_spec import pod_hostname
from skiff.cri.network import PodNetwork, PortMapping, PortProtocol
from skiff.cri.service.context import ServiceContext
from skiff.cri.service.sandbox_stop import teardown_sandbox
from skiff.cri.store.sandbox import SandboxRecord, SandboxState, sandbox_name
from skiff.errors import InvalidArgument
from skiff.runtime import libc
from skiff.runtime.cgroups import open_cgroup

_PROTOCOLS = {pb.TCP: PortProtocol.TCP, pb.UDP: PortProtocol.UDP, pb.SCTP: PortProtocol.SCTP}
SHM_SIZE = 64 << 20  # Docker's and containerd's default /dev/shm


def require(value: str, field: str) -> str:
    if not value:
        raise InvalidArgument(f"{field}: must not be empty")
    return value


def namespace_options(config: pb.PodSandboxConfig) -> pb.NamespaceOption:
    return config.linux.security_context.namespace_options


def pod_cgroup_name(config: pb.PodSandboxConfig, sandbox_id: str) -> str:
    """The sandbox's cgroup, relative to the service's cgroup parent. kubelet's own parent
    (/kubepods/burstable/pod<uid>) is nested under it, never used from the hierarchy's root:
    skiff creates cgroups only below its own parent. Each sandbox has a leaf of its own there,
    since kubelet may run a pod's next sandbox before it removes the last one."""
    wanted = config.linux.cgroup_parent.strip("/")
    if any(part in (".", "..") for part in wanted.split("/")):
        raise InvalidArgument(f"config.linux.cgroup_parent: {config.linux.cgroup_parent!r}: "
                              "'.' and '..' are not allowed")
    own = f"pod-{sandbox_id}"
    return f"{wanted}/{own}" if wanted else own


def port_mappings(config: pb.PodSandboxConfig) -> list[PortMapping]:
    mappings = []
    for i, m in enumerate(config.port_mappings):
        if m.host_port <= 0:
            continue  # a containerPort without hostPort is documentation only
        if m.protocol not in _PROTOCOLS:
            raise InvalidArgument(f"config.port_mappings[{i}].protocol: unknown value {m.protocol}")
        if not 0 < m.container_port < 65536 or m.host_port > 65535:
            raise InvalidArgument(f"config.port_mappings[{i}]: ports must be 1-65535")
        mappings.append(PortMapping(host_port=m.host_port, container_port=m.container_port,
                                    protocol=_PROTOCOLS[m.protocol], host_ip=m.host_ip or None))
    return mappings


def _resolv_conf(config: pb.PodSandboxConfig) -> str:
    dns = config.dns_config
    if not (dns.servers or dns.searches or dns.options):
        try:
            with open("/etc/resolv.conf") as f:
                return f.read()
        except FileNotFoundError:
            return ""
    lines = [f"nameserver {s}" for s in dns.servers]
    if dns.searches:
        lines.append("search " + " ".join(dns.searches))
    if dns.options:
        lines.append("options " + " ".join(dns.options))
    return "\n".join(lines) + "\n"


def _hosts(hostname: str, network: PodNetwork | None, host_network: bool) -> str:
    if host_network:
        try:
            with open("/etc/hosts") as f:
                return f.read()
        except FileNotFoundError:
            pass
    text = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
    if network is not None:
        text += f"{network.ip}\t{hostname}\n"
    return text


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def run_pod_sandbox(ctx: ServiceContext, request: pb.RunPodSandboxRequest) -> pb.RunPodSandboxResponse:
    config = request.config
    meta = config.metadata
    require(meta.name, "config.metadata.name")
    require(meta.namespace, "config.metadata.namespace")
    require(meta.uid, "config.metadata.uid")
    if request.runtime_handler not in ("", "skiff", "runc"):
        raise InvalidArgument(f"runtime_handler: {request.runtime_handler!r}: skiff has only its "
                              "default handler (\"\")")
    options = namespace_options(config)
    host_network = options.network == pb.NODE
    shared = [t for t, mode in (("network", options.network), ("ipc", options.ipc))
              if mode != pb.NODE]
    if not host_network:
        shared.append("uts")  # Kubernetes ties UTS to the network: a host-network pod has the host's name
    shared_pid = options.pid == pb.POD
    hostname = pod_hostname(config)
    sysctls = dict(config.linux.sysctls)
    pod_namespaces.check_sysctls(sysctls, shared)
    mappings = port_mappings(config)
    if host_network and mappings:
        mappings = []  # the host's ports are the pod's already (containerd ignores them too)

    sandbox_id = secrets.token_hex(32)
    name = sandbox_name(name=meta.name, namespace=meta.namespace, uid=meta.uid, attempt=meta.attempt)
    ctx.sandboxes.reserve_name(name, sandbox_id)
    try:
        record = SandboxRecord(
            id=sandbox_id, name=meta.name, uid=meta.uid, namespace=meta.namespace, attempt=meta.attempt,
            labels=dict(config.labels), annotations=dict(config.annotations), created_at=time.time_ns(),
            state=SandboxState.UNKNOWN,
            # kubelet always names one; for other clients, kubelet's own layout under log_root
            log_directory=config.log_directory or os.path.join(
                ctx.config.log_root, f"{meta.namespace}_{meta.name}_{meta.uid}"),
            cgroup_parent=pod_cgroup_name(config, sandbox_id), config=config.SerializeToString())
        ctx.sandboxes.add(record)
    except BaseException:
        ctx.sandboxes.release_name(name)
        raise
    try:
        record = _set_up(ctx, record, shared=shared, shared_pid=shared_pid, hostname=hostname,
                         sysctls=sysctls, mappings=mappings, host_network=host_network)
    except BaseException as cause:
        try:
            teardown_sandbox(ctx, ctx.sandboxes.get(sandbox_id), remove=True)
        except Exception as undo_error:  # keep the UNKNOWN record: Remove finishes the job
            cause.add_note(f"while undoing: {undo_error}; RemovePodSandbox {sandbox_id} cleans up")
        raise
    return pb.RunPodSandboxResponse(pod_sandbox_id=record.id)


def _pod_cgroup(ctx: ServiceContext, record: SandboxRecord) -> SandboxRecord:
    from dataclasses import replace

    cgroup = open_cgroup(container_id=record.cgroup_parent, cgroups_path=None, parent=ctx.config.cgroup_parent)
    try:
        cgroup.create()
    finally:  # what create made is in the record even if it failed half way
        record = ctx.sandboxes.update(record.id, lambda r: replace(r, pod_cgroup=json.dumps(cgroup.record())))
    return record


def _set_up(ctx: ServiceContext, record: SandboxRecord, *, shared: list[str], shared_pid: bool,
            hostname: str, sysctls: dict[str, str], mappings: list[PortMapping],
            host_network: bool) -> SandboxRecord:
    from dataclasses import replace

    pod_dir, files = ctx.pod_dir(record.id), ctx.pod_files_dir(record.id)
    os.makedirs(os.path.join(pod_dir, "ns"), mode=0o711)
    os.mkdir(files, mode=0o711)
    if record.log_directory:
        os.makedirs(record.log_directory, mode=0o755, exist_ok=True)
    config = pb.PodSandboxConfig.FromString(record.config)
    _write(os.path.join(files, "hostname"), (hostname or socket.gethostname()) + "\n")
    _write(os.path.join(files, "resolv.conf"), _resolv_conf(config))
    if "ipc" in shared:
        shm = os.path.join(pod_dir, "shm")
        os.mkdir(shm)
        libc.mount("shm", shm, "tmpfs", libc.MS_NOSUID | libc.MS_NODEV | libc.MS_NOEXEC,
                   f"mode=1777,size={SHM_SIZE}")
    pause_joins: tuple[str, ...] = ()
    if shared_pid:
        record = _pod_cgroup(ctx, record)
        # Recorded before the pause exists, which is born into it: teardown finds it there
        # even if the daemon dies before it learns the pause's pid.
        pause_cgroup = open_cgroup(container_id=f"{record.cgroup_parent}/pause", cgroups_path=None,
                                   parent=ctx.config.cgroup_parent)
        try:
            pause_cgroup.create()
        finally:
            record = ctx.sandboxes.update(record.id, lambda r: replace(
                r, pause_cgroup=json.dumps(pause_cgroup.record())))
        pause_joins = pause_cgroup.self_joins(False)
    with ctx.forkserver.call("pin_namespaces", {
            "ns_dir": os.path.join(pod_dir, "ns"), "types": shared, "hostname": hostname,
            "sysctls": sysctls, "pid": shared_pid, "pause_joins": list(pause_joins)}) as pin:
        if not shared_pid:
            try:
                record = _pod_cgroup(ctx, record)  # while the worker makes the namespaces
            except BaseException:
                with contextlib.suppress(Exception):
                    pin.receive()  # done with what it makes: the teardown undoes it with the rest
                raise
        reply, fds = pin.receive()
    netlink = socket.socket(fileno=fds[0]) if fds else None  # in the pod's new netns
    try:
        return _finish_set_up(ctx, record, reply, netlink, namespace_paths={
            t: os.path.join(pod_dir, "ns", pod_namespaces.SHARED[t][0]) for t in shared},
            hostname=hostname, mappings=mappings, host_network=host_network, files=files)
    finally:
        if netlink is not None:
            netlink.close()


def _finish_set_up(ctx: ServiceContext, record: SandboxRecord, reply: dict[str, object],
                   netlink: socket.socket | None, *, namespace_paths: dict[str, str], hostname: str,
                   mappings: list[PortMapping], host_network: bool, files: str) -> SandboxRecord:
    """Once the namespaces are pinned: the pause's pid, the network (through `netlink`, a
    socket in the pod's netns, when pin made one), /etc/hosts, and the record READY."""
    from dataclasses import replace

    pause_pid = int(str(reply["pause_pid"]))
    pause_start = 0
    if pause_pid:
        from skiff.runtime.container import proc_start_time

        pause_start = proc_start_time(pause_pid) or 0
        record = ctx.sandboxes.update(record.id, lambda r: replace(r, pause_pid=pause_pid, pause_start=pause_start))
        namespace_paths["pid"] = f"/proc/{pause_pid}/ns/pid"
    network = None
    netns = namespace_paths.get("network", "")
    if not host_network:
        network = ctx.network.setup(netns, record.id, mappings, pod_name=record.name,
                                    pod_namespace=record.namespace, pod_uid=record.uid, netlink=netlink)
    _write(os.path.join(files, "hosts"), _hosts(hostname, network, host_network))
    return ctx.sandboxes.update(record.id, lambda r: replace(
        r, state=SandboxState.READY, namespace_paths=namespace_paths, netns_path=netns,
        ip=str(network.ip) if network is not None else ""))

