"""Prefect flow `crf`: the DVC stage `crf` as a flow run, wrapping `stego_tasks`."""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.cache_policies import NONE

from flows import stage_functions


@task(name="crf", cache_policy=NONE)
def crf_task(**kwargs: Any) -> dict[str, Any]:
    """Run the library's crf stage (DVC, not Prefect, decides whether it is stale)."""
    return stage_functions.crf(**kwargs)


@flow(name="crf", log_prints=True)
def crf_flow(**kwargs: Any) -> dict[str, Any]:
    """The crf stage as one flow run; keyword arguments as `flows.stage_functions.crf`."""
    return crf_task(**kwargs)
