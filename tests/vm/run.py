#!/usr/bin/env python3
"""Run a command in the cgroup v2 test VM, for debugging.

    tests/vm/run.py [--accel kvm|tcg] [--memory MIB] [--console FILE] [--] [CMD ARG...]

CMD runs as root in the current directory (the checkout is shared read-write at its path, the
rest of / read-only with a throwaway overlay), with SKIFF_IN_VM=1 and stdin from /dev/null;
its output is the VM's serial console, and this script exits with its exit status (125 if the
VM ended without one). Without CMD: an interactive bash on the console; `exit` powers off.
Example: tests/vm/run.py -- .venv/bin/python -m pytest tests/test_cgroups.py -k v2
"""

from __future__ import annotations

import argparse
import runpy
import sys
import tempfile
from pathlib import Path

if __name__ == "__main__" and not __package__:
    # Run as a file: rerun as the module vm.run, the package named as tests/conftest.py
    # loads it, so that the relative imports below work.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    runpy.run_module("vm.run", run_name="__main__", alter_sys=True)
    sys.exit(0)

from . import image, machine  # noqa: E402

CHECKOUT = Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--accel", choices=[a.value for a in machine.Accel])
    parser.add_argument("--memory", type=int, default=1536, metavar="MIB")
    parser.add_argument("--console", type=Path, metavar="FILE",
                        help="write the console to FILE instead of this terminal")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command: list[str] = args.command[1:] if args.command[:1] == ["--"] else args.command
    try:
        vm_image = image.ensure_image()
        accel = machine.Accel(args.accel) if args.accel else machine.choose_accel(vm_image)
    except (image.ImageError, machine.VMError) as e:
        print(f"run.py: {e}", file=sys.stderr)
        return 125
    with tempfile.TemporaryDirectory(prefix="skiff-vm-") as xchg:
        script = None
        if command:
            script = machine.shell_command(command, cwd=Path.cwd(), env={"SKIFF_IN_VM": "1"})
        vm = machine.VM(machine.VMConfig(
            image=vm_image, xchg=Path(xchg), shares=(CHECKOUT,), command=script,
            console=args.console, accel=accel, memory_mib=args.memory))
        try:
            status = vm.wait()
        finally:
            vm.kill()
    return 125 if status is None else status


if __name__ == "__main__":
    sys.exit(main())
