"""Where torch work runs: device names resolved once, the same way for every stage."""

from __future__ import annotations

import torch

from stego_tasks.errors import InvalidInputError

__all__ = ["backbone_precision", "resolve_device"]


def resolve_device(device: str) -> torch.device:
    """Map "auto" to CUDA when present, else CPU; refuse "cuda" on a machine without it."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InvalidInputError(f"device '{device}' was asked for but this machine has no CUDA GPU; set it to 'auto' or 'cpu'.")
    return torch.device(device)


def backbone_precision(device: str | torch.device, amp: bool) -> str:
    """"bf16" when the backbone runs under bfloat16 autocast (CUDA and `amp`), else "fp32"."""
    return "bf16" if amp and torch.device(device).type == "cuda" else "fp32"
