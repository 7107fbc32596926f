"""End-to-end `dvc repro` on the tiny project: every stage runs once, then only what a change
makes stale runs again, and `dvc metrics diff` compares two recorded runs.

The stages that ran are read from DVC's output ("Running stage 'x':") and compared with
DVC's own graph of the project: a change must re-run the changed stage and everything
downstream of it, and nothing upstream; stages added after `evaluate` are followed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from tiny_project import set_params

from stego_tasks.method.metrics import METHODS
from stego_tasks.paths import PATHS
from tests.conftest import VENV_BIN, always_changed, downstream, dvc_repro, run, stage_graph

pytestmark = pytest.mark.slow

CORE_STAGES = ["demo_data", "ingest", "validate", "extract", "knn", "train", "cluster", "crf", "evaluate"]
# What each method's predictions are scored as in metrics/scores.json.
CRF_METHODS = ("cluster_crf", "linear_crf")
# Label-free signals of the final map (after the CRF); confidence and the k-means agreement are the probe's, before it.
CRF_LABEL_FREE = ("label_free.size_balance", "label_free.largest_share", "label_free.used_clusters")


def stages_ran(output: str) -> list[str]:
    """Stage names in the order DVC ran them, from `dvc repro` stdout."""
    return re.findall(r"^Running stage '([^']+)':", output, flags=re.MULTILINE)


def stale_ran(output: str, project: Path) -> list[str]:
    """The stages that ran because something they depend on changed (the always-changed checks left out)."""
    checks = always_changed(project)
    return [stage for stage in stages_ran(output) if stage not in checks]


def commit_run(project: Path, env: dict[str, str], message: str) -> None:
    """Commit a run together with the params that produced it."""
    run(["git", "add", "params.yaml", "dvc.lock", "metrics"], project, env)
    run(["git", "commit", "--quiet", "-m", message], project, env)


def test_first_run_runs_every_stage_and_writes_scores(reproduced_project: Path) -> None:
    """The first repro runs each stage once, after all it depends on, and scores every method."""
    output = (reproduced_project.parent / "repro-output.txt").read_text()
    ran = stages_ran(output)
    graph = stage_graph(reproduced_project)
    assert set(CORE_STAGES) <= set(graph), f"dvc.yaml lacks core stages: {sorted(set(CORE_STAGES) - set(graph))}"
    assert sorted(ran) == sorted(graph), f"first repro ran {ran}; the pipeline has {sorted(graph)}"
    for stage, upstream in graph.items():
        late = [up for up in upstream if ran.index(up) > ran.index(stage)]
        assert not late, f"{stage} ran before {late}, which it depends on: {ran}"
    scores = json.loads((reproduced_project / "metrics" / "scores.json").read_text())
    for method in METHODS:
        assert set(scores.get(method, {})) >= {"miou", "accuracy"}, f"scores.json lacks miou/accuracy of {method}: {scores}"
        assert 0 <= scores[method]["miou"] <= 100, f"{method} mIoU {scores[method]['miou']} is not a percentage"
    assert scores["backbone_weights"] == "random", f"the tiny project asked for random weights, scores say {scores}"
    assert scores["n_images"] == 3, f"the tiny corpus has 3 validation images, scores count {scores['n_images']}"


def test_metrics_show_lists_every_stages_cost_and_what_produced_it(reproduced_project: Path) -> None:
    """`dvc metrics show` has wall, CPU and peak memory per stage, the torch version and the git commit."""
    shown = json.loads(run([str(VENV_BIN / "dvc"), "metrics", "show", "--json"], reproduced_project).stdout)
    metrics = shown[""]["data"]
    head_before_run = run(["git", "rev-parse", "HEAD~1"], reproduced_project).stdout.strip()  # the run's own commit is HEAD
    for stage in set(stage_graph(reproduced_project)) - always_changed(reproduced_project):  # checks are untraced
        trace = metrics.get(f"{PATHS['trace']}/{stage}.json", {}).get("data")
        assert trace, f"dvc metrics show lists no trace of stage {stage}: {sorted(metrics)}"
        assert trace["wall_s"] > 0 and trace["cpu_s"] > 0 and trace["peak_rss_mb"] > 0, f"{stage} trace {trace}"
        assert trace["provenance"]["packages"]["torch"], f"{stage}: no torch version"
        assert trace["provenance"]["git_commit"] == head_before_run, f"{stage} ran at {trace['provenance']['git_commit']}"
    assert metrics[PATHS["scores"]]["data"]["provenance"]["git_commit"] == head_before_run, "scores.json names its commit"
    counts = metrics[f"{PATHS['trace']}/train.json"]["data"]["counts"]
    assert counts.get("steps") == 30, f"train trace counts {counts} (the tiny project trains 30 steps)"


def test_dvc_plots_show_draws_the_confusion_from_data(reproduced_project: Path) -> None:
    shown = json.loads(run([str(VENV_BIN / "dvc"), "plots", "show", "--json"], reproduced_project).stdout)["data"]
    rows = shown[PATHS["confusion_data"]][0]["content"]["data"]["values"]
    assert len(rows) == 10_000 and {"actual", "predicted"} <= set(rows[0]), f"confusion rows: {len(rows)}, {rows[:1]}"


def test_noop_repro_runs_nothing(project_copy: Path, project_env: dict[str, str]) -> None:
    """With nothing changed, `dvc repro` runs no stage and says so."""
    result = dvc_repro(project_copy, project_env)
    checks = always_changed(project_copy)
    assert checks == {"weights"}, f"always-changed stages: {sorted(checks)}"
    assert stale_ran(result.stdout, project_copy) == [], f"a no-op repro ran {stages_ran(result.stdout)}:\n{result.stdout}"
    assert "Stage 'extract' didn't change, skipping" in result.stdout, f"no up-to-date message:\n{result.stdout}"


def test_crf_param_reruns_crf_and_evaluate_only(project_copy: Path, project_env: dict[str, str]) -> None:
    """A crf param re-runs crf + evaluate; `dvc metrics diff` then shows only CRF scores moved."""
    set_params(project_copy, {("crf", "iterations"): 5})
    result = dvc_repro(project_copy, project_env)
    ran = stale_ran(result.stdout, project_copy)
    expected = downstream(stage_graph(project_copy), "crf")
    assert {"crf", "evaluate"} <= expected, f"evaluate is not downstream of crf in dvc.yaml: {sorted(expected)}"
    assert ran[:1] == ["crf"] and sorted(ran) == sorted(expected), f"crf.iterations change ran {ran}, expected {sorted(expected)}"

    commit_run(project_copy, project_env, "crf.iterations 5")
    diff = run([str(VENV_BIN / "dvc"), "metrics", "diff", "HEAD~1", "HEAD", "--all", "--json"], project_copy, project_env)
    metrics = json.loads(diff.stdout)
    traces = {stage: f"{PATHS['trace']}/{stage}.json" for stage in set(stage_graph(project_copy)) - always_changed(project_copy)}
    assert set(metrics) == {"metrics/scores.json", "metrics/per_class_iou.json", *traces.values()}, (
        f"metrics diff files: {sorted(metrics)}"
    )
    for stage, path in traces.items():  # a stage that ran has a new trace; one that did not keeps its own
        started = metrics[path]["started"]
        assert (started["old"] != started["new"]) == (stage in ran), f"trace of {stage} (ran: {stage in ran}): {started}"
    scores = metrics["metrics/scores.json"]
    for method in METHODS:
        for key in ("miou", "accuracy"):
            entry = scores.get(f"{method}.{key}")
            assert entry is not None and set(entry) == {"old", "new", "diff"}, f"{method}.{key} diff entry: {entry}"
            assert entry["diff"] == pytest.approx(entry["new"] - entry["old"]), f"{method}.{key}: diff != new - old"
    assert scores.get("backbone_weights") == {"old": "random", "new": "random"}, f"weights entry: {scores.get('backbone_weights')}"
    # Text entries (backbone names) carry old/new but no diff.
    moved = {name for path in ("metrics/scores.json", "metrics/per_class_iou.json")
             for name, entry in metrics[path].items() if entry.get("diff", 0) != 0 and not name.startswith("provenance.")}
    # What produced them moved too: this run's tree had an uncommitted params.yaml.
    assert metrics["metrics/scores.json"]["provenance.git_dirty"]["new"] is True, "the dirty tree is recorded"
    assert moved, "changing crf.iterations from 10 to 5 moved no score at all"
    assert all(name.startswith(CRF_METHODS + CRF_LABEL_FREE) for name in moved), f"a crf param moved non-CRF scores: {sorted(moved)}"


def test_train_param_reruns_from_train_on(project_copy: Path, project_env: dict[str, str]) -> None:
    """A train param re-runs train, cluster, crf, evaluate (and what follows); never the stages before train."""
    # The tiny project's corpus is the demo, whose train sizes live in the demo block.
    set_params(project_copy, {("demo", "train", "steps"): 20})
    result = dvc_repro(project_copy, project_env)
    ran = stale_ran(result.stdout, project_copy)
    expected = downstream(stage_graph(project_copy), "train")
    assert {"train", "cluster", "crf", "evaluate"} <= expected, f"dvc.yaml's stages after train: {sorted(expected)}"
    assert ran[:1] == ["train"] and sorted(ran) == sorted(expected), f"demo.train.steps change ran {ran}, expected {sorted(expected)}"
    upstream = {"demo_data", "ingest", "validate", "extract", "knn"} & set(ran)
    assert not upstream, f"a train param re-ran stages before train: {sorted(upstream)}"
    lock = (project_copy / "dvc.lock").read_text()
    assert re.search(r"^\s+steps: 20$", lock, flags=re.MULTILINE), "dvc.lock does not record demo.train.steps 20"


def test_renaming_clusters_reruns_evaluate_and_report_only(project_copy: Path, project_env: dict[str, str]) -> None:
    """The names file is a dep of evaluate alone: a rename re-runs evaluate and what follows it, and names the gallery."""
    (project_copy / "cluster_names.yaml").write_text("names:\n  0: field\n  1: field\nignore: [2]\n")
    result = dvc_repro(project_copy, project_env)
    ran = stale_ran(result.stdout, project_copy)
    expected = downstream(stage_graph(project_copy), "evaluate")
    assert ran[:1] == ["evaluate"] and sorted(ran) == sorted(expected), f"a rename ran {ran}, expected {sorted(expected)}"
    gallery = json.loads((project_copy / "plots" / "gallery" / "gallery.json").read_text())
    assert [entry["name"] for entry in gallery["clusters"][:3]] == ["field", "field", "ignored"], gallery["clusters"][:3]
