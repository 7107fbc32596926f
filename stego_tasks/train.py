"""Stage `train`: fit the segmentation head and both probes from stored features only.

The backbone never runs here: each step reads backbone features of a batch of training
crops and of their kNN positives from the Zarr store, so a step costs only the head. A
small split is read into memory once; a large one is read batch by batch, so memory does
not grow with the corpus (`stego_tasks/training_data.py`).

Outputs (all written atomically):
    <model_dir>/model.safetensors   head.*, cluster_probe.*, linear_probe.* tensors
    <model_dir>/model.json          everything needed to rebuild and to trace the model:
                                    dims, classes, backbone and its weights source, params
    <model_dir>/checkpoint.pt       resumable state (weights-only torch.save), kept until
                                    the final model is written
    <loss_log>                      CSV, one row per logged step (a DVC plot)
"""

from __future__ import annotations

import csv
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr
from safetensors.torch import load_file, save_file

from stego_tasks import atomic
from stego_tasks.config import CorpusParams, TrainParams, params_to_dict
from stego_tasks.embed import resolve_device
from stego_tasks.head import ClusterProbe, LinearProbe, SegmentationHead
from stego_tasks.knn import sample_positives
from stego_tasks.locking import artifact_lock
from stego_tasks.loss import correspondence_loss
from stego_tasks.progress import Progress
from stego_tasks.training_data import TrainingData, load_training_data

log = logging.getLogger("stego")

LOSS_COLUMNS = ("step", "total", "intra", "inter", "neg", "cluster", "linear")


@dataclass
class StegoModel:
    """The trained parts of STEGO: head and probes, plus what they were trained on."""

    head: SegmentationHead
    cluster_probe: ClusterProbe
    linear_probe: LinearProbe
    info: dict[str, Any]

    def modules(self) -> dict[str, torch.nn.Module]:
        """The three modules by the prefix their tensors carry in `model.safetensors`."""
        return {"head": self.head, "cluster_probe": self.cluster_probe, "linear_probe": self.linear_probe}

    def to(self, device: torch.device) -> StegoModel:
        """Move all modules to `device` (in place) and return self."""
        for module in self.modules().values():
            module.to(device)
        return self

    def eval(self) -> StegoModel:
        """Switch all modules to eval mode (no dropout) and return self."""
        for module in self.modules().values():
            module.eval()
        return self


def build_model(in_dim: int, n_classes: int, params: TrainParams, info: dict[str, Any] | None = None) -> StegoModel:
    """Create an untrained head and probes.

    Args:
        in_dim: backbone feature dimension C.
        n_classes: classes of the corpus (cluster probe gets n_classes + extra_clusters).
        params: the `train` block (n_codes, dropout, extra_clusters).
        info: metadata to carry along.

    Returns:
        A `StegoModel`.
    """
    return StegoModel(
        head=SegmentationHead(in_dim, params.n_codes, params.dropout),
        cluster_probe=ClusterProbe(params.n_codes, n_classes, params.extra_clusters),
        linear_probe=LinearProbe(params.n_codes, n_classes),
        info=dict(info or {}),
    )


def save_model(model: StegoModel, model_dir: Path) -> None:
    """Write `model.safetensors` and `model.json` into `model_dir`, each atomically."""
    tensors = {
        f"{prefix}.{name}": tensor.detach().cpu().contiguous()
        for prefix, module in model.modules().items()
        for name, tensor in module.state_dict().items()
    }
    with atomic.atomic_path(Path(model_dir) / "model.safetensors") as tmp:
        save_file(tensors, str(tmp))
    atomic.write_json(Path(model_dir) / "model.json", model.info)


