"""Stage `train`: fit the segmentation head and both probes from stored features only.

The backbone never runs here: each step reads backbone features of a batch of training
crops and of their kNN positives from the Zarr store, so a step costs only the head. A
small split is read into memory once; a large one is read batch by batch, so memory does
not grow with the corpus (`stego_tasks/data/training_data.py`).

Outputs (all written atomically):
    <model_dir>/model.safetensors   head.*, cluster_probe.*, linear_probe.* tensors
    <model_dir>/model.json          everything needed to rebuild and to trace the model:
                                    dims, classes, backbone and its weights source, params
    <model_dir>/checkpoint.pt       resumable state (weights-only torch.save), kept until
                                    the final model is written; it records the settings
                                    and data that shaped it (`checkpoint_identity`), and
                                    `--resume` refuses when they changed
    <loss_log>                      CSV, one row per logged step (a DVC plot)
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import logging
from pathlib import Path
from typing import Any

import torch
import zarr

from stego_tasks.config import CorpusParams, TrainParams, params_to_dict
from stego_tasks.data.feature_store import read_split
from stego_tasks.data.training_data import (
    IN_MEMORY_BYTES,
    BatchStream,
    TrainingBatch,
    TrainingData,
    data_identity,
    load_training_data,
)
from stego_tasks.errors import InvalidInputError
from stego_tasks.method.batching import step_plan
from stego_tasks.method.loss import correspondence_loss
from stego_tasks.method.model import CHECKPOINT, StegoModel, build_model, save_model
from stego_tasks.method.selection import BestCheckpoint, ValScorer, refit_cluster_probe
from stego_tasks.method.shift_stats import (
    SHIFT_STATS_FILE,
    auto_shifts,
    correlation_samples,
    correlation_stats,
    write_histogram_csv,
)
from stego_tasks.runtime import atomic
from stego_tasks.runtime.devices import resolve_device
from stego_tasks.runtime.locking import artifact_lock
from stego_tasks.runtime.progress import Progress

log = logging.getLogger("stego")

# The model type and its files live in `stego_tasks/method/model.py`; import them from there.
__all__ = ["LOSS_COLUMNS", "fit", "train", "training_batches", "write_loss_log"]

LOSS_COLUMNS = ("step", "total", "intra", "inter", "neg", "cluster", "linear")


# --- training --------------------------------------------------------------------------


def _step(model, optimizers, batch: TrainingBatch, params: TrainParams, generator, device, ignore_index):
    """One optimisation step on a batch read by `training_batches` (its rows and their kNN positives)."""
    feats, feats_pos = batch.feats, batch.feats_pos
    code = model.head(feats)
    code_pos = model.head(feats_pos)
    terms = correspondence_loss(
        model.head.drop_features(feats),
        model.head.drop_features(feats_pos),
        code,
        code_pos,
        shifts=params.shifts,
        weights=params.weights,
        feature_samples=params.feature_samples,
        neg_samples=params.neg_samples,
        pointwise=params.pointwise,
        zero_clamp=params.zero_clamp,
        stabilize=params.stabilize,
        generator=generator,
    )
    detached = code.detach()
    cluster_loss, _ = model.cluster_probe(detached, None)
    total = terms.total + cluster_loss
    linear_loss = torch.zeros((), device=device)
    if batch.labels is not None:
        linear_loss = model.linear_probe.loss(detached, batch.labels, ignore_index)
        total = total + linear_loss
    for optimizer in optimizers:
        optimizer.zero_grad(set_to_none=True)
    total.backward()
    for optimizer in optimizers:
        optimizer.step()
    return {
        "total": terms.total.item(),
        "intra": terms.intra.item(),
        "inter": terms.inter.item(),
        "neg": terms.neg.item(),
        "cluster": cluster_loss.item(),
        "linear": linear_loss.item(),
    }


def _optimizers(model: StegoModel, params: TrainParams) -> list[torch.optim.Optimizer]:
    return [
        torch.optim.Adam(model.head.parameters(), lr=params.lr),
        torch.optim.Adam(model.cluster_probe.parameters(), lr=params.probe_lr),
        torch.optim.Adam(model.linear_probe.parameters(), lr=params.probe_lr),
    ]


# Train-block keys that say how often a run logs or saves, where it runs, or when it stops,
# never what a step computes: `--resume` accepts a checkpoint written with other values of
# these (nothing in a step depends on `steps`, so a run resumed with more steps equals an
# uninterrupted run of that many; a checkpoint past the new `steps` is refused). Every
# other key (new ones too) must match, or the resumed model would not be the one
# model.json describes.
RESUME_FREE_KEYS = frozenset({"log_every", "checkpoint_every", "device", "steps"})


def training_batches(data: TrainingData, params: TrainParams, seed: int, device: torch.device, start: int = 0,
                     readers: int = 2) -> BatchStream:
    """The batches of steps `start` .. `params.steps - 1`, read ahead by `readers` threads (`runtime.readers`).

    Batch rows follow `batching.epoch_batches` and each step's kNN positives come from its
    own (seed, step) stream (`batching.step_positives`), so the batch of step t is the same
    for any reader count, for a split held in memory or streamed, and after a resume.
    """
    plan = step_plan(data.knn, data.size, params.batch_size, seed, start, params.steps)
    return BatchStream(data, plan, device, readers=readers)


def checkpoint_identity(data: TrainingData, n_classes: int, params: TrainParams, seed: int, ignore_index: int) -> dict:
    """What shapes a run's trajectory, recorded in its checkpoint and compared on resume.

    The train block without `RESUME_FREE_KEYS`, the seed, classes, ignore index, and the
    training data's identity (`training_data.data_identity`: the features store's recorded
    digests and the kNN graph's checksum).
    """
    block = {k: v for k, v in params_to_dict(params).items() if k not in RESUME_FREE_KEYS}
    identity = {"train": block, "seed": seed, "n_classes": n_classes, "ignore_index": ignore_index,
                "data": data_identity(data)}
    return json.loads(json.dumps(identity))  # tuples as lists, as they come back from the checkpoint


def _identity_changes(old: dict, new: dict) -> list[str]:
    """'train.lr 0.0005 -> 0.001'-style entries for every recorded value that differs."""
    changes = []
    for key in sorted(set(old) | set(new)):
        before, after = old.get(key), new.get(key)
        if isinstance(before, dict) and isinstance(after, dict) and key != "data":
            changes += [f"{key}.{change}" for change in _identity_changes(before, after)]
        elif key == "data" and before != after:
            parts = [DATA_KEYS.get(k, k) for k in sorted(set(before or {}) | set(after or {}))
                     if (before or {}).get(k) != (after or {}).get(k)]
            changes.append(f"the training data ({', '.join(parts)} changed)")
        elif before != after:
            changes.append(f"{key} {json.dumps(before)} -> {json.dumps(after)}")
    return changes


DATA_KEYS = {"features": "features store", "knn": "kNN graph", "crops": "number of crops", "in_dim": "feature channels",
             "labels": "labels"}


def _save_checkpoint(
    path: Path, model: StegoModel, optimizers, step: int, generator, rows: list[dict], identity: dict | None = None
) -> None:
    state = {
        "identity": identity,
        "step": step,
        "modules": {k: m.state_dict() for k, m in model.modules().items()},
        "optimizers": [o.state_dict() for o in optimizers],
        "generator": generator.get_state(),
        "torch_rng": torch.get_rng_state(),
        "rows": [[row[c] for c in LOSS_COLUMNS] for row in rows],
    }
    state["checksum"] = _state_checksum(state)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    with atomic.atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())


def _state_checksum(state: dict) -> str:
    """SHA-256 over every value of a checkpoint state (tensors by their bytes), its `checksum` key left out."""
    digest = hashlib.sha256()

    def feed(value: object) -> None:
        if isinstance(value, torch.Tensor):
            tensor = value.detach().cpu().contiguous()
            digest.update(f"T{tensor.dtype}{tuple(tensor.shape)}".encode())
            # Flattened first: a 0-d tensor (Adam's step count) cannot be viewed as bytes.
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
        elif isinstance(value, dict):
            digest.update(b"{")
            for key in sorted(value, key=str):
                if key != "checksum":
                    digest.update(repr(key).encode())
                    feed(value[key])
            digest.update(b"}")
        elif isinstance(value, list | tuple):
            digest.update(b"[")
            for item in value:
                feed(item)
            digest.update(b"]")
        else:
            digest.update(repr(value).encode())

    feed(state)
    return digest.hexdigest()


def _load_checkpoint(path: Path, model: StegoModel, optimizers, generator, identity: dict | None = None) -> tuple[int, list[dict]]:
    """Restore a checkpoint's state; refuse (ValueError) one written with other settings than `identity`."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated, corrupt or not a checkpoint
        raise InvalidInputError(
            f"{path} cannot be read ({type(exc).__name__}); rerun without --resume to start over."
        ) from None
    if not isinstance(state, dict) or state.get("checksum") != _state_checksum(state):
        # A flipped bit in a tensor unpickles fine; only the recorded checksum tells.
        raise InvalidInputError(
            f"{path} does not match the checksum recorded when it was written (damaged on disk, or not written "
            "by this version of stego train); rerun without --resume to start over."
        )
    if identity is not None:
        recorded = state.get("identity")
        if recorded is None:
            raise InvalidInputError(
                f"{path} does not record the settings it was trained with (an older checkpoint), so resuming "
                "could not be exact; rerun without --resume to start over."
            )
        changes = _identity_changes(recorded, identity)
        if changes:
            raise InvalidInputError(
                f"{path} was written with other settings than now ({'; '.join(changes)}); rerun without --resume "
                "to start over, or restore the old values to resume."
            )
    for key, module in model.modules().items():
        module.load_state_dict(state["modules"][key])
    for optimizer, saved in zip(optimizers, state["optimizers"], strict=True):
        optimizer.load_state_dict(saved)
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    rows = [dict(zip(LOSS_COLUMNS, values, strict=True)) for values in state["rows"]]
    return int(state["step"]), rows


