"""How `params.yaml` is read and checked: every value against its field's annotation and range.

`stego_tasks.config` declares the blocks (frozen dataclasses); this module turns a YAML
mapping into them. Booleans must be YAML booleans, integers integers, lists lists of the
right length; sizes and the like must lie in their `FIELD_RANGES`; a key given twice in one
mapping is refused. Every problem is one sentence naming the file, the key, what it must be
and what it is.

The blocks' default values are not written in Python: `published` fills each dataclass's
defaults from `presets/defaults.yaml` (`DEFAULTS`, read once at import), the one file that
holds the published settings.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import math
import stat
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from stego_tasks.errors import InvalidInputError

T = TypeVar("T")


@dataclass(frozen=True)
class _Range:
    """Allowed numeric values of a field: from `low` to `high` (either may be open-ended)."""

    low: float | None = None
    high: float | None = None
    low_excluded: bool = False

    def admits(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_excluded else value < self.low):
            return False
        return self.high is None or value <= self.high

    def words(self, noun: str) -> str:
        if self.high is None and self.low == 0:
            return f"a {'positive' if self.low_excluded else 'non-negative'} {noun}"
        article = "an" if noun[0] in "aeiou" else "a"
        if self.high is None:
            return f"{article} {noun} {'above' if self.low_excluded else 'of at least'} {self.low:g}"
        if self.low_excluded:
            return f"{article} {noun} above {self.low:g} and at most {self.high:g}"
        return f"{article} {noun} from {self.low:g} to {self.high:g}"


_POSITIVE, _NON_NEGATIVE = _Range(0, low_excluded=True), _Range(0)

# The smallest image side (px) the stages decode: the lower bound of `ingest.min_size`, and
# `stego_tasks.data.images`' default when a caller gives none.
MIN_IMAGE_SIZE: int = 16

# The largest integer any field takes: the C ints of the libraries the stages hand them to
# (faiss' iteration counts, torch's seed, array sizes) overflow beyond it with a bug's traceback.
INT_LIMIT: int = 2**31 - 1

# Ranges by field name, in whichever block the field is (a field's own `metadata={"range":
# _Range(...)}` takes precedence). Sizes, counts and rates must be positive; a field not
# named here has only its type checked.
FIELD_RANGES: dict[str, _Range] = {
    **dict.fromkeys(
        (
            "batch_size", "steps", "n_codes", "k", "iterations", "crf_workers", "resolution", "val_resolution",
            "n_workers", "threads_per_worker", "kmeans_iters", "kmeans_samples", "feature_samples",
            "neg_samples", "log_every", "select_every", "probe_restarts", "decode_workers", "writers",
            "lr", "probe_lr", "alpha", "gaussian_sxy", "bilateral_sxy", "bilateral_srgb",
            "max_overlays", "max_quarantine_rows", "gallery_examples",
        ),
        _POSITIVE,
    ),
    **dict.fromkeys(
        ("seed", "extra_clusters", "checkpoint_every", "n_overlays", "gaussian_compat", "bilateral_compat", "readers"),
        _NON_NEGATIVE,
    ),
    "n_classes": _Range(1, 255),
    "ignore_index": _Range(0, 255),
    "dropout": _Range(0, 1),
    "crop_ratio": _Range(0, 1, low_excluded=True),
    "shift_quantile": _Range(0, 1),
    # The demo corpus needs every class in both splits (stego_tasks.demo_data).
    "n_train": _Range(3),
    "n_val": _Range(3),
    "size": _Range(32),
    "min_size": _Range(MIN_IMAGE_SIZE),
}



# The published defaults (package data), every value of a params file once with its citation.
DEFAULTS_FILE = Path(__file__).resolve().parent / "presets" / "defaults.yaml"


class _Mismatch(Exception):
    """A value that does not fit its annotation (turned into one sentence by `build_block`)."""


def _describe(hint: Any, allowed: _Range | None = None) -> str:
    """What a value of annotation `hint` must be, in words ("a positive integer", ...)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is bool:
        return "true or false (unquoted)"
    if hint is int:
        return allowed.words("integer") if allowed else "an integer"
    if hint is float:
        return allowed.words("number") if allowed else "a number"
    if hint is str:
        return "a string"
    if hint is type(None):
        return "null"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(arm, allowed) for arm in args)
    if origin is typing.Literal:
        return f"one of {list(args)}"
    if origin in (tuple, list):
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(set(args)) == 1:
                return f"a list of {len(args)} {_plural(args[0])}"
            return f"a list of {len(args)} values ({', '.join(_describe(a) for a in args)})"
        return f"a list of {_plural(args[0])}" if args else "a list"
    if origin is dict or hint is dict:
        return "a mapping of keys to values"
    return "a value"


