"""Prefect flow `train`: the DVC stage `train` as a flow run, wrapping `stego_tasks`."""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.cache_policies import NONE

from flows import stage_functions


@task(name="train", cache_policy=NONE)
def train_task(**kwargs: Any) -> dict[str, Any]:
    """Run the library's train stage (DVC, not Prefect, decides whether it is stale)."""
    return stage_functions.train(**kwargs)


@flow(name="train", log_prints=True)
def train_flow(**kwargs: Any) -> dict[str, Any]:
    """The train stage as one flow run; keyword arguments as `flows.stage_functions.train`."""
    return train_task(**kwargs)
