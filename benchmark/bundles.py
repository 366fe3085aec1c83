"""The benchmark's two bundles, on one busybox root filesystem (skiff.demo's, with `/stamp`):
`run/` runs the timed workload, `sleep/` the background containers of the growth test.
Every runtime is given the same ones."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from skiff.benchmark import workload
from skiff.demo import make_bundle

# crun 1.8 rejects ociVersion 1.2.0 ("unknown version specified"); 1.0.2 is what Debian's
# runc 1.1 writes, and no runtime here reads it for anything else.
OCI_VERSION = "1.0.2"
SLEEP = ("sleep", "3600")


@dataclass(frozen=True, slots=True)
class Bundles:
    run: str
    sleep: str
    rootfs: str
    workload: tuple[str, ...]


def make_bundles(directory: str) -> Bundles:
    args = workload.workload_args()
    run = make_bundle(os.path.join(directory, "run"), args)
    rootfs = os.path.join(run, "rootfs")
    if workload.supported():
        workload.write_stamp(os.path.join(rootfs, workload.STAMP.lstrip("/")))
    config = _load(run)
    config["ociVersion"] = OCI_VERSION
    _save(run, config)
    # The background containers share the rootfs, read-only: a second bundle directory
    # whose root.path points at the first one's (absolute paths are allowed by the spec).
    sleep = os.path.join(directory, "sleep")
    os.makedirs(sleep)
    config["root"] = {"path": rootfs, "readonly": True}
    config["process"]["args"] = list(SLEEP)
    _save(sleep, config)
    return Bundles(run=run, sleep=sleep, rootfs=rootfs, workload=args)


def _load(bundle: str) -> dict[str, Any]:
    with open(os.path.join(bundle, "config.json")) as f:
        config: dict[str, Any] = json.load(f)
    return config


def _save(bundle: str, config: dict[str, Any]) -> None:
    with open(os.path.join(bundle, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
