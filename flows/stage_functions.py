"""Stage entry points shared by the CLI and the Prefect flows: params file + paths in, library call out.

Each function reads only the params blocks its DVC stage declares, so a function here,
its flow in `flows/<stage>.py`, its block in `params.yaml` and its stage in `dvc.yaml`
all tell the same story.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from stego_tasks.atomic import check_folder_output
from stego_tasks.config import load_params


def ingest(params_path: str, manifest: str, quarantine: str) -> dict[str, Any]:
    """Scan `corpus.root` into the manifest and quarantine list."""
    from stego_tasks.ingest import ingest as run

    params = load_params(params_path)
    return dataclasses.asdict(run(Path(params.corpus.root), Path(manifest), Path(quarantine)))


def validate(params_path: str, manifest: str, validation: str) -> dict[str, Any]:
    """Check the manifest and labels against the corpus' classes."""
    from stego_tasks.validate import validate as run

    params = load_params(params_path)
    return run(
        Path(manifest), Path(params.corpus.root), Path(validation),
        n_classes=params.corpus.n_classes, ignore_index=params.corpus.ignore_index,
    )


def extract(params_path: str, manifest: str, features: str, runner: Any = None) -> dict[str, Any]:
    """Embed every manifest image with the frozen backbone into the features store.

    `runner` (a `stego_tasks.extract.ChunkRunner`) says where the chunks run; by default
    the `dask` block decides (in-process, a local cluster, or `dask.address`).
    """
    from stego_tasks.extract import extract as run

    params = load_params(params_path)
    # The store is updated in place (resumable): never inside a folder that is not one.
    check_folder_output(features, ("zarr",), "a features store (Zarr)")
    summary = run(Path(manifest), Path(features), params.corpus, params.backbone, params.extract, params.dask, runner)
    return dataclasses.asdict(summary)


def knn(params_path: str, features: str, knn: str) -> dict[str, Any]:
    """Top-k neighbours of the training crops."""
    from stego_tasks.knn import knn_stage

    return knn_stage(Path(features), Path(knn), load_params(params_path).knn.k)


def train(
    params_path: str, features: str, knn: str, model: str, loss_log: str, resume: bool = False,
    shift_stats: str = "plots/shift_stats.csv",
) -> dict[str, Any]:
    """Train head and probes from stored features."""
    from stego_tasks.train import train as run

    params = load_params(params_path)
    check_folder_output(model, ("model",), "a model folder (model.json, checkpoint.pt)")
    trained = run(
        Path(features), Path(knn), Path(model), Path(loss_log), params.corpus, params.train, params.seed,
        resume=resume, shift_stats=Path(shift_stats),
    )
    return {"in_dim": trained.info["in_dim"], "steps": params.train.steps}


def cluster(params_path: str, features: str, model: str, predictions: str) -> dict[str, Any]:
    """Cluster, linear and k-means predictions for the validation split."""
    from stego_tasks.cluster import cluster as run

    params = load_params(params_path)
    return run(Path(features), Path(model), Path(predictions), params.cluster, params.seed)


def crf(params_path: str, features: str, predictions: str, crf_out: str) -> dict[str, Any]:
    """Dense-CRF refinement of the predictions."""
    from stego_tasks.crf import CRFParams, crf_stage

    params = load_params(params_path)
    block = params.crf
    crf_params = CRFParams(**{f.name: getattr(block, f.name) for f in dataclasses.fields(CRFParams)})
    return crf_stage(
        Path(features), Path(predictions), Path(crf_out), crf_params, workers=block.workers, dask=params.dask
    )


def evaluate(
    params_path: str, features: str, predictions: str, crf_out: str, scores: str, per_class: str, confusion: str,
    overlays: str, assignment: str,
) -> dict[str, Any]:
    """Scores, per-class IoU, confusion matrix and overlays."""
    from stego_tasks.evaluate import evaluate as run

    params = load_params(params_path)
    return run(
        Path(features), Path(predictions), Path(crf_out), Path(scores), Path(per_class), Path(confusion),
        Path(overlays), params.corpus, params.evaluate, Path(assignment), preset=params.preset,
    )
