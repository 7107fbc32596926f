"""Prefect flow `extract`: the DVC stage `extract` as a flow run, wrapping `stego_tasks`."""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.cache_policies import NONE

from flows import stage_functions


@task(name="extract", cache_policy=NONE)
def extract_task(**kwargs: Any) -> dict[str, Any]:
    """Run the library's extract stage (DVC, not Prefect, decides whether it is stale)."""
    return stage_functions.extract(**kwargs)


@flow(name="extract", log_prints=True)
def extract_flow(**kwargs: Any) -> dict[str, Any]:
    """The extract stage as one flow run; keyword arguments as `flows.stage_functions.extract`."""
    return extract_task(**kwargs)
