"""The Prefect side: prefect.yaml's entrypoints load, the `stego` flow reproduces and records
only its own outputs, and the `full` deployment runs on a local server with a process worker.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from tiny_project import set_params

from stego_tasks.paths import PATHS
from tests.conftest import (
    REPO,
    SUBPROCESS_ENV,
    VENV_BIN,
    downstream,
    run,
    stage_graph,
    stop_process_group,
)

PREFECT = str(VENV_BIN / "prefect")
RECORDED = {"dvc.lock", "metrics/scores.json", "metrics/per_class_iou.json"}


def _deployments() -> list[dict]:
    return yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]


def _git_lines(project: Path, env: dict[str, str], *args: str) -> list[str]:
    return [line for line in run(["git", *args], project, env).stdout.splitlines() if line.strip()]


@pytest.mark.parametrize("entrypoint", sorted({d["entrypoint"] for d in _deployments()}))
def test_prefect_yaml_entrypoints_load(entrypoint: str) -> None:
    """Every entrypoint in prefect.yaml names an existing file and a flow in it (no renames)."""
    from prefect.flows import Flow, load_flow_from_entrypoint

    path, _, function = entrypoint.rpartition(":")
    assert (REPO / path).is_file(), f"prefect.yaml entrypoint {entrypoint}: {path} does not exist"
    loaded = load_flow_from_entrypoint(f"{REPO / path}:{function}")
    assert isinstance(loaded, Flow), f"{entrypoint} is a {type(loaded).__name__}, not a Prefect flow"
    assert loaded.name == "stego", f"{entrypoint} is flow {loaded.name!r}; the deployments are of flow 'stego'"


def test_prefect_yaml_declares_both_deployments_without_absolute_paths() -> None:
    """`full` and the scheduled retrain share flow and pool; nothing pins a machine's folder."""
    config = yaml.safe_load((REPO / "prefect.yaml").read_text())
    deployments = {d["name"]: d for d in config["deployments"]}
    assert {"full", "retrain-on-new-images"} <= set(deployments), f"deployments: {sorted(deployments)}"
    for name, deployment in deployments.items():
        assert deployment["entrypoint"] == "flows/stego.py:stego_flow", f"{name} runs {deployment['entrypoint']}"
        assert deployment["work_pool"]["name"] == "stego-local", f"{name} uses pool {deployment['work_pool']}"
    schedules = deployments["retrain-on-new-images"].get("schedules") or []
    assert schedules and (schedules[0].get("cron") or schedules[0].get("interval")), f"no schedule: {schedules}"
    pull = json.dumps(config.get("pull"))
    assert "set_working_directory" in pull and '"/' not in pull, f"pull steps must not hard-code a path: {pull}"


