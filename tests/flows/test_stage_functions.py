"""`flows/stage_functions.py`: params file and paths in, the library's stage function called.

With each library entry point replaced by a recorder and a small params file in tmp_path:
an option given on the command line wins over its params block, else the block's value is
used; paths reach the library as `Path`s; a stage's summary dataclass comes back as a dict;
the report reads the params file of the run it describes unless told another; the corpus
block reaches extract and train as a view that refuses the keys they do not declare; and a
features store or model folder path that holds something else is refused in one sentence
before the library runs. (That each stage reads exactly the keys dvc.yaml declares is a
cross-layer contract: tests/flows/test_contracts.py.)
"""

from __future__ import annotations

import dataclasses
import importlib
import re
from pathlib import Path
from typing import Any

import pytest

from flows import stage_functions
from flows.declared_params import UndeclaredParamError
from stego_tasks.config import load_params
from stego_tasks.errors import InvalidInputError

PARAMS_TEXT = """\
corpus:
  root: my-corpus
  n_classes: 6
demo_data:
  n_train: 6
  n_val: 4
  size: 48
  seed: 9
ingest:
  min_size: 33
report:
  max_overlays: 2
"""


@dataclasses.dataclass
class Summary:
    """A library summary (a dataclass the stage function turns into a dict)."""

    images: int = 3
    info: dict = dataclasses.field(default_factory=lambda: {"in_dim": 384})


def record_library(monkeypatch: pytest.MonkeyPatch, stage: str) -> list[tuple[tuple, dict]]:
    """Replace `stego_tasks.<stage>.<stage>` by a recorder; returns the (args, kwargs) of its calls."""
    calls: list[tuple[tuple, dict]] = []

    def library(*args: Any, **kwargs: Any) -> Any:
        calls.append((args, kwargs))
        return Summary()

    monkeypatch.setattr(importlib.import_module(f"stego_tasks.{stage}"), stage, library)
    return calls


@pytest.fixture
def params(tmp_path: Path) -> str:
    """A params file with a few blocks set (everything else at its default)."""
    path = tmp_path / "params.yaml"
    path.write_text(PARAMS_TEXT)
    return str(path)


def test_demo_data_takes_the_blocks_values_unless_given(monkeypatch: pytest.MonkeyPatch, params: str) -> None:
    calls = record_library(monkeypatch, "demo_data")
    stage_functions.demo_data(params, "out/demo")
    stage_functions.demo_data(params, "out/demo", n_train=7, seed=0)
    assert calls == [
        ((Path("out/demo"),), {"n_train": 6, "n_val": 4, "size": 48, "seed": 9}),
        ((Path("out/demo"),), {"n_train": 7, "n_val": 4, "size": 48, "seed": 0}),
    ], "a given 0 is a value, not 'unset'"


def test_ingest_hands_on_paths_and_min_size_and_returns_the_summary_as_a_dict(
    monkeypatch: pytest.MonkeyPatch, params: str
) -> None:
    calls = record_library(monkeypatch, "ingest")
    assert stage_functions.ingest(params, "m.parquet", "q.csv") == dataclasses.asdict(Summary())
    assert calls == [((Path("my-corpus"), Path("m.parquet"), Path("q.csv")), {"min_size": 33})]


def test_the_report_reads_the_params_of_the_run_it_describes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                            params: str) -> None:
    calls = record_library(monkeypatch, "report")
    run = tmp_path / "run"
    run.mkdir()
    (run / "params.yaml").write_text("report:\n  max_overlays: 5\n")
    stage_functions.report(run=str(run), out="r.html")
    stage_functions.report(params, str(run), "r.html")
    assert [args for args, _ in calls] == [
        (run, Path("r.html"), load_params(run / "params.yaml").report),
        (run, Path("r.html"), load_params(params).report),
    ]
    assert [args[2].max_overlays for args, _ in calls] == [5, 2]


def test_extract_gets_a_corpus_view_that_refuses_undeclared_keys(monkeypatch: pytest.MonkeyPatch, params: str,
                                                                 tmp_path: Path) -> None:
    calls = record_library(monkeypatch, "extract")
    stage_functions.extract(params, "m.parquet", str(tmp_path / "features.zarr"))
    ((args, _),) = calls
    corpus = args[2]
    assert (corpus.root, corpus.ignore_index) == ("my-corpus", 255)
    with pytest.raises(UndeclaredParamError, match="n_classes"):
        _ = corpus.n_classes


def test_train_gets_a_corpus_view_and_returns_in_dim_and_steps(monkeypatch: pytest.MonkeyPatch, params: str,
                                                               tmp_path: Path) -> None:
    calls = record_library(monkeypatch, "train")
    summary = stage_functions.train(params, "f.zarr", "k.zarr", str(tmp_path / "model"), "loss.csv")
    assert summary == {"in_dim": 384, "steps": load_params(params).train.steps}
    ((args, kwargs),) = calls
    assert args[4].n_classes == 6 and kwargs["resume"] is False
    with pytest.raises(UndeclaredParamError, match="root"):
        _ = args[4].root


@pytest.mark.parametrize("stage", ["extract", "train"])
def test_an_output_folder_holding_something_else_is_refused_before_the_library_runs(
    stage: str, monkeypatch: pytest.MonkeyPatch, params: str, tmp_path: Path
) -> None:
    calls = record_library(monkeypatch, stage)
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"not ours")
    a_file = tmp_path / "notes.txt"
    a_file.write_text("notes")
    for target, words in ((foreign, "is an existing folder that does not hold"), (a_file, "is a file, but")):
        with pytest.raises(InvalidInputError) as error:
            if stage == "extract":
                stage_functions.extract(params, "m.parquet", str(target))
            else:
                stage_functions.train(params, "f.zarr", "k.zarr", str(target), "loss.csv")
        message = str(error.value)
        assert message.startswith(f"{target} {words}") and "\n" not in message, message
    assert calls == [], "the library never ran"
    assert sorted(p.name for p in foreign.iterdir()) == ["holiday.jpg"], "nothing was written into the folder"


@pytest.mark.parametrize(("option", "value", "message"), [
    ("seed", -1, "demo_data.seed must be a non-negative integer, got -1."),
    ("size", 8, "demo_data.size must be an integer of at least 32, got 8."),
    ("n_train", 10**12, "demo_data.n_train must be an integer of at least 3, at most 2147483647"),
])
def test_demo_data_options_are_checked_as_the_params_keys_they_replace(
    monkeypatch: pytest.MonkeyPatch, params: str, option: str, value: int, message: str
) -> None:
    """`--seed -1` reached numpy's seeding as a bug's traceback: an option gets its key's type and range check."""
    calls = record_library(monkeypatch, "demo_data")
    with pytest.raises(InvalidInputError, match=re.escape(f"the options of `stego demo-data`: {message}")):
        stage_functions.demo_data(params, "out/demo", **{option: value})
    assert calls == [], "nothing is written for a refused option"
