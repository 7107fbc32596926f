"""Tests for stego_tasks.tools.seeds (mean ± sd over seeds) and the `stego seeds` runner's bookkeeping."""

from __future__ import annotations

import numpy as np
import pytest

from stego_tasks.method.label_free import adjusted_mutual_info, contingency
from stego_tasks.tools.seeds import aggregate, format_table, mean_sd, seed_agreement

RUNS = [
    (0, {"cluster": {"accuracy": 50.0, "miou": 20.0}, "kmeans": {"accuracy": 30.0, "miou": 10.0}}),
    (1, {"cluster": {"accuracy": 54.0, "miou": 26.0}, "kmeans": {"accuracy": 30.0, "miou": 10.0}}),
    (2, {"cluster": {"accuracy": 58.0, "miou": 23.0}, "kmeans": {"accuracy": 33.0, "miou": None}}),
]


def test_mean_and_sample_sd_equal_numpy() -> None:
    summary = aggregate(RUNS)
    for method in ("cluster", "kmeans"):
        for metric in ("accuracy", "miou"):
            values = [s[method][metric] for _, s in RUNS if s[method][metric] is not None]
            entry = summary["methods"][method][metric]
            assert entry["mean"] == pytest.approx(np.mean(values), abs=1e-4), (method, metric)
            assert entry["sd"] == pytest.approx(np.std(values, ddof=1), abs=1e-4), (method, metric)
            assert entry["n"] == len(values)
    assert summary["seeds"] == [0, 1, 2] and summary["n_runs"] == 3
    assert "linear" not in summary["methods"], "a method no run scored has no row"


def test_one_seed_has_no_sd_and_the_table_says_so() -> None:
    assert mean_sd([42.0]) == {"mean": 42.0, "sd": None, "n": 1}
    text = format_table(aggregate(RUNS[:1]))
    assert "50.0" in text and "±" not in text.splitlines()[2]
    assert "cluster" in format_table(aggregate(RUNS)) and "54.0 ± 4.0" in format_table(aggregate(RUNS))


@pytest.mark.slow  # a reproduced project and a DVC experiment per seed: about 5 min
def test_stego_seeds_runs_each_seed_as_a_dvc_experiment(project_copy, project_env) -> None:
    """Two seeds on the tiny project: two named experiments, and a table of exactly their scores."""
    import json
    import subprocess

    from tests.conftest import VENV_BIN

    result = subprocess.run(
        [str(VENV_BIN / "stego"), "seeds", "2", "--first", "3"], cwd=project_copy, env=project_env,
        capture_output=True, text=True, timeout=900, check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    summary = json.loads((project_copy / "metrics" / "seeds.json").read_text())
    assert summary["seeds"] == [3, 4]
    per_seed = {run["seed"]: run["cluster"]["miou"] for run in summary["runs"]}
    assert summary["methods"]["cluster"]["miou"]["mean"] == pytest.approx(np.mean(list(per_seed.values())), abs=1e-3)
    shown = subprocess.run([str(VENV_BIN / "dvc"), "exp", "list", "--name-only"], cwd=project_copy, env=project_env,
                           capture_output=True, text=True, check=True).stdout.split()
    assert {"seed-3", "seed-4"} <= set(shown), f"experiments {shown}"
    assert "± " in result.stdout or "seeds: 3, 4" in result.stdout
    agreement = summary["label_free"]["seed_ami"]
    assert [pair["seeds"] for pair in agreement["pairs"]] == [[3, 4]], f"agreement {agreement}"
    assert -1.0 <= agreement["pairs"][0]["ami"] <= 1.0 and agreement["mean"] == agreement["pairs"][0]["ami"]


def test_seed_agreement_is_the_pairwise_ami_of_the_whole_maps(tmp_path) -> None:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 4, (5, 6, 6))
    maps = {0: base, 1: np.array([2, 3, 0, 1])[base], 2: rng.integers(0, 4, (5, 6, 6))}  # 1 = 0 renamed
    paths = []
    for seed, values in maps.items():
        np.save(tmp_path / f"{seed}.npy", values.astype(np.uint8))
        paths.append((seed, tmp_path / f"{seed}.npy"))
    result = seed_agreement(paths, 4, batch=2)  # batches of 2 images must add up to the whole maps
    got = {tuple(pair["seeds"]): pair["ami"] for pair in result["pairs"]}
    for (a, b), ami in got.items():
        want = adjusted_mutual_info(contingency(maps[a], maps[b], 4, 4))
        assert ami == pytest.approx(want, abs=1e-4), f"seeds {a}, {b}"
    assert got[(0, 1)] == pytest.approx(1.0), "a renamed partition agrees fully"
    assert result["n"] == 3 and result["mean"] == pytest.approx(np.mean(list(got.values())), abs=1e-4)
    assert seed_agreement(paths[:1], 4)["mean"] is None, "one seed: nothing to compare"
