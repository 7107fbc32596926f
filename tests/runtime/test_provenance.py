"""Tests for `runtime.provenance`: what produced a result.

They prove that the installed versions and the git commit are recorded, that a tree is dirty
only for edits outside the run's own records (and untracked files never count), that CUDA and
the GPU are named only when torch has initialised CUDA, and that a missing distribution or a
missing `git` gives nulls rather than an error.
"""

from __future__ import annotations

import json
import subprocess
import sys
import types
from importlib import metadata
from pathlib import Path

import pytest

from stego_tasks.paths import PATHS
from stego_tasks.runtime import provenance as provenance_module
from stego_tasks.runtime.provenance import (
    RUN_RECORDS,
    cuda_state,
    git_state,
    package_version,
    provenance,
)


def test_provenance_names_the_installed_versions_and_the_git_commit(tmp_path: Path) -> None:
    origin = provenance(tmp_path)
    assert origin["packages"]["torch"] == metadata.version("torch")
    assert origin["packages"]["numpy"] == metadata.version("numpy")
    assert origin["packages"]["dvc"] == metadata.version("dvc")
    assert origin["packages"]["prefect"] == metadata.version("prefect")
    assert origin["git_commit"] is None and origin["git_dirty"] is None, "no git tree: no commit"
    assert origin["cuda"] is None or isinstance(origin["cuda"], str)
    json.dumps(origin)  # JSON-ready

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=tmp_path, capture_output=True, text=True, check=True).stdout.strip()

    git("init", "--quiet")
    (tmp_path / "a.txt").write_text("one")
    (tmp_path / "metrics").mkdir()
    (tmp_path / PATHS["scores"]).write_text("{}")
    git("add", "a.txt", PATHS["scores"])
    git("-c", "user.name=t", "-c", "user.email=t@example.invalid", "-c", "commit.gpgsign=false", "commit", "-qm", "one")
    assert git_state(tmp_path) == {"commit": git("rev-parse", "HEAD"), "dirty": False}
    (tmp_path / PATHS["scores"]).write_text('{"cluster": 1}')
    assert git_state(tmp_path)["dirty"] is False, "a run's own metrics rewritten by its stages leave the tree clean"
    (tmp_path / "a.txt").write_text("two")
    assert git_state(tmp_path)["dirty"] is True, "an edited tracked file makes the tree dirty"


def _git(folder: Path, *args: str) -> str:
    """Run git in `folder` with a throwaway identity; its stdout, stripped."""
    identity = ["-c", "user.name=t", "-c", "user.email=t@example.invalid", "-c", "commit.gpgsign=false"]
    return subprocess.run(["git", *identity, *args], cwd=folder, capture_output=True, text=True, check=True).stdout.strip()


def test_untracked_files_and_dvc_lock_leave_the_tree_clean_and_a_staged_edit_makes_it_dirty(tmp_path: Path) -> None:
    _git(tmp_path, "init", "--quiet")
    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\n")
    _git(tmp_path, "add", "code.py", "dvc.lock")
    _git(tmp_path, "commit", "-qm", "one")
    (tmp_path / "new-notes.txt").write_text("not tracked")
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    assert git_state(tmp_path)["dirty"] is False, "an untracked file or a rewritten dvc.lock made the tree dirty"
    (tmp_path / "code.py").write_text("x = 2\n")
    _git(tmp_path, "add", "code.py")
    assert git_state(tmp_path) == {"commit": _git(tmp_path, "rev-parse", "HEAD"), "dirty": True}


def test_the_run_records_are_dvc_lock_and_every_artifact_path() -> None:
    assert set(RUN_RECORDS) == {"dvc.lock", *PATHS.values()}, RUN_RECORDS


def test_without_git_on_the_path_the_commit_and_dirty_flag_are_null(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "no-such-bin"))
    assert git_state(tmp_path) == {"commit": None, "dirty": None}


def test_a_distribution_that_is_not_installed_has_no_version() -> None:
    assert package_version("numpy") == metadata.version("numpy")
    assert package_version("surely-not-an-installed-distribution-xyz") is None


def test_faiss_is_recorded_under_one_name_whichever_wheel_is_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    versions = {"faiss-gpu": "1.8.0"}
    monkeypatch.setattr(provenance_module, "package_version", lambda name: versions.get(name))
    packages = provenance_module.provenance(".")["packages"]
    assert packages["faiss"] == "1.8.0" and "faiss-cpu" not in packages and "faiss-gpu" not in packages, packages
    assert list(packages) == sorted(packages), "the packages are listed in name order"


def test_cuda_and_gpu_are_null_until_torch_has_initialised_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    assert cuda_state() == {"cuda": None, "gpu": None}, "torch not even imported"
    cuda = types.SimpleNamespace(is_initialized=lambda: False)
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=cuda, version=types.SimpleNamespace(cuda="12.8")))
    assert cuda_state() == {"cuda": None, "gpu": None}, "torch imported, CUDA not initialised"
    cuda = types.SimpleNamespace(is_initialized=lambda: True, current_device=lambda: 2, get_device_name=lambda i: f"GPU #{i}")
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=cuda, version=types.SimpleNamespace(cuda="12.8")))
    assert cuda_state() == {"cuda": "12.8", "gpu": "GPU #2"}


def test_the_record_has_every_field_and_survives_a_json_round_trip(tmp_path: Path) -> None:
    origin = provenance(tmp_path)
    assert set(origin) == {"project", "python", "platform", "packages", "cuda", "gpu", "git_commit", "git_dirty"}, origin
    assert origin["python"] == ".".join(map(str, sys.version_info[:3]))
    assert json.loads(json.dumps(origin)) == origin
