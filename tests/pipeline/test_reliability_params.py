"""Params are checked when loaded, and a user error is one sentence with or without Prefect
(issue 12, round two).

Every value of params.yaml is checked against its field's annotation and range (booleans
must be YAML booleans, integers integers, lists lists of the right length, sizes positive);
a key given twice, malformed YAML and a folder given as the params file are refused with
one sentence. Under Prefect (how DVC runs each stage) the error is the same single line on
stderr as with `--no-prefect`, and STEGO_DEBUG=1 still shows the traceback.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from flows.cli import main
from stego_tasks.config import load_params, params_from_dict
from tests.conftest import SUBPROCESS_ENV, VENV_BIN

STEGO = str(VENV_BIN / "stego")

# (params.yaml text, the exact error after "<path>: ").
REFUSED = {
    "zero_batch_size": ("train:\n  batch_size: 0\n", "train.batch_size must be a positive integer, got 0."),
    "float_steps": ("train:\n  steps: 10.5\n", "train.steps must be a positive integer, got 10.5."),
    "string_k": ("knn:\n  k: '7'\n", 'knn.k must be a positive integer, got the string "7".'),
    "bool_k": ("knn:\n  k: true\n", "knn.k must be a positive integer, got true."),
    "quoted_false": ("extract:\n  flip: 'false'\n", 'extract.flip must be true or false (unquoted), got the string "false".'),
    "int_for_bool": ("cluster:\n  flip: 0\n", "cluster.flip must be true or false (unquoted), got 0."),
    "string_for_float": ("cluster:\n  alpha: two\n", 'cluster.alpha must be a positive number, got the string "two".'),
    "bool_for_float": ("train:\n  lr: false\n", "train.lr must be a positive number, got false."),
    "string_for_list": ("corpus:\n  n_classes: 3\n  class_names: sky\n",
                        'corpus.class_names must be a list of strings, got the string "sky".'),
    "short_tuple": ("train:\n  weights: [1, 2]\n", "train.weights must be a list of 3 numbers, got [1, 2]."),
    "tuple_of_strings": ("train:\n  weights: [a, b, c]\n", 'train.weights must be a list of 3 numbers, got ["a", "b", "c"].'),
    "null_for_int": ("crf:\n  iterations:\n", "crf.iterations must be a positive integer, got null."),
    "negative_workers": ("runtime:\n  crf_workers: -1\n", "runtime.crf_workers must be a positive integer, got -1."),
    "zero_resolution": ("extract:\n  resolution: 0\n", "extract.resolution must be a positive integer, got 0."),
    "zero_writers": ("runtime:\n  writers: 0\n", "runtime.writers must be a positive integer or one of ['auto'], got 0."),
    "negative_writers": ("runtime:\n  writers: -1\n", "runtime.writers must be a positive integer or one of ['auto'], got -1."),
    "many_writers": ("runtime:\n  writers: many\n",
                     'runtime.writers must be a positive integer or one of [\'auto\'], got the string "many".'),
    "ignore_index_256": ("corpus:\n  ignore_index: 256\n", "corpus.ignore_index must be an integer from 0 to 255, got 256."),
    "negative_seed": ("seed: -3\n", "seed must be a non-negative integer, got -3."),
    "number_for_string": ("dask:\n  address: 8786\n", "dask.address must be a string or null, got 8786."),
    "block_twice": ("knn:\n  k: 3\nseed: 1\nknn:\n  k: 5\n",
                    "line 4: key 'knn' appears a second time in the same mapping (first on line 1); keep one of them "
                    "(YAML would silently drop the first)."),
    "key_twice": ("train:\n  steps: 3\n  lr: 0.1\n  steps: 4\n",
                  "line 4: key 'steps' appears a second time in the same mapping (first on line 2); keep one of them "
                  "(YAML would silently drop the first)."),
    "malformed": ("train:\n  steps: [1, 2\nknn:\n  k: 3\n",
                  "line 3, column 4: expected ',' or ']', but got ':'; fix the YAML there (indentation, colons, quotes)."),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_ill_typed_or_malformed_params_are_refused_in_one_sentence(case: str, tmp_path: Path) -> None:
    text, expected = REFUSED[case]
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ValueError) as info:
        load_params(path)
    assert str(info.value) == f"{path}: {expected}", f"message: {info.value}"


def test_well_typed_values_load_with_their_types() -> None:
    params = params_from_dict({
        "crf": {"gaussian_sxy": 2, "iterations": 3},  # an int where a float belongs is that float
        "extract": {"val_resolution": None},  # `int | None` takes null
        "train": {"weights": [1, 0.5, 0], "steps": 1},
        "corpus": {"ignore_index": 0, "n_classes": 2, "class_names": ["a", "b"]},
        "dask": {"address": None},
    })
    assert params.crf.gaussian_sxy == 2.0 and isinstance(params.crf.gaussian_sxy, float), f"{params.crf.gaussian_sxy!r}"
    assert params.extract.val_resolution is None and params.dask.address is None, "null must stay null"
    assert params.train.weights == (1.0, 0.5, 0.0) and isinstance(params.train.weights, tuple), f"{params.train.weights!r}"
    assert params.corpus.class_names == ("a", "b") and params.corpus.ignore_index == 0, f"{params.corpus}"


def test_a_folder_as_params_file_is_refused_and_a_missing_default_gives_defaults(tmp_path: Path) -> None:
    with pytest.raises(ValueError) as info:
        load_params(tmp_path)
    assert str(info.value) == (
        f"{tmp_path} is a folder, not a params file; pass the path of a YAML file such as params.yaml."
    ), f"message: {info.value}"
    assert load_params(tmp_path / "params.yaml") == load_params(tmp_path / "absent.yaml"), "defaults when absent"


def test_bad_params_value_is_one_line_with_exit_2_without_prefect(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("STEGO_DEBUG", raising=False)
    (tmp_path / "params.yaml").write_text("knn:\n  k: 0\n")
    assert main(["knn", "--no-prefect"]) == 2, "exit status of a refused params file"
    assert capsys.readouterr().err.splitlines() == [
        "stego knn: error: params.yaml: knn.k must be a positive integer, got 0."
    ], "expected exactly the one sentence on stderr"


# --- 4. The same sentence under Prefect ---------------------------------------------------


def _stego(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([STEGO, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False)


@pytest.fixture
def stage_env(project_env: dict[str, str]) -> dict[str, str]:
    """The session Prefect server's environment for a `stego` subprocess, without STEGO_DEBUG."""
    env = {**project_env, **SUBPROCESS_ENV}
    env.pop("STEGO_DEBUG", None)
    return env


