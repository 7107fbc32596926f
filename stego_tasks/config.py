"""Typed views of `params.yaml`: one frozen dataclass per block, one block per stage.

The defaults below are the published STEGO settings (reference doc, section 5); the
project's `params.yaml` overrides only what a corpus needs. A stage reads its own block
(plus `seed`, `corpus` or `backbone` where it says so in `dvc.yaml`), so DVC can tell
exactly which stages a changed key makes stale.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml


@dataclass(frozen=True)
class DemoDataParams:
    """The bundled synthetic demo corpus that stage `demo_data` writes (`stego demo-data`).

    Its options (`--n-train`, `--n-val`, `--size`, `--seed`) override these when given.
    """

    n_train: int = 48
    n_val: int = 16
    size: int = 128
    seed: int = 0


@dataclass(frozen=True)
class IngestParams:
    """Corpus scan: images smaller than `min_size` pixels on a side are quarantined.

    At least 16, the smallest image the later stages decode.
    """

    min_size: int = 16


@dataclass(frozen=True)
class CorpusParams:
    """Where the images are and how their labels read.

    `demo` marks the bundled synthetic corpus: only there may a missing backbone
    checkpoint fall back to random weights.
    """

    root: str = "data/demo"
    n_classes: int = 5
    ignore_index: int = 255
    class_names: tuple[str, ...] = ()
    demo: bool = False

    def __post_init__(self) -> None:
        if self.n_classes < 1 or self.n_classes > 255:
            raise ValueError(f"corpus.n_classes must be between 1 and 255, got {self.n_classes}.")
        if self.class_names and len(self.class_names) != self.n_classes:
            raise ValueError(
                f"corpus.class_names lists {len(self.class_names)} names but corpus.n_classes is "
                f"{self.n_classes}; give one name per class or leave class_names empty."
            )


@dataclass(frozen=True)
class BackboneParams:
    """Which frozen ViT and where its weights come from ("auto", "random" or a file path)."""

    name: str = "dino_vits8"
    weights: str = "auto"


@dataclass(frozen=True)
class ExtractParams:
    """Feature extraction: square resolution, five-crop for train, batch = one Zarr chunk.

    `resolution` is the training crops' side (published: 224); `val_resolution` the side of
    the centre-cropped evaluation images (the reference evaluates at 320), also used by
    `stego predict` for the shorter image side. Null means the same as `resolution`.
    `amp` runs the backbone under bfloat16 autocast on CUDA (ignored on the CPU; the
    features are stored as float16 either way); `compile` wraps it in `torch.compile`.
    `preprocess` is "reference" (the STEGO code's exact inputs: five-crop JPEG round trip,
    NEAREST resize, DINO's position-embedding resampling) or "antialias" (bilinear, no JPEG,
    timm's resampling); see `stego_tasks/preprocess.py`.
    """

    resolution: int = 224
    val_resolution: int | None = 320
    five_crop: bool = True
    crop_ratio: float = 0.5
    batch_size: int = 8
    flip: bool = True
    device: str = "auto"
    amp: bool = True
    compile: bool = False
    preprocess: str = "reference"
    # Threads decoding and preprocessing images ahead of the backbone; where work runs, not
    # what it computes: not in the store's fingerprint, not a DVC param (dvc.yaml).
    decode_workers: int = 2
    # Codec of the stored features (feats, feats_flip); all lossless. zstd: zarr's default;
    # none: about 10 % larger, fastest to read and write; blosc-lz4 / blosc-zstd: byte- or
    # bit-shuffled, smaller (benchmarks/results.md). Part of the fingerprint: a change rebuilds.
    compression: typing.Literal["zstd", "none", "blosc-lz4", "blosc-zstd"] = "zstd"

    def __post_init__(self) -> None:
        if self.preprocess not in ("reference", "antialias"):
            raise ValueError(f"extract.preprocess must be 'reference' or 'antialias', got {self.preprocess!r}.")


@dataclass(frozen=True)
class KnnParams:
    """Neighbours kept per training crop (the reference keeps 7 for positives)."""

    k: int = 7


@dataclass(frozen=True)
class TrainParams:
    """Head and probe training; published defaults (reference doc section 5).

    `shifts` is the three b's, or "auto": each at the `shift_quantile` of its correlation
    distribution on a sample of the training features (`stego_tasks/shift_stats.py`).
    `select` is "last" (the final head, no labels used) or "best" (the reference's
    protocol: cluster mIoU on val every `select_every` steps, keep the best; uses labels).
    `probe_init` "codes" refits the cluster probe on the final codes with
    `probe_restarts` data-initialised k-means restarts after training; "random" keeps the
    probe trained from randn centroids alongside the head, as the reference does.
    """

    n_codes: int = 70
    dropout: float = 0.1
    extra_clusters: int = 0
    steps: int = 5000
    batch_size: int = 16
    lr: float = 5e-4
    probe_lr: float = 5e-3
    feature_samples: int = 11
    neg_samples: int = 5
    pointwise: bool = True
    zero_clamp: bool = True
    stabilize: bool = False
    weights: tuple[float, float, float] = (0.67, 0.25, 0.63)
    shifts: tuple[float, float, float] | str = (0.18, 0.12, 0.46)
    shift_quantile: float = 0.5
    device: str = "auto"
    log_every: int = 10
    checkpoint_every: int = 500
    select: str = "last"
    select_every: int = 100
    probe_init: str = "random"
    probe_restarts: int = 5
    # Threads reading batches ahead of the step (0: read in the loop's thread). Changes no
    # result (each step's batch depends on (seed, step) alone): not a DVC param, and free
    # on --resume (train.RESUME_FREE_KEYS).
    readers: int = 2

    def __post_init__(self) -> None:
        choices = {"select": ("last", "best"), "probe_init": ("random", "codes")}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"train.{key} must be one of {list(allowed)}, got {getattr(self, key)!r}.")
        if isinstance(self.shifts, str) and self.shifts != "auto":
            raise ValueError(f"train.shifts must be a list of three numbers or 'auto', got {self.shifts!r}.")
        if not 0.0 <= self.shift_quantile <= 1.0:
            raise ValueError(f"train.shift_quantile must be between 0 and 1, got {self.shift_quantile}.")


@dataclass(frozen=True)
class ClusterParams:
    """Prediction: flip averaging, cluster-probe temperature, k-means baseline iterations."""

    flip: bool = True
    alpha: float = 2.0
    kmeans_iters: int = 50
    kmeans_samples: int = 100_000


@dataclass(frozen=True)
class CRFParams:
    """Dense CRF settings; the defaults are the published STEGO ones (`stego_tasks.crf` runs them).

    Attributes:
        iterations: Mean-field inference steps.
        gaussian_sxy: Spatial std (pixels) of the smoothness kernel.
        gaussian_compat: Weight of the smoothness kernel.
        bilateral_sxy: Spatial std (pixels) of the appearance kernel.
        bilateral_srgb: Colour std (0..255 units) of the appearance kernel.
        bilateral_compat: Weight of the appearance kernel.
    """

    iterations: int = 10
    gaussian_sxy: float = 1
    gaussian_compat: float = 3
    bilateral_sxy: float = 67
    bilateral_srgb: float = 3
    bilateral_compat: float = 4


@dataclass(frozen=True)
class CrfParamsBlock(CRFParams):
    """Dense CRF: the published parameters (`crf.CRFParams`) plus the process pool size."""

    workers: int = 2


@dataclass(frozen=True)
class EvaluateParams:
    """Reports: how many overlay images to draw."""

    n_overlays: int = 6


@dataclass(frozen=True)
class ReportParams:
    """The HTML report: at most `max_overlays` overlay panels and `max_quarantine_rows` quarantine rows.

    Both keep the page a few MB however many overlays or quarantined files a run has.
    """

    max_overlays: int = 48
    max_quarantine_rows: int = 500


@dataclass(frozen=True)
class DaskParams:
    """Dask: `address` None runs a local cluster of `n_workers` processes."""

    address: str | None = None
    n_workers: int = 1
    threads_per_worker: int = 2


@dataclass(frozen=True)
class DemoParams:
    """Overrides of the `extract` and `train` blocks that apply only while `corpus.demo` is true.

    The demo's 128 px synthetic images need small sizes and few steps to finish in minutes
    on 2 CPUs; keeping them here means any other corpus gets the published values of the
    blocks themselves (224 / 320 px, 5000 steps) without the user unsetting anything.
    """

    # Left out of the hash (dicts have none); Params stays hashable, equality still compares them.
    extract: dict[str, Any] = field(default_factory=dict, hash=False)
    train: dict[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        for block, cls in (("extract", ExtractParams), ("train", TrainParams)):
            overrides = getattr(self, block)
            if not isinstance(overrides, dict):
                raise ValueError(f"params.yaml demo.{block} must be a mapping of {block} keys, got {overrides!r}.")
            unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(cls)})
            if unknown:
                raise ValueError(f"params.yaml demo.{block} has unknown key(s) {unknown}; use keys of the {block} block.")


@dataclass(frozen=True)
class Params:
    """The whole `params.yaml`.

    `preset` names the published setting the file was written from (`stego_tasks/presets/`),
    or "custom"; it is recorded in the metrics and the report.
    """

    preset: str = "custom"
    seed: int = 0
    demo_data: DemoDataParams = field(default_factory=DemoDataParams)
    corpus: CorpusParams = field(default_factory=CorpusParams)
    ingest: IngestParams = field(default_factory=IngestParams)
    backbone: BackboneParams = field(default_factory=BackboneParams)
    extract: ExtractParams = field(default_factory=ExtractParams)
    knn: KnnParams = field(default_factory=KnnParams)
    train: TrainParams = field(default_factory=TrainParams)
    cluster: ClusterParams = field(default_factory=ClusterParams)
    crf: CrfParamsBlock = field(default_factory=CrfParamsBlock)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)
    report: ReportParams = field(default_factory=ReportParams)
    dask: DaskParams = field(default_factory=DaskParams)
    demo: DemoParams = field(default_factory=DemoParams)


T = TypeVar("T")


def apply_demo_overrides(values: dict[str, Any]) -> dict[str, Any]:
    """The params mapping with its `demo` block merged over `extract` / `train` when `corpus.demo` is true.

    Args:
        values: a parsed params.yaml mapping.

    Returns:
        A new mapping; unchanged (but for a copy) when the corpus is not the demo.
    """
    values = dict(values)
    demo = values.get("demo") or {}
    corpus = values.get("corpus") or {}
    if not (isinstance(corpus, dict) and corpus.get("demo") is True and isinstance(demo, dict)):
        return values
    for block in ("extract", "train"):
        overrides = demo.get(block) or {}
        if isinstance(overrides, dict) and overrides:
            base = values.get(block) or {}
            values[block] = {**(base if isinstance(base, dict) else {}), **overrides}
    return values


# --- checking values against the fields' annotations ----------------------------------


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

# Ranges by field name, in whichever block the field is (a field's own `metadata={"range":
# _Range(...)}` takes precedence). Sizes, counts and rates must be positive; a field not
# named here has only its type checked.
FIELD_RANGES: dict[str, _Range] = {
    **dict.fromkeys(
        (
            "batch_size", "steps", "n_codes", "k", "iterations", "workers", "resolution", "val_resolution",
            "n_workers", "threads_per_worker", "kmeans_iters", "kmeans_samples", "feature_samples",
            "neg_samples", "log_every", "select_every", "probe_restarts", "decode_workers",
            "lr", "probe_lr", "alpha", "gaussian_sxy", "bilateral_sxy", "bilateral_srgb",
            "max_overlays", "max_quarantine_rows",
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
    "min_size": _Range(16),
}


class _Mismatch(Exception):
    """A value that does not fit its annotation (turned into one sentence by `_build`)."""


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


def _checked(value: Any, hint: Any, allowed: _Range | None) -> Any:
    """`value` converted to annotation `hint` (lists to tuples, ints to floats); else `_Mismatch`."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any or hint is object:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool) and (allowed is None or allowed.admits(value)):
            return value
    elif hint is float:
        if (
            isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
            and (allowed is None or allowed.admits(value))
        ):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    elif hint is type(None):
        if value is None:
            return None
    elif origin in (typing.Union, types.UnionType):
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


def _build(cls: type[T], values: dict[str, Any] | None, where: str, source: str = "params.yaml") -> T:
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
        raise ValueError(
            f"{source} block '{where}' must be a mapping of keys to values, got "
            f"{type(values).__name__} {values!r}; write it as `{where}:` followed by indented `key: value` lines."
        )
    values = dict(values or {})
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(map(str, set(values) - set(known)))
    if unknown:
        raise ValueError(
            f"{source} block '{where}' has unknown key(s) {unknown}; "
            f"allowed keys are {sorted(known)}."
        )
    hints = _block_hints(cls)
    kwargs: dict[str, Any] = {}
    for name, value in values.items():
        hint = hints[name]
        dotted = name if where == "<top level>" else f"{where}.{name}"
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value, dotted, source)
            continue
        allowed = _field_range(known[name])
        try:
            kwargs[name] = _checked(value, hint, allowed)
        except _Mismatch:
            raise ValueError(f"{source}: {dotted} must be {_describe(hint, allowed)}, got {_shown(value)}.") from None
    try:
        return cls(**kwargs)
    except ValueError as error:  # a check across fields in the dataclass itself
        message = str(error)
        raise ValueError(message if message.startswith(source) else f"{source}: {message}") from None


