"""One Prefect flow per pipeline stage, with the typed signature of its `flows.stage_functions` function.

`stage_flow(stage_functions.knn)` is the flow `knn`: one flow run holding one task run
`knn` that calls the stage function. The flow and the task take exactly the function's
parameters (`functools.wraps` hands Prefect its signature), so the Prefect UI and
`prefect deploy` show each stage's parameters with their types and defaults.

The whole-stage task has no retries: a stage is minutes to hours of work that writes its
outputs in place under an artifact lock (the features store is completed, a model folder
keeps its checkpoint), and its failures are a user's error or a bug, which a retry only
repeats. DVC, not Prefect, decides when a stage runs again; chunk tasks that are safe to
repeat (`flows/extract.py`) have retries of their own.

Every stage flow also takes `trace`, the JSON file its trace goes to (`traced_stage`:
`stego_tasks.runtime.trace`), and publishes its Prefect artifacts (`flows/artifacts.py`).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from prefect import Flow, flow, task
from prefect.cache_policies import NONE

from flows.artifacts import ProgressPublisher, publish_stage
from stego_tasks.runtime.progress import progress_listener
from stego_tasks.runtime.trace import StageTrace

TRACE_PARAMETER = inspect.Parameter("trace", inspect.Parameter.KEYWORD_ONLY, default=None, annotation="str | None")


def with_trace_parameter(function: Callable[..., Any], wrapper: Callable[..., Any]) -> None:
    """Give `wrapper` the signature of `function` plus a last keyword `trace: str | None = None`."""
    signature = inspect.signature(function)
    wrapper.__signature__ = signature.replace(parameters=[*signature.parameters.values(), TRACE_PARAMETER])


def traced_stage(stage: str, call: Callable[[], Any], trace: str | None) -> Any:
    """Run `call` (the stage) inside the current flow run, traced, and publish what it did.

    The trace is written to `trace` (when given) and published with the stage's summary as
    the markdown artifact `<stage>-summary`; each progress bar the stage counts with moves
    a progress artifact while it runs (`flows.artifacts`).

    Returns:
        What `call` returned.
    """
    with progress_listener(ProgressPublisher()), StageTrace(stage, trace) as tracer:
        summary = call()
        tracer.count(summary)
    publish_stage(stage, summary, tracer.record)
    return summary


def stage_flow(function: Callable[..., dict[str, Any]]) -> Flow:
    """The Prefect flow of the stage `function.__name__`, with `function`'s signature.

    Args:
        function: a stage function of `flows.stage_functions`.

    Returns:
        The flow; calling it runs `function` as the flow run's single task run, traced
        (`trace`: the JSON file to write the trace to; None measures and publishes only).
    """
    name = function.__name__

    @task(name=name, cache_policy=NONE)
    @functools.wraps(function)
    def stage_task(*args: Any, **kwargs: Any) -> dict[str, Any]:
        # DVC, not Prefect, decides whether the stage is stale: no cache.
        return function(*args, **kwargs)

    @functools.wraps(function)
    def stage_run(*args: Any, trace: str | None = None, **kwargs: Any) -> dict[str, Any]:
        return traced_stage(name, lambda: stage_task(*args, **kwargs), trace)

    with_trace_parameter(function, stage_run)
    return flow(name=name, log_prints=True)(stage_run)
