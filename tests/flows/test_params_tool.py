"""`flows/params_tool.py`: `stego params` explains a key and writes or checks the params schema.

`--explain KEY` is checked against sources read independently: the stages that declare the
key in a dvc.yaml (the real one and a made-up one with blocks, single keys, keys from another
file and a name that only starts like the block), the default in
`stego_tasks/presets/defaults.yaml`, the value and comment in a params file, the demo's
override, and the presets that set it; a block or an unknown key is refused in one sentence.
`--schema` writes the generated schema and `--check-schema` says whether a file is it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import yaml

from flows.cli import main
from flows.params_tool import (
    add_params_arguments,
    explain,
    generated_schema_text,
    params_from_args,
    stages_reading,
)
from stego_tasks.config import Params, TrainParams
from stego_tasks.errors import InvalidInputError
from stego_tasks.params_doc import yaml_comments
from tests.conftest import REPO

PARAMS = REPO / "params.yaml"
DEFAULTS = yaml.safe_load((REPO / "stego_tasks" / "presets" / "defaults.yaml").read_text())
MADE_UP_DVC = {
    "stages": {
        "whole": {"cmd": "x", "params": ["train"]},
        "single": {"cmd": "x", "params": ["train.steps", "corpus.root"]},
        "other_file": {"cmd": "x", "params": [{"other.yaml": ["train.steps"]}]},
        "none": {"cmd": "x"},
        "lookalike": {"cmd": "x", "params": ["trainer", "train.stepsize"]},
    }
}


def parse(*args: str) -> argparse.Namespace:
    """`stego params` arguments, parsed by the parser `add_params_arguments` builds."""
    parser = argparse.ArgumentParser(prog="stego params")
    add_params_arguments(parser)
    return parser.parse_args(list(args))


@pytest.fixture
def made_up_dvc(tmp_path: Path) -> Path:
    """A dvc.yaml whose stages declare params in every form DVC allows."""
    path = tmp_path / "dvc.yaml"
    path.write_text(yaml.safe_dump(MADE_UP_DVC, sort_keys=False))
    return path


def test_explain_names_type_stages_and_published_source() -> None:
    text = explain("train.n_codes", PARAMS, REPO / "dvc.yaml")
    stages = [name for name, stage in yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"].items()
              if "train.n_codes" in stage.get("params", []) or "train" in stage.get("params", [])]
    assert f"  read by:  {', '.join(stages)}" in text, text
    assert "a positive integer" in text and "default:  70" in text, text
    published = yaml_comments((REPO / "stego_tasks" / "presets" / "defaults.yaml").read_text())["train.n_codes"]
    assert f"defaults: 70   # {published}" in text, text
    overridden = yaml_comments((REPO / "stego_tasks" / "presets" / "cityscapes27_vitb8.yaml").read_text())["train.n_codes"]
    assert f"cityscapes27_vitb8: 100   # {overridden}" in text and "custom:" not in text, text
    assert "read by:  crf, evaluate" not in explain("crf.iterations", PARAMS, REPO / "dvc.yaml")
    assert "read by:  crf" in explain("crf.iterations", PARAMS, REPO / "dvc.yaml")


def test_an_unknown_key_is_one_sentence(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["params", "--explain", "train.stepz"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("stego params: error: params has no key 'train.stepz'") and "train.steps" in error, error
    assert len(error.splitlines()) == 1


@pytest.mark.parametrize(("key", "expected"), [
    ("train.steps", ["whole", "single", "other_file"]),
    ("train", ["whole", "single", "other_file", "lookalike"]),
    ("corpus.root", ["single"]),
    ("corpus.n_classes", []),
])
def test_stages_reading_a_key_are_those_declaring_it_its_block_or_a_key_inside_it(
    made_up_dvc: Path, key: str, expected: list[str]
) -> None:
    assert stages_reading(key, made_up_dvc) == expected


def test_stages_reading_of_an_empty_dvc_yaml_is_none(tmp_path: Path) -> None:
    (tmp_path / "dvc.yaml").write_text("")
    assert stages_reading("train.steps", tmp_path / "dvc.yaml") == []


def test_explain_shows_the_params_files_value_comment_and_demo_override(tmp_path: Path, made_up_dvc: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("train:\n  steps: 7   # my own steps\ndemo:\n  train:\n    steps: 3\n")
    lines = explain("train.steps", params, made_up_dvc).splitlines()
    assert lines[0] == "train.steps"
    assert lines[2] == f"  default:  {DEFAULTS['train']['steps']} (stego_tasks/presets/defaults.yaml)"
    assert lines[3] == f"  value:    7 in {params}; 3 while corpus.demo is true (demo.train.steps)"
    assert lines[4] == "  help:     my own steps"
    assert lines[5] == "  read by:  whole, single, other_file"


def test_explain_without_params_file_or_dvc_yaml_says_not_set_and_no_stage(tmp_path: Path) -> None:
    text = explain("train.lr", tmp_path / "missing.yaml", tmp_path / "missing-dvc.yaml")
    assert f"  value:    not set in {tmp_path / 'missing.yaml'}" in text, text
    assert "  read by:  no DVC stage declares it" in text, text
    # With no comment of its own, the help is the first line of the block's docstring.
    assert f"  help:     {TrainParams.__doc__.strip().splitlines()[0]}" in text, text
    assert f"    defaults: {DEFAULTS['train']['lr']}" in text, text


def test_explain_a_top_level_key() -> None:
    text = explain("seed", PARAMS, REPO / "dvc.yaml")
    assert f"  default:  {DEFAULTS['seed']} " in text and "  value:    0 in" in text, text
    stages = [name for name, stage in yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"].items()
              if "seed" in stage.get("params", [])]
    assert f"  read by:  {', '.join(stages)}" in text, text


def test_explain_refuses_a_block_in_one_sentence() -> None:
    with pytest.raises(InvalidInputError) as error:
        explain("train", PARAMS, REPO / "dvc.yaml")
    assert str(error.value) == "train is a block; explain one of its keys, e.g. train.n_codes."


def test_explain_refuses_an_unknown_top_level_key_listing_the_top_level_keys() -> None:
    with pytest.raises(InvalidInputError) as error:
        explain("sed", PARAMS, REPO / "dvc.yaml")
    message = str(error.value)
    assert message.startswith("params has no key 'sed'; the keys there are: ") and message.endswith("."), message
    listed = message.split(": ", 1)[1].rstrip(".").split(", ")
    assert listed == list(Params.__dataclass_fields__), listed


def test_schema_writes_the_generated_schema_and_check_schema_compares_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "schema.json"
    assert params_from_args(parse("--check-schema", "--out", str(out))) == 1, "a missing schema is stale"
    assert params_from_args(parse("--schema", "--params", str(PARAMS), "--out", str(out))) == 0
    assert out.read_text(encoding="utf-8") == generated_schema_text(PARAMS)
    assert params_from_args(parse("--check-schema", "--params", str(PARAMS), "--out", str(out))) == 0
    out.write_text(out.read_text(encoding="utf-8") + " ")
    assert params_from_args(parse("--check-schema", "--params", str(PARAMS), "--out", str(out))) == 1
    printed = capsys.readouterr().out.splitlines()
    assert printed == [f"{out} is stale: run `stego params --schema`", f"wrote {out}", f"{out} is up to date",
                       f"{out} is stale: run `stego params --schema`"], printed


@pytest.mark.parametrize("args", [[], ["--schema", "--check-schema"], ["--explain"]], ids=["no-action", "two", "no-key"])
def test_params_needs_exactly_one_action(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse(*args)
    assert exit_info.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_explain_through_the_command_prints_the_explanation(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["params", "--explain", "knn.k", "--params", str(PARAMS), "--dvc-yaml", str(REPO / "dvc.yaml")]) == 0
    assert capsys.readouterr().out == explain("knn.k", PARAMS, REPO / "dvc.yaml") + "\n"


@pytest.mark.parametrize(("name", "content", "message"), [
    ("params.yaml", b"train: [\n", r"params\.yaml: line 2, column 1: .*; fix the YAML there"),
    ("params.yaml", b"\xa2\x00garbage", r"params\.yaml is not UTF-8 text"),
    ("dvc.yaml", b"stages: [\n", r"dvc\.yaml: line 2, column 1: .*; fix the YAML there"),
    ("dvc.yaml", b"- a\n", r"dvc\.yaml does not hold DVC stages"),
    ("dvc.yaml", b"stages:\n  train: 5\n", r"dvc\.yaml does not hold DVC stages"),
])
def test_explain_refuses_a_damaged_params_or_dvc_yaml_in_one_sentence(
    tmp_path: Path, name: str, content: bytes, message: str
) -> None:
    (tmp_path / "params.yaml").write_text("train:\n  steps: 7\n")
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / name).write_bytes(content)
    with pytest.raises(InvalidInputError, match=message):
        explain("train.steps", tmp_path / "params.yaml", tmp_path / "dvc.yaml")


def test_explain_and_schema_refuse_a_folder_as_params_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="is a folder, not a YAML file"):
        explain("train.steps", tmp_path, tmp_path / "dvc.yaml")
    with pytest.raises(InvalidInputError, match="is a folder, not a YAML file"):
        generated_schema_text(tmp_path)


def test_an_empty_key_is_explained_as_unknown_not_taken_for_schema(capsys: pytest.CaptureFixture[str]) -> None:
    """`--explain ''` once fell through to `--schema` and rewrote the package's schema file."""
    assert main(["params", "--explain", "", "--out", "/nonexistent/never-written.json"]) == 2
    assert "params has no key ''" in capsys.readouterr().err