def load_model(model_dir: Path) -> StegoModel:
    """Rebuild a trained `StegoModel` from `model_dir` (safetensors, no pickle).

    Args:
        model_dir: folder with `model.safetensors` and `model.json`.

    Returns:
        The model in eval mode on the CPU.
    """
    model_dir = Path(model_dir)
    if not (model_dir / "model.json").exists() or not (model_dir / "model.safetensors").exists():
        raise FileNotFoundError(f"{model_dir} holds no trained model (model.json + model.safetensors); run `stego train` first.")
    info = json.loads((model_dir / "model.json").read_text())
    params = TrainParams(**{k: tuple(v) if isinstance(v, list) else v for k, v in info["train"].items()})
    model = build_model(info["in_dim"], info["n_classes"], params, info)
    tensors = load_file(str(model_dir / "model.safetensors"))
    for prefix, module in model.modules().items():
        state = {k[len(prefix) + 1 :]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
        module.load_state_dict(state)
    return model.eval()


# --- training --------------------------------------------------------------------------


def _step(model, optimizers, data: TrainingData, index: torch.Tensor, params: TrainParams, generator, device, ignore_index):
    positives = sample_positives(data.knn, index.numpy(), generator, None)
    batch = data.batch(index, positives, device)
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


def _batches(size: int, batch_size: int, seed: int, start_step: int = 0):
    # Epoch-wise shuffling, as the reference's DataLoader(shuffle=True, drop_last=True).
    # Each epoch's order depends on (seed, epoch) alone, so a run resumed at any step,
    # even mid-epoch, draws exactly the batches the uninterrupted run would have drawn.
    batch_size = min(batch_size, size)
    per_epoch = size // batch_size
    epoch, first = divmod(start_step, per_epoch)
    while True:
        order = torch.from_numpy(np.random.default_rng([seed % 2**64, epoch]).permutation(size))
        for start in range(first * batch_size, per_epoch * batch_size, batch_size):
            yield order[start : start + batch_size]
        epoch, first = epoch + 1, 0


def _optimizers(model: StegoModel, params: TrainParams) -> list[torch.optim.Optimizer]:
    return [
        torch.optim.Adam(model.head.parameters(), lr=params.lr),
        torch.optim.Adam(model.cluster_probe.parameters(), lr=params.probe_lr),
        torch.optim.Adam(model.linear_probe.parameters(), lr=params.probe_lr),
    ]


def _save_checkpoint(path: Path, model: StegoModel, optimizers, step: int, generator, rows: list[dict]) -> None:
    state = {
        "step": step,
        "modules": {k: m.state_dict() for k, m in model.modules().items()},
        "optimizers": [o.state_dict() for o in optimizers],
        "generator": generator.get_state(),
        "torch_rng": torch.get_rng_state(),
        "rows": [[row[c] for c in LOSS_COLUMNS] for row in rows],
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    with atomic.atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())


def _load_checkpoint(path: Path, model: StegoModel, optimizers, generator) -> tuple[int, list[dict]]:
    state = torch.load(path, map_location="cpu", weights_only=True)
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

    Returns:
        (trained model on the CPU in eval mode, logged loss rows).
    """
    if data.size < 2:
        raise ValueError(f"training needs at least 2 crops, found {data.size}; add images to the corpus.")
    device = resolve_device(params.device)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = build_model(data.in_dim, n_classes, params, info).to(device)
    for module in model.modules().values():
        module.train()
    optimizers = _optimizers(model, params)
    start, rows = 0, []
    if resume and checkpoint is not None and checkpoint.exists():
        start, rows = _load_checkpoint(checkpoint, model, optimizers, generator)
        log.info("train: resuming from step %d", start)
    batches = _batches(data.size, params.batch_size, seed, start)
    with Progress(params.steps, "train", unit="step") as progress:
        progress.update(start)
        for step in range(start, params.steps):
            values = _step(model, optimizers, data, next(batches), params, generator, device, ignore_index)
            if step % params.log_every == 0 or step == params.steps - 1:
                rows.append({"step": step, **values})
            progress.update(1, loss=values["total"])
            due = params.checkpoint_every and (step + 1) % params.checkpoint_every == 0
            if checkpoint is not None and due and step + 1 < params.steps:
                _save_checkpoint(checkpoint, model, optimizers, step + 1, generator, rows)
    return model.to(torch.device("cpu")).eval(), rows


def train(
    store_path: Path,
    knn_path: Path,
    model_dir: Path,
    loss_log: Path,
    corpus: CorpusParams,
    params: TrainParams,
    seed: int,
    resume: bool = False,
) -> StegoModel:
    """Stage `train`: fit head, cluster probe and linear probe on the stored training features.

    Args:
        store_path: features Zarr store (train split).
        knn_path: kNN Zarr store (`train` array [M, k]).
        model_dir: where the model and the resumable checkpoint go.
        loss_log: CSV path for the per-step losses.
        corpus: n_classes, ignore index and class names.
        params: the `train` block.
        seed: the run's seed.
        resume: continue from `model_dir/checkpoint.pt` when it exists.

    Returns:
        The trained `StegoModel` (also written to `model_dir`).
    """
    data = load_training_data(store_path, knn_path, corpus.ignore_index, corpus.n_classes)
    store = json.loads(json.dumps(dict(zarr.open_group(str(store_path), mode="r").attrs)))
    info = {
        "in_dim": data.in_dim,
        "n_classes": corpus.n_classes,
        "class_names": list(corpus.class_names),
        "ignore_index": corpus.ignore_index,
        "backbone": store.get("backbone"),
        "backbone_weights": store.get("weights_source"),
        "resolution": store.get("resolution"),
        "seed": seed,
        "train": params_to_dict(params),
        "linear_probe_trained": data.labels is not None,
    }
    checkpoint = Path(model_dir) / "checkpoint.pt"
    with artifact_lock(model_dir):
        model, rows = fit(data, corpus.n_classes, params, seed, corpus.ignore_index, info, checkpoint, resume)
        save_model(model, model_dir)
        write_loss_log(loss_log, rows)
        checkpoint.unlink(missing_ok=True)
    return model
