"""Where a backbone's weights come from, and how a checkpoint file is read safely.

In order: an explicit local checkpoint (DINO / DINOv2 official ``.pth``, timm ``.pth`` or
``.safetensors``), the Hugging Face hub cache, a hub download when online; weights that
timm does not host resolve through their official URL (:mod:`.official_weights`).
Checkpoints are unpickled with ``weights_only`` so a file cannot run code.
"""

from __future__ import annotations

import argparse
import os
import pickle
from pathlib import Path
from typing import TYPE_CHECKING

from stego_tasks.errors import InvalidInputError, StegoError
from stego_tasks.method.registry import BackboneSpec

if TYPE_CHECKING:  # torch and timm load only where a checkpoint is read: finding a file needs neither
    from torch import Tensor, nn

# Wrappers used by the DINO / DINOv2 training checkpoints, most preferred first: the
# teacher is the model DINO evaluates and publishes.
_WRAPPER_KEYS = ("teacher", "state_dict", "model", "student")
_KEY_PREFIXES = ("module.", "backbone.")


class WeightsNotFoundError(StegoError, RuntimeError):
    """No pretrained weights could be found for a backbone, and random ones were not asked for."""


def weights_argument(source: str) -> str:
    """The `create_backbone` weights argument that loads again the weights a `weights_source` names.

    Args:
        source: a `Backbone.weights_source`, as stores and model.json record it.

    Returns:
        "<path>" for "file:<path>" (as recorded, maybe relative), "auto" for "hub-cache" and
        "hub-download", "random" for "random".

    Raises:
        ValueError: any other value.
    """
    if isinstance(source, str) and source.startswith("file:"):
        return source[len("file:") :]
    if source in ("hub-cache", "hub-download"):
        return "auto"
    if source == "random":
        return "random"
    raise InvalidInputError(f"unknown weights source {source!r}; expected 'file:<path>', 'hub-cache', 'hub-download' or 'random'.")


def read_checkpoint(path: str | Path) -> dict[str, Tensor]:
    """Read a checkpoint file safely and unwrap it to a flat state dict.

    Args:
        path: ``.safetensors`` file, or a torch pickle holding only tensors and containers
            (read with ``weights_only=True``). Training checkpoints wrapped under
            ``teacher`` / ``student`` / ``state_dict`` / ``model`` with ``module.`` /
            ``backbone.`` key prefixes are unwrapped (the teacher is preferred); an
            ``argparse.Namespace`` of training args is the one non-tensor class allowed.

    Returns:
        Mapping from parameter name to tensor, in the file's own key format.

    Raises:
        ValueError: one sentence naming the file, for a truncated, corrupt or foreign file,
            or one holding pickled objects other than tensors.
    """
    import torch

    path = Path(path)
    redo = "download it again, or pass another checkpoint (backbone.weights, or --weights for stego predict)"
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except SafetensorError as error:
            raise InvalidInputError(f"{path}: not a readable .safetensors file, truncated or corrupt ({error}); {redo}.") from None
    try:
        # DINO's training checkpoints store their argparse Namespace beside the weights; it is
        # plain data, so allow that one class and nothing else.
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise
    except pickle.UnpicklingError as error:
        if "unsupported global" in str(error).lower():
            # torch's own message invites weights_only=False, which would run arbitrary code.
            raise InvalidInputError(
                f"Refused to load {str(path)!r}: it holds pickled objects other than tensors and "
                "containers; re-save only the state dict (or use .safetensors) from a source you trust."
            ) from None
        raise InvalidInputError(f"{path}: not a readable PyTorch checkpoint (corrupt or not a checkpoint); {redo}.") from None
    except Exception as error:  # noqa: BLE001 - EOFError, KeyError, RuntimeError...: all mean a broken file
        reason = "the file is empty" if path.stat().st_size == 0 else "truncated or not a checkpoint"
        raise InvalidInputError(
            f"{path}: not a readable PyTorch checkpoint ({reason}; {type(error).__name__}); {redo}."
        ) from None
    return _unwrap(obj, path)


