"""Imports go down only (DESIGN.md): the bottom layers never import the layers above them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "lowbit"
UPPER = {"nn", "reg", "train", "search", "distill", "export", "report", "runs", "cli", "costs", "health", "recipes"}
FORBIDDEN = {
    "models": UPPER | {"data", "quant", "plan"},
    "data": UPPER | {"models", "quant", "plan"},
    "quant": UPPER | {"models", "data", "plan"},
    "plan.py": UPPER | {"models", "data"},
    "train": {"nn", "quant", "plan", "reg", "search", "distill", "export", "report", "runs", "cli", "models",
              "costs", "health", "recipes"},
    "report": {"models"},
    # the defaults sit just above train (TrainConfig): every method reads them, they read no method
    "recipes.py": UPPER - {"train"} | {"models", "data", "quant", "plan"},
}


def _lowbit_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
            [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
        for name in names:
            parts = name.split(".")
            if parts[0] == "lowbit" and len(parts) > 1:
                found.add(parts[1])
    return found


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_imports_go_down_only(layer: str) -> None:
    target = SRC / layer
    files = [target] if target.suffix == ".py" else sorted(target.rglob("*.py"))
    for path in files:
        bad = _lowbit_imports(path) & FORBIDDEN[layer]
        assert not bad, f"{path.relative_to(SRC)} imports {sorted(bad)}"
