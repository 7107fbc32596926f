"""Prefect flow `ingest`: the DVC stage `ingest` as a flow run, wrapping `stego_tasks`."""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.cache_policies import NONE

from flows import stage_functions


@task(name="ingest", cache_policy=NONE)
def ingest_task(**kwargs: Any) -> dict[str, Any]:
    """Run the library's ingest stage (DVC, not Prefect, decides whether it is stale)."""
    return stage_functions.ingest(**kwargs)


@flow(name="ingest", log_prints=True)
def ingest_flow(**kwargs: Any) -> dict[str, Any]:
    """The ingest stage as one flow run; keyword arguments as `flows.stage_functions.ingest`."""
    return ingest_task(**kwargs)
