"""`flows/tools.py`: the `stego` tool commands' own argument handling, defaults and messages.

The library calls are replaced by recorders, so what is checked here is the command layer
alone: which arguments are required or refused by the parser, which defaults a command fills
in from the run (seed from model.json, alpha and flip as the run's stages recorded them, the
names file of the run), that a refused output folder costs no model load, the one-line
summaries and exit statuses, and the one-sentence errors (an empty seed count, a run without
a features store). Each tool's own work is tested in tests/tools/ and tests/data/.
"""

from __future__ import annotations

import argparse
import importlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from flows.cli import main
from flows.tools import (
    TOOLS,
    add_export_arguments,
    add_names_arguments,
    add_predict_arguments,
    add_seeds_arguments,
    add_sweep_arguments,
    export_from_args,
    names_from_args,
    predict_from_args,
    seeds_from_args,
    sweep_from_args,
)
from stego_tasks.errors import InvalidInputError, MissingInputError
from stego_tasks.paths import PATHS, run_path


def parse(add: Any, *argv: str) -> argparse.Namespace:
    """Parse `argv` with a parser that `add` (an `add_<tool>_arguments`) built."""
    parser = argparse.ArgumentParser(prog="stego tool")
    add(parser)
    return parser.parse_args(list(argv))


def replace(monkeypatch: pytest.MonkeyPatch, module: str, name: str, function: Any) -> None:
    """Replace `module.name` (a library function the command imports when it runs)."""
    monkeypatch.setattr(importlib.import_module(module), name, function)


@pytest.mark.parametrize(("add", "argv"), [
    (add_predict_arguments, ["a.png"]),                        # no --out
    (add_predict_arguments, ["--out", "o"]),                   # no image
    (add_sweep_arguments, []),                                 # no --ks
    (add_sweep_arguments, ["--ks", "3", "--init", "zeros"]),   # not an init
    (add_seeds_arguments, []),                                 # no N
    (add_seeds_arguments, ["three"]),                          # N not a number
    (add_names_arguments, ["rename"]),                         # only `init`
    (add_export_arguments, []),                                # no --out
    (add_export_arguments, ["--out", "e", "--split", "test"]),  # not a split
], ids=["predict-out", "predict-images", "sweep-ks", "sweep-init", "seeds-n", "seeds-number", "names-action",
        "export-out", "export-split"])
