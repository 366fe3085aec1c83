"""skiff-runc delete: runc-delete(8)."""

from __future__ import annotations

import argparse

from skiff.runtime.cli.main import runtime


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--force", "-f", action="store_true", help="kill the container first if it runs")
    parser.add_argument("id")


def run(args: argparse.Namespace) -> int:
    runtime(args).delete(args.id, force=args.force)
    return 0
