"""Where torch work runs: device names resolved once, the same way for every stage."""

from __future__ import annotations

import torch

from stego_tasks.errors import InvalidInputError

__all__ = ["backbone_precision", "resolve_device"]


# The device kinds a stage can run on; torch knows more names (meta, xla, ...) that none can use.
_KINDS = ("cpu", "cuda", "mps")


def resolve_device(device: str) -> torch.device:
    """Map "auto" to CUDA when present, else CPU; refuse a name that is no usable device in one sentence.

    Raises:
        ValueError: not cpu / cuda[:N] / mps, "cuda" on a machine without it, or a GPU index it lacks.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        resolved = None
    if resolved is None or resolved.type not in _KINDS:
        raise InvalidInputError(f"device {device!r} is not a device stego can run on; use 'auto', 'cpu', 'cuda' or 'cuda:N'.")
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InvalidInputError(f"device '{device}' was asked for but this machine has no CUDA GPU; set it to 'auto' or 'cpu'.")
    if resolved.type == "cuda" and resolved.index is not None and resolved.index >= torch.cuda.device_count():
        raise InvalidInputError(f"device '{device}' names a GPU this machine lacks (it has {torch.cuda.device_count()}); "
                                "use 'cuda' or a lower index.")
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise InvalidInputError(f"device '{device}' was asked for but this machine has no Apple GPU; set it to 'auto' or 'cpu'.")
    return resolved


def backbone_precision(device: str | torch.device, amp: bool) -> str:
    """"bf16" when the backbone runs under bfloat16 autocast (CUDA and `amp`), else "fp32"."""
    return "bf16" if amp and torch.device(device).type == "cuda" else "fp32"
