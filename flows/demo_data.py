"""Prefect flow `demo_data`: the DVC stage `demo_data` as a flow run (`flows.stage_flow`), wrapping `stego_tasks`."""

from __future__ import annotations

from flows import stage_functions
from flows.stage_flow import stage_flow

demo_data_flow = stage_flow(stage_functions.demo_data)
