"""skiff-runc: runc's command line over skiff's runtime library, so containerd, podman or
conmon can call it in runc's place. Global flags as runc has them; each command lives in its
own module here and is imported only when it runs (a start costs what it uses).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from typing import Any

# command -> one-line help; its module (MODULES, else the command's name) has
# add_arguments(parser) and run(args) -> int.
COMMANDS = {
    "create": "create a container",
    "start": "start a created container",
    "run": "create and start a container",
    "state": "output the state of a container",
    "kill": "send a signal to the container's init (or every process with --all)",
    "delete": "delete a container and what it holds",
    "exec": "run a new process inside a container",
    "list": "list the containers under --root",
    "ps": "list the processes running inside a container",
    "pause": "freeze every process of a container",
    "resume": "thaw a paused container",
    "events": "show a container's stats and OOM events",
    "spec": "write a new default config.json",
    "features": "show what skiff supports, as JSON",
}
MODULES = {"list": "list_", "exec": "exec_"}  # names that are Python keywords or builtins


class Log:
    """runc's --log and --log-format: containerd reads the last error from the log file."""

    def __init__(self, path: str | None, fmt: str) -> None:
        self.path = path
        self.fmt = fmt

    def error(self, message: str) -> None:
        print(f"skiff-runc: {message}", file=sys.stderr)
        if not self.path:
            return
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        if self.fmt == "json":
            line = json.dumps({"level": "error", "msg": message, "time": now})
        else:
            line = f'time="{now}" level=error msg={json.dumps(message)}'
        try:
            with open(self.path, "a") as f:
                f.write(line + "\n")
        except OSError:
            pass


def global_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="skiff-runc", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="commands:\n" + "\n".join(f"  {c:<10} {h}" for c, h in COMMANDS.items()))
    parser.add_argument("--root", default="/run/skiff-runc", help="directory for container state (default %(default)s)")
    parser.add_argument("--log", help="also write errors to this file")
    parser.add_argument("--log-format", choices=("text", "json"), default="text")
    parser.add_argument("--debug", action="store_true", help="accepted for runc compatibility")
    parser.add_argument("--systemd-cgroup", action="store_true", help="not supported: skiff drives cgroupfs")
    parser.add_argument("--rootless", default="auto", help="accepted for runc compatibility")
    parser.add_argument("--criu", help="accepted for runc compatibility")
    parser.add_argument("command", choices=COMMANDS, metavar="command")
    parser.add_argument("rest", nargs=argparse.REMAINDER)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = global_parser().parse_args(argv)
    log = Log(args.log, args.log_format)
    if args.systemd_cgroup:
        log.error("--systemd-cgroup: skiff manages cgroups through cgroupfs only")
        return 1
    module: Any = importlib.import_module(f"skiff.runtime.cli.{MODULES.get(args.command, args.command)}")
    sub = argparse.ArgumentParser(prog=f"skiff-runc {args.command}", description=COMMANDS[args.command])
    module.add_arguments(sub)
    sub_args = sub.parse_args(args.rest)
    sub_args.root = args.root
    from skiff.errors import SkiffError

    try:
        return int(module.run(sub_args))
    except SkiffError as e:
        message = str(e)
        for note in getattr(e, "__notes__", ()):
            message += f" ({note})"
        log.error(message)
        return 1
    except OSError as e:
        log.error(f"{e.filename + ': ' if e.filename else ''}{(e.strerror or str(e)).lower()}")
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # a bug: still one line for the log that containerd reads
        log.error(f"internal error: {type(e).__name__}: {e}")
        return 1


def runtime(args: argparse.Namespace) -> Any:
    from skiff.runtime.container import Runtime

    return Runtime(args.root)


def print_json(value: object) -> None:
    json.dump(value, sys.stdout, indent=2)
    sys.stdout.write("\n")


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("   ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows])


def entry() -> None:
    """The console script: exit without the interpreter's teardown (module and object
    destruction costs milliseconds and does nothing a finished command needs)."""
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    entry()
