"""skiff-runc create: runc-create(8)."""

from __future__ import annotations

import argparse

from skiff.runtime.cli.main import runtime


def add_bundle_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("id")
    parser.add_argument("--bundle", "-b", default=".", help="path to the bundle directory (default: .)")
    parser.add_argument("--console-socket", help="unix socket that receives the pty master")
    parser.add_argument("--pid-file", help="file to write the init's pid to")
    parser.add_argument("--preserve-fds", type=int, default=0, help="extra fds from 3 to pass on")
    parser.add_argument("--no-pivot", action="store_true", help="accepted for runc compatibility (skiff always pivots)")
    parser.add_argument("--no-new-keyring", action="store_true", help="accepted for runc compatibility")


add_arguments = add_bundle_arguments


def run(args: argparse.Namespace) -> int:
    runtime(args).create(args.id, args.bundle, console_socket=args.console_socket, pid_file=args.pid_file,
                         preserve_fds=args.preserve_fds)
    return 0
