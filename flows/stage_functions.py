"""Stage functions: params file + paths in, the library's stage function out; one per stage, named as it.

Each is declared once in `flows/registry.py`, from which its `stego` command, its Prefect
flow (the same typed signature) and its stage in `dvc.yaml` are derived. A parameter named
like a `stego_tasks/paths.yaml` key is that artifact's path; a line `name: text` under
`Args:` is the help of its command-line option. Each function reads only the params keys
its registry entry declares (tests/flows/test_contracts.py checks it). Where a
stage declares only some keys of a block (`corpus.root`, not `corpus`), the library gets a
`declared_view` of the block that refuses any other key. Path defaults are the layout of
`stego_tasks/paths.yaml`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from flows.declared_params import declared_view
from stego_tasks.config import DemoDataParams, load_params
from stego_tasks.params_schema import params_block
from stego_tasks.paths import PARAMS_FILE as PARAMS
from stego_tasks.paths import PATHS as P
from stego_tasks.runtime.atomic import check_folder_output


def demo_data(
    params_path: str = PARAMS, demo_corpus: str = P["demo_corpus"], n_train: int | None = None, n_val: int | None = None,
    size: int | None = None, seed: int | None = None,
) -> dict[str, Any]:
    """Write the synthetic demo corpus; the `demo_data` block's sizes unless given here.

    Args:
        n_train: training images (default: demo_data.n_train of the params file)
        n_val: validation images (default: demo_data.n_val of the params file)
        size: image side in pixels (default: demo_data.size of the params file)
        seed: seed of every draw (default: demo_data.seed of the params file)
    """
    from stego_tasks.demo_data import demo_data as run

    block = load_params(params_path).demo_data
    given = {"n_train": n_train, "n_val": n_val, "size": size, "seed": seed}
    # An option replaces its params key, so it is checked as that key is (type and range).
    chosen = {key: getattr(block, key) if value is None else value for key, value in given.items()}
    checked = params_block(DemoDataParams, chosen, "demo_data", "the options of `stego demo-data`")
    return run(Path(demo_corpus), **{key: getattr(checked, key) for key in chosen})


def ingest(params_path: str = PARAMS, manifest: str = P["manifest"], quarantine: str = P["quarantine"]) -> dict[str, Any]:
    """Scan `corpus.root` into the manifest and quarantine list."""
    from stego_tasks.ingest import ingest as run

    params = load_params(params_path)
    summary = run(Path(params.corpus.root), Path(manifest), Path(quarantine), min_size=params.ingest.min_size)
    return dataclasses.asdict(summary)


def validate(params_path: str = PARAMS, manifest: str = P["manifest"], validation: str = P["validation"]) -> dict[str, Any]:
    """Check the manifest and labels against the corpus' classes."""
    from stego_tasks.validate import validate as run

    params = load_params(params_path)
    return run(
        Path(manifest), Path(params.corpus.root), Path(validation),
        n_classes=params.corpus.n_classes, ignore_index=params.corpus.ignore_index,
        min_size=params.ingest.min_size,
    )


def weights(params_path: str = PARAMS, weights: str = P["weights"]) -> dict[str, Any]:
    """Record the backbone checkpoint's content hash."""
    from stego_tasks.weights import weights as run

    return run(load_params(params_path).backbone, Path(weights))


def extract(
    params_path: str = PARAMS, manifest: str = P["manifest"], features: str = P["features"], runner: Any = None,
) -> dict[str, Any]:
    """Embed every manifest image with the frozen backbone into the features store.

    `runner` (a `stego_tasks.extract.ChunkRunner`) says where the chunks run; by default
    the `dask` block decides (in-process, a local cluster, or `dask.address`).
    """
    from stego_tasks.extract import extract as run

    params = load_params(params_path)
    # The store is updated in place (resumable): never inside a folder that is not one.
    check_folder_output(features, ("zarr",), "a features store (Zarr)")
    corpus = declared_view(params.corpus, ("root", "ignore_index", "demo"))
    summary = run(Path(manifest), Path(features), corpus, params.backbone, params.extract, params.dask, runner,
                  params.runtime)
    return dataclasses.asdict(summary)


