"""What the numbers were measured on: CPUs, kernel, cgroup layout, Python, skiff's commit,
the load."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class Machine:
    cpus: int
    cpu_model: str
    kernel: str
    host_cgroups: str
    bench_cgroups: str
    python: str
    skiff: str
    date: str
    load_before: str


def load_average() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def cpu_model() -> str:
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.machine()


def skiff_version() -> str:
    """The version, and the commit when skiff runs from a git checkout (the repository root
    is the package's directory)."""
    import skiff

    repo = os.path.dirname(os.path.abspath(skiff.__file__))
    try:
        head = subprocess.run(["git", "-C", repo, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        dirty = subprocess.run(["git", "-C", repo, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True)
    except OSError:  # no git here
        return skiff.__version__
    if head.returncode != 0:
        return skiff.__version__
    return f"{skiff.__version__}, commit {head.stdout.strip()}" + (" with local changes" if dirty.stdout.strip() else "")


def describe(host_cgroups: str, bench_cgroups: str) -> Machine:
    return Machine(cpus=len(os.sched_getaffinity(0)), cpu_model=cpu_model(), kernel=platform.release(),
                   host_cgroups=host_cgroups, bench_cgroups=bench_cgroups,
                   python=f"{platform.python_version()} ({os.path.realpath(sys.executable)})",
                   skiff=skiff_version(), date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                   load_before=load_average())
