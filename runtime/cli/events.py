"""skiff-runc events: runc-events(8). JSON lines: stats every --interval and oom events,
or one stats event with --stats."""

from __future__ import annotations

import argparse
import json
import sys

from skiff.errors import InvalidArgument
from skiff.runtime.cli.main import runtime


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stats", action="store_true", help="print one stats event and exit")
    parser.add_argument("--interval", default="5s", help="time between stats events (default 5s)")
    parser.add_argument("id")


def parse_duration(text: str) -> float:
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    for unit in ("ms", "s", "m", "h"):
        if text.endswith(unit):
            try:
                return float(text[: -len(unit)]) * units[unit]
            except ValueError:
                break
    raise InvalidArgument(f"--interval {text!r}: expected a duration such as 5s or 500ms")


def run(args: argparse.Namespace) -> int:
    for event in runtime(args).events(args.id, interval=parse_duration(args.interval), stats=args.stats):
        sys.stdout.write(json.dumps(event) + "\n")
        sys.stdout.flush()
    return 0
