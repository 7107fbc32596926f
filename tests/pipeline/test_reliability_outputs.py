"""Nothing a user types destroys data (issue 12, round two): an output path naming a folder
stego did not write is refused with one sentence and the folder is left byte for byte;
`stego predict` never reads its own outputs and replaces an earlier predict's files
completely; `stego demo-data` writes only into an empty folder or an earlier demo corpus;
a broken weights or model file is one sentence naming it, not a traceback.

Every case is built here from tiny files in tmp_path; the commands run in-process through
`flows.cli.main`, so each test checks the exit status and the exact stderr line.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from flows.cli import main
from stego_tasks.config import TrainParams, params_to_dict
from stego_tasks.demo_data import demo_data
from stego_tasks.method.backbone import create_backbone
from stego_tasks.method.model import build_model, load_model, save_model
from stego_tasks.method.weights import read_checkpoint
from stego_tasks.runtime import atomic
from stego_tasks.tools.predict import predict_paths
from stego_tasks.tools.trained_run import load_run

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _snapshot(root: Path) -> dict[str, bytes]:
    """Every file under `root` (relative POSIX path -> bytes)."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _user_folder(path: Path) -> dict[str, bytes]:
    """A folder of someone's own files; returns its snapshot."""
    (path / "sub").mkdir(parents=True)
    (path / "notes.txt").write_text("my notes\n")
    (path / "sub" / "photo.png").write_bytes(b"\x89PNG not really")
    return _snapshot(path)


def _cli(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, list[str]]:
    """Run `stego ARGV` in-process; return its exit status and its stderr lines."""
    os.environ.pop("STEGO_DEBUG", None)
    status = main(list(argv))
    return status, capsys.readouterr().err.strip().splitlines()


# --- 1. An output path that is someone's folder --------------------------------------------


def test_report_out_naming_a_folder_is_refused_and_the_folder_kept(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "params.yaml").write_text("seed: 0\n")
    before = _user_folder(tmp_path / "reports")
    status, err = _cli(capsys, "report", "--no-prefect", "--run", "run", "--out", "reports")
    assert status == 2, f"exit status {status}, stderr {err}"
    assert err == [
        "stego report: error: reports is an existing folder that stego did not write; refusing to replace it "
        "with this output: pass a new path (e.g. a file name inside that folder), or move the folder away first."
    ], f"stderr {err}"
    assert _snapshot(tmp_path / "reports") == before, "the refused report changed the folder"
    # A file inside it is what the user meant, and works.
    assert _cli(capsys, "report", "--no-prefect", "--run", "run", "--out", "reports/report.html")[0] == 0, "report into a file"
    assert _snapshot(tmp_path / "reports").keys() == {*before, "report.html"}, "the user's files must stay"


