"""The direction of imports: errors <- oci <- runtime, images <- cri <- orchestrator.

A lower layer importing a higher one (or runtime and images importing each other) fails
here, so the layering stays true as the code grows."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYERS = {"errors": 0, "oci": 1, "runtime": 2, "images": 2, "cri": 3, "orchestrator": 4, "benchmark": 5}
# Siblings at the same level that must not import each other.
APART = {("runtime", "images"), ("images", "runtime")}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("skiff."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("skiff."))
    return found


def test_no_layer_imports_a_higher_one() -> None:
    wrong = []
    for layer, level in LAYERS.items():
        files = [ROOT / "errors.py"] if layer == "errors" else sorted((ROOT / layer).rglob("*.py"))
        for path in files:
            for target in _imports(path) & LAYERS.keys():
                if LAYERS[target] > level or (layer, target) in APART:
                    wrong.append(f"{path.relative_to(ROOT)} imports skiff.{target}")
    assert wrong == []


def test_oci_is_data_only() -> None:
    """No syscalls, threads or gRPC in the spec model."""
    banned = {"ctypes", "threading", "grpc", "subprocess", "socket"}
    for path in sorted((ROOT / "oci").rglob("*.py")):
        tree = ast.parse(path.read_text())
        names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not names & banned, f"{path.relative_to(ROOT)} imports {sorted(names & banned)}"
