"""The trained parts of STEGO as one object, and their files.

    <model_dir>/model.safetensors   head.*, cluster_probe.*, linear_probe.* tensors
    <model_dir>/model.json          everything needed to rebuild and to trace the model:
                                    dims, classes, backbone and its weights source, params

`train` writes them; `cluster`, `sweep-k` and `predict` load them (safetensors, no pickle).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from stego_tasks.config import TrainParams
from stego_tasks.errors import InvalidInputError, MissingInputError
from stego_tasks.method.head import ClusterProbe, LinearProbe, SegmentationHead
from stego_tasks.runtime import atomic
from stego_tasks.runtime.content_hash import sha256_of_file

# The model folder's files, named here only: the tensors, their description, and train's
# resumable state (written and read by the train stage, kept beside the model).
MODEL_WEIGHTS = "model.safetensors"
MODEL_JSON = "model.json"
CHECKPOINT = "checkpoint.pt"
MODEL_KIND = "model"
atomic.register_folder_kind(MODEL_KIND, (MODEL_JSON, MODEL_WEIGHTS, CHECKPOINT),
                            f"a trained model ({MODEL_JSON} / {CHECKPOINT})")

# Train keys that moved to the `runtime` block: a model.json written before records them in
# its train block; they never shaped a model, so loading drops them.
MOVED_TO_RUNTIME = frozenset({"readers"})

# model.json's key for the SHA-256 of model.safetensors (models written before it are read unchecked).
SAFETENSORS_SHA256 = "safetensors_sha256"


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


def holds_model(model_dir: Path) -> bool:
    """Whether `model_dir` holds a saved model (both its files; not checked for damage)."""
    return (Path(model_dir) / MODEL_JSON).is_file() and (Path(model_dir) / MODEL_WEIGHTS).is_file()


def save_model(model: StegoModel, model_dir: Path) -> None:
    """Write `model.safetensors` and `model.json` into `model_dir`, each atomically."""
    tensors = {
        f"{prefix}.{name}": tensor.detach().cpu().contiguous()
        for prefix, module in model.modules().items()
        for name, tensor in module.state_dict().items()
    }
    with atomic.atomic_path(Path(model_dir) / MODEL_WEIGHTS) as tmp:
        save_file(tensors, str(tmp))
        checksum = sha256_of_file(tmp)
    # Recorded where the model is described, and checked on every load: a flipped bit in a
    # tensor would otherwise load silently.
    model.info[SAFETENSORS_SHA256] = checksum
    atomic.write_json(Path(model_dir) / MODEL_JSON, model.info)


def load_model(model_dir: Path) -> StegoModel:
    """Rebuild a trained `StegoModel` from `model_dir` (safetensors, no pickle).

    Args:
        model_dir: folder with `model.safetensors` and `model.json`.

    Returns:
        The model in eval mode on the CPU.

    Raises:
        FileNotFoundError: the folder holds no model.
        ValueError: one sentence naming the broken file (model.json not JSON, a key
            missing or of the wrong type; model.safetensors truncated, corrupt or not
            matching model.json).
    """
    model_dir = Path(model_dir)
    json_path, weights_path = model_dir / MODEL_JSON, model_dir / MODEL_WEIGHTS
    if not holds_model(model_dir):
        raise MissingInputError(f"{model_dir} holds no trained model ({MODEL_JSON} + {MODEL_WEIGHTS}); run `stego train` first.")
    info, params = _read_model_info(json_path)
    model = build_model(info["in_dim"], info["n_classes"], params, info)
    _load_tensors(model, weights_path, info.get(SAFETENSORS_SHA256))
    return model.eval()


_REDO = "rerun `stego train` to write the model again"


def _read_model_info(json_path: Path) -> tuple[dict[str, Any], TrainParams]:
    """model.json checked key by key: (the info dict, its training params); one sentence when broken."""
    from stego_tasks.params_schema import params_block

    info = atomic.read_json_object(json_path, "train", _REDO)
    expected = {"in_dim": "a positive integer", "n_classes": "a positive integer", "train": "a mapping"}
    for key, what in expected.items():
        value = info.get(key)
        fits = isinstance(value, dict) if key == "train" else (
            isinstance(value, int) and not isinstance(value, bool) and value >= 1
        )
        if not fits:
            got = "missing" if key not in info else f"got {json.dumps(value)[:60]}"
            raise InvalidInputError(f"{json_path}: {key} must be {what} ({got}); {_REDO}.")
    for key in ("resolution", "backbone"):
        kind = int if key == "resolution" else str
        if info.get(key) is not None and (not isinstance(info[key], kind) or isinstance(info[key], bool)):
            raise InvalidInputError(f"{json_path}: {key} must be {'an integer' if kind is int else 'a string'} or null, "
                                    f"got {json.dumps(info[key])[:60]}; {_REDO}.")
    try:
        recorded = {key: value for key, value in info["train"].items() if key not in MOVED_TO_RUNTIME}
        params = params_block(TrainParams, recorded, "train", str(json_path))
    except ValueError as error:
        raise InvalidInputError(f"{str(error).rstrip('.')}; {_REDO}.") from None
    return info, params


def _load_tensors(model: StegoModel, weights_path: Path, checksum: str | None) -> None:
    """Load model.safetensors into `model`, verified against the checksum model.json recorded."""
    from safetensors import SafetensorError

    try:
        tensors = load_file(str(weights_path))
    except SafetensorError as error:
        raise InvalidInputError(f"{weights_path}: not a readable .safetensors file, truncated or corrupt ({error}); {_REDO}.") from None
    if checksum is not None and checksum != sha256_of_file(weights_path):
        # It parses, but a bit of a tensor (or the whole file) is not what train wrote.
        raise InvalidInputError(
            f"{weights_path} does not match the checksum {MODEL_JSON} recorded when it was written (damaged on disk, "
            f"or replaced by another model's file); {_REDO}."
        )
    for prefix, module in model.modules().items():
        state = {k[len(prefix) + 1 :]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
        try:
            module.load_state_dict(state)
        except RuntimeError as error:
            detail = " ".join(str(error).split())[:200]
            raise InvalidInputError(
                f"{weights_path}: its {prefix} tensors do not fit the model {MODEL_JSON} describes ({detail}); {_REDO}."
            ) from None


def check_trained_on(info: dict[str, Any], store_attrs: dict[str, Any], model_dir: Path, store_path: Path) -> None:
    """Refuse a model whose training features came from another backbone than the store now holds.

    A features store rebuilt for a replaced checkpoint (or another backbone) keeps its path,
    so a model trained before the rebuild would pair its head with features it never saw.

    Args:
        info: the model's `model.json` (`StegoModel.info`).
        store_attrs: the features store's root attributes.
        model_dir, store_path: named in the message.

    Raises:
        ValueError: one sentence naming both and the command that trains again.
    """
    pairs = (("backbone", "backbone"), ("backbone_weights_sha256", "weights_sha256"))
    for model_key, store_key in pairs:
        trained, now = info.get(model_key), store_attrs.get(store_key)
        if trained is not None and trained != now:
            raise InvalidInputError(
                f"{model_dir} was trained on features of another backbone than {store_path} now holds "
                f"({model_key} {str(trained)[:16]} vs {str(now)[:16]}); rerun `stego train` (or `dvc repro`) on the new features."
            )
