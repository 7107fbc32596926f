"""The package modules a stage runs, read from the source with `ast` (nothing is imported).

DVC re-runs a stage only when one of its declared deps changes, so every package module the
stage imports (directly, inside a function, or through another module) is a code dep of it
in the generated `dvc.yaml` (`flows/dvc_yaml.py`); otherwise an edit would leave stale
results cached.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "stego_tasks"


def module_path(module: str, repo: Path = REPO) -> Path | None:
    """The file of a package module (`pkg/mod.py` or `pkg/mod/__init__.py`), None outside the package."""
    if module != PACKAGE and not module.startswith(PACKAGE + "."):
        return None
    base = repo.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(path: Path, module: str, tree: ast.Module | None = None) -> set[str]:
    """Every module an `import` / `from ... import` anywhere in the file (or `tree`) names, resolved to absolute names."""
    tree = ast.parse(path.read_text(encoding="utf-8")) if tree is None else tree
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


def import_closure(module: str, repo: Path = REPO) -> set[Path]:
    """Files of every package module reachable from `module`, parents' `__init__` included."""
    seen: set[str] = set()
    stack = [module]
    files: set[Path] = set()
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        path = module_path(name, repo)
        if path is None:
            continue
        files.add(path)
        parent = name.rpartition(".")[0]
        if parent:
            stack.append(parent)
        stack.extend(imported_modules(path, name))
    return files


def code_deps(module: str, repo: Path = REPO) -> list[str]:
    """The code deps of a stage whose library entry is `module`: its import closure, sorted, relative to `repo`.

    The package's own `__init__` is left out: it only re-exports the public API, which no
    stage computes with.
    """
    files = {p for p in import_closure(module, repo) if p != repo / PACKAGE / "__init__.py"}
    return sorted(p.relative_to(repo).as_posix() for p in files)
