"""Tests for stego_tasks.runtime.memory: work whose input batch cannot fit is refused in one sentence.

Proves the batch size arithmetic against numpy's own nbytes, that the available memory is the
OS's (psutil), and that `check_fits` passes what fits and refuses what does not with a sentence
naming the setting, both sizes and the fix.
"""

from __future__ import annotations

import numpy as np
import psutil
import pytest

from stego_tasks.errors import InvalidInputError
from stego_tasks.runtime import memory
from stego_tasks.runtime.memory import available_bytes, check_fits, image_batch_bytes


@pytest.mark.parametrize(("n", "height", "width"), [(1, 1, 1), (4, 32, 48), (10, 224, 224)])
def test_a_batch_takes_the_bytes_of_its_float32_rgb_tensor(n: int, height: int, width: int) -> None:
    assert image_batch_bytes(n, height, width) == np.zeros((n, 3, height, width), np.float32).nbytes


def test_the_available_memory_is_the_oss_and_positive() -> None:
    got, want = available_bytes(), psutil.virtual_memory().available
    assert got > 0 and abs(got - want) < 2**30, f"{got} vs psutil's {want}"


def test_what_fits_passes_and_what_does_not_is_one_sentence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "available_bytes", lambda: 3 * 2**30)
    check_fits("anything", 3 * 2**30, "never shown")
    with pytest.raises(InvalidInputError) as caught:
        check_fits("extract.resolution 100000 (batch_size 1, 1 crop each)", image_batch_bytes(1, 100_000, 100_000),
                   "lower extract.resolution or extract.batch_size")
    assert str(caught.value) == (
        "extract.resolution 100000 (batch_size 1, 1 crop each) needs at least 111.8 GiB of memory for its input "
        "images alone, more than the 3.0 GiB this machine has available; lower extract.resolution or "
        "extract.batch_size."
    )
