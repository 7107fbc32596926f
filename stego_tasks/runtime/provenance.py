"""What produced a result: package versions, CUDA and GPU, project version, git commit.

Versions are read from the installed distributions' metadata (`importlib.metadata`), so
nothing heavy is imported to name them. CUDA and the GPU are named only when this process
has already initialised CUDA (a stage that ran on the CPU says `cuda: null`). The git
commit and dirty flag are absent (null) outside a git work tree or without `git`. Dirty means
a tracked file differs from the commit, not counting the run's own records (`dvc.lock` and
the artifacts of `stego_tasks/paths.yaml`), which the stages before it in the same
`dvc repro` rewrite.
"""

from __future__ import annotations

import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from stego_tasks.paths import PATHS

# The run's own records: written by the pipeline itself, so they do not make a tree dirty.
RUN_RECORDS: tuple[str, ...] = ("dvc.lock", *PATHS.values())
# Distribution names whose versions every metrics file records (None when not installed).
PACKAGES: tuple[str, ...] = ("torch", "timm", "faiss-cpu", "zarr", "numpy", "dvc", "prefect")
PROJECT = "stego-pipeline"


def package_version(name: str) -> str | None:
    """The installed version of distribution `name`, or None when it is not installed."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _faiss_version() -> str | None:
    # faiss ships as faiss-cpu or faiss-gpu; record whichever is installed.
    return package_version("faiss-cpu") or package_version("faiss-gpu")


def git_state(folder: str | Path = ".") -> dict[str, Any]:
    """{"commit": HEAD's hash, "dirty": uncommitted changes to tracked files but the run's records}; nulls outside a git tree."""
    def git(*args: str) -> subprocess.CompletedProcess | None:
        try:
            return subprocess.run(["git", *args], cwd=folder, capture_output=True, text=True, timeout=10, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return None

    head = git("rev-parse", "HEAD")
    if head is None or head.returncode != 0:
        return {"commit": None, "dirty": None}
    status = git("status", "--porcelain", "--untracked-files=no", "--", ".",
                 *(f":(top,exclude){path}" for path in RUN_RECORDS))
    dirty = None if status is None or status.returncode != 0 else bool(status.stdout.strip())
    return {"commit": head.stdout.strip(), "dirty": dirty}


def cuda_state() -> dict[str, Any]:
    """{"cuda": CUDA version, "gpu": device name} when this process initialised CUDA, else nulls."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_initialized():
        return {"cuda": None, "gpu": None}
    return {"cuda": torch.version.cuda, "gpu": torch.cuda.get_device_name(torch.cuda.current_device())}


def provenance(folder: str | Path = ".") -> dict[str, Any]:
    """Everything that names what produced a result, as a JSON-ready mapping.

    Args:
        folder: where to look for the git work tree (the run's project folder).

    Returns:
        {"project": version, "python": version, "platform", "packages": {name: version},
        "cuda", "gpu", "git_commit", "git_dirty"}.
    """
    versions = {name: package_version(name) for name in PACKAGES if name != "faiss-cpu"}
    versions["faiss"] = _faiss_version()
    git = git_state(folder)
    return {
        "project": package_version(PROJECT) or _package_attribute(),
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "packages": dict(sorted(versions.items())),
        **cuda_state(),
        "git_commit": git["commit"],
        "git_dirty": git["dirty"],
    }


def _package_attribute() -> str | None:
    # Not installed as a distribution (a source checkout on PYTHONPATH): the package's own version.
    package = sys.modules.get("stego_tasks")
    return getattr(package, "__version__", None)