def _plural(hint: Any) -> str:
    return {bool: "booleans", int: "integers", float: "numbers", str: "strings"}.get(hint, "values")


def _shown(value: Any) -> str:
    """A value as the YAML file spells it (strings marked as such)."""
    if isinstance(value, str):
        return f'the string "{value}"'
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


_SCALARS = (bool, int, float, str, type(None))


def _checked_scalar(value: Any, hint: type, allowed: _Range | None) -> Any:
    """`value` as the scalar type `hint` (an int as a float), within `allowed`; else `_Mismatch`.

    A bool is never a number here, though Python's bool is an int.
    """
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    if hint is bool and isinstance(value, bool):
        return value
    if (hint is int and is_number and isinstance(value, int) and abs(value) <= INT_LIMIT
            and (allowed is None or allowed.admits(value))):
        return value
    if hint is float and is_number and math.isfinite(value) and (allowed is None or allowed.admits(value)):
        return float(value)
    if hint is str and isinstance(value, str):
        return value
    if hint is type(None) and value is None:
        return None
    raise _Mismatch


def _checked(value: Any, hint: Any, allowed: _Range | None) -> Any:
    """`value` converted to annotation `hint` (lists to tuples, ints to floats); else `_Mismatch`."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any or hint is object:
        return value
    if hint in _SCALARS:
        return _checked_scalar(value, hint, allowed)
    if origin in (typing.Union, types.UnionType):
        for arm in args:
            try:
                return _checked(value, arm, allowed)
            except _Mismatch:
                continue
    elif origin is typing.Literal:
        if value in args:
            return value
    elif origin in (tuple, list):
        # A YAML list (tuples too, for values built in Python); a string is never split.
        if isinstance(value, list | tuple):
            if origin is tuple and args and args[-1] is not Ellipsis:
                if len(value) == len(args):
                    return tuple(_checked(item, arm, None) for item, arm in zip(value, args, strict=True))
            else:
                items = tuple(_checked(item, args[0], None) if args else item for item in value)
                return items if origin is tuple else list(items)
    elif origin is dict or hint is dict:
        if value is None:  # an empty mapping, as an empty block means defaults
            return {}
        if isinstance(value, dict):
            return dict(value)
    elif isinstance(hint, type):
        if isinstance(value, hint):
            return value
    else:
        return value  # an annotation this checker does not know: leave the value to the dataclass
    raise _Mismatch


def _field_range(item: dataclasses.Field) -> _Range | None:
    return item.metadata.get("range", FIELD_RANGES.get(item.name))


def _block_hints(cls: type) -> dict[str, Any]:
    """The resolved field annotations of a params dataclass (string annotations included)."""
    return typing.get_type_hints(cls)


def build_block(cls: type[T], values: dict[str, Any] | None, where: str, source: str = "params.yaml") -> T:
    """Build the params dataclass `cls` from a YAML mapping, checking every value's type and range.

    Args:
        cls: a params dataclass.
        values: its YAML mapping (None: all defaults).
        where: the block's dotted name ("<top level>" for the whole file).
        source: the file the values come from, for the messages.

    Returns:
        A `cls` instance.

    Raises:
        ValueError: one sentence, e.g. "params.yaml: train.batch_size must be a positive
            integer, got 0."
    """
    if values is not None and not isinstance(values, dict):
        raise InvalidInputError(
            f"{source} block '{where}' must be a mapping of keys to values, got "
            f"{type(values).__name__} {values!r}; write it as `{where}:` followed by indented `key: value` lines."
        )
    values = dict(values or {})
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(map(str, set(values) - set(known)))
    if unknown:
        raise InvalidInputError(
            f"{source} block '{where}' has unknown key(s) {unknown}; "
            f"allowed keys are {sorted(known)}."
        )
    hints = _block_hints(cls)
    kwargs: dict[str, Any] = {}
    for name, value in values.items():
        hint = hints[name]
        dotted = name if where == "<top level>" else f"{where}.{name}"
        if dataclasses.is_dataclass(hint):
            kwargs[name] = build_block(hint, value, dotted, source)
            continue
        allowed = _field_range(known[name])
        try:
            kwargs[name] = _checked(value, hint, allowed)
        except _Mismatch:
            limit = f", at most {INT_LIMIT}" if isinstance(value, int) and abs(value) > INT_LIMIT else ""
            raise InvalidInputError(f"{source}: {dotted} must be {_describe(hint, allowed)}{limit}, got {_shown(value)}.") from None
    try:
        return cls(**kwargs)
    except ValueError as error:  # a check across fields in the dataclass itself
        message = str(error)
        raise InvalidInputError(message if message.startswith(source) else f"{source}: {message}") from None


def params_block(cls: type[T], values: dict[str, Any] | None, where: str, source: str) -> T:
    """One params block (e.g. `TrainParams`) from a mapping, checked as `params.yaml` is.

    For copies of a block stored elsewhere (model.json's `train`); `source` names that file.
    """
    return build_block(cls, values, where, source)


class _DuplicateKey(yaml.YAMLError):
    """A mapping key given twice in a YAML file."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (a block repeated, say).

    Plain YAML keeps the last value silently, so a block written twice would lose the first.
    """

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict:
        if isinstance(node, yaml.MappingNode):
            first_line: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    seen = key in first_line
                except TypeError:  # an unhashable key; SafeLoader refuses it itself
                    continue
                if seen:
                    raise _DuplicateKey(
                        f"line {key_node.start_mark.line + 1}: key {key if isinstance(key, str) else _shown(key)!r} "
                        f"appears a second time in the same mapping (first on line {first_line[key] + 1})"
                    )
                first_line[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path) -> Any:
    """Parse a YAML file; every problem becomes one sentence naming the file (and line)."""
    if path.is_dir():
        raise InvalidInputError(f"{path} is a folder, not a YAML file; pass the path of a YAML file (such as params.yaml).")
    if path.exists() and not stat.S_ISREG(path.stat().st_mode):  # a pipe or device: blocks, or never ends
        raise InvalidInputError(f"{path} is not a regular file (a named pipe, socket or device); pass a YAML file.")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise InvalidInputError(f"{path} is not UTF-8 text (byte {error.start}); save it as a UTF-8 YAML file.") from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except _DuplicateKey as error:
        raise InvalidInputError(f"{path}: {error}; keep one of them (YAML would silently drop the first).") from None
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "somewhere"
        problem = error.problem or error.context or "malformed YAML"
        raise InvalidInputError(f"{path}: {where}: {problem}; fix the YAML there (indentation, colons, quotes).") from None
    except yaml.YAMLError as error:
        raise InvalidInputError(f"{path} is not valid YAML ({str(error).splitlines()[0]}); fix the file.") from None


def dvc_stages(path: Path, fix: str) -> dict[str, dict]:
    """The `stages:` mapping of a dvc.yaml, read and checked (the report's DAG, `stego params --explain`).

    Raises:
        ValueError: one sentence ending in `fix` when the file is not YAML or holds no mapping of stages.
    """
    data = read_yaml(path) or {}
    stages = (data.get("stages") or {}) if isinstance(data, dict) else None
    if not isinstance(stages, dict) or not all(isinstance(spec, dict) for spec in stages.values()):
        raise InvalidInputError(
            f"{path} does not hold DVC stages (a `stages:` mapping of stage names to their cmd, deps and outs); {fix}."
        )
    return stages


# Read once: a wrong defaults file must fail at import, before any stage runs on it.
DEFAULTS: dict[str, Any] = read_yaml(DEFAULTS_FILE)


def published(block: str | None) -> Callable[[type[T]], type[T]]:
    """Class decorator (under `@dataclass`): each annotated field's default from `DEFAULTS[block]`.

    `block` None takes the top-level keys (`preset`, `seed`). YAML lists become tuples (the
    fields are tuples, so the dataclass stays hashable); mappings become fresh copies per
    instance, left out of the hash. A field the defaults file lacks is a packaging error.
    """
    values = DEFAULTS if block is None else DEFAULTS[block]

    def fill(cls: type[T]) -> type[T]:
        for name in cls.__dict__.get("__annotations__", {}):
            if name in cls.__dict__:  # a nested block (default_factory) keeps its own default
                continue
            if name not in values:
                raise KeyError(f"{DEFAULTS_FILE} has no {block or 'top-level'} key {name!r}; every field needs its default there.")
            value = values[name]
            if isinstance(value, dict):
                default = field(default_factory=functools.partial(copy.deepcopy, value), hash=False)
            else:
                default = tuple(value) if isinstance(value, list) else value
            setattr(cls, name, default)
        return cls

    return fill