def params_block(cls: type[T], values: dict[str, Any] | None, where: str, source: str) -> T:
    """One params block (e.g. `TrainParams`) from a mapping, checked as `params.yaml` is.

    For copies of a block stored elsewhere (model.json's `train`); `source` names that file.
    """
    return _build(cls, values, where, source)


def params_from_dict(values: dict[str, Any], source: str = "params.yaml") -> Params:
    """Build `Params` from a parsed `params.yaml` mapping, rejecting unknown keys and ill-typed values.

    Every value is checked against its field's annotation (booleans must be YAML
    booleans, integers integers, lists lists of the right length) and, for sizes and
    the like, its range (`FIELD_RANGES`).

    Args:
        values: the YAML mapping (blocks may be missing; defaults fill them).
        source: the file the mapping was read from, named in error messages.

    Returns:
        A frozen `Params`.

    Raises:
        ValueError: one sentence naming the key, what it must be and what it is.
    """
    if not isinstance(values, dict):
        raise ValueError(f"{source} must hold a mapping of parameter blocks, not {type(values).__name__}.")
    return _build(Params, apply_demo_overrides(values), "<top level>", source)


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


def _read_yaml(path: Path) -> Any:
    """Parse a YAML file; every problem becomes one sentence naming the file (and line)."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path} is not UTF-8 text (byte {error.start}); save it as a UTF-8 YAML file.") from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except _DuplicateKey as error:
        raise ValueError(f"{path}: {error}; keep one of them (YAML would silently drop the first).") from None
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "somewhere"
        problem = error.problem or error.context or "malformed YAML"
        raise ValueError(f"{path}: {where}: {problem}; fix the YAML there (indentation, colons, quotes).") from None
    except yaml.YAMLError as error:
        raise ValueError(f"{path} is not valid YAML ({str(error).splitlines()[0]}); fix the file.") from None


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read `params.yaml` (or defaults when the file does not exist), checking every value.

    Args:
        path: the YAML file.

    Returns:
        A frozen `Params`.

    Raises:
        ValueError: one sentence: a folder instead of a file, malformed YAML (with its
            line), a key given twice, an unknown key, or a value of the wrong type or range.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder, not a params file; pass the path of a YAML file such as params.yaml.")
    if not path.exists():
        return Params()
    values = _read_yaml(path)
    return params_from_dict({} if values is None else values, source=str(path))


def params_to_dict(params: Any) -> dict[str, Any]:
    """A JSON-ready dict of a params dataclass (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(params)))


