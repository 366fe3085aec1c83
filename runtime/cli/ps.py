"""skiff-runc ps: runc-ps(8). The table is ps(1)'s (default `-ef`) cut down to the
container's processes; `--format json` prints the pids."""

from __future__ import annotations

import argparse
import subprocess

from skiff.errors import InvalidArgument
from skiff.runtime.cli.main import print_json, runtime


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", "-f", choices=("table", "json"), default="table")
    parser.add_argument("id")
    parser.add_argument("ps_args", nargs=argparse.REMAINDER, help="options for ps(1) (default -ef)")


def run(args: argparse.Namespace) -> int:
    pids = runtime(args).ps(args.id)
    if args.format == "json":
        print_json(pids)
        return 0
    lines = subprocess.run(["ps", *(args.ps_args or ["-ef"])], capture_output=True, text=True, check=True).stdout.splitlines()
    header = lines[0].split()
    if "PID" not in header:
        raise InvalidArgument("ps options: the output has no PID column")
    column = header.index("PID")
    wanted = {str(p) for p in pids}
    print(lines[0])
    for line in lines[1:]:
        fields = line.split()
        if len(fields) > column and fields[column] in wanted:
            print(line)
    return 0
