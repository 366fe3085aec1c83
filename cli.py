"""skiff: the user's command line. For now it runs the demo and reports its version; the
OCI runtime CLI is `skiff-runc`, and later issues add images, pods and the CRI daemon."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="skiff", description=__doc__.split("\n")[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("version", help="print skiff's version")
    sub.add_parser("demo", help="build a busybox bundle and run a container from it")
    args = parser.parse_args(argv)
    if args.command == "version":
        from skiff import __version__

        print(f"skiff {__version__}")
        return 0
    from skiff.demo import main as demo

    return demo()


if __name__ == "__main__":
    sys.exit(main())
