"""`flows/extract.py`: the extract stage's Prefect flow and its bridge to a Dask cluster.

In-process, without a Prefect server: the flow runs the whole stage as one task when
`dask.address` is unset, and with an address it connects before the store is touched, so
an address where no scheduler answers is the one-sentence `UnreachableError` and leaves no
store behind; the chunk runner submits one chunk task per job and hands each job back with
its own result, whatever order they finish in; only the chunk task (which writes nothing)
retries. Against a real `dask scheduler`, two workers and a Prefect server: one task run per
chunk, and the same store as the local run.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import dask
import pytest
from prefect.cache_policies import NONE

from flows import extract as extract_module
from flows import stage_flow
from flows.extract import (
    chunks_as_prefect_tasks,
    dask_task_runner,
    extract_chunk_task,
    extract_flow,
    extract_task,
)
from flows.prefect_server import free_port
from stego_tasks.data.embed import ChunkJob
from stego_tasks.errors import UnreachableError
from tests import test_extract as stage_tests
from tests.test_extract import BACKBONE, _arrays, _assert_same

# The module-scoped corpus, manifest and local store of tests/test_extract.py (built once here too).
base = stage_tests.base


def dead_address() -> str:
    """A loopback address where nothing listens."""
    return f"tcp://127.0.0.1:{free_port()}"


@pytest.fixture
def quick_connect() -> Any:
    """Dask gives up connecting after 1 s (30 s by default)."""
    # Loaded first: its defaults join dask's config on import, and a `set` they were imported
    # under would drop them all when it ends.
    import distributed  # noqa: F401

    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        yield


@pytest.fixture
def no_prefect_api(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Any]]:
    """Stage runs publish nothing (no Prefect API here); returns the (stage, summary) pairs they would publish."""

    class Silent:
        def __call__(self, desc: str, count: int, total: int) -> None:
            pass

    published: list[tuple[str, Any]] = []
    monkeypatch.setattr(stage_flow, "ProgressPublisher", Silent)
    monkeypatch.setattr(stage_flow, "publish_stage", lambda stage, summary, record: published.append((stage, summary)))
    return published


def job(split: str, index: int) -> ChunkJob:
    """A chunk job (never run: the runners here are fakes)."""
    return ChunkJob(split=split, index=index, image_paths=(f"{split}-{index}.png",), label_paths=(None,),
                    backbone_name="vit_tiny_patch16_224", backbone_weights="random", resolution=32, five_crop=False,
                    crop_ratio=0.5, flip=False, ignore_index=255, device="cpu")


@dataclass(eq=False)
class FakeFuture:
    """What `as_completed` and the runner need of a Prefect future: finished, an id, a result."""

    task_run_id: str
    value: dict
    _final_state: bool = True

    def result(self) -> dict:
        return self.value


class FakeTaskRunner:
    """A task runner that runs nothing and records what was submitted."""

    def __init__(self) -> None:
        self.submitted: list[tuple[Any, dict]] = []

    def submit(self, task: Any, parameters: dict) -> FakeFuture:
        self.submitted.append((task, parameters))
        chunk = parameters["job"]
        return FakeFuture(f"run-{len(self.submitted)}", {"split": chunk.split, "index": chunk.index})


def params_file(tmp_path: Path, address: str | None) -> Path:
    """A params file whose `dask.address` is `address`."""
    path = tmp_path / "params.yaml"
    path.write_text(f"dask:\n  address: {json.dumps(address)}\n")
    return path


def test_the_chunk_runner_submits_one_chunk_task_per_job_and_pairs_each_result_with_its_job() -> None:
    runner = FakeTaskRunner()
    jobs = [job("train", 0), job("train", 1), job("val", 0)]
    results = list(chunks_as_prefect_tasks(runner)(jobs))
    assert [task for task, _ in runner.submitted] == [extract_chunk_task] * 3
    assert [parameters["job"] for _, parameters in runner.submitted] == jobs
    assert sorted(((j.split, j.index) for j, _ in results)) == [("train", 0), ("train", 1), ("val", 0)]
    for chunk, result in results:
        assert result == {"split": chunk.split, "index": chunk.index}, f"{chunk.split}-{chunk.index} got {result}"


def test_only_the_chunk_task_retries_and_neither_is_cached() -> None:
    assert (extract_chunk_task.retries, extract_chunk_task.persist_result) == (2, False)
    assert extract_task.retries == 0, "the whole stage completes its store in place: never repeated by Prefect"
    assert extract_chunk_task.cache_policy == NONE and extract_task.cache_policy == NONE
    assert extract_chunk_task.task_run_name.format(job=job("val", 4)) == "extract-val-4"


def test_a_dead_scheduler_is_one_sentence_when_the_task_runner_starts(quick_connect: None) -> None:
    address = dead_address()
    started = time.monotonic()
    with pytest.raises(UnreachableError) as error, dask_task_runner(address):
        pass
    message = str(error.value)
    assert message.startswith(f"no Dask scheduler answers at {address} (") and message.endswith("to run locally."), message
    assert "\n" not in message and time.monotonic() - started < 20


def test_the_flow_with_a_dead_scheduler_fails_before_the_store_is_touched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, quick_connect: None, no_prefect_api: list
) -> None:
    calls: list[dict] = []
    monkeypatch.setattr(extract_module.stage_functions, "extract", lambda **kwargs: calls.append(kwargs) or {})
    features = tmp_path / "features.zarr"
    with pytest.raises(UnreachableError):
        extract_flow.fn(str(params_file(tmp_path, dead_address())), "m.parquet", str(features))
    assert calls == [] and not features.exists() and no_prefect_api == [], "nothing ran, nothing was written"


def test_the_flow_without_an_address_runs_the_stage_as_one_traced_task(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_prefect_api: list
) -> None:
    calls: list[dict] = []

    def whole_stage(**kwargs: str) -> dict:
        calls.append(kwargs)
        return {"images": 9}

    monkeypatch.setattr(extract_module, "extract_task", whole_stage)
    params, trace = params_file(tmp_path, None), tmp_path / "trace" / "extract.json"
    summary = extract_flow.fn(str(params), "m.parquet", "f.zarr", trace=str(trace))
    assert summary == {"images": 9}
    assert calls == [{"params_path": str(params), "manifest": "m.parquet", "features": "f.zarr"}]
    record = json.loads(trace.read_text())
    assert record["stage"] == "extract" and record["counts"] == {"images": 9}, record
    assert no_prefect_api == [("extract", {"images": 9})], "the summary is published as the stage's artifact"


def test_the_flow_with_an_address_hands_the_stage_a_runner_on_that_cluster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_prefect_api: list
) -> None:
    entered: list[str] = []
    calls: list[dict] = []

    class Runner(FakeTaskRunner):
        def __enter__(self) -> FakeTaskRunner:
            return self

        def __exit__(self, *args: object) -> None:
            pass

    def fake_runner(address: str) -> Runner:
        entered.append(address)
        return Runner()

    def stage(**kwargs: Any) -> dict:
        calls.append(kwargs)
        return {"chunks": len(list(kwargs["runner"]([job("train", 0), replace(job("train", 0), index=1)])))}

    monkeypatch.setattr(extract_module, "dask_task_runner", fake_runner)
    monkeypatch.setattr(extract_module.stage_functions, "extract", stage)
    assert extract_flow.fn(str(params_file(tmp_path, "tcp://10.0.0.1:8786")), "m.parquet", "f.zarr") == {"chunks": 2}
    assert entered == ["tcp://10.0.0.1:8786"]
    assert [{k: v for k, v in call.items() if k != "runner"} for call in calls] == [
        {"params_path": str(tmp_path / "params.yaml"), "manifest": "m.parquet", "features": "f.zarr"}
    ]


def _task_run_names(api_url: str) -> list[tuple[str, str]]:
    import json
    import urllib.request

    body = json.dumps({"task_runs": {"name": {"like_": "extract-"}}, "limit": 200}).encode()
    request = urllib.request.Request(f"{api_url}/task_runs/filter", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return [(run["name"], run["state_type"]) for run in json.loads(response.read())]


def test_prefect_flow_submits_chunks_through_dask_task_runner(base, dask_cli_cluster, project_env, tmp_path):
    """`stego extract` (its Prefect flow) with `dask.address`: one `extract-<split>-<i>` task run
    per chunk on the cluster via prefect-dask, and the same store as the local run."""
    import subprocess

    import yaml

    from tests.conftest import VENV_BIN, run

    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump({
        "corpus": {"root": str(base.root), "n_classes": 5, "ignore_index": 255, "demo": True},
        "backbone": {"name": BACKBONE.name, "weights": "random"},
        "extract": {"resolution": 32, "val_resolution": 48, "batch_size": 4, "device": "cpu"},
        "dask": {"address": dask_cli_cluster},
    }))
    store = tmp_path / "features.zarr"
    before = {name for name, _ in _task_run_names(project_env["PREFECT_API_URL"])}
    result = run(
        [str(VENV_BIN / "stego"), "extract", "--params", str(params_file), "--manifest", str(base.manifest),
         "--features", str(store)],
        tmp_path, project_env, timeout=300,
    )
    assert isinstance(result, subprocess.CompletedProcess)
    deadline = time.monotonic() + 30
    while True:  # the server records task runs from their events, a moment after they end
        runs = [(name, state) for name, state in _task_run_names(project_env["PREFECT_API_URL"]) if name not in before]
        if len(runs) >= 3 and all(state == "COMPLETED" for _, state in runs) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    expected = {"extract-train-0", "extract-train-1", "extract-val-0"}
    assert {name for name, _ in runs} == expected, f"task runs of this flow: {runs}"
    assert all(state == "COMPLETED" for _, state in runs), f"not every chunk's task run completed: {runs}"
    want, got = _arrays(base.store), _arrays(store)
    assert set(got) == set(want), f"arrays {sorted(got)} vs the local run's {sorted(want)}"
    for name in want:
        _assert_same(got[name], want[name], f"{name} differs between the Prefect + Dask run and the local run")
