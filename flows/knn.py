"""Prefect flow `knn`: the DVC stage `knn` as a flow run, wrapping `stego_tasks`."""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.cache_policies import NONE

from flows import stage_functions


@task(name="knn", cache_policy=NONE)
def knn_task(**kwargs: Any) -> dict[str, Any]:
    """Run the library's knn stage (DVC, not Prefect, decides whether it is stale)."""
    return stage_functions.knn(**kwargs)


@flow(name="knn", log_prints=True)
def knn_flow(**kwargs: Any) -> dict[str, Any]:
    """The knn stage as one flow run; keyword arguments as `flows.stage_functions.knn`."""
    return knn_task(**kwargs)
