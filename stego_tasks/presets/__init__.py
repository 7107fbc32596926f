"""Published STEGO settings as data: one YAML params file per dataset and backbone.

Each `<name>.yaml` here is a complete `params.yaml` but for the corpus location, with a
comment on every value saying where in the reference code or paper it comes from. A run
gets a preset by writing it out as its params file (`stego adapt` does so for the
benchmarks), so DVC sees every effective value as an ordinary param and a changed value
re-runs exactly the stages that read it; the top-level `preset` key only names the source
and is recorded in the metrics and the report.
"""

from __future__ import annotations

import re
from importlib import resources
from typing import Any

import yaml

from stego_tasks.config import (
    DemoDataParams,
    IngestParams,
    ReportParams,
    params_to_dict,
    preset_names,
)
from stego_tasks.errors import InvalidInputError

DEFAULT_PRESET = "custom"
DEMO_BLOCK = """demo:
  # Overrides for the bundled demo corpus only (they apply while corpus.demo is true).
  extract: {}
  train: {}
"""
# Blocks of stages outside the published protocol (no reference value to comment); dvc.yaml
# declares their keys as params, so a complete params file holds them, at their defaults.
PIPELINE_BLOCKS: dict[str, type] = {"demo_data": DemoDataParams, "ingest": IngestParams, "report": ReportParams}


def list_presets() -> list[str]:
    """Names of the bundled presets, sorted (e.g. "cocostuff27_vits8", "custom")."""
    return preset_names()


def preset_text(name: str) -> str:
    """The preset file's text, comments included.

    Raises:
        ValueError: unknown preset name.
    """
    if name not in list_presets():
        raise InvalidInputError(f"unknown preset {name!r}; use one of {list_presets()}.")
    return resources.files(__name__).joinpath(f"{name}.yaml").read_text(encoding="utf-8")


def load_preset(name: str) -> dict[str, Any]:
    """The preset as a params mapping (blocks of keys to values)."""
    return yaml.safe_load(preset_text(name))


def params_text(name: str, corpus: dict[str, Any], header: str = "") -> str:
    """A complete params.yaml for preset `name` with `corpus` as its corpus block.

    The preset's own comments are kept; its `corpus` block (class count, ignore index) is
    merged under `corpus`, whose values win.

    Args:
        name: a preset from `list_presets()`.
        corpus: the corpus block (root, n_classes, ignore_index, class_names, demo).
        header: comment lines to put first (without the leading "# ").

    Returns:
        YAML text that `stego_tasks.config.load_params` reads.
    """
    text = preset_text(name)
    merged = {**(load_preset(name).get("corpus") or {}), **corpus}
    block = yaml.safe_dump({"corpus": merged}, sort_keys=False, default_flow_style=None).rstrip("\n")
    # The corpus block runs from its key to the next blank line.
    pattern = re.compile(r"^corpus:\n(?:[ #].*\n)*", re.MULTILINE)
    if pattern.search(text):
        text = pattern.sub(block + "\n", text, count=1)
    else:
        text = re.sub(r"^(seed: .*\n)", lambda m: m.group(1) + "\n" + block + "\n", text, count=1, flags=re.MULTILINE)
    lines = "".join(f"# {line}\n" for line in header.splitlines())
    if not re.search(r"^demo:", text, re.MULTILINE):
        # dvc.yaml declares demo.extract / demo.train as params, so the keys must exist.
        text = text.rstrip("\n") + "\n\n" + DEMO_BLOCK
    for block, cls in PIPELINE_BLOCKS.items():
        if not re.search(rf"^{block}:", text, re.MULTILINE):
            values = yaml.safe_dump({block: params_to_dict(cls())}, sort_keys=False).rstrip("\n")
            text = text.rstrip("\n") + "\n\n" + values + "\n"
    return lines + text