def test_ingest_quarantine_naming_a_folder_is_refused_and_the_folder_kept(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    demo_data(tmp_path / "corpus", n_train=3, n_val=3, size=32)
    (tmp_path / "params.yaml").write_text("corpus:\n  root: corpus\n")
    before = _user_folder(tmp_path / "mine")
    status, err = _cli(capsys, "ingest", "--no-prefect", "--manifest", "m.parquet", "--quarantine", "mine")
    assert status == 2 and len(err) == 1, f"exit status {status}, stderr {err}"
    assert err[0].startswith("stego ingest: error: mine is an existing folder that stego did not write;"), err[0]
    assert _snapshot(tmp_path / "mine") == before, "the refused ingest changed the folder"


@pytest.mark.parametrize("option", ["features", "model"])
def test_folder_outputs_updated_in_place_refuse_a_foreign_folder(option, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    before = _user_folder(tmp_path / "mine")
    stage = "extract" if option == "features" else "train"
    status, err = _cli(capsys, stage, "--no-prefect", f"--{option}", "mine")
    assert status == 2 and len(err) == 1, f"exit status {status}, stderr {err}"
    assert err[0].startswith(f"stego {stage}: error: mine is an existing folder that does not hold a "), err[0]
    assert _snapshot(tmp_path / "mine") == before, f"the refused {stage} changed the folder"


def _write_file(tmp: Path) -> None:
    tmp.write_text("new")


def _write_zarr_like(tmp: Path) -> None:
    tmp.mkdir()
    (tmp / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group"}')
    (tmp / "new").write_text("new")


@pytest.mark.parametrize(
    "setup,writer,expected",
    [
        # (what stands at the target, what the stage writes, the start of the refusal)
        ("empty_folder", _write_file, "is a folder (an empty folder) but this output is a file"),
        ("zarr_store", _write_file, "is a folder (a Zarr store) but this output is a file"),
        ("file", _write_zarr_like, "is an existing file but this output is a folder"),
        ("link_to_user_folder", _write_file, "is a link to the folder"),
        ("model_folder", _write_zarr_like, "holds a trained model (model.json / checkpoint.pt), which this output"),
    ],
)
def test_atomic_path_replaces_only_what_stego_wrote(setup, writer, expected, tmp_path: Path) -> None:
    target = tmp_path / "out"
    user = tmp_path / "user"
    before_user = _user_folder(user)
    if setup == "empty_folder":
        target.mkdir()
    elif setup == "zarr_store":
        target.mkdir()
        (target / "zarr.json").write_text("{}")
    elif setup == "file":
        target.write_text("old")
    elif setup == "model_folder":
        target.mkdir()
        (target / "model.json").write_text("{}")
    else:
        target.symlink_to(user, target_is_directory=True)
    before = _snapshot(target) if target.is_dir() and not target.is_symlink() else None
    with pytest.raises(ValueError) as info, atomic.atomic_path(target) as tmp:
        writer(tmp)
    assert str(info.value).startswith(f"{target} {expected}"), f"message: {info.value}"
    assert _snapshot(user) == before_user, "the user's folder changed"
    if setup == "file":
        assert target.read_text() == "old", "the refused write replaced the file"
    elif setup == "link_to_user_folder":
        assert target.is_symlink(), "the link was replaced"
    else:
        assert _snapshot(target) == before, "the refused write changed the folder"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "user"], "temporary files left behind"


def test_atomic_path_still_replaces_its_own_folders_and_files(tmp_path: Path) -> None:
    """Reruns work: a Zarr store, evaluate's overlays and a file are replaced."""
    store, overlays, text = (tmp_path / n for n in ("s.zarr", "overlays", "t.txt"))
    store.mkdir()
    (store / "zarr.json").write_text("{}")
    (store / "old").write_text("old")
    overlays.mkdir()
    (overlays / "0000.png").write_bytes(b"old")
    text.write_text("old")
    with atomic.atomic_path(store) as tmp:
        _write_zarr_like(tmp)
    with atomic.atomic_path(overlays) as tmp:
        tmp.mkdir()
        (tmp / "0001.png").write_bytes(b"new")
    atomic.write_text(text, "new")
    assert sorted(_snapshot(store)) == ["new", "zarr.json"], f"store holds {sorted(_snapshot(store))}"
    assert sorted(_snapshot(overlays)) == ["0001.png"], f"overlays hold {sorted(_snapshot(overlays))}"
    assert text.read_text() == "new", "a file target must stay replaceable"


# --- 1. stego predict ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run of a random ViT-Ti/16 head: artifacts/model only."""
    root = tmp_path_factory.mktemp("run")
    params = TrainParams(n_codes=4)
    info = {
        "in_dim": 192, "n_classes": 2, "class_names": ["a", "b"], "ignore_index": 255,
        "backbone": "vit_tiny_patch16_224", "backbone_weights": "random", "resolution": 32, "seed": 0,
        "train": params_to_dict(params), "linear_probe_trained": False,
    }
    torch.manual_seed(0)
    save_model(build_model(192, 2, params, info), root / "artifacts" / "model")
    return root


@pytest.fixture(scope="module")
def run(run_dir: Path):
    with pytest.warns(UserWarning, match="RANDOM"):
        return load_run(run_dir, device="cpu")


def _photos(folder: Path, names: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in names:
        Image.fromarray(rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)).save(folder / name)
    return folder


@pytest.mark.parametrize("where", ["same", "inside"])
def test_predict_out_inside_an_input_folder_is_refused(where, run_dir, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    _photos(tmp_path / "photos", ["a.png"])
    out = "photos" if where == "same" else "photos/seg"
    before = _snapshot(tmp_path / "photos")
    status, err = _cli(capsys, "predict", "photos", "--run", str(run_dir), "--out", out, "--no-crf", "--device", "cpu")
    assert status == 2, f"exit status {status}, stderr {err}"
    assert err == [
        f"stego predict: error: --out {out} is inside the input folder photos, so predict would read its own "
        "outputs as images next time; pass an --out folder outside every input."
    ], f"stderr {err}"
    assert _snapshot(tmp_path / "photos") == before, "the refused predict wrote into the input folder"


def test_predict_refuses_a_folder_it_did_not_write(run, tmp_path: Path) -> None:
    photos = _photos(tmp_path / "photos", ["a.png"])
    before = _user_folder(tmp_path / "mine")
    with pytest.raises(ValueError) as info:
        predict_paths(run, [photos], tmp_path / "mine", flip=False, crf=False)
    assert str(info.value) == (
        f"--out {tmp_path / 'mine'} already holds files that stego predict did not write (it has no predict "
        "legend.json); pass a new or empty folder."
    ), f"message: {info.value}"
    assert _snapshot(tmp_path / "mine") == before, "the refused predict changed the folder"


def test_second_predict_replaces_the_first_completely_and_keeps_other_files(run, run_dir, tmp_path) -> None:
    out = tmp_path / "out"
    first = _photos(tmp_path / "first", ["a.png", "b.png"])
    second = _photos(tmp_path / "second", ["c.png"])
    assert predict_paths(run, [first], out, flip=False, crf=False).written == 2, "first predict"
    legend = json.loads((out / "legend.json").read_text())
    assert legend["written_by"] == "stego predict" and legend["complete"] is True, f"legend {legend}"
    assert legend["run"] == str((run_dir / "artifacts" / "model").resolve()), f"run recorded {legend['run']}"
    assert legend["files"] == ["a_clusters.png", "a_overlay.png", "b_clusters.png", "b_overlay.png"], legend["files"]
    (out / "my_notes.txt").write_text("mine")  # someone's own file, added after the first run
    # A second run into the folder: outputs of the first are gone, not mixed with the new ones.
    assert predict_paths(run, [second], out, flip=False, crf=False).written == 1, "second predict"
    names = sorted(p.name for p in out.iterdir())
    assert names == ["c_clusters.png", "c_overlay.png", "legend.json", "my_notes.txt"], f"out holds {names}"
    assert (out / "my_notes.txt").read_text() == "mine", "a file predict did not write was touched"
    # A run that writes nothing (no decodable image) keeps the previous outputs as they were.
    kept = _snapshot(out)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "x.png").write_bytes(b"not a png")
    assert predict_paths(run, [broken], out, flip=False, crf=False).written == 0, "nothing decodable"
    assert _snapshot(out) == kept, "a predict that wrote nothing changed the previous outputs"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == [], "staging folder left behind"


# --- 1. stego demo-data -------------------------------------------------------------------


def test_demo_data_refuses_a_folder_holding_other_files(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    before = _user_folder(tmp_path / "mine")
    status, err = _cli(capsys, "demo-data", "--no-prefect", "mine", "--n-train", "3", "--n-val", "3", "--size", "32")
    assert status == 2, f"exit status {status}, stderr {err}"
    assert err == [
        "stego demo-data: error: mine holds mine/notes.txt, which is not part of a demo corpus; refusing to write "
        "the demo corpus there: pass a new or empty folder (or the folder of an earlier `stego demo-data`)."
    ], f"stderr {err}"
    assert _snapshot(tmp_path / "mine") == before, "the refused demo-data changed the folder"


def test_demo_data_rewrites_an_earlier_demo_corpus_exactly(tmp_path: Path) -> None:
    demo_data(tmp_path / "demo", n_train=5, n_val=4, size=32, seed=1)
    demo_data(tmp_path / "demo", n_train=3, n_val=3, size=32, seed=2)
    demo_data(tmp_path / "fresh", n_train=3, n_val=3, size=32, seed=2)
    assert _snapshot(tmp_path / "demo") == _snapshot(tmp_path / "fresh"), (
        "rewriting a demo corpus must give exactly the corpus asked for (no scenes of the earlier one)"
    )


# --- 3. Broken weights and model files ----------------------------------------------------


def _backbone_file(tmp_path: Path, suffix: str) -> tuple[Path, bytes]:
    import timm

    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0)
    path = tmp_path / f"good{suffix}"
    state = {k: v.contiguous() for k, v in vit.state_dict().items()}
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path, path.read_bytes()


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_broken_backbone_checkpoint_is_one_sentence_naming_it(suffix, damage, tmp_path: Path) -> None:
    _, good = _backbone_file(tmp_path, suffix)
    path = tmp_path / f"broken{suffix}"
    path.write_bytes({"truncated": good[: len(good) // 2], "garbage": b"hello world" * 50, "empty": b""}[damage])
    with pytest.raises(ValueError) as info:
        create_backbone("vit_tiny_patch16_224", weights=path)
    message = str(info.value)
    assert message.startswith(f"{path}: not a readable "), f"message does not name the file first: {message}"
    assert message.endswith("; download it again, or pass another checkpoint (backbone.weights, or --weights for "
                            "stego predict)."), f"message does not say what to do: {message}"
    assert "\n" not in message, f"not one line: {message!r}"


def test_checkpoint_of_non_string_keys_is_refused_clearly(tmp_path: Path) -> None:
    path = tmp_path / "odd.pth"
    torch.save({1: torch.zeros(2), 2: torch.ones(2)}, path)
    with pytest.raises(ValueError, match="holds no tensors under parameter names"):
        read_checkpoint(path)


@pytest.fixture
def model_dir(run_dir: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    for name in ("model.json", "model.safetensors"):
        (folder / name).write_bytes((run_dir / "artifacts" / "model" / name).read_bytes())
    return folder


def _edit_info(folder: Path, change) -> None:
    info = json.loads((folder / "model.json").read_text())
    change(info)
    (folder / "model.json").write_text(json.dumps(info))


REDO = "; rerun `stego train` to write the model again."
BROKEN_MODELS = {
    "json_not_json": (lambda f: (f / "model.json").write_text("{not json"), "model.json", ": not valid JSON ("),
    "json_a_list": (lambda f: (f / "model.json").write_text("[1, 2]"), "model.json",
                    ": holds a JSON list, not the mapping train writes"),
    "json_missing_in_dim": (lambda f: _edit_info(f, lambda i: i.pop("in_dim")), "model.json",
                            ": in_dim must be a positive integer (missing)"),
    "json_string_n_classes": (lambda f: _edit_info(f, lambda i: i.update(n_classes="2")), "model.json",
                              ': n_classes must be a positive integer (got "2")'),
    "json_bad_train_value": (lambda f: _edit_info(f, lambda i: i["train"].update(n_codes=0)), "model.json",
                             ": train.n_codes must be a positive integer, got 0"),
    "json_wrong_in_dim": (lambda f: _edit_info(f, lambda i: i.update(in_dim=7)), "model.safetensors",
                          ": its head tensors do not fit the model model.json describes"),
    "safetensors_truncated": (
        lambda f: (f / "model.safetensors").write_bytes((f / "model.safetensors").read_bytes()[:100]),
        "model.safetensors", ": not a readable .safetensors file, truncated or corrupt",
    ),
    "safetensors_garbage": (lambda f: (f / "model.safetensors").write_bytes(b"\x00" * 64), "model.safetensors",
                            ": not a readable .safetensors file, truncated or corrupt"),
}


@pytest.mark.parametrize("case", list(BROKEN_MODELS))
def test_broken_model_files_are_one_sentence_naming_the_file(case, model_dir: Path) -> None:
    damage, name, needle = BROKEN_MODELS[case]
    damage(model_dir)
    with pytest.raises(ValueError) as info:
        load_model(model_dir)
    message = str(info.value)
    assert message.startswith(f"{model_dir / name}{needle}"), f"message: {message}"
    assert message.endswith(REDO) and "\n" not in message, f"not one sentence saying what to do: {message!r}"


def test_predict_with_a_broken_model_prints_one_line(run_dir, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    broken = tmp_path / "run" / "artifacts" / "model"
    broken.mkdir(parents=True)
    (broken / "model.json").write_text((run_dir / "artifacts" / "model" / "model.json").read_text())
    (broken / "model.safetensors").write_bytes(b"")
    _photos(tmp_path / "photos", ["a.png"])
    status, err = _cli(capsys, "predict", "photos", "--run", "run", "--out", "out", "--device", "cpu")
    assert status == 2, f"exit status {status}, stderr {err}"
    assert err == [
        "stego predict: error: run/artifacts/model/model.safetensors: not a readable .safetensors file, truncated or "
        f"corrupt (Error while deserializing header: header too small){REDO}"
    ], f"stderr {err}"
    assert not (tmp_path / "out").exists(), "a refused predict created its output folder"


def test_a_model_written_before_the_runtime_block_still_loads(model_dir: Path) -> None:
    # Before the runtime block, model.json's train block recorded `readers` (a thread count).
    _edit_info(model_dir, lambda info: info["train"].update(readers=3))
    model = load_model(model_dir)  # the moved key is skipped, not refused as unknown
    assert model.info["train"]["readers"] == 3, "the recorded block is kept as written"
