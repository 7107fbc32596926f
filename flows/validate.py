"""Prefect flow `validate`: the DVC stage `validate` as a flow run, wrapping `stego_tasks`."""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.cache_policies import NONE

from flows import stage_functions


@task(name="validate", cache_policy=NONE)
def validate_task(**kwargs: Any) -> dict[str, Any]:
    """Run the library's validate stage (DVC, not Prefect, decides whether it is stale)."""
    return stage_functions.validate(**kwargs)


@flow(name="validate", log_prints=True)
def validate_flow(**kwargs: Any) -> dict[str, Any]:
    """The validate stage as one flow run; keyword arguments as `flows.stage_functions.validate`."""
    return validate_task(**kwargs)
