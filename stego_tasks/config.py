"""Typed views of `params.yaml`: one frozen dataclass per block, one block per stage.

The defaults below are the published STEGO settings (reference doc, section 5); the
project's `params.yaml` overrides only what a corpus needs. A stage reads its own block
(plus `seed`, `corpus` or `backbone` where it says so in `dvc.yaml`), so DVC can tell
exactly which stages a changed key makes stale.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from stego_tasks.crf import CRFParams


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


@dataclass(frozen=True)
class KnnParams:
    """Neighbours kept per training crop (the reference keeps 7 for positives)."""

    k: int = 7


@dataclass(frozen=True)
class TrainParams:
    """Head and probe training; published defaults (reference doc section 5)."""

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
    shifts: tuple[float, float, float] = (0.18, 0.12, 0.46)
    device: str = "auto"
    log_every: int = 10
    checkpoint_every: int = 500


@dataclass(frozen=True)
class ClusterParams:
    """Prediction: flip averaging, cluster-probe temperature, k-means baseline iterations."""

    flip: bool = True
    alpha: float = 2.0
    kmeans_iters: int = 50
    kmeans_samples: int = 100_000


@dataclass(frozen=True)
class CrfParamsBlock(CRFParams):
    """Dense CRF: the published parameters (`crf.CRFParams`) plus the process pool size."""

    workers: int = 2


@dataclass(frozen=True)
class EvaluateParams:
    """Reports: how many overlay images to draw."""

    n_overlays: int = 6


@dataclass(frozen=True)
class DaskParams:
    """Dask: `address` None runs a local cluster of `n_workers` processes."""

    address: str | None = None
    n_workers: int = 1
    threads_per_worker: int = 2


@dataclass(frozen=True)
class Params:
    """The whole `params.yaml`."""

    seed: int = 0
    corpus: CorpusParams = field(default_factory=CorpusParams)
    backbone: BackboneParams = field(default_factory=BackboneParams)
    extract: ExtractParams = field(default_factory=ExtractParams)
    knn: KnnParams = field(default_factory=KnnParams)
    train: TrainParams = field(default_factory=TrainParams)
    cluster: ClusterParams = field(default_factory=ClusterParams)
    crf: CrfParamsBlock = field(default_factory=CrfParamsBlock)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)
    dask: DaskParams = field(default_factory=DaskParams)


T = TypeVar("T")


def _build(cls: type[T], values: dict[str, Any] | None, where: str) -> T:
    if values is not None and not isinstance(values, dict):
        raise ValueError(
            f"params.yaml block '{where}' must be a mapping of keys to values, got "
            f"{type(values).__name__} {values!r}; write it as `{where}:` followed by indented `key: value` lines."
        )
    values = dict(values or {})
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(
            f"params.yaml block '{where}' has unknown key(s) {unknown}; "
            f"allowed keys are {sorted(known)}."
        )
    kwargs: dict[str, Any] = {}
    for name, value in values.items():
        default = known[name].default
        if dataclasses.is_dataclass(known[name].default_factory if default is dataclasses.MISSING else default):
            kwargs[name] = _build(known[name].default_factory, value, name)  # type: ignore[arg-type]
        elif isinstance(value, list):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    return cls(**kwargs)


def params_from_dict(values: dict[str, Any]) -> Params:
    """Build `Params` from a parsed `params.yaml` mapping, rejecting unknown keys.

    Args:
        values: the YAML mapping (blocks may be missing; defaults fill them).

    Returns:
        A frozen `Params`.
    """
    return _build(Params, values, "<top level>")


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read `params.yaml` (or defaults when the file does not exist).

    Args:
        path: the YAML file.

    Returns:
        A frozen `Params`.
    """
    path = Path(path)
    if not path.exists():
        return Params()
    with path.open() as handle:
        values = yaml.safe_load(handle) or {}
    if not isinstance(values, dict):
        raise ValueError(f"{path} must hold a mapping of parameter blocks, not {type(values).__name__}.")
    return params_from_dict(values)


def params_to_dict(params: Any) -> dict[str, Any]:
    """A JSON-ready dict of a params dataclass (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(params)))
