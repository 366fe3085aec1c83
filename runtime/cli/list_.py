"""skiff-runc list: runc-list(8), a table or JSON."""

from __future__ import annotations

import argparse

from skiff.runtime.cli.main import print_json, runtime, table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", "-f", choices=("table", "json"), default="table")
    parser.add_argument("--quiet", "-q", action="store_true", help="print only the ids")


def run(args: argparse.Namespace) -> int:
    states = runtime(args).states()
    if args.quiet:
        for s in states:
            print(s.id)
    elif args.format == "json":
        print_json([s.to_json() for s in states])
    else:
        print(table([[s.id, str(s.pid), str(s.status), s.bundle, s.created, s.owner or "root"] for s in states],
                    ["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"]))
    return 0
