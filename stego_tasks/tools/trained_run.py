"""A finished run, loaded for inference: its head and probes, backbone and cluster-to-class map.

`load_run` reads what the pipeline wrote (`artifacts/model/`, `artifacts/assignment.json`, and
the alpha, flip and CRF settings the cluster and crf stages recorded in their stores; see
`run_settings`) and rebuilds the backbone the head was trained on, from the weights source the
run recorded. `stego predict` and notebooks start here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr

from stego_tasks.config import ClusterParams, CRFParams
from stego_tasks.errors import InvalidInputError, MissingInputError
from stego_tasks.method.backbone import Backbone, create_seeded_backbone
from stego_tasks.method.model import MODEL_JSON, MODEL_WEIGHTS, StegoModel, holds_model, load_model
from stego_tasks.method.weights import WeightsNotFoundError, weights_argument
from stego_tasks.params_schema import params_block
from stego_tasks.paths import PATHS, run_path
from stego_tasks.runtime import atomic
from stego_tasks.runtime.devices import resolve_device
from stego_tasks.runtime.memory import check_fits, image_batch_bytes
from stego_tasks.tools.cluster_names import ClusterNames, load_names

log = logging.getLogger("stego")

UNMATCHED = 255


@dataclass
class Run:
    """What prediction needs from a finished run.

    Attributes:
        model: head and probes, eval mode, on `device`.
        backbone: the frozen ViT the head was trained on, on `device`.
        resolution: shorter image side fed to the backbone, in pixels.
        device: where the networks run.
        alpha: cluster-probe softmax temperature (the run's `cluster.alpha`, as its
            cluster stage recorded it).
        crf_params: the run's CRF parameters, as its crf stage recorded them.
        cluster_to_class: int64 [n_clusters], class per cluster, -1 when unmatched; None
            when the run has no assignment (no labels were evaluated).
        class_names: one name per class (empty without an assignment).
        amp: run the backbone under bfloat16 autocast on CUDA, as `extract.amp` does when
            the features are stored (no effect on the CPU).
        model_dir: the model folder the run was loaded from (None when built by hand);
            `stego predict` records it in the folders it writes.
        preprocess: the run's `extract.preprocess`; "reference" resizes new images with
            NEAREST, as its val images were.
        flip: whether the run's cluster stage flip-averaged (`stego predict` does too,
            unless told not to).
        names: the run's names file (`cluster_names.yaml`) when it names or ignores any
            cluster; `stego predict` then writes named class maps.
    """

    model: StegoModel
    backbone: Backbone
    resolution: int
    device: torch.device
    alpha: float = 2.0
    crf_params: CRFParams = field(default_factory=CRFParams)
    cluster_to_class: np.ndarray | None = None
    class_names: tuple[str, ...] = ()
    amp: bool = True
    model_dir: Path | None = None
    preprocess: str = "antialias"
    flip: bool = True
    names: ClusterNames | None = None

    @property
    def n_clusters(self) -> int:
        """Number of cluster-probe centroids."""
        return self.model.cluster_probe.n_clusters


def _model_dir(run_dir: Path) -> Path:
    for candidate in (run_path(run_dir, "model"), run_dir):
        if holds_model(candidate):
            return candidate
    raise MissingInputError(
        f"{run_dir} holds no trained model ({PATHS['model']}/{MODEL_JSON} + {MODEL_WEIGHTS}); "
        "pass --run the project folder of a run whose `dvc repro` (or `stego train`) finished."
    )


def _weights_for(info: dict, project: Path) -> str:
    """Map the recorded `backbone_weights` to a `create_backbone` weights argument (paths from `project`)."""
    source = info.get("backbone_weights")
    try:
        weights = weights_argument(source)
    except ValueError:
        raise InvalidInputError(
            f"{MODEL_JSON} records backbone_weights {source!r}, not 'file:<path>', 'hub-cache', "
            "'hub-download' or 'random'; pass --weights PATH to the checkpoint the run used."
        ) from None
    if not source.startswith("file:"):
        return weights
    recorded = Path(weights)
    # DVC runs stages in the project folder, so a relative path is relative to it.
    for path in (recorded,) if recorded.is_absolute() else (project / recorded, recorded):
        if path.is_file():
            return str(path)
    raise MissingInputError(
        f"The run's backbone checkpoint {str(recorded)!r} ({MODEL_JSON} backbone_weights) does "
        "not exist here; pass --weights PATH to the checkpoint the run was trained with."
    )


def _create_backbone(name: str, weights: str, source: str, pos_embed: str = "timm") -> Backbone:
    if weights == "random":
        banner = "=" * 78
        log.warning(
            "%s\nRANDOM BACKBONE: %s runs on random weights; these segments exercise "
            "the code and mean nothing.\n%s",
            banner, name, banner,
        )
    try:
        # Seeded exactly as `extract` builds it, so random weights are the net the head was trained on.
        return create_seeded_backbone(name, weights=weights, pos_embed=pos_embed)
    except WeightsNotFoundError as error:
        raise WeightsNotFoundError(
            f"No weights for the run's backbone {name} (trained with {source} weights) in the "
            "Hugging Face hub cache and the hub cannot be used; pass --weights PATH to a local checkpoint."
        ) from error


def _read_assignment(path: Path, n_clusters: int, info: dict) -> tuple[np.ndarray | None, tuple[str, ...]]:
    if not path.is_file():
        return None, ()
    redo = "rerun `stego evaluate` to write it again"
    data = atomic.read_json_object(path, "evaluate", redo)
    if data.get("cluster_to_class") is None:  # evaluated without labels: nothing to map
        return None, ()
    raw = data["cluster_to_class"]
    if not isinstance(raw, list) or not all(isinstance(c, int) and not isinstance(c, bool) for c in raw):
        raise InvalidInputError(f"{path}: cluster_to_class must be a list of integers, got {str(raw)[:60]}; {redo}.")
    mapping = np.asarray(raw, dtype=np.int64).reshape(-1)
    n_classes = int(info["n_classes"])
    if mapping.shape != (n_clusters,) or mapping.min() < -1 or mapping.max() >= min(n_classes, UNMATCHED):
        raise InvalidInputError(
            f"{path} maps {mapping.size} clusters to classes {sorted(set(mapping.tolist()))[:8]}, "
            f"but the model has {n_clusters} clusters and {n_classes} classes; rerun `stego evaluate`."
        )
    names = data.get("class_names") or info.get("class_names") or []
    names = list(names) if isinstance(names, list) else []
    if len(names) != n_classes:
        names = [f"class_{j}" for j in range(n_classes)]
    return mapping, tuple(str(name) for name in names)


@dataclass(frozen=True)
class RunSettings:
    """How a run's own stages predicted, as they recorded it (not as params.yaml says today).

    Attributes:
        alpha: cluster-probe temperature, from the cluster stage's predictions store.
        flip: whether the cluster stage flip-averaged the codes (same store).
        crf_params: the CRF parameters, from the crf stage's store.
    """

    alpha: float = 2.0
    flip: bool = True
    crf_params: CRFParams = field(default_factory=CRFParams)


def _store_attrs(path: Path) -> dict:
    """The root attributes of a Zarr store; {} when there is none (the stage has not run)."""
    if not path.is_dir():
        return {}
    try:
        return dict(zarr.open_group(str(path), mode="r").attrs)
    except Exception as error:  # noqa: BLE001 - a damaged store: fall back, say so
        log.warning("predict: cannot read %s (%s: %s); using the published settings", path, type(error).__name__, error)
        return {}


def run_settings(project_dir: Path) -> RunSettings:
    """The alpha, flip and CRF parameters each stage of the run in `project_dir` recorded.

    Each value comes from the store of the stage that used it (the cluster stage's
    predictions, the crf stage's refined predictions; `stego_tasks/paths.yaml`), so a later
    edit of params.yaml never changes how an earlier run predicts. A value a run did not
    record (its stage has not run) is the published default.

    Raises:
        ValueError: a recorded value of the wrong type or range.
    """
    project_dir = Path(project_dir)
    predictions = _store_attrs(run_path(project_dir, "predictions"))
    refined = _store_attrs(run_path(project_dir, "crf_out"))
    defaults = RunSettings()
    alpha = predictions.get("alpha", defaults.alpha)
    flip = predictions.get("flip", defaults.flip)
    source = str(run_path(project_dir, "predictions"))
    checked = params_block(ClusterParams, {"alpha": alpha, "flip": flip}, "cluster", source)
    crf = refined.get("crf")
    crf_params = (
        params_block(CRFParams, crf, "crf", str(run_path(project_dir, "crf_out")))
        if isinstance(crf, dict) else defaults.crf_params
    )
    return RunSettings(alpha=checked.alpha, flip=checked.flip, crf_params=crf_params)


def project_of(run_dir: Path, model_dir: Path) -> Path:
    """The project folder of a run given as its project folder or as its model folder."""
    if model_dir != run_dir:
        return run_dir
    depth = len(Path(PATHS["model"]).parts)
    resolved = model_dir.resolve()
    return resolved.parents[depth - 1] if len(resolved.parents) >= depth else resolved


def load_run(
    run_dir: Path, weights: str | None = None, *, device: str = "auto", resolution: int | None = None
) -> Run:
    """Load the model, backbone and cluster-to-class assignment of a finished run.

    Args:
        run_dir: the project folder after `dvc repro` (holding `artifacts/model/`), or the
            model folder itself.
        weights: backbone checkpoint path, "auto" or "random" overriding the recorded
            `backbone_weights` ("file:<path>" -> that path, "hub-*" -> "auto").
        device: "auto", "cpu", "cuda", ...
        resolution: shorter image side fed to the backbone; default the run's own.

    Returns:
        A `Run` with both networks in eval mode on `device`.

    Raises:
        FileNotFoundError: no trained model, or the recorded checkpoint file is gone.
        ValueError: bad resolution, a backbone that does not fit the head, a bad assignment.
        WeightsNotFoundError: hub weights recorded but not available.
    """
    run_dir = Path(run_dir)
    model_dir = _model_dir(run_dir)
    model = load_model(model_dir)
    info = model.info
    name = info.get("backbone")
    if not name:
        raise InvalidInputError(f"{model_dir / MODEL_JSON} does not name its backbone; rerun `stego train`.")
    source = str(info.get("backbone_weights"))
    # The position-embedding resampling the features were stored with (`extract.preprocess`).
    pos_embed = str(info.get("pos_embed") or "timm")
    # Relative paths the run recorded are relative to its project folder, however the run was given.
    project = project_of(run_dir, model_dir)
    backbone = _create_backbone(name, weights if weights is not None else _weights_for(info, project), source, pos_embed)
    _check_backbone_fits(backbone, info, given_weights=weights is not None)
    size = int(resolution if resolution is not None else info.get("resolution") or 0)
    if size < backbone.patch_size:
        raise InvalidInputError(
            f"Resolution {size} is smaller than the patch size {backbone.patch_size} of {name} "
            "(or the run records none); pass --resolution N with N >= the patch size."
        )
    check_fits(f"--resolution {size}", image_batch_bytes(1, size, size), "pass a smaller --resolution")
    if model.cluster_probe.n_clusters > 256:
        raise InvalidInputError(f"The run has {model.cluster_probe.n_clusters} clusters; predict writes at most 256.")
    mapping, names = _read_assignment(run_path(project, "assignment"), model.cluster_probe.n_clusters, info)
    settings = run_settings(project)
    user_names = load_names(run_path(project, "cluster_names"), model.cluster_probe.n_clusters)
    torch_device = resolve_device(device)
    return Run(
        model=model.to(torch_device).eval(),
        backbone=backbone.to(torch_device),
        resolution=size,
        device=torch_device,
        alpha=settings.alpha,
        crf_params=settings.crf_params,
        flip=settings.flip,
        cluster_to_class=mapping,
        class_names=names,
        model_dir=model_dir.resolve(),
        preprocess=str(info.get("preprocess") or "antialias"),
        names=None if user_names.is_empty else user_names,
    )


def _check_backbone_fits(backbone: Backbone, info: dict[str, Any], given_weights: bool) -> None:
    """Refuse a backbone that is not the one the run's features came from (content or width)."""
    recorded = info.get("backbone_weights_sha256")
    if recorded and backbone.weights_sha256 != recorded:
        source = str(info.get("backbone_weights"))
        given = "the checkpoint passed with --weights" if given_weights else f"the run's checkpoint ({source})"
        raise InvalidInputError(
            f"{given} is not the file the run's features were extracted with (its content changed: sha256 "
            f"{str(backbone.weights_sha256)[:12]}... instead of {recorded[:12]}...), so the head would be paired with "
            "another backbone; pass --weights PATH to the original checkpoint, or rerun `dvc repro` to extract and train "
            "with the new one."
        )
    if backbone.embed_dim != info["in_dim"]:
        raise InvalidInputError(
            f"Backbone {info.get('backbone')} gives {backbone.embed_dim}-d features but the head expects "
            f"{info['in_dim']}-d ones; pass --weights for the backbone the run was trained on."
        )
