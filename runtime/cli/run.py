"""skiff-runc run: runc-run(8). In the foreground it waits, deletes, and exits with the
container's exit code."""

from __future__ import annotations

import argparse

from skiff.runtime.cli.create import add_bundle_arguments
from skiff.runtime.cli.main import runtime


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_bundle_arguments(parser)
    parser.add_argument("--detach", "-d", action="store_true", help="do not wait for the container")
    parser.add_argument("--keep", action="store_true", help="accepted for runc compatibility")


def run(args: argparse.Namespace) -> int:
    return int(runtime(args).run(args.id, args.bundle, detach=args.detach, pid_file=args.pid_file,
                                 console_socket=args.console_socket, preserve_fds=args.preserve_fds))
