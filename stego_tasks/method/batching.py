"""The training loop's batch order, shared by `train` and the probe refits of `probe_fit`."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from stego_tasks.errors import InvalidInputError


def epoch_batches(size: int, batch_size: int, seed: int, start_step: int = 0) -> Iterator[torch.Tensor]:
    """Endless batches of row indices [min(batch_size, size)], from step `start_step` on.

    Epoch-wise shuffling, as the reference's DataLoader(shuffle=True, drop_last=True).
    Each epoch's order depends on (seed, epoch) alone, so a run resumed at any step,
    even mid-epoch, draws exactly the batches the uninterrupted run would have drawn.
    """
    batch_size = min(batch_size, size)
    per_epoch = size // batch_size
    epoch, first = divmod(start_step, per_epoch)
    while True:
        order = torch.from_numpy(np.random.default_rng([seed % 2**64, epoch]).permutation(size))
        for start in range(first * batch_size, per_epoch * batch_size, batch_size):
            yield order[start : start + batch_size]
        epoch, first = epoch + 1, 0


# Mixed into the positives' stream so it never equals an epoch's shuffle stream.
_POSITIVES_STREAM = 0x706F73


def step_positives(knn: np.ndarray, index: np.ndarray | torch.Tensor, seed: int, step: int) -> np.ndarray:
    """One kNN positive per batch row for training step `step` [B], int64.

    Each row's partner is one of its k neighbours, uniformly (the reference draws among
    ranks 1..k the same way), from a random stream of (seed, step) alone: the draws of step
    t never depend on the steps before it, so batches can be read ahead in any order by any
    number of readers (`training_data.BatchStream`), and a run resumed at step t draws what
    the uninterrupted run drew.

    Args:
        knn: the kNN graph [M, k] (self excluded).
        index: the step's batch rows [B].
        seed: the run's seed.
        step: the step number (0-based).
    """
    knn = np.asarray(knn)
    index = np.asarray(index, dtype=np.int64).reshape(-1)
    if knn.ndim != 2 or knn.shape[1] < 1:
        raise InvalidInputError(f"step_positives expects a kNN graph of shape [N, k>=1], got {knn.shape}.")
    columns = np.random.default_rng([seed % 2**64, step, _POSITIVES_STREAM]).integers(0, knn.shape[1], size=index.shape[0])
    return knn[index, columns].astype(np.int64)


def step_plan(knn: np.ndarray, size: int, batch_size: int, seed: int, start_step: int, steps: int
              ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(batch rows [B], positives [B]) of steps `start_step` .. `steps - 1`, in order: the training loop's reads."""
    batches = epoch_batches(size, batch_size, seed, start_step)
    for step in range(start_step, steps):
        index = next(batches).numpy()
        yield index, step_positives(knn, index, seed, step)