def _unwrap(obj: object, path: Path) -> dict[str, Tensor]:
    from torch import Tensor

    while isinstance(obj, dict) and not any(isinstance(v, Tensor) for v in obj.values()):
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            raise InvalidInputError(
                f"Checkpoint {str(path)!r} holds no tensors under its keys {sorted(map(str, obj))[:8]}; "
                f"pass a state dict, possibly wrapped under one of {list(_WRAPPER_KEYS)}."
            )
        obj = inner
    if not isinstance(obj, dict):
        raise InvalidInputError(
            f"Checkpoint {str(path)!r} holds a {type(obj).__name__}, not a state dict of tensors."
        )
    state_dict = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, Tensor)}
    if not state_dict:
        raise InvalidInputError(
            f"Checkpoint {str(path)!r} holds no tensors under parameter names; pass a state dict of the backbone."
        )
    for prefix in _KEY_PREFIXES:
        # A DINO training dict mixes 'backbone.*' with the projection 'head.*': keep the backbone.
        if any(k.startswith(prefix) for k in state_dict):
            state_dict = {
                k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)
            }
    return state_dict


def load_weights_into(model: nn.Module, state_dict: dict[str, Tensor], what: str) -> None:
    """Load a checkpoint's tensors into a timm ViT (built on the meta device), refusing any mismatch.

    Args:
        model: the timm VisionTransformer to fill.
        state_dict: tensors as `read_checkpoint` returns them.
        what: "<backbone> from <source>", for the error message.

    Raises:
        ValueError: the checkpoint's patch size, keys or shapes do not fit the model.
    """
    from timm.models import vision_transformer as timm_vit

    # timm's own adapter: DINOv2 (mask_token / register_tokens / SwiGLU w12,w3) and
    # pos_embed / patch_embed resampling when the checkpoint grid differs.
    patch_w = state_dict.get("patch_embed.proj.weight")
    model_patch = tuple(model.patch_embed.proj.weight.shape[-2:])
    if patch_w is not None and patch_w.ndim == 4 and tuple(patch_w.shape[-2:]) != model_patch:
        # timm would silently resample the patch kernel; a /16 checkpoint is not a /8 model.
        raise InvalidInputError(
            f"Checkpoint for backbone {what} has {tuple(patch_w.shape[-2:])} patches but the model "
            f"uses {model_patch}; pass weights made for this backbone."
        )
    state_dict = timm_vit.checkpoint_filter_fn(dict(state_dict), model)
    state_dict = {
        k: v for k, v in state_dict.items() if not k.startswith(("head.", "fc_norm.", "head_drop."))
    }
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong = sorted(
        k for k in set(expected) & set(state_dict) if expected[k].shape != state_dict[k].shape
    )
    if missing or unexpected or wrong:
        raise InvalidInputError(
            f"Checkpoint for backbone {what} does not fit the model: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}, wrong shape {wrong[:5]}; pass weights made for this backbone."
        )
    model.load_state_dict(state_dict, strict=True, assign=True)
    assert not any(t.is_meta for t in model.state_dict().values()), (
        "a tensor was left uninitialised"
    )


def _hub_cache_dir() -> str:
    # huggingface_hub reads its env vars once at import: read them again here so a caller
    # (or a test) that sets them later is still honoured.
    from huggingface_hub import constants

    if os.environ.get("HF_HUB_CACHE"):
        return os.path.expanduser(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expanduser(os.environ["HF_HOME"]), "hub")
    return constants.HF_HUB_CACHE


def _hub_offline() -> bool:
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", "")
    return flag.upper() in {"1", "ON", "YES", "TRUE"} or bool(constants.HF_HUB_OFFLINE)


def _hub_reachable(timeout: float = 3.0) -> bool:
    # huggingface_hub retries a failed request five times with back-off (about 45 s per
    # file); one quick TCP connect tells an offline machine apart at once.
    from huggingface_hub import constants

    from stego_tasks.method.official_weights import reachable

    return reachable(os.environ.get("HF_ENDPOINT") or constants.ENDPOINT, timeout)


