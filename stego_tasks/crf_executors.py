"""Where the `crf` stage's chunks run: a Dask cluster, a local spawn pool, or this process.

All three are `concurrent.futures.Executor`s, so `crf.crf_stage` submits to them alike.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stego_tasks.config import DaskParams


@contextmanager
def spawn_pool(workers: int) -> Iterator[ProcessPoolExecutor]:
    """A process pool whose workers start with "spawn", shut down on exit.

    "spawn" rather than fork: forking a process whose torch/OpenMP threads hold locks is
    what made the reference's pool hang. On exit, tasks not yet started are cancelled, so
    an error surfaces after the running chunks end rather than after all of them.

    Args:
        workers: Worker processes, >= 1.

    Yields:
        The pool, to pass to `crf.dense_crf_batch` (``executor=``) or to submit to.
    """
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


class DaskExecutor(Executor):
    """Submit CRF chunks to a Dask cluster, scattering the arrays first.

    Arrays passed inline would be pickled into the task graph (distributed warns above
    10 MB, and the scheduler would hold them); scattered, they go straight to a worker.
    """

    def __init__(self, client: Any) -> None:
        self._client = client
        # pure=False: identical chunks (say, a repeated image) must not be merged or
        # hashed, and hashing large arrays costs time.
        self._inner = client.get_executor(pure=False)

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        images, logits, *rest = args
        remote = self._client.scatter([images, logits], hash=False)
        return self._inner.submit(fn, *remote, *rest, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._inner.shutdown(wait=wait)


@contextmanager
def stage_executor(workers: int, dask: DaskParams | None) -> Iterator[tuple[Executor, int]]:
    """Where the stage's chunks run, and how many run at once.

    A Dask scheduler at ``dask.address`` when there is one; otherwise one local spawn pool
    of ``workers`` (starting a LocalCluster would cost more than the pool and bring
    nothing), or this process when ``workers`` <= 1.

    Yields:
        (executor, parallel slots). On Dask a slot is a worker process: pydensecrf holds
        the GIL, so a worker's extra threads would only take turns.
    """
    if dask is not None and dask.address:
        from stego_tasks.dask_cluster import dask_client

        with dask_client(dask) as client:
            yield DaskExecutor(client), max(1, len(client.nthreads()))
        return
    if workers <= 1:
        yield InlineExecutor(), 1
        return
    with spawn_pool(workers) as pool:
        yield pool, workers


class InlineExecutor(Executor):
    """Runs each submitted call at once in this thread (workers <= 1: no processes)."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as error:  # handed to the caller through the future, like a pool
            future.set_exception(error)
        return future
