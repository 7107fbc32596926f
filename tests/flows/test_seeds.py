"""`flows/seeds.py`: `stego seeds` runs one DVC experiment per seed and writes mean ± sd.

`dvc exp run` is replaced by a fake that writes what the pipeline would (the scores file
and the val cluster map, each a function of the seed), so the loop is checked without DVC:
one `dvc exp run -S seed=<s> --name <prefix>-<s>` per seed, in order, in the project folder,
with this interpreter's commands first on PATH and DVC's analytics off; the table holds the
mean and sample sd of each seed's scores (computed here with numpy); each seed's map is kept
(the workspace holds only the last one), so two seeds whose maps differ only in cluster ids
agree perfectly and a seed against an unrelated map does not; a failed run is one sentence
that says how many seeds finished, and writes no table. The real `stego seeds` over DVC
experiments is tested in tests/tools/test_seeds.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import zarr

from flows import seeds as module
from flows.seeds import run_seeds
from stego_tasks.errors import ToolFailedError
from stego_tasks.paths import PATHS, run_path

N_CLUSTERS = 4
# The val map of each seed: seeds 0 and 1 are the same partition under other ids; seed 2 is unrelated.
BASE_MAP = np.random.default_rng(0).integers(0, N_CLUSTERS, size=(3, 8, 8)).astype(np.uint8)
MAPS = {0: BASE_MAP, 1: (BASE_MAP + 1) % N_CLUSTERS,
        2: np.random.default_rng(1).integers(0, N_CLUSTERS, size=(3, 8, 8)).astype(np.uint8)}


def scores_of(seed: int) -> dict[str, Any]:
    """The scores file a seed's run writes (made up, different per seed)."""
    return {"cluster": {"accuracy": 50.0 + 3 * seed, "miou": 20.0 + seed * seed}, "linear": {"accuracy": 70.0, "miou": 40.0}}


class FakeDvc:
    """`subprocess.run` for `dvc exp run -S seed=<s> ...`: writes the seed's scores and val map, or fails."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.calls: list[dict[str, Any]] = []
        self.fail_at = fail_at

    def run(self, command: list[str], cwd: Path, env: dict[str, str], check: bool) -> subprocess.CompletedProcess:
        self.calls.append({"command": command, "cwd": cwd, "env": env})
        seed = int(command[command.index("-S") + 1].removeprefix("seed="))
        if seed == self.fail_at:
            return subprocess.CompletedProcess(command, 3)
        scores = run_path(cwd, "scores")
        scores.parent.mkdir(parents=True, exist_ok=True)
        scores.write_text(json.dumps(scores_of(seed)))
        group = zarr.open_group(str(run_path(cwd, "predictions")), mode="w")
        group.create_array("cluster_pred", data=MAPS[seed % len(MAPS)])
        group.attrs["n_clusters"] = N_CLUSTERS
        return subprocess.CompletedProcess(command, 0)


@pytest.fixture
def dvc(monkeypatch: pytest.MonkeyPatch) -> FakeDvc:
    """The fake `dvc exp run` flows/seeds.py calls."""
    fake = FakeDvc()
    monkeypatch.setattr(module, "subprocess", SimpleNamespace(run=fake.run))
    return fake


def test_each_seed_is_one_dvc_experiment_run_in_the_project(dvc: FakeDvc, tmp_path: Path) -> None:
    run_seeds([0, 1, 2], repo=tmp_path, prefix="try")
    assert [call["command"] for call in dvc.calls] == [
        ["dvc", "exp", "run", "-S", f"seed={seed}", "--name", f"try-{seed}"] for seed in (0, 1, 2)]
    for call in dvc.calls:
        assert call["cwd"] == tmp_path and call["env"]["DVC_NO_ANALYTICS"] == "1"
        assert call["env"]["PATH"].split(":")[0] == str(Path(sys.executable).parent), "the stage commands are this venv's"


def test_the_table_is_mean_and_sample_sd_of_the_seeds_scores(dvc: FakeDvc, tmp_path: Path) -> None:
    summary = run_seeds([0, 1, 2], repo=tmp_path)
    assert json.loads((tmp_path / PATHS["seeds"]).read_text()) == summary, "the returned table is the file"
    assert summary["seeds"] == [0, 1, 2] and summary["n_runs"] == 3
    for method in ("cluster", "linear"):
        for metric in ("accuracy", "miou"):
            values = np.array([scores_of(seed)[method][metric] for seed in (0, 1, 2)])
            got = summary["methods"][method][metric]
            assert got["mean"] == pytest.approx(values.mean(), abs=1e-4), (method, metric)
            assert got["sd"] == pytest.approx(values.std(ddof=1), abs=1e-4), (method, metric)


def test_the_seed_agreement_compares_every_seeds_own_map(dvc: FakeDvc, tmp_path: Path) -> None:
    agreement = run_seeds([0, 1, 2], repo=tmp_path)["label_free"]["seed_ami"]
    ami = {tuple(pair["seeds"]): pair["ami"] for pair in agreement["pairs"]}
    assert set(ami) == {(0, 1), (0, 2), (1, 2)}
    assert ami[(0, 1)] == pytest.approx(1.0), "the same partition under other cluster ids agrees perfectly"
    assert abs(ami[(0, 2)]) < 0.2 and abs(ami[(1, 2)]) < 0.2, f"an unrelated map does not agree: {ami}"


def test_a_failed_run_is_one_sentence_and_writes_no_table(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = FakeDvc(fail_at=6)
    monkeypatch.setattr(module, "subprocess", SimpleNamespace(run=fake.run))
    with pytest.raises(ToolFailedError) as error:
        run_seeds([5, 6, 7], repo=tmp_path)
    assert str(error.value) == ("`dvc exp run -S seed=6 --name seed-6` failed (exit 3); "
                                "the 1 finished seed(s) are kept as experiments.")
    assert len(fake.calls) == 2, "no seed runs after a failure"
    assert not (tmp_path / PATHS["seeds"]).exists()
