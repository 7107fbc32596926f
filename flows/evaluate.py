"""Prefect flow `evaluate`: the DVC stage `evaluate` as a flow run, wrapping `stego_tasks`."""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.cache_policies import NONE

from flows import stage_functions


@task(name="evaluate", cache_policy=NONE)
def evaluate_task(**kwargs: Any) -> dict[str, Any]:
    """Run the library's evaluate stage (DVC, not Prefect, decides whether it is stale)."""
    return stage_functions.evaluate(**kwargs)


@flow(name="evaluate", log_prints=True)
def evaluate_flow(**kwargs: Any) -> dict[str, Any]:
    """The evaluate stage as one flow run; keyword arguments as `flows.stage_functions.evaluate`."""
    return evaluate_task(**kwargs)