def test_the_parsers_refuse_missing_and_bad_arguments(add: Any, argv: list[str], capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse(add, *argv)
    assert exit_info.value.code == 2 and "error:" in capsys.readouterr().err


def test_every_tool_has_a_help_an_argument_adder_and_a_runner() -> None:
    assert set(TOOLS) == {"predict", "adapt", "sweep-k", "seeds", "params", "names", "export"}
    for name, (help_text, add, run) in TOOLS.items():
        assert help_text.strip() and callable(add) and callable(run), name


# --- stego predict ---------------------------------------------------------------------------


@dataclass
class FakeRun:
    """What `predict_from_args` reads of a loaded run."""

    flip: bool = True
    weights_source: str = "file"
    backbone: Any = None

    def __post_init__(self) -> None:
        self.backbone = type("Backbone", (), {"weights_source": self.weights_source})()


@dataclass
class FakeSummary:
    written: int
    failed: list[tuple[str, str]] = field(default_factory=list)


def fake_predict(monkeypatch: pytest.MonkeyPatch, run: FakeRun, summary: FakeSummary) -> list[tuple[str, Any]]:
    """Replace the library calls of `stego predict`; returns the calls in order."""
    calls: list[tuple[str, Any]] = []
    replace(monkeypatch, "stego_tasks.tools.predict_output", "check_out_dir",
            lambda inputs, out: calls.append(("check_out_dir", (inputs, out))))
    replace(monkeypatch, "stego_tasks.tools.trained_run", "load_run",
            lambda path, weights, device, resolution: calls.append(("load_run", (path, weights, device, resolution))) or run)
    replace(monkeypatch, "stego_tasks.tools.predict", "predict_paths",
            lambda run_, inputs, out, flip, crf: calls.append(("predict_paths", (inputs, out, flip, crf))) or summary)
    return calls


def test_predict_checks_the_output_folder_before_loading_the_model(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = fake_predict(monkeypatch, FakeRun(), FakeSummary(written=1))

    def refuse(inputs: list[Path], out: Path) -> None:
        calls.append(("check_out_dir", out))
        raise InvalidInputError(f"{out} is not an output folder of stego predict; pass a new folder.")

    replace(monkeypatch, "stego_tasks.tools.predict_output", "check_out_dir", refuse)
    with pytest.raises(InvalidInputError):
        predict_from_args(parse(add_predict_arguments, "a.png", "--out", "o"))
    assert calls == [("check_out_dir", Path("o"))], "no model was loaded for a refused folder"


@pytest.mark.parametrize(("run_flip", "no_flip", "no_crf", "flip", "crf"), [
    (True, False, False, True, True), (True, True, False, False, True), (False, False, True, False, False),
])
def test_predict_flips_only_when_the_run_did_and_crf_unless_told_not(
    monkeypatch: pytest.MonkeyPatch, run_flip: bool, no_flip: bool, no_crf: bool, flip: bool, crf: bool,
    capsys: pytest.CaptureFixture,
) -> None:
    calls = fake_predict(monkeypatch, FakeRun(flip=run_flip), FakeSummary(written=2))
    argv = ["a.png", "dir", "--out", "o", "--run", "r", "--weights", "w.pth", "--resolution", "64", "--device", "cpu"]
    argv += ["--no-flip"] * no_flip + ["--no-crf"] * no_crf
    assert predict_from_args(parse(add_predict_arguments, *argv)) == 0
    assert calls == [
        ("check_out_dir", ([Path("a.png"), Path("dir")], Path("o"))),
        ("load_run", (Path("r"), "w.pth", "cpu", 64)),
        ("predict_paths", ([Path("a.png"), Path("dir")], Path("o"), flip, crf)),
    ]
    assert capsys.readouterr().out == "wrote 2 images to o; 0 failed\n"


def test_predict_lists_ten_failures_counts_the_rest_and_warns_of_random_weights(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    failed = [(f"bad{i}.png", "not an image") for i in range(13)]
    fake_predict(monkeypatch, FakeRun(weights_source="random"), FakeSummary(written=0, failed=failed))
    assert predict_from_args(parse(add_predict_arguments, "in", "--out", "o")) == 2, "nothing written: exit 2"
    shown = "; ".join(f"bad{i}.png (not an image)" for i in range(10))
    assert capsys.readouterr().out == (f"wrote 0 images to o; 13 failed: {shown}; and 3 more "
                                       "(RANDOM backbone weights: the segments mean nothing)\n")


# --- stego sweep-k ---------------------------------------------------------------------------


def trained_run(root: Path, seed: int = 4, store: bool = True) -> Path:
    """A run folder with the model's two files (seed recorded) and, optionally, a features store."""
    from stego_tasks.method.model import MODEL_JSON, MODEL_WEIGHTS

    model = run_path(root, "model")
    model.mkdir(parents=True)
    (model / MODEL_JSON).write_text(json.dumps({"seed": seed}))
    (model / MODEL_WEIGHTS).write_bytes(b"")
    if store:
        run_path(root, "features").mkdir(parents=True)
    return root


def test_sweep_refuses_a_run_without_a_features_store_in_one_sentence(tmp_path: Path) -> None:
    run = trained_run(tmp_path, store=False)
    with pytest.raises(MissingInputError) as error:
        sweep_from_args(parse(add_sweep_arguments, "--run", str(run), "--ks", "3,5"))
    assert str(error.value) == f"{run} holds no features store ({PATHS['features']}); run `stego extract` first."


@pytest.mark.parametrize(("argv", "seed", "alpha", "flip"), [
    ([], None, 7.5, True),  # None: sweep_k takes the seed from the model.json it checks
    (["--seed", "1", "--alpha", "3.0", "--no-flip"], 1, 3.0, False),
], ids=["the-runs-own", "given"])
def test_sweep_takes_seed_alpha_and_flip_from_the_run_unless_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
    argv: list[str], seed: int, alpha: float, flip: bool,
) -> None:
    from stego_tasks.tools.trained_run import RunSettings

    run = trained_run(tmp_path)
    calls: list[dict[str, Any]] = []

    def sweep_k(store: Path, model: Path, ks: list[int], out_json: Path, out_png: Path, **kwargs: Any) -> list[dict]:
        calls.append({"store": store, "model": model, "ks": ks, "out": (out_json, out_png), **kwargs})
        return [{"k": k, "criterion": 0.5, "train_criterion": 0.25, "miou": None if k == 3 else 40.0, "accuracy": 60.0}
                for k in ks]

    replace(monkeypatch, "stego_tasks.tools.sweep", "sweep_k", sweep_k)
    replace(monkeypatch, "stego_tasks.tools.trained_run", "run_settings", lambda path: RunSettings(alpha=7.5, flip=True))
    out = tmp_path / "sweep"
    assert sweep_from_args(parse(add_sweep_arguments, "--run", str(run), "--ks", "3,5", "--out", str(out), *argv)) == 0
    assert calls == [{
        "store": run_path(run, "features"), "model": run_path(run, "model"), "ks": [3, 5],
        "out": (tmp_path / "sweep.json", tmp_path / "sweep.png"), "seed": seed, "steps": None, "alpha": alpha,
        "flip": flip, "restarts": 3, "init": "codes",
    }]
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["K=3   criterion 0.5000 (train 0.2500)",
                     "K=5   criterion 0.5000 (train 0.2500)  mIoU 40.0  accuracy 60.0",
                     f"wrote {tmp_path / 'sweep.json'} and {tmp_path / 'sweep.png'}"]


# --- stego seeds, names, export --------------------------------------------------------------


@pytest.mark.parametrize("n", [0, -2])
def test_seeds_needs_at_least_one_seed(n: int) -> None:
    with pytest.raises(InvalidInputError) as error:
        seeds_from_args(argparse.Namespace(n=n, first=0, prefix="seed"))
    assert str(error.value) == f"stego seeds needs N >= 1 seeds, got {n}."


def test_stego_seeds_zero_is_one_line_on_stderr_with_exit_2(capsys: pytest.CaptureFixture) -> None:
    assert main(["seeds", "0"]) == 2
    assert capsys.readouterr().err.strip() == "stego seeds: error: stego seeds needs N >= 1 seeds, got 0."


def test_seeds_runs_n_seeds_from_first_and_prints_the_table(monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture) -> None:
    from stego_tasks.tools.seeds import aggregate, format_table

    calls: list[tuple[list[int], str]] = []
    summary = aggregate([(seed, {"cluster": {"accuracy": 50.0 + seed, "miou": 20.0}}) for seed in (10, 11, 12)])
    replace(monkeypatch, "flows.seeds", "run_seeds", lambda seeds, prefix: calls.append((seeds, prefix)) or summary)
    assert seeds_from_args(parse(add_seeds_arguments, "3", "--first", "10", "--prefix", "s")) == 0
    assert calls == [([10, 11, 12], "s")]
    assert capsys.readouterr().out == f"{format_table(summary)}\nwritten to {PATHS['seeds']} (and shown by `stego report`)\n"


@pytest.mark.parametrize(("argv", "suggested", "message_end"), [
    ([], 0, "3 clusters; edit the names, then `dvc repro`."),
    (["--out", "names.yaml", "--force"], 2, "3 clusters, 2 named after the classes the labels matched; edit the names, "
                                            "then `dvc repro`."),
], ids=["defaults", "given"])
def test_names_init_writes_the_runs_names_file_unless_told_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
    argv: list[str], suggested: int, message_end: str,
) -> None:
    calls: list[tuple[Path, Path, bool]] = []

    def write_init(run: Path, out: Path, force: bool = False) -> dict:
        calls.append((run, out, force))
        return {"out": str(out), "clusters": 3, "suggested": suggested}

    replace(monkeypatch, "stego_tasks.tools.names_init", "write_init", write_init)
    assert names_from_args(parse(add_names_arguments, "init", "--run", str(tmp_path), *argv)) == 0
    out = Path(argv[1]) if argv else run_path(tmp_path, "cluster_names")
    assert calls == [(tmp_path, out, bool(argv))]
    assert capsys.readouterr().out == f"wrote {out}: {message_end}\n"


def test_export_hands_on_its_arguments_and_says_what_it_wrote(monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture) -> None:
    calls: list[tuple] = []

    def export(run: Path, out: Path, predictions: Path | None, split: str | None) -> dict:
        calls.append((run, out, predictions, split))
        return {"out": str(out), "annotations": 7, "images": 2, "classes": 3, "split": "train"}

    replace(monkeypatch, "stego_tasks.tools.export", "export", export)
    assert export_from_args(parse(add_export_arguments, "--out", "e", "--predictions", "p", "--split", "train")) == 0
    assert calls == [(Path("."), Path("e"), Path("p"), "train")]
    assert capsys.readouterr().out == ("wrote e: annotations.json (COCO, 7 RLE masks over 2 images, 3 categories) "
                                       "and images/train + labels/train (corpus.yaml)\n")


@pytest.mark.parametrize("argv", [["sweep-k", "--ks", "2", "--seed", str(2**70)], ["predict", "x", "--out", "o", "--resolution", str(2**70)],
                                  ["demo-data", "--seed", str(2**70)], ["sweep-k", "--ks", "2", "--steps", "abc"]])
def test_an_integer_option_beyond_a_c_int_is_one_line_from_argparse(
    argv: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """--seed 2**70 overflowed in torch.manual_seed and --resolution 2**70 in PIL: bugs' tracebacks (exit 1)."""
    monkeypatch.chdir(tmp_path)  # nothing may be written where the tests run, refused or not
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"stego {argv[0]}: error: argument"), err
    assert ("beyond 2147483647" in err) != ("invalid int value: 'abc'" in err), err
