"""Contract between dvc.yaml's params and the params blocks: a stage that lists its keys one by
one (extract, train) lists every key of its block except those declared to change nothing it
writes, so a key added to the block later cannot silently leave the stage up to date.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from stego_tasks import extract, train
from stego_tasks.config import ExtractParams, TrainParams

REPO = Path(__file__).resolve().parents[1]
BLOCKS = {"extract": (ExtractParams, extract.NO_EFFECT_KEYS), "train": (TrainParams, train.NO_EFFECT_KEYS)}


def _declared(stage: str) -> list[str]:
    return [p for p in yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"][stage]["params"] if isinstance(p, str)]


@pytest.mark.parametrize("stage", sorted(BLOCKS))
def test_the_stage_declares_every_key_of_its_block_but_the_no_effect_ones(stage: str) -> None:
    cls, free = BLOCKS[stage]
    declared = _declared(stage)
    if stage in declared:
        pytest.fail(f"dvc.yaml declares the whole {stage} block, so changing {sorted(free)} would re-run the stage")
    fields = {f.name for f in dataclasses.fields(cls)}
    assert free <= fields, f"no-effect keys {sorted(free - fields)} are not keys of the {stage} block"
    listed = {p.split(".", 1)[1] for p in declared if p.startswith(f"{stage}.")}
    missing, extra = sorted(fields - free - listed), sorted(listed - fields)
    assert not missing, f"dvc.yaml stage {stage} does not declare {[f'{stage}.{k}' for k in missing]}: add them to its params"
    assert not extra, f"dvc.yaml stage {stage} declares keys its block does not have: {extra}"
    assert not listed & free, f"dvc.yaml stage {stage} declares no-effect keys {sorted(listed & free)}"


def test_no_effect_train_keys_are_also_free_on_resume() -> None:
    assert train.NO_EFFECT_KEYS <= train.RESUME_FREE_KEYS, "a key that changes nothing must not refuse a resume"