def write_loss_log(path: Path, rows: list[dict]) -> None:
    """Write the per-step loss log as CSV (columns `LOSS_COLUMNS`), atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=LOSS_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (row[k] if k == "step" else f"{row[k]:.6f}") for k in LOSS_COLUMNS})
    atomic.write_text(path, buffer.getvalue())


def fit(
    data: TrainingData,
    n_classes: int,
    params: TrainParams,
    seed: int,
    ignore_index: int,
    info: dict[str, Any] | None = None,
    checkpoint: Path | None = None,
    resume: bool = False,
    scorer: ValScorer | None = None,
    readers: int = 2,
) -> tuple[StegoModel, list[dict]]:
    """The training loop (no files written unless `checkpoint` is given).

    The result depends only on the data's values, not on whether `data` is held in memory
    or streamed from the store.

    Args:
        data: training features [M, C, h, w], labels [M, R, R] or None, kNN graph [M, k].
        n_classes: classes of the corpus.
        params: the `train` block.
        seed: seeds batch order, positives, sample points and dropout.
        ignore_index: label value without a class.
        info: metadata stored with the model.
        checkpoint: path of the resumable checkpoint, written every `checkpoint_every` steps.
        resume: continue from `checkpoint` when it exists.
        scorer: with `params.select == "best"`, scores the cluster probe on labelled val
            every `params.select_every` steps and at the end; the best step's head and
            probes are returned, and `model.info["selection"]` records the choice.
        readers: threads reading batches ahead (`runtime.readers`); the result is the same for any.

    Returns:
        (trained model on the CPU in eval mode, logged loss rows).
    """
    if data.size < 2:
        raise InvalidInputError(f"training needs at least 2 crops, found {data.size}; add images to the corpus.")
    device = resolve_device(params.device)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = build_model(data.in_dim, n_classes, params, info).to(device)
    for module in model.modules().values():
        module.train()
    optimizers = _optimizers(model, params)
    start, rows = 0, []
    identity = checkpoint_identity(data, n_classes, params, seed, ignore_index) if checkpoint is not None else None
    if resume and checkpoint is not None and checkpoint.exists():
        if params.select == "best":
            raise InvalidInputError(
                "train.select: best keeps the best step's weights in memory only, so a resumed run could not be "
                "exact; rerun without --resume, or set train.select: last to resume."
            )
        start, rows = _load_checkpoint(checkpoint, model, optimizers, generator, identity)
        if start >= params.steps:
            raise InvalidInputError(
                f"{checkpoint} is at step {start}, not before train.steps {params.steps}; rerun without --resume "
                f"to start over, or set train.steps above {start} to resume."
            )
        log.info("train: resuming from step %d", start)
    selector = BestCheckpoint(scorer) if scorer is not None and params.select == "best" else None
    with Progress(params.steps, "train", unit="step") as progress, training_batches(data, params, seed, device, start, readers) as batches:
        progress.update(start)
        for step in range(start, params.steps):
            values = _step(model, optimizers, next(batches), params, generator, device, ignore_index)
            if step % params.log_every == 0 or step == params.steps - 1:
                rows.append({"step": step, **values})
            progress.update(1, loss=values["total"])
            if selector is not None and ((step + 1) % params.select_every == 0 or step + 1 == params.steps):
                selector.observe(step + 1, model)
            due = params.checkpoint_every and (step + 1) % params.checkpoint_every == 0
            if checkpoint is not None and due and step + 1 < params.steps:
                _save_checkpoint(checkpoint, model, optimizers, step + 1, generator, rows, identity)
    if selector is not None:
        selector.restore(model)
    return model.to(torch.device("cpu")).eval(), rows


def _shifts_and_stats(data: TrainingData, params: TrainParams, seed: int) -> tuple[tuple[float, ...], dict]:
    """The loss shifts to train with (`train.shifts`, or drawn when "auto") and the correlation stats.

    The three feature-correlation distributions are drawn on a sample of the training features
    before the loop; they set "auto" shifts and are kept for the report either way.
    """
    samples = correlation_samples(
        data, batch_size=params.batch_size, feature_samples=params.feature_samples, neg_samples=params.neg_samples,
        pointwise=params.pointwise, seed=seed,
    )
    shifts = auto_shifts(samples, params.shift_quantile) if params.shifts == "auto" else tuple(params.shifts)
    if params.shifts == "auto":
        log.info("train: shifts auto at quantile %g: intra %.4f, kNN %.4f, random %.4f", params.shift_quantile, *shifts)
    return shifts, correlation_stats(samples, shifts)


def _model_info(store_path: Path, data: TrainingData, corpus: CorpusParams, params: TrainParams, seed: int,
                shifts: tuple[float, ...]) -> dict[str, Any]:
    """What `model.json` records about the run: the corpus, the features it was fit on, the settings."""
    store = json.loads(json.dumps(dict(zarr.open_group(str(store_path), mode="r").attrs)))
    return {
        "in_dim": data.in_dim,
        "n_classes": corpus.n_classes,
        "class_names": list(corpus.class_names),
        "ignore_index": corpus.ignore_index,
        "backbone": store.get("backbone"),
        "backbone_weights": store.get("weights_source"),
        # The checkpoint's content the features came from: `stego predict` refuses another file.
        **({"backbone_weights_sha256": store["weights_sha256"]} if store.get("weights_sha256") else {}),
        "resolution": store.get("resolution"),
        # How the stored inputs were made, so `stego predict` feeds new images the same way.
        "preprocess": store.get("preprocess", "antialias"),
        "pos_embed": store.get("pos_embed", "timm"),
        "seed": seed,
        "train": params_to_dict(params),
        "linear_probe_trained": data.labels is not None,
        "shifts_used": list(shifts),
        "shifts_setting": "auto" if params.shifts == "auto" else "fixed",
        "selection": {"select": "last", "uses_labels": False},
        "probe_init": params.probe_init,
    }


def train(
    store_path: Path,
    knn_path: Path,
    model_dir: Path,
    loss_log: Path,
    corpus: CorpusParams,
    params: TrainParams,
    seed: int,
    resume: bool = False,
    shift_stats: Path | None = None,
    readers: int = 2,
) -> StegoModel:
    """Stage `train`: fit head, cluster probe and linear probe on the stored training features.

    Before the loop it draws the three feature-correlation distributions on a sample of
    the training features (`shift_stats`; with `train.shifts: auto` the shifts are set
    from them); after it, `train.probe_init: codes` refits the cluster probe on the final
    codes. `model.json` records the shifts used, the selection and the probe refit.

    Args:
        store_path: features Zarr store (train split).
        knn_path: kNN Zarr store (`train` array [M, k]).
        model_dir: where the model and the resumable checkpoint go.
        loss_log: CSV path for the per-step losses.
        corpus: n_classes, ignore index and class names.
        params: the `train` block.
        seed: the run's seed.
        resume: continue from `model_dir/checkpoint.pt` when it exists.
        shift_stats: CSV for the correlation histograms (a DVC plot); they are also kept
            as `model_dir/shift_stats.json` for the report.
        readers: threads reading batches ahead (`runtime.readers`); changes no result.

    Returns:
        The trained `StegoModel` (also written to `model_dir`).
    """
    data = load_training_data(store_path, knn_path, corpus.ignore_index, corpus.n_classes)
    shifts, stats = _shifts_and_stats(data, params, seed)
    effective = dataclasses.replace(params, shifts=shifts)
    scorer = None
    if params.select == "best":
        scorer = ValScorer(
            read_split(store_path, "val"), corpus.n_classes, resolve_device(params.device), in_memory_bytes=IN_MEMORY_BYTES
        )
    info = _model_info(store_path, data, corpus, params, seed, shifts)
    checkpoint = Path(model_dir) / CHECKPOINT
    with artifact_lock(model_dir):
        model, rows = fit(data, corpus.n_classes, effective, seed, corpus.ignore_index, info, checkpoint, resume, scorer,
                           readers)
        model.info["train"] = params_to_dict(params)  # as the user wrote it ("auto" stays "auto")
        if params.probe_init == "codes":
            model.cluster_probe = refit_cluster_probe(
                model.head, data.feature_rows, data.size, model.cluster_probe.n_clusters, params, seed
            )
            if scorer is not None:
                model.info["selection"]["refit"] = scorer.score(model.head, model.cluster_probe)
        atomic.write_json(Path(model_dir) / SHIFT_STATS_FILE, stats)
        if shift_stats is not None:
            write_histogram_csv(shift_stats, stats)
        save_model(model, model_dir)
        write_loss_log(loss_log, rows)
        checkpoint.unlink(missing_ok=True)
    return model
