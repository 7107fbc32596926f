"""Tests for stego_tasks.config: params.yaml loading, strict keys, tuples, validation."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from stego_tasks.config import (
    CorpusParams,
    Params,
    TrainParams,
    load_params,
    params_from_dict,
    params_to_dict,
)
from tests.conftest import REPO

REPO_PARAMS = REPO / "params.yaml"


def _as_tuples(value):
    return tuple(value) if isinstance(value, list) else value


def test_repo_params_yaml_loads_with_every_value_as_written():
    params = load_params(REPO_PARAMS)
    raw = yaml.safe_load(REPO_PARAMS.read_text())
    assert isinstance(params, Params), f"got {type(params).__name__}"
    # The repo's corpus is the demo, so its `demo` block is merged over extract and train.
    assert raw["corpus"]["demo"] is True
    for block, overrides in raw["demo"].items():
        raw[block] = {**raw[block], **overrides}
    for key, value in raw.items():
        if isinstance(value, dict):
            block = getattr(params, key)
            assert dataclasses.is_dataclass(block), f"block {key} did not become a dataclass"
            for name, item in value.items():
                got = getattr(block, name)
                assert got == _as_tuples(item), f"{key}.{name}: file says {item!r}, params hold {got!r}"
        else:
            assert getattr(params, key) == value, f"{key}: file says {value!r}, params hold {getattr(params, key)!r}"
    # Blocks and keys the file leaves out keep the published defaults.
    assert params.train.feature_samples == TrainParams().feature_samples, "a missing key lost its default"


def test_lists_become_tuples_and_params_stay_hashable():
    params = params_from_dict({"train": {"weights": [1, 0.5, 0.25]}, "corpus": {"n_classes": 2, "class_names": ["a", "b"]}})
    assert params.train.weights == (1, 0.5, 0.25) and isinstance(params.train.weights, tuple), (
        f"weights {params.train.weights!r} is not a tuple"
    )
    assert params.corpus.class_names == ("a", "b"), f"class names {params.corpus.class_names!r}"
    assert hash(params) == hash(params_from_dict(params_to_dict(params))), "frozen params must hash equal"


def test_params_to_dict_round_trips():
    params = params_from_dict({"seed": 3, "train": {"shifts": [0.1, 0.2, 0.3]}, "dask": {"address": "tcp://h:1"}})
    as_dict = params_to_dict(params)
    assert as_dict["train"]["shifts"] == [0.1, 0.2, 0.3], f"JSON view {as_dict['train']['shifts']!r}"
    assert params_from_dict(as_dict) == params, "params -> dict -> params changed a value"


@pytest.mark.parametrize(
    "values,block,key",
    [
        ({"train": {"step": 10}}, "train", "step"),
        ({"corpus": {"n_class": 3}}, "corpus", "n_class"),
        ({"trian": {"steps": 10}}, "<top level>", "trian"),
    ],
)
def test_unknown_keys_are_rejected_naming_the_block(values, block, key):
    with pytest.raises(ValueError, match=f"block '{block}' has unknown key\\(s\\) \\['{key}'\\]"):
        params_from_dict(values)


def test_a_block_that_is_not_a_mapping_is_rejected_clearly():
    with pytest.raises(ValueError, match="block 'train' must be a mapping"):
        params_from_dict({"train": 5})


def test_empty_block_means_defaults():
    params = params_from_dict({"train": None, "evaluate": {}})
    assert params.train == TrainParams() and params.evaluate == Params().evaluate, "an empty block must give defaults"


def test_class_names_length_must_match_n_classes():
    with pytest.raises(ValueError, match="lists 2 names but corpus.n_classes is 3"):
        params_from_dict({"corpus": {"n_classes": 3, "class_names": ["sky", "road"]}})
    assert CorpusParams(n_classes=2, class_names=("sky", "road")).class_names == ("sky", "road"), "matching names"


@pytest.mark.parametrize("n_classes", [0, 256])
def test_n_classes_must_fit_a_uint8_label(n_classes):
    with pytest.raises(ValueError, match=f"between 1 and 255, got {n_classes}"):
        CorpusParams(n_classes=n_classes)


def test_the_clusters_must_fit_an_8_bit_cluster_map():
    """300 extra clusters trained and clustered, then wrapped around in the uint8 cluster maps."""
    with pytest.raises(ValueError, match=r"params\.yaml: corpus\.n_classes \+ train\.extra_clusters is 305, but cluster maps "
                                         r"hold at most 256 clusters; set train\.extra_clusters to at most 251\.$"):
        params_from_dict({"corpus": {"n_classes": 5, "class_names": []}, "train": {"extra_clusters": 300}})
    assert params_from_dict({"corpus": {"n_classes": 5, "class_names": []}, "train": {"extra_clusters": 251}})


def test_a_value_the_demo_block_overrides_is_still_checked():
    """train.steps: "abc" passed silently while corpus.demo was true, to fail only once it was false."""
    values = {"corpus": {"demo": True}, "train": {"steps": "abc"}, "demo": {"train": {"steps": 30}}}
    with pytest.raises(ValueError, match=r'train\.steps must be a positive integer, got the string "abc"'):
        params_from_dict(values)
    assert params_from_dict({**values, "train": {"steps": 5000}}).train.steps == 30, "the demo's value applies"


def test_a_broken_link_as_params_file_is_refused_not_taken_for_defaults(tmp_path):
    """A dangling or looping params.yaml link ran every stage on the defaults without a word."""
    (tmp_path / "dangling.yaml").symlink_to(tmp_path / "gone.yaml")
    (tmp_path / "loop.yaml").symlink_to(tmp_path / "loop.yaml")
    for name in ("dangling.yaml", "loop.yaml"):
        with pytest.raises(ValueError, match=rf"{name} is a broken link \(its target is missing, or it loops\)"):
            load_params(tmp_path / name)


def test_missing_file_gives_defaults_and_a_non_mapping_file_is_refused(tmp_path):
    assert load_params(tmp_path / "absent.yaml") == Params(), "a missing params.yaml must give the defaults"
    bad = tmp_path / "params.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="must hold a mapping of parameter blocks, not list"):
        load_params(bad)
