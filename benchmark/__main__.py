"""`python -m skiff.benchmark SESSION`: the measuring side of `skiff bench start`, which the
host side runs under `unshare -m` on a hybrid cgroup host (hostns.py says why)."""

from __future__ import annotations

import sys

from skiff.benchmark.start import inner_main

if len(sys.argv) != 2:
    sys.exit("usage: python -m skiff.benchmark SESSION_JSON (started by `skiff bench start`; run that instead)")
sys.exit(inner_main(sys.argv[1]))
