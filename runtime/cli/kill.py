"""skiff-runc kill: runc-kill(8). The signal is a name (KILL, SIGKILL) or a number."""

from __future__ import annotations

import argparse
import signal

from skiff.errors import InvalidArgument
from skiff.runtime.cli.main import runtime


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--all", "-a", action="store_true", help="signal every process in the container")
    parser.add_argument("id")
    parser.add_argument("signal", nargs="?", default="SIGTERM")


def parse_signal(text: str) -> int:
    if text.isdigit():
        return int(text)
    name = text.upper()
    name = name if name.startswith("SIG") else "SIG" + name
    try:
        return int(signal.Signals[name])
    except KeyError:
        raise InvalidArgument(f"signal {text!r}: unknown signal") from None


def run(args: argparse.Namespace) -> int:
    runtime(args).kill(args.id, parse_signal(args.signal), all=args.all)
    return 0
