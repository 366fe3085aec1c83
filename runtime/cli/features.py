"""skiff-runc features: runc-features(8), what this runtime implements, as JSON."""

from __future__ import annotations

import argparse

from skiff.runtime.cli.main import print_json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    from skiff.oci import features

    print_json(features())
    return 0
