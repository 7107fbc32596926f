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
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from prefect import Flow, flow, task
from prefect.cache_policies import NONE


def stage_flow(function: Callable[..., dict[str, Any]]) -> Flow:
    """The Prefect flow of the stage `function.__name__`, with `function`'s signature.

    Args:
        function: a stage function of `flows.stage_functions`.

    Returns:
        The flow; calling it runs `function` as the flow run's single task run.
    """
    name = function.__name__

    @task(name=name, cache_policy=NONE)
    @functools.wraps(function)
    def stage_task(*args: Any, **kwargs: Any) -> dict[str, Any]:
        # DVC, not Prefect, decides whether the stage is stale: no cache.
        return function(*args, **kwargs)

    @flow(name=name, log_prints=True)
    @functools.wraps(function)
    def stage_run(*args: Any, **kwargs: Any) -> dict[str, Any]:
        return stage_task(*args, **kwargs)

    return stage_run
