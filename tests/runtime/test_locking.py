"""Two processes never hold an artifact's lock at once; the second gets one clear sentence."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import pytest

from stego_tasks.runtime.locking import ArtifactLocked, artifact_lock


def _hold(artifact: str, seconds: float, ready) -> None:
    with artifact_lock(artifact):
        ready.set()
        time.sleep(seconds)


def test_second_process_is_refused_with_holder_pid(tmp_path: Path) -> None:
    artifact = tmp_path / "features.zarr"
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    holder = ctx.Process(target=_hold, args=(str(artifact), 2.0, ready))
    holder.start()
    try:
        assert ready.wait(30), "the holder process never took the lock"
        expected = rf"being written by another stego run \(pid {holder.pid}\)"
        with pytest.raises(ArtifactLocked, match=expected), artifact_lock(artifact, timeout=0.2):
            pass
    finally:
        holder.join(30)
    with artifact_lock(artifact, timeout=1):
        pass  # free again once the holder exited


def test_waiting_acquires_after_release(tmp_path: Path) -> None:
    artifact = tmp_path / "model"
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    holder = ctx.Process(target=_hold, args=(str(artifact), 1.0, ready))
    holder.start()
    assert ready.wait(30), "the holder process never took the lock"
    start = time.monotonic()
    with artifact_lock(artifact, timeout=30):
        waited = time.monotonic() - start
    holder.join(30)
    assert waited > 0.3, f"the lock was granted while held (waited {waited:.2f} s)"
