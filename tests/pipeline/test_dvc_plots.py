"""DVC draws the run's plots from data: `dvc plots show` on a tiny project with the repo's plot definitions.

The project holds the `plots:` section of the repo's dvc.yaml (with its `vars`) and the
files the evaluate and train stages write; the confusion rows DVC reads back are counted
against the matrix they came from.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import yaml

from stego_tasks.evaluate import CONFUSION_ROWS, scaled_counts, write_plot_data
from stego_tasks.paths import PATHS
from tests.conftest import REPO, VENV_BIN, run

NAMES = ["sky", "grass", "road"]
# [cluster, class] pixel counts; cluster 3 is matched to no class.
CONFUSION = np.array([[5000, 300, 0], [120, 2500, 40], [0, 75, 1900], [7, 0, 3]])
ASSIGNMENT = np.array([0, 1, 2, -1])
PER_CLASS = {"cluster_crf": {"sky": 0.91, "grass": 0.72, "road": 0.88}, "kmeans": {"sky": 0.5, "grass": 0.4, "road": 0.3}}


def test_scaled_counts_keep_the_proportions_and_the_total() -> None:
    scaled = scaled_counts(CONFUSION, CONFUSION_ROWS)
    exact = CONFUSION / CONFUSION.sum() * CONFUSION_ROWS
    assert scaled.sum() == CONFUSION_ROWS, f"{scaled.sum()} rows"
    assert np.all(np.abs(scaled - exact) < 1), f"a cell is off by a row or more: {scaled - exact}"
    assert np.all(scaled[CONFUSION == 0] == 0), "an empty cell got rows"
    assert scaled_counts(np.zeros((2, 2)), 10).sum() == 0, "no pixels, no rows"


def _project(root: Path) -> Path:
    root.mkdir()
    env_dvc = str(VENV_BIN / "dvc")
    run(["git", "init", "--quiet"], root)
    run([env_dvc, "init", "--quiet"], root)
    run([env_dvc, "config", "--local", "core.site_cache_dir", str(root.parent / "site-cache")], root)
    full = yaml.safe_load((REPO / "dvc.yaml").read_text())
    (root / "dvc.yaml").write_text(yaml.safe_dump({"vars": full["vars"], "plots": full["plots"]}, sort_keys=False))
    (root / "stego_tasks").mkdir()
    shutil.copy2(REPO / "stego_tasks" / "paths.yaml", root / "stego_tasks" / "paths.yaml")
    (root / "plots").mkdir()
    write_plot_data(CONFUSION, ASSIGNMENT, NAMES, PER_CLASS, root / PATHS["confusion_data"], root / PATHS["per_class_plot"])
    (root / PATHS["loss_log"]).write_text("step,total,intra,inter,neg,cluster,linear\n0,2,1,.5,.5,.1,.1\n10,1,.5,.25,.25,.05,.05\n")
    (root / PATHS["shift_stats"]).write_text("correlation,share,pair\n-0.1,0.4,random\n0.3,0.6,knn\n")
    return root


def test_dvc_plots_show_draws_confusion_per_class_losses_and_shifts(tmp_path: Path) -> None:
    project = _project(tmp_path / "project")
    shown = json.loads(run([str(VENV_BIN / "dvc"), "plots", "show", "--json"], project).stdout)["data"]
    for name in ("confusion_data", "per_class_plot", "loss_log", "shift_stats"):
        assert PATHS[name] in shown, f"dvc plots show has no plot of {PATHS[name]}: {sorted(shown)}"

    confusion = shown[PATHS["confusion_data"]][0]["content"]
    assert confusion["data"]["values"], "the confusion plot has no data"
    encoded = json.dumps(confusion.get("spec", confusion))
    assert '"rect"' in encoded, "the confusion template draws rectangles"
    drawn = Counter((row["actual"], row["predicted"]) for row in confusion["data"]["values"])
    scaled = scaled_counts(CONFUSION, CONFUSION_ROWS)
    expected = Counter()
    for cluster, label in zip(*np.nonzero(scaled), strict=True):
        predicted = NAMES[ASSIGNMENT[cluster]] if ASSIGNMENT[cluster] >= 0 else f"cluster {cluster}"
        expected[(NAMES[label], predicted)] += int(scaled[cluster, label])
    assert drawn == expected, f"confusion cells drawn {dict(drawn)}, expected {dict(expected)}"
    assert drawn[("sky", "sky")] == round(5000 / CONFUSION.sum() * CONFUSION_ROWS), "the diagonal's share"

    bars = {row["class"]: float(row["cluster_crf"]) for row in shown[PATHS["per_class_plot"]][0]["content"]["data"]["values"]}
    assert bars == PER_CLASS["cluster_crf"], f"per-class IoU drawn {bars}"
