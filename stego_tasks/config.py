"""Typed views of `params.yaml`: one frozen dataclass per block, one block per stage.

The dataclasses carry the types (and, through `FIELD_RANGES`, the ranges); their default
values are read once, at import, from the published defaults file
`stego_tasks/presets/defaults.yaml` (reference doc, section 5), so every number is written
there alone. The project's `params.yaml` overrides only what a corpus needs. A stage reads its own block
(plus `seed`, `corpus` or `backbone` where it says so in `dvc.yaml`), so DVC can tell
exactly which stages a changed key makes stale.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stego_tasks.errors import InvalidInputError
from stego_tasks.params_schema import DEFAULTS_FILE, build_block, published, read_yaml

# The published settings (package data): the defaults file (`DEFAULTS_FILE`, read once into
# `DEFAULTS`; `published` fills each block's dataclass defaults from it), and one file per
# dataset and backbone stating only what differs from it.
PRESETS_DIR = DEFAULTS_FILE.parent
DEFAULTS_NAME = DEFAULTS_FILE.stem

# `FIELD_RANGES` (the allowed values of sizes, rates and the like) and `params_block` (one
# block checked as params.yaml is) are part of this module's interface too.

@dataclass(frozen=True)
@published("demo_data")
class DemoDataParams:
    """The bundled synthetic demo corpus that stage `demo_data` writes (`stego demo-data`).

    Its options (`--n-train`, `--n-val`, `--size`, `--seed`) override these when given.
    """

    n_train: int
    n_val: int
    size: int
    seed: int


@dataclass(frozen=True)
@published("ingest")
class IngestParams:
    """Corpus scan: images smaller than `min_size` pixels on a side are quarantined.

    At least `params_schema.MIN_IMAGE_SIZE`, the smallest image the later stages decode.
    """

    min_size: int


@dataclass(frozen=True)
@published("corpus")
class CorpusParams:
    """Where the images are and how their labels read.

    `demo` marks the bundled synthetic corpus: only there may a missing backbone
    checkpoint fall back to random weights.
    """

    root: str
    n_classes: int
    ignore_index: int
    class_names: tuple[str, ...]
    demo: bool

    def __post_init__(self) -> None:
        if self.n_classes < 1 or self.n_classes > 255:
            raise InvalidInputError(f"corpus.n_classes must be between 1 and 255, got {self.n_classes}.")
        if self.class_names and len(self.class_names) != self.n_classes:
            raise InvalidInputError(
                f"corpus.class_names lists {len(self.class_names)} names but corpus.n_classes is "
                f"{self.n_classes}; give one name per class or leave class_names empty."
            )


@dataclass(frozen=True)
@published("backbone")
class BackboneParams:
    """Which frozen ViT and where its weights come from ("auto", "random" or a file path)."""

    name: str
    weights: str


@dataclass(frozen=True)
@published("extract")
class ExtractParams:
    """Feature extraction: square resolution, five-crop for train, batch = one Zarr chunk.

    `resolution` is the training crops' side (published: 224); `val_resolution` the side of
    the centre-cropped evaluation images (the reference evaluates at 320), also used by
    `stego predict` for the shorter image side. Null means the same as `resolution`.
    `amp` runs the backbone under bfloat16 autocast on CUDA (ignored on the CPU; the
    features are stored as float16 either way); `compile` wraps it in `torch.compile`.
    `preprocess` is "reference" (the STEGO code's exact inputs: five-crop JPEG round trip,
    NEAREST resize, DINO's position-embedding resampling) or "antialias" (bilinear, no JPEG,
    timm's resampling); see `stego_tasks/data/preprocess.py`.
    """

    resolution: int
    val_resolution: int | None
    five_crop: bool
    crop_ratio: float
    batch_size: int
    flip: bool
    device: str
    amp: bool
    compile: bool
    preprocess: str
    # Codec of the stored features (feats, feats_flip); all lossless. zstd: zarr's default;
    # none: about 10 % larger, fastest to read and write; blosc-lz4 / blosc-zstd: byte- or
    # bit-shuffled, smaller (benchmarks/results.md). Part of the fingerprint: a change rebuilds.
    compression: typing.Literal["zstd", "none", "blosc-lz4", "blosc-zstd"]

    def __post_init__(self) -> None:
        if self.preprocess not in ("reference", "antialias"):
            raise InvalidInputError(f"extract.preprocess must be 'reference' or 'antialias', got {self.preprocess!r}.")


@dataclass(frozen=True)
@published("knn")
class KnnParams:
    """Neighbours kept per training crop (the reference keeps 7 for positives)."""

    k: int


@dataclass(frozen=True)
@published("train")
class TrainParams:
    """Head and probe training; published defaults (reference doc section 5).

    `shifts` is the three b's, or "auto": each at the `shift_quantile` of its correlation
    distribution on a sample of the training features (`stego_tasks/method/shift_stats.py`).
    `select` is "last" (the final head, no labels used) or "best" (the reference's
    protocol: cluster mIoU on val every `select_every` steps, keep the best; uses labels).
    `probe_init` "codes" refits the cluster probe on the final codes with
    `probe_restarts` data-initialised k-means restarts after training; "random" keeps the
    probe trained from randn centroids alongside the head, as the reference does.
    """

    n_codes: int
    dropout: float
    extra_clusters: int
    steps: int
    batch_size: int
    lr: float
    probe_lr: float
    feature_samples: int
    neg_samples: int
    pointwise: bool
    zero_clamp: bool
    stabilize: bool
    weights: tuple[float, float, float]
    shifts: tuple[float, float, float] | str
    shift_quantile: float
    device: str
    log_every: int
    checkpoint_every: int
    select: str
    select_every: int
    probe_init: str
    probe_restarts: int

    def __post_init__(self) -> None:
        choices = {"select": ("last", "best"), "probe_init": ("random", "codes")}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise InvalidInputError(f"train.{key} must be one of {list(allowed)}, got {getattr(self, key)!r}.")
        if isinstance(self.shifts, str) and self.shifts != "auto":
            raise InvalidInputError(f"train.shifts must be a list of three numbers or 'auto', got {self.shifts!r}.")
        if not 0.0 <= self.shift_quantile <= 1.0:
            raise InvalidInputError(f"train.shift_quantile must be between 0 and 1, got {self.shift_quantile}.")


@dataclass(frozen=True)
@published("cluster")
class ClusterParams:
    """Prediction: flip averaging, cluster-probe temperature, k-means baseline iterations."""

    flip: bool
    alpha: float
    kmeans_iters: int
    kmeans_samples: int


@dataclass(frozen=True)
@published("crf")
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

    iterations: int
    gaussian_sxy: float
    gaussian_compat: float
    bilateral_sxy: float
    bilateral_srgb: float
    bilateral_compat: float


@dataclass(frozen=True)
@published("runtime")
class RuntimeParams:
    """How many threads and processes the stages use: where work runs, never what it computes.

    Never a DVC param (no stage declares this block), so changing it re-runs nothing; the
    results are byte for byte the same for any value (tests/pipeline/test_pipeline_no_effect_params.py).

    Attributes:
        decode_workers: extract's threads decoding and preprocessing images ahead of the backbone.
        writers: extract's threads encoding and writing finished chunks ("auto": the cores
            this process may run on).
        readers: train's threads reading batches ahead of the step (0: read in the loop's
            thread; each step's batch depends on (seed, step) alone).
        crf_workers: the crf stage's process pool (each image is refined alone).
    """

    decode_workers: int
    writers: int | typing.Literal["auto"]
    readers: int
    crf_workers: int

    def __post_init__(self) -> None:
        if self.writers != "auto" and (isinstance(self.writers, bool) or not isinstance(self.writers, int) or self.writers < 1):
            raise InvalidInputError(f"runtime.writers must be a positive integer or 'auto', got {self.writers!r}.")


@dataclass(frozen=True)
@published("evaluate")
class EvaluateParams:
    """Reports: how many overlay images to draw, and how many example images per cluster in the gallery."""

    n_overlays: int
    gallery_examples: int


@dataclass(frozen=True)
@published("report")
class ReportParams:
    """The HTML report: at most `max_overlays` overlay panels and `max_quarantine_rows` quarantine rows.

    Both keep the page a few MB however many overlays or quarantined files a run has.
    """

    max_overlays: int
    max_quarantine_rows: int


@dataclass(frozen=True)
@published("dask")
class DaskParams:
    """Dask: `address` None runs a local cluster of `n_workers` processes."""

    address: str | None
    n_workers: int
    threads_per_worker: int


@dataclass(frozen=True)
@published("demo")
class DemoParams:
    """Overrides of the `extract` and `train` blocks that apply only while `corpus.demo` is true.

    The demo's 128 px synthetic images need small sizes and few steps to finish in minutes
    on 2 CPUs; keeping them here means any other corpus gets the published values of the
    blocks themselves (224 / 320 px, 5000 steps) without the user unsetting anything.
    """

    # `published` leaves them out of the hash (dicts have none); Params stays hashable,
    # equality still compares them.
    extract: dict[str, Any]
    train: dict[str, Any]

    def __post_init__(self) -> None:
        for block, cls in (("extract", ExtractParams), ("train", TrainParams)):
            overrides = getattr(self, block)
            if not isinstance(overrides, dict):
                raise InvalidInputError(f"params.yaml demo.{block} must be a mapping of {block} keys, got {overrides!r}.")
            unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(cls)})
            if unknown:
                raise InvalidInputError(f"params.yaml demo.{block} has unknown key(s) {unknown}; use keys of the {block} block.")


@dataclass(frozen=True)
@published(None)
class Params:
    """The whole `params.yaml`.

    `preset` names the published setting the file was written from (`stego_tasks/presets/`),
    or "custom"; it is recorded in the metrics and the report.
    """

    preset: str
    seed: int
    demo_data: DemoDataParams = field(default_factory=DemoDataParams)
    corpus: CorpusParams = field(default_factory=CorpusParams)
    ingest: IngestParams = field(default_factory=IngestParams)
    backbone: BackboneParams = field(default_factory=BackboneParams)
    extract: ExtractParams = field(default_factory=ExtractParams)
    knn: KnnParams = field(default_factory=KnnParams)
    train: TrainParams = field(default_factory=TrainParams)
    cluster: ClusterParams = field(default_factory=ClusterParams)
    crf: CRFParams = field(default_factory=CRFParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)
    report: ReportParams = field(default_factory=ReportParams)
    dask: DaskParams = field(default_factory=DaskParams)
    runtime: RuntimeParams = field(default_factory=RuntimeParams)
    demo: DemoParams = field(default_factory=DemoParams)

    def __post_init__(self) -> None:
        clusters = self.corpus.n_classes + self.train.extra_clusters  # stored as 8-bit cluster ids and PNG palettes
        if clusters > 256:
            raise InvalidInputError(f"corpus.n_classes + train.extra_clusters is {clusters}, but cluster maps hold at most "
                                    f"256 clusters; set train.extra_clusters to at most {256 - self.corpus.n_classes}.")


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
        raise InvalidInputError(f"{source} must hold a mapping of parameter blocks, not {type(values).__name__}.")
    merged = apply_demo_overrides(values)
    if merged != values:  # a value the demo block overrides is checked too: it applies once corpus.demo is false
        build_block(Params, values, "<top level>", source)
    params = build_block(Params, merged, "<top level>", source)
    if params.preset not in preset_names():
        # The name is recorded in the metrics and the report as where the settings come from.
        raise InvalidInputError(
            f"{source}: preset {params.preset!r} is not a preset of this project; use one of {preset_names()} "
            "(`custom` for settings of your own)."
        )
    return params


def preset_names() -> list[str]:
    """Names of the bundled presets (`stego_tasks/presets/<name>.yaml`, not the defaults file), sorted."""
    names = (entry.name[: -len(".yaml")] for entry in PRESETS_DIR.iterdir() if entry.name.endswith(".yaml"))
    return sorted(name for name in names if name != DEFAULTS_NAME)


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
        raise InvalidInputError(f"{path} is a folder, not a params file; pass the path of a YAML file such as params.yaml.")
    if not path.exists():
        if path.is_symlink():  # the file was meant to be there: defaults would run silently without it
            raise InvalidInputError(f"{path} is a broken link (its target is missing, or it loops); point it at a params file.")
        return Params()
    values = read_yaml(path)
    return params_from_dict({} if values is None else values, source=str(path))


def params_to_dict(params: Any) -> dict[str, Any]:
    """A JSON-ready dict of a params dataclass (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(params)))
