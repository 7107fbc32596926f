"""Tests for `stego_tasks.params_schema`: how a params mapping is read and checked.

On small dataclasses of their own, they prove that each annotation accepts what YAML writes for
it (and converts lists to tuples, ints to floats) and refuses the rest in one sentence naming
the source, the dotted key, what it must be (ranges in words) and what it is; that unknown keys,
non-mapping blocks and a dataclass's own cross-field check are one sentence too; that
`read_yaml` refuses duplicate keys, non-UTF-8 bytes and malformed YAML naming the line; and that
`published` fills a dataclass's defaults from the defaults mapping, which is the project's
dataclass defaults for the real `defaults.yaml`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest

from stego_tasks import params_schema
from stego_tasks.config import Params, load_params, params_from_dict, params_to_dict
from stego_tasks.errors import InvalidInputError
from stego_tasks.params_schema import (
    DEFAULTS,
    _Range,
    build_block,
    params_block,
    published,
    read_yaml,
)


@dataclass(frozen=True)
class _Inner:
    rate: float = 0.5
    size: int = 4


@dataclass(frozen=True)
class _Toy:
    batch_size: int = 2
    lr: float = 1e-3
    seed: int = 0
    dropout: float = 0.1
    crop_ratio: float = 0.5
    flag: bool = False
    name: str = "x"
    mode: Literal["a", "b"] = "a"
    shifts: tuple[float, float, float] = (0.1, 0.2, 0.3)
    names: tuple[str, ...] = ()
    maybe: int | None = None
    extra: dict = field(default_factory=dict)
    inner: _Inner = field(default_factory=_Inner)
    bounded: int = field(default=5, metadata={"range": _Range(1, 10)})

    def __post_init__(self) -> None:
        if self.batch_size > 100 and self.flag:
            raise ValueError("batch_size above 100 needs flag off")


def test_the_defaults_file_is_a_complete_valid_params_file_and_the_dataclass_defaults() -> None:
    # params_from_dict refuses an unknown key; `published` refuses a missing one at import.
    assert params_to_dict(params_from_dict(DEFAULTS)) == params_to_dict(Params()) == params_to_dict(load_params("/nonexistent.yaml"))


def test_yaml_values_are_converted_to_the_annotations() -> None:
    block = build_block(_Toy, {"lr": 1, "shifts": [1, 2, 3.5], "names": ["p", "q"], "maybe": 3, "extra": None,
                               "inner": {"rate": 2}, "mode": "b", "flag": True}, "toy")
    assert block == _Toy(lr=1.0, shifts=(1.0, 2.0, 3.5), names=("p", "q"), maybe=3, extra={}, inner=_Inner(rate=2.0),
                         mode="b", flag=True)
    assert isinstance(block.lr, float) and isinstance(block.inner.rate, float) and isinstance(block.shifts, tuple)
    assert build_block(_Toy, None, "toy") == _Toy(), "no mapping: every default"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"batch_size": 0}, "toy.batch_size must be a positive integer, got 0."),
        ({"batch_size": 2.0}, "toy.batch_size must be a positive integer, got 2.0."),
        ({"batch_size": True}, "toy.batch_size must be a positive integer, got true."),
        ({"seed": -1}, "toy.seed must be a non-negative integer, got -1."),
        # Beyond a C int the libraries overflow (torch's seed, faiss' iterations): refused, not a traceback.
        ({"seed": 2**70}, f"toy.seed must be a non-negative integer, at most 2147483647, got {2**70}."),
        ({"batch_size": 10**30}, f"toy.batch_size must be a positive integer, at most 2147483647, got {10**30}."),
        ({"lr": float("nan")}, "toy.lr must be a positive number, got NaN."),
        ({"lr": "0.1"}, 'toy.lr must be a positive number, got the string "0.1".'),
        ({"dropout": 1.5}, "toy.dropout must be a number from 0 to 1, got 1.5."),
        ({"crop_ratio": 0}, "toy.crop_ratio must be a number above 0 and at most 1, got 0."),
        ({"bounded": 11}, "toy.bounded must be an integer from 1 to 10, got 11."),
        ({"flag": "yes"}, 'toy.flag must be true or false (unquoted), got the string "yes".'),
        ({"name": 3}, "toy.name must be a string, got 3."),
        ({"mode": "c"}, "toy.mode must be one of ['a', 'b'], got the string \"c\"."),
        ({"shifts": [1, 2]}, "toy.shifts must be a list of 3 numbers, got [1, 2]."),
        ({"shifts": "1 2 3"}, 'toy.shifts must be a list of 3 numbers, got the string "1 2 3".'),
        ({"names": [1]}, "toy.names must be a list of strings, got [1]."),
        ({"maybe": "n"}, 'toy.maybe must be an integer or null, got the string "n".'),
        ({"extra": [1]}, "toy.extra must be a mapping of keys to values, got [1]."),
        # `size` has a range by its name (FIELD_RANGES), in whichever block it is.
        ({"inner": {"size": 0}}, "toy.inner.size must be an integer of at least 32, got 0."),
    ],
)
def test_a_wrong_value_is_one_sentence_naming_the_key_what_it_must_be_and_what_it_is(values: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidInputError) as raised:
        build_block(_Toy, values, "toy", "my.yaml")
    assert str(raised.value) == f"my.yaml: {message}"


def test_unknown_keys_and_a_block_that_is_not_a_mapping_are_one_sentence() -> None:
    with pytest.raises(InvalidInputError, match=r"^params\.yaml block 'toy' has unknown key\(s\) \['lrr', 'stepz'\]; "
                                                 r"allowed keys are \['batch_size', .*\]\.$"):
        build_block(_Toy, {"lrr": 1, "stepz": 2}, "toy")
    with pytest.raises(InvalidInputError, match=r"^params\.yaml block 'toy' must be a mapping of keys to values, got list \[1\]; "
                                                 r"write it as `toy:` followed by indented `key: value` lines\.$"):
        build_block(_Toy, [1], "toy")  # type: ignore[arg-type]


def test_a_check_across_fields_is_one_sentence_naming_the_source() -> None:
    with pytest.raises(InvalidInputError, match=r"^model\.json: batch_size above 100 needs flag off$"):
        params_block(_Toy, {"batch_size": 101, "flag": True}, "train", "model.json")


def test_top_level_keys_are_named_without_a_block() -> None:
    with pytest.raises(InvalidInputError, match=r"^params\.yaml: seed must be a non-negative integer, got -2\.$"):
        build_block(_Toy, {"seed": -2}, "<top level>")


@pytest.mark.parametrize(
    ("allowed", "noun", "words"),
    [(_Range(0, low_excluded=True), "integer", "a positive integer"), (_Range(0), "number", "a non-negative number"),
     (_Range(3), "integer", "an integer of at least 3"), (_Range(3, low_excluded=True), "number", "a number above 3"),
     (_Range(0, 1), "number", "a number from 0 to 1"), (_Range(0, 1, low_excluded=True), "integer", "an integer above 0 and at most 1")],
)
def test_ranges_are_said_in_words_and_admit_exactly_their_values(allowed: _Range, noun: str, words: str) -> None:
    assert allowed.words(noun) == words
    low = allowed.low or 0
    assert allowed.admits(low) is not allowed.low_excluded and allowed.admits(low + 0.5)
    assert not allowed.admits(low - 1)
    if allowed.high is not None:
        assert allowed.admits(allowed.high) and not allowed.admits(allowed.high + 0.001)


def test_read_yaml_refuses_a_key_given_twice_naming_both_lines(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("train:\n  steps: 1\n  lr: 0.1\n  steps: 2\n")
    with pytest.raises(InvalidInputError, match=rf"^{path}: line 4: key 'steps' appears a second time in the same mapping "
                                                 r"\(first on line 2\); keep one of them \(YAML would silently drop the first\)\.$"):
        read_yaml(path)
    path.write_text("a: &base {x: 1}\nb:\n  <<: *base\n  y: 2\n")
    assert read_yaml(path) == {"a": {"x": 1}, "b": {"x": 1, "y": 2}}, "a merge key is not a duplicate"


@pytest.mark.timeout(20)
def test_read_yaml_refuses_a_named_pipe_or_device_instead_of_blocking(tmp_path: Path) -> None:
    """params.yaml as a FIFO hung every stego command; a link to /dev/zero would read forever."""
    import os

    pipe = tmp_path / "params.yaml"
    os.mkfifo(pipe)
    device = tmp_path / "zero.yaml"
    device.symlink_to("/dev/zero")
    for path in (pipe, device):
        with pytest.raises(InvalidInputError, match=r"is not a regular file \(a named pipe, socket or device\); pass a YAML file\.$"):
            read_yaml(path)


def test_read_yaml_refuses_bytes_that_are_not_utf8_and_malformed_yaml_naming_the_place(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    good = b"train:\n  name: caf"
    path.write_bytes(good + b"\xe9\n")
    with pytest.raises(InvalidInputError, match=rf"^{path} is not UTF-8 text \(byte {len(good)}\); save it as a UTF-8 YAML file\.$"):
        read_yaml(path)
    path.write_text("train:\n  steps: [1, 2\n")
    with pytest.raises(InvalidInputError, match=rf"^{path}: line 3, column 1: .*; fix the YAML there \(indentation, colons, quotes\)\.$"):
        read_yaml(path)


def test_published_fills_defaults_from_the_defaults_mapping(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(params_schema, "DEFAULTS", {"toy": {"steps": 7, "sizes": [1, 2], "extra": {"k": [1]}}, "seed": 3})

    @dataclass(frozen=True)
    @published("toy")
    class Toy:
        steps: int
        sizes: tuple[int, ...]
        extra: dict
        inner: _Inner = field(default_factory=_Inner)

    first, second = Toy(), Toy()
    assert (first.steps, first.sizes, first.extra, first.inner) == (7, (1, 2), {"k": [1]}, _Inner())
    assert first.extra is not second.extra, "a mapping default is a fresh copy per instance"
    first.extra["k"].append(2)
    assert params_schema.DEFAULTS["toy"]["extra"] == {"k": [1]}, "the defaults mapping was changed through an instance"
    assert hash(first) == hash(second), "a mapping field stays out of the hash"

    @dataclass(frozen=True)
    @published(None)
    class Top:
        seed: int

    assert Top().seed == 3


def test_published_refuses_a_field_the_defaults_file_lacks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(params_schema, "DEFAULTS", {"toy": {"steps": 7}})
    with pytest.raises(KeyError, match=r"has no toy key 'lr'; every field needs its default there"):
        @dataclass(frozen=True)
        @published("toy")
        class Toy:
            steps: int
            lr: float

