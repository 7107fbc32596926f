"""One place that turns the `dask` params block into a connected `distributed.Client`."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

from stego_tasks.config import DaskParams
from stego_tasks.errors import UnreachableError


def torch_threads_per_worker(params: DaskParams) -> int | None:
    """CPU threads each local worker's torch may use so workers do not oversubscribe cores.

    Returns None for a remote scheduler, whose machines know their own cores.
    """
    if params.address:
        return None
    return max(1, (os.cpu_count() or 1) // max(1, params.n_workers * params.threads_per_worker))


def unreachable_scheduler(address: str, error: BaseException) -> UnreachableError:
    """The one-sentence error for a `dask.address` where no scheduler answers."""
    return UnreachableError(
        f"no Dask scheduler answers at {address} ({error}); start one with "
        f"`dask scheduler` or set dask.address to null to run locally."
    )


@contextmanager
def dask_client(params: DaskParams, connect_timeout_s: float = 10.0) -> Iterator[object]:
    """Yield a Dask client: an existing scheduler at `params.address`, else a local cluster.

    The local cluster binds to 127.0.0.1 and has no dashboard, so nothing is exposed on
    the network by default.

    Args:
        params: the `dask` block (address, n_workers, threads_per_worker).
        connect_timeout_s: how long to wait for a scheduler at `params.address`.

    Yields:
        A connected `distributed.Client`; the cluster is closed on exit.
    """
    from dask.distributed import Client, LocalCluster

    # The scheduler's connect/close chatter drowns the stage's own progress lines.
    logging.getLogger("distributed").setLevel(logging.WARNING)
    if params.address:
        try:
            client = Client(params.address, timeout=f"{connect_timeout_s}s")
        except (OSError, TimeoutError) as error:
            raise unreachable_scheduler(params.address, error) from None
        try:
            yield client
        finally:
            client.close()
        return
    cluster = LocalCluster(
        n_workers=params.n_workers,
        threads_per_worker=params.threads_per_worker,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        silence_logs=40,
    )
    client = Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()
