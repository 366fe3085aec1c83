"""skiff-runc state: runc-state(8), the JSON runc prints."""

from __future__ import annotations

import argparse

from skiff.runtime.cli.main import print_json, runtime


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("id")


def run(args: argparse.Namespace) -> int:
    print_json(runtime(args).state(args.id).to_json())
    return 0
