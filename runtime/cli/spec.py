"""skiff-runc spec: runc-spec(8), a default config.json in the bundle."""

from __future__ import annotations

import argparse
import json
import os

from skiff.errors import AlreadyExists


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", "-b", default=".", help="where to write config.json (default: .)")
    parser.add_argument("--rootless", action="store_true", help="a spec for a user namespace of the caller")


def run(args: argparse.Namespace) -> int:
    from skiff.oci import default_spec, spec_to_dict

    path = os.path.join(args.bundle, "config.json")
    if os.path.exists(path):
        raise AlreadyExists(f"{path}: file exists: remove it first")
    with open(path, "w") as f:
        json.dump(spec_to_dict(default_spec(rootless=args.rootless)), f, indent="\t")
        f.write("\n")
    return 0
