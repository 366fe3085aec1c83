"""mypy --strict over the whole package (tests and benchmarks included), so that typing
never drifts (pyproject.toml [tool.mypy])."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_mypy_strict() -> None:
    mypy = os.path.join(os.path.dirname(sys.executable), "mypy")
    done = subprocess.run([mypy, "-p", "skiff"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
