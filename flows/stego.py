"""Prefect flow `stego` (deployment `full`): reproduce the DVC pipeline and record the run.

DVC decides what is stale; each stage it runs calls `stego <stage>`, whose own flow run
shows in Prefect beside this one. After a run that changed anything, the flow commits
`dvc.lock` and the metrics files (and nothing else) with a message naming the stages that
ran, so `dvc metrics diff HEAD~1` compares the run with the one before. Then it publishes
the scores table (`stego-scores`), the report's link (`stego-report`) and what each stage
cost (`stego-trace`) on Prefect's Artifacts page (`flows/artifacts.py`).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE

from flows.artifacts import publish_run
from stego_tasks.errors import ToolFailedError
from stego_tasks.paths import PATHS

RECORDED = ("dvc.lock", "metrics")


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=False)


@task(name="dvc-repro", cache_policy=NONE)
def reproduce(repo: str, targets: list[str] | None = None, force: bool = False) -> list[str]:
    """Run `dvc repro` through DVC's Python API.

    Args:
        repo: the DVC project folder.
        targets: stages to reproduce, as `dvc repro` takes them inside `repo` (default: all).
        force: rerun stages even when DVC finds them up to date.

    Returns:
        Names of the stages that ran.
    """
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    # Stage commands call `stego`; a worker started as `.venv/bin/prefect worker start`
    # without the venv activated has no `stego` on PATH, so add the bin folder of this interpreter.
    bin_dir = str(Path(sys.executable).parent)
    if bin_dir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = os.pathsep.join(filter(None, [bin_dir, os.environ.get("PATH")]))
    # DVC resolves targets, the default `dvc.yaml` included, against the current folder, not
    # against Repo(repo): from elsewhere it collects another project's stages and fails.
    previous = os.getcwd()
    # DVC prints its own progress; propagated to the root logger, Prefect's console handler
    # would print every line a second time.
    dvc_logger = logging.getLogger("dvc")
    propagate, dvc_logger.propagate = dvc_logger.propagate, False
    os.chdir(repo)
    try:
        before = _locked_stages(repo)
        with Repo(repo) as dvc_repo:
            stages = dvc_repo.reproduce(targets=targets or None, force=force)
        after = _locked_stages(repo)
    except DvcException as error:  # not a DVC project, its lock held by another run, a stage that failed
        raise ToolFailedError(f"`dvc repro` in {repo} failed: {str(error).strip().splitlines()[0].rstrip('.')}; fix "
                              "what it names (a failed stage printed its own error above), then run it again.") from None
    finally:
        os.chdir(previous)
        dvc_logger.propagate = propagate
    # An always-changed stage (`weights`: a check of the checkpoint's content) runs on every
    # repro; it counts as run only when what it recorded changed.
    return [
        stage.addressing for stage in stages
        if not getattr(stage, "always_changed", False) or before.get(stage.addressing) != after.get(stage.addressing)
    ]


def _locked_stages(repo: str) -> dict:
    """dvc.lock's entry of each stage ({} when there is no lock file yet)."""
    import yaml

    path = Path(repo) / "dvc.lock"
    if not path.is_file():
        return {}
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return data.get("stages") or {}


@task(name="record-run", cache_policy=NONE)
def record_run(repo: str, ran: list[str]) -> str | None:
    """Commit the run's own outputs (`dvc.lock`, `metrics/`) when they changed.

    Files the run did not write (params.yaml, code, data) are never staged; other staged
    changes of the user's are left as they were by committing only the given paths.

    Returns:
        The new commit's hash, or None when nothing was recorded.
    """
    root = Path(repo)
    if _git(root, "rev-parse", "--is-inside-work-tree").returncode != 0 or not ran:
        return None
    paths = [p for p in RECORDED if (root / p).exists()]
    changed = _git(root, "status", "--porcelain", "--", *paths).stdout.strip()
    if not changed:
        return None
    params_changed = _git(root, "diff", "--stat", "--", "params.yaml").stdout.strip()
    message = f"stego run: reproduced {', '.join(ran)}"
    if params_changed:
        message += " (params.yaml has uncommitted changes; see dvc.lock for the values used)"
    _git(root, "add", "--", *paths)
    result = _git(root, "commit", "--only", "-m", message, "--", *paths)
    if result.returncode != 0:
        raise ToolFailedError(f"could not commit the run's record: {result.stderr.strip() or result.stdout.strip()}")
    return _git(root, "rev-parse", "HEAD").stdout.strip()


@task(name="publish-artifacts", cache_policy=NONE)
def publish(repo: str, ran: list[str]) -> list[str]:
    """Publish the run's scores table, report link and stage costs; returns the artifact keys."""
    return publish_run(Path(repo), Path(PATHS["scores"]), Path(PATHS["report"]), Path(PATHS["trace"]), ran)


@flow(name="stego", log_prints=True)
def stego_flow(
    repo: str = ".", targets: list[str] | None = None, force: bool = False, record: bool = True
) -> dict[str, Any]:
    """Reproduce the pipeline (only what DVC finds stale) and record the result.

    Args:
        repo: the project folder holding dvc.yaml and params.yaml.
        targets: stages to reproduce; default all.
        force: rerun up-to-date stages too.
        record: commit dvc.lock and metrics after a run that changed them.

    Returns:
        {"ran": stage names, "commit": hash or None, "artifacts": the keys published}.
    """
    logger = get_run_logger()
    repo = str(Path(repo).resolve())
    ran = reproduce(repo, targets, force)
    logger.info("stages that ran: %s", ", ".join(ran) if ran else "none (everything up to date)")
    commit = None
    if record and ran:
        commit = record_run(repo, ran)
        if commit:
            logger.info("recorded the run as commit %s", commit[:10])
    return {"ran": ran, "commit": commit, "artifacts": publish(repo, ran)}