@pytest.mark.slow
def test_stego_flow_reruns_stale_stages_and_commits_only_its_outputs(
    project_copy: Path, project_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under the test harness: an up-to-date project runs nothing; a crf change runs crf +
    evaluate and commits dvc.lock and metrics only, leaving params.yaml uncommitted."""
    from prefect.testing.utilities import prefect_test_harness

    from flows.stego import stego_flow

    # The stage subprocesses DVC starts report to the session server instead of each
    # starting an ephemeral one; the flow itself runs against the harness.
    for name, value in {**SUBPROCESS_ENV, "PREFECT_API_URL": project_env["PREFECT_API_URL"]}.items():
        monkeypatch.setenv(name, value)
    head_before = _git_lines(project_copy, project_env, "rev-parse", "HEAD")
    with prefect_test_harness(server_startup_timeout=None):
        idle = stego_flow(repo=str(project_copy))
        assert idle == {"ran": [], "commit": None, "artifacts": ["stego-scores", "stego-report", "stego-trace"]}, (
            f"an up-to-date project gave {idle}"
        )
        assert _git_lines(project_copy, project_env, "rev-parse", "HEAD") == head_before, "a no-op run committed"

        set_params(project_copy, {("crf", "iterations"): 5})
        result = stego_flow(repo=str(project_copy))
    expected = downstream(stage_graph(project_copy), "crf")
    assert {"crf", "evaluate"} <= expected, f"evaluate is not downstream of crf in dvc.yaml: {sorted(expected)}"
    assert sorted(result["ran"]) == sorted(expected), f"a crf.iterations change ran {result['ran']}, expected {sorted(expected)}"
    head = _git_lines(project_copy, project_env, "rev-parse", "HEAD")
    assert result["commit"] and head == [result["commit"]], f"flow reported commit {result['commit']}, HEAD is {head}"
    committed = set(_git_lines(project_copy, project_env, "show", "--name-only", "--format=", "HEAD"))
    traces = {f"{PATHS['trace']}/{stage}.json" for stage in expected}  # each stage that ran wrote its trace
    assert committed == RECORDED | traces, f"the run's commit holds {sorted(committed)}, expected {sorted(RECORDED | traces)}"
    status = _git_lines(project_copy, project_env, "status", "--porcelain", "--", "params.yaml", "dvc.lock", "metrics")
    assert status == [" M params.yaml"], f"after the run git status says {status}; params.yaml must stay modified only"
    message = _git_lines(project_copy, project_env, "log", "-1", "--format=%s")[0]
    assert message.startswith("stego run: reproduced crf, evaluate") and "params.yaml" in message, f"commit message: {message}"


@pytest.mark.slow
def test_full_deployment_runs_on_a_process_worker(
    project_copy: Path, project_env: dict[str, str], tmp_path: Path
) -> None:
    """`prefect deploy --all` from the project, a process worker started elsewhere, and
    `prefect deployment run stego/full --watch`: the run completes in the project folder."""
    run([PREFECT, "work-pool", "create", "stego-local", "--type", "process", "--overwrite"], project_copy, project_env)
    deployed = run([PREFECT, "--no-prompt", "deploy", "--all"], project_copy, project_env, timeout=120)
    for name in ("stego/full", "stego/retrain-on-new-images"):
        assert f"Deployment '{name}' successfully created" in " ".join(deployed.stdout.split()), (
            f"{name} was not deployed:\n{deployed.stdout[-3000:]}"
        )
    full = json.loads(run([PREFECT, "deployment", "inspect", "stego/full", "-o", "json"], project_copy, project_env).stdout)
    assert full["pull_steps"] == [
        {"prefect.deployments.steps.set_working_directory": {"directory": str(project_copy.resolve())}}
    ], f"the pull step does not lead to the project folder: {full['pull_steps']}"
    assert full["work_pool_name"] == "stego-local", f"full is on pool {full['work_pool_name']}"
    scheduled = json.loads(
        run([PREFECT, "deployment", "inspect", "stego/retrain-on-new-images", "-o", "json"], project_copy, project_env).stdout
    )
    assert [s["schedule"].get("cron") for s in scheduled["schedules"]] == ["0 */6 * * *"], (
        f"retrain-on-new-images schedules: {scheduled['schedules']}"
    )

    # Started outside the project: only the deployment's pull step can bring the run there.
    elsewhere = tmp_path / "worker-cwd"
    elsewhere.mkdir()
    worker_log = tmp_path / "worker.log"
    worker_env = {**project_env, "PREFECT_WORKER_QUERY_SECONDS": "2"}
    with worker_log.open("w") as handle:
        worker = subprocess.Popen(
            [PREFECT, "worker", "start", "--pool", "stego-local", "--limit", "1"],
            cwd=elsewhere, env=worker_env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        started = time.monotonic()
        watched = run(
            [PREFECT, "deployment", "run", "stego/full", "--watch", "--watch-interval", "1", "--watch-timeout", "240"],
            elsewhere, project_env, timeout=300, check=False,
        )
        elapsed = time.monotonic() - started
    finally:
        stop_process_group(worker)
    log = worker_log.read_text()
    assert watched.returncode == 0 and "Completed" in watched.stdout, (
        f"deployment run failed after {elapsed:.0f} s:\n{watched.stdout[-3000:]}\n{watched.stderr[-2000:]}\n"
        f"--- worker ---\n{log[-4000:]}"
    )
    assert "stages that ran: none" in log, f"the flow run did not find the up-to-date project:\n{log[-4000:]}"
    assert os.listdir(elsewhere) == [], f"the run wrote into the worker's folder: {os.listdir(elsewhere)}"


def test_a_dvc_error_is_one_sentence_not_a_traceback(tmp_path: Path) -> None:
    """`stego run` outside a DVC project raised NotDvcRepoError, a bug's traceback (exit 1)."""
    from flows.stego import reproduce
    from stego_tasks.errors import ToolFailedError

    with pytest.raises(ToolFailedError, match=r"`dvc repro` in .* failed: you are not inside of a DVC repository.*; fix what it names") as error:
        reproduce.fn(str(tmp_path))
    assert "\n" not in str(error.value)
    assert Path.cwd() != tmp_path, "the working folder is restored"
