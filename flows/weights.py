"""Prefect flow `weights`: the DVC stage `weights` as a flow run (`flows.stage_flow`), wrapping `stego_tasks`."""

from __future__ import annotations

from flows import stage_functions
from flows.stage_flow import stage_flow

weights_flow = stage_flow(stage_functions.weights)
