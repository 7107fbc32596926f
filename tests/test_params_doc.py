"""The params JSON schema: generated, committed, and agreeing with the params loader on what
is valid (`stego params --explain` is tested in tests/flows/test_params_tool.py)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from flows.params_tool import generated_schema_text
from stego_tasks.config import params_from_dict
from stego_tasks.params_doc import SCHEMA_FILE, json_schema, yaml_comments
from tests.conftest import REPO

PARAMS = REPO / "params.yaml"


def _published() -> dict:
    """params.yaml with the demo's overrides off, so a block's own value is the one in effect."""
    values = yaml.safe_load(PARAMS.read_text())
    values["corpus"]["demo"] = False
    return values


def _validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(SCHEMA_FILE.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_the_committed_schema_is_the_generated_one() -> None:
    assert SCHEMA_FILE.read_text() == generated_schema_text(PARAMS), (
        f"{SCHEMA_FILE.name} differs from the typed params: run `stego params --schema` and commit it"
    )
    first = PARAMS.read_text().splitlines()[0]
    assert first == "# yaml-language-server: $schema=stego_tasks/params.schema.json", f"params.yaml starts with {first!r}"


@pytest.mark.parametrize("path", [PARAMS, *sorted((REPO / "stego_tasks" / "presets").glob("*.yaml"))], ids=lambda p: p.name)
def test_params_and_every_preset_validate(path: Path) -> None:
    errors = [e.message for e in _validator().iter_errors(yaml.safe_load(path.read_text()))]
    assert not errors, f"{path.name} fails its schema: {errors}"


BAD = {
    ("train", "steps"): 0,
    ("train", "dropout"): 1.5,
    ("corpus", "n_classes"): 0,
    ("extract", "compression"): "lz77",
    ("train", "weights"): [1.0, 2.0],
    ("extract", "five_crop"): "yes",
    ("train", "stepz"): 10,
    ("knn", "k"): 2.5,
}


@pytest.mark.parametrize("keys", list(BAD), ids=lambda k: ".".join(k))
def test_schema_and_loader_refuse_the_same_bad_value(keys: tuple[str, str]) -> None:
    values = _published()
    values[keys[0]][keys[1]] = BAD[keys]
    assert list(_validator().iter_errors(values)), f"the schema accepts {'.'.join(keys)} = {BAD[keys]!r}"
    with pytest.raises(ValueError):
        params_from_dict(copy.deepcopy(values))


def test_schema_and_loader_accept_the_same_good_change() -> None:
    values = _published()
    values["train"]["steps"], values["dask"]["address"], values["train"]["shifts"] = 10, "tcp://127.0.0.1:8786", "auto"
    assert not list(_validator().iter_errors(values))
    assert params_from_dict(copy.deepcopy(values)).train.steps == 10


def test_comments_are_read_per_dotted_key() -> None:
    text = "a: 1   # one\nblock:\n  # about the block\n  b: [1, 2]  # two\n  c: x\nd: 4\n"
    assert yaml_comments(text) == {"a": "one", "block": "about the block", "block.b": "two"}
    schema = json_schema(yaml_comments(PARAMS.read_text()))
    assert schema["properties"]["ingest"]["properties"]["min_size"]["minimum"] == 16
    assert schema["properties"]["train"]["properties"]["steps"]["default"] == 5000
