"""skiff: the user's command line, as a podman or containerd user expects it: images (pull,
build, import, export, images, inspect, tag, rmi) and `run IMAGE`, end to end through the
runtime library. The OCI runtime CLI for other engines is `skiff-runc`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING, Any

from skiff.errors import InvalidArgument, SkiffError

if TYPE_CHECKING:
    from collections.abc import Callable

    from skiff.cri.client import Cri  # imported when a `cri` command runs: it brings grpc

IMAGES_ROOT = os.environ.get("SKIFF_ROOT", "/var/lib/skiff")
STATE_ROOT = os.environ.get("SKIFF_STATE", "/run/skiff")


def parse_size(text: str) -> int:
    units = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    number, unit = text.rstrip("bBkKmMgG"), text[len(text.rstrip("bBkKmMgG")):].lower().rstrip("b")
    if not number.isdigit() or unit not in units:
        raise InvalidArgument(f"size {text!r}: expected a number with an optional k, m or g")
    return int(number) * units[unit]


def images(args: argparse.Namespace) -> Any:
    from skiff.images.service import Images

    return Images(args.root)


# -- commands ---------------------------------------------------------------------------------

def cmd_version(args: argparse.Namespace) -> int:
    from skiff import __version__

    print(f"skiff {__version__}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from skiff.demo import main as demo

    return demo()


def cmd_pull(args: argparse.Namespace) -> int:
    record = images(args).pull(args.image, platform=args.platform)
    print(f"{record.name} {record.digest}")
    return 0


def cmd_images(args: argparse.Namespace) -> int:
    store = images(args).store
    rows = [[r.name, r.digest.partition(":")[2][:12], _human(store.size(r.digest)),
             r.created.strftime("%Y-%m-%d %H:%M:%S")] for r in store.images()]
    header = ["IMAGE", "DIGEST", "MANIFEST", "CREATED"]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("   ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from skiff.oci import image as oci

    resolved = images(args).resolve(args.image, platform=args.platform)
    json.dump({"name": resolved.name, "digest": resolved.digest, "manifest": oci.to_json(resolved.manifest),
               "config": oci.to_json(resolved.image)}, sys.stdout, indent=2)
    print()
    return 0


def cmd_tag(args: argparse.Namespace) -> int:
    from skiff.images.service import normalize

    images(args).store.tag(normalize(args.source), normalize(args.target))
    return 0


def cmd_rmi(args: argparse.Namespace) -> int:
    imgs = images(args)
    for name in args.images:
        print(imgs.remove(name).name)
    imgs.gc()
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    """An OCI layout directory, an oci-archive, or a docker-archive (`docker save`); a
    docker-archive has a top-level manifest.json (docker 25 writes index.json too)."""
    from skiff.images import docker_archive, layout
    from skiff.images.service import normalize

    store = images(args).store
    name = normalize(args.name) if args.name else None
    if os.path.isdir(args.source):
        records = layout.import_layout(store, args.source, name=name)
    elif _has_member(args.source, "manifest.json"):
        records = docker_archive.import_docker_archive(store, args.source, name=name)
    else:
        records = layout.import_archive(store, args.source, name=name)
    for record in records:
        print(f"{record.name} {record.digest}")
    return 0


def _has_member(archive: str, member: str) -> bool:
    import tarfile

    try:
        with tarfile.open(archive) as tar:
            return any(m.name.lstrip("./") == member for m in tar)
    except (OSError, tarfile.TarError) as e:
        raise InvalidArgument(f"{archive}: not a tar archive: {e}") from e


def cmd_export(args: argparse.Namespace) -> int:
    from skiff.images import docker_archive, layout
    from skiff.images.service import normalize

    write = {"oci-archive": layout.export_archive, "oci": layout.export_layout,
             "docker-archive": docker_archive.export_docker_archive}[args.format]
    write(images(args).store, normalize(args.image), args.destination)
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    import tempfile

    from skiff.images import build, layout
    from skiff.images.service import normalize
    from skiff.oci import image as oci

    config = oci.ImageConfig(
        env=tuple(args.env) or (build.DEFAULT_PATH,),
        entrypoint=tuple(_json_list(args.entrypoint, "--entrypoint")) if args.entrypoint else None,
        cmd=tuple(_json_list(args.cmd, "--cmd")) if args.cmd else None,
        working_dir=args.workdir, user=args.user,
        exposed_ports={port: oci.EmptyObject() for port in args.expose},
    )
    name = normalize(args.tag)
    with tempfile.TemporaryDirectory(prefix="skiff-build-") as tmp:
        build.build(tmp, args.sources, tag="build", config=config)
        for record in layout.import_layout(images(args).store, tmp, name=name):
            print(f"{record.name} {record.digest}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    import dataclasses
    import secrets

    from skiff.images.runtime_config import runtime_spec
    from skiff.oci import spec_to_dict
    from skiff.oci.spec import Linux, LinuxCPU, LinuxMemory, LinuxResources
    from skiff.runtime.container import Runtime

    imgs = images(args)
    container_id = args.name or f"skiff-{secrets.token_hex(6)}"
    entrypoint = _json_list(args.entrypoint, "--entrypoint") if args.entrypoint else None
    rootfs, resolved = imgs.prepare(args.image, container_id)
    try:
        spec = runtime_spec(resolved.image.config, rootfs, args=args.args, env=args.env, user=args.user,
                            working_dir=args.workdir, entrypoint=entrypoint)
        resources = LinuxResources(
            memory=LinuxMemory(limit=parse_size(args.memory)) if args.memory else None,
            cpu=LinuxCPU(quota=int(args.cpus * 100000), period=100000) if args.cpus else None)
        assert spec.process is not None and spec.linux is not None
        spec = dataclasses.replace(spec, process=dataclasses.replace(spec.process, terminal=args.tty),
                                   linux=dataclasses.replace(spec.linux, resources=resources))
        bundle = os.path.dirname(rootfs)
        with open(os.path.join(bundle, "config.json"), "w") as f:
            json.dump(spec_to_dict(spec), f)
        return int(Runtime(args.state).run(container_id, bundle))
    finally:
        # The container is gone once it exits (as with --rm): so is its snapshot. A failure
        # here is reported without replacing the container's exit code.
        try:
            imgs.release(container_id)
        except (SkiffError, OSError) as e:
            print(f"skiff: removing the snapshot of {container_id}: {e}", file=sys.stderr)


def _json_list(text: str, flag: str) -> list[str]:
    try:
        value = json.loads(text)
    except ValueError as e:
        raise InvalidArgument(f"{flag} {text!r}: not JSON: {e}") from e
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidArgument(f"{flag} {text!r}: expected a JSON list of strings")
    return value


def cmd_cri(args: argparse.Namespace) -> int:
    """`serve` runs the service; every other command is a client of a CRI socket (crictl's
    commands, crictl's output). A gRPC error prints its status code and details."""
    if args.cri_command == "serve":
        return _cri_serve(args)
    import grpc

    from skiff.cri.client import Cri, socket_path

    try:
        with Cri(socket_path(args.socket)) as cri:
            return int(args.cri_func(cri, args))
    except grpc.RpcError as e:
        print(f"skiff cri {args.cri_command}: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    except SkiffError as e:
        print(f"skiff cri {args.cri_command}: {e}", file=sys.stderr)
        return 1


def _cri_serve(args: argparse.Namespace) -> int:
    import dataclasses
    import logging

    from skiff.cri import config
    from skiff.cri.server import serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = config.load(args.config)
    if args.socket:
        settings = dataclasses.replace(settings, socket=args.socket)
    if args.netns:
        settings = dataclasses.replace(settings, netns=args.netns)
    serve(settings)
    return 0


def _cri_pods(cri: Cri, args: argparse.Namespace) -> int:
    from skiff.cri import client

    pods = client.find_pods(cri, name=args.name, namespace=args.namespace, state=args.state,
                            labels=client.parse_labels(args.label), id_prefix=args.id)
    for line in [p.id for p in pods] if args.quiet else [client.pods_table(pods)]:
        print(line)
    return 0


def _cri_ps(cri: Cri, args: argparse.Namespace) -> int:
    from skiff.cri import client

    state = args.state or (None if args.all else "running")
    containers = client.find_containers(cri, pod=args.pod, name=args.name, state=state,
                                        labels=client.parse_labels(args.label))
    for line in [c.id for c in containers] if args.quiet else [client.containers_table(containers)]:
        print(line)
    return 0


def _cri_inspect(cri: Cri, args: argparse.Namespace) -> int:
    from skiff.cri import client

    print(client.container_status_json(cri.container_status(cri.container_id(args.id), verbose=True)))
    return 0


def _cri_inspectp(cri: Cri, args: argparse.Namespace) -> int:
    from skiff.cri import client

    response = cri.pod_status(cri.pod_id(args.id))
    print(client.status_json(response.status, response.info))
    return 0


def _cri_inspecti(cri: Cri, args: argparse.Namespace) -> int:
    from skiff.cri import client

    response = cri.image_status(args.image)
    print(client.status_json(response.image, response.info))
    return 0


def _cri_info(cri: Cri, args: argparse.Namespace) -> int:
    from skiff.cri import client

    response = cri.status()
    print(client.status_json(response.status, response.info))
    return 0


def _cri_version(cri: Cri, args: argparse.Namespace) -> int:
    from skiff.cri import client

    print(client.version_text(cri.version()))
    return 0


def _cri_images(cri: Cri, args: argparse.Namespace) -> int:
    from skiff.cri import client

    print(client.images_table(cri.list_images()))
    return 0


def _cri_logs(cri: Cri, args: argparse.Namespace) -> int:
    from skiff.cri import client

    container_id = cri.container_id(args.id)
    until = client.exit_watch(cri, container_id) if args.follow else None
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        client.print_logs(cri.log_path(container_id), out=sys.stdout.buffer, err=sys.stderr.buffer, tail=args.tail,
                          timestamps=args.timestamps, until=until,
                          warn=lambda message: print(f"skiff cri logs: {message}", file=sys.stderr))
    finally:
        sys.stdout.buffer.flush()
        sys.stderr.buffer.flush()
    return 0


def _cri_exec(cri: Cri, args: argparse.Namespace) -> int:
    if not args.command:
        raise InvalidArgument("exec: name the command to run after the container id")
    if args.interactive or args.tty:   # crictl's way: Exec's URL, then the stream
        from cri_api.v1 import api_pb2 as pb

        from skiff.cri.streaming.client import run_exec

        url = cri.runtime.Exec(pb.ExecRequest(container_id=cri.container_id(args.id), cmd=args.command,
                                              stdin=args.interactive, tty=args.tty, stdout=True,
                                              stderr=not args.tty)).url
        return run_exec(url, stdin=sys.stdin.buffer if args.interactive else None, tty=args.tty)
    response = cri.exec_sync(cri.container_id(args.id), args.command, args.timeout)
    _print_output(response.stdout, response.stderr)
    return int(response.exit_code)


def _print_output(stdout: bytes, stderr: bytes) -> None:
    """An exec'd command's output, its bytes as they are, after what was printed before them."""
    for stream, data in ((sys.stdout, stdout), (sys.stderr, stderr)):
        stream.flush()
        stream.buffer.write(data)
        stream.buffer.flush()


def _cri_runp(cri: Cri, args: argparse.Namespace) -> int:
    from skiff.cri import client

    print(cri.run_pod(client.load_pod_config(args.pod_config)))
    return 0


def _cri_create(cri: Cri, args: argparse.Namespace) -> int:
    from skiff.cri import client

    config, pod_config = client.load_container_config(args.container_config), client.load_pod_config(args.pod_config)
    print(cri.create_container(cri.pod_id(args.pod_id), config, pod_config))
    return 0


def _cri_start(cri: Cri, args: argparse.Namespace) -> int:
    container_id = cri.container_id(args.id)
    cri.start(container_id)
    print(container_id)
    return 0


def _cri_stop(cri: Cri, args: argparse.Namespace) -> int:
    container_id = cri.container_id(args.id)
    cri.stop(container_id, args.timeout)
    print(container_id)
    return 0


def _cri_rm(cri: Cri, args: argparse.Namespace) -> int:
    container_id = cri.container_id(args.id)
    cri.remove(container_id)
    print(container_id)
    return 0


def _cri_stopp(cri: Cri, args: argparse.Namespace) -> int:
    pod_id = cri.pod_id(args.id)
    cri.stop_pod(pod_id)
    print(f"Stopped sandbox {pod_id}")
    return 0


def _cri_rmp(cri: Cri, args: argparse.Namespace) -> int:
    pod_id = cri.pod_id(args.id)
    cri.remove_pod(pod_id)
    print(f"Removed sandbox {pod_id}")
    return 0


def _cri_pull(cri: Cri, args: argparse.Namespace) -> int:
    print(f"Image is up to date for {cri.pull(args.image)}")
    return 0



def cmd_bench(args: argparse.Namespace) -> int:
    """Benchmarks against the peers installed beside skiff (skiff.benchmark, imported only
    here: it brings grpc and, for the PNG, matplotlib)."""
    from skiff.benchmark.start import parse_options, run

    options = parse_options(runtimes=args.runtimes, count=args.count, warmup=args.warmup,
                            concurrency=args.concurrency, running=args.running, breakdown=args.breakdown,
                            json_path=args.json, png_path=args.png, cri_sockets=args.cri_socket,
                            cri_image=args.cri_image, settle_ms=args.settle)
    return run(options)


def _human(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1000  # type: ignore[assignment]
    return str(n)


# -- parsing ----------------------------------------------------------------------------------

def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="skiff", description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--root", default=IMAGES_ROOT, help="images, layers and snapshots (default %(default)s)")
    p.add_argument("--state", default=STATE_ROOT, help="container state (default %(default)s)")
    sub = p.add_subparsers(dest="command", required=True, metavar="command")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help)
        c.set_defaults(func=globals()[f"cmd_{name.replace('-', '_')}"])
        return c

    command("version", "print skiff's version")
    command("demo", "build a busybox bundle and run a container from it")
    c = command("pull", "pull an image from a registry")
    c.add_argument("image")
    c.add_argument("--platform", help="os/arch[/variant] (default: this machine's)")
    command("images", "list images")
    c = command("inspect", "show an image's manifest and config")
    c.add_argument("image")
    c.add_argument("--platform")
    c = command("tag", "give an image another name")
    c.add_argument("source")
    c.add_argument("target")
    c = command("rmi", "remove images (and what no other image uses)")
    c.add_argument("images", nargs="+")
    c = command("import", "import an OCI layout directory, an oci-archive or a docker-archive")
    c.add_argument("source")
    c.add_argument("name", nargs="?")
    c = command("export", "export an image as an oci-archive, an OCI layout directory or a docker-archive")
    c.add_argument("image")
    c.add_argument("destination")
    c.add_argument("--format", choices=("oci-archive", "oci", "docker-archive"), default="oci-archive")
    c = command("build", "build an image from directories or tarballs, one layer each")
    c.add_argument("sources", nargs="+")
    c.add_argument("--tag", "-t", required=True)
    c.add_argument("--entrypoint", help='JSON list, e.g. ["/bin/sh","-c"]')
    c.add_argument("--cmd", help='JSON list, e.g. ["echo","hi"]')
    c.add_argument("--env", "-e", action="append", default=[])
    c.add_argument("--workdir")
    c.add_argument("--user")
    c.add_argument("--expose", action="append", default=[], help="port/proto")
    c = command("run", "run a container from an image")
    c.add_argument("--rm", action="store_true", help="remove the container when it exits (always, for now)")
    c.add_argument("--name")
    c.add_argument("--env", "-e", action="append", default=[])
    c.add_argument("--memory", "-m", help="memory limit, e.g. 64m")
    c.add_argument("--cpus", type=float, help="cpu limit in cores")
    c.add_argument("--user", "-u")
    c.add_argument("--workdir", "-w")
    c.add_argument("--entrypoint", help="JSON list")
    c.add_argument("--tty", "-t", action="store_true")
    c.add_argument("--interactive", "-i", action="store_true", help="accepted: stdin is always passed on")
    c.add_argument("image")
    c.add_argument("args", nargs=argparse.REMAINDER)
    _cri_parser(command("cri", "the Kubernetes CRI v1 service (serve) and a client for any CRI socket, as crictl"))
    _bench_parser(command("bench", "benchmarks: skiff against the runtimes installed beside it"))
    _orchestrator_parsers(command)
    return p


def _bench_parser(bench: argparse.ArgumentParser) -> None:
    sub = bench.add_subparsers(dest="bench_command", required=True, metavar="command")
    c = sub.add_parser("start", help="container start latency: skiff (library, skiff-runc, CRI) against runc, "
                       "crun and CRI sockets",
                       description="Start latency of one container, on the same bundle or image, for skiff "
                       "and every peer found; prints a table, writes JSON and a PNG.")
    c.add_argument("--runtimes", metavar="LIST",
                   help="comma-separated, from library, skiff-runc, runc, crun, cri:skiff, cri:NAME "
                   "(default: every one found)")
    c.add_argument("--count", type=int, default=50, metavar="N", help="measured runs per runtime (default %(default)s)")
    c.add_argument("--warmup", type=int, default=5, metavar="N", help="unmeasured rounds first (default %(default)s)")
    c.add_argument("--concurrency", type=int, default=1, metavar="N",
                   help="also N threads starting containers at once: percentiles and containers/s (default: off)")
    c.add_argument("--running", default="0", metavar="K,K,...",
                   help="measure again with K containers already running, e.g. 0,1,100,500 (default %(default)s)")
    c.add_argument("--settle", type=int, metavar="MS",
                   help="with --running, wait MS after each run, outside the clock, for the kernel's clean-up "
                   "of the container removed (default 30; 0: back to back)")
    c.add_argument("--breakdown", action="store_true",
                   help="where the library's time goes, per phase, from real timestamps")
    c.add_argument("--json", default="skiff-bench-start.json", metavar="PATH", help="default %(default)s")
    c.add_argument("--png", default="skiff-bench-start.png", metavar="PATH", help="default %(default)s")
    c.add_argument("--cri-socket", action="append", default=[], metavar="NAME=PATH",
                   help="a peer CRI socket to measure as cri:NAME (repeatable; containerd's and CRI-O's usual "
                   "sockets are found)")
    c.add_argument("--cri-image", metavar="REF",
                   help="the image for peer CRI sockets, pulled when missing; it must have sleep "
                   "(default docker.io/library/busybox:latest)")


def _cri_parser(cri: argparse.ArgumentParser) -> None:
    """`skiff cri serve`, and the client commands with crictl's names and flags."""
    sub = cri.add_subparsers(dest="cri_command", required=True, metavar="command")
    c = sub.add_parser("serve", help="run the CRI service in the foreground")
    c.add_argument("--config", help="the service's TOML configuration (default /etc/skiff/cri.toml if it exists)")
    c.add_argument("--socket", help="override the configuration's socket")
    c.add_argument("--netns", metavar="PATH", help="override the configuration's netns: the node's network "
                   "namespace (pulls still go out from this one)")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--socket", help="the CRI socket (default $SKIFF_CRI_SOCKET, else /run/skiff/skiff.sock)")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help, parents=[common])
        c.set_defaults(cri_func=globals()[f"_cri_{name}"])
        return c

    c = command("pods", "list pod sandboxes, newest first")
    c.add_argument("--name", help="regular expression the pod's name must match")
    c.add_argument("--namespace", help="regular expression the pod's namespace must match")
    c.add_argument("--state", type=str.lower, choices=("ready", "notready"))
    c.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    c.add_argument("--id", default="", metavar="PREFIX", help="only pods whose id starts with PREFIX")
    c.add_argument("--quiet", "-q", action="store_true", help="print only pod ids")
    c = command("ps", "list containers (only running ones without -a), newest first")
    c.add_argument("--all", "-a", action="store_true")
    c.add_argument("--pod", "-p", metavar="POD_ID", help="only the containers of this pod (an id or a unique prefix)")
    c.add_argument("--name", help="regular expression the container's name must match")
    c.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    c.add_argument("--state", type=str.lower, choices=("created", "running", "exited", "unknown"))
    c.add_argument("--quiet", "-q", action="store_true", help="print only container ids")
    for name, what in (("inspect", "a container's status, as JSON"), ("inspectp", "a pod's status, as JSON")):
        command(name, what).add_argument("id")
    command("inspecti", "an image's status, as JSON").add_argument("image")
    c = command("logs", "print a container's log (read from its log file on this host)")
    c.add_argument("--follow", "-f", action="store_true", help="go on printing until the container exits")
    c.add_argument("--tail", type=int, metavar="N", help="start with the last N lines")
    c.add_argument("--timestamps", "-t", action="store_true", help="begin each line with its time")
    c.add_argument("id")
    c = command("exec", "run a command in a running container (ExecSync; Exec with -i or -t), exit with its code")
    c.add_argument("--timeout", type=int, default=0, metavar="S", help="stop it after S seconds (default: never)")
    c.add_argument("-i", "--interactive", action="store_true", help="pass stdin to the command (streaming)")
    c.add_argument("-t", "--tty", action="store_true", help="a terminal for the command (streaming)")
    c.add_argument("id")
    c.add_argument("command", nargs=argparse.REMAINDER)
    command("runp", "run a pod sandbox from a JSON PodSandboxConfig; print its id").add_argument("pod_config")
    c = command("create", "create a container in a pod from JSON ContainerConfig and PodSandboxConfig")
    c.add_argument("pod_id")
    c.add_argument("container_config")
    c.add_argument("pod_config")
    command("start", "start a created container").add_argument("id")
    c = command("stop", "stop a running container")
    c.add_argument("--timeout", "-t", type=int, default=0, metavar="S",
                   help="seconds to wait after the stop signal before killing (default %(default)s)")
    c.add_argument("id")
    command("rm", "remove a container").add_argument("id")
    command("stopp", "stop a pod sandbox and its containers").add_argument("id")
    command("rmp", "remove a pod sandbox").add_argument("id")
    command("pull", "pull an image through the image service").add_argument("image")
    command("images", "list the image service's images")
    command("version", "the runtime's name and versions")
    command("info", "the runtime's status conditions and verbose info, as JSON")


def timing_flags(c: argparse.ArgumentParser, *, control_plane: bool = True, agent: bool = True) -> None:
    """How soon a silent node is noticed, with Kubernetes' flag names (kube-controller-manager's
    and kubelet's); skiff cluster passes them on."""
    from skiff.orchestrator.agent.node import HEARTBEAT
    from skiff.orchestrator.controllers.nodelifecycle import EVICTION, GRACE

    if control_plane:
        c.add_argument("--node-monitor-grace-period", dest="node_grace", type=float, default=GRACE, metavar="S",
                       help="a node silent this long goes NotReady (default %(default)s)")
        c.add_argument("--pod-eviction-timeout", dest="pod_eviction", type=float, default=EVICTION, metavar="S",
                       help="then its pods are deleted after this long (default %(default)s)")
    if agent:
        c.add_argument("--node-status-update-frequency", dest="heartbeat", type=float, default=HEARTBEAT,
                       metavar="S", help="the node agent's heartbeat (default %(default)s)")


def _orchestrator_parsers(command: Callable[[str, str], argparse.ArgumentParser]) -> None:
    """kubectl's commands against skiff's API server (orchestrator/cli.py), and the control plane."""
    def client_flags(c: argparse.ArgumentParser) -> argparse.ArgumentParser:
        c.add_argument("--server", help="the API server: a unix socket, or https://HOST:PORT "
                       "(default $SKIFF_API or /run/skiff/api.sock)")
        c.add_argument("--token", help="bearer token, for https")
        c.add_argument("--certificate-authority", dest="ca", metavar="FILE", help="CA to check the server with")
        c.add_argument("-n", "--namespace", help="default: the object's own, else default")
        return c

    c = client_flags(command("apply", "create or update the objects of a Kubernetes YAML or JSON file"))
    c.add_argument("-f", "--filename", required=True, help="a file, or - for standard input")
    c = client_flags(command("get", "list objects, or show one (tables, -o yaml|json), as kubectl get"))
    c.add_argument("resource", help="pods (po), deployments (deploy), services (svc), nodes (no), ...")
    c.add_argument("name", nargs="?")
    c.add_argument("-A", "--all-namespaces", action="store_true")
    c.add_argument("-l", "--selector", default="", help="label selector, e.g. app=web,tier!=db")
    c.add_argument("-o", "--output", choices=("table", "yaml", "json"), default="table")
    c.add_argument("-w", "--watch", action="store_true", help="after the list, a line for each change, until ^C")
    c = client_flags(command("delete", "delete objects by name, or those of a file"))
    c.add_argument("resource", nargs="?")
    c.add_argument("names", nargs="*")
    c.add_argument("-f", "--filename")
    c.add_argument("--grace-period", type=int, metavar="S", help="seconds a pod has to stop (default, or -1: its "
                   "terminationGracePeriodSeconds; 0: removed at once, its node agent not waited for)")
    c = client_flags(command("describe", "one object in words: identity, what it is for, its conditions"))
    c.add_argument("resource")
    c.add_argument("name")
    c = client_flags(command("scale", "set the replicas of a deployment or replicaset"))
    c.add_argument("resource")
    c.add_argument("name")
    c.add_argument("--replicas", type=int, required=True)
    c = client_flags(command("rollout", "a deployment's rollout: status (wait), history, undo"))
    c.add_argument("action", choices=("status", "history", "undo"))
    c.add_argument("name", help="deployment/NAME or NAME")
    c.add_argument("--to-revision", type=int, default=0, help="undo to this revision (default: the previous)")
    c = client_flags(command("logs", "print a pod's container log (from its node's agent), as kubectl logs"))
    c.add_argument("pod")
    c.add_argument("-c", "--container", help="which container (needed when the pod has several)")
    c.add_argument("-f", "--follow", action="store_true", help="go on printing until the container exits")
    c.add_argument("--tail", type=int, metavar="N", help="start with the last N lines (-1: all)")
    c.add_argument("-p", "--previous", action="store_true", help="the log of the container's previous attempt")
    c = client_flags(command("exec", "run a command in a pod's container and exit with its code: "
                             "skiff exec POD [-c CONTAINER] -- CMD [ARGS...]"))
    c.add_argument("pod")
    c.add_argument("cmd", nargs="*", metavar="CMD", help="the command and its arguments, after --")
    c.add_argument("-c", "--container", help="which container (needed when the pod has several)")
    c.add_argument("-i", "--stdin", action="store_true", help="pass stdin to the command")
    c.add_argument("-t", "--tty", action="store_true", help="a terminal for the command (with -i: this one, in raw mode)")
    c.add_argument("--timeout", type=int, default=0, metavar="S", help="stop it after S seconds (default: never)")
    c = client_flags(command("attach", "a running container's own output (and stdin with -i), as kubectl attach"))
    c.add_argument("pod")
    c.add_argument("-c", "--container", help="which container (needed when the pod has several)")
    c.add_argument("-i", "--stdin", action="store_true", help="pass stdin to the container (created with stdin)")
    c.add_argument("-t", "--tty", action="store_true",
                   help="this terminal in raw mode, its size passed on (a container created with tty)")
    c = client_flags(command("port-forward", "a local port carried to a port of a pod, as kubectl port-forward"))
    c.add_argument("pod")
    c.add_argument("ports", metavar="[LOCAL:]REMOTE", help="LOCAL 0: any free port")
    c.add_argument("--address", default="127.0.0.1", help="where to listen (default %(default)s)")
    c = client_flags(command("node-agent", "run the pods the cluster binds to this node, through its CRI service"))
    c.add_argument("--name", default=os.uname().nodename, help="the node's name (default: the host name)")
    c.add_argument("--cri-socket", default="/run/skiff/skiff.sock", help="the CRI service (default %(default)s)")
    c.add_argument("--log-root", default="/var/log/pods", help="where pods' logs go (default %(default)s)")
    c.add_argument("--root", default="/var/lib/skiff/agent", help="the pods' volumes (default %(default)s)")
    c.add_argument("--label", action="append", default=[], metavar="KEY=VALUE", help="a label of the node")
    c.add_argument("--address", default="127.0.0.1", help="the node's InternalIP (default %(default)s)")
    c.add_argument("--pod-cidr", default="", help="the addresses the node's CRI gives pods (spec.podCIDR)")
    c.add_argument("--agent-listen", metavar="PATH", help="the unix socket the agent serves pods' logs and exec on "
                   "(default /run/skiff/agent/NAME.sock)")
    c.add_argument("--netns", metavar="PATH", help="run in this network namespace (a node of skiff cluster)")
    timing_flags(c, control_plane=False)
    c = client_flags(command("proxy", "program the cluster's Services into this node's nftables (kube-proxy)"))
    c.add_argument("--netns", metavar="PATH", help="run in this network namespace (a node of skiff cluster)")
    c.add_argument("--cleanup", action="store_true", help="remove the proxy's table and exit")
    c = command("cluster", "a cluster of N nodes on this machine: each a network namespace with its own "
                "CRI service, node agent and proxy")
    cluster_sub = c.add_subparsers(dest="cluster_command", required=True, metavar="command")
    up = cluster_sub.add_parser("up", help="start the control plane and N nodes, wait until they are Ready")
    up.add_argument("--nodes", type=int, default=3)
    up.add_argument("--images-root", help="the image store the nodes share (default: --root, the host's)")
    timing_flags(up)
    down = cluster_sub.add_parser("down", help="remove every pod, stop everything, remove the nodes' networks")
    status = cluster_sub.add_parser("status", help="the cluster's processes and nodes")
    for sc in (up, down, status):
        sc.add_argument("--name", default="skiff", help="the cluster's name (default %(default)s)")
    c = command("control-plane", "run the API server, the scheduler and the controllers")
    c.add_argument("--store", default="sqlite:/var/lib/skiff/orchestrator/state.db",
                   help="sqlite:PATH or etcd:http://HOST:PORT (default %(default)s)")
    c.add_argument("--listen", default="/run/skiff/api.sock", help="the unix socket (default %(default)s)")
    c.add_argument("--tcp", metavar="HOST:PORT", help="also listen on TCP, with TLS and bearer tokens (for nodes "
                   "on other machines: skiff node join)")
    c.add_argument("--tls-cert", metavar="FILE")
    c.add_argument("--tls-key", metavar="FILE")
    c.add_argument("--token-file", metavar="FILE", help="the tokens accepted on TCP, one a line")
    timing_flags(c, agent=False)
    c = command("node", "this machine as a node of a cluster on another machine")
    node_sub = c.add_subparsers(dest="node_command", required=True, metavar="command")
    j = node_sub.add_parser("join", help="join the cluster at URL and run its pods here (until SIGTERM)")
    j.add_argument("url", help="the control plane's https://HOST:PORT")
    j.add_argument("--token", required=True)
    j.add_argument("--certificate-authority", dest="ca", metavar="FILE", help="CA to check the server with")
    j.add_argument("--name", default=os.uname().nodename, help="the node's name (default: the host name)")
    j.add_argument("--cri-socket", default="/run/skiff/skiff.sock", help="the CRI service (default %(default)s)")
    j.add_argument("--log-root", default="/var/log/pods", help="where pods' logs go (default %(default)s)")
    j.add_argument("--root", default="/var/lib/skiff/agent", help="the pods' volumes (default %(default)s)")
    j.add_argument("--label", action="append", default=[], metavar="KEY=VALUE", help="a label of the node")


def _api(args: argparse.Namespace) -> Any:
    from skiff.orchestrator.cli import DEFAULT_SERVER, connect

    return connect(args.server or DEFAULT_SERVER, args.token, args.ca)


def cmd_apply(args: argparse.Namespace) -> int:
    from skiff.orchestrator.cli import apply

    print("\n".join(apply(_api(args), args.filename, args.namespace)))
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    from skiff.orchestrator.cli import get, watch

    options = {"namespace": args.namespace, "all_namespaces": args.all_namespaces, "selector": args.selector,
               "output": args.output}
    if not args.watch:
        print(get(_api(args), args.resource, args.name, **options))
        return 0
    for line in watch(_api(args), args.resource, args.name, **options):   # until ^C
        print(line, flush=True)
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    from skiff.orchestrator.cli import delete

    print("\n".join(delete(_api(args), args.resource, args.names, args.filename, args.namespace,
                            grace=None if args.grace_period == -1 else args.grace_period)))
    return 0


def cmd_describe(args: argparse.Namespace) -> int:
    from skiff.orchestrator.cli import describe

    print(describe(_api(args), args.resource, args.name, args.namespace))
    return 0


def cmd_scale(args: argparse.Namespace) -> int:
    from skiff.orchestrator.cli import scale

    print(scale(_api(args), args.resource, args.name, args.replicas, args.namespace))
    return 0


def cmd_rollout(args: argparse.Namespace) -> int:
    from skiff.orchestrator.cli import rollout

    name = args.name.split("/", 1)[1] if "/" in args.name else args.name
    print(rollout(_api(args), args.action, name, args.namespace, to_revision=args.to_revision))
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    from skiff.orchestrator.cli import logs

    sys.stdout.flush()
    logs(_api(args).client, args.pod, sys.stdout.buffer, namespace=args.namespace, container=args.container,
         follow=args.follow, tail=args.tail, previous=args.previous)
    return 0


def cmd_exec(args: argparse.Namespace) -> int:
    """Exits with the command's code, as kubectl exec does; skiff's own failures exit 1."""
    from skiff.orchestrator.cli import exec_in, exec_url

    if args.stdin or args.tty:
        from skiff.cri.streaming.client import run_exec

        url = exec_url(_api(args).client, args.pod, args.cmd, namespace=args.namespace, container=args.container,
                       stdin=args.stdin, tty=args.tty)
        return run_exec(url, stdin=sys.stdin.buffer if args.stdin else None, tty=args.tty)
    stdout, stderr, code = exec_in(_api(args).client, args.pod, args.cmd, namespace=args.namespace,
                                   container=args.container, timeout=args.timeout)
    _print_output(stdout, stderr)
    return code


def cmd_attach(args: argparse.Namespace) -> int:
    """A running container's own streams, as kubectl attach, until it exits or ^C."""
    from skiff.cri.streaming.client import run_exec
    from skiff.orchestrator.cli import attach_url

    url = attach_url(_api(args).client, args.pod, namespace=args.namespace, container=args.container,
                     stdin=args.stdin)
    return run_exec(url, stdin=sys.stdin.buffer if args.stdin else None, tty=args.tty, attach=True)


def cmd_port_forward(args: argparse.Namespace) -> int:
    """Until ^C, as kubectl port-forward."""
    from skiff.cri.streaming.client import run_port_forward
    from skiff.orchestrator.cli import port_forward_url

    local, _, remote = args.ports.rpartition(":")
    if not remote.isdigit() or (local and not local.isdigit()):
        raise InvalidArgument(f"port-forward {args.ports!r}: want [LOCAL:]REMOTE, e.g. 8080:80")
    client = _api(args).client
    remote_port = int(remote)

    def ready(port: int) -> None:
        print(f"Forwarding from {args.address}:{port} -> {remote_port}", flush=True)
    run_port_forward(lambda: port_forward_url(client, args.pod, remote_port, namespace=args.namespace),
                     int(local or remote), remote_port, address=args.address, ready=ready)
    return 0


def cmd_node_agent(args: argparse.Namespace) -> int:
    from skiff.orchestrator.cli import node_agent

    _enter_netns(args.netns)
    labels = dict(item.partition("=")[::2] for item in args.label)
    return node_agent(_api(args), args.name, args.cri_socket, log_root=args.log_root, labels=labels, root=args.root,
                      address=args.address, pod_cidr=args.pod_cidr, agent_listen=args.agent_listen,
                      heartbeat=args.heartbeat)


def cmd_proxy(args: argparse.Namespace) -> int:
    from skiff.orchestrator.cli import service_proxy
    from skiff.orchestrator.proxy.service_proxy import remove

    _enter_netns(args.netns)
    if args.cleanup:
        print("removed table ip skiff-proxy" if remove() else "no table ip skiff-proxy here")
        return 0
    return service_proxy(_api(args))


def cmd_cluster(args: argparse.Namespace) -> int:
    from skiff.orchestrator import cluster

    if args.cluster_command == "up":
        timing = cluster.Timing(node_grace=args.node_grace, pod_eviction=args.pod_eviction, heartbeat=args.heartbeat)
        print(cluster.up(args.name, args.nodes, images_root=args.images_root or args.root, timing=timing))
    elif args.cluster_command == "down":
        print(cluster.down(args.name))
    else:
        print(cluster.status(args.name))
    return 0


def _enter_netns(path: str | None) -> None:
    """First thing, before any thread: every thread the command starts is then in it."""
    if path:
        from skiff.runtime import netns

        os.close(netns.enter(path))


def cmd_control_plane(args: argparse.Namespace) -> int:
    from skiff.orchestrator.cli import control_plane, tcp_options

    tcp, tls, tokens = tcp_options(args.tcp, args.tls_cert, args.tls_key, args.token_file)
    return control_plane(args.store, args.listen, tcp=tcp, tls=tls, tokens=tokens, node_grace=args.node_grace,
                         pod_eviction=args.pod_eviction)


def cmd_node(args: argparse.Namespace) -> int:
    """`skiff node join URL --token T`: the node agent against a control plane elsewhere."""
    from skiff.orchestrator.cli import connect, node_agent

    if not args.url.startswith("https://"):
        raise InvalidArgument(f"node join {args.url}: want https://HOST:PORT, the control plane's --tcp listener")
    labels = dict(item.partition("=")[::2] for item in args.label)
    return node_agent(connect(args.url, args.token, args.ca), args.name, args.cri_socket, log_root=args.log_root,
                      labels=labels, root=args.root)


def _parse(argv: list[str]) -> argparse.Namespace:
    """`skiff exec POD -c C -- CMD...`: argparse before Python 3.13 hands out positionals before
    it reads the options between them, and leaves CMD unmatched; so what follows `--` is set
    aside and given to exec here (kubectl's cobra keeps ArgsLenAtDash for the same)."""
    words = [w for i, w in enumerate(argv) if not w.startswith("-") and argv[i - 1:i] not in (["--root"], ["--state"])]
    if "--" in argv and words[:1] == ["exec"] and argv.index("exec") < argv.index("--"):
        dash = argv.index("--")
        args = parser().parse_args(argv[:dash])
        args.cmd = argv[dash + 1:]
        return args
    return parser().parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    # `run` exits with the container's code; its own failures use podman's 125, so that the
    # two never look alike.
    failed = 125 if args.command == "run" else 1
    try:
        return int(args.func(args))
    except SkiffError as e:
        print(f"skiff: {e}", file=sys.stderr)
        for note in getattr(e, "__notes__", ()):
            print(f"skiff: {note}", file=sys.stderr)
        return failed
    except KeyboardInterrupt:
        return 130
    except OSError as e:
        print(f"skiff: {e.filename + ': ' if e.filename else ''}{(e.strerror or str(e)).lower()}", file=sys.stderr)
        return failed


if __name__ == "__main__":
    sys.exit(main())
