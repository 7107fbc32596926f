"""`flows/stage_flow.py`: one Prefect flow per stage, typed like its stage function.

In-process, without a Prefect server (Prefect's task decorator and the artifact calls are
replaced by recorders): a stage's flow has its function's name and signature plus a last
keyword `trace`; calling it runs the function once, as a task of the stage's name with no
cache and no retries, with the arguments given; `traced_stage` writes the trace (the counts
of the summary, completed or failed), hands every progress count to the progress publisher
while the stage runs, and publishes the summary with the trace it wrote, only when the stage
did not fail. The same flow against a real server is tested in tests/flows/test_artifacts.py.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prefect import Flow
from prefect.cache_policies import NONE

from flows import stage_flow as module
from flows.stage_flow import stage_flow, traced_stage, with_trace_parameter
from stego_tasks.paths import PARAMS_FILE
from stego_tasks.runtime.progress import Progress

CALLS: list[dict[str, Any]] = []


def count_items(params_path: str = PARAMS_FILE, n: int = 3, label: str | None = None) -> dict[str, Any]:
    """A made-up stage that counts `n` items."""
    CALLS.append({"params_path": params_path, "n": n, "label": label})
    with Progress(n, "count items") as progress:
        for _ in range(n):
            progress.update()
    return {"images": n, "label": label}


class Recorder:
    """Stands in for Prefect: records task options, progress counts and published summaries."""

    def __init__(self) -> None:
        self.task_options: list[dict[str, Any]] = []
        self.progress: list[tuple[str, int, int]] = []
        self.published: list[tuple[str, Any, dict[str, Any]]] = []

    def task(self, **options: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        self.task_options.append(options)
        return lambda function: function

    def publisher(self) -> Callable[[str, int, int], None]:
        return lambda desc, count, total: self.progress.append((desc, count, total))

    def publish(self, stage: str, summary: Any, record: dict[str, Any]) -> None:
        self.published.append((stage, summary, record))


@pytest.fixture
def prefect(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    """The stage flow module with Prefect's task decorator and artifacts replaced by a `Recorder`."""
    recorder = Recorder()
    monkeypatch.setattr(module, "task", recorder.task)
    monkeypatch.setattr(module, "ProgressPublisher", recorder.publisher)
    monkeypatch.setattr(module, "publish_stage", recorder.publish)
    CALLS.clear()
    return recorder


def test_with_trace_parameter_appends_a_keyword_trace_to_the_signature() -> None:
    def wrapper(*args: Any, **kwargs: Any) -> None:
        pass

    with_trace_parameter(count_items, wrapper)
    parameters = list(inspect.signature(wrapper).parameters.values())
    assert parameters[:-1] == list(inspect.signature(count_items).parameters.values())
    trace = parameters[-1]
    assert (trace.name, trace.kind, trace.default, trace.annotation) == (
        "trace", inspect.Parameter.KEYWORD_ONLY, None, "str | None")


def test_the_flow_is_named_and_typed_as_its_stage_function() -> None:
    flow = stage_flow(count_items)
    assert isinstance(flow, Flow) and flow.name == "count_items"
    assert list(inspect.signature(flow.fn).parameters) == ["params_path", "n", "label", "trace"]
    properties = flow.parameters.model_dump()["properties"]
    assert properties["n"]["type"] == "integer" and properties["n"]["default"] == 3, properties["n"]


def test_calling_the_flow_runs_the_function_once_as_an_uncached_task_without_retries(
    prefect: Recorder, tmp_path: Path
) -> None:
    trace = tmp_path / "trace" / "count_items.json"
    summary = stage_flow(count_items).fn("p.yaml", 4, label="x", trace=str(trace))
    assert summary == {"images": 4, "label": "x"}
    assert CALLS == [{"params_path": "p.yaml", "n": 4, "label": "x"}], "the function got the flow's arguments"
    (options,) = prefect.task_options
    assert options["name"] == "count_items" and options["cache_policy"] == NONE and not options.get("retries")
    record = json.loads(trace.read_text())
    assert (record["stage"], record["status"], record["counts"]) == ("count_items", "completed", {"images": 4})
    assert prefect.published == [("count_items", summary, record)], "the summary is published with its trace"
    assert [count for desc, count, total in prefect.progress if desc == "count items"][-1] == 4


def test_traced_stage_without_a_trace_file_measures_and_publishes_only(prefect: Recorder, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert traced_stage("knn", lambda: {"images": 2}, None) == {"images": 2}
    assert list(tmp_path.iterdir()) == [], "no file is written"
    ((stage, summary, record),) = prefect.published
    assert (stage, summary, record["counts"], record["status"]) == ("knn", {"images": 2}, {"images": 2}, "completed")


def test_a_failing_stage_writes_a_failed_trace_and_publishes_nothing(prefect: Recorder, tmp_path: Path) -> None:
    def fail() -> dict[str, Any]:
        raise ValueError("bad value")

    trace = tmp_path / "knn.json"
    with pytest.raises(ValueError, match="bad value"):
        traced_stage("knn", fail, str(trace))
    assert json.loads(trace.read_text())["status"] == "failed"
    assert prefect.published == []


def test_progress_outside_a_stage_reaches_no_publisher(prefect: Recorder) -> None:
    traced_stage("knn", lambda: {"images": 1}, None)
    with Progress(2, "after the stage") as progress:
        progress.update(2)
    assert all(desc != "after the stage" for desc, _, _ in prefect.progress), "the listener ends with the stage"
