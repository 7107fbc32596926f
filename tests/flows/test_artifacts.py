"""Prefect artifacts through a real local Prefect server on loopback: a stage flow's markdown
summary and progress, and the `stego` flow's scores table, report link and stage costs,
read back from the server's REST API and compared with the files they came from."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

from flows.artifacts import artifact_key, scores_table
from stego_tasks.paths import PATHS
from tests.conftest import ISOLATION, REPO, SUBPROCESS_ENV, PrefectServer

SCORES = {"cluster": {"accuracy": 61.5, "miou": 33.25}, "kmeans": {"accuracy": 90.0, "miou": 80.5}, "preset": "custom",
          "backbone": "vit_tiny_patch16_224", "backbone_weights": "random"}
SCRIPT = """
import json
from flows.stage_flow import stage_flow
from flows.stego import stego_flow
from stego_tasks.runtime.progress import Progress


def count_items(n: int = 5) -> dict:
    with Progress(n, "count items", unit="it") as progress:
        for _ in range(n):
            progress.update()
    return {"images": n, "source": "a test", "k": 3}


state = stage_flow(count_items)(n=7, trace="trace/count_items.json", return_state=True)
run = stego_flow(repo=".", record=False)
print(json.dumps({"stage_flow_run": str(state.state_details.flow_run_id), "stego": run}))
"""


def _project(root: Path) -> Path:
    root.mkdir()
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "--quiet"], cwd=root, check=True)
    (root / "dvc.yaml").write_text("stages:\n  touch:\n    cmd: echo done > out.txt\n    outs:\n      - out.txt\n")
    for name, text in {"scores": json.dumps(SCORES), "report": "<!DOCTYPE html><title>r</title>"}.items():
        (root / PATHS[name]).parent.mkdir(parents=True, exist_ok=True)
        (root / PATHS[name]).write_text(text)
    trace = {"stage": "knn", "started": "2026-12-05T10:00:00+00:00", "wall_s": 2.5, "cpu_s": 1.0, "device": "cpu"}
    (root / PATHS["trace"]).mkdir(parents=True)
    (root / PATHS["trace"] / "knn.json").write_text(json.dumps(trace))
    return root


def _artifacts(api_url: str, key: str) -> list[dict]:
    body = json.dumps({"artifacts": {"key": {"any_": [key]}}}).encode()
    request = urllib.request.Request(f"{api_url}/artifacts/filter", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def test_stage_and_run_artifacts_reach_the_server(tmp_path: Path, prefect_server: PrefectServer) -> None:
    project = _project(tmp_path / "project")
    env = {**ISOLATION, **SUBPROCESS_ENV, "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
           "PREFECT_API_URL": prefect_server.api_url, "PYTHONPATH": str(REPO), "HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", SCRIPT], cwd=project, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"the flows failed:\n{result.stderr[-3000:]}"
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["stego"]["ran"] == ["touch"], f"the stego flow ran {out['stego']}"
    assert out["stego"]["artifacts"] == ["stego-scores", "stego-report", "stego-trace"], out["stego"]

    trace = json.loads((project / "trace" / "count_items.json").read_text())
    assert trace["counts"] == {"images": 7} and trace["stage"] == "count_items", f"trace {trace}"

    (summary,) = _artifacts(prefect_server.api_url, "count-items-summary")
    assert summary["type"] == "markdown" and summary["flow_run_id"] == out["stage_flow_run"], summary
    for row in ("| images | 7 |", "| k | 3 |", "| source | a test |"):  # every number the stage returned
        assert row in summary["data"], f"no {row!r} in {summary['data']}"
    assert f"| wall (s) | {trace['wall_s']:g} |" in summary["data"], "the markdown shows the trace's wall time"

    (progress,) = _artifacts(prefect_server.api_url, artifact_key("count items", "progress"))
    assert progress["type"] == "progress" and float(progress["data"]) == 100.0, progress
    assert progress["flow_run_id"] == out["stage_flow_run"], "the progress belongs to the stage's flow run"

    (table,) = _artifacts(prefect_server.api_url, "stego-scores")
    rows = json.loads(table["data"]) if isinstance(table["data"], str) else table["data"]
    assert rows == scores_table(SCORES), f"scores table {rows}"
    assert [row["mIoU"] for row in rows] == [33.25, 80.5], "mIoU of cluster and k-means, as scores.json has them"

    (link,) = _artifacts(prefect_server.api_url, "stego-report")
    assert (project / PATHS["report"]).resolve().as_uri() in link["data"], f"report link {link['data']}"

    (costs,) = _artifacts(prefect_server.api_url, "stego-trace")
    cost_rows = json.loads(costs["data"]) if isinstance(costs["data"], str) else costs["data"]
    assert [(r["stage"], r["wall (s)"]) for r in cost_rows] == [("knn", 2.5)], f"stage costs {cost_rows}"