def _file_from_url(spec: BackboneSpec) -> tuple[Path, str]:
    from stego_tasks.method.official_weights import find_or_download, hub_checkpoint_dir

    assert spec.weights_url is not None
    path, source, reason = find_or_download(spec.weights_url)
    if path is not None:
        return Path(path), source
    filename = spec.weights_url.rsplit("/", 1)[-1]
    raise WeightsNotFoundError(
        f"No weights for backbone {spec.name} ({reason}): pass the local file {filename} as weights "
        f"(backbone.weights in params.yaml, --weights for stego predict), put it in torch's hub cache "
        f"{hub_checkpoint_dir()}, or go online so it can be downloaded from {spec.weights_url} "
        "(weights 'random' runs on random weights, for smoke tests only)."
    )


def locate_weights(spec: BackboneSpec) -> tuple[Path, str]:
    """The checkpoint file of `spec` for ``weights="auto"``: its official URL file, else the hub cache, else a hub download.

    Returns:
        (path of the checkpoint file, source: "hub-cache" or "hub-download").

    Raises:
        WeightsNotFoundError: none of them has the weights; the message says where to put a file.
    """
    from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache

    # The hub's own names: timm hosts its weights as safetensors; older repos only have the pickle file.
    hub_filenames = (constants.SAFETENSORS_SINGLE_FILE, constants.PYTORCH_WEIGHTS_NAME)
    if spec.weights_url is not None:
        return _file_from_url(spec)
    cache_dir = _hub_cache_dir()
    if spec.hf_repo is not None:
        for filename in hub_filenames:
            cached = try_to_load_from_cache(spec.hf_repo, filename, cache_dir=cache_dir)
            if isinstance(cached, str):  # None: not cached; a sentinel: known to be absent
                return Path(cached), "hub-cache"
    reason = "offline (HF_HUB_OFFLINE is set)" if _hub_offline() else "no hub repo is known"
    if spec.hf_repo is not None and not _hub_offline() and not _hub_reachable():
        reason = "the hub cannot be reached from this machine"
    elif spec.hf_repo is not None and not _hub_offline():
        for filename in hub_filenames:
            try:
                path = hf_hub_download(spec.hf_repo, filename, cache_dir=cache_dir)
            except Exception as err:  # noqa: BLE001 - any hub failure means "not available"
                reason = f"download failed ({type(err).__name__})"
                continue
            return Path(path), "hub-download"
    repo = spec.hf_repo or f"timm's repo for {spec.timm_name}"
    raise WeightsNotFoundError(
        f"No weights for backbone {spec.name} ({reason}): pass a local checkpoint path as weights "
        f"(backbone.weights in params.yaml, --weights for stego predict), put the Hugging Face repo {repo} "
        f"({'/'.join(hub_filenames)}) in the hub cache {cache_dir}, or go online so it can be downloaded "
        "(weights 'random' runs on random weights, for smoke tests only)."
    )


def resolve_weights(spec: BackboneSpec) -> tuple[dict[str, Tensor], str]:
    """The weights of `spec` for ``weights="auto"`` (see `locate_weights`), read.

    Returns:
        (state dict, source: "hub-cache" or "hub-download").
    """
    path, source = locate_weights(spec)
    return read_checkpoint(path), source


def weights_file(spec: BackboneSpec, weights: str | Path) -> tuple[Path | None, str]:
    """The checkpoint file a `create_backbone` weights argument loads, without reading it.

    Args:
        spec: the backbone.
        weights: a checkpoint path, "auto" or "random".

    Returns:
        (file, source): (None, "random") for random weights; else the file and
        "file:<path>", "hub-cache" or "hub-download".

    Raises:
        WeightsNotFoundError: "auto" finds nothing, or the path is not a file.
    """
    if isinstance(weights, str) and weights == "random":
        return None, "random"
    if isinstance(weights, str) and weights == "auto":
        return locate_weights(spec)
    path = Path(weights)
    if not path.is_file():
        raise WeightsNotFoundError(
            f"Weights file {str(path)!r} for backbone {spec.name} does not exist; "
            "pass an existing checkpoint path, weights='auto' or weights='random'."
        )
    return path, f"file:{path}"