def knn(params_path: str = PARAMS, features: str = P["features"], knn: str = P["knn"]) -> dict[str, Any]:
    """Top-k neighbours of the training crops."""
    from stego_tasks.knn import knn as run

    return run(Path(features), Path(knn), load_params(params_path).knn.k)


def train(
    params_path: str = PARAMS, features: str = P["features"], knn: str = P["knn"], model: str = P["model"],
    loss_log: str = P["loss_log"], shift_stats: str = P["shift_stats"], resume: bool = False,
) -> dict[str, Any]:
    """Train head and probes from stored features.

    Args:
        resume: continue from the model folder's checkpoint.pt
    """
    from stego_tasks.train import train as run

    params = load_params(params_path)
    from stego_tasks.method.model import CHECKPOINT, MODEL_JSON, MODEL_KIND

    check_folder_output(model, (MODEL_KIND,), f"a model folder ({MODEL_JSON}, {CHECKPOINT})")
    corpus = declared_view(params.corpus, ("n_classes", "ignore_index", "class_names"))
    trained = run(
        Path(features), Path(knn), Path(model), Path(loss_log), corpus, params.train, params.seed,
        resume=resume, shift_stats=Path(shift_stats), readers=params.runtime.readers,
    )
    return {"in_dim": trained.info["in_dim"], "steps": params.train.steps}


def cluster(
    params_path: str = PARAMS, features: str = P["features"], model: str = P["model"],
    predictions: str = P["predictions"],
) -> dict[str, Any]:
    """Cluster, linear and k-means predictions for the validation split."""
    from stego_tasks.cluster import cluster as run

    params = load_params(params_path)
    return run(Path(features), Path(model), Path(predictions), params.cluster, params.seed)


def crf(
    params_path: str = PARAMS, features: str = P["features"], predictions: str = P["predictions"],
    crf_out: str = P["crf_out"],
) -> dict[str, Any]:
    """Dense-CRF refinement of the predictions."""
    from stego_tasks.crf import crf as run

    params = load_params(params_path)
    return run(Path(features), Path(predictions), Path(crf_out), params.crf, workers=params.runtime.crf_workers,
               dask=params.dask)


def evaluate(
    params_path: str = PARAMS, features: str = P["features"], predictions: str = P["predictions"],
    crf_out: str = P["crf_out"], scores: str = P["scores"], per_class: str = P["per_class"],
    confusion: str = P["confusion"], overlays: str = P["overlays"], assignment: str = P["assignment"],
    confusion_data: str = P["confusion_data"], per_class_plot: str = P["per_class_plot"],
    gallery: str = P["gallery"], cluster_names: str = P["cluster_names"],
) -> dict[str, Any]:
    """Scores (and label-free signals), per-class IoU, confusion matrix, overlays, the plot data DVC draws and the cluster gallery."""
    from stego_tasks.evaluate import evaluate as run

    params = load_params(params_path)
    return run(
        Path(features), Path(predictions), Path(crf_out), Path(scores), Path(per_class), Path(confusion),
        Path(overlays), params.corpus, params.evaluate,
        Path(assignment), preset=params.preset, confusion_csv=Path(confusion_data), per_class_csv=Path(per_class_plot),
        gallery_dir=Path(gallery), names_path=Path(cluster_names),
    )


def report(params_path: str | None = None, run: str = ".", out: str = P["report"]) -> dict[str, Any]:
    """One self-contained HTML page of the run in folder `run`.

    Args:
        params_path: params file (default: params.yaml of --run)
        run: project folder of a run, after `dvc repro`
        out: HTML file to write
    """
    from stego_tasks.report import report as write

    params = load_params(params_path or Path(run) / PARAMS)
    return write(Path(run), Path(out), params.report)
