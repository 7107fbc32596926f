"""`flows/code_deps.py`: the package modules a stage runs, read from the source with `ast`.

On a tiny made-up package in tmp_path: a module's file is found (module or package
`__init__`), every kind of import is resolved to an absolute name (relative ones from a
module and from a package's `__init__`, imports inside functions, `from pkg import module`),
`if TYPE_CHECKING:` imports are left out, the closure follows imports through modules and
their parent packages (and stops on a cycle), and the code deps are that closure, sorted,
relative, without the package's own `__init__`. On the real package: the imports that were
once missing from dvc.yaml are found.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.code_deps import PACKAGE, code_deps, import_closure, imported_modules, module_path
from tests.conftest import REPO


def write_package(root: Path, files: dict[str, str]) -> Path:
    """Write `files` (path relative to `root` -> source) and return `root`, a made-up repo."""
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


# stego_tasks.a imports sub.b inside a function; sub.b imports c relatively; c imports a back
# (a cycle) and numpy (outside the package); d is imported only for type checking.
FAKE = {
    f"{PACKAGE}/__init__.py": "",
    f"{PACKAGE}/a.py": "def run():\n    from stego_tasks.sub import b\n    return b\n",
    f"{PACKAGE}/sub/__init__.py": "",
    f"{PACKAGE}/sub/b.py": (
        "from typing import TYPE_CHECKING\n\nfrom ..c import thing\n\n"
        "if TYPE_CHECKING:\n    from stego_tasks import d\n"
    ),
    f"{PACKAGE}/c.py": "import numpy\n\nfrom stego_tasks import a\n\nthing = 1\n",
    f"{PACKAGE}/d.py": "",
    f"{PACKAGE}/unused.py": "",
}


def test_the_closure_finds_function_level_and_relative_imports(tmp_path: Path) -> None:
    # The four gaps that were once in dvc.yaml must be seen.
    assert REPO / "stego_tasks/tools/visualize.py" in import_closure("stego_tasks.evaluate")
    assert REPO / "stego_tasks/data/images.py" in import_closure("stego_tasks.validate")
    assert REPO / "stego_tasks/data/manifest.py" in import_closure("stego_tasks.validate")
    assert REPO / "stego_tasks/method/head.py" in import_closure("stego_tasks.cluster")
    assert REPO / "stego_tasks/method/neighbours.py" in import_closure("stego_tasks.train")
    assert REPO / "stego_tasks/data/adapters/core.py" not in import_closure("stego_tasks.train")


def test_module_path_finds_modules_and_packages_and_nothing_outside_the_package(tmp_path: Path) -> None:
    repo = write_package(tmp_path, FAKE)
    assert module_path("stego_tasks.a", repo) == repo / PACKAGE / "a.py"
    assert module_path("stego_tasks.sub", repo) == repo / PACKAGE / "sub" / "__init__.py"
    assert module_path("stego_tasks", repo) == repo / PACKAGE / "__init__.py"
    assert module_path("stego_tasks.sub.b.thing", repo) is None, "a name inside a module is no file"
    assert module_path("numpy", repo) is None
    # A name that only starts with the package's letters is not in the package.
    write_package(tmp_path, {"stego_tasks_extra/x.py": ""})
    assert module_path("stego_tasks_extra.x", repo) is None


@pytest.mark.parametrize(("module", "source", "expected"), [
    ("stego_tasks.sub.b", "from ..c import thing\n", {"stego_tasks.c", "stego_tasks.c.thing"}),
    ("stego_tasks.sub.b", "from . import e\n", {"stego_tasks.sub", "stego_tasks.sub.e"}),
    ("stego_tasks.sub", "from .b import f\n", {"stego_tasks.sub.b", "stego_tasks.sub.b.f"}),
    ("stego_tasks.a", "import os.path, numpy as np\n", {"os.path", "numpy"}),
    ("stego_tasks.a", "def g():\n    import stego_tasks.c\n", {"stego_tasks.c"}),
    ("stego_tasks.a", "import typing\nif typing.TYPE_CHECKING:\n    import torch\n", {"typing", "torch"}),
    ("stego_tasks.a", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import torch\n",
     {"typing", "typing.TYPE_CHECKING"}),
], ids=["parent-relative", "sibling-module", "package-init-relative", "plain-imports", "inside-a-function",
        "only-a-bare-TYPE_CHECKING-is-dropped", "type-checking-block"])
def test_imported_modules_resolves_every_import_to_an_absolute_name(
    tmp_path: Path, module: str, source: str, expected: set[str]
) -> None:
    name = "__init__.py" if module == "stego_tasks.sub" else f"{module.rpartition('.')[2]}.py"
    path = tmp_path / name
    path.write_text(source, encoding="utf-8")
    assert imported_modules(path, module) == expected


def test_the_closure_follows_imports_and_parent_packages_and_stops_on_a_cycle(tmp_path: Path) -> None:
    repo = write_package(tmp_path, FAKE)
    got = import_closure("stego_tasks.a", repo)
    want = {repo / PACKAGE / name for name in ("__init__.py", "a.py", "sub/__init__.py", "sub/b.py", "c.py")}
    assert got == want, f"closure {sorted(p.relative_to(repo).as_posix() for p in got)}"
    assert import_closure("stego_tasks.d", repo) == {repo / PACKAGE / "__init__.py", repo / PACKAGE / "d.py"}
    assert import_closure("numpy", repo) == set(), "nothing outside the package is followed"


def test_code_deps_are_the_closure_sorted_relative_without_the_package_init(tmp_path: Path) -> None:
    repo = write_package(tmp_path, FAKE)
    assert code_deps("stego_tasks.a", repo) == [
        "stego_tasks/a.py", "stego_tasks/c.py", "stego_tasks/sub/__init__.py", "stego_tasks/sub/b.py",
    ]
