"""Helpers the tests share (conftest.py holds the fixtures)."""

from __future__ import annotations

import copy
import ipaddress
import json
import os
import random
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest


@dataclass(frozen=True)
class Exited:
    code: int
    out: str
    err: str


class Containers:
    """Runs containers from the test's busybox bundle through the library, capturing what
    they print (they inherit the test's stdout and stderr, which capfd captures)."""

    def __init__(self, bundle: Path, root: Path, capfd: pytest.CaptureFixture[str], *, warm: int = 0) -> None:
        from skiff.runtime.container import Runtime

        self.bundle = bundle
        self.runtime = Runtime(str(root), warm=warm)
        self.capfd = capfd
        with open(bundle / "config.json") as f:
            self.base = json.load(f)
        self.base["process"]["terminal"] = False
        self.count = 0

    def configure(self, args: tuple[str, ...], edit: Callable[[dict[str, Any]], None] | None = None,
                  bundle: Path | None = None) -> Path:
        bundle = bundle or self.bundle
        config = copy.deepcopy(self.base)
        config["process"]["args"] = list(args)
        if edit:
            edit(config)
        with open(bundle / "config.json", "w") as f:
            json.dump(config, f)
        return bundle

    def next_id(self) -> str:
        self.count += 1
        return self.last_id

    @property
    def last_id(self) -> str:
        return f"skiff-test-{os.getpid()}-{self.count}"

    def run(self, *args: str, edit: Callable[[dict[str, Any]], None] | None = None) -> Exited:
        bundle = self.configure(args, edit)
        self.capfd.readouterr()
        code = self.runtime.run(self.next_id(), str(bundle))
        out, err = self.capfd.readouterr()
        return Exited(code, out, err)

    def create(self, *args: str, edit: Callable[[dict[str, Any]], None] | None = None) -> str:
        """A created (not started) container; the caller deletes it (or `cleanup` does)."""
        bundle = self.configure(args, edit)
        container_id = self.next_id()
        self.runtime.create(container_id, str(bundle))
        return container_id

    def cleanup(self) -> None:
        for state in self.runtime.states():
            self.runtime.delete(state.id, force=True)
        self.runtime.close()


def namespaces(config: dict[str, Any]) -> list[dict[str, Any]]:
    return config["linux"]["namespaces"]  # type: ignore[no-any-return]


def skopeo(*args: str, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    """skopeo, which as root keeps a blob-info cache in /var/lib/containers with no flag to
    move it: run it with a private tmpfs on /var/lib, in a mount namespace that dies with it,
    so the host keeps nothing of the test."""
    wrapped = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
               'mount -t tmpfs skiff-test /var/lib && exec "$@"', "skopeo", "skopeo", *args]
    done = subprocess.run(wrapped, capture_output=True, text=True, env=env, timeout=120)
    if check and done.returncode != 0:
        raise RuntimeError(f"skopeo {' '.join(args)}: {done.stderr}")
    return done


def free_subnet(second_octet: int) -> ipaddress.IPv4Network:
    """A 10.<second_octet>.X.0/24 that no route of the host touches."""
    routes = json.loads(subprocess.run(["ip", "-j", "route", "show", "table", "all"], capture_output=True,
                                       text=True, check=True).stdout)
    used = []
    for r in routes:
        dst = r.get("dst", "")
        if dst and dst != "default":
            try:
                used.append(ipaddress.ip_network(dst, strict=False))
            except ValueError:
                pass
    for _ in range(100):
        candidate = ipaddress.IPv4Network(f"10.{second_octet}.{random.randrange(1, 255)}.0/24")
        if not any(candidate.version == u.version and candidate.overlaps(u) for u in used):
            return candidate
    raise AssertionError(f"no free 10.{second_octet}.X.0/24")
