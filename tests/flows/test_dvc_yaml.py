"""`flows/dvc_yaml.py`: `dvc.yaml` generated from the stage registry.

The committed file is the generated one; on made-up stages in a made-up registry, each
part of a stage comes out as its `Stage` entry says: the command (path options as
`${paths.<key>}`, renamed and fixed parameters, the positional folder, `--no-prefect` and
no trace for an always-changed check), a long command folded so that YAML reads back the
same line, the data deps (paths given and not written, declared deps, the traces of the
traced stages before a stage that reads them), the code deps, and outs, metrics and plots
with their flags. `python -m flows.dvc_yaml` writes the file and `--check` says whether it
is current.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from flows import dvc_yaml as generator
from flows.code_deps import code_deps
from flows.dvc_yaml import HEADER, STAGE_FUNCTIONS, command, data_deps, dvc_yaml, stage_text
from flows.registry import NO_CACHE, PERSIST, STAGES, Stage
from stego_tasks.paths import PARAMS_FILE, PATHS
from tests.conftest import REPO


def first(params_path: str = PARAMS_FILE, manifest: str = PATHS["manifest"], n: int = 3) -> dict[str, Any]:
    """A made-up traced stage that writes the manifest."""
    return {}


def check(params_path: str = PARAMS_FILE, weights: str = PATHS["weights"]) -> dict[str, Any]:
    """A made-up always-changed check."""
    return {}


def last(params_path: str = PARAMS_FILE, manifest: str = PATHS["manifest"], knn: str = PATHS["knn"],
         out: str = PATHS["report"], run: str = ".") -> dict[str, Any]:
    """A made-up stage that reads the traces of the stages before it."""
    return {}


def wide(params_path: str = PARAMS_FILE, manifest: str = PATHS["manifest"], quarantine: str = PATHS["quarantine"],
         validation: str = PATHS["validation"], features: str = PATHS["features"], knn: str = PATHS["knn"],
         model: str = PATHS["model"], predictions: str = PATHS["predictions"]) -> dict[str, Any]:
    """A made-up stage with a command too long for one line."""
    return {}


FIRST = Stage(first, "Write the manifest.", params=("ingest",), outs={"manifest": {}}, library="stego_tasks.paths")
CHECK = Stage(check, "Check.", outs={"weights": NO_CACHE}, always_changed=True, library="stego_tasks.paths")
LAST = Stage(last, "Read the traces.", paths={"out": "report"}, fixed={"run": "."}, outs={"report": NO_CACHE},
             deps=("${paths.manifest}", "params.yaml"), reads_traces=True, library="stego_tasks.knn",
             comments={"${paths.knn}": "the neighbours"})
WIDE = Stage(wide, "Read a lot.", outs={"model": PERSIST}, plots={"predictions": NO_CACHE}, library="stego_tasks.paths")
MADE_UP = {stage.name: stage for stage in (FIRST, CHECK, LAST)}


def parsed(stage: Stage, stages: dict[str, Stage] = MADE_UP) -> dict[str, Any]:
    """The stage as DVC reads it: `stage_text` parsed as YAML."""
    return yaml.safe_load(stage_text(stage, stages))[stage.name]


def test_the_committed_dvc_yaml_is_the_one_the_registry_generates() -> None:
    committed = (REPO / "dvc.yaml").read_text(encoding="utf-8")
    assert committed == dvc_yaml(), "dvc.yaml differs from flows/registry.py: run `python -m flows.dvc_yaml`"


def test_the_command_of_an_always_changed_check_runs_without_prefect_or_trace() -> None:
    assert command(STAGES["weights"]) == "stego weights --no-prefect --weights ${paths.weights}"
    assert STAGES["weights"].trace() is None and STAGES["knn"].trace() == f"{PATHS['trace']}/knn.json"
    assert command(STAGES["demo_data"]).startswith("stego demo-data ${paths.demo_corpus} --trace"), "positional folder"
    assert command(STAGES["report"]).startswith("stego report --run . --out ${paths.report}"), "fixed values and renames"


def test_a_command_gives_paths_renames_and_fixed_values_but_no_other_option() -> None:
    assert command(FIRST) == "stego first --manifest ${paths.manifest} --trace ${paths.trace}/first.json", \
        "n keeps its default: only paths and fixed values are spelled out"
    assert command(CHECK) == "stego check --no-prefect --weights ${paths.weights}"
    assert command(LAST) == ("stego last --manifest ${paths.manifest} --knn ${paths.knn} --out ${paths.report} "
                             "--run . --trace ${paths.trace}/last.json")


def test_data_deps_are_the_paths_read_the_declared_deps_and_the_earlier_traces() -> None:
    # Given and not written: manifest, knn (manifest is also declared, so it is listed once, there);
    # the traces of the traced stages before it go before the last declared dep.
    assert data_deps(LAST, MADE_UP) == ["${paths.knn}", "${paths.manifest}", "${paths.trace}/first.json", "params.yaml"]
    assert data_deps(FIRST, MADE_UP) == [], "a stage's own outs are not its deps"
    assert data_deps(CHECK, MADE_UP) == []


def test_a_stage_reads_back_as_its_registry_entry_says() -> None:
    stage = parsed(LAST)
    assert stage["cmd"] == command(LAST)
    assert stage["deps"] == [STAGE_FUNCTIONS, *data_deps(LAST, MADE_UP), *code_deps("stego_tasks.knn")]
    assert "params" not in stage, "no params keys, no params entry"
    assert stage["outs"] == [{"${paths.report}": {"cache": False}}]
    assert stage["metrics"] == [{"${paths.trace}/last.json": {"cache": False}}], "a traced stage's trace is a metric"
    text = stage_text(LAST, MADE_UP)
    assert "- ${paths.knn}   # the neighbours" in text and "- ${paths.trace}/first.json   # the other stages'" in text

    stage = parsed(FIRST)
    assert stage["params"] == ["ingest"] and stage["outs"] == ["${paths.manifest}"], "no flags: a plain entry"

    stage = parsed(CHECK)
    assert stage["always_changed"] is True and "metrics" not in stage, "an always-changed check writes no trace"
    assert stage["outs"] == [{"${paths.weights}": {"cache": False}}]


def test_a_long_command_is_folded_and_reads_back_as_one_line() -> None:
    text = stage_text(WIDE, {"wide": WIDE})
    assert len(command(WIDE)) > 100 and "    cmd: >-" in text, text
    folded = text.split("    cmd: >-\n")[1].split("    deps:")[0].splitlines()
    assert len(folded) > 1 and all(len(line) <= 6 + 100 for line in folded), folded
    stage = yaml.safe_load(text)["wide"]
    assert stage["cmd"] == command(WIDE), "YAML folds the lines back into the command"
    assert stage["outs"] == [{"${paths.model}": {"persist": True}}]
    assert stage["plots"][0] == {"${paths.predictions}": {"cache": False}}


def test_every_committed_command_reads_back_as_its_stage_command() -> None:
    stages = yaml.safe_load(dvc_yaml())["stages"]
    assert list(stages) == list(STAGES)
    for name, stage in STAGES.items():
        assert stages[name]["cmd"] == command(stage), name
    assert dvc_yaml({}) == HEADER, "no stages: the header alone"


def test_main_writes_dvc_yaml_and_check_says_whether_it_is_current(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    generated = HEADER + stage_text(FIRST, MADE_UP)
    monkeypatch.setattr(generator, "REPO", tmp_path)
    monkeypatch.setattr(generator, "dvc_yaml", lambda: generated)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n", encoding="utf-8")
    assert generator.main(["--check"]) == 1
    assert "dvc.yaml differs from the registry" in capsys.readouterr().out
    assert generator.main([]) == 0
    assert (tmp_path / "dvc.yaml").read_text(encoding="utf-8") == generated
    assert generator.main(["--check"]) == 0
    assert capsys.readouterr().out.strip() == "dvc.yaml is current"
