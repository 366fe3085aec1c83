"""skiff-runc start: runc-start(8)."""

from __future__ import annotations

import argparse

from skiff.runtime.cli.main import runtime


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("id")


def run(args: argparse.Namespace) -> int:
    runtime(args).start(args.id)
    return 0
