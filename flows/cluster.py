"""Prefect flow `cluster`: the DVC stage `cluster` as a flow run, wrapping `stego_tasks`."""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.cache_policies import NONE

from flows import stage_functions


@task(name="cluster", cache_policy=NONE)
def cluster_task(**kwargs: Any) -> dict[str, Any]:
    """Run the library's cluster stage (DVC, not Prefect, decides whether it is stale)."""
    return stage_functions.cluster(**kwargs)


@flow(name="cluster", log_prints=True)
def cluster_flow(**kwargs: Any) -> dict[str, Any]:
    """The cluster stage as one flow run; keyword arguments as `flows.stage_functions.cluster`."""
    return cluster_task(**kwargs)
