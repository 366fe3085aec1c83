"""skiff-runc exec: runc-exec(8). The process comes from --process (a process.json) or from
the arguments, with the container's config as the defaults for what is not given."""

from __future__ import annotations

import argparse
import dataclasses

from skiff.errors import InvalidArgument
from skiff.runtime.cli.main import runtime


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--process", "-p", help="path to a process.json")
    parser.add_argument("--tty", "-t", action="store_true", help="allocate a pseudo-TTY")
    parser.add_argument("--console-socket", help="unix socket that receives the pty master")
    parser.add_argument("--detach", "-d", action="store_true", help="do not wait for the process")
    parser.add_argument("--pid-file", help="file to write the process's pid to")
    parser.add_argument("--cwd", help="working directory inside the container")
    parser.add_argument("--env", "-e", action="append", default=[], help="KEY=VALUE to set")
    parser.add_argument("--user", "-u", help="UID[:GID] to run as")
    parser.add_argument("--additional-gids", "-g", action="append", type=int, default=[])
    parser.add_argument("--cap", "-c", action="append", default=[], help="add a capability")
    parser.add_argument("--no-new-privs", action="store_true")
    parser.add_argument("--preserve-fds", type=int, default=0)
    parser.add_argument("id")
    parser.add_argument("args", nargs=argparse.REMAINDER)


def run(args: argparse.Namespace) -> int:
    from skiff.oci import load_process, parse_spec
    from skiff.oci.spec import LinuxCapabilities

    rt = runtime(args)
    if args.process:
        process = load_process(args.process)
    else:
        if not args.args:
            raise InvalidArgument("exec: give the command to run, or --process")
        spec = parse_spec(rt.store.load(args.id).config)
        assert spec.process is not None
        process = dataclasses.replace(spec.process, args=tuple(args.args), terminal=args.tty)
        user = process.user
        if args.user:
            uid, _, gid = args.user.partition(":")
            if not uid.isdigit() or (gid and not gid.isdigit()):
                raise InvalidArgument(f"--user {args.user!r}: expected UID[:GID] as numbers")
            user = dataclasses.replace(user, uid=int(uid), gid=int(gid) if gid else user.gid)
        if args.additional_gids:
            user = dataclasses.replace(user, additional_gids=tuple(args.additional_gids))
        env = process.env + tuple(args.env)
        caps = process.capabilities or LinuxCapabilities()
        if args.cap:
            # as runc: ambient only where the container's config already raises inheritable
            extra = tuple(args.cap)
            caps = dataclasses.replace(caps, bounding=caps.bounding + extra, effective=caps.effective + extra,
                                       permitted=caps.permitted + extra,
                                       ambient=caps.ambient + (extra if caps.inheritable else ()),
                                       inheritable=caps.inheritable + (extra if caps.inheritable else ()))
        process = dataclasses.replace(process, user=user, env=env, cwd=args.cwd or process.cwd,
                                      capabilities=caps,
                                      no_new_privileges=process.no_new_privileges or args.no_new_privs)
    result = rt.exec(args.id, process, console_socket=args.console_socket, detach=args.detach,
                     pid_file=args.pid_file, preserve_fds=args.preserve_fds)
    return 0 if args.detach else int(result)
