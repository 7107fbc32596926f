"""Contract tests between dvc.yaml and the code: a stage's code deps cover everything it runs.

DVC re-runs a stage only when one of its declared deps changes, so a package module the
stage imports (directly, inside a function, or through another module) but does not
declare would leave stale results cached after an edit. The import closure is read from
the source with `ast`, so nothing is imported to compute it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "stego_tasks"
# The library module a `stego <stage>` command runs, per DVC stage.
ENTRY = {stage: f"{PACKAGE}.{stage}" for stage in
         ("demo_data", "ingest", "validate", "extract", "knn", "train", "cluster", "crf", "evaluate", "report")}


def module_path(module: str) -> Path | None:
    """The file of a package module (`pkg/mod.py` or `pkg/mod/__init__.py`), None outside the package."""
    if module != PACKAGE and not module.startswith(PACKAGE + "."):
        return None
    base = REPO.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(path: Path, module: str) -> set[str]:
    """Every module an `import` / `from ... import` anywhere in the file names, resolved to absolute names."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    # `if TYPE_CHECKING:` imports never run; drop those blocks before walking.
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            node.body = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            found.add(target)
            # `from pkg import submodule` imports a module too.
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return found


def import_closure(module: str) -> set[Path]:
    """Files of every package module reachable from `module`, parents' `__init__` included."""
    seen: set[str] = set()
    stack = [module]
    files: set[Path] = set()
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        path = module_path(name)
        if path is None:
            continue
        files.add(path)
        parent = name.rpartition(".")[0]
        if parent:
            stack.append(parent)
        stack.extend(imported_modules(path, name))
    return files


def _stages() -> dict[str, dict]:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("stage", sorted(ENTRY))
def test_stage_code_deps_cover_its_import_closure(stage: str) -> None:
    declared = {REPO / dep for dep in _stages()[stage].get("deps", []) if isinstance(dep, str)}
    needed = {p for p in import_closure(ENTRY[stage]) if p.name != "__init__.py" or p.parent.name != PACKAGE}
    missing = sorted(str(p.relative_to(REPO)) for p in needed - declared)
    assert not missing, f"dvc.yaml stage {stage} runs but does not declare: {missing}"


def test_the_closure_finds_function_level_and_relative_imports(tmp_path: Path) -> None:
    # The four gaps that were once in dvc.yaml must be seen.
    assert REPO / "stego_tasks/visualize.py" in import_closure("stego_tasks.evaluate")
    assert REPO / "stego_tasks/images.py" in import_closure("stego_tasks.validate")
    assert REPO / "stego_tasks/head.py" in import_closure("stego_tasks.cluster")
    assert REPO / "stego_tasks/knn.py" in import_closure("stego_tasks.train")
    assert REPO / "stego_tasks/adapters/core.py" not in import_closure("stego_tasks.train")


def test_every_stage_command_is_a_stego_command_of_its_own_name() -> None:
    for stage, spec in _stages().items():
        command = spec["cmd"].split()
        assert command[:2] == ["stego", stage.replace("_", "-")], f"stage {stage} runs {spec['cmd']!r}"
