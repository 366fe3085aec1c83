"""skiff: the user's command line, as a podman or containerd user expects it: images (pull,
build, import, export, images, inspect, tag, rmi) and `run IMAGE`, end to end through the
runtime library. The OCI runtime CLI for other engines is `skiff-runc`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from skiff.errors import InvalidArgument, SkiffError

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
        env=tuple(args.env) or (f"PATH={build.DEFAULT_PATH}",),
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
    if args.cri_command != "serve":
        raise InvalidArgument(f"cri {args.cri_command}: unknown command")
    import dataclasses
    import logging

    from skiff.cri import config
    from skiff.cri.server import serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = config.load(args.config)
    if args.socket:
        settings = dataclasses.replace(settings, socket=args.socket)
    serve(settings)
    return 0


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
        c.set_defaults(func=globals()[f"cmd_{name}"])
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
    c = command("cri", "the Kubernetes CRI v1 service")
    c.add_argument("cri_command", choices=("serve",), help="serve: run the CRI service in the foreground")
    c.add_argument("--config", help="the service's TOML configuration (default /etc/skiff/cri.toml if it exists)")
    c.add_argument("--socket", help="override the configuration's socket")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
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
