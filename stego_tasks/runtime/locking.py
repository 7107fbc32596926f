"""An inter-process lock around artifacts that are updated in place (the Zarr feature store,
the model folder), so two runs on one workspace never interleave their writes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from stego_tasks.errors import StegoError


class ArtifactLocked(StegoError, RuntimeError):
    """Another process holds the lock of an artifact."""


@contextmanager
def artifact_lock(artifact: str | Path, timeout: float = 0.0) -> Iterator[None]:
    """Hold `<artifact>.lock` (beside the artifact) for the duration of the block.

    Args:
        artifact: path of the artifact about to be modified.
        timeout: seconds to wait for another holder; 0 refuses at once.

    Raises:
        ArtifactLocked: when another process still holds it after `timeout`.
    """
    artifact = Path(artifact)
    artifact.parent.mkdir(parents=True, exist_ok=True)
    lock_path = artifact.parent / f".{artifact.name}.lock"
    lock = FileLock(str(lock_path))
    try:
        lock.acquire(timeout=timeout)
    except Timeout:
        holder = _holder(lock_path)
        raise ArtifactLocked(
            f"{artifact} is being written by another stego run{holder}; wait for it to finish "
            f"(or stop it) and run again."
        ) from None
    try:
        lock_path.with_suffix(".pid").write_text(str(os.getpid()))
        yield
    finally:
        lock_path.with_suffix(".pid").unlink(missing_ok=True)
        lock.release()


def _holder(lock_path: Path) -> str:
    try:
        return f" (pid {lock_path.with_suffix('.pid').read_text().strip()})"
    except OSError:
        return ""
