"""Refuse work whose inputs alone cannot fit in this machine's memory, before it starts.

A resolution of 10^5 px would be accepted by every type and range check and then get the
process killed by the kernel (exit 137, no sentence) while it decodes the first batch. The
bound checked here is a floor, not an estimate: the float32 RGB batch the backbone is fed,
which exists whatever the device, so a refusal never stops a run that could have fit.
"""

from __future__ import annotations

import psutil

from stego_tasks.errors import InvalidInputError

_FLOAT32_RGB = 3 * 4  # bytes per pixel of a float32 RGB tensor


def available_bytes() -> int:
    """Memory the OS can give this process now without swapping (MemAvailable on Linux)."""
    return int(psutil.virtual_memory().available)


def image_batch_bytes(n_images: int, height: int, width: int) -> int:
    """Bytes of a float32 RGB batch [n_images, 3, height, width]."""
    return n_images * _FLOAT32_RGB * height * width


def check_fits(what: str, needed: int, fix: str) -> None:
    """Raise one sentence when `needed` bytes exceed the memory available now.

    Args:
        what: the setting that asks for the memory, e.g. "extract.resolution 100000 (batch_size 1)".
        needed: bytes the work needs at the least.
        fix: what the user can change, e.g. "lower extract.resolution".

    Raises:
        InvalidInputError: the memory is not there.
    """
    available = available_bytes()
    if needed > available:
        raise InvalidInputError(
            f"{what} needs at least {_gib(needed)} of memory for its input images alone, more than the "
            f"{_gib(available)} this machine has available; {fix}."
        )


def _gib(n_bytes: int) -> str:
    return f"{n_bytes / 2**30:.1f} GiB"
