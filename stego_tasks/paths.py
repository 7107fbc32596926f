"""Where each artifact of a run lives, relative to the project folder: `stego_tasks/paths.yaml`.

That file is the one place the layout is written down. `dvc.yaml` reads it through DVC's
`vars:` (each stage's command, deps and outs say `${paths.<name>}`), the `stego` commands
take their default path options from `PATHS`, and the tools that open a finished run
(`stego report`, `stego predict`, `stego sweep-k`) find its files with `run_path`. The file
is package data, so an installed package knows the layout without the repository.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from types import MappingProxyType

import yaml

from stego_tasks.errors import InvalidInputError

PATHS_FILE = Path(__file__).with_name("paths.yaml")
# DVC's own default params file (dvc.yaml's `params:` entries read it); not a run output.
PARAMS_FILE = "params.yaml"


def load_paths(path: Path = PATHS_FILE) -> Mapping[str, str]:
    """The `paths:` mapping of a paths file, checked: names to relative POSIX paths.

    Raises:
        ValueError: the file does not hold a `paths:` mapping of names to relative paths.
    """
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    paths = data.get("paths") if isinstance(data, dict) else None
    if not isinstance(paths, dict) or not paths:
        raise InvalidInputError(f"{path} must hold a mapping `paths:` of artifact names to paths.")
    for name, value in paths.items():
        if not (isinstance(name, str) and isinstance(value, str) and value.strip()):
            raise InvalidInputError(f"{path}: paths.{name} must be a non-empty string, got {value!r}.")
        pure = PurePosixPath(value)
        if pure.is_absolute() or ".." in pure.parts:
            raise InvalidInputError(f"{path}: paths.{name} must be relative to the project folder, got {value!r}.")
    return MappingProxyType(dict(paths))


PATHS: Mapping[str, str] = load_paths()


def run_path(run_dir: str | Path, name: str) -> Path:
    """Where artifact `name` (a key of `PATHS`) of the run in `run_dir` is."""
    return Path(run_dir) / PATHS[name]

