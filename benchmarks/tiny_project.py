"""The tiny project: a throw-away git + DVC copy of the repo whose pipeline runs in seconds.

One helper for the test suite (`tests/conftest.py`'s `tiny_project` fixture) and the
benchmarks (`bench_dvc.py`), so both run the same pipeline at the same sizes. It needs no
pytest: it sits here, beside the scripts that run without it, and conftest imports it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The interpreter running the caller sits beside the `dvc` command.
DVC = Path(sys.executable).parent / "dvc"

# Tiny but complete: a random-weight ViT-Ti/16 at 32 px (2 x 2 patches) over 6 + 3 images.
TINY_PARAMS: dict[tuple[str, ...], object] = {
    ("demo_data", "n_train"): 6,
    ("demo_data", "n_val"): 3,
    ("demo_data", "size"): 64,
    ("backbone", "name"): "vit_tiny_patch16_224",
    ("backbone", "weights"): "random",
    # The tiny project's corpus is the demo, so its sizes go where the demo's live: the demo
    # block overrides `extract` and `train`, and a value set there would not take effect.
    ("demo", "extract", "resolution"): 32,
    ("demo", "extract", "val_resolution"): 32,
    ("demo", "train", "steps"): 30,
    ("train", "log_every"): 10,
    ("runtime", "crf_workers"): 1,
    ("evaluate", "n_overlays"): 2,
}
# Produced by the pipeline, or environment: never copied into a tiny project.
NOT_COPIED = ("artifacts/", "data/", "metrics/", "plots/", "dvc.lock", ".dvc/", ".venv/", "benchmarks/")


def describe() -> str:
    """The tiny project's sizes in words, read from `TINY_PARAMS` (what a report prints)."""
    p = TINY_PARAMS
    return (f"{p[('backbone', 'name')]} {p[('backbone', 'weights')]} @ {p[('demo', 'extract', 'resolution')]} px, "
            f"{p[('demo', 'train', 'steps')]} steps, {p[('demo_data', 'n_train')]} + {p[('demo_data', 'n_val')]} "
            f"images of {p[('demo_data', 'size')]} px")


def run_checked(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    """Run a command; raise with its output when it fails (the caller's report shows why)."""
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"`{' '.join(args)}` exited with {result.returncode} in {cwd}:\n"
                           f"--- stdout ---\n{result.stdout[-4000:]}\n--- stderr ---\n{result.stderr[-4000:]}")
    return result


def set_params(project: Path, updates: dict[tuple[str, ...], object]) -> None:
    """Set keys of `project/params.yaml` in place, keeping its comments and order.

    Args:
        project: folder holding params.yaml.
        updates: {(block, key, ...): value}; every key must already exist (a typo fails loudly).
    """
    from ruamel.yaml import YAML

    yaml = YAML()
    path = project / "params.yaml"
    params = yaml.load(path.read_text())
    for keys, value in updates.items():
        block = params
        for key in keys[:-1]:
            block = block[key]
        if keys[-1] not in block:
            raise KeyError(f"params.yaml has no key {'.'.join(keys)}; update TINY_PARAMS in {__file__}")
        block[keys[-1]] = value
    with path.open("w") as handle:
        yaml.dump(params, handle)


def copy_sources(destination: Path) -> None:
    """Copy the repo's tracked files and new, not-ignored ones (e.g. an uncommitted prefect.yaml)."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.splitlines()
    for name in listed:
        if name.startswith(NOT_COPIED) or not (REPO / name).is_file():
            continue
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, target)


def make_tiny_project(root: Path, env: dict[str, str]) -> Path:
    """Build a committed git + DVC copy of the repo whose pipeline runs in seconds.

    Args:
        root: empty folder to create the project in (its DVC site cache goes beside it).
        env: environment for git and dvc.

    Returns:
        The project folder (`root`), with one commit and nothing reproduced yet.
    """
    copy_sources(root)
    run_checked(["git", "init", "--quiet", "--initial-branch", "main"], root, env)
    run_checked(["git", "config", "user.name", "STEGO tests"], root, env)
    run_checked(["git", "config", "user.email", "stego-tests@example.invalid"], root, env)
    run_checked(["git", "config", "commit.gpgsign", "false"], root, env)
    run_checked([str(DVC), "init", "--quiet"], root, env)
    # The repo's own DVC config (analytics off, autostage off) replaces the fresh one.
    shutil.copy2(REPO / ".dvc" / "config", root / ".dvc" / "config")
    site_cache = root.parent / f"{root.name}-dvc-site-cache"
    run_checked([str(DVC), "config", "--local", "core.site_cache_dir", str(site_cache)], root, env)
    set_params(root, TINY_PARAMS)
    run_checked(["git", "add", "--all"], root, env)
    run_checked(["git", "commit", "--quiet", "-m", "tiny STEGO project"], root, env)
    return root
