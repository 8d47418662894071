"""The levels of docs/design.md hold: a module imports only from lower levels, or from its own
package at its own level, and the plan, the runner and the guard never import torch. Read from the source, so
an import inside a function counts as much as one at the top."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SUITE = Path(__file__).resolve().parents[1] / "txsuite"

# module prefix -> level, most specific first (docs/design.md, "Levels")
LEVELS: list[tuple[str, int]] = [
    ("txsuite.config.matrix", 1), ("txsuite.config.schema", 1),
    ("txsuite.config", 0),
    ("txsuite.results", 1), ("txsuite.model", 1), ("txsuite.data", 1), ("txsuite.measure", 1), ("txsuite.verdict", 1),
    ("txsuite.compress", 2), ("txsuite.guard", 2), ("txsuite.report", 2), ("txsuite.trackers", 2),
    ("txsuite.techniques", 3),
    ("txsuite.train", 4),
    ("txsuite.run.worker", 5),
    ("txsuite.run", 6),
    ("txsuite.cli", 7), ("txsuite.api", 7),
]


def level(module: str) -> int | None:
    for prefix, lvl in LEVELS:
        if module == prefix or module.startswith(prefix + "."):
            return lvl
    return None


def package(module: str) -> str:
    """txsuite.<package>: modules of one package and one level may import each other."""
    return ".".join(module.split(".")[:2])


def modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(SUITE.rglob("*.py")):
        rel = path.relative_to(SUITE.parent).with_suffix("")
        name = ".".join(rel.parts)
        out.append((name.removesuffix(".__init__"), path))
    return out


def imports_of(name: str, path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    is_package = path.name == "__init__.py"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = name.split(".")
                base = base if is_package else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            # `from txsuite.x import y` may import the module txsuite.x.y
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return {m for m in found if m.startswith("txsuite.") and level(m) is not None and _exists(m)}


def _exists(module: str) -> bool:
    rel = Path(*module.split("."))
    root = SUITE.parent
    return (root / rel).with_suffix(".py").exists() or (root / rel / "__init__.py").exists()


def test_every_module_has_a_level():
    assert [name for name, _ in modules() if name != "txsuite" and level(name) is None] == []


def test_modules_import_only_from_lower_levels_or_their_own_package_at_their_level():
    wrong = []
    for name, path in modules():
        mine = level(name)
        if mine is None:
            continue
        for target in imports_of(name, path):
            theirs = level(target)
            if theirs < mine or (theirs == mine and package(target) == package(name)):
                continue
            wrong.append(f"{name} (L{mine}) imports {target} (L{theirs})")
    assert wrong == []


@pytest.mark.parametrize("modules_imported", [
    "txsuite.cli, txsuite.run.runner, txsuite.config.matrix, txsuite.results, txsuite.guard, txsuite.data, txsuite.measure.env",
])
def test_plan_runner_and_guard_stay_free_of_torch(modules_imported):
    code = f"import sys, {modules_imported}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