@pytest.mark.slow  # a Prefect server and a flow run per case: about 30 s
def test_user_errors_under_prefect_are_the_same_one_sentence(tmp_path: Path, stage_env: dict[str, str]) -> None:
    """A bad params value and an error inside the stage print one line, no traceback, exit 2."""
    bad_params = tmp_path / "bad-params"
    bad_params.mkdir()
    (bad_params / "params.yaml").write_text("knn:\n  k: 0\n")
    no_corpus = tmp_path / "no-corpus"
    no_corpus.mkdir()
    (no_corpus / "params.yaml").write_text("corpus:\n  root: nowhere\n")
    # Both at once: each spends most of its time importing.
    runs = {
        name: subprocess.Popen([STEGO, *args], cwd=cwd, env=stage_env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
        for name, cwd, args in [("knn", bad_params, ["knn"]), ("ingest", no_corpus, ["ingest"])]
    }
    results = {name: (process.communicate(timeout=300), process.returncode) for name, process in runs.items()}
    (_, knn_err), knn_status = results["knn"]
    assert knn_status == 2, f"exit status {knn_status}:\n{knn_err}"
    assert knn_err.splitlines() == ["stego knn: error: params.yaml: knn.k must be a positive integer, got 0."], (
        f"stderr under Prefect must be the one sentence:\n{knn_err}"
    )
    (_, ingest_err), ingest_status = results["ingest"]
    assert ingest_status == 2, f"exit status {ingest_status}:\n{ingest_err}"
    assert "Traceback" not in ingest_err, f"a user error printed a traceback under Prefect:\n{ingest_err}"
    errors = [line for line in ingest_err.splitlines() if line.startswith("stego ingest: error: ")]
    assert len(errors) == 1 and "no images found in nowhere/images/train" in errors[0], f"stderr:\n{ingest_err}"
    sentence = errors[0].removeprefix("stego ingest: error: ")
    assert ingest_err.count(sentence[:60]) == 1, f"the error is repeated by Prefect's logs:\n{ingest_err}"
    others = [line for line in ingest_err.splitlines() if line not in errors]
    assert all("| INFO " in line for line in others), f"Prefect printed more than its run announcement:\n{ingest_err}"
    with_no_prefect = _stego(no_corpus, stage_env, "ingest", "--no-prefect")
    assert with_no_prefect.stderr.splitlines() == errors, (
        f"the sentence differs without Prefect:\n{with_no_prefect.stderr}\nvs\n{ingest_err}"
    )


def test_stego_debug_still_shows_the_traceback_under_prefect(tmp_path: Path, stage_env: dict[str, str]) -> None:
    (tmp_path / "params.yaml").write_text("corpus:\n  root: nowhere\n")
    result = _stego(tmp_path, {**stage_env, "STEGO_DEBUG": "1"}, "ingest")
    assert result.returncode != 0, "the run must fail"
    assert "Traceback (most recent call last)" in result.stderr, f"STEGO_DEBUG=1 must show it:\n{result.stderr[-2000:]}"
    assert "no images found in nowhere" in result.stderr, f"the error itself:\n{result.stderr[-2000:]}"