class UndeclaredParamError(RuntimeError):
    """A stage read a params key that its DVC stage does not declare (see `declared_view`)."""


_VIEW_CLASSES: dict[tuple[type, frozenset[str]], type] = {}


def _view_class(cls: type, keys: frozenset[str]) -> type:
    if (cls, keys) not in _VIEW_CLASSES:
        hidden = frozenset(f.name for f in dataclasses.fields(cls)) - keys

        def __getattribute__(self: Any, name: str) -> Any:  # noqa: N807 - the dunder being overridden
            if name in hidden:
                raise UndeclaredParamError(
                    f"this stage reads {cls.__name__}.{name}, which its dvc.yaml entry does not declare "
                    f"(it declares {sorted(keys)}); add the key to the stage's params in dvc.yaml."
                )
            return object.__getattribute__(self, name)

        _VIEW_CLASSES[cls, keys] = type(f"Declared{cls.__name__}", (cls,), {"__getattribute__": __getattribute__})
    return _VIEW_CLASSES[cls, keys]


def declared_view(block: T, keys: tuple[str, ...]) -> T:
    """A copy of params block `block` of which only `keys` can be read.

    A stage that declares some keys of a block in dvc.yaml (e.g. `corpus.root`, not the
    whole `corpus` block) hands the library this view instead of the block: reading any
    other key raises `UndeclaredParamError` naming it, so DVC tracks every value the stage
    can use. The view is an instance of the block's class (the other fields hold defaults
    and cannot be read).

    Args:
        block: a params dataclass instance.
        keys: the field names the stage declares.

    Returns:
        The view.
    """
    cls = block.__class__  # not type(): a recording proxy in tests/test_contracts.py names its block's class here
    view = cls(**{key: getattr(block, key) for key in keys})
    object.__setattr__(view, "__class__", _view_class(cls, frozenset(keys)))
    return view
