"""skiff-runc resume: runc-resume(8)."""

from __future__ import annotations

import argparse

from skiff.runtime.cli.main import runtime


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("id")


def run(args: argparse.Namespace) -> int:
    runtime(args).resume(args.id)
    return 0
